"""Ingest formats, per core (1 thread), in this process, on the same ImageNet-like photos:

- raw-shards: crops/s out of a raw-uint8 shard (prepare.py --format raw-uint8: memory-map the Arrow IPC
  file as the ingest's read tasks do for local shards, cut windows in place) against crops/s out of the
  encoded JPEG shard of the same photos (read the Parquet file, decode_and_crop). Target >= 10x. Also
  states the storage cost of each. (The page cache holds both files on both sides.)
- decode-device-cpu: the worker-side decoder of data.decode_device=cuda (decode_and_crop_on) run with
  device="cpu", against the Ray Data-side CPU decoder (decode_and_crop), same bytes. A report: on CPU it
  is libjpeg both ways; the GPU figure (nvjpeg) comes from the GPU rows.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import Row, Settings, side_by_side, torch_threads
from srgan.core.images import ImageLimits
from srgan.io.datasets import crop_raw_shard, decode_and_crop, decode_and_crop_on, pack_images

CROP = 96


def _pack_both(blobs: list[bytes], root: Path) -> tuple[Path, Path, int, int]:
    """The photos as files, packed as encoded and as raw-uint8 shards: (encoded shard, raw shard, bytes of each)."""
    src = root / "src"
    src.mkdir()
    for i, blob in enumerate(blobs):
        (src / f"img{i:04d}.jpg").write_bytes(blob)
    encoded = pack_images(str(src), str(root / "encoded"), images_per_shard=len(blobs), threads=1)
    raw = pack_images(str(src), str(root / "raw"), images_per_shard=len(blobs), threads=1, format="raw-uint8")
    assert encoded.shards == raw.shards == 1
    return root / "encoded" / "part-00000.parquet", root / "raw" / "part-00000.arrow", encoded.bytes, raw.bytes


def _encoded_crops(shard: Path) -> Callable[[], int]:
    rng = np.random.default_rng(0)

    def run() -> int:
        table = pq.read_table(shard)  # the read is part of both sides: the data set is the file
        batch = {"bytes": np.array(table.column("image").to_pylist(), dtype=object), "path": np.array(table.column("path").to_pylist(), dtype=object)}
        out, skips = decode_and_crop(batch, crop_size=CROP, crops_per_image=1, rng=rng, limits=ImageLimits())
        assert not skips
        return len(out["gt"])

    return run


def _raw_crops(shard: Path) -> Callable[[], int]:
    rng = np.random.default_rng(0)

    def run() -> int:
        with pa.memory_map(str(shard)) as source:  # opening and reading are part of the timing
            out, skips = crop_raw_shard(source, crop_size=CROP, crops_per_image=1, rng=rng)
        assert not skips
        return len(out["gt"])

    return run


def _row_raw_shards(s: Settings) -> Row:
    blobs = s.images["jpeg"]
    with tempfile.TemporaryDirectory() as tmp, torch_threads(1):
        enc_shard, raw_shard, enc_bytes, raw_bytes = _pack_both(blobs, Path(tmp))
        raw, enc = side_by_side(_raw_crops(raw_shard), _encoded_crops(enc_shard), s)
    ratio = raw / enc
    storage = raw_bytes / enc_bytes
    return Row("raw-shards", f"{raw:.0f} crops/s (raw-uint8 shard)", f"{enc:.0f} crops/s (JPEG shard, decode_and_crop)", ratio, ">= 10",
               ratio >= 10, f"{len(blobs)} 500x375 JPEG q90 photos, one shard each, 96x96 crops, 1 thread, file reads included (raw: memory-mapped); "
               f"storage {raw_bytes / len(blobs) / 1e3:.0f} kB vs {enc_bytes / len(blobs) / 1e3:.0f} kB per image ({storage:.1f}x the JPEG shard)")


def _row_decode_device_cpu(s: Settings) -> Row:
    blobs = s.images["jpeg"]
    batch = {"bytes": np.array(blobs, dtype=object), "path": np.array([f"img{i}" for i in range(len(blobs))], dtype=object)}
    rng_worker, rng_ray = np.random.default_rng(0), np.random.default_rng(0)

    def worker() -> int:
        crops, skips = decode_and_crop_on(batch, crop_size=CROP, crops_per_image=1, rng=rng_worker, limits=ImageLimits(), device="cpu")
        assert not skips
        return len(crops)

    def ray_side() -> int:
        out, skips = decode_and_crop(batch, crop_size=CROP, crops_per_image=1, rng=rng_ray, limits=ImageLimits())
        assert not skips
        return len(out["gt"])

    with torch_threads(1):
        ours, base = side_by_side(worker, ray_side, s)
    ratio = ours / base
    return Row("decode-device-cpu", f"{ours:.0f} crops/s (worker decoder, device=cpu)", f"{base:.0f} crops/s (Ray Data CPU decoder)", ratio,
               "report", True, f"{len(blobs)} 500x375 JPEG q90, 96x96 crops, 1 thread; torchvision decodes the whole image, "
               "PIL cuts the window first; on CUDA the decode moves to nvjpeg (GPU rows)")


ROWS = {
    "raw-shards": _row_raw_shards,
    "decode-device-cpu": _row_decode_device_cpu,
}
