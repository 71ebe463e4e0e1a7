"""The diffusers integration, checked against diffusers itself (skipped when diffusers is not installed)."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers",
                                reason="diffusers is not installed: pip install 'lossfloor[diffusers]'")

from lossfloor.integrations import diffusers as lfd  # noqa: E402
from lossfloor.objective.targets import make_target, target_error_factor, x0_from_prediction  # noqa: E402
from lossfloor.objective.weights import Simple  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
F64 = torch.float64
SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTIONS = ("epsilon", "v_prediction", "sample")
VP_CASES = (
    [("DDPMScheduler", dict(beta_schedule=b, prediction_type=p)) for b in SCHEDULES for p in PREDICTIONS]
    + [("DDIMScheduler", dict(beta_schedule=b, prediction_type=p)) for b in SCHEDULES for p in PREDICTIONS]
    + [("DDPMScheduler", dict(beta_schedule=b, prediction_type=p, rescale_betas_zero_snr=True))
       for b in SCHEDULES for p in ("v_prediction", "sample")]
    + [("DDPMScheduler", dict(trained_betas=np.linspace(1e-3, 0.05, 200).tolist(), num_train_timesteps=200,
                              prediction_type="v_prediction"))]
    + [("EulerDiscreteScheduler", dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)),
       ("EulerDiscreteScheduler", dict(prediction_type="v_prediction", rescale_betas_zero_snr=True))]
)
EXPECTED_TARGET = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread


def _scheduler(name, config):
    return getattr(diffusers, name)(**config)


def _zero_snr(config) -> bool:
    return bool(config.get("rescale_betas_zero_snr"))


def _example():
    """examples/diffusers_digits.py as a module (its train loop is the one under test)."""
    path = ROOT / "examples" / "diffusers_digits.py"
    spec = importlib.util.spec_from_file_location("diffusers_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_unet(seed=0, out_channels=1):
    torch.manual_seed(seed)
    model = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=out_channels,
                                  block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                                  down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    return model.eval()


# -- schedulers -> objectives --------------------------------------------------------------------


@pytest.mark.parametrize("name,config", VP_CASES)
def test_vp_sigma_levels_are_the_schedulers_own(name, config):
    sched = _scheduler(name, config)
    obj = lfd.objective_from_scheduler(sched)
    abar = sched.alphas_cumprod.to(F64)
    atoms = obj.atoms()
    assert len(atoms) == sched.config.num_train_timesteps and obj.is_discrete
    assert obj.target == EXPECTED_TARGET[config.get("prediction_type", "epsilon")] and obj.weight == Simple()
    # Every level with alpha_bar > 0 is exactly the scheduler's sqrt((1 - alpha_bar) / alpha_bar) in float64.
    exact = abar > 0
    assert exact[:-1].all()
    exact[-1] = not _zero_snr(config)  # 0 (DDPM) or 2**-24 (Euler) stands for alpha_bar_T = 0
    expected = torch.sqrt((1 - abar[exact]) / abar[exact])
    torch.testing.assert_close(atoms[exact], expected, rtol=1e-13, atol=0)
    # Diffusers timestep k is lossfloor time (k + 1) / T.
    k = torch.arange(len(abar), dtype=F64)
    alpha = obj.process.alpha((k + 1) / len(abar))
    torch.testing.assert_close(alpha[exact] ** 2, abar[exact], rtol=1e-13, atol=0)
    if _zero_snr(config):  # alpha_bar_T = 0 stands in as <= 2**-24, beyond the previous level
        assert math.isfinite(atoms[-1]) and atoms[-1] > atoms[-2] and atoms[-1] >= 4095


@pytest.mark.parametrize("name,config", VP_CASES)
def test_vp_target_is_the_schedulers_own(name, config):
    sched = _scheduler(name, config)
    obj = lfd.objective_from_scheduler(sched)
    gen = torch.Generator().manual_seed(1)
    steps = sched.config.num_train_timesteps
    k = torch.tensor([0, 1, 17, steps // 4, steps // 2, 3 * steps // 4, steps - 2]
                     + ([] if _zero_snr(config) else [steps - 1]))
    x0 = torch.rand(len(k), 1, 4, 4, generator=gen, dtype=F64) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen, dtype=F64)
    x_t = sched.add_noise(x0, noise, k)
    if name.startswith("Euler"):  # Euler schedulers noise in VE coordinates: x~ = x0 + sigma * noise
        sigma = obj.atoms()[k][:, None, None, None]
        torch.testing.assert_close(x_t, x0 + sigma * noise, rtol=1e-6, atol=1e-6)
        x_t = x_t / torch.sqrt(1 + sigma**2)
    prediction = config.get("prediction_type", "epsilon")
    expected = {"epsilon": noise, "sample": x0}.get(prediction)
    if expected is None:  # DDPMScheduler.get_velocity reads only alphas_cumprod (Euler has none of its own)
        expected = diffusers.DDPMScheduler.get_velocity(sched, x0, noise, k)
    target = make_target(obj.target, obj.process, (k + 1).to(F64) / steps, x_t, x0)
    tol = 1e-6 if name.startswith("Euler") else 1e-9  # Euler keeps its sigma table in float32
    torch.testing.assert_close(target, expected, rtol=tol, atol=tol)


def test_zero_snr_terminal_level():
    """At the last step diffusers' x_t is pure noise; the mapped level differs by sqrt(alpha_bar) x0 only."""
    sched = diffusers.DDPMScheduler(prediction_type="v_prediction", rescale_betas_zero_snr=True)
    obj = lfd.objective_from_scheduler(sched)
    assert sched.alphas_cumprod[-1] == 0
    abar_t = 1 / (1 + obj.atoms()[-1] ** 2)
    assert 0 < abar_t <= lfd.ZERO_SNR_ALPHA_BAR
    x0 = torch.rand(3, 1, 4, 4, dtype=F64) * 2 - 1
    noise = torch.randn(x0.shape, dtype=F64)
    last = torch.tensor([999] * 3)
    v_true = sched.get_velocity(x0, noise, last)  # = -x0
    v_mapped = make_target("v", obj.process, torch.ones(3, dtype=F64), sched.add_noise(x0, noise, last), x0)
    assert (v_mapped - v_true).abs().max() <= 2 * math.sqrt(abar_t) * (noise.abs().max() + 1)


