"""The generator as an ONNX graph with dynamic batch, height and width, plus its JSON sidecar.

Layout of an export directory (what ``pipelines/export.py --output DIR`` writes)::

    DIR/generator.onnx        the graph: input ``lq`` (N, 3, h, w) float32 [0, 1] -> output ``sr``
                              (N, 3, h*s, w*s) float32 [-1, 1] (the generator's own ranges)
    DIR/generator.onnx.json   the sidecar: scale, value ranges, receptive radius, the GeneratorConfig,
                              model name/version/weights digest, opset, exporter (written last)

The exporter is torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``, which needs
onnxscript). The optional bicubic skip (``sr = net(lq) + bicubic(lq)``) computes its taps from the
input size in Python, which a graph with dynamic sizes cannot do; the exported graph runs the same
MATLAB bicubic as a fixed polyphase filter on a symmetrically padded input instead (equal to
``srgan.core.degrade.bicubic_upscale`` up to float rounding; the parity check covers it).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from srgan.core.degrade import _contributions
from srgan.core.models import GeneratorConfig, SRResNet
from srgan.core.ranges import unit_to_signed
from srgan.errors import CheckpointError, UserError

__all__ = ["ONNX_FILE", "SIDECAR_FILE", "FORMAT", "DEFAULT_OPSET", "ExportDependencyError", "require", "export_onnx",
           "is_export_dir", "read_sidecar", "record_parity", "ExportableGenerator"]

ONNX_FILE = "generator.onnx"
SIDECAR_FILE = "generator.onnx.json"
FORMAT = "srgan-onnx"
FORMAT_VERSION = 1
DEFAULT_OPSET = 18  # the dynamo exporter's own default; onnxruntime 1.32 runs up to 23
INPUT_NAME, OUTPUT_NAME = "lq", "sr"


class ExportDependencyError(UserError, ImportError):
    """onnx, onnxruntime or onnxscript is missing: the ``export`` extra is not installed."""


def require(module: str):
    """Import an optional dependency of the ``export`` extra, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportDependencyError(f'{module} is not installed (ONNX export and the onnxruntime runtime need it): pip install -e ".[export]"') from None


# ------------------------------------------------------------------------------ the graph


def _polyphase_taps(scale: int) -> tuple[Tensor, int, int]:
    """MATLAB bicubic x``scale`` along one axis as ``scale`` phases of one short filter.

    Output pixel ``s*k + r`` is ``sum_t taps[r, t] * x[k + t - before]`` on the input padded
    symmetrically by ``before``/``after`` pixels. Read off the core's own contributions on an
    interior stretch (no mirroring there), so the weights are the core's.
    """
    length, k0 = 32, 16  # any interior position gives the same phases
    idx, w = _contributions(length, length * scale, float(scale))  # (out, P) each
    rows = range(k0 * scale, (k0 + 1) * scale)
    offsets = [int(i) - k0 for r in rows for i, wt in zip(idx[r], w[r]) if wt != 0]
    before, after = -min(offsets), max(offsets)
    taps = torch.zeros(scale, before + after + 1, dtype=torch.float64)
    for phase, r in enumerate(rows):
        for i, wt in zip(idx[r].tolist(), w[r].tolist()):
            taps[phase, i - k0 + before] += wt
    return taps.float(), before, after


class ExportableGenerator(nn.Module):
    """An SRResNet whose bicubic skip (if any) is a fixed polyphase filter: traceable with dynamic sizes.

    (N, 3, h, w) [0, 1] -> (N, 3, h*s, w*s) [-1, 1], as ``SRResNet.forward``.
    """

    def __init__(self, net: SRResNet) -> None:
        super().__init__()
        cfg = net.config
        self.scale, self.skip = cfg.scale, cfg.bicubic_skip
        # The same modules and forward, with the skip switched off (a shallow copy shares the weights).
        self.trunk = copy.copy(net)
        self.trunk.config = dataclasses.replace(cfg, bicubic_skip=False)
        taps, self.before, self.after = _polyphase_taps(cfg.scale)
        self.register_buffer("taps_h", taps[:, None, :, None].clone(), persistent=False)  # (s, 1, T, 1)
        self.register_buffer("taps_w", taps[:, None, None, :].clone(), persistent=False)  # (s, 1, 1, T)

    @property
    def min_side(self) -> int:
        """The smallest input side the graph takes (symmetric padding reflects once)."""
        return max(self.before, self.after, 1) if self.skip else 1

    def _symmetric_pad(self, x: Tensor, dim: int) -> Tensor:
        # MATLAB's symmetric border: ... 2 1 | 1 2 ... n | n n-1 ... (the edge pixel repeated).
        head = x.narrow(dim, 0, self.before).flip(dim)
        tail = x.narrow(dim, x.shape[dim] - self.after, self.after).flip(dim)
        return torch.cat([head, x, tail], dim=dim)

    def _bicubic(self, lq: Tensor) -> Tensor:
        n, c, h, w = lq.shape
        s = self.scale
        x = lq.reshape(n * c, 1, h, w)
        # Rows first, then columns, as MATLAB (and the core's imresize) does.
        y = nn.functional.conv2d(self._symmetric_pad(x, 2), self.taps_h)  # (n*c, s, h, w): phase r of row k
        y = y.permute(0, 2, 1, 3).reshape(n * c, 1, h * s, w)
        z = nn.functional.conv2d(self._symmetric_pad(y, 3), self.taps_w)  # (n*c, s, h*s, w)
        z = z.permute(0, 2, 3, 1).reshape(n, c, h * s, w * s)
        return z

    def forward(self, lq: Tensor) -> Tensor:
        sr = self.trunk(lq)  # (N, 3, h*s, w*s)
        if self.skip:
            sr = sr + unit_to_signed(self._bicubic(lq))
        return sr


