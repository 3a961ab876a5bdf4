"""SRGAN losses: pixel MSE, VGG19 content loss, non-saturating adversarial loss, total variation.

All image inputs are ``sr``/``gt`` in [-1, 1] (docs/design.md). Loss weights live in
:class:`LossConfig`, next to the losses they scale.

VGG19 weights are never replaced by random weights silently. :func:`load_vgg19_state_dict` reads
``"imagenet"`` (the default: torchvision's ``VGG19_Weights.IMAGENET1K_V1``) from torchvision's cache
(``$TORCH_HOME/hub/checkpoints``), or an explicit local path; ``"random"`` must be asked for by name
(tests do). The core reads local files only: filling the cache (a download once per node, as
torchvision's loader does it) and fetching remote URIs is :mod:`srgan.io.weights` and
:func:`srgan.io.storage.fetch_weights_file`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from srgan.core.ranges import signed_to_unit
from srgan.errors import VGGWeightsNotFoundError

__all__ = [
    "LossConfig",
    "VGG19_IMAGENET_URL",
    "IMAGENET",
    "VGG_LAYERS",
    "VGGWeightsNotFoundError",
    "vgg19_cache_path",
    "is_imagenet",
    "check_vgg19_weights",
    "load_vgg19_state_dict",
    "VGGContentLoss",
    "build_content_loss",
    "pixel_loss",
    "generator_adversarial_loss",
    "discriminator_loss",
    "tv_loss",
    "perceptual_loss",
]

log = logging.getLogger(__name__)

# Index of the ReLU output in torchvision's ``vgg19().features`` for each named layer.
# VGG22 = relu2_2 (after the 2nd conv of block 2), VGG54 = relu5_4 (after the 4th conv of block 5,
# before the 5th max-pool), as defined in the paper.
VGG_LAYERS = {"relu2_2": 8, "relu5_4": 35}
VGG_ALIASES = {"vgg22": "relu2_2", "vgg54": "relu5_4"}
# The paper rescales VGG features by 1/12.75 so the content loss is on a scale comparable to MSE.
VGG_FEATURE_SCALE = 1.0 / 12.75
# The weights spec that means torchvision's VGG19_Weights.IMAGENET1K_V1 (None means the same: configs
# written before the name existed).
IMAGENET = "imagenet"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LossConfig:
    """Loss weights, each next to its loss. Paper SRGAN: content 1.0 on relu5_4 + adversarial 1e-3."""

    pixel_weight: float = 1.0  # pixel MSE on [-1, 1]; used by the SRResNet phase only
    content_weight: float = 1.0  # VGG content loss (the SRGAN phase)
    content_layer: str = "relu5_4"  # relu5_4 (VGG54) or relu2_2 (VGG22)
    adversarial_weight: float = 1e-3  # non-saturating -log D(G(lq))
    tv_weight: float = 0.0  # optional total variation, off in the paper
    vgg_weights: str | None = IMAGENET  # VGG19 state dict: "imagenet" (torchvision's; None too), a path/URI, or "random"

    def __post_init__(self) -> None:
        layer = VGG_ALIASES.get(self.content_layer.lower(), self.content_layer.lower())
        if layer not in VGG_LAYERS:
            raise ValueError(f"content_layer must be one of {sorted(VGG_LAYERS) + sorted(VGG_ALIASES)}, got {self.content_layer!r}")
        object.__setattr__(self, "content_layer", layer)
        for name in ("pixel_weight", "content_weight", "adversarial_weight", "tv_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


# torchvision's ``VGG19_Weights.IMAGENET1K_V1.url`` (tests/test_losses.py holds them equal), written out
# so that the training path never imports torchvision.models: that import alone costs about 2 s of CPU
# in every process that builds the engine (the driver, Ray Train's controller and each worker).
VGG19_IMAGENET_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"


def vgg19_cache_path() -> Path:
    """Where torchvision caches its VGG19 ImageNet weights: ``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``."""
    filename = os.path.basename(VGG19_IMAGENET_URL)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def is_imagenet(source: str | os.PathLike | None) -> bool:
    """Whether a weights spec means torchvision's ImageNet weights (``"imagenet"``, or ``None``)."""
    return source is None or str(source) == IMAGENET


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def _cache_missing_message(path: Path) -> str:
    return (
        f"VGG19 ImageNet weights not found in torchvision's cache ({path}). Either copy "
        f"'{path.name}' (from {VGG19_IMAGENET_URL}) into {path.parent} (set TORCH_HOME "
        "to use another cache root), or pass an explicit file path or URI (--vgg-weights PATH|URI)."
    )