def test_scheduler_from_config_dict_and_folder(tmp_path):
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    prediction_type="v_prediction")
    sched.save_pretrained(tmp_path)
    for source in (sched, dict(sched.config) | {"_class_name": "DDIMScheduler"}, tmp_path,
                   tmp_path / "scheduler_config.json"):
        obj = lfd.objective_from_scheduler(source)
        torch.testing.assert_close(obj.atoms(), lfd.objective_from_scheduler(sched).atoms(), rtol=0, atol=0)
        assert obj.target == "v"


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_levels_target_and_time_distribution(shift):
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    obj = lfd.objective_from_scheduler(sched)
    steps = sched.config.num_train_timesteps
    assert obj.target == "velocity" and obj.process.name == "flow"
    # The noising and the target of the SD3 scripts at the scheduler's own timesteps.
    gen = torch.Generator().manual_seed(2)
    idx = torch.tensor([0, 1, 100, 500, 998, 999])
    timesteps, sigmas = sched.timesteps[idx], sched.sigmas[idx].to(F64)
    t = timesteps.to(F64) / steps  # FlowMatchEulerDiscreteScheduler.timesteps = sigma * T
    torch.testing.assert_close(t, sigmas, rtol=1e-6, atol=0)
    x0 = torch.rand(len(idx), 1, 4, 4, generator=gen, dtype=F64) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen, dtype=F64)
    x_t = torch.cat([sched.scale_noise(x0[i:i + 1], timesteps[i:i + 1], noise[i:i + 1])
                     for i in range(len(idx))])
    s4 = sigmas[:, None, None, None]
    torch.testing.assert_close(x_t, obj.process.alpha(s4) * x0 + obj.process.sigma(s4) * noise, rtol=1e-12,
                               atol=1e-12)
    target = make_target("velocity", obj.process, sigmas, x_t, x0)
    torch.testing.assert_close(target, noise - x0, rtol=1e-9, atol=1e-9)
    # VE levels of the training grid: sigma / (1 - sigma).
    grid = lfd.training_sigmas(sched, obj)
    inner = sched.sigmas.to(F64)[sched.sigmas < 1]
    torch.testing.assert_close(grid, torch.sort(inner / (1 - inner)).values, rtol=1e-12, atol=0)
    # The scripts' logit-normal u, rounded onto the grid, against the mapped continuous distribution.
    from diffusers.training_utils import compute_density_for_timestep_sampling

    n = 200_000
    u = compute_density_for_timestep_sampling("logit_normal", n, logit_mean=0.0, logit_std=1.0,
                                              generator=torch.Generator().manual_seed(3))
    drawn = sched.sigmas[(u * steps).long()].to(F64)
    probes = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95], dtype=F64)
    cdf = obj.time_dist.cdf_t(obj.process, probes)
    empirical = (drawn[None, :] <= probes[:, None]).double().mean(1)
    fine = torch.linspace(1e-4, 1 - 1e-4, 20001, dtype=F64)
    density = torch.exp(obj.time_dist.log_density_t(obj.process, fine)).max()
    rounding = density * shift / steps  # the grid moves t by at most shift'(tau) / T <= shift / T
    assert ((empirical - cdf).abs() <= 4 * torch.sqrt(cdf * (1 - cdf) / n) + rounding).all()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_edm_preconditioning_is_the_schedulers_own(prediction):
    sched = diffusers.EDMEulerScheduler(sigma_data=0.7, prediction_type=prediction)
    obj = lfd.objective_from_scheduler(sched)
    assert obj.target == "F" and obj.precond.sigma_data == 0.7 and obj.process.name == "ve"
    gen = torch.Generator().manual_seed(4)
    sigma = torch.tensor([0.002, 0.1, 1.0, 7.0, 80.0], dtype=F64)
    x = torch.randn(len(sigma), 1, 4, 4, generator=gen, dtype=F64)
    out = torch.randn(x.shape, generator=gen, dtype=F64)
    s4 = sigma[:, None, None, None]
    sign = -1.0 if prediction == "v_prediction" else 1.0
    x0 = x0_from_prediction("F", obj.process, sigma, x, sign * out, obj.precond)
    torch.testing.assert_close(x0, sched.precondition_outputs(x, out, s4), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(obj.precond.c_in(s4) * x, sched.precondition_inputs(x, s4), rtol=1e-12, atol=0)
    denoiser = lfd.DiffusersDenoiser(_tiny_unet(), sched)
    c_noise = sched.precondition_noise(sigma.float()).double()
    torch.testing.assert_close(denoiser.timestep(sigma, sigma), c_noise)


REFUSALS = [
    (lambda: diffusers.DDPMScheduler(rescale_betas_zero_snr=True), {}, "epsilon"),
    (lambda: diffusers.ScoreSdeVeScheduler(), {}, "not a VP"),
    (lambda: diffusers.FlowMatchEulerDiscreteScheduler(invert_sigmas=True), {}, "invert_sigmas"),
    (lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), {"weighting_scheme": "none"}, "shift 3"),
    (lambda: diffusers.FlowMatchEulerDiscreteScheduler(), {"weighting_scheme": "mode"}, "weighting_scheme"),
    (lambda: {"_class_name": "NoSuchScheduler"}, {}, "unknown diffusers scheduler class"),
    (lambda: {"_class_name": "UNet2DModel"}, {}, "unknown diffusers scheduler class"),
]


