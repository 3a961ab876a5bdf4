"""The training engine in plain PyTorch: the SRResNet and SRGAN steps, EMA, learning-rate schedule,
validation.

No Ray here: ``srgan.distributed.trainer`` (the Ray Train edge) calls these functions on each worker, and tests call
them directly. State passes through arguments and return values.

Batches arrive as uint8 HR crops ``gt_u8`` (N, 3, crop, crop) on the device; the LR input is made
here with :func:`srgan.core.degrade.degrade` on the uint8 path (the exact MATLAB semantics that made the
evaluation sets), so training and evaluation see the same degradation, and only HR crops cross the
network from Ray Data.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from srgan.core.degrade import bicubic_upscale, degrade
from srgan.core.evaluation import DatasetScore, bicubic_model, evaluate_dataset, upscaler_model
from srgan.core.losses import LossConfig, VGGContentLoss, discriminator_loss, perceptual_loss, pixel_loss
from srgan.core.ranges import uint8_to_unit, unit_to_signed
from srgan.errors import ConfigError

__all__ = [
    "OptimConfig",
    "StepConfig",
    "make_pair",
    "make_optimizer",
    "lr_at",
    "set_lr",
    "srresnet_step",
    "srgan_step",
    "set_requires_grad",
    "ema_update",
    "make_ema",
    "validate",
    "ValidationResult",
    "comparison_grid",
    "unwrap",
    "DeviceMeans",
    "compile_module",
]


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4  # Adam learning rate (the paper: 1e-4)
    beta1: float = 0.9
    beta2: float = 0.999
    lr_decay_step: int = 0  # 0 = constant; else lr x lr_decay_factor from this step on (SRGAN: 1e5)
    lr_decay_factor: float = 0.1

    def validate(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be > 0, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ConfigError("optim.beta1 and optim.beta2 must be in [0, 1)")
        if self.lr_decay_step < 0 or not self.lr_decay_factor > 0:
            raise ConfigError("optim.lr_decay_step must be >= 0 and optim.lr_decay_factor > 0")


@dataclass(frozen=True)
class StepConfig:
    """What one training step needs from a run's configuration (``srgan.config.Config.step``)."""

    scale: int = 4
    loss: LossConfig = field(default_factory=LossConfig)  # loss weights, next to each loss
    bf16: bool = False  # bf16 autocast of the forward passes
    channels_last: bool = False


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DDP / torch.compile wrappers."""
    while True:
        if hasattr(module, "module"):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def _without_ddp(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper, keeping a torch.compile wrapper (the frozen-D forward of the G
    step then runs compiled too)."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def compile_module(net: nn.Module, *, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` of a network (``train.compile``), before DDP wraps it: DDP then hooks the same
    parameters, :func:`unwrap` still finds the plain module (checkpoints keep their keys), and the EMA
    and validation copies stay eager (validation images change shape, which would recompile).
    ``backend="aot_eager"`` traces the same graphs without generating kernels (fast tests)."""
    return torch.compile(net, backend=backend)


def make_pair(gt_u8: Tensor, scale: int) -> tuple[Tensor, Tensor]:
    """uint8 HR crops (N, 3, H, W) -> (``lq`` [0, 1] (N, 3, H/s, W/s), ``gt`` [-1, 1] (N, 3, H, W))."""
    lq = uint8_to_unit(degrade(gt_u8, scale))
    gt = unit_to_signed(uint8_to_unit(gt_u8))
    return lq, gt


def make_optimizer(net: nn.Module, cfg: OptimConfig) -> torch.optim.Adam:
    return torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def lr_at(step: int, cfg: OptimConfig) -> float:
    """The learning rate for optimiser step ``step`` (1-based): constant, then one decay if configured."""
    if cfg.lr_decay_step and step > cfg.lr_decay_step:
        return cfg.lr * cfg.lr_decay_factor
    return cfg.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def srresnet_step(net_g: nn.Module, optimizer: torch.optim.Optimizer, gt_u8: Tensor, *, config: StepConfig) -> dict[str, Tensor]:
    """One MSE step on a batch of uint8 HR crops; returns the loss as a detached 0-d tensor on the
    device. Nothing here waits for the device: the host queues the next step while this one runs, and
    the caller reads losses at log steps only (:class:`DeviceMeans`)."""
    lq, gt = make_pair(gt_u8, config.scale)
    if config.channels_last:
        lq = lq.contiguous(memory_format=torch.channels_last)
    with _autocast(gt.device, config.bf16):
        sr = net_g(lq)
    loss = config.loss.pixel_weight * pixel_loss(sr.float(), gt)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.detach()}