# ------------------------------------------------------------------------------ export


def export_onnx(net: SRResNet, directory: str | Path, *, opset: int = DEFAULT_OPSET, model: dict[str, Any] | None = None,
                weights_digest: str) -> Path:
    """Write ``generator.onnx`` (checked with ``onnx.checker``) and its sidecar into ``directory``.

    ``model`` is recorded in the sidecar as is (name, version, source); ``weights_digest`` is the
    torch weights' digest, which an Upscaler over the export reports as its version.
    """
    onnx = require("onnx")
    require("onnxscript")  # the dynamo exporter's dependency: fail with the install line, not deep in torch
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    graph = ExportableGenerator(net).eval().requires_grad_(False)
    side = graph.min_side
    example = torch.rand(1, 3, max(side, 16), max(side, 16) + 3)  # unequal sides: no accidental h == w guard
    dims = {0: torch.export.Dim("batch", min=1), 2: torch.export.Dim("height", min=side), 3: torch.export.Dim("width", min=side)}
    (out / SIDECAR_FILE).unlink(missing_ok=True)  # the sidecar appears last: its presence means "complete"
    # The exporter prints its progress and warns about its own internals: none of it is the user's to act on.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, (example,), str(out / ONNX_FILE), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_shapes={"lq": dims}, external_data=False, verbose=False)
    onnx.checker.check_model(onnx.load(str(out / ONNX_FILE)), full_check=True)
    cfg = net.config
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "onnx_file": ONNX_FILE,
        "scale": cfg.scale,
        "receptive_radius": net.receptive_radius,
        "min_side": side,
        "generator": dataclasses.asdict(cfg),
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "range": [0.0, 1.0], "channels": "RGB"},
        "output": {"name": OUTPUT_NAME, "layout": "NCHW", "dtype": "float32", "range": [-1.0, 1.0], "to_unit": "(sr + 1) / 2, clamped"},
        "dynamic_axes": {"batch": 0, "height": 2, "width": 3},
        "opset": opset,
        "exporter": f"torch.onnx dynamo (torch {torch.__version__}, onnx {onnx.__version__})",
        "model": {**(model or {}), "weights_digest": weights_digest},
    }
    tmp = out / (SIDECAR_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    tmp.replace(out / SIDECAR_FILE)
    return out


def is_export_dir(directory: str | Path) -> bool:
    return (Path(directory) / SIDECAR_FILE).is_file()


def read_sidecar(directory: str | Path) -> dict[str, Any]:
    """Read and check the sidecar of a local export directory."""
    path = Path(directory) / SIDECAR_FILE
    if not path.is_file() or not (Path(directory) / ONNX_FILE).is_file():
        raise CheckpointError(f"{directory} is not an ONNX export: expected {ONNX_FILE} and {SIDECAR_FILE} inside (write one with pipelines/export.py)")
    try:
        meta = json.loads(path.read_text())
        GeneratorConfig(**meta["generator"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid export sidecar: {exc}") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported export (format={meta.get('format')!r}, format_version={meta.get('format_version')!r})")
    if not math.isfinite(meta.get("receptive_radius", float("nan"))):
        raise CheckpointError(f"{path}: no receptive_radius")
    if meta.get("parity", {}).get("passed") is False:
        raise CheckpointError(f"{directory} failed its parity check against PyTorch (max error {meta['parity'].get('max_abs_error')}): "
                              "export it again, or use the checkpoint with --runtime torch")
    return meta


def record_parity(directory: str | Path, parity: dict[str, Any]) -> None:
    """Add the parity check's figures to the sidecar (rewritten atomically)."""
    meta = read_sidecar(directory)
    meta["parity"] = parity
    path = Path(directory) / SIDECAR_FILE
    tmp = path.with_name(SIDECAR_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    tmp.replace(path)
