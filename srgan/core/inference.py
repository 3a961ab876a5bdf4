"""The Upscaler: load a generator once, upscale images of any size with bounded memory.

Used as is by evaluation, by the Ray Data bulk job's actor pool (``srgan.distributed.bulk``) and by the Serve
replica (``srgan.distributed.serving``), so that batch and online inference share one code path.

Where the weights come from: the Upscaler loads a local checkpoint directory, or takes a built
generator. Model references (registry aliases, ``s3://``) are pinned and fetched by
:mod:`srgan.tracking.refs` (``load_upscaler``), which also records the pinned source on the Upscaler.

Runtimes: the generator is duck-typed (:class:`Generator`): an :class:`~srgan.core.models.SRResNet`
(the ``torch`` runtime) or any callable with the same contract, such as the onnxruntime session of
:mod:`srgan.export` (``runtime="onnxruntime"`` in ``load_upscaler``). Tiling, batching and the value
ranges live here, once, for every runtime; the core itself never imports onnx or onnxruntime.

Tiling: an image larger than ``tile_size`` LR pixels is cut into the fewest equal tiles of at most
``tile_size`` a side; each tile is run with ``tile_pad`` extra pixels of real context around it. The
default ``tile_pad`` is the network's receptive radius, so a tile's output does not depend on where
it was cut: the tiled result equals the untiled one up to floating-point rounding, with no seams and
no need to overlap tiles (``tile_overlap`` 0). With a smaller ``tile_pad``, a ``tile_overlap`` blends
neighbouring tiles with linear ramps to hide the seams.

Deadlines: every ``upscale_*`` method takes ``deadline`` (a ``time.monotonic()`` value, None: none),
checked before each forward pass (each tile, each chunk of a batch); past it the work stops with
:class:`~srgan.errors.DeadlineExceededError`, so a caller (the Serve replica) is never held for longer
than the deadline plus one tile's pass.

Memory: the tiled path holds the output (12 bytes per output pixel, float32 RGB) and, only when
tiles overlap, a weight map and the normalised copy (16 more); docs/serving.md has the whole budget.

CPU speed (BENCHMARKS.md, rows ``infer-*``): on the CPU the torch runtime runs a copy of the
generator with batch norm folded into the convolutions and in channels_last layout, which oneDNN's
convolutions take without reordering. On CUDA the generator runs as it is (not measured there).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from srgan.core.checkpoint import GeneratorCheckpoint, load_generator
from srgan.core.degrade import bicubic_upscale
from srgan.core.images import DecodedImage, with_planes
from srgan.core.models import GeneratorConfig
from srgan.core.ranges import signed_to_unit
from srgan.errors import DeadlineExceededError

__all__ = ["Generator", "UpscalerOptions", "Upscaler", "pick_device", "weights_digest", "tiled_work"]

log = logging.getLogger(__name__)

_MIN_TILE = 32


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto" -> CUDA if available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Generator(Protocol):
    """What the Upscaler runs: ``lq`` (N, 3, h, w) float32 [0, 1] -> ``sr`` (N, 3, h*s, w*s) in [-1, 1].

    :class:`~srgan.core.models.SRResNet` is one (an ``nn.Module``: the Upscaler moves it to its device
    and puts it in eval mode). Anything else (e.g. ``srgan.export.OrtGenerator``) manages its own
    device and states it as ``device``, and names its weights with a ``weights_digest`` string.
    """

    config: GeneratorConfig  # .scale is read
    receptive_radius: int  # LR pixels of context each output pixel depends on (the default tile_pad)

    def __call__(self, lq: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class UpscalerOptions:
    """Inference knobs. Sizes are in LR (input) pixels."""

    device: str = "auto"
    precision: str = "fp32"  # "fp32" or "bf16" (bf16 autocast, CUDA only)
    tile_size: int = 256  # largest side processed in one forward pass
    tile_overlap: int = 0  # blended overlap between tiles: only needed when tile_pad < the receptive radius
    tile_pad: int | None = None  # context around each tile; None = the network's receptive radius
    max_batch: int = 8  # same-size images per forward pass in upscale_images()

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.tile_size < _MIN_TILE:
            raise ValueError(f"tile_size must be >= {_MIN_TILE}, got {self.tile_size}")
        if not 0 <= self.tile_overlap < self.tile_size // 2:
            raise ValueError(f"tile_overlap must be in [0, tile_size/2), got {self.tile_overlap}")
        if self.tile_pad is not None and self.tile_pad < 0:
            raise ValueError(f"tile_pad must be >= 0, got {self.tile_pad}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")


def weights_digest(net: torch.nn.Module | Generator) -> str:
    """A short content hash of a model's weights: a version for checkpoints that have no registry version.

    A generator that is not a module (an ONNX session) carries the digest of the weights it was made
    from, so one model has one version whichever runtime runs it."""
    if not isinstance(net, torch.nn.Module):
        return net.weights_digest
    h = hashlib.sha256()
    for key, value in sorted(net.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return "sha256:" + h.hexdigest()[:12]


def _tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering [0, length): the fewest tiles of at most ``tile`` pixels that
    overlap by at least ``overlap``, all of one size and evenly spread.

    Equal tiles waste nothing: the old plan (stride ``tile - overlap``, then one more tile ending at
    the border) ran an almost full extra tile whenever the length was just over a multiple of the
    stride (a 512 image took 3 tiles of 256 a side instead of 2).
    """
    if length <= tile:
        return [(0, length)]
    n = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (n - 1) * overlap) / n)  # <= tile; n * size - (n - 1) * overlap >= length
    starts = [round(i * (length - size) / (n - 1)) for i in range(n)]  # steps <= size - overlap
    return [(start, start + size) for start in starts]


