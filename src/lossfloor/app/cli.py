"""The `lossfloor` command line: parses flags, calls `lossfloor.app`, prints.

Bad input gets one line on stderr and exit code 2.  Every choice list comes from the library's registries
and every default from the workflow's settings dataclasses.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from lossfloor import studies
from lossfloor.app.checks import check_out_path
from lossfloor.app.common import DTYPES, SIGMA_GRID, resolve_device
from lossfloor.app.diagnose import DiagnoseSettings, prepare_diagnose, run_diagnose
from lossfloor.app.estimate import EstimateSettings, prepare_estimate, run_estimate
from lossfloor.app.options import SEED, SIGMA, SIGMAS, Integer, Real
from lossfloor.app.sample import SampleSettings, run_sample
from lossfloor.app.train import TrainSettings, prepare_train, run_train
from lossfloor.core.errors import InputError
from lossfloor.data.dataset import SPLITS
from lossfloor.data.load import BUILTIN
from lossfloor.evaluate.diagnosis import violation_message
from lossfloor.evaluate.sampling import SAMPLERS
from lossfloor.floor.config import DEFAULT_QUERIES, ESTIMATORS, FORMS
from lossfloor.nets.networks import MODELS
from lossfloor.objective.objective import objective_names
from lossfloor.objective.targets import TARGETS
from lossfloor.objective.weights import WEIGHTS
from lossfloor.studies import scaling as scaling_lib
from lossfloor.studies import schedule as schedule_lib
from lossfloor.train.schedules import schedule_names

EST, TRAIN, SAMPLE, DIAG = (EstimateSettings(), TrainSettings(), SampleSettings(),
                            DiagnoseSettings())
GRID = SIGMA_GRID


class UsageProblem(click.ClickException):
    """A user error: reported as one line on stderr with exit code 2."""

    exit_code = 2


# -- option types and shared options (range checks belong here, in one place) --------------------

# Every numeric option is range-checked here, where it is parsed (NaN and infinities are refused): one line
# naming the option and its range, exit code 2.
COUNT = Integer(1)  # a number of points, steps, queries... (the library checks it against the data too)
SEED = SEED  # 0 <= seed < 2^63 (torch generators take a signed 64-bit integer)
SIGMA = SIGMA  # a noise level in SIGMA_RANGE
LEVELS = Integer(2, 100_000)  # sigma levels of a grid or a sampler
QUERIES = Integer(2, 1 << 20)  # Monte-Carlo queries per level
PATH = click.Path()
DATA_HELP = f"{' | '.join(BUILTIN)} | an .npy/.npz file | a folder of images"
OBJECTIVE_HELP = (f"a preset ({' '.join(objective_names())}) or <preset>-<target>-<weight> with target in "
                  f"{{{','.join(TARGETS)}}}, weight in {{{','.join(WEIGHTS)}}}")


def choice(names) -> click.Choice:
    """A click choice over a library registry (a tuple of names or a dict)."""
    return click.Choice(list(names))


def data_options(defaults):
    """--data-dir, --n, --data-seed, --flip (estimate, train, diagnose)."""
    options = [
        click.option("--data-dir", type=PATH, help="folder with the Fashion-MNIST IDX files"),
        click.option("--n", type=COUNT, help="use a random subset of N points (2-D toys: draw N points)"),
        click.option("--data-seed", type=SEED, default=defaults.data_seed, help="seed of --n and toy draws"),
        click.option("--flip", is_flag=True, help="add the horizontal mirror of every image (doubles N)"),
    ]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


def echo(lines, err: bool = False) -> None:
    for line in lines:
        click.echo(line, err=err)


def progress_option(f):
    return click.option("--progress/--no-progress", default=True, help="show progress bars")(f)


def device_option(f):
    return click.option("--device", default="cpu", help="cpu | cuda | cuda:K")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="lossfloor")
def cli():
    """How low can a diffusion model's training loss go?  The exact optimal loss on a finite dataset."""


@cli.group(short_help="Reproducible studies (JSON/CSV + PNG to --out).")
def study():
    """Reproducible studies: each writes JSON/CSV + PNG to --out."""


# -- estimate -----------------------------------------------------------------------------------


