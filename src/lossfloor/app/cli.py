"""The `lossfloor` command line: parses flags, calls `lossfloor.app`, prints.

Bad input gets one line on stderr and exit code 2.  Every choice list comes from the library's registries
and every default from the workflow's settings dataclasses.
"""

from __future__ import annotations

import sys

import click
import torch

from lossfloor.app.common import DTYPES, SIGMA_GRID
from lossfloor.app.diagnose import DiagnoseSettings, prepare_diagnose, run_diagnose
from lossfloor.app.encode import EncodeSettings, prepare_encode, run_encode
from lossfloor.app.estimate import EstimateSettings, prepare_estimate, run_estimate
from lossfloor.app.fit import FitSettings, prepare_fit, run_fit
from lossfloor.app.options import (
    COUNT,
    LEVELS,
    PATH,
    QUERIES,
    SEED,
    SIGMA,
    SIGMAS,
    Integer,
    Real,
    choice,
    device_option,
    echo,
    progress_option,
)
from lossfloor.app.sample import SampleSettings, run_sample
from lossfloor.app.study_commands import study
from lossfloor.app.train import (
    Terminated,
    TrainSettings,
    next_steps,
    prepare_train,
    run_train,
    sigterm_raises,
    terminated_line,
)
from lossfloor.app.warn import clean_warnings
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
from lossfloor.train.schedules import SCHEDULES

EST, TRAIN, SAMPLE, DIAG = (EstimateSettings(), TrainSettings(), SampleSettings(),
                            DiagnoseSettings())
GRID = SIGMA_GRID
DATA_HELP = f"{' | '.join(BUILTIN)} | an .npy/.npz file | a folder of images"
OBJECTIVE_HELP = (f"a preset ({' '.join(objective_names())}) or <preset>-<target>-<weight> with target in "
                  f"{{{','.join(TARGETS)}}}, weight in {{{','.join(WEIGHTS)}}}")


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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="lossfloor")
@click.option("--threads", type=Integer(1, 1024),
              help="CPU threads of torch [torch's default: one per core]; on a machine whose cores are busy "
                   "with other jobs, 1 is often several times faster (README: Speed on a shared machine)")
def cli(threads):
    """How low can a diffusion model's training loss go?  The exact optimal loss on a finite dataset."""
    if threads is not None:
        torch.set_num_threads(threads)


# -- estimate -----------------------------------------------------------------------------------


@cli.command(short_help="Optimal loss J*(σ) of a dataset and an objective's total.")
@click.option("--data", default=EST.data, help=DATA_HELP)
@click.option("--split", type=choice(SPLITS), default=EST.split, help="which split of --data")
@data_options(EST)
@click.option("--class-conditional", is_flag=True, help="posterior within the query's class (needs labels)")
@click.option("--objective", default=EST.objective, help=OBJECTIVE_HELP)
@click.option("--sigma-data", type=Real(0, 1e4, lo_open=True),
              help="EDM preconditioning's sigma_data (the data's std per dimension) [the objective's: 0.5]")
@click.option("--sigmas", type=SIGMAS, help="comma-separated noise levels, e.g. 0.1,0.5,2")
@click.option("--sigma-min", type=SIGMA, help=f"smallest level of the geometric grid [{GRID[0]}]")
@click.option("--sigma-max", type=SIGMA, help=f"largest level of the geometric grid [{GRID[1]}]")
@click.option("--num-sigmas", type=LEVELS, help=f"levels of the geometric grid [{GRID[2]}]")
@click.option("--estimator", type=choice(ESTIMATORS), default=EST.estimator, help=ESTIMATORS.summary())
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
@click.option("--form", type=choice(FORMS), default=EST.form, help=FORMS.summary())
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
@click.option("--sigma-data", type=Real(0, 1e4, lo_open=True),
              help="EDM preconditioning's sigma_data (the data's std per dimension) [the objective's: 0.5]")
@click.option("--schedule", type=choice(SCHEDULES), default=TRAIN.schedule,
              help="loss weight and noise density (docs/theory.md#training-schedules)")
@click.option("--curve", type=PATH, help="optimal_loss.json of the training data: the excess over the floor "
              "in the logs and progress bar (any schedule); needed by the optimal-loss schedules")
@click.option("--critical-fraction", type=Real(0, 1, lo_open=True, hi_open=True),
              help="optimal-loss schedules: sigma* is where J* crosses this fraction of the data variance "
                   "[0.01; 0.05 reproduced the paper's FD gains on digits, docs/schedules.md]")
@click.option("--model", type=choice(MODELS),
              help=f"network [unet for images, mlp otherwise]; {MODELS.summary()}")
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
    with sigterm_raises():
        try:
            trainer = run_train(run, progress)
        except Terminated:
            click.echo(terminated_line(run), err=True)
            sys.exit(143)
    click.echo(f"wrote {run.files[0]} (step {trainer.step}), {run.files[1]}, {run.files[2]}")
    click.echo(next_steps(run))