@pytest.mark.parametrize("make,options,fragment", REFUSALS)
def test_unmappable_schedulers_are_refused_in_one_line(make, options, fragment):
    with pytest.raises(lfd.UnsupportedScheduler) as err:
        lfd.objective_from_scheduler(make(), **options)
    assert fragment in str(err.value) and "\n" not in str(err.value)


# -- models -> x0-denoisers ---------------------------------------------------------------------------


def _close(a, b, scale=None):
    """float32 agreement, relative to the magnitude of the (unclipped) x0 estimate: an epsilon prediction
    at the last step is divided by sqrt(alpha_bar) = 0.006."""
    scale = b.abs().max() if scale is None else scale
    assert (a - b).abs().max() <= 1e-5 * (1 + scale), (a - b).abs().max()


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("clip", [False, True])
def test_denoiser_is_step_pred_original_sample(prediction, clip):
    model = _tiny_unet()
    sched = diffusers.DDPMScheduler(prediction_type=prediction, clip_sample=clip)
    denoiser = lfd.DiffusersDenoiser(model, sched, clip_sample=clip)
    gen = torch.Generator().manual_seed(5)
    x0 = torch.rand(4, 1, 8, 8, generator=gen) * 2 - 1
    eps = torch.randn(x0.shape, generator=gen)
    for k in (0, 37, 500, 998, 999):
        sigma = float(denoiser.objective.atoms()[k])
        with torch.no_grad():
            ours = denoiser(x0 + sigma * eps, sigma)
            x_t = sched.add_noise(x0, eps, torch.tensor([k]))
            ref = sched.step(model(x_t, k).sample, k, x_t).pred_original_sample
            unclipped = lfd.DiffusersDenoiser(model, sched)(x0 + sigma * eps, sigma)
        _close(ours, ref, unclipped.abs().max())


