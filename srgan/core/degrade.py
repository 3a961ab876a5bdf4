"""MATLAB-compatible bicubic resizing, and the one ``degrade()`` that makes every LR image.

Why not ``F.interpolate(mode="bicubic")`` or PIL? The SR literature's LR images (and the Set5/Set14
files in ../shared/datasets) come from MATLAB ``imresize(hr, 1/scale, 'bicubic')``, which differs from
both: Keys cubic with a = -0.5, the kernel widened by 1/scale when shrinking (antialiasing), symmetric
(mirror) border padding, and rows then columns. A model trained on another kernel is evaluated on a
different task, so the project uses this implementation everywhere.

Implementation: for each output coordinate along one axis MATLAB's ``contributions()`` gives a short
list of input indices and weights. We gather those rows/columns and take a weighted sum. This is
batched (N, C, H, W), runs on any device, and is a linear map (so it works for any value range).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["imresize", "degrade", "bicubic_upscale", "modcrop"]


def _cubic(x: Tensor) -> Tensor:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    absx = x.abs()
    absx2 = absx * absx
    absx3 = absx2 * absx
    near = (1.5 * absx3 - 2.5 * absx2 + 1) * (absx <= 1)
    far = (-0.5 * absx3 + 2.5 * absx2 - 4 * absx + 2) * ((absx > 1) & (absx <= 2))
    return near + far


@lru_cache(maxsize=256)
def _contributions(in_len: int, out_len: int, scale: float) -> tuple[Tensor, Tensor]:
    """MATLAB ``contributions()`` for one axis.

    Returns ``(indices, weights)``, both (out_len, P): output pixel i is
    ``sum_p weights[i, p] * input[indices[i, p]]`` with 0-based, mirror-padded indices.
    Computed in float64 on the CPU and cached per (in_len, out_len, scale).
    """
    kernel_width = 4.0
    antialias = scale < 1
    if antialias:
        kernel_width /= scale  # widen the kernel to low-pass before decimating

    x = torch.arange(1, out_len + 1, dtype=torch.float64)  # 1-based output coordinates
    u = x / scale + 0.5 * (1 - 1 / scale)  # matching (1-based) input coordinates
    left = torch.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]  # (out, P)
    dist = u[:, None] - indices
    weights = scale * _cubic(scale * dist) if antialias else _cubic(dist)
    weights = weights / weights.sum(dim=1, keepdim=True)

    # Symmetric padding: ... 2 1 | 1 2 ... n | n n-1 ... (MATLAB's aux = [1:n, n:-1:1]).
    idx0 = indices.long() - 1
    period = 2 * in_len
    idx0 = torch.remainder(idx0, period)
    idx0 = torch.where(idx0 >= in_len, period - 1 - idx0, idx0)

    # Drop taps whose weight is zero for every output pixel (MATLAB's "kill" step).
    keep = weights.abs().sum(dim=0) > 0
    return idx0[:, keep].contiguous(), weights[:, keep].contiguous()


@lru_cache(maxsize=256)
def _device_contributions(in_len: int, out_len: int, scale: float, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """:func:`_contributions` on ``device`` in ``dtype``, cached: a training step resizes the same crop
    size every time, and copying the tables from host memory at every step would make the host wait
    for the device (a pageable host-to-device copy synchronises) four times per ``degrade``."""
    idx, w = _contributions(in_len, out_len, scale)
    return idx.to(device), w.to(device=device, dtype=dtype)


def _resize_axis(x: Tensor, scale: float, out_len: int, dim: int) -> Tensor:
    """Resize ``x`` (float) along ``dim`` (-2 = height, -1 = width)."""
    in_len = x.shape[dim]
    idx, w = _device_contributions(in_len, out_len, scale, x.device, x.dtype)
    taps = idx.shape[1]
    # gathered: (..., out_len * P, W) for dim=-2, or (..., H, out_len * P) for dim=-1
    gathered = x.index_select(dim, idx.reshape(-1))
    if dim == -2:
        gathered = gathered.unflatten(-2, (out_len, taps))  # (..., out, P, W)
        return (gathered * w[:, :, None]).sum(dim=-2)
    gathered = gathered.unflatten(-1, (out_len, taps))  # (..., H, out, P)
    return (gathered * w).sum(dim=-1)


def _round_uint8(x: Tensor) -> Tensor:
    """MATLAB's float->uint8: round half away from zero, then saturate."""
    return torch.floor(x + 0.5).clamp_(0, 255)