@cli.command(short_help="Draw samples from a checkpoint (PNG).")
@click.option("--checkpoint", required=True, type=PATH, help="a checkpoint.pt (or its folder)")
@click.option("--n", type=Integer(1, 4096), default=SAMPLE.n, help="number of samples (drawn as one batch)")
@click.option("--steps", type=LEVELS, default=SAMPLE.steps, help="sigma levels of the sampler")
@click.option("--sampler", type=choice(SAMPLERS), default=SAMPLE.sampler, help=SAMPLERS.summary())
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
@click.option("--denoiser", metavar="FILE.py:FACTORY",
              help="or your own model: FACTORY() returns denoise(x0 + sigma eps, sigma) -> x0_hat (EDM / "
                   "k-diffusion convention); RUNS THE CODE IN FILE.py; needs --data and --objective")
@click.option("--objective", help="with --denoiser: the objective it was trained with; " + OBJECTIVE_HELP)
@click.option("--data", help="evaluate on this dataset instead of the checkpoint's (same shape)")
@data_options(DIAG)
@click.option("--test-data", type=PATH, help="held-out data for --data without a test split (same shape)")
@click.option("--curve", type=PATH, help="optimal_loss.json of the same data [estimated here and saved in "
              "--out]")
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

    with clean_warnings("diagnose --curve" if options["curve"] else "diagnose"):
        run = prepare_diagnose(DiagnoseSettings(**options))
        echo(run.header())
        result = run_diagnose(run, progress)
    echo(result.report())
    if result.diagnosis.violations:
        click.echo("!" * 100 + "\n" + violation_message(result.diagnosis) + "\n" + "!" * 100, err=True)
    click.echo(f"wrote {', '.join(str(f) for f in result.files)}")


# -- encode -------------------------------------------------------------------------------------


@cli.command(short_help="Images -> latent mean/std (.npz) with a diffusers VAE.")
@click.option("--vae", type=PATH, required=True, help="a diffusers AutoencoderKL save_pretrained folder "
              "(or a pipeline with vae/); local files only")
@click.option("--data", default="digits", help="images: " + DATA_HELP)
@click.option("--data-dir", type=PATH, help="folder with the Fashion-MNIST IDX files")
@click.option("--n", type=COUNT, help="encode a random subset of N images")
@click.option("--data-seed", type=SEED, default=0, help="seed of --n")
@click.option("--normalise", is_flag=True, help="EDM2-style per-channel normalisation to std 0.5 instead of "
              "the VAE's scaling/shift factors")
@click.option("--batch-size", type=Integer(1, 1 << 16), default=64, help="images per encoder call")
@device_option
@click.option("--out", type=PATH, default="latents.npz", help="the latent .npz to write")
@click.option("--force", is_flag=True, help="overwrite an existing --out")
@progress_option
def encode(progress, **options):
    """Encode images with a VAE: each image's latent_dist mean and std, in the units the diffusion model
    sees, as a latent .npz for estimate, train and diagnose (docs/latents.md)."""
    run = prepare_encode(EncodeSettings(**options))
    echo(run.header())
    result = run_encode(run, progress)
    echo(result.report())
    click.echo(f"wrote {', '.join(str(f) for f in result.files)}")


# -- fit ----------------------------------------------------------------------------------------


@cli.command(short_help="Scaling-law fits of your own runs (CSV), with and without J* subtracted.")
@click.argument("runs_csv", type=click.Path(dir_okay=False))
@click.option("--floor", type=Real(0), help="J* of the total loss (per dimension, the runs' objective)")
@click.option("--floor-stderr", type=Real(0), default=0.0, help="its standard error (propagated)")
@click.option("--curve", type=PATH, help="or optimal_loss.json of the training data (J*(σ) for sigma rows)")
@click.option("--objective", help="with --curve: the objective the total losses were measured under; "
              + OBJECTIVE_HELP)
@click.option("--column", multiple=True, metavar="FIELD=HEADER",
              help="read FIELD (run, loss, compute, steps, flops_per_step, parameters, sigma, size) from "
                   "another header, e.g. --column run=width; with a size column, runs are seeds of a size")
@click.option("--n-boot", type=Integer(10, 100_000), default=1000, help="bootstrap resamples (whole runs)")
@click.option("--seed", type=SEED, default=0, help="seed of the bootstrap")
@click.option("--out", type=PATH, default="out/fit", help="output folder")
@click.option("--force", is_flag=True, help="overwrite the results in --out")
def fit(**options):
    """Fit J = beta F^alpha, J - J* = beta F^alpha and J = E + beta F^alpha to RUNS.csv's compute frontier
    (columns run, loss, compute; docs/scaling.md), 95% intervals resampling whole runs; and per run.  With
    a size column (several seeds per model size) the frontier is that of each size's mean curve and the
    bootstrap resamples seeds within sizes, re-choosing the frontier, as the scaling study does."""
    run = prepare_fit(FitSettings(**options))
    echo([f"runs:    {run.settings.runs_csv} ({len(run.runs.run)} rows, {len(set(run.runs.run))} runs)",
          run.floor_line()])
    result = run_fit(run)
    echo(result.lines())
    click.echo(f"wrote {', '.join(str(f) for f in result.files)}")


cli.add_command(study)


def main(argv=None):
    """Entry point: user errors (`InputError`, or the system refusing a read or write) exit 2 with one line on
    stderr; anything else is a bug and surfaces with its traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        command = next((a for a in args if a in cli.commands), "")
        with clean_warnings(command):  # no raw Python warning reaches the terminal
            cli.main(args=args, standalone_mode=False)
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
