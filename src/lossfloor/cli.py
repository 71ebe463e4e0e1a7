"""The `lossfloor` command line.  Bad input gets one line on stderr and exit code 2."""

from __future__ import annotations

import sys

import click


class UsageProblem(click.ClickException):
    """A user error: reported as one line on stderr with exit code 2."""

    exit_code = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lossfloor")
def cli():
    """How low can a diffusion model's training loss go?  The exact optimal loss on a finite dataset."""


@cli.group()
def study():
    """Reproducible studies: each writes JSON/CSV + PNG to --out."""


# -- estimate ----------------------------------------------------------------------------------

SIGMA_GRID = (0.002, 80.0, 32)  # EDM's range; curve.total covers 6 more decades each side for every preset
MAX_DEFAULT_QUERIES = 4096
ESTIMATE_FILES = ("optimal_loss.json", "optimal_loss.csv", "optimal_loss.png")
PARTIAL_FILE = "optimal_loss.partial.json"
RESUME_KEYS = ("estimator", "queries", "target_stderr", "subset", "C", "form", "seed", "dtype",
               "class_conditional")


def parse_sigmas(sigmas: str | None, sigma_min: float | None, sigma_max: float | None,
                 num_sigmas: int | None) -> list[float]:
    """The sigma grid: an explicit comma list, or geometric from --sigma-min to --sigma-max."""
    import math

    import numpy as np

    if sigmas is not None:
        if (sigma_min, sigma_max, num_sigmas) != (None, None, None):
            raise UsageProblem("give either --sigmas or --sigma-min/--sigma-max/--num-sigmas, not both")
        try:
            grid = [float(s) for s in sigmas.split(",") if s.strip()]
        except ValueError:
            raise UsageProblem(f"--sigmas: expected comma-separated numbers, got {sigmas!r}") from None
        if not grid:
            raise UsageProblem("--sigmas: no noise levels given")
    else:
        lo, hi, num = (d if v is None else v for v, d in zip((sigma_min, sigma_max, num_sigmas), SIGMA_GRID,
                                                              strict=True))
        if num < 2 or not 0 < lo < hi or not math.isfinite(hi):
            raise UsageProblem(f"need 0 < --sigma-min < --sigma-max and --num-sigmas >= 2, got {lo}, {hi}, "
                               f"{num}")
        grid = np.geomspace(lo, hi, num).tolist()
    bad = [s for s in grid if not (s > 0 and math.isfinite(s))]
    if bad:
        raise UsageProblem(f"noise levels must be positive and finite, got {bad[0]}")
    return sorted(set(grid))


