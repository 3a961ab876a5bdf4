"""The MLflow model registry for generator checkpoints, without pickles.

A registered version's source is the run's ``generator/`` artifact folder, which holds exactly a
checkpoint directory (``generator.safetensors`` + ``checkpoint.json``). No MLflow flavour or pyfunc
wrapper is involved, so loading a version never unpickles or executes anything: it downloads the
folder and :func:`srgan.checkpoint.load_generator` reads it.

The ``champion`` alias moves only when the new version beats the current champion on the selection
metric (stored as a version tag), so a worse run never replaces a better model.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from srgan.checkpoint import META_FILE, WEIGHTS_FILE

__all__ = ["Registration", "register_generator", "download_model", "pin_model_uri", "CHAMPION", "ARTIFACT_PATH"]

CHAMPION = "champion"
ARTIFACT_PATH = "generator"


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    uri: str  # models:/NAME/VERSION
    champion: bool  # whether the alias now points at this version
    previous_champion: str | None


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _champion_score(client, name: str, metric_name: str) -> tuple[str | None, float | None]:
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None, None
    value = current.tags.get(metric_name)
    return current.version, (float(value) if value is not None else None)


def register_generator(
    tracking_uri: str,
    *,
    run_id: str,
    checkpoint_dir: str | Path,
    step: int,
    name: str,
    metric_name: str,
    metric_value: float | None,
    higher_is_better: bool = True,
    tags: dict[str, str] | None = None,
) -> Registration:
    """Log ``checkpoint_dir``'s generator files to the run (under ``generator/step_<step>``, so every
    version keeps its own files) and register them as a new version of ``name``.

    The ``champion`` alias moves to the new version only if its ``metric_name`` beats the current
    champion's (higher or lower, per ``higher_is_better``); ``tags`` are added to the version."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    with tempfile.TemporaryDirectory() as staging:
        # Only what rebuilds the generator: the training state (optimiser, RNG) stays in run storage.
        for fname in (WEIGHTS_FILE, META_FILE):
            shutil.copy2(Path(checkpoint_dir) / fname, Path(staging) / fname)
        client.log_artifacts(run_id, staging, artifact_path=f"{ARTIFACT_PATH}/step_{step}")
    try:
        client.create_registered_model(name, description="SRResNet/SRGAN generator checkpoints (safetensors + config).")
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}/step_{step}"
    version_tags = {"step": str(step), **(tags or {}), **({metric_name: f"{metric_value:.6f}"} if metric_value is not None else {})}
    version = client.create_model_version(name, source=source, run_id=run_id, tags=version_tags)
    previous, previous_score = _champion_score(client, name, metric_name)
    beats = (lambda a, b: a > b) if higher_is_better else (lambda a, b: a < b)
    better = previous is None or (metric_value is not None and (previous_score is None or beats(metric_value, previous_score)))
    if better:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    return Registration(name=name, version=str(version.version), uri=f"models:/{name}/{version.version}", champion=better, previous_champion=previous)


def _resolve_version(client, uri: str):
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> the ModelVersion."""
    ref = uri[len("models:/") :]
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    if "/" in ref:
        name, version = ref.rsplit("/", 1)
        return client.get_model_version(name, version)
    raise ValueError(f"{uri} must look like models:/NAME@ALIAS or models:/NAME/VERSION")


def pin_model_uri(uri: str, *, tracking_uri: str) -> str:
    """``models:/NAME@ALIAS`` -> ``models:/NAME/VERSION`` (the version the alias points at now), so that
    a run records exactly which version it started from; ``models:/NAME/VERSION`` is returned as is."""
    version = _resolve_version(_client(tracking_uri), uri)
    return f"models:/{version.name}/{version.version}"


def download_model(uri: str, *, tracking_uri: str | None) -> Path:
    """Download ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` into a fresh local directory.

    The version is resolved with an explicit client (no process-wide MLflow state is changed), then
    its source folder is downloaded; with a tracking server that stores artifacts behind its proxy,
    both go through the server. ``tracking_uri=None``: MLFLOW_TRACKING_URI, else the SQLite default.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from srgan.cli import UserError
    from srgan.tracking import resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(tracking_uri)
    client = _client(tracking_uri)
    dest = Path(tempfile.mkdtemp(prefix="srgan-model-"))
    try:
        version = _resolve_version(client, uri)
        path = mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dest), tracking_uri=tracking_uri)
    except (MlflowException, ValueError) as exc:
        raise UserError(f"cannot resolve {uri} in the MLflow registry at {tracking_uri}: {' '.join(str(exc).split())[:300]}") from None
    return Path(path)
