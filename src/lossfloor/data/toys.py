"""The 2-D toys of the comparative-study paper: gaussian, clusters, ring, swiss roll and waves."""

from __future__ import annotations

import numpy as np

from lossfloor.core.registry import Registry
from lossfloor.data.dataset import Dataset, make_dataset

TOY_SIZE = 10_000  # points drawn by default: `lossfloor estimate --data ring` finishes in about a minute


# -- 2-D toys (the comparative-study paper's generators) ------------------------------------------


def load_toy(name, split, n, seed) -> Dataset:
    """n points of the toy `name` (a `TOYS` entry), standardised with the train draw's statistics."""
    generate = TOYS[name]
    train_points, labels = generate(n, np.random.default_rng([seed, 0]))
    mean, std = train_points.mean(0), train_points.std(0)
    if split == "test":
        points, labels = generate(n, np.random.default_rng([seed, 1]))
    else:
        points = train_points
    scaling = {"kind": "standardise", "formula": "(x - mean) / std per coordinate (train-draw statistics)",
               "mean": mean.tolist(), "std": std.tolist()}
    source = f"generated: {name}, n={n}, seed={seed}"
    return make_dataset(name, split, (points - mean) / std, labels, scaling, source)


def _split_counts(n, parts):
    return [n // parts + (i < n % parts) for i in range(parts)]


def _shuffled(points, labels, rng):
    order = rng.permutation(len(points))
    return points[order], None if labels is None else labels[order]


def _gaussian(n, rng):
    """A standard 2-D Gaussian."""
    return rng.standard_normal((n, 2)), None


def _clusters(n, rng):
    """4 isotropic unit-std Gaussians centred at (+-5, +-5), equal counts."""
    centres = np.array([[-5.0, -5.0], [-5.0, 5.0], [5.0, -5.0], [5.0, 5.0]])
    labels = np.repeat(np.arange(4), _split_counts(n, 4))
    return _shuffled(centres[labels] + rng.standard_normal((n, 2)), labels, rng)


def _ring(n, rng):
    """Two intersecting rings centred at (0, 0) and (5, 0): angle U(0, 2pi), radius N(4, 0.2^2)."""
    labels = np.repeat(np.arange(2), _split_counts(n, 2))
    angle = rng.uniform(0, 2 * np.pi, n)
    radius = rng.normal(4.0, 0.2, n)
    points = np.stack([radius * np.cos(angle) + 5.0 * labels, radius * np.sin(angle)], 1)
    return _shuffled(points, labels, rng)


def _swiss_roll(n, rng):
    """sklearn's roll in the (x, z) plane: t = 1.5 pi (1 + 2u), (t cos t, t sin t) + N(0, 0.5^2)."""
    t = 1.5 * np.pi * (1 + 2 * rng.uniform(size=n))
    points = np.stack([t * np.cos(t), t * np.sin(t)], 1) + rng.normal(0.0, 0.5, (n, 2))
    return points, None


def _waves(n, rng):
    """Two parallel waves y = c + 0.3 sin(6 pi x), c in {0.6, 0.3}, x = linspace(0, 1), noise 0.03 on y."""
    points, labels = [], []
    for label, (count, offset) in enumerate(zip(_split_counts(n, 2), (0.6, 0.3), strict=True)):
        x = np.linspace(0.0, 1.0, count)
        y = offset + 0.3 * np.sin(6 * np.pi * x) + rng.normal(0.0, 0.03, count)
        points.append(np.stack([x, y], 1))
        labels.append(np.full(count, label))
    return _shuffled(np.concatenate(points), np.concatenate(labels), rng)


TOYS = Registry("toy dataset")
"""Toy name -> generate(n, rng) -> (points (n, 2), labels or None), before standardising (`load_toy`)."""
TOYS.add("gaussian", _gaussian, "a standard 2-D Gaussian")
TOYS.add("clusters", _clusters, "4 unit Gaussians at (+-5, +-5), labelled")
TOYS.add("ring", _ring, "two intersecting rings of radius 4, labelled")
TOYS.add("swiss-roll", _swiss_roll, "sklearn's swiss roll in the (x, z) plane")
TOYS.add("waves", _waves, "two parallel sine waves, labelled")
