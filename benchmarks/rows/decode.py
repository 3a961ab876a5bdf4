"""The training decoder against PIL's decode-only loop, and crops-per-image scaling (1 core)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from benchmarks.common import Row, Settings, median_rate, side_by_side, torch_threads
from srgan.core.images import ImageLimits
from srgan.io.datasets import decode_and_crop


def _project_decode(blobs: list[bytes], crops_per_image: int = 1) -> Callable[[], int]:
    batch = {"bytes": np.array(blobs, dtype=object), "path": np.array([f"img{i}" for i in range(len(blobs))], dtype=object)}
    rng = np.random.default_rng(0)

    def run() -> int:
        out, skips = decode_and_crop(batch, crop_size=96, crops_per_image=crops_per_image, rng=rng, limits=ImageLimits())
        assert not skips
        return len(out["gt"])

    return run


def pil_decode_only(blobs: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                im.load()
        return len(blobs)

    return run


def _row_decode(fmt: str, s: Settings) -> Row:
    blobs = s.images[fmt]
    with torch_threads(1):
        ours, pil = side_by_side(_project_decode(blobs), pil_decode_only(blobs), s)
    ratio = ours / pil
    return Row(f"decode-{fmt}", f"{ours:.0f} img/s", f"{pil:.0f} img/s (PIL decode only)", ratio, ">= 0.9", ratio >= 0.9,
               f"{len(blobs)} 500x375 {fmt.upper()}s, 96x96 crops, 1 thread")


def _row_crops_per_image(s: Settings) -> Row:
    blobs = s.images["jpeg"]
    with torch_threads(1):
        rates = {k: median_rate(_project_decode(blobs, k), s.repeats, s.min_seconds) for k in (1, 4, 16)}
    ratio = rates[16] / (16 * rates[1])
    return Row("crops-per-image", ", ".join(f"{k}: {v:.0f} crops/s" for k, v in rates.items()), f"{16 * rates[1]:.0f} crops/s (16 x the rate at 1)",
               ratio, ">= 0.8 of linear at 16", ratio >= 0.8, f"{len(blobs)} JPEGs, crops_per_image 1/4/16, 1 thread")


ROWS = {
    "decode-jpeg": lambda s: _row_decode("jpeg", s),
    "decode-png": lambda s: _row_decode("png", s),
    "crops-per-image": _row_crops_per_image,
}