def check_vgg19_weights(source: str | os.PathLike | None = None) -> str:
    """Check, without loading them, that the VGG19 weights ``source`` names can be found locally; returns
    a one-line description. ``"imagenet"``/``None`` must already be in torchvision's cache (this never
    downloads: :func:`srgan.io.weights.check_vgg19_weights` does). Remote URIs are checked when fetched.
    ``"random"`` logs a loud warning.

    Raises:
        VGGWeightsNotFoundError: with the message that says how to supply the weights.
    """
    if source is not None and str(source) == "random":
        log.warning("VGG19 weights: RANDOM initialisation requested; the content loss is NOT perceptual")
        return "random (NOT perceptual: for tests only)"
    if is_imagenet(source):
        path = vgg19_cache_path()
        if not path.is_file():
            raise VGGWeightsNotFoundError(_cache_missing_message(path))
        return str(path)
    text = str(source)
    if "://" not in text or text.startswith("file://"):
        path = Path(text.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise VGGWeightsNotFoundError(
                f"VGG19 weights not found at {source}. Pass the path or URI of a torchvision vgg19 state dict "
                f"(--vgg-weights PATH|URI), or put '{vgg19_cache_path().name}' in torchvision's cache ({vgg19_cache_path().parent})."
            )
    return text


def load_vgg19_state_dict(source: str | os.PathLike | None = None) -> dict[str, Tensor] | None:
    """Load VGG19 ImageNet weights as a torchvision ``vgg19()`` state dict.

    Args:
        source: ``"imagenet"`` or ``None`` -> torchvision's cache (``TORCH_HOME``; filled by
            :func:`srgan.io.storage.fetch_weights_file`, never here); a local file path (or
            ``file://``) of a state dict (``.pth`` or ``.safetensors``; remote URIs are fetched first
            by :func:`srgan.io.storage.fetch_weights_file`); or ``"random"`` -> returns ``None``
            (random initialisation, for tests), with a warning.

    Raises:
        VGGWeightsNotFoundError: nothing found; the message names both ways to supply the weights.
    """
    located = check_vgg19_weights(source)
    if source is not None and str(source) == "random":
        return None
    if is_imagenet(source):
        return _read_state_dict(Path(located))

    text = str(source)
    if "://" in text and not text.startswith("file://"):
        raise VGGWeightsNotFoundError(f"{text} is remote: fetch it first (srgan.io.storage.fetch_weights_file)")
    path = Path(text.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise VGGWeightsNotFoundError(f"VGG19 weights not found at {source}: not a file")
    return _read_state_dict(Path(path))


# torchvision's VGG19 ("config E") conv stack: numbers are conv widths, "M" is a 2x2 max-pool.
_VGG19_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _vgg19_features(num_layers: int) -> nn.Sequential:
    """The first ``num_layers`` modules of torchvision's ``vgg19().features`` (same indices and key names).

    Built directly so the 120M-parameter classifier is never allocated.
    """
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _VGG19_PLAN:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = item
        if len(layers) >= num_layers:
            break
    return nn.Sequential(*layers[:num_layers])


def _load_features(features: nn.Sequential, state_dict: dict[str, Tensor]) -> None:
    """Load the ``features.*`` entries of a torchvision vgg19 state dict that ``features`` needs."""
    wanted = {k: v for k, v in state_dict.items() if k.startswith("features.")}
    local = {k[len("features.") :]: v for k, v in wanted.items() if k[len("features.") :] in features.state_dict()}
    missing = sorted(set(features.state_dict()) - set(local))
    if missing:
        raise ValueError(f"VGG19 state dict lacks {len(missing)} needed entries (e.g. features.{missing[0]}); is it a torchvision vgg19 state dict?")
    features.load_state_dict(local)


class VGGContentLoss(nn.Module):
    """MSE between VGG19 feature maps of ``sr`` and ``gt`` (both [-1, 1]), features scaled by 1/12.75.

    The truncated VGG is frozen and always in eval mode (``.train()`` does not change it).
    """

    def __init__(self, *, layer: str = "relu5_4", state_dict: dict[str, Tensor] | None) -> None:
        super().__init__()
        layer = VGG_ALIASES.get(layer.lower(), layer.lower())
        if layer not in VGG_LAYERS:
            raise ValueError(f"unknown VGG layer {layer!r}; choose from {sorted(VGG_LAYERS)}")
        self.layer = layer
        self.features = _vgg19_features(VGG_LAYERS[layer] + 1)
        if state_dict is not None:
            _load_features(self.features, state_dict)
        self.features.requires_grad_(False)
        self.features.eval()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGContentLoss:  # noqa: D102 - the VGG never leaves eval mode
        super().train(mode)
        self.features.eval()
        return self

    def extract(self, img: Tensor) -> Tensor:
        """[-1, 1] image (N, 3, H, W) -> scaled VGG features (N, C_l, H_l, W_l)."""
        x = (signed_to_unit(img) - self.mean) / self.std
        return self.features(x) * VGG_FEATURE_SCALE

    def forward(self, sr: Tensor, gt: Tensor) -> Tensor:
        with torch.no_grad():
            target = self.extract(gt)
        return F.mse_loss(self.extract(sr), target)


def build_content_loss(config: LossConfig, *, vgg_weights: str | os.PathLike | None = None) -> VGGContentLoss:
    """The VGG content loss for ``config.content_layer`` with weights from :func:`load_vgg19_state_dict`."""
    return VGGContentLoss(layer=config.content_layer, state_dict=load_vgg19_state_dict(vgg_weights))


def pixel_loss(sr: Tensor, gt: Tensor) -> Tensor:
    """Pixel-wise MSE on the [-1, 1] range."""
    return F.mse_loss(sr, gt)


def generator_adversarial_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating GAN loss for G, ``-log D(G(lq))``, from logits (stable: softplus form)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """``-log D(gt) - log(1 - D(G(lq)))``, from logits."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def tv_loss(img: Tensor) -> Tensor:
    """Anisotropic total variation (mean absolute difference of neighbours)."""
    dh = (img[..., 1:, :] - img[..., :-1, :]).abs().mean()
    dw = (img[..., :, 1:] - img[..., :, :-1]).abs().mean()
    return dh + dw


def perceptual_loss(
    sr: Tensor,
    gt: Tensor,
    fake_logits: Tensor,
    *,
    content_loss: VGGContentLoss,
    config: LossConfig,
) -> dict[str, Tensor]:
    """The SRGAN generator objective: content + 1e-3 x adversarial (+ optional TV).

    Returns the weighted ``total`` and each unweighted term (for logging).
    """
    terms = {
        "content": content_loss(sr, gt),
        "adversarial": generator_adversarial_loss(fake_logits),
    }
    total = config.content_weight * terms["content"] + config.adversarial_weight * terms["adversarial"]
    if config.tv_weight > 0:
        terms["tv"] = tv_loss(sr)
        total = total + config.tv_weight * terms["tv"]
    terms["total"] = total
    return terms
