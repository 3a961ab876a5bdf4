"""Model references -> pinned sources -> local checkpoint directories: the one resolver.

A reference is what a user types after ``--model`` or ``--init-from``:

- ``models:/NAME@ALIAS``: a registry alias; pinned to the version it points at *now*;
- ``models:/NAME/VERSION``: one registry version;
- a checkpoint directory, ``file://`` or ``s3://`` URI (``generator.safetensors`` + ``checkpoint.json``);
- an ONNX export directory or URI (``generator.onnx`` + ``generator.onnx.json``, from
  ``pipelines/export.py``): loadable with the onnxruntime runtime only.

:func:`resolve_model` pins a reference without loading weights (a :class:`ModelSource`);
:func:`fetched_model` makes a pinned source a local directory for as long as the loading takes (a
download goes into a temporary directory that is removed after it; :func:`fetch_model` keeps it for
a caller that removes it itself); the core's
:func:`srgan.core.checkpoint.load_generator` reads local directories only. Every caller that must
agree on the weights (the driver's check and each Train worker, each Serve replica, each bulk actor)
resolves once and passes the pinned ``ModelSource.uri`` on, so an alias that moves meanwhile changes
nothing for them.

Runtimes: :func:`load_upscaler` runs the generator with ``torch`` (default) or ``onnxruntime`` (CPU).
With ``onnxruntime`` an export directory is loaded as it is, and a checkpoint is exported on the fly
(:mod:`srgan.export`, the optional ``export`` extra) and checked against the torch model once.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from srgan.core.checkpoint import META_FILE, GeneratorCheckpoint, load_generator
from srgan.core.inference import Upscaler, UpscalerOptions
from srgan.core.models import SRResNet
from srgan.errors import CheckpointError, ConfigError, ModelReferenceError
from srgan.export import SIDECAR_FILE as EXPORT_SIDECAR  # srgan.export imports onnx only when it exports or runs
from srgan.tracking.runs import resolve_tracking_uri

__all__ = ["ModelSource", "MODELS_PREFIX", "DEFAULT_MODEL", "RUNTIMES", "is_registry_ref", "parse_registry_ref", "resolve_model",
           "fetch_model", "fetched_model", "load_generator_ref", "load_upscaler"]

MODELS_PREFIX = "models:/"
DEFAULT_MODEL = "models:/srgan-generator@champion"  # the alias the training pipeline moves
RUNTIMES = ("torch", "onnxruntime")  # what load_upscaler(runtime=...) takes (the CLIs' --runtime choices)


@dataclass(frozen=True)
class ModelSource:
    """A generator reference, pinned.

    ``requested`` is what the user named; ``uri`` is what is loaded: for an alias, ``models:/NAME/N``
    of the version it pointed at when it was resolved; for a local checkpoint, its absolute path
    (replicas and actors run in other directories). ``version`` is the registry version, or None for
    a checkpoint (whose weights' digest then names it, see :attr:`Upscaler.version`).
    """

    requested: str
    uri: str
    name: str
    version: str | None = None
    tracking_uri: str | None = None

    @property
    def is_alias(self) -> bool:
        """True for ``models:/NAME@ALIAS``: the reference can move to another version later."""
        return is_registry_ref(self.requested) and "@" in self.requested


def is_registry_ref(ref: str | os.PathLike) -> bool:
    return str(ref).startswith(MODELS_PREFIX)


def parse_registry_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/N`` -> (NAME, None, N)."""
    body = ref[len(MODELS_PREFIX) :]
    if "@" in body:
        name, alias = body.split("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in body:
        name, version = body.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise ModelReferenceError(f"{ref} must look like models:/NAME@ALIAS or models:/NAME/VERSION")


def _registry_source(ref: str, tracking_uri: str | None) -> ModelSource:
    from mlflow.exceptions import MlflowException

    from srgan.tracking.registry import model_version

    store = resolve_tracking_uri(tracking_uri)  # None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    hint = "train and register one with pipelines/train.py, point --tracking-uri at the right store, or pass a checkpoint directory"
    name, alias, version = parse_registry_ref(ref)
    # MLflow would create an empty database at a missing SQLite path: say so instead.
    if store.startswith("sqlite:///") and not Path(store[len("sqlite:///") :]).is_file():
        raise ModelReferenceError(f"cannot load {ref}: there is no MLflow store at {store}; {hint}")
    try:
        found = model_version(store, name, alias=alias, version=version)
    except MlflowException as exc:
        reason = " ".join(str(exc).split())[:200]
        raise ModelReferenceError(f"{ref} is not registered in {store} ({reason}); {hint}") from None
    return ModelSource(requested=ref, uri=f"{MODELS_PREFIX}{name}/{found.version}", name=name, version=str(found.version), tracking_uri=store)


def _checkpoint_source(ref: str, s3_endpoint: str | None) -> ModelSource:
    import pyarrow.fs as pafs

    from srgan.io.storage import resolve

    try:
        fs, path = resolve(ref, s3_endpoint=s3_endpoint)
        exists = fs.get_file_info(path).type != pafs.FileType.NotFound
        found = any(fs.get_file_info(f"{path}/{name}").type == pafs.FileType.File for name in (META_FILE, EXPORT_SIDECAR))
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"cannot read the checkpoint {ref}: {exc}") from None
    if not exists:
        raise CheckpointError(f"checkpoint {ref} does not exist: pass a checkpoint directory or models:/NAME@ALIAS")
    if not found:
        raise CheckpointError(f"{ref} is not a generator checkpoint (no {META_FILE} there) nor an ONNX export (no {EXPORT_SIDECAR}): "
                              "pass a checkpoint directory or models:/NAME@ALIAS")
    pinned = path if isinstance(fs, pafs.LocalFileSystem) else ref
    return ModelSource(requested=ref, uri=pinned, name=Path(path).name)


def resolve_model(ref: str | os.PathLike | ModelSource, *, tracking_uri: str | None = None, s3_endpoint: str | None = None) -> ModelSource:
    """Check that ``ref`` names a loadable generator and pin it, without loading the weights.

    An alias is resolved in ``tracking_uri`` (else MLFLOW_TRACKING_URI, else ``sqlite:///mlflow.db``).
    Anything missing raises :class:`~srgan.errors.CheckpointError` with a one-line message that says
    what to do. A :class:`ModelSource` is returned as it is (already pinned).
    """
    if isinstance(ref, ModelSource):
        return ref
    ref = str(ref)
    if is_registry_ref(ref):
        return _registry_source(ref, tracking_uri)
    return _checkpoint_source(ref, s3_endpoint)


def fetch_model(source: ModelSource, *, s3_endpoint: str | None = None, into: str | os.PathLike | None = None) -> Path:
    """The pinned source as a local checkpoint directory: a local source as it is; a download in
    ``into`` (an existing directory), else in a fresh temporary directory that the caller owns."""
    if is_registry_ref(source.uri):
        from srgan.tracking.registry import download_version

        name, _, version = parse_registry_ref(source.uri)
        return download_version(source.tracking_uri or resolve_tracking_uri(None), name, version, into=into)
    from srgan.io.storage import fetch_to_local

    try:
        return fetch_to_local(source.uri, s3_endpoint=s3_endpoint, into=into)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {source.uri} does not exist") from None


@contextlib.contextmanager
def fetched_model(source: ModelSource, *, s3_endpoint: str | None = None) -> Iterator[Path]:
    """:func:`fetch_model` for the duration of a ``with`` block: a download is removed after it.

    Loading reads the weights into memory (and an onnxruntime session holds its whole graph), so
    the files are not needed once the block has loaded them. Without this, every replica start,
    bulk actor and worker restart would leave a copy of the model in the temporary directory.
    """
    with tempfile.TemporaryDirectory(prefix="srgan-model-") as scratch:
        yield fetch_model(source, s3_endpoint=s3_endpoint, into=scratch)


def _not_an_export(local: Path, source: ModelSource) -> Path:
    if (local / EXPORT_SIDECAR).is_file() and not (local / META_FILE).is_file():
        raise CheckpointError(f"{source.requested} is an ONNX export, which only the onnxruntime runtime loads: "
                              "pass --runtime onnxruntime, or the checkpoint it was exported from")
    return local


def load_generator_ref(ref: str | os.PathLike | ModelSource, *, map_location: str | torch.device = "cpu", tracking_uri: str | None = None,
                       s3_endpoint: str | None = None) -> tuple[SRResNet, GeneratorCheckpoint]:
    """Resolve, fetch and load a generator from any reference (in eval mode)."""
    source = resolve_model(ref, tracking_uri=tracking_uri, s3_endpoint=s3_endpoint)
    with fetched_model(source, s3_endpoint=s3_endpoint) as local:
        net_g, info = load_generator(_not_an_export(local, source), map_location=map_location)
    return net_g, GeneratorCheckpoint(generator=info.generator, config=info.config, metadata=info.metadata, path=source.uri)


def _onnx_generator(local: Path, source: ModelSource):
    """The onnxruntime generator of a fetched reference: an export as it is, a checkpoint exported now."""
    from srgan.core.inference import weights_digest
    from srgan.export import export_onnx, is_export_dir, load_exported, max_error

    if is_export_dir(local):
        gen = load_exported(local)
        return gen, GeneratorCheckpoint(generator=gen.config, metadata={"onnx": gen.meta}, path=source.uri)
    net_g, info = load_generator(local, map_location="cpu")
    with tempfile.TemporaryDirectory(prefix="srgan-onnx-") as tmp:
        # The session holds the whole graph, so the temporary files can go right after.
        export_onnx(net_g, tmp, model={"name": source.name, "version": source.version, "source": source.uri}, weights_digest=weights_digest(net_g))
        gen = load_exported(tmp)
    # One small check that the graph computes what the weights do (the export CLI checks all of Set5).
    probe = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        err = max_error((net_g(probe) + 1) / 2, (gen(probe) + 1) / 2)
    if not err <= 1 / 255:
        raise CheckpointError(f"the on-the-fly ONNX export of {source.requested} differs from PyTorch by {err:.2g} (> 1/255): use --runtime torch")
    return gen, info


def load_upscaler(ref: str | os.PathLike | ModelSource, *, runtime: str = "torch", options: UpscalerOptions = UpscalerOptions(),
                  tracking_uri: str | None = None) -> Upscaler:
    """An :class:`Upscaler` over any reference; ``upscaler.source`` is the pinned :class:`ModelSource`
    (its registry version names the model in Serve's headers and the bulk job's logs).

    ``runtime``: ``"torch"`` runs the checkpoint's SRResNet on ``options.device``; ``"onnxruntime"``
    runs an ONNX export on the CPU (a checkpoint is exported on the fly, which takes seconds to tens of
    seconds; ``pipelines/export.py`` makes one ahead of time). Both report the same ``version`` for the
    same weights. A missing ``export`` extra raises a one-line UserError naming ``pip install -e ".[export]"``.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "onnxruntime" and options.device not in ("auto", "cpu"):
        raise ConfigError(f"the onnxruntime runtime runs on the CPU, not {options.device}: use --device cpu, or --runtime torch for {options.device}")
    source = resolve_model(ref, tracking_uri=tracking_uri)
    with fetched_model(source) as local:
        if runtime == "onnxruntime":
            gen, info = _onnx_generator(local, source)
            upscaler = Upscaler(gen, options=options, model_info=info)
        else:
            net_g, info = load_generator(_not_an_export(local, source), map_location="cpu")
            upscaler = Upscaler(net_g, options=options, model_info=info)
    upscaler.source = source
    return upscaler
