"""Upscale every image under a prefix (S3 or local) into another prefix, with Ray Data and an actor pool.

    python pipelines/upscale.py --input s3://bucket/photos --output s3://bucket/photos-x4
    python pipelines/upscale.py --input data/shards --output data/x4 --format webp --workers 4 --gpu

Each image is written under the same relative key below --output, with the output format's extension.
A rerun skips inputs whose output exists (resumable); bad inputs are listed in
<output>/_upscale_errors.jsonl. Exit status: 0 if every input has its output, 1 if any failed, 2 for a
usage error. Joins the Ray cluster at RAY_ADDRESS if set, else starts a local one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from srgan.distributed.bulk import BulkUpscaleConfig, run_bulk_upscale  # noqa: E402
from srgan.app.cli import add_limit_arguments, add_model_arguments, add_runtime_argument, limits_from_args, run_cli  # noqa: E402
from srgan.tracking.refs import DEFAULT_MODEL  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="local path, file:// or s3:// prefix of images (any depth), or Parquet shards")
    p.add_argument("--output", required=True, help="local path, file:// or s3:// prefix (not the input or inside it)")
    add_model_arguments(p, default_model=DEFAULT_MODEL)
    add_runtime_argument(p)
    p.add_argument("--format", choices=["png", "jpeg", "webp"], default=None, help="output format (default: each input's own)")
    p.add_argument("--quality", type=int, default=90, help="1..100, for jpeg and webp")
    p.add_argument("--workers", type=int, default=1, help="actors, each with its own copy of the model")
    p.add_argument("--gpu", action="store_true", help="one GPU per actor")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per actor (fractions allowed)")
    p.add_argument("--batch-size", type=int, default=4, help="images per batch (same-size ones share a forward pass)")
    p.add_argument("--tile-size", type=int, default=256, help="largest LR tile per forward pass")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (default: $AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--stall-timeout-s", type=float, default=1800.0,
                   help="restart the work left when nothing progresses for this long (longer than the slowest batch)")
    p.add_argument("--stall-retries", type=int, default=2, help="restarts after a stall before the job gives up")
    add_limit_arguments(p, what="input file")
    return p.parse_args(argv)


def main() -> int:
    args = parse_args()
    config = BulkUpscaleConfig(
        input=args.input,
        output=args.output,
        model=args.model,
        tracking_uri=args.tracking_uri,
        format=args.format,
        quality=args.quality,
        workers=args.workers,
        gpu=args.gpu,
        num_cpus=args.num_cpus,
        batch_size=args.batch_size,
        tile_size=args.tile_size,
        s3_endpoint=args.s3_endpoint,
        limits=limits_from_args(args),
        runtime=args.runtime,
        stall_timeout_s=args.stall_timeout_s,
        stall_retries=args.stall_retries,
    )
    summary = run_bulk_upscale(config, report=lambda line: print(line, flush=True))
    print(summary.line(), flush=True)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    run_cli(main)
