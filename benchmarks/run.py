"""The benchmark suite: each row runs this project and its baseline (or this machine's limit) side by
side, in one process and on the same bytes, and prints the ratio, so it holds on a noisy machine.

    python benchmarks/run.py [--quick] [--only NAME[,NAME...]] [--json PATH] [--repeats N]

Rows (more join as they are built; the older scripts benchmarks/*.py still run on their own):

- decode-jpeg      ``decode_and_crop`` (the training decoder, 1 core) vs a PIL decode-only loop, same JPEGs
- decode-png       the same on the same images as PNG
- crops-per-image  crops/s at crops_per_image 1, 4 and 16, against linear scaling from 1

The images are ImageNet-like: photos from ../shared/datasets/train (T91, BSD200) resized to 500x375
with PIL's bicubic filter, saved as JPEG (quality 90, PIL's defaults) and as PNG. Every timing is
the median of ``--repeats`` timings of at least 1 s each, the two sides alternating; ``--quick`` uses
fewer images, repeats and seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srgan.core.images import ImageLimits  # noqa: E402
from srgan.io.datasets import decode_and_crop  # noqa: E402


@dataclass
class Row:
    name: str
    project: str  # this project's figure, with its unit
    baseline: str  # the baseline's or the limit's figure
    ratio: float
    target: str
    passed: bool
    ran: str  # what the row ran (sizes, counts)


def _shared_train() -> Path:
    root = Path(os.environ.get("SRGAN_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    return root / "train"


def imagenet_like(count: int) -> dict[str, list[bytes]]:
    """``count`` photos resized to 500x375 (bicubic), as JPEG q90 and as PNG (PIL defaults)."""
    paths = sorted(p for p in _shared_train().rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if not paths:
        raise SystemExit(f"error: no training photos under {_shared_train()}; set SRGAN_SHARED_DATASETS")
    out: dict[str, list[bytes]] = {"jpeg": [], "png": []}
    for path in (paths * (count // len(paths) + 1))[:count]:
        img = Image.open(path).convert("RGB").resize((500, 375), Image.Resampling.BICUBIC)
        for fmt, key, params in (("JPEG", "jpeg", {"quality": 90}), ("PNG", "png", {})):
            buf = io.BytesIO()
            img.save(buf, format=fmt, **params)
            out[key].append(buf.getvalue())
    return out


MIN_SECONDS = 1.0  # each timed repeat runs its side for at least this long (--quick: a quarter)


def _median_rate(fn: Callable[[], int], repeats: int) -> float:
    """Items per second of ``fn`` (which returns how many items it did): the median of ``repeats``
    timings, each of whole calls lasting at least ``MIN_SECONDS`` (one pass over a few dozen images is
    too short to time on a shared machine)."""
    rates = []
    for _ in range(repeats):
        t0, n = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - t0) < MIN_SECONDS or n == 0:
            n += fn()
        rates.append(n / elapsed)
    return statistics.median(rates)


def _side_by_side(a: Callable[[], int], b: Callable[[], int], repeats: int) -> tuple[float, float]:
    """Median rates of ``a`` and ``b``, measured alternately (one warm-up each first)."""
    a(), b()
    rates_a, rates_b = [], []
    for _ in range(repeats):
        rates_a.append(_median_rate(a, 1))
        rates_b.append(_median_rate(b, 1))
    return statistics.median(rates_a), statistics.median(rates_b)


def _project_decode(blobs: list[bytes], crops_per_image: int = 1) -> Callable[[], int]:
    batch = {"bytes": np.array(blobs, dtype=object), "path": np.array([f"img{i}" for i in range(len(blobs))], dtype=object)}
    rng = np.random.default_rng(0)

    def run() -> int:
        out, skips = decode_and_crop(batch, crop_size=96, crops_per_image=crops_per_image, rng=rng, limits=ImageLimits())
        assert not skips
        return len(out["gt"])

    return run


def _pil_decode_only(blobs: list[bytes]) -> Callable[[], int]:
    def run() -> int:
        for b in blobs:
            with Image.open(io.BytesIO(b)) as im:
                im.load()
        return len(blobs)

    return run


def row_decode(fmt: str, images: dict[str, list[bytes]], repeats: int) -> Row:
    blobs = images[fmt]
    ours, pil = _side_by_side(_project_decode(blobs), _pil_decode_only(blobs), repeats)
    ratio = ours / pil
    return Row(f"decode-{fmt}", f"{ours:.0f} img/s", f"{pil:.0f} img/s (PIL decode only)", ratio, ">= 0.9", ratio >= 0.9,
               f"{len(blobs)} 500x375 {fmt.upper()}s, 96x96 crops, 1 thread")


def row_crops_per_image(images: dict[str, list[bytes]], repeats: int) -> Row:
    blobs = images["jpeg"]
    rates = {k: _median_rate(_project_decode(blobs, k), repeats) for k in (1, 4, 16)}
    ratio = rates[16] / (16 * rates[1])
    return Row("crops-per-image", ", ".join(f"{k}: {v:.0f} crops/s" for k, v in rates.items()), f"{16 * rates[1]:.0f} crops/s (16 x the rate at 1)",
               ratio, ">= 0.8 of linear at 16", ratio >= 0.8, f"{len(blobs)} JPEGs, crops_per_image 1/4/16, 1 thread")


ROWS = ("decode-jpeg", "decode-png", "crops-per-image")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer images and repeats (a few minutes on 2 cores)")
    p.add_argument("--only", default="", help=f"comma-separated rows to run (of {', '.join(ROWS)})")
    p.add_argument("--json", default=None, help="also write the rows as JSON to this path")
    p.add_argument("--repeats", type=int, default=0, help="timed repeats per side (default 3 quick, 7 full)")
    args = p.parse_args()
    only = [n for n in args.only.split(",") if n] or list(ROWS)
    unknown = sorted(set(only) - set(ROWS))
    if unknown:
        print(f"error: unknown row {unknown[0]!r}; rows: {', '.join(ROWS)}", file=sys.stderr)
        return 2
    repeats = args.repeats or (3 if args.quick else 7)
    global MIN_SECONDS
    MIN_SECONDS = 0.25 if args.quick else 1.0
    torch.set_num_threads(1)  # the decode rows are per core
    print(f"[bench] {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"{'quick' if args.quick else 'full'}, {repeats} repeats", flush=True)
    images = imagenet_like(24 if args.quick else 96)
    rows = []
    for name in only:
        print(f"[bench] {name} ...", flush=True)
        rows.append(row_decode(name.split("-")[1], images, repeats) if name.startswith("decode-") else row_crops_per_image(images, repeats))
    header = ("name", "this project", "baseline", "ratio", "target", "pass/fail")
    table = [header] + [(r.name, r.project, r.baseline, f"{r.ratio:.2f}", r.target, "pass" if r.passed else "FAIL") for r in rows]
    widths = [max(len(t[c]) for t in table) for c in range(len(header))]
    for t in table:
        print(" | ".join(cell.ljust(widths[c]) for c, cell in enumerate(t)))
    for r in rows:
        print(f"  {r.name}: {r.ran}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
