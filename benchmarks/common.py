"""What every benchmark row shares: the row record, the run's settings, side-by-side timing and the
ImageNet-like test images. Rows live in benchmarks/rows/<group>.py; benchmarks/run.py runs them."""

from __future__ import annotations

import io
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    name: str
    project: str  # this project's figure, with its unit
    baseline: str  # the baseline's or the limit's figure
    ratio: float
    target: str
    passed: bool
    ran: str  # what the row ran (sizes, counts)


@dataclass
class Settings:
    """One run's settings, handed to every row function."""

    quick: bool = False
    repeats: int = 7
    min_seconds: float = 1.0  # each timed repeat runs its side for at least this long
    gpu: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    @cached_property
    def images(self) -> dict[str, list[bytes]]:
        """The ImageNet-like JPEGs and PNGs (24 quick, 96 full), made once per run."""
        return imagenet_like(24 if self.quick else 96)


def shared_train() -> Path:
    root = Path(os.environ.get("SRGAN_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
    return root / "train"


def imagenet_like(count: int) -> dict[str, list[bytes]]:
    """``count`` photos resized to 500x375 (bicubic), as JPEG q90 and as PNG (PIL defaults)."""
    paths = sorted(p for p in shared_train().rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if not paths:
        raise SystemExit(f"error: no training photos under {shared_train()}; set SRGAN_SHARED_DATASETS")
    out: dict[str, list[bytes]] = {"jpeg": [], "png": []}
    for path in (paths * (count // len(paths) + 1))[:count]:
        img = Image.open(path).convert("RGB").resize((500, 375), Image.Resampling.BICUBIC)
        for fmt, key, params in (("JPEG", "jpeg", {"quality": 90}), ("PNG", "png", {})):
            buf = io.BytesIO()
            img.save(buf, format=fmt, **params)
            out[key].append(buf.getvalue())
    return out


def median_rate(fn: Callable[[], int], repeats: int, min_seconds: float) -> float:
    """Items per second of ``fn`` (which returns how many items it did): the median of ``repeats``
    timings, each of whole calls lasting at least ``min_seconds`` (one pass over a few dozen images is
    too short to time on a shared machine)."""
    rates = []
    for _ in range(repeats):
        t0, n = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - t0) < min_seconds or n == 0:
            n += fn()
        rates.append(n / elapsed)
    return statistics.median(rates)


def side_by_side(a: Callable[[], int], b: Callable[[], int], s: Settings) -> tuple[float, float]:
    """Median rates of ``a`` and ``b``, measured alternately (one warm-up each first), so that load on
    the machine falls on both sides alike."""
    a(), b()
    rates_a, rates_b = [], []
    for _ in range(s.repeats):
        rates_a.append(median_rate(a, 1, s.min_seconds))
        rates_b.append(median_rate(b, 1, s.min_seconds))
    return statistics.median(rates_a), statistics.median(rates_b)


class torch_threads:
    """``with torch_threads(1): ...`` runs a per-core row, then restores torch's thread count."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import torch

        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.saved)