@cli.command(short_help="Optimal loss J*(σ) of a dataset and an objective's total.")
@click.option("--data", default=EST.data, help=DATA_HELP)
@click.option("--split", type=choice(SPLITS), default=EST.split, help="which split of --data")
@data_options(EST)
@click.option("--class-conditional", is_flag=True, help="posterior within the query's class (needs labels)")
@click.option("--objective", default=EST.objective, help=OBJECTIVE_HELP)
@click.option("--sigmas", type=SIGMAS, help="comma-separated noise levels, e.g. 0.1,0.5,2")
@click.option("--sigma-min", type=SIGMA, help=f"smallest level of the geometric grid [{GRID[0]}]")
@click.option("--sigma-max", type=SIGMA, help=f"largest level of the geometric grid [{GRID[1]}]")
@click.option("--num-sigmas", type=LEVELS, help=f"levels of the geometric grid [{GRID[2]}]")
@click.option("--estimator", type=choice(ESTIMATORS), default=EST.estimator,
              help="full: exact posterior over all N points; cdol/dol/snis: over a random subset of L points")
@click.option("--queries", type=QUERIES, help=f"Monte-Carlo queries per level [min(N, {DEFAULT_QUERIES})]")
@click.option("--queries-per-point", type=Real(0, 1 << 20, lo_open=True),
              help="queries per level as a multiple of N")
@click.option("--target-stderr", type=Real(0, 1, lo_open=True, hi_open=True),
              help="add rounds of --queries per level until stderr <= this fraction of the data variance")
@click.option("--min-queries", type=QUERIES,
              help="with --target-stderr and the full estimator: a first round of this many queries, then as "
                   "many as the measured spread needs (a level that is 0 on every query gets an upper bound)")
@click.option("--control-subset", type=Integer(2),
              help="with --min-queries: a control variate, each query's posterior variance over a fixed "
                   "random subset of this many rows (and free noise features), where it lowers the cost "
                   "(e.g. 2048)")
@click.option("--prune", is_flag=True,
              help="full estimator: skip data points provably negligible to a query (exact; small sigma)")
@click.option("--total-stderr", type=Real(0, lo_open=True),
              help="add levels where lambda p J* changes fastest, then queries, until the objective's total "
                   "is known to this standard uncertainty (per dimension; Monte-Carlo and interpolation)")
@click.option("--subset", type=Integer(2), help="subset size L of cdol/dol/snis [min(N, 4096)]")
@click.option("--C", "C", type=Real(1), help="cdol's down-weighting of the query's own point [4N/L]")
@click.option("--form", type=choice(FORMS), default=EST.form,
              help="rb: posterior variance per query (Rao-Blackwellised); global: the paper's A - B")
@click.option("--seed", type=SEED, default=EST.seed, help="seed of the noisy queries")
@click.option("--dtype", type=choice(DTYPES), default=EST.dtype, help="precision of the kernel")
@device_option
@click.option("--out-of-core", is_flag=True,
              help="--data is a .npy file or a folder of .npy shards, read from disk in chunks")
@click.option("--out", type=PATH, default=EST.out, help="output folder")
@click.option("--resume", is_flag=True, help="reuse the finished levels saved in --out")
@click.option("--force", is_flag=True, help="overwrite the results in --out")
@progress_option
def estimate(progress, **options):
    """The optimal loss J*(sigma) of a dataset and the total optimal loss of an objective."""
    run = prepare_estimate(EstimateSettings(**options))
    if run.main:
        click.echo(run.header())
    result = run_estimate(run, progress)
    if result is not None:
        lines, warnings = result.report()
        echo(lines)
        echo(warnings, err=True)


# -- train / sample / diagnose -------------------------------------------------------------------


@cli.command(short_help="Train a diffusion model under any objective.")
@click.option("--data", default=TRAIN.data, help=DATA_HELP)
@data_options(TRAIN)
@click.option("--objective", default=TRAIN.objective, help=OBJECTIVE_HELP)
@click.option("--schedule", type=choice(schedule_names()), default=TRAIN.schedule,
              help="loss weight and noise density (docs/theory.md#training-schedules)")