def test_denoiser_learned_variance_uses_the_mean_half():
    model = _tiny_unet(out_channels=2)
    sched = diffusers.DDPMScheduler(variance_type="learned_range", clip_sample=False)
    denoiser = lfd.DiffusersDenoiser(model, sched)
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    eps = torch.randn(x0.shape)
    sigma = float(denoiser.objective.atoms()[300])
    with torch.no_grad():
        x_t = sched.add_noise(x0, eps, torch.tensor([300]))
        ref = sched.step(model(x_t, 300).sample, 300, x_t, generator=torch.Generator().manual_seed(0))
        _close(denoiser(x0 + sigma * eps, sigma), ref.pred_original_sample)


def test_flow_denoiser_reads_velocity_at_the_schedulers_timesteps():
    model = _tiny_unet()
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    denoiser = lfd.DiffusersDenoiser(model, sched)
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    eps = torch.randn(x0.shape)
    for i in (10, 500, 990):
        timestep, s = sched.timesteps[i:i + 1], float(sched.sigmas[i])
        with torch.no_grad():
            x_t = sched.scale_noise(x0, timestep, eps)
            ref = x_t - s * model(x_t, timestep.expand(2)).sample  # x0 = x_t - sigma * (noise - x0)
            ours = denoiser(x0 + s / (1 - s) * eps, s / (1 - s))
        _close(ours, ref)


def test_edm_denoiser_is_the_schedulers_preconditioning():
    model = _tiny_unet()
    sched = diffusers.EDMEulerScheduler(sigma_data=0.5, prediction_type="v_prediction")
    denoiser = lfd.DiffusersDenoiser(model, sched)
    x = torch.randn(2, 1, 8, 8) * 3
    for s in (0.01, 1.0, 40.0):
        sig = torch.tensor(s)
        with torch.no_grad():
            out = model(sched.precondition_inputs(x, sig), sched.precondition_noise(sig).expand(2)).sample
            _close(denoiser(x, s), sched.precondition_outputs(x, out, sig))


def test_sigma_grid_snaps_to_training_levels():
    sched = diffusers.DDPMScheduler()
    denoiser = lfd.DiffusersDenoiser(_tiny_unet(), sched)
    grid = lfd.sigma_grid(denoiser, 0.002, 80.0, 12)
    atoms = denoiser.objective.atoms().numpy()
    assert len(grid) >= 10 and np.isin(grid, atoms).all() and grid.min() == atoms.min() and grid.max() <= 80
    t = denoiser.objective.process.t_of_sigma(torch.tensor(grid))
    k = denoiser.timestep(t, torch.tensor(grid))
    assert torch.equal(k, k.round())  # integer timesteps: the levels the model was trained on


