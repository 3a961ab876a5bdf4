"""The MLflow model registry for generator checkpoints, without pickles.

A registered version's source is the run's ``generator/`` artifact folder, which holds exactly a
checkpoint directory (``generator.safetensors`` + ``checkpoint.json``). No MLflow flavour or pyfunc
wrapper is involved, so loading a version never unpickles or executes anything: it downloads the
folder (:func:`download_version`) and :func:`srgan.core.checkpoint.load_generator` reads it.
References (``models:/NAME@ALIAS``...) are parsed and pinned in :mod:`srgan.tracking.refs` only.

The ``champion`` alias moves only when the new version beats the current champion on the selection
metric (stored as a version tag), so a worse run never replaces a better model.

Registration is idempotent per (run, step): a version this run already registered from the same
step is returned again instead of a second one (a driver killed after registering, then rerun; a
registration retried after a tracking outage answered the first attempt too late).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from srgan.core.checkpoint import META_FILE, WEIGHTS_FILE
from srgan.errors import ModelReferenceError

__all__ = ["Registration", "register_generator", "model_version", "download_version", "CHAMPION", "ARTIFACT_PATH"]

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
    existing = _version_of(client, name, run_id=run_id, step=step)
    if existing is not None:
        return _finish(client, existing, name, metric_name, metric_value, higher_is_better)
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
    # MLflow logs "Waiting up to 300 seconds for model version to finish creation" at INFO on every
    # registration with a tracking server: not a line for the run's console.
    with _quiet_logger("mlflow.store.model_registry.abstract_store"):
        version = client.create_model_version(name, source=source, run_id=run_id, tags=version_tags)
    return _finish(client, version, name, metric_name, metric_value, higher_is_better)


@contextlib.contextmanager
def _quiet_logger(name: str, level: int = logging.WARNING) -> Iterator[None]:
    """``name``'s records below ``level`` dropped for the duration (a filter: MLflow resets levels)."""
    logger = logging.getLogger(name)
    below = lambda record: record.levelno >= level  # noqa: E731
    logger.addFilter(below)
    try:
        yield
    finally:
        logger.removeFilter(below)


def _version_of(client, name: str, *, run_id: str, step: int):
    """The version of ``name`` that run ``run_id`` registered from ``step``, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
            return None
        raise
    same = [v for v in versions if v.tags.get("step") == str(step)]
    return min(same, key=lambda v: int(v.version)) if same else None


def _finish(client, version, name: str, metric_name: str, metric_value: float | None, higher_is_better: bool) -> Registration:
    """Move the champion alias to ``version`` if it beats the current champion (or it already is it)."""
    previous, previous_score = _champion_score(client, name, metric_name)
    if previous is not None and str(previous) == str(version.version):  # a repeated registration of the champion itself
        return Registration(name=name, version=str(version.version), uri=f"models:/{name}/{version.version}", champion=True, previous_champion=previous)
    beats = (lambda a, b: a > b) if higher_is_better else (lambda a, b: a < b)
    better = previous is None or (metric_value is not None and (previous_score is None or beats(metric_value, previous_score)))
    if better:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    return Registration(name=name, version=str(version.version), uri=f"models:/{name}/{version.version}", champion=better, previous_champion=previous)


def model_version(tracking_uri: str, name: str, *, alias: str | None = None, version: str | None = None):
    """The ModelVersion an alias points at now, or version ``version`` (an explicit client: no
    process-wide MLflow state changes). Raises MlflowException when there is none."""
    client = _client(tracking_uri)
    if alias is not None:
        return client.get_model_version_by_alias(name, alias)
    return client.get_model_version(name, version)


def download_version(tracking_uri: str, name: str, version: str, *, into: str | Path | None = None) -> Path:
    """Download version ``version`` of ``name`` into ``into`` (an existing directory the caller
    removes), else into a fresh temporary directory the caller owns; with a tracking server that
    stores artifacts behind its proxy, the download goes through the server."""
    import mlflow
    from mlflow.exceptions import MlflowException

    dest = Path(into) if into is not None else Path(tempfile.mkdtemp(prefix="srgan-model-"))
    try:
        source = model_version(tracking_uri, name, version=version).source
        path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest), tracking_uri=tracking_uri)
    except MlflowException as exc:
        raise ModelReferenceError(f"cannot download models:/{name}/{version} from {tracking_uri}: {' '.join(str(exc).split())[:300]}") from None
    return Path(path)
