"""pipelines/train.py end to end on real parts: moto S3, the session's Ray cluster, the MLflow server.

The session's champion run (``srresnet_champion`` in conftest.py): two DDP workers (gloo) train a small
generator from an S3 prefix that holds real photos and three bad objects. Here it is checked, resumed
with more steps on a local cluster of its own (whose console is checked), and the registered champion
is evaluated.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from test_console import assert_console_is_the_projects_own, local_cluster_env


def _metric_steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_train_from_s3_with_two_ddp_workers_then_resume(srresnet_champion, repo_root, cli, datasets_dir):
    """The session's champion run (tests/conftest.py): checked here, then resumed."""
    work, db, args, first = srresnet_champion.work, srresnet_champion.db, srresnet_champion.args, srresnet_champion.proc
    assert "registered:  models:/srgan-generator/1  (alias @champion)" in first.stdout

    client = MlflowClient(db, registry_uri=db)
    runs = client.search_runs([client.get_experiment_by_name("srgan").experiment_id], "attributes.run_name = 'e2e'")
    assert len(runs) == 1
    run = runs[0]
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    assert run.data.params["run.workers"] == "2" and run.data.params["model.num_blocks"] == "1"
    assert _metric_steps(client, run_id, "train/loss") == [2, 4, 6]
    assert _metric_steps(client, run_id, "val/psnr_y") == [3, 6]
    assert _metric_steps(client, run_id, "val/bicubic_psnr_y") == [3]
    skipped = client.get_run(run_id).data.metrics  # latest value of each metric
    assert skipped["data/skipped_total"] == 3
    assert skipped["data/skipped_corrupt"] == 1 and skipped["data/skipped_empty"] == 1 and skipped["data/skipped_not_image"] == 1
    assert "skipped:     3 objects" in first.stdout
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert any("val_grid" in p for p in images)
    champion = client.get_model_version_by_alias("srgan-generator", "champion")
    assert str(champion.version) == "1" and champion.run_id == run_id and champion.tags["step"] == "6"

    # Resume: same name and storage, more steps -> the same MLflow run continues from step 6. Run as on a
    # user's machine: no RAY_ADDRESS, so pipelines/train.py starts a local cluster of its own (beside the
    # session cluster, as the README's main command would beside another), resuming from S3 storage;
    # its console is checked too (tests/test_console.py).
    second = subprocess.run([sys.executable, str(repo_root / "pipelines" / "train.py"), *args, "--steps", "7"],
                            cwd=work, capture_output=True, text=True, timeout=600, env=local_cluster_env())
    console = second.stdout + second.stderr
    assert second.returncode == 0, console[-5000:]
    assert "resumed from step 6" in console
    assert_console_is_the_projects_own(console)
    assert "registered:  models:/srgan-generator/2" in console
    assert f"look:        {db.rstrip('/')}/#/experiments  (experiment 'srgan', run " in console  # the server's UI, not `mlflow ui`
    runs = client.search_runs([client.get_experiment_by_name("srgan").experiment_id], "attributes.run_name = 'e2e'")
    assert len(runs) == 1 and runs[0].info.run_id == run_id
    loss_steps = _metric_steps(client, run_id, "train/loss")
    assert loss_steps == [2, 4, 6, 7]  # every log_every steps, and the last step
    assert _metric_steps(client, run_id, "val/psnr_y") == [3, 6, 7]
    assert client.get_run(run_id).data.tags["param_change.train.steps"] == "6 -> 7"
    versions = sorted(int(v.version) for v in client.search_model_versions("name='srgan-generator'"))
    assert versions == [1, 2]

    # The registered champion evaluates through the registry URI.
    proc = cli("evaluate", "--model", "models:/srgan-generator@champion", "--tracking-uri", db, "--data", str(datasets_dir / "Set5"), "--json")
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["dataset"] == "Set5" and row["images"] == 5 and 10 < row["psnr_y"] < 35


@pytest.mark.parametrize(
    "args,match",
    [
        (["--phase", "gan"], "train.phase must be one of"),
        (["--data", "ftp://host/x", "--val-data", "x"], "unsupported URI"),
        (["--config", "missing.yaml"], "does not exist"),
        (["--steps", "-5"], "train.steps must be a positive integer"),
        (["--data", "/no/such/dir", "--val-data", "/tmp"], "training data /no/such/dir does not exist"),
        (["--set", "train.stepz=3"], "unknown key train.stepz"),
        (["--data", ".", "--val-data", "."], "has no HR/ folder"),
    ],
)
def test_bad_flags_fail_before_ray_starts(cli, tmp_path, args, match):
    proc = cli("train", *args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