def imresize(x: Tensor, scale: float, *, out_hw: tuple[int, int] | None = None) -> Tensor:
    """MATLAB ``imresize(x, scale, 'bicubic')`` on a batch.

    Args:
        x: (N, C, H, W) or (C, H, W). A uint8 tensor is resized exactly as MATLAB resizes uint8
            images: each pass is rounded and saturated to 0..255, and the result is uint8. A float
            tensor is resized in its own dtype (bf16/fp16 are computed in fp32), without clamping.
        scale: the resize factor (< 1 shrinks). Output size is ``ceil(H * scale), ceil(W * scale)``
            unless ``out_hw`` is given.

    Returns:
        The resized tensor, same rank and dtype as ``x``.
    """
    if x.ndim not in (3, 4):
        raise ValueError(f"imresize expects (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    squeeze = x.ndim == 3
    if squeeze:
        x = x.unsqueeze(0)
    is_uint8 = x.dtype == torch.uint8
    # uint8 inputs are computed in float64 so that the per-pass rounding matches MATLAB bit for bit.
    work = x.to(torch.float64) if is_uint8 else x.to(torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x
    h, w = x.shape[-2:]
    out_h, out_w = out_hw if out_hw is not None else (math.ceil(h * scale), math.ceil(w * scale))

    # MATLAB resizes the dimension with the smaller scale first; with equal scales, rows (height) first.
    for dim, in_len, out_len in ((-2, h, out_h), (-1, w, out_w)):
        if out_len == in_len and scale == 1:
            continue
        work = _resize_axis(work, scale, out_len, dim)
        if is_uint8:
            work = _round_uint8(work)

    out = work.to(torch.uint8) if is_uint8 else work.to(x.dtype)
    return out.squeeze(0) if squeeze else out


def modcrop(x: Tensor, scale: int) -> Tensor:
    """Keep the top-left ``floor(H/scale)*scale x floor(W/scale)*scale`` region (MATLAB ``modcrop``)."""
    h, w = x.shape[-2:]
    return x[..., : h - h % scale, : w - w % scale]


def degrade(gt: Tensor, scale: int) -> Tensor:
    """Make the LR image(s) for HR ``gt``: ``imresize(modcrop(gt, scale), 1/scale, 'bicubic')``.

    This is the only LR synthesis in the project (training crops, evaluation with ``--degrade``, tests).

    Args:
        gt: (N, C, H, W) or (C, H, W) HR images, either uint8 (0..255, MATLAB uint8 semantics: what
            made the Set5/Set14 LR files) or float in [0, 1].
        scale: integer downscaling factor (2, 3, 4, 8, ...).

    Returns:
        ``lq`` of size (H // scale, W // scale): uint8 for uint8 input, otherwise float in [0, 1]
        (the cubic kernel's overshoot is clamped, as a uint8 image would be).
    """
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    gt = modcrop(gt, scale)
    h, w = gt.shape[-2:]
    if h < scale or w < scale:
        raise ValueError(f"image of {w}x{h} is smaller than the scale {scale}")
    lq = imresize(gt, 1.0 / scale, out_hw=(h // scale, w // scale))
    return lq if lq.dtype == torch.uint8 else lq.clamp(0, 1)


def bicubic_upscale(lq: Tensor, scale: int) -> Tensor:
    """MATLAB-bicubic upscaling by an integer ``scale`` (the evaluation baseline and optional skip).

    uint8 in -> uint8 out (MATLAB semantics); float in -> float out, not clamped.
    """
    h, w = lq.shape[-2:]
    return imresize(lq, float(scale), out_hw=(h * scale, w * scale))
