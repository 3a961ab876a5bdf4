"""Shared fixtures: real data (../shared/datasets, scikit-image's photos) and real services (moto S3)."""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# Ray, for the whole session and the subprocesses it starts: token auth on (as shipped), and every
# Ray address on the loopback interface (Ray otherwise advertises the machine's own network IP).
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# Ray Train's controller polls its workers every 2 s by default, and the trainer waits for each
# checkpoint to be registered (srgan/distributed/trainer.py), so a tiny test run spends about 2 s per
# checkpoint and at the end just waiting for the next poll. Every Ray process the tests start (the
# session cluster, the pipelines' own local clusters) inherits this shorter interval.
os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"
# Raylets start Python workers ahead of demand (at start-up and for each new job). The tests' jobs are
# mostly actors, which get processes of their own anyway: in one session 12 of 77 worker processes
# started, imported Ray and exited without running anything, about a second of CPU each on a 2-core
# machine whose suite is CPU-bound. Workers start on demand instead.
os.environ["RAY_enable_worker_prestart"] = "0"
os.environ["RAY_prestart_worker_first_driver"] = "0"


def _session_ray_token() -> str:
    """A token file of this test session's own, named by RAY_AUTH_TOKEN_PATH for every Ray process
    the tests start. ``ray start`` never creates a token (only ``ray.init`` does, in ~/.ray), so
    on a clean machine the session cluster would not start; and the tests never touch the user's
    own ~/.ray/auth_token."""
    folder = Path(tempfile.mkdtemp(prefix="srgan-test-ray-auth-"))
    path = folder / "auth_token"
    path.write_text(secrets.token_hex(32))  # 256 bits, as `ray get-auth-token --generate`
    path.chmod(0o600)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return str(path)


os.environ.pop("RAY_AUTH_TOKEN", None)
os.environ["RAY_AUTH_TOKEN_PATH"] = _session_ray_token()


SESSION_AWS_KEYS = (f"AKIASRGANTEST{secrets.token_hex(4).upper()}", secrets.token_urlsafe(30))


