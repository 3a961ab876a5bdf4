"""GPU rows (``python benchmarks/run.py --gpu``): training images/s and model FLOP utilisation, Upscaler
output MP/s, nvjpeg decoding. Every figure carries ``torch.cuda.get_device_name()``.

Runs on a bare GPU machine with torch and torchvision only: this module imports srgan.core (plain
torch) and benchmarks.common, never Ray, MLflow, pydantic, pyarrow or boto3. Without CUDA every row
still runs, on the CPU with tiny sizes, and says so (a check that the script works, not a figure).

The whole set is kept under 4 minutes by a time budget (``SRGAN_GPU_BUDGET_S``, default 200 s): the
configurations run most important first (bf16 eager, fp32 eager, then torch.compile, which costs tens
of seconds of compilation each), and those that no longer fit are listed as not run.

Model FLOPs are counted, not assumed: ``torch.utils.flop_counter.FlopCounterMode`` over one eager
step (forward and backward of every matmul and convolution, the VGG and D included in the SRGAN
step). Utilisation is reported against the datasheet's dense peak when the card is known (bf16;
fp32 convolutions run as TF32, PyTorch's cuDNN default, so against the TF32 peak) and, always, against
a GEMM measured on the same device in the same run (the row's ratio).
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks.common import Row, Settings, machine

# Dense (no sparsity) peak TFLOP/s from the vendors' datasheets: (bf16, tf32).
DATASHEET_PEAKS = {
    "H200": (989.0, 494.7),
    "H100 SXM": (989.0, 494.7),
    "H100 PCIe": (756.0, 378.0),
    "H100": (989.0, 494.7),
    "A100": (312.0, 156.0),
    "L40S": (362.1, 181.0),
    "L4": (121.0, 60.0),
    "A10G": (70.0, 35.0),
}

_started = time.perf_counter()


def _budget_left() -> float:
    return float(os.environ.get("SRGAN_GPU_BUDGET_S", "200")) - (time.perf_counter() - _started)


@dataclass(frozen=True)
class Device:
    torch: torch.device
    name: str
    cuda: bool

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def device() -> Device:
    if torch.cuda.is_available():
        return Device(torch.device("cuda"), torch.cuda.get_device_name(), True)
    return Device(torch.device("cpu"), f"no CUDA: CPU fallback, tiny sizes ({machine()})", False)


def datasheet_peak(name: str, dtype: str) -> float | None:
    """TFLOP/s from DATASHEET_PEAKS for the first name contained in the device's name."""
    for key, (bf16, tf32) in DATASHEET_PEAKS.items():
        if key.lower() in name.lower():
            return bf16 if dtype == "bf16" else tf32
    return None


def timed_rate(step: Callable[[], int], dev: Device, seconds: float, warmup: int | None = None) -> float:
    """Items per second of ``step`` (returns how many items it did) over at least ``seconds``, after
    ``warmup`` untimed calls (default 2 on CUDA, 1 on the CPU fallback); the device is synchronised at both ends."""
    for _ in range(warmup if warmup is not None else (2 if dev.cuda else 1)):
        step()
    dev.sync()
    t0, n = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - t0) < seconds or n == 0:
        n += step()
        if n and elapsed >= seconds:
            break
    dev.sync()
    return n / (time.perf_counter() - t0)


def gemm_tflops(dev: Device, dtype: str, seconds: float) -> float:
    """The device's measured matmul rate at ``dtype`` (fp32: TF32 allowed, as cuDNN's convolutions are)."""
    n = 8192 if dev.cuda else 512
    torch_dtype = torch.bfloat16 if dtype == "bf16" and dev.cuda else torch.float32
    a = torch.randn(n, n, device=dev.torch, dtype=torch_dtype)
    b = torch.randn(n, n, device=dev.torch, dtype=torch_dtype)
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        rate = timed_rate(lambda: (torch.mm(a, b), 1)[1], dev, seconds)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return rate * 2 * n**3 / 1e12


# ------------------------------------------------------------------------------------------ training


@dataclass(frozen=True)
class TrainCase:
    phase: str  # "srresnet" (pixel MSE) or "srgan" (VGG54 + adversarial, D step included)
    batch: int
    dtype: str  # "bf16" or "fp32"
    compiled: bool

    @property
    def name(self) -> str:
        return f"gpu-train-{self.phase}-b{self.batch}-{self.dtype}-{'compile' if self.compiled else 'eager'}"


