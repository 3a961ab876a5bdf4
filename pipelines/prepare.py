"""Pack every image under a prefix into Parquet shards (part-00000.parquet, ...) for training ingest.

Listing 1.28 M small objects at every epoch is the slow path; pack them once and train from the shards:

    python pipelines/prepare.py --input s3://bucket/imagenet/train --output s3://bucket/imagenet-shards/train
    python pipelines/prepare.py --input ../shared/datasets/train --output /tmp/train-shards --images-per-shard 100

--format encoded (the default): two columns, path (the key relative to --input) and image (the
object's bytes as stored). Bad objects are packed as they are; training skips and counts them exactly
as from the raw prefix.

--format raw-uint8: every image decoded once, here, for datasets read many times: path, height,
width, pixels ((3, H, W) planar RGB uint8) and skip (the skip kind of a bad object, counted by training as
from the raw prefix), as Arrow IPC files part-00000.arrow, ... Training then decodes nothing and
only cuts windows from memory-mapped shards (about 50x the crops/s per core of JPEG decoding here),
for about 10x the storage of q90 JPEG shards (docs/performance.md).

S3 is configured by the standard AWS variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) or --s3-endpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from srgan.app.cli import run_cli  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="image prefix to pack: local folder, file:// or s3:// (jpg/jpeg/png/webp/bmp, any case, any depth)")
    p.add_argument("--output", required=True, help="where the shards go: local folder, file:// or s3://; not at or inside --input, and holding no shards yet")
    p.add_argument("--images-per-shard", type=int, default=1000, help="images per shard (default 1000; a shard also closes at 1 GiB)")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL or AWS itself)")
    p.add_argument("--seed", type=int, default=0, help="seed of the packing order, which mixes the whole dataset into every shard (default 0)")
    p.add_argument("--threads", type=int, default=16, help="concurrent object reads, and decodes with raw-uint8 (default 16)")
    p.add_argument("--format", choices=("encoded", "raw-uint8"), default="encoded",
                   help="encoded: the objects' bytes (default); raw-uint8: decoded pixels, no decoding at training time")
    return p.parse_args(argv)


def main() -> int:
    args = parse_args()
    from srgan.io.datasets import pack_images  # after parsing: --help and flag errors need no torch/pyarrow import

    print(f"packing {args.input} -> {args.output}", flush=True)
    summary = pack_images(
        args.input,
        args.output,
        images_per_shard=args.images_per_shard,
        s3_endpoint=args.s3_endpoint,
        seed=args.seed,
        threads=args.threads,
        progress=lambda line: print(line, flush=True),
        format=args.format,
    )
    if summary.format == "raw-uint8":
        print(f"decoded {summary.input_bytes} encoded bytes into {summary.bytes} bytes of pixels "
              f"({summary.bytes / max(summary.input_bytes, 1):.1f}x)", flush=True)
    print(f"packed {summary.images} images ({summary.bytes} bytes) into {summary.shards} shards under {summary.output}", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
