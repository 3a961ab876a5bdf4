"""SRResNet generator and SRGAN discriminator (Ledig et al., CVPR 2017, Fig. 4).

Value ranges (docs/design.md): the generator takes ``lq`` in [0, 1] and returns ``sr`` in [-1, 1]
(linear output, no tanh: the MSE phase is computed in that range). The discriminator takes images in
[-1, 1] and returns one logit per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from srgan.core.degrade import bicubic_upscale
from srgan.core.ranges import unit_to_signed

__all__ = [
    "GeneratorConfig",
    "DiscriminatorConfig",
    "SRResNet",
    "Discriminator",
    "build_generator",
    "build_discriminator",
    "count_parameters",
]


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything needed to rebuild a generator (stored in every checkpoint)."""

    scale: int = 4
    num_blocks: int = 16
    num_features: int = 64
    # Opt-in, NOT in the paper: sr = net(lq) + bicubic(lq). Lets a short CPU demo beat bicubic.
    bicubic_skip: bool = False

    def __post_init__(self) -> None:
        if self.scale not in (2, 4, 8):
            raise ValueError(f"scale must be 2, 4 or 8 (x2 sub-pixel stages), got {self.scale}")
        if self.num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
        if self.num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {self.num_features}")


@dataclass(frozen=True)
class DiscriminatorConfig:
    base_features: int = 64  # width of the first conv; doubles every two convs (64 -> 512 in the paper)
    dense_features: int = 1024

    def __post_init__(self) -> None:
        if self.base_features < 1 or self.dense_features < 1:
            raise ValueError(f"base_features and dense_features must be >= 1, got {self.base_features}, {self.dense_features}")


class ResidualBlock(nn.Module):
    """conv3x3-BN-PReLU-conv3x3-BN, plus the identity."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(features, features, 3, padding=1),
            nn.BatchNorm2d(features),
            nn.PReLU(),
            nn.Conv2d(features, features, 3, padding=1),
            nn.BatchNorm2d(features),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class UpsampleBlock(nn.Module):
    """x2 sub-pixel convolution: conv (F -> 4F), PixelShuffle(2), PReLU."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(features, features * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.act = nn.PReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.shuffle(self.conv(x)))


class SRResNet(nn.Module):
    """The SRGAN generator. ``lq`` (N, 3, h, w) in [0, 1] -> ``sr`` (N, 3, h*scale, w*scale) in [-1, 1]."""

    def __init__(self, *, scale: int = 4, num_blocks: int = 16, num_features: int = 64, bicubic_skip: bool = False) -> None:
        super().__init__()
        self.config = GeneratorConfig(scale=scale, num_blocks=num_blocks, num_features=num_features, bicubic_skip=bicubic_skip)
        f = num_features
        self.head = nn.Sequential(nn.Conv2d(3, f, 9, padding=4), nn.PReLU())
        self.body = nn.Sequential(*[ResidualBlock(f) for _ in range(num_blocks)])
        self.body_tail = nn.Sequential(nn.Conv2d(f, f, 3, padding=1), nn.BatchNorm2d(f))
        self.upsample = nn.Sequential(*[UpsampleBlock(f) for _ in range(int(math.log2(scale)))])
        self.tail = nn.Conv2d(f, 3, 9, padding=4)

    def forward(self, lq: Tensor) -> Tensor:
        feat = self.head(lq)  # (N, F, h, w)
        feat = feat + self.body_tail(self.body(feat))  # long skip over the residual trunk
        sr = self.tail(self.upsample(feat))  # (N, 3, h*s, w*s)
        if self.config.bicubic_skip:
            sr = sr + unit_to_signed(bicubic_upscale(lq, self.config.scale))
        return sr

    @property
    def receptive_radius(self) -> int:
        """How many LR pixels of context one output pixel depends on (each side), rounded up.

        9x9 head (4) + two 3x3 per block + the trunk's last 3x3 (1) + each x2 stage's 3x3 at its own
        resolution (1/2^i) + the 9x9 tail at full resolution (4/scale) + the bicubic skip's 2.
        Tiles padded by this much are bit-for-bit independent of their neighbours (up to fp rounding).
        """
        cfg = self.config
        stages = int(math.log2(cfg.scale))
        r = 4 + 2 * cfg.num_blocks + 1 + sum(1 / 2**i for i in range(stages)) + 4 / cfg.scale
        r = max(r, 2.0) if cfg.bicubic_skip else r
        return math.ceil(r)


class Discriminator(nn.Module):
    """The SRGAN discriminator: image (N, 3, H, W) in [-1, 1] -> logit (N,).

    Eight 3x3 convs (64, 64/2, 128, 128/2, 256, 256/2, 512, 512/2; "/2" = stride 2), LeakyReLU 0.2,
    BN after all but the first, dense 1024, LeakyReLU, dense 1.

    Crop sizes: at the paper's 96x96 the conv stack ends at 6x6x512, which the dense layer expects.
    An adaptive average pool to 6x6 sits before the dense layer: at 96 it is the identity (exactly the
    paper's network), at other sizes (>= 16, e.g. 128 -> 8x8) it averages the feature map onto the same
    6x6 grid, so one set of weights works for any crop size.
    """

    grid = 6

    def __init__(self, *, base_features: int = 64, dense_features: int = 1024) -> None:
        super().__init__()
        self.config = DiscriminatorConfig(base_features=base_features, dense_features=dense_features)
        layers: list[nn.Module] = []
        in_ch = 3
        for i in range(8):
            out_ch = base_features * 2 ** (i // 2)
            stride = 2 if i % 2 == 1 else 1
            layers.append(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1))
            if i > 0:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(self.grid)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_ch * self.grid * self.grid, dense_features),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(dense_features, 1),
        )

    def forward(self, img: Tensor) -> Tensor:
        if min(img.shape[-2:]) < 16:
            raise ValueError(f"discriminator input must be at least 16x16, got {tuple(img.shape[-2:])}")
        feat = self.pool(self.features(img))  # (N, 512, 6, 6)
        return self.classifier(feat).squeeze(1)  # (N,)


def build_generator(config: GeneratorConfig) -> SRResNet:
    """Build an SRResNet from its config (fresh weights)."""
    return SRResNet(
        scale=config.scale,
        num_blocks=config.num_blocks,
        num_features=config.num_features,
        bicubic_skip=config.bicubic_skip,
    )


def build_discriminator(config: DiscriminatorConfig | None = None) -> Discriminator:
    config = config or DiscriminatorConfig()
    return Discriminator(base_features=config.base_features, dense_features=config.dense_features)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