def _train_step(case: TrainCase, dev: Device, crop: int) -> tuple[Callable[[], int], Callable[[], None]]:
    """(one training step on fresh nets -> batch size, a way to run it once eagerly under the FLOP counter)."""
    from srgan.core.engine import StepConfig, compile_module, make_optimizer, OptimConfig, srgan_step, srresnet_step
    from srgan.core.losses import LossConfig, VGGContentLoss
    from srgan.core.models import Discriminator, SRResNet

    torch.manual_seed(0)
    config = StepConfig(scale=4, loss=LossConfig(), bf16=case.dtype == "bf16" and dev.cuda)
    gt = torch.randint(0, 256, (case.batch, 3, crop, crop), dtype=torch.uint8, device=dev.torch)
    net_g = SRResNet().to(dev.torch)  # the paper's: 16 blocks, 64 features, x4
    opt_g = make_optimizer(net_g, OptimConfig())
    g = compile_module(net_g) if case.compiled else net_g
    if case.phase == "srresnet":
        def step() -> int:
            srresnet_step(g, opt_g, gt, config=config)
            return case.batch

        def eager() -> None:
            srresnet_step(net_g, opt_g, gt, config=config)
        return step, eager
    net_d = Discriminator().to(dev.torch)
    opt_d = make_optimizer(net_d, OptimConfig())
    content = VGGContentLoss(layer="relu5_4", state_dict=None).to(dev.torch)  # random weights: same FLOPs
    d = compile_module(net_d) if case.compiled else net_d

    def step() -> int:
        srgan_step(g, d, opt_g, opt_d, gt, content_loss=content, config=config)
        return case.batch

    def eager() -> None:
        srgan_step(net_g, net_d, opt_g, opt_d, gt, content_loss=content, config=config)
    return step, eager


def count_flops(run_once: Callable[[], None]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run_once()
    return counter.get_total_flops()


def train_flops_per_image(phase: str, batch: int, crop: int = 96) -> float:
    """Model FLOPs per training image (forward + backward, counted on the CPU: the count does not depend
    on the device). docs/sizing.md's GPU demand estimate uses it."""
    cpu = Device(torch.device("cpu"), "cpu", False)
    _, eager = _train_step(TrainCase(phase, batch, "fp32", False), cpu, crop)
    return count_flops(eager) / batch


def _train_cases(dev: Device) -> list[TrainCase]:
    batches = (16, 128) if dev.cuda else (2, 4)
    compiles = (False, True) if dev.cuda else (False,)  # the CPU fallback checks the script, not inductor
    return [TrainCase(phase, b, dtype, c) for c in compiles for dtype in ("bf16", "fp32") for phase in ("srresnet", "srgan") for b in batches]


def _rows_train(s: Settings) -> list[Row]:
    dev = device()
    crop = 96 if dev.cuda else 16  # D takes >= 16
    seconds = 2.0 if dev.cuda else 0.3
    gemm = {dtype: gemm_tflops(dev, dtype, seconds) for dtype in ("bf16", "fp32")}
    flops: dict[tuple[str, int], int] = {}
    rows = []
    for case in _train_cases(dev):
        need = 75.0 if case.compiled else 10.0  # compilation of G (and D) takes tens of seconds
        if _budget_left() < need:
            rows.append(Row(case.name, "not run", "", float("nan"), "report", True, f"time budget: {_budget_left():.0f} s left, needs ~{need:.0f} s; {dev.name}"))
            continue
        try:
            step, eager = _train_step(case, dev, crop)
            if (case.phase, case.batch) not in flops:
                flops[(case.phase, case.batch)] = count_flops(eager)
            t0 = time.perf_counter()
            step()  # compiles, when compiled
            first = time.perf_counter() - t0
            rate = timed_rate(step, dev, seconds)
        except Exception as exc:  # noqa: BLE001 - one failed configuration (out of memory, no compiler) is reported, the rest run
            rows.append(Row(case.name, "failed", "", float("nan"), "report", False, f"{type(exc).__name__}: {str(exc)[:200]}; {dev.name}"))
            continue
        finally:
            if case.compiled:
                # Each case compiles fresh: without a reset, dynamo's per-code-object cache limit (8) and
                # its automatic dynamic shapes would make later cases measure something else.
                torch._dynamo.reset()
            if dev.cuda:
                torch.cuda.empty_cache()
        achieved = rate / case.batch * flops[(case.phase, case.batch)] / 1e12
        peak = datasheet_peak(dev.name, case.dtype) if dev.cuda else None
        mfu = f", MFU {achieved / peak:.1%} of {peak:.0f}" if peak else ""
        rows.append(Row(case.name, f"{rate:.3g} img/s, {achieved:.3g} TFLOP/s{mfu}", f"{gemm[case.dtype]:.3g} TFLOP/s (GEMM, {case.dtype})",
                        achieved / gemm[case.dtype], "report", True,
                        f"{dev.name}; {case.phase} step, batch {case.batch} of {crop}x{crop}, x4, paper nets; "
                        f"{flops[(case.phase, case.batch)] / case.batch / 1e9:.3g} GFLOP/img (counted); first step {first:.1f} s"))
    return rows


# ------------------------------------------------------------------------------------------ inference


def _rows_upscale(s: Settings) -> list[Row]:
    from srgan.core.inference import Upscaler, UpscalerOptions
    from srgan.core.models import SRResNet

    dev = device()
    side = 256 if dev.cuda else 16  # LR side: 1024x1024 output on the GPU
    seconds = 2.0 if dev.cuda else 0.3
    torch.manual_seed(0)
    net = SRResNet().eval()
    lq = torch.rand(1, 3, side, side)
    rows = []
    for precision in ("bf16", "fp32"):
        up = Upscaler(net, options=UpscalerOptions(device=str(dev.torch), precision=precision if dev.cuda else "fp32", tile_size=max(side, 64)))
        out_mp = (4 * side) ** 2 / 1e6
        rate = timed_rate(lambda: (up.upscale_tensor(lq), 1)[1], dev, seconds)
        note = "" if dev.cuda else " (bf16 autocast is CUDA only: fp32 ran)"
        rows.append(Row(f"gpu-upscale-{precision}", f"{rate * out_mp:.3g} output MP/s", "", float("nan"), "report", True,
                        f"{dev.name}; paper SRResNet x4, {side}x{side} -> {4 * side}x{4 * side}, batch 1, host to host{note}"))
    return rows


def _jpegs(count: int) -> tuple[list[bytes], str]:
    """500x375 JPEG q90s: the shared ImageNet-like photos when present, else synthetic photo-like ones
    (a bare GPU machine has no data sets)."""
    from PIL import Image

    try:
        from benchmarks.common import imagenet_like

        return imagenet_like(count)["jpeg"], "ImageNet-like 500x375 JPEG q90"
    except (SystemExit, OSError):
        pass
    blobs = []
    for i in range(count):
        g = torch.Generator().manual_seed(i)
        base = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=g), size=(375, 500), mode="bicubic", align_corners=False)
        noise = 0.08 * torch.randn(1, 3, 375, 500, generator=g)
        arr = ((base + noise).clamp(0, 1)[0].permute(1, 2, 0) * 255).to(torch.uint8).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    return blobs, "synthetic 500x375 JPEG q90 (no shared data sets here)"


