"""`lossfloor diagnose`: any model (`app.sources`) against J*(sigma) per level and in total; JSON, CSV,
PNG."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lossfloor.app.common import SIGMA_GRID, check_coverage, check_out_dir, matching_curve, resolve_device
from lossfloor.app.sources import SOURCES, DenoiserSource
from lossfloor.core.errors import InputError
from lossfloor.core.files import atomic_write_json, atomic_write_text
from lossfloor.data.dataset import Dataset, NoTestSplit
from lossfloor.data.load import load_dataset
from lossfloor.evaluate.diagnosis import Diagnosis, diagnose
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.floor.estimator import Estimator
from lossfloor.objective.objective import Objective

DIAGNOSE_FILES = ("diagnosis.json", "diagnosis.csv", "diagnosis.png", "diagnosis_bands.csv")
CURVE_FILE = "optimal_loss.json"  # J* as estimated by a diagnosis without --curve, for the next one
DIAGNOSE_QUERIES = 1024  # noisy queries per level for the model's loss (and J* when it is estimated)


# -- diagnose -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiagnoseSettings:
    """`lossfloor diagnose`: the model (checkpoint or diffusers folder), data, curve and output options."""

    checkpoint: str = ""
    diffusers: str | None = None  # a diffusers save_pretrained folder instead (`app.sources.open_diffusers`)
    denoiser: str | None = None  # or FILE.py:FACTORY, the user's own code (`app.sources.open_denoiser`)
    objective: str | None = None  # the objective of a --denoiser model
    data: str | None = None  # default: the checkpoint's data, reloaded
    data_dir: str | None = None
    n: int | None = None
    data_seed: int = 0
    flip: bool = False
    test_data: str | None = None  # the held-out data, where --data has no test split (same shape)
    curve: str | None = None  # default: estimated here (and saved as --out/optimal_loss.json)
    levels: int = 16
    sigma_min: float = SIGMA_GRID[0]
    sigma_max: float = SIGMA_GRID[1]
    queries: int = DIAGNOSE_QUERIES
    seed: int = 0
    raw_weights: bool = False
    device: str = "cpu"
    out: str = "out/diagnose"
    force: bool = False

    def source_kind(self) -> str:
        """Which `SOURCES` entry the options name."""
        given = [k for k, v in (("--checkpoint", self.checkpoint), ("--diffusers", self.diffusers),
                                ("--denoiser", self.denoiser)) if v]
        if len(given) > 1:
            raise InputError(f"{' and '.join(given[:2])}: give one of --checkpoint, --diffusers or "
                             "--denoiser, not both")
        if self.objective is not None and self.denoiser is None:
            raise InputError("--objective goes with --denoiser (checkpoints and diffusers folders carry "
                             "their own)")
        if self.denoiser is not None:
            return "denoiser"
        if self.diffusers is not None:
            return "diffusers"
        if not self.checkpoint:
            raise InputError("give --checkpoint (a lossfloor checkpoint) or --diffusers (a diffusers folder)")
        return "checkpoint"


@dataclass
class DiagnoseRun:
    """A checked diagnosis: the model's source, the data splits, J* (or how to estimate it) and the levels."""

    settings: DiagnoseSettings
    source: DenoiserSource
    train_set: Dataset
    test_set: Dataset | None
    curve: OptimalLossCurve | None  # None: estimated by run_diagnose at `sigmas`
    sigmas: np.ndarray
    device: torch.device
    out: Path

    @property
    def objective(self) -> Objective:
        return self.source.objective

    def header(self) -> list[str]:
        """What is evaluated: model, data, objective, levels and curve (one line each)."""
        s = self.settings
        test = f"; test N = {len(self.test_set)}" if self.test_set is not None else "; no test split"
        if self.curve is not None:
            estimator = self.curve.settings.get("estimator", "?")
            curve = f"{s.curve} ({len(self.curve.sigma)} levels, {estimator} estimator)"
        else:
            curve = (f"estimated here: {len(self.sigmas)} levels from {self.sigmas[0]:.4g} to "
                     f"{self.sigmas[-1]:.4g}, {s.queries} queries each (saved as {self.out / CURVE_FILE})")
        return ([f"model:     {self.source.model_line}",
                 f"data:      {self.train_set.name} (train N = {len(self.train_set)}{test})",
                 f"objective: {describe_objective(self.objective)}"]
                + [f"levels:    {note}" for note in self.source.notes]
                + [f"curve:     {curve}"])


