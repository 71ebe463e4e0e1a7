"""Networks (the `MODELS` registry); `nets.denoiser.Denoiser` turns any of them into an x0-denoiser.

Networks take ``(x, c_noise)`` with x in the dataset's shape and c_noise of shape (B,), and return a
tensor of x's shape.  The noise level enters through a Fourier embedding of c_noise (never an integer
timestep), so one network serves every process.  `Denoiser` feeds the network ``c_in(sigma) x_t / alpha_t``
and ``c_noise(sigma)`` and reads its output as the objective's target; all conversions come from
`lossfloor.objective`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from lossfloor.core.errors import InputError
from lossfloor.core.registry import Registry

# --------------------------------------------------------------------------------------------
# Noise-level embedding.
# --------------------------------------------------------------------------------------------


class FourierEmbedding(nn.Module):
    """sin/cos of c_noise at geometric frequencies, plus c_noise itself."""

    def __init__(self, dim: int, min_freq: float = 0.25, max_freq: float = 32.0):
        super().__init__()
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), (dim - 1) // 2))
        self.register_buffer("freqs", freqs)
        self.dim = 2 * len(freqs) + 1

    def forward(self, c_noise: Tensor) -> Tensor:
        arg = c_noise[:, None] * self.freqs[None, :]
        return torch.cat([c_noise[:, None], arg.sin(), arg.cos()], 1)


class NoiseConditioning(nn.Module):
    """Fourier embedding of c_noise followed by a two-layer MLP."""

    def __init__(self, embed: int, width: int):
        super().__init__()
        self.fourier = FourierEmbedding(embed)
        self.mlp = nn.Sequential(nn.Linear(self.fourier.dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, c_noise: Tensor) -> Tensor:
        return self.mlp(self.fourier(c_noise))


# --------------------------------------------------------------------------------------------
# MLP for low-dimensional data.
# --------------------------------------------------------------------------------------------


class MLPBlock(nn.Module):
    """Pre-norm residual block with the noise embedding added to the hidden layer."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.emb = nn.Linear(width, 2 * width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = torch.nn.functional.silu(self.fc1(self.norm(h)) + self.emb(emb))
        return h + self.fc2(z)


class MLP(nn.Module):
    """Residual MLP on flattened data, conditioned on c_noise."""

    def __init__(self, shape, width: int = 256, depth: int = 3, embed: int = 33):
        super().__init__()
        self.shape = tuple(shape)
        dim = math.prod(self.shape)
        self.cond = NoiseConditioning(embed, width)
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(MLPBlock(width) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        emb = torch.nn.functional.silu(self.cond(c_noise))
        h = self.inp(x.reshape(len(x), -1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).reshape(x.shape)


class ReluMLP(nn.Module):
    """Plain ReLU MLP on [x, c_noise] (the loss-comparison study's 7 x 512 network, Kumar et al. 2025)."""

    def __init__(self, shape, width: int = 512, depth: int = 7):
        super().__init__()
        self.shape = tuple(shape)
        dim = math.prod(self.shape)
        layers, fan_in = [], dim + 1
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        return self.net(torch.cat([x.reshape(len(x), -1), c_noise[:, None]], 1)).reshape(x.shape)


# --------------------------------------------------------------------------------------------
# Small UNet for images.
# --------------------------------------------------------------------------------------------


def _groups(channels: int) -> int:
    return math.gcd(8, channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with a per-channel scale and shift from the noise embedding."""

    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.emb = nn.Linear(emb, 2 * c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(torch.nn.functional.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, 1)
        h = torch.nn.functional.silu(self.norm2(h) * (1 + scale) + shift)
        return self.skip(x) + self.conv2(h)


class UNet(nn.Module):
    """A small UNet: one ResBlock per resolution, stride-2 downsampling, skip concatenation."""

    def __init__(self, shape, channels: int = 32, mults=(1, 2, 2), embed: int = 33):
        super().__init__()
        self.shape = tuple(shape)
        image = self.shape if len(self.shape) == 3 else (1, *self.shape)
        if len(image) != 3:
            raise InputError(f"the UNet needs images of shape (C, H, W) or (H, W), got {self.shape}")
        self.image = image
        widths = [channels * m for m in mults]
        emb = 4 * channels
        self.cond = NoiseConditioning(embed, emb)
        self.inp = nn.Conv2d(image[0], widths[0], 3, padding=1)
        below = [widths[0]] + widths[:-1]  # channels entering each level on the way down
        self.down = nn.ModuleList(ResBlock(c, w, emb) for c, w in zip(below, widths, strict=True))
        self.pool = nn.ModuleList(nn.Conv2d(w, w, 3, stride=2, padding=1) for w in widths[:-1])
        self.mid = ResBlock(widths[-1], widths[-1], emb)
        above = widths[1:] + [widths[-1]]  # channels arriving from the coarser level on the way up
        self.up = nn.ModuleList(ResBlock(c + w, w, emb) for c, w in zip(above, widths, strict=True))
        self.out = nn.Sequential(nn.GroupNorm(_groups(widths[0]), widths[0]), nn.SiLU(),
                                 nn.Conv2d(widths[0], image[0], 3, padding=1))

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        emb = torch.nn.functional.silu(self.cond(c_noise))
        h = self.inp(x.reshape(len(x), *self.image))
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)
        h = self.mid(h, emb)
        for i in reversed(range(len(self.up))):
            skip = skips[i]
            if h.shape[-2:] != skip.shape[-2:]:  # odd sizes (7 -> 4) are cropped back
                h = torch.nn.functional.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = self.up[i](torch.cat([h, skip], 1), emb)
        return self.out(h).reshape(x.shape)


# --------------------------------------------------------------------------------------------
# The registry of networks and their configuration.
# --------------------------------------------------------------------------------------------


def _mlp(config: ModelConfig) -> nn.Module:
    return MLP(config.shape, width=config.width or 256, depth=config.depth or 3)


def _unet(config: ModelConfig) -> nn.Module:
    return UNet(config.shape, channels=config.width or 32)


def _relu_mlp(config: ModelConfig) -> nn.Module:
    return ReluMLP(config.shape, width=config.width or 512, depth=config.depth or 7)


MODELS = Registry("model")
"""Network name -> build(config: ModelConfig) (the CLI's --model choices); each takes (x, c_noise)."""
MODELS.add("mlp", _mlp, "residual MLP on flattened data (width 256, 3 blocks)")
MODELS.add("unet", _unet, "small UNet for images (32 base channels)")
MODELS.add("relu-mlp", _relu_mlp, "plain ReLU MLP on [x, c_noise] (width 512, 7 layers; the loss study's)")


@dataclass(frozen=True)
class ModelConfig:
    """Which network, for which data shape, at which width (stored in checkpoints)."""

    kind: str
    shape: tuple
    width: int | None = None  # hidden width (mlp, relu-mlp) or base channels (unet); None = the default
    depth: int | None = None  # residual blocks (mlp) or hidden layers (relu-mlp)

    def __post_init__(self):
        MODELS.require(self.kind)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        for name in ("width", "depth"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"model {name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape)}


def build_model(config: ModelConfig) -> nn.Module:
    """The network described by `config` (its `MODELS` entry)."""
    return MODELS[config.kind](config)


def parameter_count(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)
