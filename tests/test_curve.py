"""OptimalLossCurve: interpolation, tails, totals against exact integrals, JSON round trip."""

import json
import math

import numpy as np
import pytest
import torch

from lossfloor.curve import OptimalLossCurve
from lossfloor.formulation import get_objective
from lossfloor.reference import gaussian_optimal_loss

GRID = np.geomspace(1e-3, 1e3, 61)


def gaussian_curve(eigenvalues=(0.25,) * 4, grid=GRID, stderr=0.0):
    """The exact J* of N(0, diag(eigenvalues)) data on a grid."""
    loss = gaussian_optimal_loss(grid, eigenvalues)
    return OptimalLossCurve(grid, loss, np.full(len(grid), stderr), float(np.mean(eigenvalues)), 1000,
                            len(eigenvalues))


def test_edm_weight_is_one_over_gaussian_optimal_loss():
    # For data N(0, sigma_data^2 I), J* = c_out^2 = 1 / lambda_EDM, so the EDM total is exactly 1; the
    # logit interpolation is exact for equal eigenvalues, so only quadrature and truncation remain.
    total = gaussian_curve().total(get_objective("edm"))
    assert total.value == pytest.approx(1.0, abs=1e-8)
    assert total.stderr == 0.0


def _gauss_legendre(f, lo, hi, pieces=400, order=20):
    """Composite Gauss-Legendre quadrature of a vectorised f (independent of the curve's trapezoids)."""
    x, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(lo, hi, pieces + 1)
    mid, half = (edges[1:] + edges[:-1]) / 2, (edges[1:] - edges[:-1]) / 2
    nodes = (mid[:, None] + half[:, None] * x).ravel()
    return float(np.sum(f(nodes) * (half[:, None] * w).ravel()))


EIGEN = (0.05, 0.2, 0.4, 1.0)


@pytest.mark.parametrize("name", ["flow", "sd3", "cosine", "vp", "edm", "edm2", "cosine-v-nelbo",
                                  "flow-x0-simple", "sd3-eps-nelbo"])
def test_total_matches_direct_integral(name):
    """E_p[lambda J*] of Gaussian data with unequal eigenvalues: curve total vs direct quadrature."""
    obj = get_objective(name)

    def integrand(ls):
        s = torch.tensor(ls, dtype=torch.float64)
        p, lam = torch.exp(obj.log_density(s)).numpy(), obj.x0_weight(torch.exp(s)).numpy()
        return np.where(p > 0, p * lam, 0.0) * gaussian_optimal_loss(np.exp(ls), EIGEN)

    lo, hi = math.log(1e-3) - 6 * math.log(10), math.log(1e3) + 6 * math.log(10)
    want = _gauss_legendre(integrand, lo, hi)
    assert gaussian_curve(EIGEN).total(obj).value == pytest.approx(want, rel=5e-4)  # interpolation, 10/decade


def test_total_with_hard_density_edges():
    # VE's log-uniform density has jumps at 0.02 and 100: trapezoids are first order there.
    obj = get_objective("ve")
    def lam_j(ls):
        return obj.x0_weight(torch.tensor(np.exp(ls))).numpy() * gaussian_optimal_loss(np.exp(ls), EIGEN)

    want = _gauss_legendre(lam_j, math.log(0.02), math.log(100.0)) / math.log(100 / 0.02)
    assert gaussian_curve(EIGEN).total(obj).value == pytest.approx(want, rel=1e-3)


@pytest.mark.parametrize("name", ["ddpm", "iddpm"])
def test_discrete_total_is_the_atom_average(name):
    obj = get_objective(name)
    curve = gaussian_curve(EIGEN, grid=np.geomspace(1e-3, 1e5, 81))
    atoms = obj.atoms()
    want = np.mean(obj.x0_weight(atoms).numpy() * curve(atoms.numpy()))
    assert curve.total(obj).value == pytest.approx(want, rel=1e-12)


def test_sum_reduction_scales_by_dimension():
    curve = gaussian_curve(EIGEN)
    assert curve(0.3, reduction="sum") == pytest.approx(4 * curve(0.3))
    obj = get_objective("edm")
    assert curve.total(obj, reduction="sum").value == pytest.approx(4 * curve.total(obj).value)
    with pytest.raises(ValueError, match="reduction"):
        curve(0.3, reduction="max")