@dataclass
class DiagnoseResult:
    diagnosis: Diagnosis
    files: list[Path]
    saved_curve: Path | None = None  # J* estimated here and saved (no --curve)

    def report(self) -> list[str]:
        """Per level: model loss, J*, gap ± SE, gap/variance (and test); then the objective's totals."""
        d = self.diagnosis
        lines = [f"{'sigma':>9} {'model':>10} {'J*':>10} {'gap':>10} {'± SE':>8} {'gap/var':>8}"
                 + (f" {'test':>10} {'test gap':>10}" if d.test else "")]
        for i, g in enumerate(d.train):
            lines.append(f"{g.sigma:9.4g} {g.model_loss:10.4g} {g.optimal_loss:10.4g} {g.gap:10.4g} "
                         f"{g.gap_stderr:8.2g} {g.relative_gap:8.4f}"
                         + (f" {d.test[i].model_loss:10.4g} {d.test[i].gap:10.4g}" if d.test else ""))
        for split, t in d.totals.items():
            lines.append(f"total {d.objective} loss ({split}): model {t['model']:.5g} "
                         f"± {t['model_stderr']:.2g}, optimal {t['optimal']:.5g} "
                         f"± {t['optimal_stderr']:.2g}, gap {t['gap']:.5g} ± {t['gap_stderr']:.2g}")
        lines += d.band_lines()
        if self.saved_curve is not None:
            lines.append(f"saved J*(sigma) as {self.saved_curve}; pass --curve {self.saved_curve} to "
                         "diagnose another model of the same data without estimating it again")
        return lines


def describe_objective(obj: Objective) -> str:
    """One line: name, process, target, weight and noise distribution."""
    return (f"{obj.name} (process {obj.process.name}, target {obj.target}, weight {obj.weight.kind}, "
            f"noise {obj.time_dist!r})")


def check_diagnose_grid(s: DiagnoseSettings) -> None:
    """The queries and the sigma grid of a diagnosis."""
    if s.queries < 2:
        raise InputError(f"--queries must be at least 2, got {s.queries}")
    if s.curve is None and (s.levels < 2 or not 0 < s.sigma_min < s.sigma_max):
        raise InputError(f"need --levels >= 2 and 0 < --sigma-min < --sigma-max, got {s.levels}, "
                         f"{s.sigma_min}, {s.sigma_max}")


def prepare_diagnose(s: DiagnoseSettings) -> DiagnoseRun:
    """Check the options, open the model, load the data and the curve; nothing is written."""
    kind = s.source_kind()
    if kind in ("diffusers", "denoiser") and s.data is None:
        raise InputError(f"--{kind} needs --data: the data the model was trained on (scaled to [-1, 1])")
    if s.data is None and (s.data_dir, s.n, s.flip, s.data_seed) != (None, None, False, 0):
        raise InputError("--data-dir, --n, --data-seed and --flip apply with --data (without it the "
                         "checkpoint's own data is reloaded as it was trained)")
    check_diagnose_grid(s)
    device, out = resolve_device(s.device), Path(s.out)
    check_out_dir(out, DIAGNOSE_FILES + ((CURVE_FILE,) if s.curve is None else ()), force=s.force)
    source = SOURCES[kind](s, device)
    if s.data is None:
        train_set = source.own_data("train")
        test_load = lambda: source.own_data("test")  # noqa: E731
    else:
        train_set = load_dataset(s.data, data_dir=s.data_dir, flip=s.flip, n=s.n, seed=s.data_seed)
        test_load = lambda: load_dataset(s.data, data_dir=s.data_dir, split="test", seed=s.data_seed)  # noqa: E731
    source.check_data(train_set)
    if s.test_data is None:
        test_set = load_test_split(test_load)
    else:  # a file of its own: a missing one is an error, not "no test split"
        test_set = load_dataset(s.test_data, data_dir=s.data_dir, seed=s.data_seed)
        source.check_data(test_set)
    curve = None if s.curve is None else matching_curve(s.curve, train_set)
    if curve is None:
        sigmas = source.levels(s.sigma_min, s.sigma_max, s.levels)
    else:
        sigmas = source.snap(curve.sigma)
    check_coverage(source.objective, sigmas if curve is None else curve.sigma)
    return DiagnoseRun(s, source, train_set, test_set, curve, np.asarray(sigmas, dtype=float), device, out)