@click.option("--curve", type=PATH, help="optimal_loss.json of the training data (optimal-loss schedules)")
@click.option("--model", type=choice(MODELS), help="network [unet for images, mlp otherwise]")
@click.option("--width", type=Integer(1, 8192), help="hidden width (mlp) or base channels (unet) [256 / 32]")
@click.option("--depth", type=Integer(1, 256), help="residual blocks of the mlp [3]")
@click.option("--steps", type=COUNT, default=TRAIN.steps, help="optimisation steps in all")
@click.option("--batch-size", type=COUNT, default=TRAIN.batch_size, help="data points per step")
@click.option("--lr", type=Real(0, 1, lo_open=True), default=TRAIN.lr, help="Adam learning rate")
@click.option("--warmup", type=Integer(0), default=TRAIN.warmup, help="learning-rate warm-up steps")
@click.option("--ema", type=Real(0, 1, hi_open=True), default=TRAIN.ema, help="EMA decay of the weights")
@click.option("--grad-clip", type=Real(0), default=TRAIN.grad_clip, help="max gradient norm (0: off)")
@click.option("--seed", type=SEED, default=TRAIN.seed, help="seed of the weights, batches, times and noise")
@click.option("--log-every", type=COUNT, default=TRAIN.log_every, help="steps per log interval")
@click.option("--checkpoint-every", type=COUNT, default=TRAIN.checkpoint_every, help="steps per checkpoint")
@device_option
@click.option("--out", type=PATH, default=TRAIN.out, help="output folder")
@click.option("--resume", is_flag=True, help="continue --out/checkpoint.pt (same options; --steps may grow)")
@click.option("--force", is_flag=True, help="start over, replacing the run in --out")
@progress_option
def train(progress, **options):
    """Train a diffusion model under any objective; per-sigma x0 losses go to --out/binned.csv.

    The bar's loss is log.csv's: the mean objective loss since the last log row (--log-every).
    """
    run = prepare_train(TrainSettings(**options))
    click.echo(run.header())
    trainer = run_train(run, progress)
    click.echo(f"wrote {run.files[0]} (step {trainer.step}), {run.files[1]}, {run.files[2]}")


@cli.command(short_help="Draw samples from a checkpoint (PNG).")
@click.option("--checkpoint", required=True, type=PATH, help="a checkpoint.pt (or its folder)")
@click.option("--n", type=Integer(1, 4096), default=SAMPLE.n, help="number of samples (drawn as one batch)")
@click.option("--steps", type=LEVELS, default=SAMPLE.steps, help="sigma levels of the sampler")
@click.option("--sampler", type=choice(SAMPLERS), default=SAMPLE.sampler, help="ODE (heun) or SDE sampler")
@click.option("--sigma-min", type=SIGMA, default=SAMPLE.sigma_min, help="smallest noise level")
@click.option("--sigma-max", type=SIGMA, default=SAMPLE.sigma_max, help="largest noise level")
@click.option("--seed", type=SEED, default=SAMPLE.seed, help="seed of the initial noise")
@click.option("--raw-weights", is_flag=True, help="use the raw instead of the EMA weights")
@device_option
@click.option("--out", type=PATH, default=SAMPLE.out, help="PNG file")
@click.option("--npy", is_flag=True, help="also write the samples as OUT with suffix .npy")
@click.option("--force", is_flag=True, help="overwrite an existing --out")
@progress_option
def sample(progress, **options):
    """Draw samples with the shared x0-denoiser sampler: an image grid or a 2-D scatter (PNG)."""
    result = run_sample(SampleSettings(**options), progress)
    click.echo(f"wrote {', '.join(str(f) for f in result.files)}")


@cli.command(short_help="A model's x0 loss against J*(σ), per level and in total.")
@click.option("--checkpoint", type=PATH, default="", help="a checkpoint.pt (or its folder)")
@click.option("--diffusers", type=PATH, help="or a diffusers save_pretrained folder (pipeline, or unet/ + "
              "scheduler/); needs --data")