def test_interpolation_and_tails():
    curve = gaussian_curve(EIGEN, grid=np.geomspace(0.05, 5, 11))
    np.testing.assert_allclose(curve(curve.sigma), curve.loss, rtol=1e-12)
    fine = np.geomspace(0.05, 5, 200)
    np.testing.assert_allclose(curve(fine), gaussian_optimal_loss(fine, EIGEN), rtol=5e-3)
    # Below: J(s_min) (s/s_min)^2 to leading order, exact for Gaussian data as s -> 0.
    assert curve(1e-4) == pytest.approx(gaussian_optimal_loss(1e-4, EIGEN), rel=0.02)
    # Above: V - (V - J(s_max)) (s_max/s)^2, the large-noise expansion.
    assert curve(1e3) == pytest.approx(gaussian_optimal_loss(1e3, EIGEN), rel=1e-4)
    assert curve(1e8) == pytest.approx(np.mean(EIGEN), rel=1e-12)


def test_linear_fallback_outside_zero_and_variance():
    # Monte-Carlo values of exactly 0 or above V cannot take a logit: those pieces are linear in J.
    curve = OptimalLossCurve([0.1, 1.0, 10.0, 100.0], [0.0, 0.5, 1.02, 0.99], [0.0] * 4, 1.0, 10, 1)
    assert curve(math.sqrt(0.1)) == pytest.approx(0.25)
    assert curve(math.sqrt(10.0)) == pytest.approx(0.76)
    assert curve(0.01) == 0.0
    assert curve(1000.0) == pytest.approx(1 - 0.01 * 0.01 / 0.99 / (1 + 0.01 * 0.01 / 0.99), rel=1e-9)
    assert np.all(np.isfinite(curve(np.geomspace(1e-6, 1e6, 50))))


def test_standard_error_is_the_propagated_grid_error():
    # stderr = sqrt(sum_i (dT/dJ_i)^2 se_i^2), with dT/dJ_i checked by finite differences.
    grid = np.geomspace(1e-3, 1e3, 13)
    se = np.linspace(1e-4, 1e-3, 13)
    curve = OptimalLossCurve(grid, gaussian_optimal_loss(grid, EIGEN), se, float(np.mean(EIGEN)), 100, 4)
    obj = get_objective("sd3")
    base = curve.total(obj).value
    grads = []
    for i in range(len(grid)):
        loss = curve.loss.copy()
        h = 1e-6 * loss[i]
        loss[i] += h
        moved = OptimalLossCurve(grid, loss, se, curve.data_variance, 100, 4)
        grads.append((moved.total(obj).value - base) / h)
    assert curve.total(obj).stderr == pytest.approx(math.sqrt(np.sum((np.array(grads) * se) ** 2)), rel=1e-4)


def test_grid_must_cover_the_noise_distribution():
    # The integral stops 6 decades beyond the grid: more noise mass than 1e-6 beyond that is an error.
    narrow = gaussian_curve(grid=np.geomspace(1e5, 1e6, 5))
    with pytest.raises(ValueError, match="widen the sigma grid"):
        narrow.total(get_objective("edm"))
    with pytest.raises(ValueError, match="widen the sigma grid"):
        gaussian_curve(grid=np.geomspace(1e5, 1e6, 5)).total(get_objective("ddpm"))


def test_extrapolated_part_is_reported():
    total = gaussian_curve(grid=np.geomspace(0.1, 1.0, 11)).total(get_objective("edm"))
    full = gaussian_curve().total(get_objective("edm"))
    assert 0.3 < total.extrapolated / total.value < 0.9
    assert full.extrapolated / full.value < 0.01


def test_json_round_trip(tmp_path):
    curve = gaussian_curve(stderr=1e-4)
    curve.fingerprint = "abc"
    curve.settings = {"estimator": "full", "C_used": math.inf}
    path = tmp_path / "curve.json"
    curve.save(path, dataset="toy")
    assert json.loads(path.read_text())["dataset"] == "toy"
    back = OptimalLossCurve.load(path)
    np.testing.assert_array_equal(back.loss, curve.loss)
    np.testing.assert_array_equal(back.sigma, curve.sigma)
    assert back.fingerprint == "abc" and back.settings["C_used"] == math.inf and back.dim == 4
    assert back.total(get_objective("edm")).value == curve.total(get_objective("edm")).value


def test_load_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid curve"):
        OptimalLossCurve.load(bad)
    bad.write_text(json.dumps({"sigma": [1.0]}))
    with pytest.raises(ValueError, match="missing"):
        OptimalLossCurve.load(bad)


def test_unsorted_grid_is_sorted():
    curve = OptimalLossCurve([2.0, 1.0], [0.5, 0.2], [0.01, 0.02], 1.0, 10, 1)
    np.testing.assert_array_equal(curve.sigma, [1.0, 2.0])
    np.testing.assert_array_equal(curve.stderr, [0.02, 0.01])
