"""Diagnosis against J*: the exact posterior mean sits on the floor, an injected pipeline bug is flagged,
and GapMonitor's bins match a hand computation."""

import math

import numpy as np
import pytest
import torch

from lossfloor.data.load import load_dataset
from lossfloor.evaluate.diagnosis import VIOLATION_SE, LevelGap, diagnose, violation_message
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.curve import OptimalLossCurve
from lossfloor.floor.estimator import Estimator
from lossfloor.floor.kernel import posterior_stats
from lossfloor.objective.objective import get_objective
from lossfloor.objective.targets import make_target, prediction_from_x0
from lossfloor.plots.figures import plot_diagnosis
from lossfloor.train.monitor import GapMonitor

SIGMAS = np.geomspace(0.05, 20.0, 7)


def posterior_mean(rows: torch.Tensor):
    """The optimal denoiser E[x0 | x~] of the empirical distribution of `rows`."""
    def denoise(x_tilde, sigma):
        flat = x_tilde.reshape(len(x_tilde), -1)
        return posterior_stats(flat, rows, float(sigma)).mean().float().reshape(x_tilde.shape)
    return denoise


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", n=400)
    curve = Estimator(ds.rows(), EstimatorConfig(queries=400)).curve(SIGMAS, seed=0)
    return ds, curve


def test_the_posterior_mean_sits_on_the_floor(digits):
    ds, curve = digits
    result = diagnose(posterior_mean(ds.rows()), get_objective("edm"), curve, ds.x, queries=400)
    assert not result.violations
    for g in result.train:
        assert abs(g.gap) <= 4 * g.gap_stderr + 1e-12, g
    total = result.totals["train"]
    assert abs(total["gap"]) <= 4 * total["gap_stderr"]


def test_an_injected_pipeline_bug_is_flagged(digits, tmp_path):
    """Evaluating on data scaled by 1/2 (a normalisation bug) beats the floor at large sigma: impossible."""
    ds, curve = digits
    half = ds.x * 0.5
    result = diagnose(posterior_mean(half.reshape(len(half), -1)), get_objective("edm"), curve, half,
                      queries=400)
    flagged = [g.sigma for g in result.violations]
    assert flagged and min(flagged) > 0.3 and max(flagged) == pytest.approx(SIGMAS[-1])
    assert result.to_dict()["floor_violation"] and result.to_dict()["violation_sigmas"] == flagged
    assert "IMPOSSIBLE" in violation_message(result)
    plot_diagnosis(result, tmp_path / "d.png", "injected bug")
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


def test_test_split_and_csv(digits):
    ds, curve = digits
    test = load_dataset("digits", split="test")
    result = diagnose(posterior_mean(ds.rows()), get_objective("vp"), curve, ds.x, test_x=test.x, queries=64)
    assert len(result.test) == len(result.train) == len(SIGMAS)
    # The memorising posterior mean generalises badly: held-out loss far above J* near the critical sigma.
    assert max(g.relative_gap for g in result.test) > 0.1
    lines = result.csv_text().splitlines()
    assert lines[0].startswith("split,sigma,model_loss") and len(lines) == 1 + 2 * len(SIGMAS)
    assert set(result.totals) == {"train", "test"}


def test_level_gap_arithmetic():
    g = LevelGap(1.0, model_loss=0.10, model_stderr=0.003, optimal_loss=0.12, optimal_stderr=0.004,
                 data_variance=0.5)
    assert g.gap == pytest.approx(-0.02) and g.gap_stderr == pytest.approx(0.005)
    assert g.relative_gap == pytest.approx(-0.04)
    assert g.below_floor == (-0.02 < -VIOLATION_SE * 0.005)
    # Both losses at round-off level (J* ~ 1e-17 in the memorised regime): never a violation.
    assert not LevelGap(0.01, 0.0, 0.0, 7e-17, 6e-18, data_variance=0.3).below_floor


# -- GapMonitor --------------------------------------------------------------------------------


def linear_curve() -> OptimalLossCurve:
    """J* = 0.1 at sigma 1 and 0.3 at sigma 10 (data variance 1), interpolated in log sigma."""
    return OptimalLossCurve([1.0, 10.0], [0.1, 0.3], [0.0, 0.0], data_variance=1.0, n=10, dim=2)


