"""Bulk upscaling job (Ray Data + actor pool) next to a plain single-process loop, measured in one run.

    python benchmarks/bulk_throughput.py [--images 24] [--side 128] [--workers 2] [--blocks 16] [--features 64]

Both upscale the same folder of PNG crops of real photos and write PNGs (same relative keys):
- the baseline is one Python loop in this process: read, decode, Upscaler, encode, write, with all of
  torch's threads;
- the job is srgan.distributed.bulk.run_bulk_upscale with --workers actors sharing the machine's CPUs (each actor
  gets cpu_count / workers CPUs, so torch threads add up to the same total), timed end to end on an
  already running Ray (listing, actor start-up and model loading included);
then the job is run again to time a resume that has nothing left to do. Loop and job alternate
``--repeats`` times (fresh outputs each time; the machine's load drifts); the medians of output
megapixels per second and their ratio are printed. Joins RAY_ADDRESS if set, else starts a local Ray.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srgan.distributed.bulk import BulkUpscaleConfig, run_bulk_upscale  # noqa: E402
from srgan.core.checkpoint import save_generator  # noqa: E402
from srgan.core.images import decode_image, encode_image  # noqa: E402
from srgan.core.inference import Upscaler, UpscalerOptions  # noqa: E402
from srgan.core.models import SRResNet  # noqa: E402

PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg")


def make_inputs(folder: Path, count: int, side: int) -> None:
    """``count`` side x side PNG crops of scikit-image's photos, in nested folders."""
    import skimage.data

    root = Path(skimage.data.__file__).parent
    for i in range(count):
        arr = np.asarray(Image.open(root / PHOTOS[i % len(PHOTOS)]).convert("RGB"))
        y, x = (13 * i) % (arr.shape[0] - side), (29 * i) % (arr.shape[1] - side)
        path = folder / f"set{i % 3}" / f"img_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(arr[y : y + side, x : x + side])).save(path)


def plain_loop(upscaler: Upscaler, src: Path, dst: Path) -> tuple[float, int]:
    """The baseline: (seconds, output pixels)."""
    t0, pixels = time.perf_counter(), 0
    for path in sorted(src.rglob("*.png")):
        out = upscaler.upscale_image(decode_image(path.read_bytes()))
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(encode_image(out, "png"))
        pixels += out.size[0] * out.size[1]
    return time.perf_counter() - t0, pixels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--side", type=int, default=128, help="input side in pixels (output is 4x)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2, help="loop/job pairs, alternated")
    args = p.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    make_inputs(work / "in", args.images, args.side)
    torch.manual_seed(0)
    checkpoint = str(save_generator(work / "model", SRResNet(num_blocks=args.blocks, num_features=args.features)))
    gpu = torch.cuda.is_available()

    upscaler = Upscaler.from_checkpoint(checkpoint, options=UpscalerOptions())
    upscaler.upscale_image(decode_image((work / "in" / "set0" / "img_000.png").read_bytes()))  # warm-up

    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    else:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    cpus = ray.cluster_resources().get("CPU", 1.0)
    quiet = lambda line: None  # noqa: E731
    loop_runs, jobs = [], []
    for repeat in range(args.repeats):
        loop_runs.append(plain_loop(upscaler, work / "in", work / f"out-loop-{repeat}"))
        config = BulkUpscaleConfig(input=str(work / "in"), output=str(work / f"out-job-{repeat}"), model=checkpoint, workers=args.workers,
                                   gpu=gpu, num_cpus=max(0.25, (cpus - 0.5) / args.workers), batch_size=args.batch_size)
        jobs.append(run_bulk_upscale(config, report=quiet))
    rerun = run_bulk_upscale(config, report=quiet)
    ray.shutdown()

    loop_s = statistics.median(s for s, _ in loop_runs)
    loop_mps = loop_runs[0][1] / 1e6 / loop_s
    job_s = statistics.median(j.seconds for j in jobs)
    job_mps = jobs[0].output_megapixels / job_s
    device = torch.cuda.get_device_name() if gpu else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads in the loop"
    print(f"device: {device}; SRResNet {args.blocks} blocks x {args.features} features, x4; "
          f"{args.images} images {args.side}x{args.side} -> {jobs[0].output_megapixels:.2f} output MP; medians of {args.repeats} runs")
    print(f"{'run':<44}{'seconds':>9}{'out MP/s':>10}{'/ loop':>8}")
    print(f"{'plain loop (one process)':<44}{loop_s:>9.2f}{loop_mps:>10.3f}{1.0:>8.2f}")
    label = f"bulk job ({args.workers} actors x {config.num_cpus:.2f} CPU, end to end)"
    print(f"{label:<44}{job_s:>9.2f}{job_mps:>10.3f}{job_mps / loop_mps:>8.2f}")
    print(f"rerun (resume, nothing to do): skipped {rerun.skipped}, done {rerun.done}, {rerun.seconds:.2f} s")
    print(f"all runs: loop {[round(s, 2) for s, _ in loop_runs]} s, job {[round(j.seconds, 2) for j in jobs]} s")
    print(json.dumps({"device": device, "images": args.images, "side": args.side, "workers": args.workers, "repeats": args.repeats,
                      "loop_s": loop_s, "loop_mp_per_s": loop_mps, "job_s": job_s, "job_mp_per_s": job_mps,
                      "job_done": [j.done for j in jobs], "job_failed": [j.failed for j in jobs], "rerun_s": rerun.seconds, "rerun_skipped": rerun.skipped}))


if __name__ == "__main__":
    main()
