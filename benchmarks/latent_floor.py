r"""The floor of a latent model: the same latents taken as points (means only) against the Gaussian mixture.

A tiny diffusers AutoencoderKL (1 -> 4 channels, 8x8 digits -> 4x4x4 latents) is trained briefly on the
digits train split (seeded: pixel MSE + KL_WEIGHT * KL per latent dimension, Adam), saved with
save_pretrained and run through `lossfloor encode --normalise` (EDM2's per-channel normalisation to std
0.5, the units EDM2 trains in).  Then on one sigma grid (EDM's range) with the same seeds:

- ``points``: J*(sigma) of the N encoder means as N points (a deterministic latent .npy, what a tool
  that ignores latent_dist computes), and
- ``mixture``: J*(sigma) of the N Gaussians N(mean_n, diag std_n^2) that EDM2-style trainers sample from
  (`floor.mixture`),

and each curve's total under the EDM and EDM2 objectives, with 95% intervals (1.96 standard
uncertainties: Monte-Carlo, interpolation and below-grid errors combined, `floor.totals.TotalLoss`).

    flock /tmp/lossfloor-heavy.lock env OMP_NUM_THREADS=1 \
        python benchmarks/latent_floor.py --out results/latents
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lossfloor.app.encode import EncodeSettings, prepare_encode, run_encode
from lossfloor.core.files import atomic_write_text
from lossfloor.data.load import load_dataset
from lossfloor.floor.config import EstimatorConfig
from lossfloor.floor.estimator import Estimator
from lossfloor.objective.objective import get_objective

Z95 = 1.96
KL_WEIGHT = 1e-3
OBJECTIVES = ("edm", "edm2")
TABLE_SIGMAS = (0.002, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, 80.0)


def train_vae(folder: Path, steps: int, seed: int) -> dict:
    """A tiny AutoencoderKL trained on digits for `steps` Adam steps; saved to `folder`."""
    import diffusers

    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, latent_channels=4,
                                  block_out_channels=(32, 64),
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1,
                                  norm_num_groups=16, sample_size=8)
    x = load_dataset("digits").x
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    start, losses = time.perf_counter(), []
    for _ in range(steps):
        batch = x[torch.randint(len(x), (64,), generator=gen)]
        dist = vae.encode(batch).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        kl = 0.5 * (dist.mean.pow(2) + dist.var - 1 - dist.logvar).mean()
        loss = (recon - batch).pow(2).mean() + KL_WEIGHT * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append((float((recon - batch).pow(2).mean().detach()), float(kl.detach())))
    vae.eval().save_pretrained(folder)
    mse, kl = np.mean(losses[-20:], axis=0)
    return {"steps": steps, "kl_weight": KL_WEIGHT, "final_mse": float(mse), "final_kl_per_dim": float(kl),
            "seconds": time.perf_counter() - start}


def curves(ds, sigmas, queries: int, seed: int):
    """(points curve, mixture curve) on the same grid and seeds."""
    config = EstimatorConfig(queries=queries)
    points = Estimator(ds.rows(), config).curve(sigmas, seed=seed)
    mixture = Estimator(ds.rows(), config, std=ds.std_rows()).curve(sigmas, seed=seed)
    return points, mixture


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/latents")
    parser.add_argument("--work", default="out/latents-work", help="where the VAE and the latents go")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--levels", type=int, default=32)
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    vae_info = train_vae(work / "vae", args.vae_steps, args.seed)
    latents = work / "latents.npz"
    run = prepare_encode(EncodeSettings(vae=str(work / "vae"), data="digits", out=str(latents),
                                        normalise=True, force=True))
    run_encode(run, progress=False)
    ds = load_dataset(str(latents))
    sigmas = np.unique(np.concatenate([np.geomspace(0.002, 80, args.levels), TABLE_SIGMAS]))
    t1 = time.perf_counter()
    points, mixture = curves(ds, sigmas, args.queries, args.seed)
    seconds = time.perf_counter() - t1
    mean_var = float(ds.rows().double().var(0, unbiased=False).mean())
    s2 = float(ds.std_rows().double().pow(2).mean())
    rows = []
    for s in TABLE_SIGMAS:
        i = int(np.argmin(np.abs(sigmas - s)))
        rows.append({"sigma": s, "points": points.loss[i], "points_se": points.stderr[i],
                     "mixture": mixture.loss[i], "mixture_se": mixture.stderr[i],
                     "difference": mixture.loss[i] - points.loss[i],
                     "difference_se": float(np.hypot(points.stderr[i], mixture.stderr[i]))})
    totals = {}
    for name in OBJECTIVES:
        obj = get_objective(name)
        p, m = points.total(obj, warn=False), mixture.total(obj, warn=False)
        totals[name] = {"points": p.value, "points_se": p.stderr, "mixture": m.value, "mixture_se": m.stderr,
                        "ratio": m.value / p.value}
    result = {"command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
              "vae": vae_info, "n": len(ds), "shape": list(ds.shape), "dim": int(np.prod(ds.shape)),
              "variance_of_means": mean_var, "mean_std_squared": s2, "queries": args.queries,
              "levels": len(sigmas), "seed": args.seed, "floor_seconds": seconds,
              "total_seconds": time.perf_counter() - t0, "torch": torch.__version__,
              "platform": platform.platform(), "levels_table": rows, "totals": totals,
              "points_curve": points.to_dict(), "mixture_curve": mixture.to_dict()}
    write(out, result)
    return result


def write(out: Path, r: dict) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(r["levels_table"][0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(r["levels_table"])
    for name, t in r["totals"].items():
        buf.write(f"total {name},{t['points']},{t['points_se']},{t['mixture']},{t['mixture_se']},"
                  f"{t['mixture'] - t['points']},{np.hypot(t['points_se'], t['mixture_se'])}\n")
    atomic_write_text(out / "latents.csv", buf.getvalue())
    atomic_write_text(out / "latents.json", json.dumps(r, indent=1))
    ci = lambda v, se: f"{v:.4g} ± {Z95 * se:.2g}"  # noqa: E731
    v = r["vae"]
    lines = [
        "# The floor of a latent model: means as points vs the Gaussian mixture", "",
        f"Digits train (N = {r['n']}) encoded by a tiny AutoencoderKL trained {v['steps']} steps (pixel MSE "
        f"{v['final_mse']:.3g}, KL {v['final_kl_per_dim']:.3g} per latent dim, weight {v['kl_weight']:g}), "
        f"latents {tuple(r['shape'])} (D = {r['dim']}) with EDM2's per-channel normalisation to std 0.5 "
        f"(`lossfloor encode --normalise`).  Variance of the means {r['variance_of_means']:.4g}, mean std^2 "
        f"{r['mean_std_squared']:.4g} per dimension.  Full estimator, {r['queries']} queries per level, "
        f"{r['levels']} levels in [0.002, 80], seed {r['seed']}; intervals are 95% (1.96 standard "
        f"uncertainties).  Floors: {r['floor_seconds']:.0f} s; all: {r['total_seconds']:.0f} s.", "",
        "| objective | total floor, means as points | total floor, mixture | mixture / points |",
        "|---|---|---|---|",
        *[f"| {k} | {ci(t['points'], t['points_se'])} | {ci(t['mixture'], t['mixture_se'])} | "
          f"{t['ratio']:.3g} |" for k, t in r["totals"].items()], "",
        "| sigma | J* means as points | J* mixture | mixture - points |", "|---|---|---|---|",
        *[f"| {x['sigma']:g} | {ci(x['points'], x['points_se'])} | {ci(x['mixture'], x['mixture_se'])} | "
          f"{ci(x['difference'], x['difference_se'])} |" for x in r["levels_table"]], "",
        f"Reproduce: `{r['command']}`", ""]
    atomic_write_text(out / "latents.md", "\n".join(lines))


if __name__ == "__main__":
    res = main()
    for name, t in res["totals"].items():
        print(f"{name}: points {t['points']:.4g} ± {Z95 * t['points_se']:.2g}, mixture {t['mixture']:.4g} ± "
              f"{Z95 * t['mixture_se']:.2g}")
