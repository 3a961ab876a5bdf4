"""Benchmark evaluation (Set5, Set14, ...): Y-PSNR and SSIM with the field's protocol.

A dataset directory follows ../shared/datasets (the EDSR "benchmark" layout)::

    <dir>/HR/<name>.png
    <dir>/LR_bicubic/X<scale>/<name>x<scale>.png

Protocol: images are compared as 8-bit values; SR (4x the LR size) is compared with the top-left crop
of HR to SR's size; ``scale`` pixels are cropped from every border; greyscale is converted to RGB; the
dataset score is the mean of the per-image scores. With ``degrade=True`` the LR images are made from
HR by :func:`srgan.core.degrade.degrade` (uint8 MATLAB semantics) instead of read from disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from srgan.errors import UserError
from srgan.core.degrade import bicubic_upscale, degrade
from srgan.core.images import IMAGE_EXTENSIONS, read_image_file
from srgan.core.metrics import psnr, ssim

__all__ = [
    "IMAGE_EXTENSIONS",
    "EvalPair",
    "ImageScore",
    "DatasetScore",
    "find_pairs",
    "evaluate_dataset",
    "bicubic_model",
    "read_uint8",
    "upscaler_model",
    "format_table",
    "UpscaleFn",
]


# An evaluation model: uint8 lq (3, h, w) -> uint8 sr (3, h*scale, w*scale).
UpscaleFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class EvalPair:
    name: str
    hr_path: Path
    lr_path: Path | None  # None when LR is made by degrade()


@dataclass(frozen=True)
class ImageScore:
    name: str
    psnr_y: float
    ssim_y: float


@dataclass
class DatasetScore:
    dataset: str
    model: str
    images: list[ImageScore] = field(default_factory=list)

    @property
    def psnr_y(self) -> float:
        return sum(s.psnr_y for s in self.images) / len(self.images)

    @property
    def ssim_y(self) -> float:
        return sum(s.ssim_y for s in self.images) / len(self.images)

    def to_json(self, *, per_image: bool = False) -> dict:
        out = {"dataset": self.dataset, "model": self.model, "psnr_y": round(self.psnr_y, 4), "ssim_y": round(self.ssim_y, 6), "images": len(self.images)}
        if per_image:
            out["per_image"] = [{"name": s.name, "psnr_y": round(s.psnr_y, 4), "ssim_y": round(s.ssim_y, 6)} for s in self.images]
        return out


def _images_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def find_pairs(dataset_dir: str | Path, *, scale: int, use_degrade: bool) -> list[EvalPair]:
    """List the (HR, LR) pairs of one dataset directory; a bad layout raises :class:`UserError`."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise UserError(f"dataset directory {root} does not exist")
    hr_dir = root / "HR"
    lr_dir = root / "LR_bicubic" / f"X{scale}"
    if not hr_dir.is_dir():
        raise UserError(f"{root} has no HR/ folder; expected HR/<name>.png and LR_bicubic/X{scale}/<name>x{scale}.png")
    hr_files = _images_in(hr_dir)
    if not hr_files:
        raise UserError(f"{hr_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    if use_degrade:
        return [EvalPair(p.stem, p, None) for p in hr_files]
    if not lr_dir.is_dir():
        raise UserError(f"{root} has no LR_bicubic/X{scale}/ folder; add the LR images or pass --degrade to make them from HR")
    lr_by_stem = {p.stem: p for p in _images_in(lr_dir)}
    pairs = []
    for hr in hr_files:
        lr = lr_by_stem.get(f"{hr.stem}x{scale}")
        if lr is None:
            raise UserError(f"missing LR image {lr_dir}/{hr.stem}x{scale}.png for {hr}; or pass --degrade")
        pairs.append(EvalPair(hr.stem, hr, lr))
    return pairs


def read_uint8(path: Path) -> Tensor:
    """An image file as (3, H, W) uint8 RGB (greyscale replicated, alpha dropped)."""
    img = read_image_file(path)
    return (img.rgb * 255.0).round().to(torch.uint8)


def evaluate_dataset(
    model: UpscaleFn,
    dataset_dir: str | Path,
    *,
    scale: int,
    use_degrade: bool,
    model_name: str,
    max_images: int = 0,
    on_image: Callable[[ImageScore], None] | None = None,
    on_pair: Callable[[Tensor, Tensor], None] | None = None,
) -> DatasetScore:
    """Score ``model`` on one dataset directory (the first ``max_images`` images if > 0).

    ``on_pair(sr, gt)`` sees each uint8 (3, H, W) output with its HR crop, for extra measures.
    """
    root = Path(dataset_dir)
    result = DatasetScore(dataset=root.name, model=model_name)
    pairs = find_pairs(root, scale=scale, use_degrade=use_degrade)
    for pair in pairs[:max_images] if max_images > 0 else pairs:
        gt = read_uint8(pair.hr_path)
        lq = degrade(gt, scale) if pair.lr_path is None else read_uint8(pair.lr_path)
        sr = model(lq)
        h, w = lq.shape[-2] * scale, lq.shape[-1] * scale
        if tuple(sr.shape[-2:]) != (h, w):
            raise UserError(f"model output is {tuple(sr.shape[-2:])} for a {tuple(lq.shape[-2:])} input; expected x{scale}")
        if gt.shape[-2] < h or gt.shape[-1] < w:
            raise UserError(f"{pair.hr_path} ({gt.shape[-1]}x{gt.shape[-2]}) is smaller than {scale}x its LR image")
        gt = gt[:, :h, :w]
        score = ImageScore(
            name=pair.name,
            psnr_y=float(psnr(sr, gt, crop_border=scale)[0]),
            ssim_y=float(ssim(sr, gt, crop_border=scale)[0]),
        )
        result.images.append(score)
        if on_pair is not None:
            on_pair(sr, gt)
        if on_image is not None:
            on_image(score)
    return result


def bicubic_model(scale: int) -> UpscaleFn:
    """The baseline: MATLAB bicubic upscaling of the uint8 LR image."""
    return lambda lq: bicubic_upscale(lq, scale)


def upscaler_model(upscaler) -> UpscaleFn:
    """Wrap an :class:`srgan.core.inference.Upscaler`: uint8 in, uint8 out (rounded as a saved PNG would be)."""

    def run(lq: Tensor) -> Tensor:
        sr = upscaler.upscale_tensor(lq.float() / 255.0)
        return (sr * 255.0).round().to(torch.uint8)

    return run


def format_table(scores: list[DatasetScore], *, per_image: bool = False) -> str:
    """A plain-text table: one row per dataset (and per image with ``per_image``)."""
    rows = [("dataset", "model", "images", "PSNR-Y (dB)", "SSIM-Y")]
    for s in scores:
        rows.append((s.dataset, s.model, str(len(s.images)), f"{s.psnr_y:.2f}", f"{s.ssim_y:.4f}"))
        if per_image:
            rows += [(f"  {i.name}", "", "", f"{i.psnr_y:.2f}", f"{i.ssim_y:.4f}") for i in s.images]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[c]) for c, cell in enumerate(r)).rstrip() for r in rows)