# -- a diffusers-style training loop with GapMonitor ----------------------------------------------------


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights_are_min_snr_in_x0_terms(prediction):
    """Min-SNR-gamma on the eps (or v) MSE is min(SNR, gamma) on the x0 MSE: the conversion table's check."""
    example = _example()
    sched = example.build_scheduler(prediction)
    obj = lfd.objective_from_scheduler(sched)
    k = torch.arange(0, 1000, 7)
    w = example.min_snr_weights(sched, k, 5.0).double()
    factor = target_error_factor(obj.target, obj.process, (k + 1).double() / 1000)
    snr = (1 / obj.process.ve_sigma((k + 1).double() / 1000)) ** 2
    torch.testing.assert_close(w * factor, torch.clamp(snr, max=5.0), rtol=1e-5, atol=0)


@pytest.mark.parametrize("prediction,snr_gamma", [("epsilon", None), ("v_prediction", 5.0)])
def test_gap_monitor_in_a_diffusers_training_loop(prediction, snr_gamma):
    """Every batch of the loop is captured (add_noise's x0, noise and timesteps, the UNet's input and
    output); the monitor's per-bin x0 loss, J*, counts and weighted loss must equal those computed
    directly: x0 loss from step().pred_original_sample (float64), sigma from alphas_cumprod, bins by
    np.histogram on the monitor's edges, lambda from the x0-to-target conversion by hand."""
    example = _example()
    from lossfloor.floor.curve import OptimalLossCurve

    sched = example.build_scheduler(prediction)
    obj = lfd.objective_from_scheduler(sched)
    model = example.build_unet((1, 8, 8), channels=(8, 16))
    data = torch.rand(64, 1, 8, 8) * 2 - 1
    sigmas = np.geomspace(0.005, 400, 20)
    floor = OptimalLossCurve(sigmas, 0.3 * sigmas**2 / (1 + sigmas**2), np.zeros(20), 0.3, 64, 64)
    monitor = example.GapMonitor(floor, obj)
    seen, batches = [], []

    def record(step, objective):
        seen.append(step)

    add_noise = sched.add_noise

    def spy_add_noise(x0, noise, k):
        batches.append(dict(x0=x0.clone(), noise=noise.clone(), k=k.clone()))
        return add_noise(x0, noise, k)

    sched.add_noise = spy_add_noise
    def spy_forward(module, args, out):
        batches[-1].update(x_t=args[0].detach().clone(), out=out.sample.detach().clone())

    hook = model.register_forward_hook(spy_forward)
    torch.manual_seed(0)
    losses = example.train(model, sched, data, steps=6, batch_size=16, seed=0, snr_gamma=snr_gamma,
                           monitor=monitor, on_step=record)
    hook.remove()
    summary = monitor.summary()
    assert seen == list(range(6)) and len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert len(batches) == 6

    # The same quantities directly, per sample, in float64.
    stepper = diffusers.DDPMScheduler.from_config(sched.config, clip_sample=False)
    abar = torch.as_tensor(sched.alphas_cumprod, dtype=F64)
    eps32 = float(torch.finfo(torch.float32).eps)
    sigma, direct, lam, rtol = [], [], [], []
    for b in batches:
        x0, k, x_t, out = b["x0"].double(), b["k"], b["x_t"], b["out"]
        target = b["noise"] if prediction == "epsilon" else add_velocity(sched, b)
        x0_hat = torch.cat([stepper.step(out[i:i + 1].double(), int(k[i]), x_t[i:i + 1].double())
                            .pred_original_sample for i in range(len(k))])
        ab = abar[k]
        s2 = (1 - ab) / ab
        sigma.append(s2.sqrt())
        direct.append(((x0_hat - x0) ** 2).mean(dim=(1, 2, 3)))
        lam.append(1 / s2 if prediction == "epsilon" else (1 + s2) / s2)  # ||target err||^2 / ||x0 err||^2
        # The monitor's path differs only by float32 rounding: x_t (<= 1.5 eps |x_t| per element) enters
        # x0_hat with 1/sqrt(1 - abar) against the target error, and its float32 MSE sums D squares.
        rms = ((out - target).double() ** 2).mean(dim=(1, 2, 3)).sqrt()
        amplification = x_t.abs().amax(dim=(1, 2, 3)).double() / ((1 - ab).sqrt() * rms)
        rtol.append(2 * eps32 * (2 * amplification + out[0].numel()))
    sigma, direct, lam, rtol = (torch.cat(v).numpy() for v in (sigma, direct, lam, rtol))
    edges = monitor.loss.edges
    which = np.searchsorted(edges, sigma, side="right") - 1
    inside = (which >= 0) & (which < len(edges) - 1)
    assert summary["outside"] == int((~inside).sum())
    counts = np.bincount(which[inside], minlength=len(edges) - 1)
    rows = {round(r["sigma_lo"], 12): r for r in summary["bins"]}
    assert sorted(rows) == sorted(round(edges[j], 12) for j in np.flatnonzero(counts))
    for j in np.flatnonzero(counts):
        row, mine = rows[round(edges[j], 12)], inside & (which == j)
        assert row["count"] == counts[j]
        tol = float(np.sum(rtol[mine] * direct[mine]) / counts[j])
        assert abs(row["x0_loss"] - direct[mine].mean()) <= tol, (j, row["x0_loss"], direct[mine].mean(), tol)
        assert row["optimal_loss"] == pytest.approx(floor(sigma[mine]).mean(), rel=1e-9)
        assert row["gap"] == pytest.approx(row["x0_loss"] - row["optimal_loss"], rel=1e-9, abs=1e-12)
    assert summary["objective"] == obj.name
    tol = float(np.mean(lam * rtol * direct))
    assert abs(summary["weighted_loss"] - np.mean(lam * direct)) <= tol
    assert summary["weighted_optimal"] == pytest.approx(np.mean(lam * floor(sigma)), rel=1e-9)


