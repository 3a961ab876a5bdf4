"""Bulk upscaling job (Ray Data + actor pool) next to a plain single-process loop: the suite's ``bulk``
row (benchmarks/rows/bulk.py) with its sizes on the command line.

    python benchmarks/bulk_throughput.py [--images 48] [--side 128] [--workers 2] [--blocks 16] [--features 64] [--repeats 3]

Both upscale the same folder of PNG crops of real photos and write PNGs (same relative keys): the
baseline is one Python loop in this process (read, decode, Upscaler, encode, write); the job is
srgan.distributed.bulk.run_bulk_upscale on this row's own local Ray (2 CPUs unless --cpus), timed end
to end (listing, actor start-up and model loading included). A one-image job measures the fixed
start-up, and a rerun with nothing left to do times a resume. Prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.rows.bulk import measure_bulk  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--side", type=int, default=128, help="input side in pixels (output is 4x)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="loop/job pairs, alternated")
    args = p.parse_args()

    import torch

    from srgan.core.checkpoint import save_generator
    from srgan.core.models import SRResNet

    torch.manual_seed(0)
    checkpoint = str(save_generator(Path(tempfile.mkdtemp(prefix="bench-bulk-model-")) / "model",
                                    SRResNet(num_blocks=args.blocks, num_features=args.features)))
    m = measure_bulk(args.images, args.side, args.workers, args.repeats, checkpoint=checkpoint, cpus=args.cpus)
    print(json.dumps({**m, "job_over_loop": m["job_mp_s"] / m["loop_mp_s"], "model": f"SRResNet {args.blocks} x {args.features}"}, indent=1))


if __name__ == "__main__":
    main()