def set_requires_grad(net: nn.Module, flag: bool) -> None:
    for p in net.parameters():
        p.requires_grad_(flag)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def srgan_step(
    net_g: nn.Module,
    net_d: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    gt_u8: Tensor,
    *,
    content_loss: VGGContentLoss,
    config: StepConfig,
) -> dict[str, Tensor]:
    """One SRGAN iteration on uint8 HR crops: a D step (real vs generated), then a G step with D frozen.

    DDP: ``net_d`` is called through its wrapper only in the D step (two forwards, one backward, so
    every D parameter gets its gradient once and DDP's all-reduce completes). The G step calls the
    plain module inside with D's parameters frozen: D gets no gradient and no all-reduce is expected,
    while the gradient flows through D into ``sr`` and G's DDP all-reduce runs as usual.
    Returns detached 0-d tensors on the device (no host synchronisation): G's total/content/adversarial
    losses, D's loss, and the mean probabilities D(x) (real) and D(G(z)) (generated, before this step's
    D update).
    """
    lq, gt = make_pair(gt_u8, config.scale)  # (N, 3, h, w) [0, 1], (N, 3, H, W) [-1, 1]
    if config.channels_last:
        lq = lq.contiguous(memory_format=torch.channels_last)
    autocast = _autocast(gt.device, config.bf16)
    with autocast:
        sr = net_g(lq)  # (N, 3, H, W) [-1, 1]

    # D step: real crops vs G's output (detached: no gradient into G here).
    set_requires_grad(net_d, True)
    with autocast:
        real_logits = net_d(gt).float()  # (N,)
        fake_logits = net_d(sr.detach()).float()  # (N,)
    loss_d = discriminator_loss(real_logits, fake_logits)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    # G step: content (VGG) + 1e-3 x adversarial through the frozen, unwrapped D.
    frozen_d = _without_ddp(net_d)
    set_requires_grad(frozen_d, False)
    with autocast:
        terms = perceptual_loss(sr.float(), gt, frozen_d(sr).float(), content_loss=content_loss, config=config.loss)
    opt_g.zero_grad(set_to_none=True)
    terms["total"].backward()
    opt_g.step()
    set_requires_grad(frozen_d, True)

    out = {
        "loss_g": terms["total"],
        "loss_g_content": terms["content"],
        "loss_g_adversarial": terms["adversarial"],
        "loss_d": loss_d,
        "d_real": torch.sigmoid(real_logits).mean(),
        "d_fake": torch.sigmoid(fake_logits).mean(),
    }
    return {k: v.detach() for k, v in out.items()}


class DeviceMeans:
    """Running sums of the steps' losses, kept on their device.

    ``add`` queues one small kernel and never waits for the device; ``sums`` hands back the (K,) sums
    for the caller to all-reduce and read once per log line. Keys are fixed by the first ``add``."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._sums: Tensor | None = None  # (K,) float32, on the losses' device
        self.count = 0

    def add(self, values: dict[str, Tensor]) -> None:
        if self._sums is None:
            self.keys = sorted(values)
        v = torch.stack([values[k].float() for k in self.keys])  # (K,)
        self._sums = v if self._sums is None else self._sums + v
        self.count += 1

    def sums(self) -> Tensor:
        """(K,) sums since the last :meth:`reset`, still on the device."""
        if self._sums is None:
            raise RuntimeError("no values added since the last reset")
        return self._sums

    def reset(self) -> None:
        self._sums, self.count = None, 0


def make_ema(net: nn.Module) -> nn.Module:
    """A frozen copy of ``net`` that :func:`ema_update` keeps as an exponential moving average."""
    ema = copy.deepcopy(unwrap(net)).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * net, for parameters; buffers (BN statistics) are copied.

    One fused ``_foreach`` kernel per dtype and device instead of a Python loop of small kernels (the
    paper model has 100+ parameter tensors, and this runs every step)."""
    src = unwrap(net)
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in src.parameters()], 1.0 - decay)
    torch._foreach_copy_(list(ema.buffers()), list(src.buffers()))


@dataclass
class ValidationResult:
    score: DatasetScore
    bicubic: DatasetScore | None
    grid: np.ndarray | None  # (H, W, 3) uint8: rows of LR | bicubic | SR | HR crops
    content_distance: float | None = None  # mean VGG content loss of SR vs HR (with ``content_loss``)


