"""Upscaler CPU/GPU throughput next to this machine's fp32 GEMM throughput, measured in one run.

    python benchmarks/upscaler_throughput.py [--device auto] [--lr-size 128] [--repeats 5]

Prints output megapixels per second for the paper SRResNet x4 (untiled, and tiled with the default
tile padding), the GEMM FLOP/s of a square fp32 matmul, and the ratio of achieved to GEMM FLOP/s.
The model's cost is counted from its conv layers (about 0.28 TFLOP per output megapixel).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from srgan.core.inference import Upscaler, UpscalerOptions, pick_device, tiled_work  # noqa: E402
from srgan.core.models import SRResNet  # noqa: E402


def conv_flops_per_output_mp(net: SRResNet) -> float:
    """FLOPs (2 x MACs) of every conv per output megapixel, from the layer shapes."""
    s = net.config.scale
    macs_per_lr_pixel = 0.0
    # Resolution of each conv relative to the LR input: 1 until the k-th x2 stage, then 4^k.
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            res = 1.0
            if name.startswith("upsample."):
                res = 4.0 ** int(name.split(".")[1])
            elif name == "tail":
                res = float(s * s)
            macs_per_lr_pixel += m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * res
    return 2 * macs_per_lr_pixel * 1e6 / (s * s)


def time_it(fn, repeats: int, sync) -> list[float]:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--lr-size", type=int, default=128, help="LR input side (output is 4x)")
    p.add_argument("--gemm-size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    device = pick_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)

    n = args.gemm_size
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    gemm_times = time_it(lambda: torch.mm(a, b), args.repeats * 4, sync)
    gemm_flops = 2 * n**3 / statistics.median(gemm_times)

    net = SRResNet()  # the paper model: 16 blocks, 64 features, x4
    flops_per_mp = conv_flops_per_output_mp(net)
    lq = torch.rand(1, 3, args.lr_size, args.lr_size)
    out_mp = (args.lr_size * 4) ** 2 / 1e6
    rows = []
    for label, tile in (("untiled", 4096), ("tiled (tile 64)", 64), (f"tiled (tile {args.lr_size // 2 + 8})", args.lr_size // 2 + 8)):
        up = Upscaler(net, options=UpscalerOptions(device=str(device), tile_size=tile))
        times = time_it(lambda: up.upscale_tensor(lq), args.repeats, sync)
        med = statistics.median(times)
        mps = out_mp / med
        work = tiled_work(args.lr_size, args.lr_size, tile=up.tile_size, overlap=up.options.tile_overlap, pad=up.tile_pad)
        rows.append({"run": label, "work": round(work, 2), "median_s": round(med, 4), "output_MP_per_s": round(mps, 4), "achieved_TFLOPs": round(mps * flops_per_mp / 1e12, 4), "ratio_to_gemm": round(mps * flops_per_mp / gemm_flops, 3)})

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    print(f"model: paper SRResNet x4, {flops_per_mp / 1e12:.3f} TFLOP per output MP; input {args.lr_size}x{args.lr_size} -> {out_mp:.3f} MP")
    print(f"fp32 GEMM {n}x{n}: median {statistics.median(gemm_times) * 1e3:.1f} ms = {gemm_flops / 1e12:.3f} TFLOP/s")
    print("work = pixels run through the network (tiles + context) per image pixel; TFLOP/s counts useful output only")
    print(f"{'run':<18}{'work':>6}{'median s':>10}{'out MP/s':>10}{'TFLOP/s':>10}{'/ GEMM':>8}")
    for r in rows:
        print(f"{r['run']:<18}{r['work']:>6.2f}{r['median_s']:>10.3f}{r['output_MP_per_s']:>10.3f}{r['achieved_TFLOPs']:>10.3f}{r['ratio_to_gemm']:>8.2f}")
    print(json.dumps({"device": name, "gemm_TFLOPs": round(gemm_flops / 1e12, 4), "rows": rows}))


if __name__ == "__main__":
    main()