def add_velocity(sched, batch):
    """diffusers' v target of a captured batch."""
    return sched.get_velocity(batch["x0"], batch["noise"], batch["k"])


# -- lossfloor diagnose --diffusers: end to end, against diffusers' own step() ---------------------------


def run_cli(args, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `lossfloor ARGS`, in process."""
    from lossfloor.app.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """Tiny UNet2DModels trained on digits with diffusers' scheduler and loss (eps, v), as pipelines."""
    from lossfloor.data.load import load_dataset

    example, data = _example(), load_dataset("digits")
    root = tmp_path_factory.mktemp("pipelines")
    folders = {}
    for prediction in ("epsilon", "v_prediction"):
        torch.manual_seed(0)
        model, sched = example.build_unet(data.shape, channels=(8, 16)), example.build_scheduler(prediction)
        example.train(model, sched, data.x, steps=30, batch_size=32, lr=3e-3, seed=0)
        diffusers.DDPMPipeline(unet=model, scheduler=sched).save_pretrained(root / prediction)
        folders[prediction] = root / prediction
    return folders


def _direct_losses(folder, x, sigmas, timesteps, queries, seed):
    """Per-level x0 loss from diffusers alone: add_noise, the UNet, step().pred_original_sample, with the
    noise diagnose draws (level_generator(seed + 1, sigma), stratified sources, batches of 512)."""
    from lossfloor.floor.config import level_generator, stratified_sources

    model = diffusers.UNet2DModel.from_pretrained(folder / "unet", low_cpu_mem_usage=False).eval()
    sched = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    sched.register_to_config(clip_sample=False)  # the raw x0 estimate, which the training loss measures
    out = []
    for sigma, k in zip(sigmas, timesteps, strict=True):
        gen = level_generator(seed + 1, sigma)
        losses = []
        for idx in stratified_sources(len(x), queries, gen).split(512):
            x0 = x[idx]
            eps = torch.randn(x0.shape, generator=gen)
            with torch.no_grad():
                x_t = sched.add_noise(x0, eps, torch.tensor([k]))
                x0_hat = sched.step(model(x_t, k).sample, k, x_t).pred_original_sample
            losses.append(((x0_hat - x0) ** 2).mean(dim=(1, 2, 3)).double())
        out.append(torch.cat(losses).mean().item())
    return np.array(out)


@pytest.mark.slow
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_diagnose_diffusers_equals_diffusers_own_x0_loss(pipelines, prediction, tmp_path, capsys):
    from lossfloor.data.load import load_dataset

    out = tmp_path / "diag"
    code, stdout, err = run_cli(["diagnose", "--diffusers", pipelines[prediction], "--data", "digits",
                                 "--levels", "6", "--queries", "96", "--out", out, "--no-progress"], capsys)
    assert code == 0, err
    report = json.loads((out / "diagnosis.json").read_text())
    assert (out / "diagnosis.csv").is_file() and (out / "diagnosis.png").is_file()
    assert report["diffusers"]["scheduler_class"] == "DDPMScheduler" and not report["floor_violation"]
    assert f"total DDPMScheduler/linear/{prediction} loss (train)" in stdout
    sched = diffusers.DDPMScheduler.from_pretrained(pipelines[prediction] / "scheduler")
    abar = sched.alphas_cumprod.double()
    sigmas = np.array([g["sigma"] for g in report["train"]])
    reported = np.array([g["model_loss"] for g in report["train"]])
    # Every level is one of the scheduler's own: sqrt((1 - alpha_bar_k) / alpha_bar_k) for an integer k.
    levels = torch.sqrt((1 - abar) / abar).numpy()
    timesteps = [int(np.argmin(np.abs(levels - s))) for s in sigmas]
    np.testing.assert_allclose(sigmas, levels[timesteps], rtol=1e-12)
    assert len(set(timesteps)) == len(timesteps) >= 5
    direct = _direct_losses(pipelines[prediction], load_dataset("digits").x, sigmas, timesteps, 96, 0)
    np.testing.assert_allclose(reported, direct, rtol=2e-5)
    # The objective's totals exist for both splits and the floor is the same curve's.
    assert set(report["totals"]) == {"train", "test"}
    assert report["totals"]["train"]["optimal"] == report["totals"]["test"]["optimal"]


@pytest.mark.slow
def test_diagnose_diffusers_refuses_mismatched_data(pipelines, tmp_path, capsys):
    wrong_range = tmp_path / "zero_one.npy"
    np.save(wrong_range, np.random.default_rng(0).random((40, 1, 8, 8)).astype(np.float32))
    wrong_shape = tmp_path / "three_channels.npy"
    np.save(wrong_shape, np.random.default_rng(0).uniform(-1, 1, (40, 3, 8, 8)).astype(np.float32))
    cases = [(["--data", wrong_range], "rescale it to [-1, 1]"),
             (["--data", wrong_shape], "expects images of shape (1, 8, 8)"),
             ([], "--diffusers needs --data"),
             (["--data", "digits", "--checkpoint", tmp_path], "not both"),
             (["--data", "digits", "--raw-weights"], "--raw-weights")]
    for extra, fragment in cases:
        out = tmp_path / "never"
        args = ["diagnose", "--diffusers", pipelines["epsilon"], *extra, "--out", out]
        code, _, err = run_cli(args, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and fragment in lines[0], err
        assert not out.exists()
    for folder, fragment in [(tmp_path / "missing", "not a folder"), (tmp_path, "no scheduler")]:
        args = ["diagnose", "--diffusers", folder, "--data", "digits", "--out", tmp_path / "o"]
        code, _, err = run_cli(args, capsys)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_diagnose_diffusers_with_a_curve_evaluates_at_training_levels(pipelines, tmp_path, capsys):
    from lossfloor.floor.curve import OptimalLossCurve

    floor = tmp_path / "floor" / "optimal_loss.json"
    code, _, err = run_cli(["estimate", "--data", "digits", "--sigmas", "0.05,0.3,1,3,10,40", "--queries",
                            "64", "--out", floor.parent, "--no-progress"], capsys)
    assert code == 0, err
    curve = OptimalLossCurve.load(floor)
    args = ["diagnose", "--diffusers", pipelines["v_prediction"], "--data", "digits", "--curve", floor,
            "--queries", "32", "--out", tmp_path / "d", "--no-progress"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "d" / "diagnosis.json").read_text())
    sigmas = np.array([g["sigma"] for g in report["train"]])
    sched = diffusers.DDPMScheduler(prediction_type="v_prediction")
    atoms = lfd.objective_from_scheduler(sched).atoms().numpy()
    assert np.isin(sigmas, atoms).all() and len(sigmas) == 6
    np.testing.assert_allclose(np.log(sigmas), np.log(curve.sigma), atol=0.05)  # the nearest timestep
    np.testing.assert_allclose([g["optimal_loss"] for g in report["train"]], curve(sigmas), rtol=1e-12)