def validate(
    net_g: nn.Module,
    val_dir: str,
    *,
    scale: int,
    use_degrade: bool,
    with_bicubic: bool,
    max_images: int = 0,
    grid_images: int = 3,
    content_loss: VGGContentLoss | None = None,
) -> ValidationResult:
    """Score a copy of ``net_g`` (in eval mode, on its own device) on a validation directory.

    A copy is evaluated so that the caller's module keeps its training mode and gradients. With
    ``content_loss`` the result also has the mean VGG feature distance between SR and HR (the same
    measure as the training content loss, on whole 8-bit images): the SRGAN phase selects by it.
    """
    from srgan.core.inference import Upscaler, UpscalerOptions

    net = copy.deepcopy(unwrap(net_g))
    device = next(net.parameters()).device
    upscaler = Upscaler(net, options=UpscalerOptions(device=str(device)))
    model = upscaler_model(upscaler)
    samples: list[tuple[Tensor, Tensor, Tensor]] = []

    def keep_sample(lq: Tensor) -> Tensor:
        sr = model(lq)
        if len(samples) < grid_images:
            samples.append((lq, sr, bicubic_upscale(lq, scale)))
        return sr

    distances: list[float] = []

    @torch.no_grad()
    def measure(sr_u8: Tensor, gt_u8: Tensor) -> None:
        to_signed = lambda t: unit_to_signed(uint8_to_unit(t)).unsqueeze(0).to(device)  # noqa: E731
        distances.append(float(content_loss(to_signed(sr_u8), to_signed(gt_u8))))

    on_pair = measure if content_loss is not None else None
    score = evaluate_dataset(keep_sample, val_dir, scale=scale, use_degrade=use_degrade, model_name="net_g", max_images=max_images, on_pair=on_pair)
    bicubic = None
    if with_bicubic:
        bicubic = evaluate_dataset(bicubic_model(scale), val_dir, scale=scale, use_degrade=use_degrade, model_name="bicubic", max_images=max_images)
    grid = comparison_grid(samples, val_dir, scale=scale, use_degrade=use_degrade)
    content_distance = sum(distances) / len(distances) if distances else None
    return ValidationResult(score=score, bicubic=bicubic, grid=grid, content_distance=content_distance)


def comparison_grid(samples: list[tuple[Tensor, Tensor, Tensor]], val_dir: str, *, scale: int, use_degrade: bool, crop: int = 128) -> np.ndarray | None:
    """One row per sample: LR (nearest-neighbour enlarged) | bicubic | SR | HR, centre crops of ``crop`` px."""
    from srgan.core.evaluation import find_pairs, read_uint8

    if not samples:
        return None
    pairs = find_pairs(val_dir, scale=scale, use_degrade=use_degrade)
    rows = []
    for (lq, sr, bic), pair in zip(samples, pairs):
        gt = read_uint8(pair.hr_path)[:, : sr.shape[-2], : sr.shape[-1]]
        h, w = sr.shape[-2:]
        size = min(crop, h, w) // scale * scale
        y0, x0 = (h - size) // 2 // scale * scale, (w - size) // 2 // scale * scale
        window = (slice(None), slice(y0, y0 + size), slice(x0, x0 + size))
        lq_big = lq.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
        tiles = [t[window] for t in (lq_big, bic, sr, gt)]
        rows.append(torch.cat(tiles, dim=-1))
    width = max(r.shape[-1] for r in rows)
    rows = [torch.nn.functional.pad(r, (0, width - r.shape[-1])) for r in rows]
    return torch.cat(rows, dim=-2).permute(1, 2, 0).contiguous().numpy()


def start_early(iterator: Iterator) -> Iterator:
    """``iterator``, its first item already being fetched on a thread: a data pipeline that takes seconds
    to start (Ray Data's read tasks and decode workers) warms up while the caller builds its nets and
    restores a checkpoint. The source is only ever advanced by one thread at a time; an error in the
    first fetch is raised at the first ``next()``, as it would have been without this."""
    import threading

    first: dict = {}

    def fetch() -> None:
        try:
            first["item"] = next(iterator)
        except BaseException as exc:  # noqa: BLE001 - StopIteration too: handed to the consumer
            first["error"] = exc

    thread = threading.Thread(target=fetch, name="first-batch", daemon=True)
    thread.start()

    def chained() -> Iterator:
        thread.join()
        if "error" in first:
            if isinstance(first["error"], StopIteration):
                return
            raise first["error"]
        yield first.pop("item")
        yield from iterator

    return chained()


def cycle_batches(make_iterator) -> Iterator:
    """Endless batches from a re-iterable source (one pass = one epoch; the source reshuffles per pass)."""
    epoch = 0
    while True:
        empty = True
        for batch in make_iterator(epoch):
            empty = False
            yield epoch, batch
        if empty:
            raise RuntimeError("the training dataset produced no batches: every image was skipped or the batch is larger than the dataset")
        epoch += 1
