"""The Ray Serve endpoint over HTTP against direct Upscaler calls in this process (local Ray, 2 CPUs).

- serve-latency: p50 of POST /v1/upscale for 128x128 and 256x256 inputs (PNG crops of a photo), each
  round a direct call (decode + Upscaler + PNG encode, the endpoint's work) then the served one.
- serve-throughput: 16 concurrent clients, 128x128 inputs, requests/s against the direct loop's
  images/s timed just before and just after (the machine's load drifts).
One replica with as many torch threads as the direct call uses. The endpoint is deployed through its
public builder (srgan.distributed.serving.build_app) with the few options every version takes; the
helpers are benchmarks/serve_latency.py's (the longer stand-alone run).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from benchmarks.common import Row, Settings, demo_generator, free_port, local_ray, torch_threads


def _deploy(checkpoint: str, threads: int, max_batch_size: int) -> None:
    from ray import serve

    from srgan.distributed.serving import build_app

    args = {"model": checkpoint, "refresh_interval_s": 0, "num_cpus": 1, "torch_threads": threads,
            "max_batch_size": max_batch_size, "batch_wait_timeout_s": 0.01, "max_ongoing_requests": 64}
    serve.run(build_app(args), name="bench-rows", route_prefix="/")


def _serve_session(s: Settings):
    """(checkpoint, direct Upscaler, label) of the model the rows use: the demo generator (quick) or
    the paper SRResNet (full), random weights (speed does not depend on them)."""
    import torch

    from srgan.core.checkpoint import save_generator
    from srgan.core.inference import Upscaler, UpscalerOptions
    from srgan.core.models import SRResNet

    folder = Path(tempfile.mkdtemp(prefix="bench-serve-rows-"))
    torch.manual_seed(0)
    net = demo_generator() if s.quick else SRResNet()
    checkpoint = str(save_generator(folder / "model", net))
    label = "demo generator (8 blocks, 64 features, bicubic skip)" if s.quick else "paper SRResNet x4"
    return checkpoint, Upscaler.from_checkpoint(checkpoint, options=UpscalerOptions(device="cpu")), label


def _rows(s: Settings) -> list[Row]:
    import httpx
    from ray import serve

    from benchmarks.serve_latency import direct_rate, latency_rounds, percentile, photo_png, throughput

    threads = 2
    rounds = {128: 6 if s.quick else 20, 256: 3 if s.quick else 8}
    total = 32 if s.quick else 64
    checkpoint, upscaler, label = _serve_session(s)
    rows = []
    with torch_threads(threads), local_ray(num_cpus=2):  # the replica reserves 1; proxy and controller reserve none
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        try:
            _deploy(checkpoint, threads, max_batch_size=8)
            with httpx.Client(base_url=url, timeout=600) as client:
                for side in (128, 256):
                    direct, served = latency_rounds(upscaler, client, photo_png(side), rounds[side])
                    d50, s50 = percentile(direct, 50), percentile(served, 50)
                    rows.append(Row(f"serve-latency-{side}", f"p50 {s50 * 1e3:.0f} ms (HTTP, p99 {percentile(served, 99) * 1e3:.0f})",
                                    f"p50 {d50 * 1e3:.0f} ms (direct, p99 {percentile(direct, 99) * 1e3:.0f})", s50 / d50, "<= 1.15", s50 / d50 <= 1.15,
                                    f"{side}x{side} PNG -> {4 * side}x{4 * side} PNG, {label}, {rounds[side]} alternating rounds, 1 replica, {threads} torch threads both sides"))
            bodies = [photo_png(128, offset=17 * i) for i in range(8)]
            before = direct_rate(upscaler, bodies)
            got = asyncio.run(throughput(url, bodies, 16, total))
            after = direct_rate(upscaler, bodies)
            direct = (before + after) / 2
            ratio = got["req_per_s"] / direct
            rows.append(Row("serve-throughput", f"{got['req_per_s']:.2f} req/s (16 clients, mean batch {got['mean_batch']:.1f})",
                            f"{direct:.2f} img/s (direct loop, {before:.2f} before / {after:.2f} after)", ratio, ">= 0.9", ratio >= 0.9,
                            f"128x128 PNGs, {label}, {total} timed requests after one per client, max_batch_size 8, 1 replica, {threads} torch threads"))
        finally:
            serve.shutdown()
    return rows


ROWS = {
    "serve-latency": _rows,  # also serve-throughput (one deployment)
}
ALIASES = {"serve-throughput": "serve-latency"}
