"""The unified formulation against independent closed forms, for every preset and target."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from lossfloor.objective.objective import get_objective, objective_names
from lossfloor.objective.processes import Cosine, Flow
from lossfloor.objective.targets import (
    TARGETS,
    Preconditioning,
    make_target,
    prediction_from_x0,
    target_error_factor,
    x0_from_prediction,
)

CONTINUOUS = [n for n in objective_names() if not get_objective(n).is_discrete]
DISCRETE = [n for n in objective_names() if get_objective(n).is_discrete]
COMBINATIONS = [f"{n}-{t}-{w}" for n in objective_names() for t in TARGETS for w in ("simple", "nelbo")
                if not (w == "nelbo" and n in DISCRETE)]
SD = 0.5  # EDM sigma_data


def _noised(obj, n=64, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = obj.sample_t(n, g)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    eps = torch.randn(n, d, generator=g, dtype=torch.float64)
    al, si = obj.process.alpha(t)[:, None], obj.process.sigma(t)[:, None]
    return t, x0, eps, al * x0 + si * eps, g


@pytest.mark.parametrize("name", objective_names() + COMBINATIONS)
def test_native_loss_equals_converted_x0_loss(name):
    obj = get_objective(name)
    t, x0, _, x_t, g = _noised(obj)
    pred = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    target = make_target(obj.target, obj.process, t, x_t, x0, obj.precond)
    native = obj.target_weight(t) * (pred - target).pow(2).sum(1)
    x0_hat = x0_from_prediction(obj.target, obj.process, t, x_t, pred, obj.precond)
    sigma = obj.process.ve_sigma(t)
    converted = obj.x0_weight(sigma) * (x0_hat - x0).pow(2).sum(1)
    torch.testing.assert_close(native, converted, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", objective_names() + COMBINATIONS)
def test_conversions_round_trip(name):
    obj = get_objective(name)
    t, x0, _, x_t, g = _noised(obj)
    x0_hat = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    pred = prediction_from_x0(obj.target, obj.process, t, x_t, x0_hat, obj.precond)
    torch.testing.assert_close(x0_from_prediction(obj.target, obj.process, t, x_t, pred, obj.precond), x0_hat,
                               rtol=1e-9, atol=1e-9)
    target = make_target(obj.target, obj.process, t, x_t, x0, obj.precond)
    torch.testing.assert_close(x0_from_prediction(obj.target, obj.process, t, x_t, target, obj.precond), x0,
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", objective_names())
def test_targets_match_their_definitions(name):
    """Each target built from (x0, eps) by its textbook definition, not by the affine coefficients."""
    obj = get_objective(name)
    t, x0, eps, x_t, _ = _noised(obj)
    p = obj.process
    al, si = p.alpha(t)[:, None], p.sigma(t)[:, None]
    h = 1e-6  # central differences for the velocity d x_t / dt, independent of autograd
    dal = (p.alpha(t + h) - p.alpha(t - h))[:, None] / (2 * h)
    dsi = (p.sigma(t + h) - p.sigma(t - h))[:, None] / (2 * h)
    s = si / al
    pc = Preconditioning()
    expected = {
        "x0": x0, "eps": eps, "v": al * eps - si * x0, "score": -eps / si,
        "velocity": dal * x0 + dsi * eps,
        "F": (x0 - SD**2 / (s**2 + SD**2) * x_t / al) / (s * SD / torch.sqrt(s**2 + SD**2)),
    }
    if obj.is_discrete:  # log alpha_bar is piecewise linear: no derivative at the atoms themselves
        del expected["velocity"]
    for target, want in expected.items():
        got = make_target(target, p, t, x_t, x0, pc)
        tol = 1e-5 if target == "velocity" else 1e-9
        torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=f"{name} {target}")


def test_flow_velocity_is_eps_minus_x0():
    t, x0, eps, x_t, _ = _noised(get_objective("flow"))
    torch.testing.assert_close(make_target("velocity", Flow(), t, x_t, x0), eps - x0, rtol=1e-12, atol=1e-12)


def _closed_form_lambda(name, s):
    """x0-space weights of the presets, written out from the papers (research note 1.3)."""
    if name in ("edm", "edm2"):
        return (s**2 + SD**2) / (s * SD) ** 2
    if name in ("ve", "vp", "ddpm", "iddpm", "cosine"):
        return 1 / s**2
    if name in ("flow", "sd3"):
        return ((1 + s) / s) ** 2
    raise KeyError(name)


@pytest.mark.parametrize("name", objective_names())
def test_preset_weights_closed_form(name):
    obj = get_objective(name)
    s = obj.atoms() if obj.is_discrete else obj.sample_sigma(256, torch.Generator().manual_seed(1))
    torch.testing.assert_close(obj.x0_weight(s), _closed_form_lambda(name, s), rtol=1e-9, atol=0)


def _closed_form_log_density(name, ls):
    """log p(log sigma) of the presets, derived by hand."""
    s = np.exp(ls)
    if name == "edm":
        return stats.norm.logpdf(ls, -1.2, 1.2)
    if name == "edm2":
        return stats.norm.logpdf(ls, -0.4, 1.0)
    if name == "sd3":  # t = sigmoid(u), sigma = t / (1 - t) = exp(u): log sigma ~ N(0, 1)
        return stats.norm.logpdf(ls, 0.0, 1.0)
    if name == "flow":  # log sigma ~ Logistic(0, 1)
        return ls - 2 * np.log1p(s)
    if name == "cosine":  # t = (2/pi) atan(sigma): dt/dlog sigma = (2/pi) sigma / (1 + sigma^2)
        return np.log(2 / np.pi * s / (1 + s**2))
    if name == "ve":
        return np.full_like(ls, -np.log(np.log(100 / 0.02)))
    if name == "vp":  # sigma^2 = exp(b_d t^2 / 2 + b_min t) - 1
        t = (np.sqrt(0.1**2 + 2 * 19.9 * np.log1p(s**2)) - 0.1) / 19.9
        return np.log(2 * s**2 / ((1 + s**2) * (19.9 * t + 0.1))) - np.log(1 - 1e-5)
    raise KeyError(name)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_log_density_closed_form(name):
    obj = get_objective(name)
    ls = torch.log(obj.sample_sigma(256, torch.Generator().manual_seed(2)))
    np.testing.assert_allclose(obj.log_density(ls).numpy(), _closed_form_log_density(name, ls.numpy()),
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_sampled_sigma_follow_the_cdf(name):
    obj = get_objective(name)
    ls = torch.log(obj.sample_sigma(4000, torch.Generator().manual_seed(3))).numpy()
    result = stats.kstest(ls, lambda x: obj.cdf(torch.as_tensor(x)).numpy())
    assert result.pvalue > 1e-3, result


@pytest.mark.parametrize("name", CONTINUOUS)
def test_log_density_integrates_to_cdf_differences(name):
    obj = get_objective(name)
    ls = np.log(obj.sample_sigma(2000, torch.Generator().manual_seed(4)).numpy())
    for a, b in [np.quantile(ls, [0.05, 0.3]), np.quantile(ls, [0.3, 0.9])]:
        mass, _ = integrate.quad(lambda x: math.exp(obj.log_density(torch.tensor(x)).item()), a, b,
                                 epsabs=1e-10, epsrel=1e-8, limit=200)
        want = (obj.cdf(torch.tensor(b)) - obj.cdf(torch.tensor(a))).item()
        assert mass == pytest.approx(want, rel=1e-7)


@pytest.mark.parametrize("name", DISCRETE)
def test_discrete_presets_sample_their_atoms_uniformly(name):
    obj = get_objective(name)
    atoms = obj.atoms()
    assert len(atoms) == 1000 and torch.all(torch.diff(atoms) > 0)
    s = obj.sample_sigma(20000, torch.Generator().manual_seed(5))
    idx = torch.searchsorted(atoms, s).clamp(max=999)
    torch.testing.assert_close(atoms[idx], s, rtol=1e-12, atol=0)  # every sample is an atom
    counts = np.bincount(idx.numpy() // 100, minlength=10)  # ten equal groups of atoms
    assert stats.chisquare(counts).pvalue > 1e-3
    cdf = obj.cdf(torch.log(atoms)).numpy()
    np.testing.assert_allclose(cdf, np.arange(1, 1001) / 1000, atol=1e-12)
    with pytest.raises(ValueError, match="atoms"):
        obj.log_density(torch.log(atoms))


def test_ddpm_schedule_matches_ho_et_al():
    obj = get_objective("ddpm")
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1 - betas)
    np.testing.assert_allclose(obj.atoms().numpy(), np.sqrt((1 - abar) / abar), rtol=1e-10)
    assert obj.atoms()[0].item() == pytest.approx(0.0100005, rel=1e-5)


def test_iddpm_schedule_matches_nichol_dhariwal():
    obj = get_objective("iddpm")
    f = np.cos((np.arange(1001) / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
    betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    abar = np.cumprod(1 - betas)
    np.testing.assert_allclose(obj.atoms().numpy(), np.sqrt((1 - abar) / abar), rtol=1e-10)


# The continuous-time NELBO (VDM, -1/2 SNR'(t) in x0 space, 1/2 and pi kept), in t-space and by target,
# for the cosine schedule (loss-functions note 1.4, with the 1/2 restored): t ~ U(0, 1), so this is
# directly the weight on the target's squared error.
COSINE_NELBO = {
    "x0": lambda a, s: math.pi * a / (2 * s**3),
    "eps": lambda a, s: math.pi / (2 * a * s),
    "v": lambda a, s: math.pi * a / (2 * s),
    "score": lambda a, s: math.pi * s / (2 * a),
}


@pytest.mark.parametrize("target", list(COSINE_NELBO))
def test_cosine_nelbo_weights(target):
    obj = get_objective(f"cosine-{target}-nelbo")
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    a, s = Cosine().alpha(t), Cosine().sigma(t)
    torch.testing.assert_close(obj.target_weight(t), COSINE_NELBO[target](a, s), rtol=1e-9, atol=0)


def test_nelbo_weight_is_half_snr_derivative_for_vp_and_ve():
    # VP: SNR(t) = 1 / expm1(b_d t^2 / 2 + b_min t), t ~ U(1e-5, 1); x0 target so no factor.
    t = np.linspace(0.01, 0.99, 40)
    e = np.exp(0.5 * 19.9 * t**2 + 0.1 * t)
    dsnr = -(19.9 * t + 0.1) * e / (e - 1) ** 2
    want = -0.5 * dsnr * (1 - 1e-5)  # divided by the U(1e-5, 1) density
    got = get_objective("vp-x0-nelbo").target_weight(torch.tensor(t)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9)
    # VE: sigma = t, SNR = 1/t^2, -1/2 SNR' = 1/t^3, over the log-uniform density 1 / (t ln 5000).
    t = np.geomspace(0.03, 90, 20)
    got = get_objective("ve-x0-nelbo").target_weight(torch.tensor(t)).numpy()
    np.testing.assert_allclose(got, np.log(5000) / t**2, rtol=1e-9)


def test_error_factors_match_the_research_table():
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    p = Cosine()
    a, s = p.alpha(t), p.sigma(t)
    torch.testing.assert_close(target_error_factor("eps", p, t), a**2 / s**2)
    torch.testing.assert_close(target_error_factor("score", p, t), a**2 / s**4)
    torch.testing.assert_close(target_error_factor("v", p, t), 1 / s**2)  # alpha^2 + sigma^2 = 1


def test_t_of_sigma_inverts_ve_sigma():
    for name in objective_names():
        obj = get_objective(name)
        t = obj.time_dist.atoms if obj.is_discrete else obj.sample_t(200, torch.Generator().manual_seed(6))
        torch.testing.assert_close(obj.process.t_of_sigma(obj.process.ve_sigma(t)), t, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bad", ["nope", "edm-eps", "edm-foo-simple", "edm-eps-bar", "ddpm-eps-nelbo"])
def test_bad_objective_names(bad):
    with pytest.raises(ValueError):
        get_objective(bad)