def _shared_datasets() -> Path:
    return Path(os.environ.get("SRGAN_SHARED_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """../shared/datasets (Set5/Set14 for evaluation, train/ for training). Missing data is a failure, not a skip."""
    path = _shared_datasets()
    if not (path / "Set5" / "HR").is_dir():
        pytest.fail(f"benchmark data not found at {path}; set SRGAN_SHARED_DATASETS to the shared/datasets folder")
    return path


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    """scikit-image's bundled photos (real images that ship with an installed package)."""
    import skimage.data

    return Path(skimage.data.__file__).parent


def load_photo(name: str) -> np.ndarray:
    """A scikit-image photo as an (H, W, C) or (H, W) uint8 array."""
    from PIL import Image
    import skimage.data

    return np.asarray(Image.open(Path(skimage.data.__file__).parent / name))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real moto S3 server on 127.0.0.1, configured through the standard AWS variables."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto S3 server did not start")
            time.sleep(0.1)
    # Fake keys (moto takes any), distinctive enough that tests/test_security.py can grep every log and
    # MLflow record of the session for them.
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": SESSION_AWS_KEYS[0],
        "AWS_SECRET_ACCESS_KEY": SESSION_AWS_KEYS[1],
        "AWS_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture()
def s3_bucket(s3_server):
    """A fresh, empty bucket on the moto server; yields its name."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


def pytest_collection_modifyitems(config, items):
    # Everything that needs the session's Ray cluster, and every reliability and soak test, is `slow`
    # (`pytest -m "not slow"` is the everyday loop); tests that start Ray or servers of their own carry
    # the mark explicitly.
    for item in items:
        long_by_mark = any(item.get_closest_marker(name) for name in ("reliability", "soak"))
        if long_by_mark or "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    # A test that needs every CPU of the session cluster waits until nothing else holds one (the
    # champion's job, started in the background, holds two until it ends): it runs last, so that the
    # other tests fill that wait. The sort is stable: every other test keeps its place.
    items.sort(key=lambda item: item.get_closest_marker("whole_cluster") is not None)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (GPU-only test)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def start_ray_head(temp_dir: Path, *, num_cpus: int = 2, dashboard: bool = False) -> dict[str, str]:
    """``ray start --head`` on 127.0.0.1 with every listening port chosen free, so that several test
    sessions (or a job-submission cluster beside the session cluster) never collide on Ray's fixed
    defaults (6379, 10001, 52365, 8265...). Returns {"address": GCS address, "dashboard": URL or ""}."""
    ray_bin = Path(sys.executable).with_name("ray")
    ports = {name: _free_port() for name in (
        "port", "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "metrics-export-port", "runtime-env-agent-port", "dashboard-port")}
    args = [str(ray_bin), "start", "--head", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
            "--object-store-memory=1000000000", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    args += [f"--{name}={port}" for name, port in ports.items() if name != "dashboard-port"]
    if dashboard:
        args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard-port']}"]
    else:
        args += ["--include-dashboard=false"]
    # A job's entrypoint runs `python` from the node's PATH, as on a node built from the image.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)  # the head's job agent must find this cluster, not another one
    for attempt in (1, 2):  # on an overloaded machine the raylet can miss GCS's start-up deadline once
        proc = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env)
        if proc.returncode == 0:
            break
        stop_ray_head(temp_dir)
        if attempt == 2 or "Deadline Exceeded" not in proc.stderr + proc.stdout:
            pytest.fail(f"ray start failed: {proc.stderr[-2000:]}")
    return {
        "address": f"127.0.0.1:{ports['port']}",
        "dashboard": f"http://127.0.0.1:{ports['dashboard-port']}" if dashboard else "",
    }


def stop_ray_head(temp_dir: Path, address: str | None = None) -> None:
    """Stop only the cluster whose processes run under ``temp_dir`` (``ray stop`` would stop every Ray
    cluster on the machine). A test cluster has nothing to flush: its raylet and dashboard took the
    whole 2 s grace of a SIGTERM at every session's end, so they get a short one. The head's Ray
    Client server names no temp dir and is no raylet's child: it is found by the GCS ``address``
    (each session used to leave one running)."""
    from servers import stop_process_trees

    stop_process_trees(str(temp_dir), grace_s=0.3)
    if address is not None:
        stop_process_trees(ray_client_server_pattern(address), grace_s=0.3)


def ray_client_server_pattern(address: str) -> str:
    """What the command line of the Ray Client server of the cluster at ``address`` holds."""
    return f"ray.util.client.server --address={address} "


RAY_SESSION: dict = {}  # the session cluster's address, dashboard URL and temp dir


@pytest.fixture(scope="session")
def ray_dashboard(ray_cluster) -> str:
    """The session cluster's dashboard URL (127.0.0.1): the job API for ``ray job submit``."""
    return RAY_SESSION["dashboard"]


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """One real local Ray cluster for the whole test session (``ray start --head``), shared by in-process
    drivers (``ray.init(address=...)``) and by pipeline subprocesses (through RAY_ADDRESS).

    It starts after the S3 server so that its nodes carry the standard AWS variables in their
    environment, as a real cluster's nodes do (instance roles or node env; never passed in code)."""
    import ray

    temp_dir = Path("/tmp") / f"ray-{os.getpid()}"  # Ray's socket paths must stay short
    # Token auth stays on (Ray 2.60's default for local clusters); clients must say so explicitly.
    # The dashboard serves the State API (Ray Train polls it) and the job API (`ray job submit`).
    head = start_ray_head(temp_dir, dashboard=True)
    RAY_SESSION.update(head, temp_dir=temp_dir)
    env = {"RAY_ADDRESS": head["address"]}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    ray.init(address=env["RAY_ADDRESS"], log_to_driver=False)
    yield env["RAY_ADDRESS"]
    ray.shutdown()
    stop_ray_head(temp_dir, head["address"])
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class CliResult:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture()
def cli(capsys, monkeypatch):
    """Run ``pipelines/<name>.py``'s ``main`` in this process, as its ``__main__`` block does (through
    ``run_cli``), and return its exit status and output: flag and config errors are checked without a
    subprocess that imports torch, Ray and MLflow again. A tripwire on ``ray.init`` makes "fails before
    Ray starts" an assertion; with ``on_cluster=True`` a whole job runs on the session cluster instead. (tests/test_cli.py keeps a real subprocess for the exit-code contract.)"""
    import importlib.util

    import ray

    from srgan.app.cli import run_cli

    def tripwire(*args, **kwargs):
        raise AssertionError("Ray was started: the error was not caught before Ray starts")

    def run(name: str, *argv: str, cwd: Path | None = None, env: dict[str, str] | None = None, unset: tuple[str, ...] = (),
            on_cluster: bool = False) -> CliResult:
        """``on_cluster``: the pipeline runs its job on the session's Ray cluster, which this process
        is already connected to (``ray_cluster``); no tripwire then."""
        if on_cluster and not ray.is_initialized():
            raise AssertionError("on_cluster needs the ray_cluster fixture (this process connected to the session cluster)")
        path = REPO_ROOT / "pipelines" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"pipeline_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        with monkeypatch.context() as m:
            if not on_cluster:
                m.setattr(ray, "init", tripwire)
            m.setattr(sys, "argv", [str(path), *argv])
            if cwd is not None:
                m.chdir(cwd)
            for key, value in (env or {}).items():
                m.setenv(key, value)
            for key in unset:
                m.delenv(key, raising=False)
            capsys.readouterr()
            try:
                run_cli(module.main)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (tests/browser.py) for a module's page tests. Module-scoped, and those tests
    come last in their module: while Playwright's sync API is open, its event loop runs in this thread
    and ``asyncio.run`` fails."""
    from browser import CHROMIUM

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # Chromium's sandbox refuses to run as root
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield launched
        launched.close()


@pytest.fixture()
def offline(browser):
    """A fresh browser context and page that may only reach 127.0.0.1 (tests/browser.py)."""
    from browser import OfflinePage

    page = OfflinePage(browser)
    yield page
    page.context.close()


@pytest.fixture(scope="session")
def mlflow_sqlite_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, made once: MLflow's schema migrations take seconds per new file."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates every table (tracking and registry)
    return path


@pytest.fixture()
def mlflow_db(tmp_path, mlflow_sqlite_template) -> str:
    """A fresh, empty MLflow store for one test (a copy of the template): ``sqlite:///<tmp_path>/mlflow.db``."""
    shutil.copy(mlflow_sqlite_template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def closed_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fresh_urllib_opener():
    """urllib reads the proxy variables once, when its first urlopen() builds the process's opener
    (torch.hub downloads through it): drop that opener before and after, so this test's variables apply."""
    import urllib.request

    urllib.request.install_opener(None)
    yield
    urllib.request.install_opener(None)


@pytest.fixture
def no_network(monkeypatch, fresh_urllib_opener):
    """Every HTTP(S) request goes to a proxy on a closed port: a download fails for real, at once, even
    on a machine with a network (which must not download hundreds of MB)."""
    proxy = f"http://127.0.0.1:{closed_port()}"
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return proxy


def write_local_training_data(root: Path, datasets_dir: Path) -> tuple[Path, Path]:
    """Four real photos to train on (``root/train``); two Set5 images, HR + MATLAB LR, to validate on
    (``root/val``, the shared layout). Returns (train dir, val dir)."""
    from PIL import Image

    (root / "train").mkdir(parents=True)
    for name in ("astronaut.png", "rocket.jpg", "motorcycle_left.png", "coffee.png"):
        Image.fromarray(load_photo(name)).convert("RGB").save(root / "train" / f"{Path(name).stem}.png")
    for sub, suffix in (("HR", ""), ("LR_bicubic/X4", "x4")):
        (root / "val" / sub).mkdir(parents=True)
        for name in ("butterfly", "head"):
            shutil.copy(datasets_dir / "Set5" / sub / f"{name}{suffix}.png", root / "val" / sub)
    return root / "train", root / "val"


def randomise_bn_statistics(net: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm non-trivial running statistics (eval-mode BN is then a real affine map,
    not the identity a fresh net has); returns ``net`` in eval mode."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


# ------------------------------------------------------------------------- the session's champion

TRAIN_PHOTOS = ["astronaut.png", "rocket.jpg", "motorcycle_left.png", "ihc.png", "retina.jpg", "hubble_deep_field.jpg"]
SMALL_G = ["--set", "model.num_blocks=1", "--set", "model.num_features=8", "--set", "model.bicubic_skip=true"]


def _encoded(name: str, fmt: str, **params) -> bytes:
    """A scikit-image photo as RGB, encoded in ``fmt`` by PIL."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(load_photo(name)).convert("RGB").save(buf, format=fmt, **params)
    return buf.getvalue()


@pytest.fixture(scope="session")
def s3_training_data(s3_server, datasets_dir):
    """Nested real photos (some named .JPEG), a truncated JPEG, a zero-byte .jpg, a text file named .jpg;
    and a two-image validation set in the shared layout. Returns (train URI, validation URI)."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    bucket = "train-e2e"
    client.create_bucket(Bucket=bucket)
    for i, name in enumerate(TRAIN_PHOTOS):
        key = f"imagenet/train/n0{i % 3}/img_{i}.JPEG" if i % 2 == 0 else f"imagenet/train/n0{i % 3}/deeper/img_{i}.png"
        client.put_object(Bucket=bucket, Key=key, Body=_encoded(name, "JPEG", quality=92) if key.endswith(".JPEG") else _encoded(name, "PNG"))
    client.put_object(Bucket=bucket, Key="imagenet/train/n00/truncated.jpg", Body=_encoded("coffee.png", "JPEG", quality=92)[:3000])
    client.put_object(Bucket=bucket, Key="imagenet/train/n01/empty.jpg", Body=b"")
    client.put_object(Bucket=bucket, Key="imagenet/train/n02/notes.jpg", Body=b"this is not an image\n")
    for name in ("baby", "bird"):
        client.upload_file(str(datasets_dir / "Set5" / "HR" / f"{name}.png"), bucket, f"val/Set5/HR/{name}.png")
        client.upload_file(str(datasets_dir / "Set5" / "LR_bicubic" / "X4" / f"{name}x4.png"), bucket, f"val/Set5/LR_bicubic/X4/{name}x4.png")
    return f"s3://{bucket}/imagenet/train", f"s3://{bucket}/val/Set5"


class Champion:
    """The session's trained SRResNet: ``models:/srgan-generator@champion`` on the tracking server."""

    ref = "models:/srgan-generator@champion"

    def __init__(self, work: Path, db: str, args: list[str], proc: subprocess.CompletedProcess, server: dict, storage: str) -> None:
        # ``db`` is the tracking URI (the server's URL) that every client of the champion passes.
        self.work, self.db, self.args, self.proc, self.server, self.storage = work, db, args, proc, server, storage


@pytest.fixture(scope="session")
def tracking_stack(s3_server, tmp_path_factory):
    """The production tracking topology for the session (tests/servers.py), started in a thread: its
    ~10 s of start-up (initdb, MLflow's server and its schema migrations) overlap the session cluster's
    when :func:`champion_job` asks for this first. A future of (PostgreSQL, MLflow server)."""
    import concurrent.futures
    import threading

    from servers import mlflow_server, postgres

    work = tmp_path_factory.mktemp("mlflow-server")
    ready: concurrent.futures.Future = concurrent.futures.Future()
    done = threading.Event()
    stop_errors: list[BaseException] = []

    def serve() -> None:
        try:
            with postgres() as pg, mlflow_server(pg, s3_server, REPO_ROOT, work) as server:
                ready.set_result((pg, server))
                done.wait()
        except BaseException as exc:  # noqa: BLE001 - pytest.fail's exception too
            if ready.done():
                stop_errors.append(exc)  # raised by this fixture's teardown, as a stop failure was before
            else:
                ready.set_exception(exc)  # raised again by .result()

    thread = threading.Thread(target=serve, name="tracking-stack", daemon=True)
    thread.start()
    yield ready
    done.set()  # both servers stop in the thread, the MLflow server first
    thread.join(timeout=60)
    if thread.is_alive():
        pytest.fail("PostgreSQL and the MLflow server did not stop within 60 s")
    if stop_errors:
        raise stop_errors[0]


@pytest.fixture(scope="session")
def postgres_db(tracking_stack):
    """A throw-away PostgreSQL cluster for the session: MLflow's backend store."""
    return tracking_stack.result(timeout=300)[0]


@pytest.fixture(scope="session")
def tracking_server(tracking_stack):
    """MLflow's tracking server for the session, as deployed: infra/mlflow/mlflow-server.sh with the
    PostgreSQL backend store and artifacts proxied to the moto S3 server."""
    return tracking_stack.result(timeout=300)[1]


@pytest.fixture(scope="session")
def champion_job(tracking_stack, ray_cluster, ray_dashboard, s3_training_data, tracking_server, tmp_path_factory) -> dict:
    """The champion's ``ray job submit``, started and not waited for (:func:`srresnet_champion` waits).
    :func:`champion_in_the_background` starts it as the session begins, so that the job's minute or
    two of mostly waiting on Ray's start-up overlaps the single-threaded tests before its first user.
    ``tracking_stack`` comes first: the tracking servers start in a thread while the cluster starts."""
    train_uri, val_uri = s3_training_data
    work = tmp_path_factory.mktemp("champion")
    server = tracking_server["url"]
    storage = f"{train_uri.split('/imagenet')[0]}/runs"
    args = [
        "--data", train_uri, "--val-data", val_uri, "--workers", "2", "--batch-size", "4",
        "--name", "e2e", "--storage", storage, "--tracking-uri", server, *SMALL_G,
        "--set", "data.crop_size=32", "--set", "data.crops_per_image=2",
        "--set", "train.log_every=2", "--set", "train.val_every=3", "--set", "train.checkpoint_every=3",
    ]
    ray = str(Path(sys.executable).with_name("ray"))
    out, err = open(work / "submit.out", "w+"), open(work / "submit.err", "w+")  # files: a full pipe would block the job
    proc = subprocess.Popen([ray, "job", "submit", "--address", ray_dashboard, "--working-dir", ".", "--",
                             "python", "pipelines/train.py", *args, "--steps", "6"],
                            cwd=REPO_ROOT, stdout=out, stderr=err, text=True)
    yield {"proc": proc, "out": out, "err": err, "work": work, "args": args, "server": tracking_server, "storage": storage}
    if proc.poll() is None:
        proc.kill()
    out.close()
    err.close()


@pytest.fixture(scope="session", autouse=True)
def champion_in_the_background(request):
    """Start the champion's job as the session begins when a selected test needs it (nothing otherwise:
    ``pytest -m "not slow"`` and single modules start no Ray)."""
    if any("srresnet_champion" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("champion_job")
    yield


@pytest.fixture(scope="session")
def srresnet_champion(champion_job) -> Champion:
    """One real training run for the whole session, submitted as users do (``ray job submit
    --working-dir . -- python pipelines/train.py ...``) to the session cluster: two DDP workers, 6
    steps from S3 with three bad objects, checkpoints on S3, tracked on the MLflow server (PostgreSQL
    and S3 artifacts). Its best generator is ``models:/srgan-generator@champion``. The job-submission,
    production-tracking, training and SRGAN-phase tests check it, resume it and start from it (a
    resume with ``--name e2e`` and the same storage registers version 2)."""
    job = champion_job
    returncode = job["proc"].wait(timeout=600)
    job["out"].seek(0)
    job["err"].seek(0)
    proc = subprocess.CompletedProcess(job["proc"].args, returncode, job["out"].read(), job["err"].read())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return Champion(job["work"], job["server"]["url"], job["args"], proc, job["server"], job["storage"])