def check_out_dir(out, names, *, resume: bool, force: bool) -> None:
    """--out must be a writable folder (or creatable); existing results need --resume or --force."""
    import tempfile
    from pathlib import Path

    out = Path(out)
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageProblem(f"--out {out}: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise UsageProblem(f"--out {out}: cannot write in {probe} ({err.strerror or err})") from None
    existing = [n for n in names if (out / n).exists()]
    if existing and not (resume or force):
        raise UsageProblem(f"--out {out} already holds {', '.join(existing)}; pass --resume to continue "
                           "or --force to overwrite")


def finished_levels(out, identity: dict) -> dict:
    """Levels saved by an earlier run in `out` (partial or complete) with the same settings."""
    import json
    from pathlib import Path

    from .estimators import LevelEstimate

    for name in (PARTIAL_FILE, ESTIMATE_FILES[0]):
        path = Path(out) / name
        if not path.exists():
            continue
        try:
            doc = json.loads(path.read_text())
            saved = {k: doc["settings"].get(k) for k in RESUME_KEYS} | {"fingerprint": doc["fingerprint"]}
            levels = list(zip(doc["sigma"], doc["loss"], doc["stderr"], doc["settings"]["queries_used"],
                              strict=True))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise UsageProblem(f"--resume: {path} is not a lossfloor estimate ({err})") from None
        changed = [k for k in identity if saved.get(k) != identity[k]]
        if changed:
            raise UsageProblem(f"--resume: {path} was made with different settings ({', '.join(changed)}); "
                               "use another --out or --force")
        return {s: LevelEstimate(s, v, e, q) for s, v, e, q in levels}
    return {}


def curve_csv(curve) -> str:
    """One row per sigma level: sigma, J*, stderr, J*/variance, queries."""
    rows = ["sigma,loss,stderr,loss_over_variance,queries"]
    for s, v, e, q in zip(curve.sigma, curve.loss, curve.stderr, curve.settings["queries_used"], strict=True):
        rows.append(f"{s:.17g},{v:.17g},{e:.17g},{v / curve.data_variance:.17g},{q}")
    return "\n".join(rows) + "\n"


@cli.command()
@click.option("--data", default="digits", show_default=True,
              help="digits | fashion-mnist | gaussian | clusters | ring | swiss-roll | waves | "
                   "an .npy/.npz file | a folder of images")
@click.option("--data-dir", type=click.Path(), help="folder with the Fashion-MNIST IDX files")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--n", "n_points", type=int, help="use a random subset of N points (toys: draw N points)")
@click.option("--data-seed", type=int, default=0, show_default=True, help="seed of --n (and of the toy draw)")
@click.option("--flip", is_flag=True, help="add the horizontal mirror of every image (doubles N)")
@click.option("--class-conditional", is_flag=True, help="posterior within the query's class (needs labels)")
@click.option("--objective", default="edm", show_default=True,
              help="a preset (edm edm2 ve vp ddpm iddpm cosine flow sd3) or <preset>-<target>-<weight>")
@click.option("--sigmas", help="comma-separated noise levels, e.g. 0.1,0.5,2")
@click.option("--sigma-min", type=float, help=f"smallest level of the geometric grid [{SIGMA_GRID[0]}]")
@click.option("--sigma-max", type=float, help=f"largest level of the geometric grid [{SIGMA_GRID[1]}]")
@click.option("--num-sigmas", type=int, help=f"number of levels of the geometric grid [{SIGMA_GRID[2]}]")
@click.option("--estimator", type=click.Choice(["full", "cdol", "dol", "snis"]), default="full",
              show_default=True)
@click.option("--queries", type=int, help=f"Monte-Carlo queries per level [min(N, {MAX_DEFAULT_QUERIES})]")
@click.option("--queries-per-point", type=float, help="queries per level as a multiple of N")
@click.option("--target-stderr", type=float,
              help="add rounds of --queries per level until stderr <= this fraction of the data variance")
@click.option("--subset", type=int, help="subset size L of cdol/dol/snis [min(N, 4096)]")
@click.option("--C", "C", type=float, help="self-pair down-weighting of cdol [4N/L]")
@click.option("--form", type=click.Choice(["rb", "global"]), default="rb", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda | cuda:K")
@click.option("--out-of-core", is_flag=True,
              help="--data is a .npy file or a folder of .npy shards, read from disk in chunks")
@click.option("--out", type=click.Path(), default="out/estimate", show_default=True)
@click.option("--resume", is_flag=True, help="reuse the finished levels saved in --out")
@click.option("--force", is_flag=True, help="overwrite the results in --out")
@click.option("--progress/--no-progress", default=True, show_default=True)
def estimate(data, data_dir, split, n_points, data_seed, flip, class_conditional, objective, sigmas,
             sigma_min, sigma_max, num_sigmas, estimator, queries, queries_per_point, target_stderr, subset,
             C, form, seed, dtype, device, out_of_core, out, resume, force, progress):
    """The optimal loss J*(sigma) of a dataset and the total optimal loss of an objective."""
    import math
    from pathlib import Path

    import torch

    from .curve import OptimalLossCurve, atomic_write_text
    from .data import load_dataset
    from .distributed import init_from_env, is_main_process, main_only, rank_device
    from .estimators import Estimator, EstimatorConfig
    from .formulation import get_objective
    from .plots import plot_curve
    from .storage import load_rows_dataset

    # Everything is checked before --out is created.
    grid = parse_sigmas(sigmas, sigma_min, sigma_max, num_sigmas)
    obj = get_objective(objective)
    zeros = [0.0] * len(grid)
    OptimalLossCurve(grid, zeros, zeros, 1.0, 2, 1).total(obj)  # raises unless the grid covers p(sigma)
    if queries is not None and queries_per_point is not None:
        raise UsageProblem("give either --queries or --queries-per-point, not both")
    if queries_per_point is not None and not queries_per_point > 0:
        raise UsageProblem(f"--queries-per-point must be positive, got {queries_per_point}")
    if estimator == "full" and subset is not None:
        raise UsageProblem("--subset applies to the subset estimators (cdol, dol, snis), not full")
    if estimator != "cdol" and C is not None:
        raise UsageProblem("--C applies to --estimator cdol only")
    _device(device)
    out = Path(out)
    if resume and force:
        raise UsageProblem("give either --resume or --force, not both")
    # Under torchrun every rank streams its share of the rows; rank 0 alone checks and writes --out.
    init_from_env(device)
    dev = torch.device(rank_device(device))
    main_rank = is_main_process()
    main_only(check_out_dir, out, (*ESTIMATE_FILES, PARTIAL_FILE), resume=resume, force=force)
    if out_of_core:
        if (data_dir, split, flip, n_points, class_conditional) != (None, "train", False, None, False):
            raise UsageProblem("--out-of-core reads a .npy file or a folder of .npy shards as given: "
                               "no --data-dir, --split test, --flip, --n or --class-conditional")
        dataset = load_rows_dataset(data)
    else:
        dataset = load_dataset(data, data_dir=data_dir, split=split, flip=flip, n=n_points, seed=data_seed)
    if class_conditional and dataset.labels is None:
        raise UsageProblem(f"--class-conditional: {data} has no labels")
    n = len(dataset)
    if n < 2:
        raise UsageProblem(f"{data}: need at least 2 data points, got {n}")
    if queries is None:
        per_point = queries_per_point
        queries = min(n, MAX_DEFAULT_QUERIES) if per_point is None else math.ceil(per_point * n)
    config = EstimatorConfig(estimator=estimator, queries=queries, subset=subset, C=C, form=form,
                             target_stderr=target_stderr)
    est = Estimator(dataset.rows(), config, labels=dataset.labels if class_conditional else None,
                    device=dev, dtype=getattr(torch, dtype))
    identity = {"estimator": estimator, "queries": queries, "target_stderr": target_stderr, "subset": subset,
                "C": C, "form": form,
                "seed": seed, "dtype": dtype, "class_conditional": class_conditional,
                "fingerprint": dataset.fingerprint}
    done = main_only(finished_levels, out, identity) if resume else {}
    done = {s: done[s] for s in grid if s in done}

    def save_partial(level):
        done[level.sigma] = level
        levels = sorted(done.values(), key=lambda e: e.sigma)
        partial = OptimalLossCurve([e.sigma for e in levels], [e.loss for e in levels],
                                   [e.stderr for e in levels], est.data.variance, est.data.n, est.data.dim,
                                   settings={**identity, "queries_used": [e.queries for e in levels]},
                                   fingerprint=dataset.fingerprint)
        partial.save(out / PARTIAL_FILE)

    if main_rank:
        out.mkdir(parents=True, exist_ok=True)
        click.echo(f"{data} ({split}): N = {n}, D = {est.data.dim}, data variance {est.data.variance:.6g}; "
                   f"{estimator} estimator, {queries} queries per level, {len(grid)} levels "
                   f"({len(done)} already done)")
    curve = est.curve(grid, seed=seed, done=done, on_level=save_partial if main_rank else None,
                      progress=progress and main_rank)
    if not main_rank:
        return
    curve.fingerprint = dataset.fingerprint
    curve.settings["device"] = str(dev)
    total = curve.total(obj)

    title = f"{data} ({split}, N = {n}, D = {curve.dim}): {estimator} estimator, objective {obj.name}"
    plot_curve(curve, obj, out / ESTIMATE_FILES[2], title=title)
    atomic_write_text(out / ESTIMATE_FILES[1], curve_csv(curve))
    curve.save(out / ESTIMATE_FILES[0], estimator=estimator, objective=obj.name,
               objective_spec=obj.to_dict(), total=total.value,
               total_stderr=total.stderr, total_extrapolated=total.extrapolated, data=dataset.describe(),
               scaling=dataset.scaling)
    (out / PARTIAL_FILE).unlink(missing_ok=True)

    click.echo(f"{'sigma':>10} {'J*':>12} {'stderr':>10} {'J*/var':>8}")
    for s, v, e in zip(curve.sigma, curve.loss, curve.stderr, strict=True):
        click.echo(f"{s:10.4g} {v:12.6g} {e:10.2g} {v / curve.data_variance:8.4f}")
    click.echo(f"total optimal loss of {obj.name}: {total.value:.6g} ± {total.stderr:.2g} per dimension "
               f"({total.extrapolated:.3g} of it from beyond the sigma grid)")
    click.echo(f"critical sigma (J* > 1% of the data variance): {curve.critical_sigma():.4g}")
    if curve.loss[-1] < 0.9 * curve.data_variance:
        click.echo(f"note: J*(sigma_max) is {curve.loss[-1] / curve.data_variance:.2f} of the data variance; "
                   "raise --sigma-max to reach the plateau")
    click.echo(f"wrote {out / ESTIMATE_FILES[0]}, {out / ESTIMATE_FILES[1]}, {out / ESTIMATE_FILES[2]}")


# -- study losses ------------------------------------------------------------------------------


def _csv_list(option: str, value: str, convert=str) -> list:
    """A comma-separated option as a list, or a usage problem."""
    try:
        items = [convert(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UsageProblem(f"{option}: expected a comma-separated list, got {value!r}") from None
    if not items:
        raise UsageProblem(f"{option}: empty list")
    return items


@study.command("losses")
@click.option("--datasets", default="clusters,ring,swiss-roll,waves", show_default=True,
              help="2-D toys (clusters, ring, swiss-roll, waves) and/or images (digits, fashion-mnist)")
@click.option("--targets", default="x0,eps,v,score", show_default=True, help="prediction targets")
@click.option("--losses", "weights", default="nelbo,simple", show_default=True,
              help="nelbo (exact VDM weight) and/or simple (unit weight on the target)")
@click.option("--seeds", default="0,1,2", show_default=True, help="training seeds (mean ± SE over them)")
@click.option("--preset", type=click.Choice(["quick", "reduced", "full"]), default="quick", show_default=True,
              help="quick: minutes; reduced: the committed results; full: the paper's budget")
@click.option("--data-dir", type=click.Path(), help="folder with the Fashion-MNIST IDX files")
@click.option("--out", type=click.Path(), default="out/losses", show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def losses(datasets, targets, weights, seeds, preset, data_dir, out, progress):
    """Compare x0 / eps / v / score targets trained with NELBO vs simple losses, on one yardstick.

    Every finished (dataset, target, loss, seed) cell is saved on its own, so a rerun resumes.
    """
    from .studies import run_losses_study

    summary = run_losses_study(_csv_list("--datasets", datasets), _csv_list("--targets", targets),
                               _csv_list("--losses", weights), _csv_list("--seeds", seeds, int), preset, out,
                               data_dir=data_dir, progress=progress)
    click.echo(f"{summary['cells']} cells; wrote {out}/table.md, table.csv, summary.json and figures")


# -- train / sample / diagnose -----------------------------------------------------------------

TRAIN_FILES = ("checkpoint.pt", "log.csv", "binned.csv")
DIAGNOSE_FILES = ("diagnosis.json", "diagnosis.csv", "diagnosis.png")


def _device(device: str):
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageProblem(f"--device: unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageProblem(f"--device {device}: CUDA is not available on this machine")
    return dev


def _data_options(f):
    """--data, --data-dir, --n, --data-seed, --flip (shared by train and diagnose)."""
    options = [
        click.option("--data-dir", type=click.Path(), help="folder with the Fashion-MNIST IDX files"),
        click.option("--n", "n_points", type=int, help="a random subset of N points (toys: draw N points)"),
        click.option("--data-seed", type=int, default=0, show_default=True, help="seed of --n and toy draws"),
        click.option("--flip", is_flag=True, help="add the horizontal mirror of every image (doubles N)"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.command()
@click.option("--data", default="digits", show_default=True,
              help="digits | fashion-mnist | a 2-D toy | an .npy/.npz file | a folder of images")
@_data_options
@click.option("--objective", default="edm", show_default=True,
              help="a preset (edm edm2 ve vp ddpm iddpm cosine flow sd3) or <preset>-<target>-<weight>")
@click.option("--model", type=click.Choice(["mlp", "relu-mlp", "unet"]),
              help="network [unet for images, mlp otherwise]")
@click.option("--width", type=int, help="hidden width (mlp) or base channels (unet) [256 / 32]")
@click.option("--depth", type=int, help="residual blocks of the mlp [3]")
@click.option("--steps", type=int, default=2000, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--warmup", type=int, default=100, show_default=True, help="learning-rate warm-up steps")
@click.option("--ema", type=float, default=0.999, show_default=True, help="EMA decay of the weights")
@click.option("--grad-clip", type=float, default=1.0, show_default=True, help="max gradient norm (0: off)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--log-every", type=int, default=100, show_default=True, help="steps per log interval")
@click.option("--checkpoint-every", type=int, default=500, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu | cuda | cuda:K")
@click.option("--out", type=click.Path(), default="out/train", show_default=True)
@click.option("--resume", is_flag=True, help="continue --out/checkpoint.pt (same options; --steps may grow)")
@click.option("--force", is_flag=True, help="start over, replacing the run in --out")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train(data, data_dir, n_points, data_seed, flip, objective, model, width, depth, steps, batch_size, lr,
          warmup, ema, grad_clip, seed, log_every, checkpoint_every, device, out, resume, force, progress):
    """Train a diffusion model under any objective; per-sigma x0 losses go to --out/binned.csv."""
    from dataclasses import asdict
    from pathlib import Path

    from .data import load_dataset
    from .formulation import get_objective
    from .models import ModelConfig, build_model, parameter_count
    from .training import CHECKPOINT_NAME, TrainConfig, Trainer, data_info, load_checkpoint

    obj = get_objective(objective)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, ema=ema,
                         grad_clip=grad_clip or None, seed=seed, log_every=log_every,
                         checkpoint_every=checkpoint_every)
    dev = _device(device)
    out = Path(out)
    if resume and force:
        raise UsageProblem("give either --resume or --force, not both")
    check_out_dir(out, TRAIN_FILES, resume=resume, force=force)
    dataset = load_dataset(data, data_dir=data_dir, flip=flip, n=n_points, seed=data_seed)
    kind = model or ("unet" if dataset.is_image else "mlp")
    model_config = ModelConfig(kind, dataset.shape, width, depth)
    net = build_model(model_config)  # raises for a UNet on non-image data
    ckpt = load_checkpoint(out / CHECKPOINT_NAME) if resume and (out / CHECKPOINT_NAME).exists() else None
    if ckpt is not None:
        changed = [k for k, v in asdict(config).items() if k not in ("steps", "log_every", "checkpoint_every")
                   and ckpt.train.get(k) != v]
        if changed:
            raise UsageProblem(f"--resume: {out} was trained with different {', '.join(changed)}; pass the "
                               "same options or use another --out")
    load = {"name": data, "data_dir": data_dir, "n": n_points, "seed": data_seed, "flip": flip}
    trainer = Trainer(dataset.x, obj, model_config, config, out=out, data_info=data_info(dataset, load),
                      device=dev)
    if ckpt is not None:
        trainer.load_state(ckpt)
        if trainer.step >= steps:
            raise UsageProblem(f"--resume: {out} is already at step {trainer.step}; raise --steps")
    click.echo(f"{data}: N = {len(dataset)}, shape {tuple(dataset.shape)}; objective {obj.name} "
               f"(target {obj.target}, weight {obj.weight}); {kind} with {parameter_count(net):,} parameters"
               + (f"; resuming at step {trainer.step}" if ckpt is not None else ""))
    out.mkdir(parents=True, exist_ok=True)
    if force:
        for name in TRAIN_FILES:
            (out / name).unlink(missing_ok=True)
    trainer.run(progress=progress)
    click.echo(f"wrote {out / CHECKPOINT_NAME} (step {trainer.step}), {out / 'log.csv'}, "
               f"{out / 'binned.csv'}")


@cli.command()
@click.option("--checkpoint", required=True, type=click.Path(), help="a checkpoint.pt (or its folder)")
@click.option("--n", "n_samples", type=int, default=64, show_default=True)
@click.option("--steps", type=int, default=18, show_default=True, help="sigma levels of the sampler")
@click.option("--sampler", type=click.Choice(["heun", "euler_maruyama"]), default="heun", show_default=True)
@click.option("--sigma-min", type=float, default=0.002, show_default=True)
@click.option("--sigma-max", type=float, default=80.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--raw-weights", is_flag=True, help="use the raw instead of the EMA weights")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", type=click.Path(), default="out/samples.png", show_default=True, help="PNG file")
@click.option("--npy", is_flag=True, help="also write the samples as OUT with suffix .npy")
def sample(checkpoint, n_samples, steps, sampler, sigma_min, sigma_max, seed, raw_weights, device, out, npy):
    """Draw samples with the shared x0-denoiser sampler: an image grid or a 2-D scatter (PNG)."""
    from pathlib import Path

    import numpy as np
    import torch

    from .sampling import karras_sigmas, plot_samples
    from .sampling import sample as draw
    from .training import load_checkpoint, reload_data

    if n_samples < 1:
        raise UsageProblem(f"--n must be positive, got {n_samples}")
    sigmas = karras_sigmas(steps, sigma_min, sigma_max)
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageProblem(f"--out {out}: expected a .png file")
    dev = _device(device)
    ckpt = load_checkpoint(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    denoiser = ckpt.denoiser(ema=not raw_weights, device=dev)
    x = draw(denoiser, (n_samples, *ckpt.model.shape), sigmas, method=sampler,
             generator=torch.Generator().manual_seed(seed), device=dev, progress=True)
    reference = None if len(ckpt.model.shape) == 3 else reload_data(ckpt).x[:5000]
    title = (f"{ckpt.data.get('name', '?')}: {ckpt.objective_name}, step {ckpt.step}, {sampler} "
             f"{steps} levels, {'raw' if raw_weights else 'EMA'} weights")
    plot_samples(x, out, reference, title)
    if npy:
        import io

        from .curve import atomic_write_bytes

        buf = io.BytesIO()
        np.save(buf, x.cpu().numpy())
        atomic_write_bytes(out.with_suffix(".npy"), buf.getvalue())
    bad = int((~torch.isfinite(x)).reshape(len(x), -1).any(1).sum())
    click.echo(f"wrote {out}" + (f" ({bad} samples are not finite)" if bad else ""))


@cli.command()
@click.option("--checkpoint", required=True, type=click.Path(), help="a checkpoint.pt (or its folder)")
@click.option("--data", help="evaluate on this dataset instead of the checkpoint's (same shape)")
@_data_options
@click.option("--curve", "curve_path", type=click.Path(),
              help="optimal_loss.json of the same data [estimated here]")
@click.option("--levels", type=int, default=16, show_default=True, help="sigma levels (without --curve)")
@click.option("--sigma-min", type=float, default=0.002, show_default=True)
@click.option("--sigma-max", type=float, default=80.0, show_default=True)
@click.option("--queries", type=int, default=1024, show_default=True, help="noisy queries per level")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--raw-weights", is_flag=True, help="use the raw instead of the EMA weights")
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", type=click.Path(), default="out/diagnose", show_default=True)
@click.option("--force", is_flag=True, help="overwrite the results in --out")
def diagnose(checkpoint, data, data_dir, n_points, data_seed, flip, curve_path, levels, sigma_min, sigma_max,
             queries, seed, raw_weights, device, out, force):
    """A trained model's x0 loss against the optimal loss J*(sigma), per level and in total."""
    import json
    from pathlib import Path

    import numpy as np

    from .curve import OptimalLossCurve, atomic_write_text
    from .data import load_dataset
    from .diagnosis import diagnose as run_diagnosis
    from .diagnosis import plot_diagnosis, violation_message
    from .estimators import Estimator, EstimatorConfig
    from .training import load_checkpoint, reload_data

    if queries < 2:
        raise UsageProblem(f"--queries must be at least 2, got {queries}")
    if curve_path is None and (levels < 2 or not 0 < sigma_min < sigma_max):
        raise UsageProblem(f"need --levels >= 2 and 0 < --sigma-min < --sigma-max, got {levels}, "
                           f"{sigma_min}, {sigma_max}")
    dev = _device(device)
    out = Path(out)
    check_out_dir(out, DIAGNOSE_FILES, resume=False, force=force)
    ckpt = load_checkpoint(checkpoint)
    if data is None:
        train_set = reload_data(ckpt)
        test_load = lambda: reload_data(ckpt, "test")  # noqa: E731
    else:
        train_set = load_dataset(data, data_dir=data_dir, flip=flip, n=n_points, seed=data_seed)
        test_load = lambda: load_dataset(data, data_dir=data_dir, split="test", seed=data_seed)  # noqa: E731
    if tuple(train_set.shape) != ckpt.model.shape:
        raise UsageProblem(f"the checkpoint was trained on data of shape {ckpt.model.shape}, but "
                           f"{train_set.name} has shape {tuple(train_set.shape)}")
    try:
        test_set = test_load()
    except (ValueError, FileNotFoundError):  # no test split for this dataset
        test_set = None
    if curve_path is not None:
        curve = OptimalLossCurve.load(curve_path)
        if curve.fingerprint != train_set.fingerprint:
            raise UsageProblem(f"--curve {curve_path} was computed on other data than {train_set.name} "
                               f"(fingerprint {curve.fingerprint[:12] or 'missing'} vs "
                               f"{train_set.fingerprint[:12]}); recompute it with `lossfloor estimate`")
        if curve.settings.get("class_conditional"):
            raise UsageProblem(f"--curve {curve_path} is class-conditional; the model is unconditional")
    obj = ckpt.objective
    denoiser = ckpt.denoiser(ema=not raw_weights, device=dev)
    out.mkdir(parents=True, exist_ok=True)
    if curve_path is None:
        click.echo(f"estimating J* on {len(train_set)} points at {levels} levels ({queries} queries each)")
        est = Estimator(train_set.rows(), EstimatorConfig(queries=queries), device=dev)
        curve = est.curve(np.geomspace(sigma_min, sigma_max, levels), seed=seed, progress=True)
        curve.fingerprint = train_set.fingerprint
    from tqdm.auto import tqdm

    test_x = None if test_set is None else test_set.x
    with tqdm(total=len(curve.sigma) * (1 if test_x is None else 2), desc="model loss", unit="level") as bar:
        result = run_diagnosis(denoiser, obj, curve, train_set.x, test_x=test_x, queries=queries, seed=seed,
                               progress=bar.update)
    meta = {"checkpoint": str(ckpt.path), "step": ckpt.step, "model": ckpt.model.to_dict(),
            "data": train_set.describe(), "test_data": None if test_set is None else test_set.describe(),
            "objective_spec": obj.to_dict(),
            "queries": queries, "seed": seed, "weights": "raw" if raw_weights else "ema",
            "data_variance": curve.data_variance}
    title = (f"{train_set.name}: {obj.name} ({ckpt.model.kind}, step {ckpt.step}) vs optimal loss")
    plot_diagnosis(result, out / DIAGNOSE_FILES[2], title)
    atomic_write_text(out / DIAGNOSE_FILES[1], result.csv_text())
    atomic_write_text(out / DIAGNOSE_FILES[0], json.dumps({**meta, **result.to_dict()}, indent=1))

    click.echo(f"{'sigma':>9} {'model':>10} {'J*':>10} {'gap':>10} {'± SE':>8} {'gap/var':>8}"
               + (f" {'test':>10} {'test gap':>10}" if result.test else ""))
    for i, g in enumerate(result.train):
        line = (f"{g.sigma:9.4g} {g.model_loss:10.4g} {g.optimal_loss:10.4g} {g.gap:10.4g} "
                f"{g.gap_stderr:8.2g} {g.relative_gap:8.4f}")
        if result.test:
            line += f" {result.test[i].model_loss:10.4g} {result.test[i].gap:10.4g}"
        click.echo(line)
    for split, t in result.totals.items():
        click.echo(f"total {obj.name} loss ({split}): model {t['model']:.5g} ± {t['model_stderr']:.2g}, "
                   f"optimal {t['optimal']:.5g} ± {t['optimal_stderr']:.2g}, "
                   f"gap {t['gap']:.5g} ± {t['gap_stderr']:.2g}")
    if result.violations:
        click.echo("!" * 100 + "\n" + violation_message(result) + "\n" + "!" * 100, err=True)
    click.echo(f"wrote {', '.join(str(out / f) for f in DIAGNOSE_FILES)}")


# -- study diagnose ----------------------------------------------------------------------------


@study.command("diagnose")
@click.option("--datasets", default="digits,fashion-mnist", show_default=True, help="digits, fashion-mnist")
@click.option("--variants", default="vp,ve,edm,flow", show_default=True,
              help="objectives to train (presets or <preset>-<target>-<weight>)")
@click.option("--budget", type=click.Choice(["cpu", "quick"]), default="cpu", show_default=True,
              help="cpu: the committed results (~30 min on 2 CPU cores); quick: a smoke test")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-dir", type=click.Path(), help="folder with the Fashion-MNIST IDX files")
@click.option("--out", type=click.Path(), default="out/diagnose_study", show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def diagnose_study(datasets, variants, budget, seed, data_dir, out, progress):
    """Train VP, VE, EDM and flow matching on the same data and plot their per-sigma gaps to J*."""
    from .studies import run_diagnose_study

    names, objectives = _csv_list("--datasets", datasets), _csv_list("--variants", variants)
    report = run_diagnose_study(names, objectives, budget, out, seed=seed, data_dir=data_dir,
                                progress=progress)
    for name, d in report["datasets"].items():
        for r in d["variants"]:
            t = r["totals"]["train"]
            c = r["common_totals"]["train"]
            click.echo(f"{name:14s} {r['variant']:6s} total gap {t['gap']:.4g} ± {t['gap_stderr']:.2g} "
                       f"(own objective), {c['gap']:.4g} ± {c['gap_stderr']:.2g} (EDM weighting)"
                       + ("  FLOOR VIOLATION" if r["floor_violation"] else ""))
    click.echo(f"wrote {out}/diagnose_study.json, gaps.csv, totals.csv, gaps.png, samples_*.png")


def main(argv=None):
    """Entry point: user errors (ValueError, FileNotFoundError) exit 2 with one line on stderr."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        click.echo(f"error: {err.format_message()}", err=True)
        sys.exit(2)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    sys.exit(0)
