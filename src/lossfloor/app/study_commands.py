"""`lossfloor study ...`: the reproducible studies' commands (parse, run, print the terminal table)."""

from __future__ import annotations

from pathlib import Path

import click

from lossfloor.app.checks import check_out_path
from lossfloor.app.common import resolve_device
from lossfloor.app.options import (
    PATH,
    Integer,
    choice,
    csv_list,
    device_option,
    progress_option,
)
from lossfloor.core.errors import InputError
from lossfloor.studies import common as study_common
from lossfloor.studies import diagnose as diagnose_lib
from lossfloor.studies import losses as losses_lib
from lossfloor.studies import scaling as scaling_lib
from lossfloor.studies import schedule as schedule_lib

STUDY_SEED = Integer(0, study_common.SEED_MAX)  # study seeds also seed numpy (32-bit)


def check_study_out(out) -> None:
    """A study's --out: a folder that can be created or written (checked before the study starts)."""
    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out {out}: is a file, not a folder")
    check_out_path(out)


@click.group(short_help="Reproducible studies (JSON/CSV + PNG to --out).")
def study():
    """Reproducible studies: each writes JSON/CSV + PNG to --out."""


@study.command("losses", short_help="NELBO vs simple losses for x0/eps/v/score targets.")
@click.option("--datasets", default=",".join(losses_lib.POINT_DATASETS),
              help=f"2-D toys ({','.join(losses_lib.POINT_DATASETS)}) and/or images "
                   f"({','.join(losses_lib.IMAGE_DATASETS)})")
@click.option("--targets", default=",".join(losses_lib.LOSS_TARGETS), help="prediction targets")
@click.option("--losses", "weights", default=",".join(losses_lib.LOSS_WEIGHTS),
              help="nelbo (exact VDM weight) and/or simple (unit weight on the target)")
@click.option("--seeds", default="0,1,2", help="training seeds (mean ± SE over them)")
@click.option("--preset", type=choice(losses_lib.PRESET_NAMES), default="quick",
              help="quick: minutes; reduced: the committed results; full: the paper's budget")
@click.option("--data-dir", type=PATH, help="folder with the Fashion-MNIST IDX files")
@click.option("--out", type=PATH, default="out/losses", help="output folder (finished cells are reused)")
@progress_option
def losses(datasets, targets, weights, seeds, preset, data_dir, out, progress):
    """Compare x0 / eps / v / score targets trained with NELBO vs simple losses, on one yardstick.

    Every finished (dataset, target, loss, seed) cell is saved on its own, so a rerun resumes.
    """
    check_study_out(out)
    summary = losses_lib.run_losses_study(csv_list("--datasets", datasets), csv_list("--targets", targets),
                                          csv_list("--losses", weights), csv_list("--seeds", seeds, int),
                                          preset, out, data_dir=data_dir, progress=progress)
    click.echo(losses_lib.terminal_table(summary))
    click.echo(f"{summary['cells']} cells; wrote {out}/table.md, table.csv, summary.json and figures")


@study.command("diagnose", short_help="Per-σ gaps to J* of VP, VE, EDM and flow models.")
@click.option("--datasets", default=",".join(diagnose_lib.DIAGNOSE_DATASETS), help="comma-separated datasets")
@click.option("--variants", default=",".join(diagnose_lib.DIAGNOSE_VARIANTS),
              help="objectives to train (presets or <preset>-<target>-<weight>)")
@click.option("--budget", type=choice(diagnose_lib.DIAGNOSE_BUDGETS), default="cpu",
              help="; ".join(f"{k}: {v}" for k, v in diagnose_lib.DIAGNOSE_BUDGET_TIMES.items()))
@click.option("--seed", type=STUDY_SEED, default=0, help="seed of the training runs and queries")
@click.option("--data-dir", type=PATH, help="folder with the Fashion-MNIST IDX files")
@click.option("--out", type=PATH, default="out/diagnose_study", help="output folder")
@progress_option
def diagnose_study(datasets, variants, budget, seed, data_dir, out, progress):
    """Train VP, VE, EDM and flow matching on the same data and plot their per-sigma gaps to J*."""
    names, objectives = csv_list("--datasets", datasets), csv_list("--variants", variants)
    check_study_out(out)
    click.echo(f"budget {budget}: {diagnose_lib.DIAGNOSE_BUDGET_TIMES[budget]}")
    report = diagnose_lib.run_diagnose_study(names, objectives, budget, out, seed=seed, data_dir=data_dir,
                                           progress=progress)
    click.echo(diagnose_lib.diagnose_terminal_table(report))
    click.echo(f"wrote {out}/diagnose_study.json, gaps.csv, totals.csv, gaps.png, samples_*.png")


@study.command("scaling", short_help="Power laws of the loss in compute, with and without J* subtracted.")
@click.option("--preset", type=choice(scaling_lib.SCALING_PRESETS), default="cpu",
              help="cpu: the committed results (10 MLP widths x 3 seeds on 256 digits, the EDM loss on the "
                   "band [sigma*, 10 sigma*]; ~15 CPU-minutes); full: 6 UNet widths on Fashion-MNIST "
                   "(a GPU); quick: a smoke test")
@click.option("--seed", type=STUDY_SEED, default=0,
              help="seed of the J* queries and the draws; training runs use seed, seed + 1, ...")
@click.option("--widths", help="comma-separated subset of the preset's widths to train (to split the work "
                               "over processes); the report waits for every cell [all]")
@click.option("--data-dir", type=PATH, help="folder with the Fashion-MNIST IDX files")
@device_option
@click.option("--out", type=PATH, default="out/scaling", help="output folder (finished cells are reused)")
@progress_option
def scaling_study(preset, seed, widths, data_dir, device, out, progress):
    """Train several model sizes and seeds with EDM, evaluate at log-spaced steps on fixed draws, and fit
    J = beta F^alpha, J - J* = beta F^alpha and J = E + beta F^alpha on the compute-optimal frontier of the
    seed-mean curves, per size and per noise level, with a run bootstrap that re-chooses the frontier.
    Every finished (size, seed, step) cell is saved on its own, so a rerun resumes.
    """
    device = str(resolve_device(device))  # before anything is written
    subset = csv_list("--widths", widths, int) if widths else None
    check_study_out(out)
    report = scaling_lib.run_scaling_study(preset, out, seed=seed, data_dir=data_dir, device=device,
                                           widths=subset, progress=progress)
    click.echo(scaling_lib.scaling_terminal_table(report))
    if "finished" not in report:
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
