"""A tracking outage (issue 13, item 9), on a real ``mlflow server`` (infra/mlflow/mlflow-server.sh:
PostgreSQL backend store, artifacts proxied to the moto S3 server) that is stopped and started again
on the same port while its clients run.

- :class:`srgan.tracking.runs.BufferedLogger` (rank 0's logger): logging never blocks while the
  server is down, ONE warning line, and every metric logged during the outage reaches the run once
  the server is back (buffered, then sent in step order, never twice).
- :func:`srgan.tracking.runs.with_tracking_retries` (the driver's calls): bounded in time whatever
  MLflow's own HTTP retry defaults are, one line saying what could not be done.
- A training run whose server is stopped after its first checkpoint and restarted later: it
  finishes, with every step in the same MLflow run and its generator registered.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import write_local_training_data
from servers import free_port, postgres, stop, wait_for_port
from srgan.tracking.runs import BufferedLogger, TrackingUnavailableError, open_run, with_tracking_retries

# A PostgreSQL cluster and an mlflow server of this module's own, stopped and restarted: about 90 s
# before the training run. CI runs the same outage through the harness's quick train-tracking-outage.
pytestmark = pytest.mark.soak


SMALL = ["--set", "model.num_blocks=1", "--set", "model.num_features=8", "--set", "model.bicubic_skip=true"]


class StoppableServer:
    """infra/mlflow/mlflow-server.sh on one fixed port, which can be stopped and started again (its own
    PostgreSQL cluster, so nothing here touches the session's tracking server)."""

    def __init__(self, pg: dict, s3_endpoint: str, repo_root: Path, work: Path) -> None:
        import boto3

        boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="mlflow-outage")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.work, self.log = work, work / "server.log"
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "MLFLOW_BACKEND_STORE_URI": pg["uri"], "PGPASSWORD": pg["password"],
            "MLFLOW_ARTIFACTS_DESTINATION": "s3://mlflow-outage/artifacts", "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
            "MLFLOW_PORT": str(self.port), "MLFLOW_WORKERS": "1",
        }
        self.script = repo_root / "infra" / "mlflow" / "mlflow-server.sh"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "a") as log_file:
            self.proc = subprocess.Popen(["bash", str(self.script)], cwd=self.work, env=self.env, stdout=log_file,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, self.proc, "mlflow server", 180, self.log)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig, group=True)  # the server and its uvicorn worker: the group started here
            self.proc = None


@pytest.fixture(scope="module")
def outage_server(s3_server, repo_root, tmp_path_factory):
    with postgres() as pg:
        server = StoppableServer(pg, s3_server, repo_root, tmp_path_factory.mktemp("outage-server"))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture()
def running_server(outage_server):
    """The server, up at the start of the test (a test that stops it need not restart it)."""
    if outage_server.proc is None:
        outage_server.start()
    return outage_server


def _history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(url).get_metric_history(run_id, key)]


def test_buffered_logger_keeps_metrics_through_an_outage_and_sends_them_after(running_server, capfd):
    url = running_server.url
    run_id, _ = open_run(url, experiment="outage-unit", run_key="buffered", run_name="buffered")
    logger = BufferedLogger(url, run_id, retry_every_s=1.0)
    for step in (1, 2):
        logger.log({"train/loss": 1.0 / step}, step)
    assert logger.flush(timeout_s=30)
    assert _history(url, run_id, "train/loss") == [(1, 1.0), (2, 0.5)]

    running_server.stop()
    t0 = time.monotonic()
    for step in range(3, 9):
        logger.log({"train/loss": 1.0 / step}, step)
        logger.set_tags({"during": "outage"})
    assert time.monotonic() - t0 < 1.0  # the loop's side never waits on the network
    assert not logger.flush(timeout_s=6)  # nothing can be sent: it is kept, retried every second
    assert logger.outages == 1 and logger.warnings == 1

    running_server.start()
    assert logger.flush(timeout_s=60)
    logger.log({"train/loss": 0.01}, 9)
    logger.log({"train/loss": 99.0}, 9)  # a repeated step is never written twice
    logger.close(timeout_s=30)
    assert _history(url, run_id, "train/loss") == [(s, 1.0 / s) for s in range(1, 9)] + [(9, 0.01)]
    assert MlflowClient(url).get_run(run_id).data.tags["during"] == "outage"
    assert logger.sent_late == 6 and logger.dropped_metrics == 0
    out = capfd.readouterr().out
    assert len(re.findall(r"WARNING: tracking server .* unreachable", out)) == 1, out
    assert "answers again" in out