def _rows_nvjpeg(s: Settings) -> list[Row]:
    dev = device()
    try:
        from torchvision.io import decode_jpeg
    except ImportError as exc:
        return [Row("gpu-nvjpeg", "not run", "", float("nan"), "report", False, f"torchvision: {exc}; {dev.name}")]
    from PIL import Image

    blobs, what = _jpegs(64 if dev.cuda else 8)
    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    seconds = 2.0 if dev.cuda else 0.3
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu = timed_rate(lambda: (decode_jpeg(datas), len(datas))[1], dev, seconds)

        def pil() -> int:
            for b in blobs:
                with Image.open(io.BytesIO(b)) as im:
                    im.load()
            return len(blobs)
        pil_rate = timed_rate(pil, dev, seconds)
    finally:
        torch.set_num_threads(threads)
    if not dev.cuda:
        return [Row("gpu-nvjpeg", "not run (no CUDA)", f"{cpu:.0f} img/s (torchvision CPU, 1 thread)", float("nan"), "report", True,
                    f"{len(blobs)} {what}; PIL decode {pil_rate:.0f} img/s on 1 core; {dev.name}")]
    gpu = timed_rate(lambda: (decode_jpeg(datas, device="cuda"), len(datas))[1], dev, seconds)
    return [Row("gpu-nvjpeg", f"{gpu:.0f} img/s (nvjpeg, batches of {len(datas)})", f"{cpu:.0f} img/s (torchvision CPU decoder, 1 core)", gpu / cpu,
                "report", True, f"{dev.name}; {len(blobs)} {what}; = {gpu / cpu:.0f} CPU cores of libjpeg-turbo, {gpu / pil_rate:.0f} of PIL ({pil_rate:.0f} img/s)")]


ROWS = {
    "gpu-upscale": _rows_upscale,
    "gpu-nvjpeg": _rows_nvjpeg,
    "gpu-train": _rows_train,
}
