"""Training under faults (issue 13, items 5 and 7): registration that a rerun cannot duplicate; a
driver SIGKILLed with its whole process group, then rerun; a worker killed twice in one run; workers
on one node resuming from a remote checkpoint at the same time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import write_local_training_data
from srgan.core.checkpoint import save_generator
from srgan.core.models import SRResNet
from srgan.tracking.registry import register_generator
from srgan.tracking.runs import open_run, resolve_tracking_uri


def test_registering_the_same_run_and_step_again_returns_the_same_version(tmp_path, mlflow_db):
    """A driver killed after registering (or a registration retried after a timeout that had in fact
    reached the server) must not make a second version of the same checkpoint."""
    uri = resolve_tracking_uri(mlflow_db)
    run_id, _ = open_run(uri, experiment="exp", run_key="k", run_name="r")
    ckpt = save_generator(tmp_path / "ck", SRResNet(num_blocks=1, num_features=4))
    first = register_generator(uri, run_id=run_id, checkpoint_dir=ckpt, step=8, name="gen", metric_name="val_psnr_y", metric_value=30.0)
    again = register_generator(uri, run_id=run_id, checkpoint_dir=ckpt, step=8, name="gen", metric_name="val_psnr_y", metric_value=30.0)
    assert (first.version, first.champion) == ("1", True)
    assert (again.version, again.champion, again.uri) == ("1", True, "models:/gen/1")
    # A later step of the same run (a resume with more steps) is a new version, as before.
    later = register_generator(uri, run_id=run_id, checkpoint_dir=ckpt, step=9, name="gen", metric_name="val_psnr_y", metric_value=29.0)
    assert later.version == "2" and not later.champion
    # Another run's step 8 is its own version.
    other, _ = open_run(uri, experiment="exp", run_key="k2", run_name="r2")
    assert register_generator(uri, run_id=other, checkpoint_dir=ckpt, step=8, name="gen", metric_name="val_psnr_y", metric_value=1.0).version == "3"
    client = MlflowClient(uri, registry_uri=uri)
    assert sorted(int(v.version) for v in client.search_model_versions("name = 'gen'")) == [1, 2, 3]
    assert str(client.get_model_version_by_alias("gen", "champion").version) == "1"


# ------------------------------------------------------------------ resuming workers on one node


def test_workers_resuming_on_one_node_each_read_their_own_copy_of_a_remote_checkpoint(tmp_path, s3_bucket):
    """Two DDP workers on one node resume from an S3 checkpoint, the second arriving while the first
    reads. With Ray's ``as_directory()`` the second downloaded again into the folder the first was
    reading (one per node), rewriting its files in place: CI failed with "PytorchStreamReader failed
    reading file". Each worker's copy must stay as it was until that worker is done with it."""
    import pyarrow.fs
    from ray.train import Checkpoint

    from srgan.distributed.trainer import checkpoint_files
    from srgan.io.storage import s3_filesystem

    src = tmp_path / "src"
    src.mkdir()
    weights = {"w": torch.randn(256, 1024)}  # 1 MiB: a rewrite in place is not over before the first read
    torch.save(weights, src / "training_state.pt")
    fs = s3_filesystem()
    pyarrow.fs.copy_files(str(src), f"{s3_bucket}/run/checkpoint_000001", destination_filesystem=fs)
    checkpoint = Checkpoint(f"{s3_bucket}/run/checkpoint_000001", filesystem=fs)

    with checkpoint_files(checkpoint, scratch=tmp_path) as first:
        state = first / "training_state.pt"
        before = os.stat(state)
        with checkpoint_files(checkpoint, scratch=tmp_path) as second:  # the second worker arrives
            assert second != first
            after = os.stat(state)
            assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
            assert torch.equal(torch.load(second / "training_state.pt", weights_only=True)["w"], weights["w"])
        assert not second.exists() and first.exists()  # the second's exit leaves the first's copy alone
        assert torch.equal(torch.load(state, weights_only=True)["w"], weights["w"])
    assert not first.exists()

    # A checkpoint on local disk (or a shared mount) is read where it is, and left there.
    with checkpoint_files(Checkpoint.from_directory(str(src)), scratch=tmp_path) as local:
        assert local == src
    assert (src / "training_state.pt").exists()


# ------------------------------------------------------------------ the driver killed, then rerun

SMALL = ["--set", "model.num_blocks=1", "--set", "model.num_features=8", "--set", "model.bicubic_skip=true"]


def _registered_checkpoint_step(run_dir: Path) -> int | None:
    """The step of the latest checkpoint Ray Train has registered (its checkpoint manager's snapshot)."""
    try:
        latest = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())["latest_checkpoint_result"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None
    return latest["metrics"]["step"] if latest else None


def _steps(client, run_id, key) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def _train_args(repo_root: Path, train_dir: Path, val_dir: Path, tmp_path: Path, *, name: str, steps: int, every: int, workers: int = 1) -> list[str]:
    return [sys.executable, str(repo_root / "pipelines" / "train.py"), "--data", str(train_dir), "--val-data", str(val_dir),
            "--workers", str(workers), "--batch-size", "4", "--storage", str(tmp_path / "runs"),
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--name", name, *SMALL, "--set", "data.crop_size=32",
            "--steps", str(steps), "--set", "train.log_every=1", "--set", f"train.val_every={every}",
            "--set", f"train.checkpoint_every={every}"]


@pytest.fixture()
def local_data(tmp_path, datasets_dir):
    return write_local_training_data(tmp_path, datasets_dir)


@pytest.mark.soak  # two 40-step runs; the harness's train-driver-kill is the same path
def test_driver_killed_with_its_process_group_then_rerun_resumes_once(ray_cluster, repo_root, local_data, tmp_path):
    train_dir, val_dir = local_data
    steps, every = 40, 4
    args = _train_args(repo_root, train_dir, val_dir, tmp_path, name="driver", steps=steps, every=every)
    run_dir = tmp_path / "runs" / "driver"
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        # Its own process group, as a terminal gives a command: the kill takes the whole group.
        proc = subprocess.Popen(args, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while (registered := _registered_checkpoint_step(run_dir)) is None or registered < 2 * every:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-4000:]
            time.sleep(0.05)
        assert registered < steps, "the run finished before the kill; make it longer"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    registered = _registered_checkpoint_step(run_dir)  # what the rerun will find (a later one may have landed)

    rerun = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-5000:]
    resumed = [int(n) for n in re.findall(r"resumed from step (\d+)", out)]
    assert resumed == [registered], out[-5000:]
    assert "(resumed) in experiment" in out
    assert "registered:  models:/srgan-generator/1  (alias @champion)" in out

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(db, registry_uri=db)
    [run] = client.search_runs([client.get_experiment_by_name("srgan").experiment_id], "attributes.run_name = 'driver'")
    assert run.info.status == "FINISHED"
    assert _steps(client, run.info.run_id, "train/loss") == list(range(1, steps + 1))  # each step once
    assert _steps(client, run.info.run_id, "val/psnr_y") == list(range(every, steps + 1, every))
    assert [str(v.version) for v in client.search_model_versions("name = 'srgan-generator'")] == ["1"]

    # Killed after registering (or rerun once more): the same version again, never a second one.
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, (again.stdout + again.stderr)[-5000:]
    assert "registered:  models:/srgan-generator/1  (alias @champion)" in again.stdout
    assert [str(v.version) for v in client.search_model_versions("name = 'srgan-generator'")] == ["1"]
    assert len(client.search_runs([run.info.experiment_id], "attributes.run_name = 'driver'")) == 1
