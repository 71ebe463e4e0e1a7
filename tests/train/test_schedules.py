"""Training schedules: each weight and density against its paper's formula, the optimal-loss schedule against
a hand computation, the adaptive update, the trainer hooks, exact resume and the README example."""

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.nets.networks import ModelConfig
from lossfloor.objective.densities import LogSigmaLaplace, LogSigmaLogistic, LogSigmaNormal, logit_normal
from lossfloor.objective.objective import Objective, get_objective
from lossfloor.objective.processes import VE, VP, Flow
from lossfloor.objective.targets import Preconditioning, make_target, per_sample, x0_from_prediction
from lossfloor.train.adaptive import AdaptiveDensity, OptimalLossWeight
from lossfloor.train.checkpoint import load_checkpoint
from lossfloor.train.sampler import ScheduleSampler
from lossfloor.train.schedules import SCHEDULES, apply_schedule, schedule_names
from lossfloor.train.trainer import TrainConfig, Trainer, train

ROOT = Path(__file__).resolve().parents[2]
TINY = ModelConfig("mlp", (2,), width=32, depth=1)
V = 0.25  # variance of the synthetic data per dimension


def gaussian_curve(zero_below=0.02) -> OptimalLossCurve:
    """J* of N(0, V) data (sigma^2 V / (sigma^2 + V)), set to 0 below `zero_below` like a finite set's."""
    s = np.geomspace(1e-3, 1e3, 25)
    loss = np.where(s > zero_below, s**2 * V / (s**2 + V), 0.0)
    return OptimalLossCurve(s, loss, np.zeros_like(s), V, 256, 2)


def points(n=256, seed=0) -> torch.Tensor:
    return math.sqrt(V) * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


# -- weights -----------------------------------------------------------------------------------


def test_optimal_loss_weight_matches_a_hand_computation():
    curve = OptimalLossCurve([0.01, 0.1, 1.0, 10.0], [0.0, 1e-4, 0.2, 0.9], [0.0] * 4, 1.0, 10, 1)
    default = OptimalLossWeight(curve)
    # sigma* by default: where the interpolated J* crosses 1% of the variance (between 0.1 and 1), so
    # w_max = 1/J*(sigma*) = 100 exactly.
    assert default.sigma_star == curve.critical_sigma() and 0.1 < default.sigma_star < 1.0
    assert default.w_max == pytest.approx(100.0, rel=1e-6)
    w = OptimalLossWeight(curve, sigma_star=1.0)
    # sigma* = 1; w_max = 1/J*(1) = 5; a = 1/5.
    assert w.sigma_star == 1.0 and w.w_max == pytest.approx(5.0) and w.a == pytest.approx(0.2)
    assert w.mu == pytest.approx(-0.5) and w.width == 0.5

    def bump(s):
        return math.exp(-0.5 * ((math.log(s) + 0.5) / 0.5) ** 2) / (0.5 * math.sqrt(2 * math.pi))

    got = w.x0_weight(torch.tensor([0.01, 0.1, 1.0, 10.0], dtype=torch.float64)).numpy()
    hand = [0.2 * 5 + bump(0.01),    # J* = 0: truncated at w_max, plus the bump (left of sigma*)
            0.2 * 5 + bump(0.1),     # 1/J* = 1e4 > w_max
            0.2 * 5,                 # at sigma*: no bump (strictly left only)
            0.2 / 0.9]               # right of sigma*: a / J*
    assert got == pytest.approx(hand, rel=1e-9)
    no_bump = OptimalLossWeight(curve, bump=False).x0_weight(torch.tensor([0.1], dtype=torch.float64))
    assert no_bump.item() == pytest.approx(1.0)
    custom = OptimalLossWeight(curve, a=2.0, w_max=100.0, sigma_star=0.5, mu=-1.0, width=0.25)
    val = custom.x0_weight(torch.tensor([10.0], dtype=torch.float64)).item()
    assert val == pytest.approx(2.0 / 0.9)


def test_optimal_loss_weight_rejects_a_curve_without_critical_sigma():
    flat = OptimalLossCurve([0.1, 1.0], [0.0, 0.0], [0.0, 0.0], 1.0, 10, 1)
    with pytest.raises(ValueError, match="critical sigma"):
        OptimalLossWeight(flat)