def load_test_split(load):
    """`load()`'s test split, or None where the dataset has none (`data.NoTestSplit`, or Fashion-MNIST's
    t10k files absent); a damaged test file raises its one-line InputError like any other input."""

    try:
        return load()
    except (NoTestSplit, FileNotFoundError):
        return None


class SplitBars:
    """Progress callback over splits: one bar of `levels` sigma levels per split, opened in turn."""

    def __init__(self, splits: list[str], levels: int, enabled: bool = True, desc: str = "model loss"):
        self.splits, self.levels, self.enabled, self.desc = list(splits), levels, enabled, desc
        self.bar = None

    def __call__(self, k: int = 1) -> None:
        for _ in range(k):
            if self.bar is None or self.bar.n >= self.levels:
                self.close()
                split = self.splits.pop(0) if self.splits else "extra"
                self.bar = tqdm(total=self.levels, desc=f"{self.desc} ({split})", unit="level",
                                disable=not self.enabled)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_diagnose(run: DiagnoseRun, progress: bool = True) -> DiagnoseResult:
    """Estimate J* at the run's levels if needed, evaluate the model on train (and test) data and write
    JSON, CSV and PNG."""
    s, out, curve, source = run.settings, Path(run.out), run.curve, run.source
    out.mkdir(parents=True, exist_ok=True)
    saved = None
    if curve is None:
        est = Estimator(run.train_set.rows(), EstimatorConfig(queries=s.queries), device=run.device,
                        std=run.train_set.std_rows())  # a Gaussian mixture's J* for stochastic latents
        curve = est.curve(run.sigmas, seed=s.seed, progress=progress)
        curve.fingerprint = run.train_set.fingerprint
        saved = out / CURVE_FILE
        curve.save(saved, estimator="full", data=run.train_set.describe(), scaling=run.train_set.scaling)
    test_x = None if run.test_set is None else run.test_set.x
    bars = SplitBars(["train"] + ([] if test_x is None else ["test"]), len(run.sigmas), progress)
    try:
        result = diagnose(source.denoiser, run.objective, curve, run.train_set.x, test_x=test_x,
                          queries=s.queries, seed=s.seed, progress=bars, sigmas=run.sigmas,
                          train_std=run.train_set.std,
                          test_std=None if run.test_set is None else run.test_set.std)
    finally:
        bars.close()
    meta = {**source.head, "data": run.train_set.describe(),
            "test_data": None if run.test_set is None else run.test_set.describe(),
            "objective_spec": run.objective.to_dict(), "queries": s.queries, "seed": s.seed, **source.tail,
            "data_variance": curve.data_variance}
    files = [out / name for name in DIAGNOSE_FILES]
    from lossfloor.plots.figures import plot_diagnosis

    title = f"{run.train_set.name}: {run.objective.name} ({source.title}) vs optimal loss"
    plot_diagnosis(result, files[2], title)
    atomic_write_text(files[1], result.csv_text())
    atomic_write_text(files[3], result.bands_csv_text())
    atomic_write_json(files[0], {**meta, **result.to_dict()})
    return DiagnoseResult(result, files, saved)