def test_driver_calls_are_bounded_while_the_server_is_down(running_server, capfd, monkeypatch):
    url = running_server.url
    # MLflow's own defaults would retry for minutes; these are what a user might have set.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    running_server.stop()
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailableError, match=r"unreachable for 4 s: could not open the run"):
        with_tracking_retries(lambda: open_run(url, experiment="outage-unit", run_key="bounded", run_name="b"),
                              what="open the run", tracking_uri=url, within_s=4)
    assert time.monotonic() - t0 < 30  # 4 s of retries plus at most one bounded attempt in flight
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"  # the user's setting is restored

    # The server comes back within the bound: the call succeeds, one warning line before it.
    threading.Timer(3.0, running_server.start).start()
    run_id, resumed = with_tracking_retries(lambda: open_run(url, experiment="outage-unit", run_key="bounded", run_name="b"),
                                            what="open the run", tracking_uri=url, within_s=120)
    assert run_id and not resumed
    out = capfd.readouterr().out
    assert out.count("WARNING: tracking server") == 2 and "answers again: open the run done" in out, out


def _steps(client, run_id, key) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def _wait_for_line(lines: list[str], proc, pattern: str, timeout: float = 300) -> re.Match:
    deadline = time.monotonic() + timeout
    while True:
        for line in list(lines):
            if m := re.search(pattern, line):
                return m
        assert time.monotonic() < deadline and proc.poll() is None, f"no {pattern!r}:\n" + "".join(lines)[-4000:]
        time.sleep(0.1)


def test_training_survives_a_tracking_outage(ray_cluster, running_server, repo_root, datasets_dir, tmp_path):
    """The server is killed after the first checkpoint and started again once training has gone on
    for 20 more steps: the run finishes in the same MLflow run with every step logged (those of the
    outage sent late), one warning line, and its generator registered."""
    train_dir, val_dir = write_local_training_data(tmp_path, datasets_dir)
    url = running_server.url
    steps, every = 120, 20
    args = [sys.executable, str(repo_root / "pipelines" / "train.py"), "--data", str(train_dir), "--val-data", str(val_dir),
            "--workers", "1", "--batch-size", "4", "--storage", str(tmp_path / "runs"), "--tracking-uri", url,
            "--experiment", "outage", "--register-as", "outage-generator", "--name", "outage", *SMALL,
            "--set", "data.crop_size=32", "--steps", str(steps), "--set", "train.log_every=1",
            "--set", f"train.val_every={every}", "--set", f"train.checkpoint_every={every}"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    pump = threading.Thread(target=lambda: [lines.append(line) for line in proc.stdout], daemon=True)
    pump.start()
    try:
        _wait_for_line(lines, proc, rf"checkpoint step {every} saved")
        running_server.stop(signal.SIGKILL)  # abruptly: no goodbye to open connections
        _wait_for_line(lines, proc, r"WARNING: tracking server .* unreachable")
        _wait_for_line(lines, proc, rf"step {2 * every + 1}/{steps}")  # training went on while it was down
        running_server.start()
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    pump.join(timeout=30)
    out = "".join(lines)
    assert proc.returncode == 0, out[-5000:]
    assert len(re.findall(r"WARNING: tracking server .* unreachable", out)) == 1, out[-5000:]
    assert re.search(r"answers again after \d+ s: sent \d+ buffered metric values", out), out[-5000:]
    assert "registered:  models:/outage-generator/1  (alias @champion)" in out

    client = MlflowClient(url, registry_uri=url)
    [run] = client.search_runs([client.get_experiment_by_name("outage").experiment_id], "attributes.run_name = 'outage'")
    assert run.info.status == "FINISHED"
    assert _steps(client, run.info.run_id, "train/loss") == list(range(1, steps + 1))  # buffered, then sent
    assert _steps(client, run.info.run_id, "val/psnr_y") == list(range(every, steps + 1, every))
    assert [str(v.version) for v in client.search_model_versions("name = 'outage-generator'")] == ["1"]
    ckpts = sorted((tmp_path / "runs" / "outage").glob("checkpoint_*"))
    assert ckpts, "no checkpoint in run storage"