@click.option("--data", help="evaluate on this dataset instead of the checkpoint's (same shape)")
@data_options(DIAG)
@click.option("--curve", type=PATH, help="optimal_loss.json of the same data [estimated here]")
@click.option("--levels", type=LEVELS, default=DIAG.levels, help="sigma levels (without --curve)")
@click.option("--sigma-min", type=SIGMA, default=DIAG.sigma_min, help="smallest level (without --curve)")
@click.option("--sigma-max", type=SIGMA, default=DIAG.sigma_max, help="largest level (without --curve)")
@click.option("--queries", type=QUERIES, default=DIAG.queries, help="noisy queries per level")
@click.option("--seed", type=SEED, default=DIAG.seed, help="seed of the noisy queries")
@click.option("--raw-weights", is_flag=True, help="use the raw instead of the EMA weights")
@device_option
@click.option("--out", type=PATH, default=DIAG.out, help="output folder")
@click.option("--force", is_flag=True, help="overwrite the results in --out")
@progress_option
def diagnose(progress, **options):
    """A trained model's x0 loss against the optimal loss J*(sigma), per level and in total."""

    run = prepare_diagnose(DiagnoseSettings(**options))
    echo(run.header())
    result = run_diagnose(run, progress)
    echo(result.report())
    if result.diagnosis.violations:
        click.echo("!" * 100 + "\n" + violation_message(result.diagnosis) + "\n" + "!" * 100, err=True)
    click.echo(f"wrote {', '.join(str(f) for f in result.files)}")


# -- studies ------------------------------------------------------------------------------------


STUDY_SEED = Integer(0, studies.common.SEED_MAX)  # study seeds also seed numpy (32-bit)


def check_study_out(out) -> None:
    """A study's --out: a folder that can be created or written (checked before the study starts)."""
    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out {out}: is a file, not a folder")
    check_out_path(out)


