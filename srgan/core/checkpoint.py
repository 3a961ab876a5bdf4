"""Generator checkpoints: a directory with safetensors weights and the config that rebuilds the model.

Layout (``format_version`` 1)::

    <dir>/generator.safetensors   net_g weights (nothing is unpickled on load)
    <dir>/checkpoint.json         {"format_version", "arch", "generator": GeneratorConfig,
                                   "config": the resolved run config, "metadata": {...}}

Loading needs neither Ray nor the training code and reads a local directory; remote checkpoints and
registry references are fetched first by :mod:`srgan.tracking.refs`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from srgan.core.models import GeneratorConfig, SRResNet, build_generator
from srgan.errors import CheckpointError

__all__ = ["CheckpointError", "GeneratorCheckpoint", "save_generator", "load_generator", "read_checkpoint_meta", "state_fingerprint"]

FORMAT_VERSION = 1
WEIGHTS_FILE = "generator.safetensors"
META_FILE = "checkpoint.json"


@dataclass(frozen=True)
class GeneratorCheckpoint:
    """What :func:`load_generator` returns besides the model."""

    generator: GeneratorConfig
    config: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    path: str = ""


def save_generator(
    directory: str | os.PathLike,
    net_g: SRResNet,
    *,
    config: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``net_g`` (weights + its GeneratorConfig) and the run config into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    # DDP/compile wrappers are unwrapped by the caller; here we only need plain tensors on the CPU.
    state = {k: v.detach().to("cpu").contiguous() for k, v in net_g.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE))
    meta = {
        "format_version": FORMAT_VERSION,
        "arch": "srresnet",
        "generator": asdict(net_g.config),
        "config": config or {},
        "metadata": metadata or {},
    }
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    tmp.replace(out / META_FILE)  # the JSON appears last and whole: its presence means "complete"
    return out


def read_checkpoint_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``checkpoint.json`` of a local checkpoint directory."""
    path = Path(directory)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a directory")
    meta_path = path / META_FILE
    if not meta_path.is_file() or not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{path} is not a generator checkpoint: expected {META_FILE} and {WEIGHTS_FILE} inside")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path} is not valid JSON: {exc}") from None
    if meta.get("format_version") != FORMAT_VERSION or meta.get("arch") != "srresnet":
        raise CheckpointError(
            f"{meta_path}: unsupported checkpoint (format_version={meta.get('format_version')!r}, arch={meta.get('arch')!r})"
        )
    return meta


def load_generator(directory: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> tuple[SRResNet, GeneratorCheckpoint]:
    """Rebuild the generator stored in a local checkpoint directory, in eval mode.

    Remote checkpoints and registry references (``s3://``, ``models:/NAME@ALIAS``) are resolved and
    fetched first by :func:`srgan.tracking.refs.load_generator_ref`: the core reads local files only."""
    text = str(directory)
    if "://" in text or text.startswith("models:/"):
        raise CheckpointError(f"{text} is not a local directory: load it with srgan.tracking.refs.load_generator_ref")
    local = Path(text)
    meta = read_checkpoint_meta(local)
    try:
        gen_cfg = GeneratorConfig(**meta["generator"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{local}/{META_FILE}: bad generator config: {exc}") from None
    net_g = build_generator(gen_cfg)
    state = load_file(str(Path(local) / WEIGHTS_FILE), device=str(map_location))
    try:
        net_g.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{local}: weights do not match the stored config: {first}") from None
    net_g.to(map_location).eval()
    info = GeneratorCheckpoint(generator=gen_cfg, config=meta.get("config", {}), metadata=meta.get("metadata", {}), path=str(local))
    return net_g, info


def state_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes, bytes in key order): equal
    fingerprints mean bit-identical weights, wherever and on whatever device they were computed."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
