"""MLflow: one run per training name, metrics without duplicate steps, images, the model registry.

Everything goes through an explicit ``MlflowClient`` and ``run_id`` (no global "active run"), so the
driver and rank 0 of the trainer can log to the same run from different processes.

- Default store: a SQLite file in the working directory (no server needed). A relative
  ``sqlite:///file.db`` is made absolute so that Ray workers (other working directories) find it.
- The run of a training job is found again by its ``srgan.run_key`` tag (name + storage), so a re-run
  of the same command resumes the same MLflow run instead of creating a second one.
- :class:`MetricLogger` drops any (key, step) at or below what the run already holds, so a resumed
  job never writes a step twice.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["resolve_tracking_uri", "open_run", "MetricLogger", "log_params_once"]

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # in the working directory (made absolute when resolved)


def resolve_tracking_uri(uri: str | None) -> str:
    """The store to use: ``uri``; if empty, the standard MLFLOW_TRACKING_URI (how a cluster's nodes
    name their tracking server), else the project's SQLite default. A relative ``sqlite:///x.db`` is
    made absolute; other URIs (``http(s)://`` servers, ``postgresql://``...) are returned unchanged."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    if "://" not in uri:  # a bare path: treat as a SQLite file (file stores are refused by MLflow 3.17)
        return prefix + str(Path(uri).resolve())
    return uri


def _artifact_location(tracking_uri: str) -> str | None:
    """For a SQLite store, artifacts live beside the database (MLflow's default is ./mlruns of whoever
    creates the experiment). Servers keep their own artifact store: None."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


def _client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def open_run(tracking_uri: str, *, experiment: str, run_key: str, run_name: str) -> tuple[str, bool]:
    """Find the run tagged ``srgan.run_key == run_key`` in ``experiment`` or create it.

    Returns ``(run_id, resumed)``.
    """
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment, artifact_location=_artifact_location(tracking_uri))
    escaped = run_key.replace("'", "\\'")
    runs = client.search_runs([exp_id], filter_string=f"tags.`srgan.run_key` = '{escaped}'", max_results=2, order_by=["attributes.start_time ASC"])
    if runs:
        run = runs[0]
        if run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id, True
    run = client.create_run(exp_id, run_name=run_name, tags={"srgan.run_key": run_key})
    return run.info.run_id, False


def log_params_once(tracking_uri: str, run_id: str, params: dict[str, str]) -> None:
    """Log params; on a resumed run, changed values are kept as ``param_change.*`` tags (MLflow params are immutable)."""
    from mlflow.entities import Param, RunTag

    client = _client(tracking_uri)
    existing = client.get_run(run_id).data.params
    new = [Param(k, v[:6000]) for k, v in params.items() if k not in existing]
    changed = [RunTag(f"param_change.{k}", f"{existing[k]} -> {v}"[:5000]) for k, v in params.items() if k in existing and existing[k] != v[:6000]]
    for i in range(0, len(new), 100):  # MLflow caps params per batch at 100
        client.log_batch(run_id, params=new[i : i + 100])
    if changed:
        client.log_batch(run_id, tags=changed)


class MetricLogger:
    """Log metrics at explicit steps, never writing a (key, step) the run already has."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.client = _client(tracking_uri)
        self.run_id = run_id
        self._last_step: dict[str, int] = {}

    def last_step(self, key: str) -> int:
        """The highest step already logged for ``key`` (-1 if none); fetched once per key."""
        if key not in self._last_step:
            history = self.client.get_metric_history(self.run_id, key)
            self._last_step[key] = max((m.step for m in history), default=-1)
        return self._last_step[key]

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        fresh = [Metric(k, float(v), now, step) for k, v in metrics.items() if step > self.last_step(k)]
        if fresh:
            self.client.log_batch(self.run_id, metrics=fresh)
            for m in fresh:
                self._last_step[m.key] = step

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """Log an (H, W, 3) uint8 image under ``key`` at ``step`` (once per step)."""
        marker = f"{key}_logged"
        if step <= self.last_step(marker):
            return
        self.client.log_image(self.run_id, image, key=key, step=step)
        self.log({marker: 1.0}, step)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))


def finish_run(tracking_uri: str, run_id: str, *, status: str = "FINISHED") -> None:
    _client(tracking_uri).set_terminated(run_id, status=status)
