"""`ray job submit --working-dir . -- python pipelines/train.py ...` against a running cluster: the
session's champion is trained this way (tests/conftest.py), on the session's cluster (``ray start
--head`` on 127.0.0.1, free ports, its dashboard on the loopback for the job API, token auth on)."""

from __future__ import annotations

import re

from conftest import RAY_SESSION


def test_ray_job_submit_trains_and_tracks(srresnet_champion):
    out = srresnet_champion.proc.stdout + srresnet_champion.proc.stderr
    assert re.search(r"Job '\S+' succeeded", out), out[-3000:]
    # The job's console reaches the submitting terminal: the workers' lines and the driver's summary.
    assert "[srgan] worker rank 1/2" in out and "[srgan] step 6/6" in out, out[-3000:]
    assert "registered:  models:/srgan-generator/1  (alias @champion)" in out
    # What was uploaded (unpacked by the cluster) is the code only: .gitignore and .rayignore keep venvs,
    # MLflow stores, run storage, data, tests and .git out.
    package = re.search(r"Uploading package gcs://(_ray_pkg_[0-9a-f]+)\.zip", out).group(1)
    [unpacked] = [p for p in RAY_SESSION["temp_dir"].glob(f"**/{package}") if p.is_dir()]
    uploaded = [p.relative_to(unpacked) for p in unpacked.rglob("*") if p.is_file()]
    tops = {p.parts[0] for p in uploaded}
    assert {"srgan", "pipelines", "configs", "pyproject.toml", "README.md"} <= tops
    assert not tops & {".venv", ".git", "tests", "mlflow.db", "mlruns", "runs", "data", ".ci"}, sorted(tops)
    assert sum((unpacked / p).stat().st_size for p in uploaded) < 2 * 2**20
