"""The production topology on 127.0.0.1, every part started by the session's fixtures
(tests/conftest.py, tests/servers.py): PostgreSQL (Debian's packages, installed by .ci/run when
missing), MLflow's tracking server started by infra/mlflow/mlflow-server.sh with PostgreSQL as its
backend store and its artifacts on a moto S3 server. The session's champion was trained against it
(a ``ray job submit`` of pipelines/train.py); here its record is read back from PostgreSQL itself
(MLflow's client on the postgresql:// URI, and plain SQL), its artifacts are listed in the S3 bucket,
and evaluation (from a client that cannot reach S3), the Serve endpoint and the bulk job load it
through the same server.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import boto3
import pytest
from PIL import Image

from conftest import RAY_SESSION, load_photo
from servers import free_port as _free_port

pytestmark = pytest.mark.slow

MODEL_NAME = "srgan-generator"


def test_server_script_keeps_the_password_out_of_the_uri(repo_root, tmp_path):
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:PASSWORD@db:5432/mlflow", "MLFLOW_ARTIFACTS_DESTINATION": "s3://b/p"}
    proc = subprocess.run(["bash", str(repo_root / "infra" / "mlflow" / "mlflow-server.sh")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "PGPASSWORD" in proc.stderr, proc.stderr
    env["MLFLOW_BACKEND_STORE_URI"] = "sqlite:///mlflow.db"
    proc = subprocess.run(["bash", str(repo_root / "infra" / "mlflow" / "mlflow-server.sh")], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "postgresql://" in proc.stderr, proc.stderr


def test_an_empty_tracking_uri_means_the_standard_variable(monkeypatch, tmp_path):
    """A cluster names its tracking server once, in every node's MLFLOW_TRACKING_URI."""
    from srgan.tracking.runs import resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.srgan.internal:5000")
    assert resolve_tracking_uri("") == resolve_tracking_uri(None) == "http://mlflow.srgan.internal:5000"
    assert resolve_tracking_uri("sqlite:///other.db") == f"sqlite:///{tmp_path / 'other.db'}"  # an explicit URI wins
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri("") == f"sqlite:///{tmp_path / 'mlflow.db'}"


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _without_s3_credentials(env: dict[str, str]) -> dict[str, str]:
    """A client environment with no way to reach S3: no AWS credentials, and an endpoint nothing
    listens on. Whatever this client loads must come through the MLflow server."""
    dead = _free_port()
    env = {k: v for k, v in env.items() if not k.startswith(("AWS_", "MLFLOW_S3_"))}
    env.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{dead}", "AWS_ACCESS_KEY_ID": "none", "AWS_SECRET_ACCESS_KEY": "none", "AWS_REGION": "us-east-1"})
    return env