def test_gaussian_optimal_loss_weight_is_edm_lambda_up_to_a():
    """Gaussian data: J* = c_out^2 (sigma_d^2 = V), so a min(1/J*, w_max) = a lambda_EDM where untruncated."""
    curve = gaussian_curve(zero_below=0.0)
    w = OptimalLossWeight(curve, bump=False)
    s = torch.tensor([0.3, 1.0, 5.0], dtype=torch.float64)
    lam = 1 / Preconditioning(math.sqrt(V)).c_out(s) ** 2
    # w / a = 1 / J*(s) from the interpolated curve: its relative error is the interpolation's, which the
    # half grid's difference bounds (PCHIP's error falls 8-16x per halving; logit interpolation is exact
    # for this Gaussian, so what remains is rounding).
    half = OptimalLossCurve(curve.sigma[::2], curve.loss[::2], curve.stderr[::2], V, curve.n, curve.dim)
    interp = np.abs(half(s.numpy()) / curve(s.numpy()) - 1)
    np.testing.assert_allclose((w.x0_weight(s) / w.a).numpy(), lam.numpy(), atol=0,
                               rtol=float(interp.max()) + 64 * np.finfo(float).eps)


@pytest.mark.parametrize("target,form", [("eps", lambda snr: np.minimum(snr, 5) / snr),
                                         ("v", lambda snr: np.minimum(snr, 5) / (snr + 1))])
def test_min_snr_epsilon_and_v_forms(target, form):
    """Hang et al. 2023 on a VP process: min(SNR, 5)/SNR on the eps loss, min(SNR, 5)/(SNR+1) on v's."""
    sched = ScheduleSampler("vp", "min-snr", target=target)
    sigma = torch.tensor([0.05, 0.3, 0.45, 1.0, 8.0], dtype=torch.float64)
    snr = 1 / sigma.numpy() ** 2
    assert sched.weight(sigma).numpy() == pytest.approx(form(snr), rel=1e-9)


def test_soft_min_snr_is_k_diffusions_weight_on_the_F_loss():
    sched = ScheduleSampler("edm", "soft-min-snr")
    s, sd = torch.tensor([0.01, 0.5, 3.0], dtype=torch.float64), 0.5
    assert sched.weight(s).numpy() == pytest.approx(((s * sd) ** 2 / (s**2 + sd**2) ** 2).numpy(), rel=1e-9)


def test_edm_weight_on_the_F_loss_is_one():
    sched = ScheduleSampler("flow", "edm", target="F")
    assert sched.weight(torch.tensor([0.01, 1.0, 30.0], dtype=torch.float64)).numpy() == pytest.approx(1.0)


TARGETS = ["x0", "eps", "v", "velocity", "F"]


@pytest.mark.parametrize("schedule", [s for s in schedule_names() if s != "edm2-learned"])
@pytest.mark.parametrize("base,target", [("edm", "F"), ("flow", "velocity"), ("vp", "eps"), ("flow", "eps"),
                                         ("edm", "x0"), ("vp", "v")])
