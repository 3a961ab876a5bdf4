"""An onnxruntime session as an Upscaler generator, and the parity check against PyTorch.

:class:`OrtGenerator` has the core's generator contract (:class:`srgan.core.inference.Generator`):
``lq`` (N, 3, h, w) float32 [0, 1] on the CPU -> ``sr`` (N, 3, h*s, w*s) [-1, 1], plus ``config``,
``receptive_radius`` and ``weights_digest``, so ``Upscaler(OrtGenerator(...))`` tiles, batches and
converts ranges exactly as it does for the torch model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from srgan.core.inference import Upscaler, UpscalerOptions
from srgan.core.models import GeneratorConfig, SRResNet
from srgan.export.onnx_export import INPUT_NAME, ONNX_FILE, read_sidecar, require

__all__ = ["OrtGenerator", "load_exported", "max_error", "parity"]


class OrtGenerator:
    """The exported graph in an onnxruntime CPU session.

    ``threads`` is onnxruntime's intra-op thread count; None takes torch's (``torch.get_num_threads()``,
    which Ray sets from the actor's CPUs), so both runtimes use the same cores.
    """

    runtime = "onnxruntime"
    device = torch.device("cpu")

    def __init__(self, onnx_path: str | Path, meta: dict[str, Any], *, threads: int | None = None) -> None:
        ort = require("onnxruntime")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1  # one chain of convs: nothing to run side by side
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The whole file is read into the session, so the caller may delete it afterwards.
        self.session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.meta = meta
        self.config = GeneratorConfig(**meta["generator"])
        self.receptive_radius = int(meta["receptive_radius"])
        self.min_side = int(meta.get("min_side", 1))
        self.weights_digest = meta["model"]["weights_digest"]

    def __call__(self, lq: Tensor) -> Tensor:
        if lq.ndim != 4 or lq.shape[1] != 3:
            raise ValueError(f"expected (N, 3, h, w) input, got {tuple(lq.shape)}")
        if min(lq.shape[-2:]) < self.min_side:
            raise ValueError(f"the exported graph needs inputs of at least {self.min_side}x{self.min_side} pixels, got {tuple(lq.shape[-2:])}")
        x = np.ascontiguousarray(lq.detach().to("cpu", torch.float32).numpy())  # a view when lq is already contiguous fp32
        (sr,) = self.session.run(None, {INPUT_NAME: x})
        return torch.from_numpy(sr)  # (N, 3, h*s, w*s), no copy


def load_exported(directory: str | Path, *, threads: int | None = None) -> OrtGenerator:
    """The export in a local directory (``generator.onnx`` + sidecar) as an :class:`OrtGenerator`."""
    meta = read_sidecar(directory)
    return OrtGenerator(Path(directory) / meta.get("onnx_file", ONNX_FILE), meta, threads=threads)


def max_error(a: Tensor, b: Tensor) -> float:
    """The largest absolute difference of two [0, 1] images (1/255 is one 8-bit level)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a.float() - b.float()).abs().max().item()


def parity(net: SRResNet, gen: OrtGenerator, images: dict[str, Tensor], *, options: UpscalerOptions = UpscalerOptions(device="cpu")) -> dict[str, float]:
    """Largest |torch - onnxruntime| per image, in [0, 1] units, through the same Upscaler settings.

    ``images``: name -> (3, h, w) float [0, 1]. Both sides run the whole Upscaler (tiling, range
    conversion, clamping), so this is what a user of either runtime gets.
    """
    torch_up, ort_up = Upscaler(net, options=options), Upscaler(gen, options=options)
    return {name: max_error(torch_up.upscale_tensor(lq), ort_up.upscale_tensor(lq)) for name, lq in images.items()}