def tiled_work(height: int, width: int, *, tile: int, overlap: int, pad: int) -> float:
    """LR pixels the network runs (tiles plus their context) per LR pixel of an image: the cost of tiling."""
    def axis(length: int) -> int:
        return sum(min(stop + pad, length) - max(start - pad, 0) for start, stop in _tile_spans(length, tile, overlap))

    return axis(height) * axis(width) / (height * width)


def _fold_batch_norms(net: torch.nn.Module) -> torch.nn.Module:
    """Every Conv2d followed by a BatchNorm2d in a Sequential becomes one conv (eval-mode BN is an
    affine map per channel): one pass over each feature map fewer. Works on ``net`` in place."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for seq in [m for m in net.modules() if isinstance(m, torch.nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], torch.nn.Conv2d) and isinstance(seq[i + 1], torch.nn.BatchNorm2d):
                seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), torch.nn.Identity()
    return net


def _ramp(length: int, ramp_in: int, ramp_out: int, device: torch.device) -> Tensor:
    """1-D blend weights: rising over ``ramp_in`` samples, falling over ``ramp_out``, 1 in between.

    Weights stay > 0 everywhere, so every pixel has a non-zero total weight.
    """
    w = torch.ones(length, device=device)
    if ramp_in > 0:
        n = min(ramp_in, length)
        w[:n] = torch.minimum(w[:n], (torch.arange(n, device=device) + 0.5) / ramp_in)
    if ramp_out > 0:
        n = min(ramp_out, length)
        w[length - n :] = torch.minimum(w[length - n :], (torch.arange(n, device=device).flip(0) + 0.5) / ramp_out)
    return w


class Upscaler:
    """Upscale images with a generator (:class:`Generator`). ``lq`` [0, 1] in, ``sr`` [0, 1] out (clamped).

    ``runtime`` says what runs the network: ``torch`` for an ``nn.Module``, else the generator's own
    ``runtime`` attribute (``onnxruntime`` for srgan.export's session).
    """

    def __init__(self, net_g: Generator, *, options: UpscalerOptions = UpscalerOptions(), model_info: GeneratorCheckpoint | None = None) -> None:
        self.options = options
        self._weights = net_g  # what the version digest reads (the run copy below may be folded)
        self._channels_last = False
        if isinstance(net_g, torch.nn.Module):
            self.device = pick_device(options.device)
            self.runtime = "torch"
            net_g = net_g.to(self.device).eval().requires_grad_(False)
            if self.device.type == "cpu":
                # A copy: the caller's module keeps its structure (and its digest its weights).
                net_g = _fold_batch_norms(copy.deepcopy(net_g)).to(memory_format=torch.channels_last)
                self._channels_last = True
        else:
            # The generator runs where it was built; an explicit, different device is a mistake.
            self.device = torch.device(getattr(net_g, "device", "cpu"))
            self.runtime = getattr(net_g, "runtime", type(net_g).__name__)
            if options.device != "auto" and pick_device(options.device) != self.device:
                raise ValueError(f"the {self.runtime} generator runs on {self.device}, not {options.device}; pass device='auto' or {self.device.type!r}")
            if options.precision != "fp32":
                raise ValueError(f"precision {options.precision} is for the torch runtime; the {self.runtime} generator runs fp32")
        if options.precision == "bf16" and self.device.type != "cuda":
            raise ValueError("precision bf16 needs a CUDA device; use fp32 on the CPU")
        self.net_g = net_g
        self.scale = net_g.config.scale
        self.tile_pad = net_g.receptive_radius if options.tile_pad is None else options.tile_pad
        self.tile_size = options.tile_size  # lowered for good after a CUDA out-of-memory error
        self.model_info = model_info
        self.source = None  # the pinned srgan.tracking.refs.ModelSource, when loaded through it
        self._version: str | None = None

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, *, options: UpscalerOptions = UpscalerOptions()) -> Upscaler:
        """Load the generator in a local checkpoint directory once (any reference: ``load_upscaler``)."""
        net_g, info = load_generator(directory, map_location="cpu")
        return cls(net_g, options=options, model_info=info)

    @property
    def version(self) -> str:
        """The registry version of the loaded model, else a digest of its weights."""
        if self._version is None:
            registered = getattr(self.source, "version", None)
            self._version = registered or weights_digest(self._weights)
        return self._version

    # ------------------------------------------------------------------------------ tensors

    def _forward(self, lq: Tensor) -> Tensor:
        """One network pass: (N, 3, h, w) [0, 1] on device -> (N, 3, h*s, w*s) [0, 1] fp32 (not clamped)."""
        if self._channels_last:
            lq = lq.contiguous(memory_format=torch.channels_last)
        if self.options.precision == "bf16":
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                sr = self.net_g(lq)
        else:
            sr = self.net_g(lq)
        return signed_to_unit(sr.float())

    def _run_tiled(self, lq: Tensor, tile: int, deadline: float | None = None) -> Tensor:
        n, _, h, w = lq.shape
        if h <= tile and w <= tile:
            _check_deadline(deadline)
            return self._forward(lq)
        s, pad, overlap = self.scale, self.tile_pad, self.options.tile_overlap
        out = torch.zeros(n, 3, h * s, w * s, device=lq.device)
        if overlap == 0:
            # Tiles meet edge to edge: each output pixel is written once, so no weight map and no
            # normalised copy (16 bytes per output pixel less at the peak; docs/serving.md).
            for y0, y1 in _tile_spans(h, tile, 0):
                for x0, x1 in _tile_spans(w, tile, 0):
                    _check_deadline(deadline)
                    out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = self._tile(lq, y0, y1, x0, x1)
            return out
        weight = torch.zeros(1, 1, h * s, w * s, device=lq.device)
        for y0, y1 in _tile_spans(h, tile, overlap):
            for x0, x1 in _tile_spans(w, tile, overlap):
                _check_deadline(deadline)
                sr = self._tile(lq, y0, y1, x0, x1)
                # Ramps only on sides that touch another tile.
                wy = _ramp((y1 - y0) * s, overlap * s if y0 > 0 else 0, overlap * s if y1 < h else 0, lq.device)
                wx = _ramp((x1 - x0) * s, overlap * s if x0 > 0 else 0, overlap * s if x1 < w else 0, lq.device)
                wmap = wy[:, None] * wx[None, :]
                out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] += sr * wmap
                weight[:, :, y0 * s : y1 * s, x0 * s : x1 * s] += wmap
        return out / weight

    def _tile(self, lq: Tensor, y0: int, y1: int, x0: int, x1: int) -> Tensor:
        """The output of LR window [y0:y1, x0:x1], run with up to ``tile_pad`` real pixels of context on
        each side (clipped at the image border)."""
        h, w = lq.shape[-2:]
        s, pad = self.scale, self.tile_pad
        py0, py1, px0, px1 = max(y0 - pad, 0), min(y1 + pad, h), max(x0 - pad, 0), min(x1 + pad, w)
        sr = self._forward(lq[:, :, py0:py1, px0:px1])
        return sr[:, :, (y0 - py0) * s : (y1 - py0) * s, (x0 - px0) * s : (x1 - px0) * s]

    @torch.inference_mode()
    def upscale_tensor(self, lq: Tensor, *, deadline: float | None = None) -> Tensor:
        """(N, 3, h, w) or (3, h, w) float in [0, 1] -> the same rank at ``scale``x, float32 [0, 1], on the CPU.

        On CUDA an out-of-memory error halves the tile size and retries (down to 32 pixels).
        ``deadline`` (``time.monotonic()``): checked before each forward pass (DeadlineExceededError).
        """
        squeeze = lq.ndim == 3
        batch = lq.unsqueeze(0) if squeeze else lq
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected (N, 3, h, w) input, got {tuple(lq.shape)}")
        batch = batch.to(self.device, torch.float32)
        while True:
            try:
                sr = self._run_tiled(batch, self.tile_size, deadline)
                break
            except torch.OutOfMemoryError:
                if self.tile_size <= _MIN_TILE:
                    raise
                self.tile_size = max(_MIN_TILE, self.tile_size // 2)
                log.warning("CUDA out of memory: retrying with tile_size=%d", self.tile_size)
                torch.cuda.empty_cache()
        sr = sr.clamp_(0, 1).cpu().contiguous()  # (N, 3, H, W) in the usual layout, whatever ran
        return sr.squeeze(0) if squeeze else sr

    # ------------------------------------------------------------------------------- images

    def upscale_images(self, images: list[DecodedImage], *, deadline: float | None = None) -> list[DecodedImage]:
        """Upscale decoded images, batching same-size ones; each result keeps its input's mode and depth.

        RGB goes through the network; alpha is upscaled with MATLAB bicubic and kept; greyscale
        inputs are run as RGB and written back as luma.
        """
        results: list[DecodedImage | None] = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            by_size.setdefault(tuple(img.rgb.shape[-2:]), []).append(i)
        for indices in by_size.values():
            for start in range(0, len(indices), self.options.max_batch):
                chunk = indices[start : start + self.options.max_batch]
                sr = self.upscale_tensor(torch.stack([images[i].rgb for i in chunk]), deadline=deadline)
                for i, sr_rgb in zip(chunk, sr):
                    alpha = images[i].alpha
                    sr_alpha = None if alpha is None else bicubic_upscale(alpha, self.scale).clamp_(0, 1)
                    results[i] = with_planes(images[i], rgb=sr_rgb, alpha=sr_alpha)
        return [r for r in results if r is not None]

    def upscale_image(self, image: DecodedImage, *, deadline: float | None = None) -> DecodedImage:
        return self.upscale_images([image], deadline=deadline)[0]


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceededError("the compute deadline passed before the upscale finished; the work was stopped")
