"""Evaluate a model (or the bicubic baseline) on SR benchmark sets: Y-PSNR and SSIM, and LPIPS on request.

    python pipelines/evaluate.py --model bicubic --data ../shared/datasets/Set5,../shared/datasets/Set14
    python pipelines/evaluate.py --model models:/srgan-generator@champion --data ../shared/datasets/Set5 --json
    python pipelines/evaluate.py --model models:/srgan-generator-gan@champion --data ../shared/datasets/Set5 --metrics psnr,ssim,lpips

LPIPS needs torchvision's ImageNet AlexNet (or VGG16) weights: from the torch cache, else downloaded
once. Without them LPIPS is reported as unavailable (a note on stderr, n/a / null) and the rest runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from srgan.app.cli import add_runtime_argument, run_cli  # noqa: E402
from srgan.app.evaluate import METRICS, EvalConfig, format_table, report_json, run_evaluation  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="'bicubic', a generator checkpoint directory/URI, or models:/NAME@ALIAS")
    p.add_argument("--data", required=True, help="comma-separated dataset dirs (HR/ and LR_bicubic/X<scale>/)")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--degrade", action="store_true", help="make LR from HR with degrade() instead of reading LR_bicubic/")
    p.add_argument("--json", action="store_true", help="print one JSON object per dataset")
    p.add_argument("--verbose", action="store_true", help="also report every image")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--tile-size", type=int, default=256, help="largest LR tile per forward pass")
    add_runtime_argument(p)
    p.add_argument("--metrics", default="psnr,ssim", help=f"comma-separated, reported in this order: any of {','.join(METRICS)} (default psnr,ssim)")
    p.add_argument("--lpips-net", default="alex", help="LPIPS backbone: alex (default) or vgg")
    p.add_argument("--tracking-uri", default=None, help="MLflow store for models:/ URIs (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    return p.parse_args(argv)


def main() -> int:
    args = parse_args()
    config = EvalConfig(
        model=args.model,
        data=tuple(d for d in args.data.split(",") if d),
        scale=args.scale,
        use_degrade=args.degrade,
        device=args.device,
        tile_size=args.tile_size,
        runtime=args.runtime,
        tracking_uri=args.tracking_uri,
        metrics=tuple(m.strip().lower() for m in args.metrics.split(",") if m.strip()),
        lpips_net=args.lpips_net,
    )
    report = run_evaluation(config)
    if report.lpips_unavailable:  # not a failure: the other metrics stand; stderr keeps --json's stdout clean
        print(f"note: LPIPS unavailable: {report.lpips_unavailable}", file=sys.stderr)
    if args.json:
        for row in report_json(report, per_image=args.verbose):
            print(json.dumps(row))
    else:
        print(format_table(report, per_image=args.verbose))
    return 0


if __name__ == "__main__":
    run_cli(main)
