"""ONNX export of the generator and the onnxruntime runtime of the Upscaler.

Why a package of its own, between the core and ``srgan.tracking`` (beside ``srgan.io``): the core must
import only what a bare GPU machine has (torch, torchvision, numpy, pillow, safetensors, pyyaml), and
onnx/onnxruntime are an optional extra (``pip install -e ".[export]"``), imported here lazily, inside
the functions that need them. The core's :class:`~srgan.core.inference.Upscaler` takes any generator
callable, so this package only supplies one (:class:`OrtGenerator`); ``srgan.tracking.refs`` picks the
runtime for every reference (``load_upscaler(ref, runtime="onnxruntime")``) and fetches remote
exports like checkpoints, so nothing here reads storage.

- :mod:`srgan.export.onnx_export`: the exportable graph, ``export_onnx`` and the JSON sidecar;
- :mod:`srgan.export.ort`: ``OrtGenerator`` (an onnxruntime session as an Upscaler generator) and
  the parity check against PyTorch.
"""

from srgan.export.onnx_export import ONNX_FILE, SIDECAR_FILE, ExportDependencyError, export_onnx, is_export_dir, read_sidecar, record_parity
from srgan.export.ort import OrtGenerator, load_exported, max_error, parity

__all__ = ["ONNX_FILE", "SIDECAR_FILE", "ExportDependencyError", "export_onnx", "is_export_dir", "read_sidecar",
           "OrtGenerator", "load_exported", "max_error", "parity", "record_parity"]