def csv_list(option: str, value: str, convert=str) -> list:
    """A comma-separated option as a list, or a usage problem."""
    try:
        items = [convert(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UsageProblem(f"{option}: expected a comma-separated list, got {value!r}") from None
    if not items:
        raise UsageProblem(f"{option}: empty list")
    return items


@study.command("losses", short_help="NELBO vs simple losses for x0/eps/v/score targets.")
@click.option("--datasets", default=",".join(studies.POINT_DATASETS),
              help=f"2-D toys ({','.join(studies.POINT_DATASETS)}) and/or images "
                   f"({','.join(studies.IMAGE_DATASETS)})")
@click.option("--targets", default=",".join(studies.LOSS_TARGETS), help="prediction targets")
@click.option("--losses", "weights", default=",".join(studies.LOSS_WEIGHTS),
              help="nelbo (exact VDM weight) and/or simple (unit weight on the target)")
@click.option("--seeds", default="0,1,2", help="training seeds (mean ± SE over them)")
@click.option("--preset", type=choice(studies.PRESET_NAMES), default="quick",
              help="quick: minutes; reduced: the committed results; full: the paper's budget")
@click.option("--data-dir", type=PATH, help="folder with the Fashion-MNIST IDX files")
@click.option("--out", type=PATH, default="out/losses", help="output folder (finished cells are reused)")
@progress_option
def losses(datasets, targets, weights, seeds, preset, data_dir, out, progress):
    """Compare x0 / eps / v / score targets trained with NELBO vs simple losses, on one yardstick.

    Every finished (dataset, target, loss, seed) cell is saved on its own, so a rerun resumes.
    """
    check_study_out(out)
    summary = studies.run_losses_study(csv_list("--datasets", datasets), csv_list("--targets", targets),
                                          csv_list("--losses", weights), csv_list("--seeds", seeds, int),
                                          preset, out, data_dir=data_dir, progress=progress)
    click.echo(studies.terminal_table(summary))
    click.echo(f"{summary['cells']} cells; wrote {out}/table.md, table.csv, summary.json and figures")


@study.command("diagnose", short_help="Per-σ gaps to J* of VP, VE, EDM and flow models.")
@click.option("--datasets", default=",".join(studies.DIAGNOSE_DATASETS), help="comma-separated datasets")
@click.option("--variants", default=",".join(studies.DIAGNOSE_VARIANTS),
              help="objectives to train (presets or <preset>-<target>-<weight>)")
@click.option("--budget", type=choice(studies.DIAGNOSE_BUDGETS), default="cpu",
              help="; ".join(f"{k}: {v}" for k, v in studies.DIAGNOSE_BUDGET_TIMES.items()))
@click.option("--seed", type=STUDY_SEED, default=0, help="seed of the training runs and queries")
@click.option("--data-dir", type=PATH, help="folder with the Fashion-MNIST IDX files")
@click.option("--out", type=PATH, default="out/diagnose_study", help="output folder")
@progress_option
def diagnose_study(datasets, variants, budget, seed, data_dir, out, progress):
    """Train VP, VE, EDM and flow matching on the same data and plot their per-sigma gaps to J*."""
    names, objectives = csv_list("--datasets", datasets), csv_list("--variants", variants)
    check_study_out(out)
    click.echo(f"budget {budget}: {studies.DIAGNOSE_BUDGET_TIMES[budget]}")
    report = studies.run_diagnose_study(names, objectives, budget, out, seed=seed, data_dir=data_dir,
                                           progress=progress)
    click.echo(studies.diagnose_terminal_table(report))
    click.echo(f"wrote {out}/diagnose_study.json, gaps.csv, totals.csv, gaps.png, samples_*.png")


@study.command("scaling", short_help="Power laws of the loss in compute, with and without J* subtracted.")
@click.option("--preset", type=choice(scaling_lib.SCALING_PRESETS), default="cpu",
              help="cpu: the committed results (5 MLP widths on digits, <= 20 min on 2 CPU cores); "
                   "full: 6 UNet widths on Fashion-MNIST (a GPU); quick: a smoke test")
@click.option("--seed", type=STUDY_SEED, default=0,
              help="seed of the training runs, the J* queries and the draws")
@click.option("--data-dir", type=PATH, help="folder with the Fashion-MNIST IDX files")
@device_option
@click.option("--out", type=PATH, default="out/scaling", help="output folder (finished cells are reused)")
@progress_option
def scaling_study(preset, seed, data_dir, device, out, progress):
    """Train several model sizes with EDM, evaluate at log-spaced steps on fixed draws, and fit
    J = beta F^alpha, J - J* = beta F^alpha and J = E + beta F^alpha on the compute-optimal frontier,
    per size and per noise level.  Every finished (size, step) cell is saved on its own, so a rerun resumes.
    """
    device = str(resolve_device(device))  # before anything is written
    check_study_out(out)
    report = scaling_lib.run_scaling_study(preset, out, seed=seed, data_dir=data_dir, device=device,
                                           progress=progress)
    click.echo(scaling_lib.scaling_terminal_table(report))
    click.echo(f"wrote {out}/scaling.json, table.md, points.csv, levels.csv, scaling_total.png, "
               "scaling_sigma.png, rho_by_sigma.png")


@study.command("schedule", short_help="The paper's optimal-loss schedule vs native schedules and baselines.")
@click.option("--preset", type=choice(schedule_lib.PRESETS), default="default",
              help="default: the committed results (digits, MLP, 500 steps, 3 seeds, ~7 min on 2 CPU "
                   "cores); fashion: the same recipe on Fashion-MNIST (MLP 256); long: 2000 steps; "
                   "full: Fashion-MNIST, UNet, 20k steps, 10k samples (a GPU); "
                   "quick: a smoke test")
@click.option("--objectives", default=",".join(schedule_lib.SCHEDULE_STUDY), help="objectives")
@click.option("--schedules", help="comma-separated subset of each objective's schedules [all]")
@click.option("--data-dir", type=PATH, help="folder with the Fashion-MNIST IDX files")
@click.option("--out", type=PATH, default="out/schedule", help="output folder (finished cells are reused)")
@progress_option
def schedule_study(preset, objectives, schedules, data_dir, out, progress):
    """Train EDM and flow matching under their native schedule, the paper's optimal-loss schedule, its
    ablations and baselines (same network, steps, batch, seeds); compare Fréchet distance, NELBO and gaps
    to J* with paired 95% intervals.  Every finished (objective, schedule, seed) cell is reused on rerun.
    """
    check_study_out(out)
    report = schedule_lib.run_schedule_study(
        preset, out, objectives=csv_list("--objectives", objectives), data_dir=data_dir, progress=progress,
        schedules=csv_list("--schedules", schedules) if schedules else None)
    click.echo(schedule_lib.terminal_table(report))
    click.echo(f"wrote {out}/cells.csv, summary.md, summary.json, gaps.csv, adaptive_density.png, gaps.png, "
               "samples.png")


def main(argv=None):
    """Entry point: user errors (`InputError`, or the system refusing a read or write) exit 2 with one line on
    stderr; anything else is a bug and surfaces with its traceback."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        click.echo(f"error: {err.format_message()}", err=True)
        sys.exit(2)
    except (InputError, OSError) as err:  # bad input, or the system refusing a read or write (disk full...)
        click.echo("error: " + (" ".join(str(err).split()) or type(err).__name__), err=True)  # one line
        sys.exit(2)
    sys.exit(0)