def test_gap_monitor_matches_a_hand_computation():
    curve = linear_curve()
    monitor = GapMonitor(curve, get_objective("edm"), edges=[1.0, 10.0, 100.0])
    sigma = np.array([1.0, 10.0 ** 0.5, 20.0, 0.5])
    loss = np.array([0.5, 0.7, 0.9, 0.1])
    monitor.update(torch.tensor(sigma), torch.tensor(loss))
    s = monitor.summary()
    assert s["outside"] == 1 and [b["count"] for b in s["bins"]] == [2, 1]
    floor = curve(sigma[:3])
    first = s["bins"][0]
    assert first["x0_loss"] == pytest.approx(0.6)
    assert first["optimal_loss"] == pytest.approx(floor[:2].mean())
    assert first["gap"] == pytest.approx(np.mean(loss[:2] - floor[:2]))
    assert first["gap_stderr"] == pytest.approx(np.std(loss[:2] - floor[:2], ddof=1) / math.sqrt(2))
    # The weighted totals average over every sample seen, the one outside the bins included.
    lam = get_objective("edm").x0_weight(torch.tensor(sigma)).numpy()
    assert s["weighted_gap"] == pytest.approx(np.mean(lam * (loss - curve(sigma))))
    assert s["weighted_optimal"] == pytest.approx(np.mean(lam * curve(sigma)))
    text = monitor.to_csv()
    assert text.splitlines()[0].startswith("sigma_lo,sigma_hi,sigma,count,x0_loss")
    monitor.reset()
    assert monitor.summary()["bins"] == []


@pytest.mark.parametrize("name", ["ddpm", "cosine-v-simple", "flow", "edm"])
def test_gap_monitor_converts_target_losses(name):
    """A per-sample eps / v / velocity / F loss fed with its times equals feeding the x0 loss directly."""
    obj = get_objective(name)
    gen = torch.Generator().manual_seed(0)
    t = obj.sample_t(64, gen)
    x0 = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    x_t = obj.process.alpha(t)[:, None] * x0 + obj.process.sigma(t)[:, None] * eps
    x0_hat = x0 + 0.1 * torch.randn(64, 3, generator=gen, dtype=torch.float64)
    pred = prediction_from_x0(obj.target, obj.process, t, x_t, x0_hat, obj.precond)
    target = make_target(obj.target, obj.process, t, x_t, x0, obj.precond)
    via_target, direct = GapMonitor(linear_curve(), obj), GapMonitor(linear_curve(), obj)
    via_target.update_from_target(t, (pred - target).pow(2).mean(1))
    direct.update(obj.process.ve_sigma(t), (x0_hat - x0).pow(2).mean(1))
    for a, b in zip(via_target.summary()["bins"], direct.summary()["bins"], strict=True):
        assert a["count"] == b["count"] and a["x0_loss"] == pytest.approx(b["x0_loss"], rel=1e-9)
    with pytest.raises(ValueError, match="objective"):
        GapMonitor(linear_curve()).update_from_target(t, torch.zeros(64))


def test_diffusers_timesteps_map_to_ddpm_times():
    """diffusers' DDPM step k (alphas_cumprod[k], linear betas 1e-4..0.02) is lossfloor's t = (k + 1) / 1000,
    the mapping the README's GapMonitor example relies on."""
    alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    k = torch.tensor([0, 1, 499, 998, 999])
    alpha = get_objective("ddpm").process.alpha((k + 1).double() / 1000)
    assert torch.allclose(alpha**2, alphas_cumprod[k], rtol=1e-12)


def test_gap_monitor_tensorboard_scalars():
    class Writer:
        def __init__(self):
            self.scalars = {}

        def add_scalar(self, tag, value, step):
            self.scalars[tag] = (value, step)

    monitor = GapMonitor(linear_curve(), get_objective("edm"), edges=[1.0, 10.0])
    monitor.update(torch.tensor([2.0, 3.0]), torch.tensor([0.4, 0.6]))
    writer = Writer()
    monitor.log_tensorboard(writer, step=7)
    tag = f"gap/log_sigma_{math.log(math.sqrt(10.0)):+.2f}"
    assert writer.scalars[tag] == (pytest.approx(0.5 - np.mean(linear_curve()(np.array([2.0, 3.0])))), 7)
    assert writer.scalars["gap/weighted_total"][1] == 7


# -- the figure (issue 14: log-scale gaps and the critical sigma) ---------------------------------


