"""Train a tiny diffusers UNet2DModel on the 8x8 digits the way diffusers' train_unconditional.py does, with
lossfloor's GapMonitor watching the gap to the optimal loss, and save it with save_pretrained.

    python examples/diffusers_digits.py --prediction-type epsilon --steps 1500 --out out/diffusers-eps
    lossfloor diagnose --diffusers out/diffusers-eps --data digits --out out/diffusers-eps/diagnosis

The loop is train_unconditional.py's: ``noise_scheduler.add_noise``, the epsilon or v_prediction target
(``get_velocity``), plain MSE or Min-SNR-gamma weighting (``--snr-gamma``, as diffusers' scripts compute
it with ``compute_snr``).  The monitor gets the *unweighted* per-sample loss on the scheduler's own target
and the integer timesteps; the objective mapped from the scheduler converts both to x0 terms.  Seeded:
the same command writes the same weights.  Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import diffusers
import torch
from diffusers.training_utils import compute_snr

from lossfloor.integrations.diffusers import objective_from_scheduler
from lossfloor.train import GapMonitor


def build_unet(shape, channels=(16, 32)) -> torch.nn.Module:
    """A tiny two-level UNet2DModel for images of `shape` (C, H, W)."""
    return diffusers.UNet2DModel(
        sample_size=tuple(shape[1:]), in_channels=shape[0], out_channels=shape[0],
        block_out_channels=tuple(channels), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D",) * len(channels), up_block_types=("UpBlock2D",) * len(channels))


def build_scheduler(prediction_type: str = "epsilon", **config):
    """diffusers' DDPMScheduler as train_unconditional.py builds it (1000 linear-beta steps)."""
    return diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                   prediction_type=prediction_type, **config)


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights on the target's MSE as diffusers' scripts compute them."""
    snr = compute_snr(scheduler, timesteps)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return clipped / (snr + 1) if scheduler.config.prediction_type == "v_prediction" else clipped / snr


def train(model, scheduler, data: torch.Tensor, *, steps: int, batch_size: int = 64, lr: float = 2e-3,
          seed: int = 0, snr_gamma: float | None = None, monitor: GapMonitor | None = None,
          on_step=None) -> list[float]:
    """train_unconditional.py's loop on `data` (N, C, H, W) in [-1, 1]; returns the per-step losses."""
    objective = objective_from_scheduler(scheduler)
    steps_total = scheduler.config.num_train_timesteps
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-6)
    model.train()
    losses = []
    for step in range(steps):
        clean_images = data[torch.randint(0, len(data), (batch_size,), generator=generator)]
        noise = torch.randn(clean_images.shape, generator=generator)
        timesteps = torch.randint(0, steps_total, (batch_size,), generator=generator)
        noisy_images = scheduler.add_noise(clean_images, noise, timesteps)
        model_output = model(noisy_images, timesteps).sample
        if scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = scheduler.get_velocity(clean_images, noise, timesteps)
        per_sample = torch.nn.functional.mse_loss(model_output, target, reduction="none").mean(dim=(1, 2, 3))
        weights = 1.0 if snr_gamma is None else min_snr_weights(scheduler, timesteps, snr_gamma)
        loss = (per_sample * weights).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if monitor is not None:  # diffusers timestep k is lossfloor time (k + 1) / T
            monitor.update_from_target((timesteps + 1).double() / steps_total, per_sample.detach())
        if on_step is not None:
            on_step(step, objective)
    model.eval()
    return losses


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction"])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--snr-gamma", type=float, default=None, help="Min-SNR-gamma weighting (e.g. 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--monitor-every", type=int, default=500, help="steps per GapMonitor interval")
    parser.add_argument("--out", type=Path, required=True, help="save_pretrained pipeline folder")
    args = parser.parse_args(argv)

    from tqdm.auto import tqdm

    from lossfloor.data.load import load_dataset
    from lossfloor.floor.config import EstimatorConfig
    from lossfloor.floor.estimator import Estimator

    torch.set_num_threads(1)  # a 100k-parameter model is fastest on one thread, and the machine is shared
    torch.manual_seed(args.seed)
    data = load_dataset("digits")
    model, scheduler = build_unet(data.shape), build_scheduler(args.prediction_type)
    objective = objective_from_scheduler(scheduler)
    floor = Estimator(data.x, EstimatorConfig(queries=256)).curve(
        torch.logspace(-2, math.log10(200), 24).tolist(), seed=args.seed)
    monitor = GapMonitor(floor, objective)
    intervals = []
    with tqdm(total=args.steps, desc=f"train {args.prediction_type}") as bar:
        def on_step(step, _):
            bar.update(1)
            if (step + 1) % args.monitor_every == 0:
                intervals.append({"step": step + 1, **monitor.summary()})
                monitor.reset()

        losses = train(model, scheduler, data.x, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       seed=args.seed, snr_gamma=args.snr_gamma, monitor=monitor, on_step=on_step)
    args.out.mkdir(parents=True, exist_ok=True)
    diffusers.DDPMPipeline(unet=model, scheduler=scheduler).save_pretrained(args.out)
    (args.out / "gap_monitor.json").write_text(json.dumps(intervals, indent=1))
    last = intervals[-1] if intervals else monitor.summary()
    nan = float("nan")
    print(f"final loss {sum(losses[-100:]) / min(100, len(losses)):.4f}; GapMonitor over the last interval: "
          f"{objective.target} loss {last.get('weighted_loss', nan):.4f}, floor "
          f"{last.get('weighted_optimal', nan):.4f}, gap {last.get('weighted_gap', nan):.4f} "
          f"(objective {objective.name}); wrote {args.out}")


if __name__ == "__main__":
    main()