def test_native_loss_equals_the_converted_x0_loss(schedule, base, target):
    """weight(sigma) * ||pred - target||^2 = lambda(sigma) * ||x0_hat - x0||^2 for any prediction."""
    sched = ScheduleSampler(base, schedule, curve=gaussian_curve(), target=target)
    obj = sched.objective
    sigma = sched.sample_sigma(6)
    t = sched.t(sigma)
    gen = torch.Generator().manual_seed(3)
    x0, eps, pred = (torch.randn(6, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    x_t = per_sample(obj.process.alpha(t), x0) * x0 + per_sample(obj.process.sigma(t), x0) * eps
    tgt = make_target(obj.target, obj.process, t, x_t, x0, obj.precond)
    mse = (pred - tgt).pow(2).mean(1)
    x0_hat = x0_from_prediction(obj.target, obj.process, t, x_t, pred, obj.precond)
    x0_mse = (x0_hat - x0).pow(2).mean(1)
    assert sched.loss(sigma, mse).numpy() == pytest.approx((obj.x0_weight(sigma) * x0_mse).numpy(), rel=1e-7)
    assert sched.x0_loss(sigma, mse).numpy() == pytest.approx(x0_mse.numpy(), rel=1e-7)


def test_learned_uncertainty_loss_is_edm2s():
    sched = ScheduleSampler("edm", "edm2-learned")
    assert len(sched.parameters()) == 2
    with torch.no_grad():
        sched.objective.weight.net.linear.bias.fill_(0.7)
    sigma = torch.tensor([0.1, 1.0], dtype=torch.float64)
    mse = torch.tensor([2.0, 3.0], dtype=torch.float64)
    lam = 1 / Preconditioning().c_out(sigma) ** 2  # EDM lambda, i.e. weight 1 on the F loss
    expected = lam * (mse / (1 / Preconditioning().c_out(sigma) ** 2)) * math.exp(-0.7) + 0.7
    assert sched.loss(sigma, mse).detach().numpy() == pytest.approx(expected.numpy(), rel=1e-6)


# -- densities ---------------------------------------------------------------------------------


def densities():
    adaptive = AdaptiveDensity(OptimalLossWeight(gaussian_curve()), bins=8, every=1)
    adaptive.update(torch.tensor([0.01, 0.1, 1.0, 5.0]), torch.tensor([0.01, 0.05, 0.3, 0.26]))
    return {
        "edm": (lambda p: LogSigmaNormal(-1.2, 1.2), scipy.stats.norm(-1.2, 1.2)),
        "sd3-shift3": (lambda p: logit_normal(0.0, 1.0, 3.0), scipy.stats.norm(math.log(3.0), 1.0)),
        "uniform-t": (lambda p: LogSigmaLogistic(0.0, 1.0), scipy.stats.logistic(0.0, 1.0)),
        # log SNR ~ Laplace(mu=1, b=0.5)  <=>  log sigma ~ Laplace(-1/2, 1/4)
        "laplace": (lambda p: LogSigmaLaplace(1.0, 0.5), scipy.stats.laplace(-0.5, 0.25)),
        "adaptive": (lambda p: adaptive, None),
    }


@pytest.mark.parametrize("name", list(densities()))
@pytest.mark.parametrize("process", [VE(), Flow(), VP()], ids=["ve", "flow", "vp"])
def test_density_integrates_to_one_and_matches_its_sampler(name, process):
    build, reference = densities()[name]
    obj = Objective("t", process, "x0", build(process))
    # Trapezoids on a mesh through the density's jumps and kinks (smooth between them: error ~h^2), at h
    # and 2h: the integral over [-14, 14] plus the cdf's mass beyond must be 1 within |T_h - T_2h| (three
    # times T_h's estimated error) plus rounding.
    dist = obj.time_dist
    breaks = np.r_[getattr(dist, "edges", []), [-dist.mu / 2] if isinstance(dist, LogSigmaLaplace) else []]
    breaks = np.r_[np.nextafter(breaks, -np.inf), np.nextafter(breaks, np.inf)]  # both sides of a jump
    fine, coarse = (np.union1d(np.linspace(-14, 14, n), breaks) for n in (200001, 100001))
    integral = [np.trapezoid(np.exp(obj.log_density(torch.tensor(x)).numpy()), x) for x in (fine, coarse)]
    beyond = obj.cdf(torch.tensor(-14.0)).item() + 1 - obj.cdf(torch.tensor(14.0)).item()
    assert abs(integral[0] + beyond - 1) <= abs(integral[0] - integral[1]) + len(fine) * np.finfo(float).eps
    ls = np.linspace(-14, 14, 200001)
    dens = np.exp(obj.log_density(torch.tensor(ls)).numpy())
    sample = np.log(obj.sample_sigma(4000, torch.Generator().manual_seed(0)).numpy())
    assert scipy.stats.kstest(sample, lambda x: obj.cdf(torch.tensor(x)).numpy()).pvalue > 1e-3
    if reference is not None:  # the paper's density, in log sigma
        assert dens[::5000] == pytest.approx(reference.pdf(ls[::5000]), rel=1e-6, abs=1e-12)
        assert obj.cdf(torch.tensor(ls[::5000])).numpy() == pytest.approx(reference.cdf(ls[::5000]), abs=1e-9)


def test_sd3_shift_matches_the_time_formula():
    """t = sigmoid(u), t' = s t / (1 + (s - 1) t) (SD3) has the law of our shifted logit-normal on flow."""
    gen = torch.Generator().manual_seed(1)
    t = torch.sigmoid(torch.randn(4000, generator=gen, dtype=torch.float64))
    shifted = 3.0 * t / (1 + 2.0 * t)
    dist = logit_normal(0.0, 1.0, 3.0)
    cdf = lambda x: dist.cdf_t(Flow(), torch.tensor(x)).numpy()  # noqa: E731
    assert scipy.stats.kstest(shifted.numpy(), cdf).pvalue > 1e-3


def test_laplace_is_the_log_snr_density_of_hang_et_al():
    """p(log SNR) = exp(-|l - mu| / b) / 2b with l = -2 log sigma, so p(log sigma) = 2 p(l)."""
    dist = LogSigmaLaplace(0.3, 0.5)
    ls = torch.linspace(-3, 3, 13, dtype=torch.float64)
    lam = -2 * ls
    expected = 2 * torch.exp(-(lam - 0.3).abs() / 0.5) / (2 * 0.5)
    assert torch.exp(dist.log_density_log_sigma(ls)).numpy() == pytest.approx(expected.numpy(), rel=1e-12)


# -- the adaptive density ----------------------------------------------------------------------


def test_adaptive_update_moves_mass_toward_larger_weighted_gaps():
    curve = gaussian_curve()
    p = AdaptiveDensity(OptimalLossWeight(curve), sigma_min=0.01, sigma_max=10.0, bins=6, every=2,
                        floor=0.1, horizon=1)
    before = p.probs.copy()
    assert before.sum() == pytest.approx(1.0)
    centres = np.exp(0.5 * (p.edges[:-1] + p.edges[1:]))
    gap = np.array([0.0, 0.0, 0.0, 0.05, 0.0, 0.0])  # only bin 3 is far from its floor
    for _ in range(2):  # `every` = 2 steps, then the update
        loss = torch.tensor(p.bin_jstar + gap)
        p.update(torch.tensor(centres), loss)
    assert p.updates == 1
    # By hand: (1 - floor) w gap / sum + floor / bins.
    expected = np.full(6, 0.1 / 6)
    expected[3] += 0.9
    assert p.probs == pytest.approx(expected, rel=1e-9)
    assert p.probs[3] > before[3]
    assert all(p.probs[i] < before[i] for i in (0, 1, 2, 4, 5) if before[i] > 0.1 / 6)
    # Two gaps: mass in proportion to w * gap.
    gap = np.array([0.0, 0.02, 0.0, 0.04, 0.0, 0.0])
    for _ in range(2):
        p.update(torch.tensor(centres), torch.tensor(p.bin_jstar + gap))
    q = p.bin_weight[[1, 3]] * gap[[1, 3]]
    assert (p.probs[[1, 3]] - 0.1 / 6) == pytest.approx(0.9 * q / q.sum(), rel=1e-9)


def test_adaptive_bins_without_samples_keep_their_estimate():
    p = AdaptiveDensity(OptimalLossWeight(gaussian_curve()), bins=4, every=1)
    before = p.j_model.copy()
    p.update(torch.tensor([1.0]), torch.tensor([0.5]))
    changed = p.j_model != before
    assert changed.sum() == 1 and p.j_model[changed][0] == 0.5


def _planted(p, gap, rng, updates, noise):
    """Feed `updates` updates of per-sample losses J*_bin + gap + noise at the bin centres."""
    centres = torch.tensor(np.exp(0.5 * (p.edges[:-1] + p.edges[1:])))
    for _ in range(updates * p.every):
        loss = p.bin_jstar + gap + noise * rng.standard_normal(p.bins)
        p.update(centres, torch.tensor(loss))


def test_adaptive_smoothing_tracks_a_planted_gap_with_the_error_it_reports():
    """Planted per-bin gaps under per-sample noise 10x larger: the smoothed J - J* recovers them within
    4 reported standard errors, and the error shrinks like 1 / sqrt(m (2h - 1)) for m samples per update."""
    rng = np.random.default_rng(0)
    gap = np.linspace(0.001, 0.02, 8)
    errors = {}
    for horizon in (1, 10, 40):
        p = AdaptiveDensity(OptimalLossWeight(gaussian_curve()), bins=8, every=4, horizon=horizon)
        _planted(p, gap, rng, updates=200, noise=0.1)
        se = p.gap_stderr()
        z = (p.j_model - p.bin_jstar - gap) / se
        assert np.all(np.abs(z) < 4), (horizon, z)
        errors[horizon] = float(np.mean(se))
    # 4 samples per bin per update, sd 0.1; the steady-state n_eff is 4 (2h - 1).  The mean over 8 bins of a
    # sample SD from n_eff samples has mean ~ c4 sigma and relative sd ~ sqrt(1 - c4^2) / sqrt(8): 3 of those.
    for h in (1, 10, 40):
        n_eff = 4 * (2 * h - 1)
        c4 = math.sqrt(2 / (n_eff - 1)) * math.exp(math.lgamma(n_eff / 2) - math.lgamma((n_eff - 1) / 2))
        expected = c4 * 0.1 / math.sqrt(n_eff)
        assert errors[h] == pytest.approx(expected, rel=3 * math.sqrt(1 - c4**2) / math.sqrt(8)), h


def test_adaptive_smoothing_follows_a_moving_gap_within_its_horizon():
    """After the gap jumps, the smoothed estimate has moved 1 - (1 - 1/h)^k of the way after k updates."""
    p = AdaptiveDensity(OptimalLossWeight(gaussian_curve()), bins=4, every=1, horizon=5)
    rng = np.random.default_rng(1)
    _planted(p, np.zeros(4), rng, updates=50, noise=0.0)
    _planted(p, np.full(4, 0.01), rng, updates=3, noise=0.0)
    moved = (p.j_model - p.bin_jstar) / 0.01
    # Weights 1, k, k^2 on the new updates over the whole sum (the old ~ k^3 / (1 - k)).
    k = 1 - 1 / 5
    assert moved == pytest.approx(np.full(4, (1 - k**3)), rel=1e-3)


def test_adaptive_state_round_trips_and_old_dicts_keep_horizon_one():
    p = AdaptiveDensity(OptimalLossWeight(gaussian_curve()), bins=4, every=2, horizon=7)
    _planted(p, np.full(4, 0.01), np.random.default_rng(2), updates=3, noise=0.05)
    q = AdaptiveDensity.from_dict(p.to_dict())
    assert q.to_dict() == p.to_dict() and q.horizon == 7
    np.testing.assert_array_equal(q.gap_stderr(), p.gap_stderr())
    old = p.to_dict()
    del old["horizon"]
    for key in ("sum_sq", "ema_count", "ema_count_sq", "ema_sum", "ema_sq"):
        del old["state"][key]
    assert AdaptiveDensity.from_dict(old).horizon == 1


# -- the trainer -------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["optimal-loss", "edm2-learned"])
def test_exact_resume_with_a_dynamic_schedule(tmp_path, schedule):
    data = points()
    options = dict(every=2) if schedule == "optimal-loss" else {}

    def objective():
        return apply_schedule("edm", schedule, gaussian_curve(), **options)

    config = TrainConfig(steps=8, batch_size=32, log_every=2, checkpoint_every=4, warmup=2)
    straight = train(data, objective(), TINY, config, out=tmp_path / "a", progress=False)
    half = TrainConfig(**{**config.__dict__, "steps": 4})
    train(data, objective(), TINY, half, out=tmp_path / "b", progress=False)
    resumed = train(data, objective(), TINY, config, out=tmp_path / "b", resume=True, progress=False)
    for a, b in zip(straight.net.parameters(), resumed.net.parameters(), strict=True):
        assert torch.equal(a, b)
    assert straight.objective.to_dict() == resumed.objective.to_dict()
    if schedule == "optimal-loss":
        assert resumed.objective.time_dist.updates == 4
        assert len(resumed.objective.time_dist.history) == 5
    else:  # u(sigma) trained: its parameters moved away from the zero initialisation
        assert resumed.objective.weight.net.linear.bias.abs().item() > 0
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()


def test_a_checkpoints_schedule_reloads_identically(tmp_path):
    config = TrainConfig(steps=6, batch_size=16, log_every=3, checkpoint_every=6, warmup=1)
    trainer = train(points(), apply_schedule("flow", "optimal-loss", gaussian_curve(), every=2), TINY, config,
                    out=tmp_path, progress=False)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.objective.to_dict() == trainer.objective.to_dict()
    assert ckpt.objective.time_dist.updates == 3
    a = ckpt.objective.sample_sigma(50, torch.Generator().manual_seed(5))
    b = trainer.objective.sample_sigma(50, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    s = torch.logspace(-2, 1, 7, dtype=torch.float64)
    assert torch.equal(ckpt.objective.x0_weight(s), trainer.objective.x0_weight(s))


def test_trainer_does_not_mutate_the_callers_objective():
    obj = apply_schedule("edm", "optimal-loss", gaussian_curve(), every=1)
    before = obj.to_dict()
    trainer = Trainer(points(), obj, TINY, TrainConfig(steps=2, batch_size=8, warmup=1))
    trainer.run(progress=False)
    assert obj.to_dict() == before and trainer.objective.time_dist.updates == 2


BAD = [lambda: LogSigmaNormal(0.0, 0.0), lambda: LogSigmaLaplace(0.0, -1.0),
       lambda: LogSigmaLogistic(0.0, math.inf),
       lambda: AdaptiveDensity(OptimalLossWeight(gaussian_curve()), floor=0.0),
       lambda: AdaptiveDensity(OptimalLossWeight(gaussian_curve()), every=0),
       lambda: AdaptiveDensity(OptimalLossWeight(gaussian_curve()), horizon=0.5),
       lambda: AdaptiveDensity(OptimalLossWeight(gaussian_curve()), horizon=math.nan),
       lambda: OptimalLossWeight(gaussian_curve(), width=0.0),
       lambda: OptimalLossWeight(gaussian_curve(), w_max=-1.0)]


@pytest.mark.parametrize("build", BAD)
def test_bad_schedule_parameters_are_refused(build):
    with pytest.raises(ValueError):
        build()


def test_unknown_schedule_and_missing_curve_are_clear_errors():
    with pytest.raises(ValueError, match="unknown schedule"):
        apply_schedule("edm", "nope")
    with pytest.raises(ValueError, match="needs an optimal-loss curve"):
        apply_schedule("edm", "optimal-loss")
    assert set(schedule_names()) == set(SCHEDULES)
    assert apply_schedule("edm", "native") == get_objective("edm")


def test_schedule_sampler_state_round_trip():
    a = ScheduleSampler("flow", "optimal-loss", curve=gaussian_curve(), every=1)
    s = a.sample_sigma(32)
    a.update(s, 0.3 * torch.ones(32))
    b = ScheduleSampler("flow", "optimal-loss", curve=gaussian_curve(), every=1, seed=9)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.sample_sigma(10), b.sample_sigma(10))
    assert VP().name == "vp"


# -- the README example ------------------------------------------------------------------------


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- schedule-example -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README.md lacks the schedule example block"
    return block.group(1)


@pytest.mark.slow
def test_readme_schedule_example_runs(tmp_path):
    code = readme_example()
    assert len(code.strip().splitlines()) < 30
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "adaptive p(sigma)" in run.stdout


# -- the command line --------------------------------------------------------------------------


@pytest.mark.slow
def test_train_schedule_from_the_command_line_resumes_and_reloads(tmp_path, capsys):
    from lossfloor.app.cli import main

    def run(*args):
        with pytest.raises(SystemExit) as err:
            main(list(args))
        return err.value.code

    from lossfloor.data.load import load_dataset
    from lossfloor.floor.config import EstimatorConfig
    from lossfloor.floor.estimator import Estimator

    data = load_dataset("clusters", n=256)  # train checks the curve against its data (issue 20)
    curve = Estimator(data.rows(), EstimatorConfig(queries=32)).curve(np.geomspace(0.002, 80, 16))
    curve.fingerprint = data.fingerprint
    curve.save(tmp_path / "curve.json")
    base = ["train", "--data", "clusters", "--n", "256", "--model", "mlp", "--width", "16", "--depth", "1",
            "--schedule", "optimal-loss", "--curve", str(tmp_path / "curve.json"), "--batch-size", "32",
            "--log-every", "2", "--checkpoint-every", "2", "--no-progress"]
    assert run(*base, "--steps", "6", "--out", str(tmp_path / "a")) == 0
    assert run(*base, "--steps", "3", "--out", str(tmp_path / "b")) == 0
    assert run(*base, "--steps", "6", "--out", str(tmp_path / "b"), "--resume") == 0
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert b.step == 6 and b.objective.name == "edm+optimal-loss" and b.objective.time_dist.steps == 6
    assert a.objective.to_dict() == b.objective.to_dict()
    for k in a.state["net"]:
        assert torch.equal(a.state["net"][k], b.state["net"][k])
    capsys.readouterr()
    assert run("train", "--schedule", "optimal-loss", "--out", str(tmp_path / "c"), "--no-progress") == 2
    assert "needs an optimal-loss curve" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
