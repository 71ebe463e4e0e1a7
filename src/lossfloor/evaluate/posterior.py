"""The optimal denoiser on given draws: the posterior mean E[x0 | x~] over the training rows and
tr Var(x0 | x~) / D, the "same-draw floor" that the scaling study and the floor-referenced validator
(`lossfloor.evaluate.validation`) subtract from a model's loss draw by draw."""

from __future__ import annotations

import torch

from lossfloor.floor.kernel import posterior_stats


def posterior_moments(train_rows: torch.Tensor, x0, sigma, eps, batch_size: int = 512) -> dict:
    """The optimal denoiser on the same draws: the posterior mean E[x0 | x~] over the training rows,
    shape (M, D), and tr Var(x0 | x~) / D, shape (M,) (its expected loss given x~), in float64.
    sigma is one level or one per draw (then one kernel call per draw)."""

    rows = train_rows.double()
    center = rows.mean(0)
    flat_x0 = x0.reshape(len(x0), -1).double() - center
    scale = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
    noisy = flat_x0 + scale * eps.reshape(len(x0), -1).double()
    sig = torch.as_tensor(sigma, dtype=torch.float64)
    if sig.numel() > 1:
        parts = [posterior_stats(noisy[i:i + 1], rows, s, shift=center)
                 for i, s in enumerate(sig.tolist())]
    else:
        parts = [posterior_stats(noisy[i:i + batch_size], rows, float(sig), shift=center)
                 for i in range(0, len(x0), batch_size)]
    mean = torch.cat([p.mean() for p in parts]) + center
    variance = torch.cat([p.variance() for p in parts]) / rows.shape[1]
    return {"mean": mean, "variance": variance}
