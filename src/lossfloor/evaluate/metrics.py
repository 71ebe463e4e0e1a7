"""Sample metrics: the seed study's mean and covariance distances, sliced Wasserstein and energy
distance for 2-D points, and a Fréchet distance in the features of a classifier trained here.

The classifier Fréchet distance is *not* the Inception FID: its features come from a small CNN
trained on the same dataset, so its numbers compare models within this project only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from lossfloor.core.stats import Estimate


def _np(x) -> np.ndarray:
    return np.asarray(x.detach().cpu().double() if isinstance(x, Tensor) else x, dtype=np.float64)


def mean_distance(a, b) -> float:
    """||mean(a) - mean(b)||_2 (the seed's "mean distance")."""
    return float(np.linalg.norm(_np(a).mean(0) - _np(b).mean(0)))


def covariance_distance(a, b) -> float:
    """||Cov(a) - Cov(b)||_F with unbiased covariances (the seed's "covariance distance")."""
    return float(np.linalg.norm(np.cov(_np(a), rowvar=False) - np.cov(_np(b), rowvar=False)))


def sliced_wasserstein(a, b, *, projections: int = 500, seed: int = 0) -> Estimate:
    """Sliced 2-Wasserstein distance SW_2 (POT); the SE comes from the spread over random projections."""
    import ot

    sw, log = ot.sliced_wasserstein_distance(_np(a), _np(b), n_projections=projections, p=2, seed=seed,
                                             log=True)
    squared = Estimate.of(log["projected_emds"])  # the mean of W_2^2 over the 1-D projections
    return Estimate(float(sw), squared.stderr / (2 * float(sw)) if sw > 0 else squared.stderr)


def energy_distance(a, b, *, blocks: int = 10, max_points: int = 2000, seed: int = 0) -> Estimate:
    """Energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (U-statistics), with the SE from disjoint blocks."""
    rng = np.random.default_rng(seed)
    a = torch.from_numpy(_np(a)[rng.permutation(len(a))[:max_points * blocks]])
    b = torch.from_numpy(_np(b)[rng.permutation(len(b))[:max_points * blocks]])
    if min(len(a), len(b)) < 2 * blocks:
        raise ValueError(f"energy distance needs at least {2 * blocks} points per set")

    def within(x):
        d = torch.cdist(x, x)
        return d.sum().item() / (len(x) * (len(x) - 1))

    values = []
    for xa, xb in zip(a.chunk(blocks), b.chunk(blocks), strict=True):
        values.append(2 * torch.cdist(xa, xb).mean().item() - within(xa) - within(xb))
    return Estimate.of(values)


@dataclass(frozen=True)
class PointMetrics:
    """The 2-D sample metrics of one model against a held-out reference set."""

    mean_distance: float
    covariance_distance: float
    sliced_wasserstein: float
    sliced_wasserstein_se: float
    energy_distance: float
    energy_distance_se: float

    def to_dict(self) -> dict:
        return asdict(self)


def point_metrics(samples, reference, *, seed: int = 0) -> PointMetrics:
    """All 2-D metrics of `samples` against `reference` (a held-out test set)."""
    sw = sliced_wasserstein(samples, reference, seed=seed)
    ed = energy_distance(samples, reference, seed=seed)
    return PointMetrics(mean_distance(samples, reference), covariance_distance(samples, reference),
                        sw.value, sw.stderr, ed.value, ed.stderr)


# --------------------------------------------------------------------------------------------
# Fréchet distance in the features of a small classifier trained on the same data.
# --------------------------------------------------------------------------------------------


class FeatureClassifier(nn.Module):
    """A small CNN classifier; `features` (its penultimate layer) is the Fréchet feature space."""

    def __init__(self, shape, classes: int, num_features: int = 64):
        super().__init__()
        channels = shape[0]
        self.shape, self.classes, self.num_features = tuple(shape), classes, num_features
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_features), nn.ReLU())
        self.head = nn.Linear(num_features, classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Features, so that torchmetrics' FID uses this module as its feature extractor."""
        return self.features(x)

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def train_classifier(x: Tensor, labels: Tensor, *, classes: int | None = None, steps: int = 1500,
                     batch_size: int = 128, lr: float = 2e-3, seed: int = 0) -> FeatureClassifier:
    """Train the feature classifier on labelled images (N, C, H, W) in [-1, 1]."""
    classes = classes or int(labels.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FeatureClassifier(x.shape[1:], classes)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        loss = nn.functional.cross_entropy(net.logits(x[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def classifier_accuracy(net: FeatureClassifier, x: Tensor, labels: Tensor, batch_size: int = 1024) -> float:
    """Fraction of correctly classified images."""
    hits = sum((net.logits(xb).argmax(1) == yb).sum().item()
               for xb, yb in zip(x.split(batch_size), labels.split(batch_size), strict=True))
    return hits / len(x)


@torch.no_grad()
def frechet_distance(features: nn.Module, real: Tensor, fake: Tensor, batch_size: int = 1024) -> float:
    """Fréchet distance between the feature Gaussians of two sets (torchmetrics' FID, custom features)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=features, normalize=False)
    for xb in real.split(batch_size):
        fid.update(xb.float(), real=True)
    for xb in fake.split(batch_size):
        fid.update(xb.float(), real=False)
    return float(fid.compute())