def test_diagnosis_figure_has_a_symlog_gap_axis_and_the_critical_sigma(digits, monkeypatch, tmp_path):
    from lossfloor.plots import figures as plots

    ds, curve = digits
    result = diagnose(lambda x, s: 0.9 * posterior_mean(ds.rows())(x, s), get_objective("edm"), curve, ds.x,
                      queries=64)
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    plot_diagnosis(result, tmp_path / "d.png")
    (fig,) = figures
    top, gap_ax = fig.axes[:2]
    assert gap_ax.get_yscale() == "symlog"
    linthresh = gap_ax.yaxis.get_transform().linthresh
    assert linthresh == pytest.approx(min(g.gap_stderr for g in result.train if g.gap_stderr > 0))
    critical = [line for line in top.get_lines() if (line.get_label() or "").startswith("critical σ*")]
    assert len(critical) == 1 and critical[0].get_xdata()[0] == pytest.approx(curve.critical_sigma())


def test_a_curve_that_reaches_zero_shows_where_it_leaves_zero(monkeypatch):
    from lossfloor.plots import common as plots

    fig, ax = plots.plt.subplots()
    ax.set_yscale("log")
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 1e-9, 1e-3, 1e-1])
    plots.plot_above(ax, x, y, 1e-6, "-", "J* (train)", color="k")
    line, marks = ax.get_lines()
    assert np.isnan(line.get_ydata()[:2]).all() and np.allclose(line.get_ydata()[2:], y[2:])
    assert list(marks.get_xdata()) == [1.0, 2.0] and marks.get_marker() == "v"
    plots.plt.close(fig)


# -- where the gap is (issue 19) -------------------------------------------------------------------


def test_gap_bands_add_up_to_the_total_gap_and_are_plotted(digits, monkeypatch, tmp_path):
    from lossfloor.plots import figures as plots

    ds, curve = digits
    result = diagnose(lambda x, s: 0.9 * posterior_mean(ds.rows())(x, s), get_objective("edm"), curve, ds.x,
                      queries=64)
    bands = result.bands["train"]
    assert sum(b["weighted_gap"] for b in bands) == pytest.approx(result.totals["train"]["gap"], rel=1e-9)
    assert sum(b["share"] for b in bands) == pytest.approx(1.0)
    assert bands[1]["sigma_hi"] == pytest.approx(curve.critical_sigma())  # edges sigma* x {0.1, 1, 10}
    assert result.to_dict()["gap_bands"] == result.bands
    assert result.band_lines()[0].startswith("where the gap is (train): ")
    assert len(result.bands_csv_text().splitlines()) == 1 + 4
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    plot_diagnosis(result, tmp_path / "d.png")
    weighted = figures[0].axes[2]
    assert "λ·p·gap" in weighted.get_ylabel()
    assert any("of the gap" in t.get_text() for t in weighted.texts)


def test_the_gap_axis_fits_the_data():
    from lossfloor.plots.common import gap_limits

    gaps, se = np.array([1e-3, 2e-3, 5e-3]), np.array([1e-4, 1e-2, 0.5])
    bottom, top = gap_limits(gaps, se, linthresh=1e-4)
    assert bottom == -1e-4  # no empty negative half: every gap is positive
    assert top <= 1.5 * 3 * 5e-3  # the +-2 SE band of the last level (1.0) does not set the range
    bottom, top = gap_limits(-gaps, se, linthresh=1e-4)
    assert top == 1e-4 and bottom >= -1.5 * 3 * 5e-3


def test_gap_monitor_reports_each_bands_share_of_the_weighted_gap():
    obj = get_objective("edm")
    monitor = GapMonitor(linear_curve(), obj, edges=[0.1, 1000.0], band_edges=[2.0, 5.0])
    sigma = np.array([1.0, 3.0, 4.0, 8.0, 9.0])
    loss = np.array([0.5, 0.7, 0.9, 0.6, 0.4])
    monitor.update(torch.tensor(sigma), torch.tensor(loss))
    lam = obj.x0_weight(torch.tensor(sigma)).numpy()
    part = lam * (loss - linear_curve()(sigma)) / len(sigma)
    bands = monitor.summary()["gap_bands"]
    hand = [part[:1].sum(), part[1:3].sum(), part[3:].sum()]
    assert [b["weighted_gap"] for b in bands] == pytest.approx(hand, rel=1e-9)
    assert sum(b["weighted_gap"] for b in bands) == pytest.approx(monitor.summary()["weighted_gap"])
    assert monitor.where().startswith(f"{max(hand) / sum(hand):.0%} of the gap at ")
    # By default the bands are sigma* x {0.1, 1, 10} of the curve.
    default = GapMonitor(linear_curve(), obj)
    assert default.band_edges == pytest.approx(linear_curve().critical_sigma() * np.array([0.1, 1, 10]))
