"""PSNR and SSIM with the SR field's evaluation protocol, in torch (one implementation).

Protocol (Ledig et al. and most SR papers): images are compared as 8-bit values (0..255) on the Y
channel of YCbCr (ITU-R BT.601 as MATLAB's ``rgb2ycbcr``), with ``crop_border`` pixels (= the scale)
removed from every side. ``y_channel=False`` compares all RGB channels instead.

SSIM is Wang et al.'s Gaussian-window definition: 11x11 window, sigma 1.5, K1 = 0.01, K2 = 0.03,
data range 255, population (not sample) covariances, averaged over the "valid" region. This equals
scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255)``.

Inputs: (N, 3, H, W) or (3, H, W) tensors with values in 0..255 (uint8 or float). Results are float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rgb_to_y", "psnr", "ssim", "prepare_for_metric"]

# MATLAB rgb2ycbcr, for R, G, B in [0, 1]: Y = 16 + 65.481 R + 128.553 G + 24.966 B  (Y in 16..235)
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(rgb255: Tensor) -> Tensor:
    """(N, 3, H, W) RGB in 0..255 -> (N, 1, H, W) BT.601 luma Y in 16..235, float64, not rounded."""
    r, g, b = rgb255.to(torch.float64).unbind(dim=-3)
    y = 16.0 + (_Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b) / 255.0
    return y.unsqueeze(-3)


def prepare_for_metric(img255: Tensor, *, crop_border: int, y_channel: bool) -> Tensor:
    """Batch, convert to Y (or keep RGB) in float64, and crop ``crop_border`` pixels from each side."""
    x = img255 if img255.ndim == 4 else img255.unsqueeze(0)
    if x.shape[-3] == 1:  # greyscale: treat as RGB with R = G = B
        x = x.expand(-1, 3, -1, -1)
    x = rgb_to_y(x) if y_channel else x.to(torch.float64)
    if crop_border > 0:
        x = x[..., crop_border:-crop_border, crop_border:-crop_border]
    return x


def _check_pair(sr: Tensor, gt: Tensor) -> None:
    if sr.shape != gt.shape:
        raise ValueError(f"sr and gt must have the same shape, got {tuple(sr.shape)} and {tuple(gt.shape)}")


def psnr(sr255: Tensor, gt255: Tensor, *, crop_border: int, y_channel: bool = True) -> Tensor:
    """PSNR in dB per image, shape (N,). Both inputs are 0..255 RGB; see the module docstring."""
    _check_pair(sr255, gt255)
    sr = prepare_for_metric(sr255, crop_border=crop_border, y_channel=y_channel)
    gt = prepare_for_metric(gt255, crop_border=crop_border, y_channel=y_channel)
    mse = (sr - gt).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(255.0**2 / mse)  # +inf for identical images


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()  # (size,), sums to 1; the 2-D window is its outer product


def _ssim_map(x: Tensor, y: Tensor) -> Tensor:
    """Per-pixel SSIM over the valid region for (N, C, H, W) float64 tensors in 0..255."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    channels = x.shape[1]
    g = _gaussian_1d().to(x.device)
    win_v = g.view(1, 1, -1, 1).expand(channels, 1, -1, -1)
    win_h = g.view(1, 1, 1, -1).expand(channels, 1, -1, -1)

    def blur(t: Tensor) -> Tensor:  # depthwise 'valid' 11x11 Gaussian filter, as two separable passes
        return F.conv2d(F.conv2d(t, win_v, groups=channels), win_h, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return num / den


def ssim(sr255: Tensor, gt255: Tensor, *, crop_border: int, y_channel: bool = True) -> Tensor:
    """SSIM per image, shape (N,); RGB mode averages the three channels. See the module docstring."""
    _check_pair(sr255, gt255)
    sr = prepare_for_metric(sr255, crop_border=crop_border, y_channel=y_channel)
    gt = prepare_for_metric(gt255, crop_border=crop_border, y_channel=y_channel)
    if min(sr.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels after cropping, got {tuple(sr.shape[-2:])}")
    return _ssim_map(sr, gt).flatten(1).mean(dim=1)
