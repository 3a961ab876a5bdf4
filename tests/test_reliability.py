"""Reliability: recovery from faults, on real parts (marked ``reliability``: CI runs this module as a
pytest session of its own, with its own time budget, after the functional suite).

- A training worker killed mid-run: the SRGAN phase, two DDP workers (gloo) on the session's Ray cluster,
from a generator checkpoint saved here, MLflow on SQLite. One worker process is SIGKILLed by pid
after Ray Train has registered a checkpoint; Ray Train's failure policy restarts the worker group from
it (G, D, both optimisers, EMA, RNG), and the run finishes by itself in the same MLflow run with
every step logged exactly once.
- A bulk upscaling job killed part-way (SIGKILL of its driver), then rerun: exactly one complete
  output per input, and what was complete before the kill is not redone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import load_photo, write_local_training_data
from srgan.core.checkpoint import save_generator
from srgan.core.models import GeneratorConfig, build_generator

pytestmark = pytest.mark.reliability

SMALL = ["--set", "model.num_blocks=1", "--set", "model.num_features=8", "--set", "model.bicubic_skip=true",
         "--set", "discriminator.base_features=8", "--set", "discriminator.dense_features=16"]


class _Output:
    """Reads a process's merged output on a thread; lets the test wait for a line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc) -> None:
        for line in proc.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{''.join(self.lines)[-4000:]}")

    def text(self) -> str:
        self._thread.join(timeout=30)
        return "".join(self.lines)


def _registered_checkpoint_step(run_dir: Path) -> int | None:
    """The step of the latest checkpoint Ray Train has registered (its checkpoint manager's snapshot).

    Ray registers a checkpoint once the controller has polled every rank's report (every 2 s), so a
    checkpoint only counts from then on: a worker killed just after a report can lose that one."""
    try:
        latest = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())["latest_checkpoint_result"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return latest["metrics"]["step"] if latest else None


def _steps(client, run_id, key) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


@pytest.fixture()
def local_data(tmp_path, datasets_dir):
    """Four real photos to train on; two Set5 images (HR + MATLAB LR) to validate on."""
    return write_local_training_data(tmp_path, datasets_dir)


def test_srgan_run_survives_a_killed_worker(ray_cluster, repo_root, local_data, tmp_path):
    train_dir, val_dir = local_data
    save_generator(tmp_path / "srresnet", build_generator(GeneratorConfig(num_blocks=1, num_features=8, bicubic_skip=True)))
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    steps, every = 12, 4
    run_dir = tmp_path / "runs" / "gan"
    args = ["--data", str(train_dir), "--val-data", str(val_dir), "--workers", "2", "--batch-size", "4",
            "--storage", str(tmp_path / "runs"), "--tracking-uri", db, *SMALL, "--set", "data.crop_size=32",
            "--phase", "srgan", "--init-from", str(tmp_path / "srresnet"), "--vgg-weights", "random",
            "--name", "gan", "--steps", str(steps), "--max-failures", "2", "--set", "loss.content_layer=relu2_2",
            "--set", "train.log_every=1", "--set", f"train.val_every={every}", "--set", f"train.checkpoint_every={every}"]
    proc = subprocess.Popen([sys.executable, str(repo_root / "pipelines" / "train.py"), *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = _Output(proc)
    try:
        pid = int(output.wait_for(r"\[srgan\] worker rank 1/2 pid (\d+)", timeout=300).group(1))
        deadline = time.monotonic() + 300
        while (registered := _registered_checkpoint_step(run_dir)) is None:
            assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint was registered:\n" + "".join(output.lines)[-4000:]
            time.sleep(0.05)
        assert registered < steps, "the run finished before the kill; make it longer"
        os.kill(pid, signal.SIGKILL)  # the worker process dies mid-run
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = output.text()
    assert proc.returncode == 0, out[-5000:]

    # The failure: Ray Train's policy retried, a new worker group of two restored the last checkpoint.
    assert "[FailurePolicy] RETRY" in out
    resumed = [int(n) for n in re.findall(r"resumed from step (\d+)", out)]
    assert len(resumed) == 1 and resumed[0] % every == 0 and registered <= resumed[0] < steps, out[-5000:]
    pids = {int(p) for p in re.findall(r"worker rank \d/2 pid (\d+)", out)}
    assert pid in pids and len(pids) == 4
    assert "registered:  models:/srgan-generator-gan/1  (alias @champion)" in out

    # One MLflow run; every step logged exactly once, none missing, across the restart.
    client = MlflowClient(db, registry_uri=db)
    [run] = client.search_runs([client.get_experiment_by_name("srgan").experiment_id], "attributes.run_name = 'gan'")
    assert run.info.status == "FINISHED"
    for key in ("train/loss_g", "train/loss_d", "train/d_real", "train/d_fake"):
        assert _steps(client, run.info.run_id, key) == list(range(1, steps + 1)), key
    assert _steps(client, run.info.run_id, "val/psnr_y") == list(range(every, steps + 1, every))
    # The restored state carried D and its optimiser: the last checkpoint is the full step count.
    states = [torch.load(p, map_location="cpu", weights_only=True) for p in run_dir.glob("**/training_state.pt")]
    state = max(states, key=lambda s: s["step"])
    assert state["step"] == steps and state["optimizer_d"]["state"] and state["optimizer"]["state"]


def _s3_objects(client, bucket: str, prefix: str) -> dict[str, str]:
    """key (relative to prefix) -> ETag of every object under the prefix."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return {o["Key"][len(prefix) + 1 :]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def test_bulk_killed_part_way_then_rerun_leaves_one_complete_output_each(repo_root, ray_cluster, s3_bucket, tmp_path):
    import io

    from srgan.core.images import decode_image

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    photo = load_photo("astronaut.png")
    for i in range(16):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(photo[8 * i : 8 * i + 192, 8 * i : 8 * i + 192])).save(buf, format="PNG")
        client.put_object(Bucket=s3_bucket, Key=f"many/{i % 4}/img_{i:02d}.png", Body=buf.getvalue())
    torch.manual_seed(0)
    checkpoint = save_generator(tmp_path / "small", build_generator(GeneratorConfig(num_blocks=2, num_features=16)))
    inputs = sorted(_s3_objects(client, s3_bucket, "many"))
    args = [sys.executable, str(repo_root / "pipelines" / "upscale.py"), "--input", f"s3://{s3_bucket}/many",
            "--output", f"s3://{s3_bucket}/many-x4", "--model", str(checkpoint), "--num-cpus", "0.25", "--batch-size", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(_s3_objects(client, s3_bucket, "many-x4")) < 2:
        time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=30)
    written = _s3_objects(client, s3_bucket, "many-x4")
    assert 2 <= len(written) < len(inputs), f"not killed part-way: {len(written)} of {len(inputs)} written"

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    after = _s3_objects(client, s3_bucket, "many-x4")
    assert sorted(after) == inputs  # exactly one output per input, no report (nothing failed), nothing else
    skipped = int(rerun.stdout.split("skipped ")[1].split(",")[0])
    assert skipped >= len(written)  # what was complete before the kill was not redone
    for key in after:
        body = client.get_object(Bucket=s3_bucket, Key=f"many-x4/{key}")["Body"].read()
        assert decode_image(body).size == (768, 768)  # whole, decodable
