"""Serve endpoint latency and throughput next to direct in-process Upscaler calls, measured in one run.

    python benchmarks/serve_latency.py [--blocks 16] [--features 64] [--requests 20] [--large-requests 5]
                                       [--model-requests 20] [--throughput-requests 32] [--clients 1,4,16]

A count of 0 skips that part (--model-requests 0 also deploys without a second model, as before the
allow-list existed, so the same script measures an older tree).

1. Latency, one client: for 128x128 and 512x512 inputs (crops of a real photo), each round times a
   direct call in this process (decode + Upscaler + PNG encode, the work the endpoint does) and then
   the same image through HTTP -> Serve proxy -> replica. Reports p50/p99 of both and their ratio.
   A third row sends the 128x128 input to a second model of the allow-list (the same weights in
   another checkpoint directory) with the ``serve_multiplexed_model_id`` header: the multiplexed path.
2. Throughput at 1, 4 and 16 concurrent clients (128x128 inputs), with batching (max_batch_size 8)
   and without (max_batch_size 1): requests/s, p50 latency and the mean batch size the replica reports,
   against the images/s of a direct in-process loop over the same images, timed just before each row.

The model is the paper SRResNet x4 (random weights: speed does not depend on them) unless --blocks /
--features say otherwise. One replica, given as many torch threads as this process uses, so that the
direct call and the replica compute with the same resources. Joins RAY_ADDRESS if set, else starts a
local Ray; Serve listens on a free port of 127.0.0.1 and is shut down at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srgan.core.checkpoint import save_generator  # noqa: E402
from srgan.core.images import decode_image, encode_image  # noqa: E402
from srgan.core.inference import Upscaler, UpscalerOptions  # noqa: E402
from srgan.core.models import SRResNet  # noqa: E402


def photo_png(side: int, offset: int = 0) -> bytes:
    """A side x side crop of scikit-image's astronaut photo (512x512), as PNG; tiled if side > 512."""
    import skimage.data

    arr = np.asarray(Image.open(Path(skimage.data.__file__).parent / "astronaut.png").convert("RGB"))
    arr = np.roll(arr, offset, axis=(0, 1))
    reps = -(-side // 512)
    arr = np.tile(arr, (reps, reps, 1))[:side, :side]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(checkpoint: str, *, threads: int, max_batch_size: int, allowed: list[str] = ()) -> None:
    from ray import serve

    from srgan.distributed.serving import build_app

    args = {"model": checkpoint, "refresh_interval_s": 0, "num_cpus": 1, "torch_threads": threads,
            "max_batch_size": max_batch_size, "batch_wait_timeout_s": 0.01, "max_ongoing_requests": 64}
    if allowed:
        args["allowed_models"] = list(allowed)
    serve.run(build_app(args), name="bench", route_prefix="/")


def direct_call(upscaler: Upscaler, data: bytes) -> bytes:
    return encode_image(upscaler.upscale_image(decode_image(data)), "png")


def latency_rounds(upscaler: Upscaler, client: httpx.Client, data: bytes, rounds: int, headers: dict[str, str] | None = None) -> tuple[list[float], list[float]]:
    """Alternate direct and served calls on the same image (one warm-up each); seconds per call."""
    direct_call(upscaler, data)
    client.post("/v1/upscale", content=data, headers=headers).raise_for_status()
    direct, served = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        direct_call(upscaler, data)
        direct.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        client.post("/v1/upscale", content=data, headers=headers).raise_for_status()
        served.append(time.perf_counter() - t0)
    return direct, served


def direct_rate(upscaler: Upscaler, bodies: list[bytes]) -> float:
    """Images per second of a plain in-process loop (decode, upscale, encode) over ``bodies``."""
    t0 = time.perf_counter()
    for data in bodies:
        direct_call(upscaler, data)
    return len(bodies) / (time.perf_counter() - t0)


async def throughput(url: str, bodies: list[bytes], clients: int, total: int) -> dict[str, float]:
    """``clients`` concurrent loops share ``total`` requests; returns req/s, p50 latency, mean batch size."""
    latencies, batch_sizes, next_index = [], [], iter(range(clients))  # first a warm-up: one request per client

    async def worker(client: httpx.AsyncClient) -> None:
        for i in next_index:
            t0 = time.perf_counter()
            resp = await client.post("/v1/upscale", content=bodies[i % len(bodies)])
            resp.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            batch_sizes.append(int(resp.headers["x-batch-size"]))

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))  # warm-up, not timed
        next_index = iter(range(total))
        latencies.clear()
        batch_sizes.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {"req_per_s": total / wall, "p50_s": percentile(latencies, 50), "mean_batch": statistics.mean(batch_sizes)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--requests", type=int, default=20, help="latency rounds for 128x128")
    p.add_argument("--large-requests", type=int, default=5, help="latency rounds for 512x512")
    p.add_argument("--model-requests", type=int, default=20, help="latency rounds for 128x128 to a second model (routing header)")
    p.add_argument("--throughput-requests", type=int, default=32, help="timed requests per throughput setting")
    p.add_argument("--clients", default="1,4,16")
    args = p.parse_args()

    import os

    import ray
    from ray import serve

    threads = torch.get_num_threads()
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    net = SRResNet(num_blocks=args.blocks, num_features=args.features)
    checkpoint = str(save_generator(folder / "model", net))
    second = str(save_generator(folder / "second", net))  # the same weights, as a second model of the allow-list
    upscaler = Upscaler.from_checkpoint(checkpoint, options=UpscalerOptions(device="cpu" if not torch.cuda.is_available() else "auto"))
    small, large = photo_png(128), photo_png(512)

    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    else:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    results: dict[str, object] = {"threads": threads, "model": f"SRResNet {args.blocks} blocks x {args.features} features, x4"}
    try:
        deploy(checkpoint, threads=threads, max_batch_size=8, allowed=[second] if args.model_requests else [])
        with httpx.Client(base_url=url, timeout=600) as client:
            latency = {}
            cases = (("128x128", small, args.requests, None), ("512x512", large, args.large_requests, None),
                     ("128 model", small, args.model_requests, {"serve_multiplexed_model_id": second}))
            for name, data, rounds, headers in (case for case in cases if case[2] > 0):
                direct, served = latency_rounds(upscaler, client, data, rounds, headers)
                latency[name] = {
                    "rounds": rounds,
                    "direct_p50_s": percentile(direct, 50), "direct_p99_s": percentile(direct, 99),
                    "serve_p50_s": percentile(served, 50), "serve_p99_s": percentile(served, 99),
                }
                latency[name]["p50_ratio"] = latency[name]["serve_p50_s"] / latency[name]["direct_p50_s"]
            results["latency"] = latency
        bodies = [photo_png(128, offset=17 * i) for i in range(8)]
        rows = []
        for batching, max_batch in (("on", 8), ("off", 1)) if args.throughput_requests else ():
            deploy(checkpoint, threads=threads, max_batch_size=max_batch)
            for clients in (int(c) for c in args.clients.split(",")):
                direct = direct_rate(upscaler, bodies)  # measured next to each row: the machine's load drifts
                row = asyncio.run(throughput(url, bodies, clients, args.throughput_requests))
                rows.append({"batching": batching, "clients": clients, **row, "direct_img_per_s": direct, "ratio_to_direct": row["req_per_s"] / direct})
        results["throughput"] = rows
    finally:
        serve.shutdown()
        ray.shutdown()

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{platform.processor() or platform.machine()} CPU, {threads} torch threads"
    print(f"device: {device}; {results['model']}; one replica with {threads} threads")
    print(f"{'input':<10}{'rounds':>7}{'direct p50':>12}{'direct p99':>12}{'serve p50':>11}{'serve p99':>11}{'p50 ratio':>11}")
    for name, row in results["latency"].items():
        print(f"{name:<10}{row['rounds']:>7}{row['direct_p50_s']:>12.3f}{row['direct_p99_s']:>12.3f}{row['serve_p50_s']:>11.3f}{row['serve_p99_s']:>11.3f}{row['p50_ratio']:>11.2f}")
    print(f"throughput, 128x128 inputs, {args.throughput_requests} requests per row; direct = an in-process loop over 8 of them just before")
    print(f"{'batching':<10}{'clients':>8}{'req/s':>9}{'p50 s':>9}{'mean batch':>12}{'direct img/s':>14}{'/ direct':>10}")
    for r in rows:
        print(f"{r['batching']:<10}{r['clients']:>8}{r['req_per_s']:>9.2f}{r['p50_s']:>9.3f}{r['mean_batch']:>12.2f}{r['direct_img_per_s']:>14.2f}{r['ratio_to_direct']:>10.2f}")
    print(json.dumps({"device": device, **results}))


if __name__ == "__main__":
    main()
