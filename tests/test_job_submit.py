"""`ray job submit --working-dir . -- python pipelines/train.py ...` against a running cluster: the
session's cluster (``ray start --head`` on 127.0.0.1, free ports, its dashboard on the loopback for the
job API, token auth on)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import RAY_SESSION

RAY = str(Path(sys.executable).with_name("ray"))


def test_ray_job_submit_trains_and_tracks(ray_cluster, ray_dashboard, repo_root, tmp_path):
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        RAY, "job", "submit", "--address", ray_dashboard, "--working-dir", ".", "--",
        "python", "pipelines/train.py", "--config", "configs/demo_cpu.yaml", "--steps", "3",
        "--name", "job-demo", "--storage", str(tmp_path / "runs"), "--tracking-uri", db,
        "--set", "train.log_every=1", "--set", "train.val_every=3", "--set", "train.checkpoint_every=3",
        "--set", "data.val_max_images=2",
    ]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=900, env={**os.environ, "RAY_AUTH_MODE": "token"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert re.search(r"Job '\S+' succeeded", out), out[-3000:]
    assert "[srgan] step 3/3" in out
    # What was uploaded (unpacked by the cluster) is the code only: .gitignore and .rayignore keep venvs,
    # MLflow stores, run storage, data, tests and .git out. The job itself then made data/demo there.
    package = re.search(r"Uploading package gcs://(_ray_pkg_[0-9a-f]+)\.zip", out).group(1)
    [unpacked] = [p for p in RAY_SESSION["temp_dir"].glob(f"**/{package}") if p.is_dir()]
    uploaded = [p.relative_to(unpacked) for p in unpacked.rglob("*") if p.is_file() and not p.relative_to(unpacked).parts[0] == "data"]
    tops = {p.parts[0] for p in uploaded}
    assert {"srgan", "pipelines", "configs", "pyproject.toml", "README.md"} <= tops
    assert not tops & {".venv", ".git", "tests", "mlflow.db", "runs", ".ci"}, sorted(tops)
    assert sum((unpacked / p).stat().st_size for p in uploaded) < 2 * 2**20

    client = MlflowClient(db, registry_uri=db)
    [run] = client.search_runs([client.get_experiment_by_name("srgan").experiment_id])
    assert run.info.run_name == "job-demo" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3]
    assert str(client.get_model_version_by_alias("srgan-generator", "champion").version) == "1"
