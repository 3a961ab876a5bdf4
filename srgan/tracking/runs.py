"""MLflow: one run per training name, metrics without duplicate steps, images, the model registry.

Everything goes through an explicit ``MlflowClient`` and ``run_id`` (no global "active run"), so the
driver and rank 0 of the trainer can log to the same run from different processes.

- Default store: a SQLite file in the working directory (no server needed). A relative
  ``sqlite:///file.db`` is made absolute so that Ray workers (other working directories) find it.
- The run of a training job is found again by its ``srgan.run_key`` tag (name + storage), so a re-run
  of the same command resumes the same MLflow run instead of creating a second one.
- :class:`MetricLogger` drops any (key, step) at or below what the run already holds, so a resumed
  job never writes a step twice.
- A tracking outage never stops training: rank 0 logs through :class:`BufferedLogger`, which sends
  from a thread of its own, keeps what it could not send (bounded) and sends it when the server is
  back; the driver's own calls go through :func:`with_tracking_retries`, bounded in time. MLflow's
  HTTP defaults (7 retries with exponential backoff, 120 s timeout a request) could stall one call
  for minutes, so every call here runs under :func:`bounded_http`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from srgan.errors import UserError

__all__ = [
    "resolve_tracking_uri", "open_run", "MetricLogger", "log_params_once", "finish_run",
    "BufferedLogger", "bounded_http", "with_tracking_retries", "TrackingUnavailableError",
]

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
    # For a tracking server MLflow would print two "View run/experiment at" lines to stdout here; the
    # run's summary (pipelines/train.py) already names the run and where to look at it.
    saved = os.environ.get("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT")
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    try:
        _client(tracking_uri).set_terminated(run_id, status=status)
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)
        else:
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = saved


# ------------------------------------------------------------------------------ tracking outages

T = TypeVar("T")

# One MLflow call, at most: one attempt, 10 s for connect and for read (our own loops retry: the
# sender thread every few seconds, the driver within SRGAN_TRACKING_WAIT_S). A dead server (port
# closed) fails at once, a hung one in 10 s. MLflow's defaults (7 retries, backoff factor 2, 120 s
# timeout) would stall the same call for many minutes, and urllib3 logs a warning at each retry.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# How long the driver keeps retrying its own calls (open the run, register, finish) before it says
# what it could not do; SRGAN_TRACKING_WAIT_S overrides it (a whole number of seconds).
DEFAULT_WAIT_S = 120.0


class TrackingUnavailableError(UserError):
    """The tracking server did not answer within the bound: one line says what was not done."""


@contextlib.contextmanager
def bounded_http() -> Iterator[None]:
    """MLflow's HTTP client under :data:`HTTP_LIMITS` (it reads these variables at every request);
    a smaller value the user has set is kept. Restores the environment afterwards."""
    saved = {k: os.environ.get(k) for k in HTTP_LIMITS}
    for key, limit in HTTP_LIMITS.items():
        current = saved[key]
        if current is None or not _is_number(current) or float(current) > float(limit):
            os.environ[key] = limit
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the store is unreachable or overloaded (worth retrying), not that the
    request itself is wrong (a 4xx answer: retrying would fail the same way)."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, RestException):
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    if isinstance(exc, MlflowException):
        # rest_utils wraps connection errors and timeouts as "API request to URL failed with ...".
        return str(exc.message).startswith("API request to") or exc.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED")
    if isinstance(exc, OSError):  # requests' ConnectionError is an OSError
        return True
    return type(exc).__name__ == "OperationalError"  # SQLAlchemy: a locked or unreachable database


def wait_limit_s() -> float:
    value = os.environ.get("SRGAN_TRACKING_WAIT_S", "")
    return float(value) if value.isdigit() else DEFAULT_WAIT_S


def with_tracking_retries(fn: Callable[[], T], *, what: str, tracking_uri: str, within_s: float | None = None) -> T:
    """``fn()`` (MLflow calls), retried on transient errors for at most ``within_s`` seconds (default
    :func:`wait_limit_s`), each attempt under :func:`bounded_http`. One warning line when the first
    attempt fails; :class:`TrackingUnavailableError` (saying ``what`` was not done) after the bound."""
    within_s = wait_limit_s() if within_s is None else within_s
    deadline = time.monotonic() + within_s
    warned = False
    while True:
        try:
            with bounded_http():
                result = fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if time.monotonic() >= deadline:
                raise TrackingUnavailableError(
                    f"tracking server {tracking_uri} unreachable for {within_s:.0f} s: could not {what} ({_short(exc)})"
                ) from None
            if not warned:
                print(f"[srgan] WARNING: tracking server {tracking_uri} unreachable ({_short(exc)}); retrying to {what} for up to {within_s:.0f} s", flush=True)
                warned = True
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            continue
        if warned:
            print(f"[srgan] tracking server {tracking_uri} answers again: {what} done", flush=True)
        return result


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160]


class BufferedLogger:
    """Rank 0's logger: :class:`MetricLogger` behind a queue and a sender thread of its own, so that
    the training loop never waits on the tracking server.

    While the server is unreachable, metrics and tags wait in memory (at most ``max_pending`` metric
    values; older ones beyond that are dropped and counted) and are sent, in step order, when it
    answers again: nothing logged during an outage is lost unless the buffer overflows or the outage
    outlasts :meth:`close`'s bound. Images (validation grids) are not buffered: one that cannot be
    sent is dropped and counted. The first failure prints ONE warning line; recovery prints one line
    with what was sent late."""

    def __init__(self, tracking_uri: str, run_id: str, *, retry_every_s: float = 5.0, max_pending: int = 200_000) -> None:
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self._retry_every_s, self._max_pending = retry_every_s, max_pending
        self._inbox: queue.Queue = queue.Queue()
        self._pending_metrics: list[tuple[str, float, int, int]] = []  # (key, value, timestamp ms, step)
        self._pending_tags: dict[str, str] = {}
        self._once: dict[str, float] = {}
        self._logger: MetricLogger | None = None
        self._down_since: float | None = None
        self._next_try = 0.0  # while the server is down: not before this (time.monotonic())
        self.warnings = 0  # warning lines printed (one per outage)
        self.outages = 0
        self.sent_late = 0  # metric values sent after an outage
        self.dropped_metrics = 0  # overflowed the buffer, or still unsent at close
        self.dropped_images = 0
        self._idle = threading.Event()
        self._idle.set()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="srgan-mlflow-sender", daemon=True)
        self._thread.start()

    # --- the training loop's side: never blocks on the network

    def log(self, metrics: dict[str, float], step: int, *, once: bool = False) -> None:
        """Queue ``metrics`` at ``step``; with ``once``, each key is logged only if the run has none yet
        (the bicubic baseline: the same value at every validation)."""
        now = int(time.time() * 1000)
        if once:
            self._once.update(metrics)
        self._put(("metrics", [(k, float(v), now, step) for k, v in metrics.items()]))

    def sent_once(self, key: str) -> bool:
        """Whether this logger has already queued ``key`` with ``once``."""
        return key in self._once

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        self._put(("image", (image, key, step)))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._put(("tags", {k: str(v) for k, v in tags.items()}))

    def _put(self, item) -> None:
        self._idle.clear()
        self._inbox.put(item)

    def flush(self, timeout_s: float, *, unless_down: bool = False) -> bool:
        """Wait up to ``timeout_s`` for everything queued to be sent; True if it was. ``unless_down``:
        give up at once while the server is known to be down."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if unless_down and self._down_since is not None:
                return False
            if self._idle.wait(timeout=0.1) and not self._has_pending():
                return True
        return self._inbox.empty() and not self._has_pending()

    def settle(self, timeout_s: float) -> bool:
        """At a checkpoint: wait up to ``timeout_s`` for what is queued to reach the server, unless it
        is down (then return at once: training never waits on an outage). A worker group lost after
        the checkpoint restarts from it and never runs those steps again, so metrics still queued in
        a lagging sender would be lost with the process (found by the reliability harness: a worker
        killed after checkpoint 4 took steps 1-4 with it while a loaded server answered slowly)."""
        return self.flush(timeout_s, unless_down=True)

    def close(self, timeout_s: float) -> None:
        """Send what is left, waiting at most ``timeout_s``; one line says what could not be sent."""
        self.flush(timeout_s)
        self._stop = True
        self._inbox.put(("stop", None))
        self._thread.join(timeout=15)
        unsent = len(self._pending_metrics)
        if unsent or self._pending_tags:
            self.dropped_metrics += unsent
            print(f"[srgan] WARNING: tracking server {self.tracking_uri} still unreachable at the end: {unsent} metric values and {len(self._pending_tags)} tags of this run were not logged (checkpoints are unaffected)", flush=True)
        if self.dropped_images or self.dropped_metrics - unsent > 0:
            print(f"[srgan] tracking outage summary: {self.outages} outage(s), {self.sent_late} metric values sent late, {self.dropped_metrics} dropped, {self.dropped_images} validation images not logged", flush=True)

    # --- the sender thread

    def _has_pending(self) -> bool:
        return bool(self._pending_metrics or self._pending_tags)

    def _run(self) -> None:
        while not self._stop:
            wait = max(0.05, self._next_try - time.monotonic()) if self._has_pending() else None
            try:
                item = self._inbox.get(timeout=wait)
            except queue.Empty:
                item = ("retry", None)
            while True:  # everything queued meanwhile goes out in one send
                kind, payload = item
                if kind == "stop":
                    self._stop = True
                    break
                self._absorb(kind, payload)
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
            if time.monotonic() >= self._next_try:
                self._send()
            if self._inbox.empty():
                self._idle.set()

    def _absorb(self, kind: str, payload) -> None:
        if kind == "metrics":
            self._pending_metrics.extend(payload)
            overflow = len(self._pending_metrics) - self._max_pending
            if overflow > 0:  # keep the newest: the oldest steps matter least to a live dashboard
                del self._pending_metrics[:overflow]
                self.dropped_metrics += overflow
        elif kind == "tags":
            self._pending_tags.update(payload)
        elif kind == "image":
            if self._down_since is not None:
                self.dropped_images += 1
                return
            image, key, step = payload
            try:
                with bounded_http():
                    self._client().log_image(image, key=key, step=step)
            except Exception as exc:  # noqa: BLE001 - an image is never worth a crash
                self.dropped_images += 1
                self._went_down(exc)

    def _client(self) -> MetricLogger:
        if self._logger is None:
            self._logger = MetricLogger(self.tracking_uri, self.run_id)
        return self._logger

    def _send(self) -> None:
        from mlflow.entities import Metric

        if not self._has_pending():
            return
        metrics, tags = list(self._pending_metrics), dict(self._pending_tags)
        try:
            with bounded_http():
                logger = self._client()
                if tags:
                    logger.set_tags(tags)
                by_step: dict[int, dict[str, tuple[float, int]]] = {}
                for key, value, ts, step in metrics:
                    by_step.setdefault(step, {}).setdefault(key, (value, ts))  # a repeated step: the first value wins
                for step in sorted(by_step):
                    fresh = [Metric(k, v, ts, step) for k, (v, ts) in by_step[step].items() if step > logger.last_step(k) and (k not in self._once or logger.last_step(k) < 0)]
                    for i in range(0, len(fresh), 1000):  # MLflow caps a batch at 1000 metrics
                        logger.client.log_batch(self.run_id, metrics=fresh[i : i + 1000])
                    for m in fresh:
                        logger._last_step[m.key] = step
        except Exception as exc:  # noqa: BLE001 - training goes on whatever the store says
            if not is_transient(exc):
                # The store refused the request itself (a 4xx): resending would fail the same way.
                log.warning("MLflow refused %d metric values: %s", len(metrics), _short(exc))
                self.dropped_metrics += len(metrics)
                self._pending_metrics, self._pending_tags = self._pending_metrics[len(metrics):], {}
                return
            self._went_down(exc)
            return
        del self._pending_metrics[: len(metrics)]
        for k in tags:
            self._pending_tags.pop(k, None)
        if self._down_since is not None:
            self.sent_late += len(metrics)
            print(f"[srgan] tracking server {self.tracking_uri} answers again after {time.monotonic() - self._down_since:.0f} s: sent {len(metrics)} buffered metric values", flush=True)
            self._down_since = None
        self._next_try = 0.0

    def _went_down(self, exc: BaseException) -> None:
        self._next_try = time.monotonic() + self._retry_every_s
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        self.outages += 1
        if self.warnings == 0:  # ONE warning line a run, however many outages or failed retries
            self.warnings += 1
            print(f"[srgan] WARNING: tracking server {self.tracking_uri} unreachable ({_short(exc)}); training goes on, metrics are kept in memory and sent when it answers (retry every {self._retry_every_s:.0f} s)", flush=True)
