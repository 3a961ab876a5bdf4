"""Train SRResNet, then SRGAN, on Ray (Ray Data ingest, Ray Train DDP, MLflow tracking and registry).

With no arguments: a short CPU demo on embedded defaults (local Ray, MLflow on ./mlflow.db, a small
photo set made offline from scikit-image's bundled photos, configs/demo_cpu.yaml). On a cluster:

    ray job submit --working-dir . -- python pipelines/train.py --config configs/paper_srresnet_x4.yaml \\
        --data s3://bucket/imagenet/train --val-data s3://bucket/benchmarks/Set5 --storage s3://bucket/runs

Then the SRGAN phase, starting from the SRResNet champion (VGG19 weights from torchvision's cache,
downloaded once per node when missing, or --vgg-weights PATH|URI):

    ray job submit --working-dir . -- python pipelines/train.py --config configs/paper_srgan_x4.yaml \\
        --init-from models:/srgan-generator@champion --data s3://bucket/imagenet/train ...

Re-running the same command with the same --name and --storage resumes from the latest checkpoint;
a worker that dies is restarted from the latest checkpoint automatically (--max-failures).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from srgan.app.cli import run_cli, setup_logging  # noqa: E402

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_cpu.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help=f"experiment YAML (default with no --data: {DEMO_CONFIG.relative_to(DEMO_CONFIG.parents[1])})")
    p.add_argument("--phase", help="training phase: srresnet (pixel MSE) or srgan (VGG content + adversarial; needs --init-from)")
    p.add_argument("--init-from", help="generator to start from: checkpoint dir/URI or models:/NAME@ALIAS (e.g. models:/srgan-generator@champion)")
    p.add_argument("--vgg-weights", help="VGG19 state dict for the srgan content loss: PATH|URI, 'imagenet' (the default: torchvision's VGG19 weights from the torch cache, else one download per node), or 'random' (tests only)")
    p.add_argument("--data", help="training images: a local path, file:// or s3:// prefix of images, or Parquet shards from prepare.py")
    p.add_argument("--val-data", help="validation set: HR/ (+ LR_bicubic/X<scale>/) as in ../shared/datasets; local or s3://")
    p.add_argument("--steps", type=int, help="total optimiser steps (a resumed run continues up to this)")
    p.add_argument("--batch-size", type=int, help="GLOBAL batch size, split evenly over the workers")
    p.add_argument("--workers", type=int, help="Ray Train workers (one per GPU with --gpu)")
    p.add_argument("--gpu", action="store_const", const=True, default=None, help="one GPU per worker, DDP over nccl")
    p.add_argument("--name", help="run name; the same name + storage resumes the run")
    p.add_argument("--storage", help="Ray Train storage for checkpoints: a local directory or s3://bucket/prefix")
    p.add_argument("--max-failures", type=int, help="worker failures to recover from by restarting from the last checkpoint (default 3)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI: http(s):// server, or sqlite:///FILE (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory)")
    p.add_argument("--experiment", help="MLflow experiment name")
    p.add_argument("--register-as", help="MLflow registered model name (default: srgan-generator for srresnet, srgan-generator-gan for srgan)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL (default: AWS_ENDPOINT_URL or AWS)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field, e.g. --set optim.lr=2e-4 (repeatable)")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def main() -> int:
    args = parse_args()
    setup_logging(args.verbose)
    from srgan.config import FLAG_FIELDS, build_config
    from srgan.app.train_job import check_sources, print_summary, run_job

    config_path = args.config or (DEMO_CONFIG if args.data is None else None)
    flags = {k: getattr(args, k) for k in FLAG_FIELDS}
    config = build_config(config_path, flags, args.set)
    requested_init_from = config.train.init_from
    config = check_sources(config)  # before Ray starts: paths exist, demo data made, --init-from pinned
    print_summary(run_job(config, requested_init_from=requested_init_from))
    return 0


if __name__ == "__main__":
    run_cli(main)
