"""LPIPS (Zhang et al., CVPR 2018) through the ``lpips`` package, its backbone from torchvision's cache.

The package ships its small linear layers (``lpips/weights/v0.1/<net>.pth``). Its backbone is
torchvision's ImageNet AlexNet (``alex``, the default, as its authors recommend for a forward metric)
or VGG16 (``vgg``); left to itself, ``lpips`` downloads it through torchvision with no lock. Here the
backbone file comes from :func:`srgan.io.weights.ensure_cached` (the cache, else one download per
node) and is loaded into a randomly initialised ``lpips.LPIPS(pnet_rand=True)``, so the package
itself never touches the network.

Protocol (as PSNR/SSIM in :mod:`srgan.core.metrics`): 8-bit RGB images, ``crop_border`` pixels
removed from every side, scaled to [-1, 1]; lower is more similar. ``lpips`` is an optional extra
(``pip install -e ".[lpips]"``), imported only when LPIPS is asked for.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torchvision.models import AlexNet_Weights, VGG16_Weights

from srgan.errors import WeightsNotFoundError
from srgan.io.weights import ensure_cached

__all__ = ["LPIPS_BACKBONES", "LPIPSUnavailableError", "LPIPSMetric", "load_lpips"]

# lpips' name for each backbone -> torchvision's ImageNet weights it expects.
LPIPS_BACKBONES = {"alex": AlexNet_Weights.IMAGENET1K_V1, "vgg": VGG16_Weights.IMAGENET1K_V1}
_BACKBONE_NAMES = {"alex": "AlexNet", "vgg": "VGG16"}
_OTHER_FIX = "leave lpips out of --metrics"


class LPIPSUnavailableError(WeightsNotFoundError):
    """LPIPS cannot be measured here (backbone weights absent and not downloadable, or ``lpips`` not installed)."""


class LPIPSMetric:
    """LPIPS distance per image pair, shape (N,), for (N, 3, H, W) or (3, H, W) RGB in 0..255."""

    def __init__(self, model: nn.Module, *, net: str, device: torch.device) -> None:
        self.model = model.to(device).eval().requires_grad_(False)
        self.net = net
        self.device = device

    def _prepare(self, img255: Tensor, crop_border: int) -> Tensor:
        x = img255 if img255.ndim == 4 else img255.unsqueeze(0)
        if x.shape[-3] == 1:  # greyscale: treat as RGB with R = G = B, as the other metrics do
            x = x.expand(-1, 3, -1, -1)
        if crop_border > 0:
            x = x[..., crop_border:-crop_border, crop_border:-crop_border]
        return x.to(self.device, torch.float32) / 127.5 - 1.0  # lpips takes [-1, 1]

    def __call__(self, sr255: Tensor, gt255: Tensor, *, crop_border: int) -> Tensor:
        if sr255.shape != gt255.shape:
            raise ValueError(f"sr and gt must have the same shape, got {tuple(sr255.shape)} and {tuple(gt255.shape)}")
        with torch.no_grad():
            distance = self.model(self._prepare(sr255, crop_border), self._prepare(gt255, crop_border))
        return distance.flatten().double().cpu()


def _load_backbone(backbone: nn.Module, state_dict: dict[str, Tensor], *, source: str) -> None:
    """Load torchvision's ``features.*`` weights into lpips' backbone.

    lpips cuts torchvision's ``features`` into slices that keep each layer's index as its name
    (``slice2`` holds ``2``, ``3``, ``4``), so ``features.<i>.<param>`` is ``slice<k>.<i>.<param>``.
    """
    mapped = {}
    for slice_name, piece in backbone.named_children():
        for index, layer in piece.named_children():
            for param in layer.state_dict():
                key = f"features.{index}.{param}"
                if key not in state_dict:
                    raise LPIPSUnavailableError(f"{source} lacks {key}: it is not torchvision's state dict for this backbone (delete it to download again)")
                mapped[f"{slice_name}.{index}.{param}"] = state_dict[key]
    backbone.load_state_dict(mapped)


def load_lpips(*, net: str = "alex", device: str | torch.device = "cpu") -> LPIPSMetric:
    """LPIPS with ``net``'s ImageNet backbone from torchvision's cache (downloaded once per node if missing).

    Raises:
        LPIPSUnavailableError: the backbone weights are absent and cannot be downloaded, or ``lpips`` is
            not installed; one line that says how to make LPIPS available.
        ValueError: an unknown ``net``.
    """
    if net not in LPIPS_BACKBONES:
        raise ValueError(f"LPIPS backbone must be one of {sorted(LPIPS_BACKBONES)}, got {net!r}")
    try:
        import lpips
    except ImportError as exc:
        raise LPIPSUnavailableError(f"the lpips package is not installed ({exc}); install it with pip install -e '.[lpips]', or {_OTHER_FIX}") from exc
    path = ensure_cached(LPIPS_BACKBONES[net].url, what=f"LPIPS's {_BACKBONE_NAMES[net]} ImageNet weights", other_fix=_OTHER_FIX,
                         error=LPIPSUnavailableError)
    with warnings.catch_warnings():
        # pnet_rand=True makes lpips build torchvision's net with the deprecated pretrained=False, which warns.
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    _load_backbone(model.net, torch.load(path, map_location="cpu", weights_only=True), source=str(path))
    return LPIPSMetric(model, net=net, device=torch.device(device))