def _s3_keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    paginator = boto3.client("s3", endpoint_url=endpoint).get_paginator("list_objects_v2")
    return [obj["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for obj in page.get("Contents", [])]


def _champion_job_dir(champion) -> Path:
    """Where the cluster unpacked the champion job's working directory (its driver's cwd)."""
    import re

    out = champion.proc.stdout + champion.proc.stderr
    package = re.search(r"Uploading package gcs://(_ray_pkg_[0-9a-f]+)\.zip", out).group(1)
    [unpacked] = [p for p in RAY_SESSION["temp_dir"].glob(f"**/{package}") if p.is_dir()]
    return unpacked


def test_the_champion_is_tracked_in_postgresql_and_s3(srresnet_champion, postgres_db, s3_server):
    from mlflow.tracking import MlflowClient

    champion, server = srresnet_champion, srresnet_champion.server
    # Nothing MLflow-related was written on the driver's disk: no SQLite file, no local artifact store;
    # and the server kept no artifacts on its own disk.
    job_dir = _champion_job_dir(champion)
    assert not [p for p in job_dir.rglob("*") if p.name in ("mlflow.db", "mlruns", "mlartifacts")]
    assert not any(server["workdir"].glob("ml*")), "the server kept artifacts on its own disk"

    # The record lives in PostgreSQL: MLflow's client straight on the database, not the server.
    os.environ["PGPASSWORD"] = postgres_db["password"]  # libpq's standard variable, as the server has it
    try:
        db = MlflowClient(tracking_uri=postgres_db["uri"], registry_uri=postgres_db["uri"])
        experiment = db.get_experiment_by_name("srgan")
        [run] = db.search_runs([experiment.experiment_id], "attributes.run_name = 'e2e'")
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        assert run.data.params["model.num_blocks"] == "1" and run.data.params["run.tracking_uri"] == server["url"]
        version = db.get_model_version(MODEL_NAME, "1")
        assert version.run_id == run.info.run_id and version.tags["step"] == "6"
        assert version.source.startswith("mlflow-artifacts:/")
    finally:
        os.environ.pop("PGPASSWORD", None)
    # ... and the same rows answer plain SQL.
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=postgres_db["port"], user="mlflow", dbname="mlflow", password=postgres_db["password"]) as conn:
        assert conn.execute("SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,)).fetchone() == ("FINISHED",)
        assert conn.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'val/psnr_y' AND step <= 6", (run.info.run_id,)).fetchone() == (2,)
        assert conn.execute("SELECT version FROM model_versions WHERE name = %s AND run_id = %s ORDER BY version LIMIT 1", (MODEL_NAME, run.info.run_id)).fetchone() == (1,)

    # The artifacts are objects in the server's bucket, under the run.
    run_prefix = f"{server['prefix']}/{experiment.experiment_id}/{run.info.run_id}/artifacts/"
    keys = _s3_keys(s3_server, server["bucket"], run_prefix)
    assert run_prefix + "generator/step_6/generator.safetensors" in keys and run_prefix + "generator/step_6/checkpoint.json" in keys, keys
    assert any(k.startswith(run_prefix + "images/") and "val_grid" in k for k in keys), keys
    # Ray Train's checkpoints went to the run storage on S3.
    bucket, prefix = champion.storage.removeprefix("s3://").split("/", 1)
    assert any(k.endswith("/training_state.pt") for k in _s3_keys(s3_server, bucket, f"{prefix}/e2e/")), f"no checkpoint in {champion.storage}/e2e/"


def test_evaluation_serve_and_bulk_load_the_champion_through_the_server(srresnet_champion, datasets_dir, s3_server, cli, tmp_path):
    server = srresnet_champion.server["url"]
    # Evaluation resolves version 1 through the server, from a client that cannot reach S3.
    evaluate = cli("evaluate", "--model", f"models:/{MODEL_NAME}/1", "--tracking-uri", server, "--data", str(datasets_dir / "Set5"), "--json",
                   env=_without_s3_credentials({}), unset=("MLFLOW_S3_ENDPOINT_URL",), cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    row = json.loads(evaluate.stdout)
    assert row["dataset"] == "Set5" and row["images"] == 5 and 10 < row["psnr_y"] < 35

    # The Serve endpoint loads the same version through the server and answers an upscale request
    # (its replica running the generator on onnxruntime).
    _serve_the_champion(server)

    # The bulk job resolves it through the server too, and writes x4 images to S3.
    bucket = srresnet_champion.storage.removeprefix("s3://").split("/", 1)[0]
    client = boto3.client("s3", endpoint_url=s3_server)
    client.put_object(Bucket=bucket, Key="incoming/a/photo.png", Body=_png(load_photo("coffee.png")[100:148, 200:264]))
    bulk = cli("upscale", "--input", f"s3://{bucket}/incoming", "--output", f"s3://{bucket}/upscaled",
               "--model", f"models:/{MODEL_NAME}/1", "--tracking-uri", server, "--workers", "1", "--num-cpus", "0.25",
               cwd=tmp_path, on_cluster=True)
    assert bulk.returncode == 0, bulk.stdout[-3000:] + bulk.stderr[-3000:]
    assert "done 1, skipped 0, failed 0" in bulk.stdout, bulk.stdout[-2000:]
    out = Image.open(io.BytesIO(client.get_object(Bucket=bucket, Key="upscaled/a/photo.png")["Body"].read()))
    assert out.size == (256, 192)


def _serve_the_champion(server: str) -> None:
    """The application pipelines/serve.py deploys, with the same options, deployed from this process on
    the session cluster (no second import of torch, Ray and MLflow; the CLI's own start and stop are
    tests/test_serving.py's). Its replica resolves the version through the server, exports it on the fly
    and runs it on onnxruntime."""
    import httpx
    from ray import serve

    from srgan.core.images import decode_image, encode_image
    from srgan.core.inference import UpscalerOptions
    from srgan.distributed.serving import APP_NAME, application
    from srgan.tracking.refs import load_upscaler

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(application({"model": f"models:/{MODEL_NAME}/1", "tracking_uri": server, "num_cpus": 0.25,
                               "refresh_interval_s": 0, "runtime": "onnxruntime"}),
                  name=APP_NAME, route_prefix="/")  # returns once the replica is up and has loaded the model
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
        photo = _png(load_photo("astronaut.png")[200:248, 160:224])  # a 64x48 crop
        resp = httpx.post(f"{url}/v1/upscale", content=photo, headers={"Content-Type": "image/png"}, timeout=120)
        assert resp.status_code == 200, resp.text[:500]
        assert resp.headers["X-Model-Name"] == MODEL_NAME and resp.headers["X-Model-Version"] == "1"
        assert resp.headers["X-Output-Size"] == "256x192"
        # The pixels are the registered champion's: the same weights, fetched through the server here and
        # run by torch (onnxruntime's parity bound is 1/255).
        champion = load_upscaler(f"models:/{MODEL_NAME}/1", tracking_uri=server, options=UpscalerOptions(tile_size=256, device="cpu"))
        expected = encode_image(champion.upscale_image(decode_image(photo)), "png")
        assert _same_pixels(resp.content, expected)
    finally:
        serve.shutdown()  # frees the replica's CPU share for the tests that follow on the shared cluster


def _same_pixels(a: bytes, b: bytes) -> bool:
    from srgan.core.images import decode_image

    x, y = decode_image(a), decode_image(b)
    return x.rgb.shape == y.rgb.shape and bool((x.rgb - y.rgb).abs().max() <= 1 / 255 + 1e-6)
