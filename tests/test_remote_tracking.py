"""The production topology on 127.0.0.1, every part started here: PostgreSQL (Debian's packages,
installed by .ci/run when missing), MLflow's tracking server started by infra/mlflow/mlflow-server.sh
with PostgreSQL as its backend store and its artifacts on a moto S3 server, a short training run
that logs to it over HTTP, then evaluation, the Serve endpoint and the bulk job loading the
registered champion through the same server.

Run, metrics and model version are read back from PostgreSQL itself (MLflow's client on the
postgresql:// URI, and plain SQL); the artifacts are listed in the S3 bucket.
"""

from __future__ import annotations

import glob
import io
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import pytest
from PIL import Image

from conftest import load_photo

pytestmark = pytest.mark.slow

PHOTOS = ["astronaut.png", "rocket.jpg", "motorcycle_left.png", "coffee.png"]
MODEL_NAME = "srgan-generator"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    pytest.fail(f"{what} did not start on port {port} (exit status {proc.poll()}):\n{tail}")


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, *, group: bool = False) -> None:
    """Stop a process this module started (its own process group when ``group``), by its id."""
    if proc.poll() is not None:
        return
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(timeout=10)


# ----------------------------------------------------------------------------------- PostgreSQL


def _pg_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else where Debian's packages put it (the newest major)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[4]))
    if not candidates:
        pytest.fail(f"PostgreSQL's {name} not found (on PATH or /usr/lib/postgresql/*/bin): .ci/run installs Debian's postgresql package")
    return candidates[-1]


def _server_user() -> dict:
    """initdb and postgres refuse to run as root: as root, run them as 'nobody'."""
    if os.geteuid() != 0:
        return {}
    return {"user": "nobody", "group": pwd.getpwnam("nobody").pw_gid}


@pytest.fixture(scope="module")
def postgres():
    """A throw-away PostgreSQL cluster on 127.0.0.1 (free port, socket in its own directory), with a
    login role and database 'mlflow' whose password is made here and given to clients as PGPASSWORD.
    TCP clients must authenticate (scram-sha-256); only the local socket trusts its owner."""
    import psycopg
    from psycopg import sql

    run_as = _server_user()
    # Not under pytest's tmp_path: 'nobody' must be able to reach it (/tmp/pytest-of-root is 0700).
    root = Path(tempfile.mkdtemp(prefix="srgan-pg-"))
    if run_as:
        os.chown(root, pwd.getpwnam("nobody").pw_uid, run_as["group"])
    data, log = root / "data", root / "postgres.log"
    init = subprocess.run(
        [_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--no-sync",
         "--auth-local=trust", "--auth-host=scram-sha-256"],
        capture_output=True, text=True, timeout=120, **run_as,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed: {init.stderr[-2000:]}")
    port = _free_port()
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            [_pg_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50"],
            stdout=log_file, stderr=subprocess.STDOUT, **run_as,
        )
    try:
        _wait_for_port(port, proc, "PostgreSQL", 60, log)
        password = secrets.token_urlsafe(24)
        # The superuser over the local socket (trust) creates the MLflow role and database.
        with psycopg.connect(host=str(root), port=port, user="postgres", dbname="postgres", autocommit=True) as conn:
            for _ in range(50):  # the socket accepts connections a moment after the TCP port
                try:
                    conn.execute("SELECT 1")
                    break
                except psycopg.OperationalError:
                    time.sleep(0.1)
            conn.execute(sql.SQL("CREATE ROLE mlflow LOGIN PASSWORD {}").format(sql.Literal(password)))
            conn.execute("CREATE DATABASE mlflow OWNER mlflow")
        yield {"host": "127.0.0.1", "port": port, "password": password, "uri": f"postgresql://mlflow@127.0.0.1:{port}/mlflow"}
    finally:
        _stop(proc, signal.SIGINT)  # "fast" shutdown: does not wait for clients to disconnect
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------- MLflow server


@pytest.fixture(scope="module")
def mlflow_server(postgres, s3_server, repo_root, tmp_path_factory):
    """infra/mlflow/mlflow-server.sh: PostgreSQL backend store and registry, artifacts proxied to
    s3://<bucket>/mlflow-artifacts on the moto server. Only the server holds S3 credentials."""
    bucket = "mlflow-prod"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    port = _free_port()
    work = tmp_path_factory.mktemp("mlflow-server")  # its working directory: nothing may land here
    log = work / "server.log"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_BACKEND_STORE_URI": postgres["uri"],
        "PGPASSWORD": postgres["password"],
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{bucket}/mlflow-artifacts",
        "MLFLOW_S3_ENDPOINT_URL": s3_server,
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
    }
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            ["bash", str(repo_root / "infra" / "mlflow" / "mlflow-server.sh")],
            cwd=work, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        _wait_for_port(port, proc, "mlflow server", 180, log)
        yield {"url": f"http://127.0.0.1:{port}", "bucket": bucket, "prefix": "mlflow-artifacts", "workdir": work, "log": log}
    finally:
        _stop(proc, group=True)  # the server and its uvicorn workers: the group this fixture started


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


