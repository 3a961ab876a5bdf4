"""Serve the generator over HTTP with Ray Serve until interrupted (Ctrl-C).

    python pipelines/serve.py                                   # models:/srgan-generator@champion
    python pipelines/serve.py --model runs/demo/checkpoint_000001 --port 8000
    python pipelines/serve.py --model models:/srgan-generator@champion --min-replicas 1 --max-replicas 4 --gpu
    python pipelines/serve.py --allow-model models:/srgan-generator-gan@champion --allow-model models:/srgan-generator/3

    curl --data-binary @photo.png -o photo_x4.png http://127.0.0.1:8000/v1/upscale
    curl -H "serve_multiplexed_model_id: models:/srgan-generator/3" --data-binary @photo.png -o x4.png http://127.0.0.1:8000/v1/upscale
    open http://127.0.0.1:8000/ in a browser: the web page (upload, compare, download)

    SRGAN_API_TOKEN=$(cat token) python pipelines/serve.py ...  # /v1/* then needs 'Authorization: Bearer <token>'

Joins the Ray cluster at RAY_ADDRESS if set, else starts a local one. SRGAN_API_TOKEN, if set, reaches
the replicas through their runtime_env (never a flag: flags show in `ps` and shell history). For a cluster deployment use
`serve deploy infra/serve_config.yaml` (same application, same options).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from srgan.app.cli import add_limit_arguments, add_model_arguments, add_runtime_argument, limits_from_args, run_cli, setup_logging  # noqa: E402
from srgan.tracking.refs import DEFAULT_MODEL  # noqa: E402
from srgan.distributed.serving import check_options, run_server  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, default_model=DEFAULT_MODEL)
    add_runtime_argument(p)
    p.add_argument("--allow-model", action="append", default=[], metavar="REF",
                   help="another model a request may choose (?model=REF or the serve_multiplexed_model_id header); repeatable")
    p.add_argument("--max-models-per-replica", type=int, default=3,
                   help="models besides the default that one replica keeps loaded (least recently used ones are unloaded)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1, help="fixed number of replicas")
    p.add_argument("--min-replicas", type=int, default=None, help="autoscale between --min-replicas and --max-replicas")
    p.add_argument("--max-replicas", type=int, default=None)
    p.add_argument("--target-ongoing-requests", type=float, default=2.0, help="autoscaling target per replica")
    p.add_argument("--max-ongoing-requests", type=int, default=32, help="requests a replica takes at once")
    p.add_argument("--gpu", action="store_true", help="one GPU per replica")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per replica (fractions allowed)")
    p.add_argument("--max-batch-size", type=int, default=8, help="small requests per batch (1: no batching)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0, help="how long a batch waits to fill")
    p.add_argument("--tile-size", type=int, default=256, help="largest LR tile per forward pass")
    p.add_argument("--refresh-interval", type=float, default=30.0, help="seconds between checks of a registry alias (0: never)")
    add_limit_arguments(p, what="request body")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="compute deadline per request (default: 60 on CPU, 20 on GPU; 0: none); docs/serving.md")
    p.add_argument("--rate-mpx-s", type=float, default=None,
                   help="output megapixels/s the first estimates assume before a replica measures its own (default: 0.4 CPU, 8 GPU)")
    p.add_argument("--memory-budget-mpx", type=float, default=64.0,
                   help="output megapixels one replica holds at once (about 48 bytes each); larger requests get 413")
    p.add_argument("--body-idle-timeout", type=float, default=15.0, metavar="SECONDS",
                   help="a request body that stalls this long gets 408 (0: wait forever)")
    p.add_argument("--max-queued-requests", type=int, default=64,
                   help="requests Serve's proxy queues beyond --max-ongoing-requests; the rest get 503 with Retry-After (-1: no limit)")
    p.add_argument("--torch-threads", type=int, default=0, help="intra-op threads per replica (0: Ray's default)")
    return p.parse_args(argv)


def main() -> int:
    args = parse_args()
    setup_logging()
    limits = limits_from_args(args)
    options = check_options({
        "model": args.model,
        "tracking_uri": args.tracking_uri,
        "refresh_interval_s": args.refresh_interval,
        "allowed_models": args.allow_model,
        "max_models_per_replica": args.max_models_per_replica,
        "max_bytes": limits.max_bytes,
        "max_pixels": limits.max_pixels,
        "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_ms / 1000,
        "tile_size": args.tile_size,
        "batch_max_side": args.tile_size,
        "torch_threads": args.torch_threads,
        "deadline_s": args.deadline,
        "rate_mpx_s": args.rate_mpx_s,
        "memory_budget_mpx": args.memory_budget_mpx,
        "max_queued_requests": args.max_queued_requests,
        "body_idle_timeout_s": args.body_idle_timeout,
        "runtime": args.runtime,
        "num_replicas": args.replicas,
        "min_replicas": args.min_replicas,
        "max_replicas": args.max_replicas,
        "target_ongoing_requests": args.target_ongoing_requests,
        "max_ongoing_requests": args.max_ongoing_requests,
        "num_cpus": args.num_cpus,
        "num_gpus": 1.0 if args.gpu else 0.0,
    })
    run_server(options, host=args.host, port=args.port, api_token=os.environ.get("SRGAN_API_TOKEN") or None)
    return 0


if __name__ == "__main__":
    run_cli(main)
