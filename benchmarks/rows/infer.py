"""Inference rows: the Upscaler against this machine's fp32 GEMM, tiled against untiled per unit of
work, and onnxruntime against torch (CPU). The paper SRResNet x4 (16 blocks, 64 features) with random
weights: speed does not depend on them. Both sides of a row alternate in one process (side_by_side).

Each side returns the GFLOP it did (counted from the conv layer shapes; for a tiled run the useful
output only), so side_by_side's rates are GFLOP/s. Work is measured, not assumed: a counting stand-in
for the generator adds up the LR pixels each forward pass of the Upscaler's tiling plan runs.
"""

from __future__ import annotations

import tempfile

import torch

from benchmarks.common import Row, Settings, side_by_side
from benchmarks.upscaler_throughput import conv_flops_per_output_mp
from srgan.core.inference import Upscaler, UpscalerOptions, weights_digest
from srgan.core.models import SRResNet


def _paper_net(s: Settings) -> SRResNet:
    if "net" not in s._cache:
        torch.manual_seed(0)
        s._cache["net"] = SRResNet().eval().requires_grad_(False)
    return s._cache["net"]


def _gflop(net: SRResNet, h: int, w: int) -> float:
    """GFLOP of one untiled pass over an h x w LR image."""
    return conv_flops_per_output_mp(net) * (h * w * net.config.scale**2) / 1e6 / 1e9


class _Counting:
    """A stand-in for the generator that counts the LR pixels each forward pass would run (tiles plus
    their context) and returns zeros: the Upscaler's tiling plan, without the network's time."""

    def __init__(self, net: SRResNet):
        self.config, self.receptive_radius = net.config, net.receptive_radius
        self.runtime, self.weights_digest, self.pixels = "torch", "n/a", 0

    def __call__(self, lq: torch.Tensor) -> torch.Tensor:
        n, _, h, w = lq.shape
        self.pixels += n * h * w
        s = self.config.scale
        return torch.zeros(n, 3, h * s, w * s)


def _plan_work(net: SRResNet, side: int, tile: int) -> float:
    """The work factor of the Upscaler's default tiling of a side x side image at ``tile``."""
    dry = _Counting(net)
    Upscaler(dry, options=UpscalerOptions(tile_size=tile)).upscale_tensor(torch.zeros(1, 3, side, side))
    return dry.pixels / (side * side)


def _gemm(n: int = 2048):
    a, b = torch.randn(n, n), torch.randn(n, n)

    def run() -> float:
        torch.mm(a, b)
        return 2 * n**3 / 1e9

    return run


def _upscale(up: Upscaler, lq: torch.Tensor, gflop: float):
    def run() -> float:
        up.upscale_tensor(lq)
        return gflop

    return run


def _row_efficiency(s: Settings) -> Row:
    net = _paper_net(s)
    side = 64 if s.quick else 128
    lq = torch.rand(1, 3, side, side)
    up = Upscaler(net, options=UpscalerOptions(device="cpu"))
    ours, gemm = side_by_side(_upscale(up, lq, _gflop(net, side, side)), _gemm(), s)
    ratio = ours / gemm
    return Row("infer-efficiency", f"{ours:.1f} GFLOP/s", f"{gemm:.1f} GFLOP/s (fp32 GEMM 2048^2)", ratio, ">= 0.6", ratio >= 0.6,
               f"paper SRResNet x4, {side}x{side} LR untiled, fp32 CPU, {torch.get_num_threads()} threads; torch.mm 2048x2048")


def _row_tiling(s: Settings) -> Row:
    """Tiled time per unit of work against untiled, on the same image; reports the work factor.

    The issue's case (tile 256 on 1024x1024 LR) has a 4096x4096 untiled output (about 13 GB of
    activations, over a minute a pass on 2 cores): both runs keep the default tile, 256: the full run
    on a 512x512 LR image (2x2 tiles of 256, 296-336 pixels with their context), the quick run on
    384x384 (2x2 tiles of 192, 232 with context; a 512x512 pass is 12 s on a slow day). The quick run
    used to take tile 64 on 128x128, a tile no default of the Upscaler's.
    """
    net = _paper_net(s)
    side, tile = (384, 256) if s.quick else (512, 256)
    lq = torch.rand(1, 3, side, side)
    gflop = _gflop(net, side, side)
    # Both sides run the network as the Upscaler prepares it (batch norm folded, channels_last). The
    # work is counted on a dry plan of the same tiling: a counting wrapper in the timed run would be
    # no nn.Module, and the Upscaler would run it unprepared (that made this row 0.54 on 2026-12-07).
    tiled = Upscaler(net, options=UpscalerOptions(device="cpu", tile_size=tile))
    untiled = Upscaler(net, options=UpscalerOptions(device="cpu", tile_size=side))
    work = _plan_work(net, side, tile)
    t_rate, u_rate = side_by_side(_upscale(tiled, lq, gflop), _upscale(untiled, lq, gflop), s)
    per_work = t_rate * work / u_rate  # (untiled time x work) / tiled time
    issue_work = _plan_work(net, 1024, 256)  # the issue's case, planned by the real Upscaler without the network
    return Row("infer-tiling", f"tiled {gflop / t_rate:.2f} s, work {work:.2f}", f"untiled {gflop / u_rate:.2f} s",
               per_work, ">= 0.9 per unit of work", per_work >= 0.9,
               f"paper SRResNet x4, {side}x{side} LR, tile {tile} (pad {tiled.tile_pad}, overlap {tiled.options.tile_overlap}) vs untiled, "
               f"{torch.get_num_threads()} threads; work = LR pixels run per image pixel; work at tile 256 on 1024x1024: {issue_work:.2f}")


def _row_onnxruntime(s: Settings) -> Row:
    from srgan.export import export_onnx, load_exported

    net = _paper_net(s)
    side = 64 if s.quick else 128
    lq = torch.rand(1, 3, side, side)
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(net, tmp, weights_digest=weights_digest(net))
        ort_up = Upscaler(load_exported(tmp))
    torch_up = Upscaler(net, options=UpscalerOptions(device="cpu"))
    gflop = _gflop(net, side, side)
    ort_rate, torch_rate = side_by_side(_upscale(ort_up, lq, gflop), _upscale(torch_up, lq, gflop), s)
    ratio = ort_rate / torch_rate
    return Row("infer-onnxruntime", f"{ort_rate:.1f} GFLOP/s ({side * side * 16 / 1e6 * ort_rate / gflop:.3f} out MP/s)",
               f"{torch_rate:.1f} GFLOP/s (torch)", ratio, ">= 1.0 to recommend it on CPU", ratio >= 1.0,
               f"paper SRResNet x4 exported in the row (dynamo, opset 18), {side}x{side} LR untiled, CPU, "
               f"{torch.get_num_threads()} threads each (onnxruntime intra-op = torch's)")


ROWS = {
    "infer-efficiency": _row_efficiency,
    "infer-tiling": _row_tiling,
    "infer-onnxruntime": _row_onnxruntime,
}