# --------------------------------------------------------------------------------- the pipeline


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def training_data(s3_server, datasets_dir):
    """Four real photos and a two-image validation set (shared layout) in their own bucket."""
    client = boto3.client("s3", endpoint_url=s3_server)
    bucket = "prod-data"
    client.create_bucket(Bucket=bucket)
    for i, name in enumerate(PHOTOS):
        client.put_object(Bucket=bucket, Key=f"train/img_{i}.png", Body=_png(load_photo(name)))
    for name in ("baby", "bird"):
        client.upload_file(str(datasets_dir / "Set5" / "HR" / f"{name}.png"), bucket, f"val/Set5/HR/{name}.png")
        client.upload_file(str(datasets_dir / "Set5" / "LR_bicubic" / "X4" / f"{name}x4.png"), bucket, f"val/Set5/LR_bicubic/X4/{name}x4.png")
    return bucket


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


def test_training_tracks_to_the_server_and_the_champion_is_served(ray_cluster, repo_root, datasets_dir, s3_server, mlflow_server, postgres, training_data, tmp_path):
    from mlflow.tracking import MlflowClient

    server = mlflow_server["url"]
    work = tmp_path / "client"
    work.mkdir()
    train = subprocess.run(
        [sys.executable, str(repo_root / "pipelines" / "train.py"),
         "--data", f"s3://{training_data}/train", "--val-data", f"s3://{training_data}/val/Set5",
         "--storage", f"s3://{training_data}/runs", "--name", "prod-e2e", "--tracking-uri", server,
         "--workers", "1", "--batch-size", "2", "--steps", "4",
         "--set", "model.num_blocks=1", "--set", "model.num_features=8", "--set", "model.bicubic_skip=true",
         "--set", "data.crop_size=32", "--set", "data.crops_per_image=2",
         "--set", "train.log_every=2", "--set", "train.val_every=4", "--set", "train.checkpoint_every=4"],
        cwd=work, capture_output=True, text=True, timeout=600,
        env={**os.environ, "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"},
    )
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    assert f"registered:  models:/{MODEL_NAME}/1  (alias @champion)" in train.stdout
    # Nothing MLflow-related was written on the client's disk: no SQLite file, no local artifact store.
    assert sorted(p.name for p in work.iterdir()) == [], list(work.iterdir())
    assert not any(mlflow_server["workdir"].glob("ml*")), "the server kept artifacts on its own disk"

    # The record lives in PostgreSQL: MLflow's client straight on the database, not the server.
    os.environ["PGPASSWORD"] = postgres["password"]  # libpq's standard variable, as the server has it
    try:
        db = MlflowClient(tracking_uri=postgres["uri"], registry_uri=postgres["uri"])
        experiment = db.get_experiment_by_name("srgan")
        runs = db.search_runs([experiment.experiment_id])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        run = runs[0]
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        assert run.data.params["model.num_blocks"] == "1" and run.data.params["run.tracking_uri"] == server
        assert [m.step for m in db.get_metric_history(run.info.run_id, "train/loss")] == [2, 4]
        assert [m.step for m in db.get_metric_history(run.info.run_id, "val/psnr_y")] == [4]
        version = db.get_model_version_by_alias(MODEL_NAME, "champion")
        assert str(version.version) == "1" and version.run_id == run.info.run_id and version.tags["step"] == "4"
        assert version.source.startswith("mlflow-artifacts:/")
    finally:
        os.environ.pop("PGPASSWORD", None)
    # ... and the same rows answer plain SQL.
    import psycopg

    with psycopg.connect(host="127.0.0.1", port=postgres["port"], user="mlflow", dbname="mlflow", password=postgres["password"]) as conn:
        assert conn.execute("SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,)).fetchone() == ("FINISHED",)
        assert conn.execute("SELECT count(*) FROM metrics WHERE run_uuid = %s AND key = 'train/loss'", (run.info.run_id,)).fetchone() == (2,)
        assert conn.execute("SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'champion'", (MODEL_NAME,)).fetchone() == (1,)

    # The artifacts are objects in the server's bucket, under the run.
    run_prefix = f"{mlflow_server['prefix']}/{experiment.experiment_id}/{run.info.run_id}/artifacts/"
    keys = _s3_keys(s3_server, mlflow_server["bucket"], run_prefix)
    assert run_prefix + "generator/step_4/generator.safetensors" in keys and run_prefix + "generator/step_4/checkpoint.json" in keys, keys
    assert any(k.startswith(run_prefix + "images/") and "val_grid" in k for k in keys), keys
    # Ray Train's checkpoints went to the run storage on S3.
    assert any(k.endswith("/training_state.pt") for k in _s3_keys(s3_server, training_data, "runs/prod-e2e/")), "no checkpoint in s3://.../runs/prod-e2e/"

    # Evaluation resolves the champion through the server, from a client that cannot reach S3.
    evaluate = subprocess.run(
        [sys.executable, str(repo_root / "pipelines" / "evaluate.py"), "--model", f"models:/{MODEL_NAME}@champion",
         "--tracking-uri", server, "--data", str(datasets_dir / "Set5"), "--json"],
        cwd=work, capture_output=True, text=True, timeout=300, env=_without_s3_credentials(dict(os.environ)),
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    row = json.loads(evaluate.stdout)
    assert row["dataset"] == "Set5" and row["images"] == 5 and 10 < row["psnr_y"] < 35

    # The Serve endpoint loads the same champion through the server and answers an upscale request.
    _serve_the_champion(repo_root, server, tmp_path)

    # The bulk job resolves the champion through the server too, and writes x4 images to S3.
    client = boto3.client("s3", endpoint_url=s3_server)
    client.put_object(Bucket=training_data, Key="incoming/a/photo.png", Body=_png(load_photo("coffee.png")[100:148, 200:264]))
    bulk = subprocess.run(
        [sys.executable, str(repo_root / "pipelines" / "upscale.py"), "--input", f"s3://{training_data}/incoming",
         "--output", f"s3://{training_data}/upscaled", "--model", f"models:/{MODEL_NAME}@champion", "--tracking-uri", server,
         "--workers", "1", "--num-cpus", "0.25"],
        cwd=work, capture_output=True, text=True, timeout=600,
    )
    assert bulk.returncode == 0, bulk.stdout[-3000:] + bulk.stderr[-3000:]
    assert "done 1, skipped 0, failed 0" in bulk.stdout, bulk.stdout[-2000:]
    out = Image.open(io.BytesIO(client.get_object(Bucket=training_data, Key="upscaled/a/photo.png")["Body"].read()))
    assert out.size == (256, 192)


def _serve_the_champion(repo_root: Path, server: str, tmp_path: Path) -> None:
    import httpx
    from ray import serve

    from srgan.core.images import decode_image, encode_image
    from srgan.core.inference import UpscalerOptions
    from srgan.tracking.refs import load_upscaler

    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(repo_root / "pipelines" / "serve.py"), "--model", f"models:/{MODEL_NAME}@champion",
             "--tracking-uri", server, "--port", str(port), "--num-cpus", "0.25", "--refresh-interval", "0"],
            cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT, env=_without_s3_credentials(dict(os.environ)),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            assert proc.poll() is None, f"serve.py exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, f"the endpoint did not become healthy:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        photo = _png(load_photo("astronaut.png")[200:248, 160:224])  # a 64x48 crop
        resp = httpx.post(f"{url}/v1/upscale", content=photo, headers={"Content-Type": "image/png"}, timeout=120)
        assert resp.status_code == 200, resp.text[:500]
        assert resp.headers["X-Model-Name"] == MODEL_NAME and resp.headers["X-Model-Version"] == "1"
        assert resp.headers["X-Output-Size"] == "256x192"
        # The pixels are the registered champion's: the same weights, fetched through the server here.
        champion = load_upscaler(f"models:/{MODEL_NAME}/1", tracking_uri=server, options=UpscalerOptions(tile_size=256, device="cpu"))
        expected = encode_image(champion.upscale_image(decode_image(photo)), "png")
        assert _same_pixels(resp.content, expected)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # serve.py deletes its application (or shuts Serve down) and exits
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        serve.shutdown()  # frees the replica's CPU share for the tests that follow on the shared cluster


def _same_pixels(a: bytes, b: bytes) -> bool:
    from srgan.core.images import decode_image

    x, y = decode_image(a), decode_image(b)
    return x.rgb.shape == y.rgb.shape and bool((x.rgb - y.rgb).abs().max() <= 1 / 255 + 1e-6)
