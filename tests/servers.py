"""The production tracking topology on 127.0.0.1, for the session's fixtures (tests/conftest.py):
a throw-away PostgreSQL cluster (Debian's packages, installed by .ci/run when missing) and MLflow's
tracking server started by infra/mlflow/mlflow-server.sh, with PostgreSQL as its backend store and
its artifacts proxied to a bucket on the moto S3 server. Plain functions: conftest wraps them in
session fixtures, and they stop only the processes they started."""

from __future__ import annotations

import glob
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float, log: Path | None = None) -> None:
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


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, *, group: bool = False, grace_s: float = 5) -> None:
    """Stop a process started here (its own process group when ``group``), by its id; SIGKILL after
    ``grace_s`` (a test server has nothing to flush that a test still needs)."""
    if proc.poll() is not None:
        return
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(timeout=10)


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line), read from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        table[int(entry.name)] = (ppid, cmdline)
    return table


def stop_process_trees(pattern: str, grace_s: float = 2.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``, every process whose command line holds ``pattern`` and
    every descendant of one. Descendants are gathered first: a Ray node's agents (``ray::RuntimeEnvAgent``)
    carry no temp-dir path in their renamed command line and outlive a killed raylet otherwise."""
    table = _process_table()
    pids = {pid for pid, (_, cmd) in table.items() if pattern in cmd and pid != os.getpid()}
    todo = list(pids)
    while todo:
        parent = todo.pop()
        for pid, (ppid, _) in table.items():
            if ppid == parent and pid not in pids and pid != os.getpid():
                pids.add(pid)
                todo.append(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in alive):
            time.sleep(0.1)


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


@contextmanager
def postgres() -> Iterator[dict]:
    """A PostgreSQL cluster on 127.0.0.1 (free port, socket in its own directory), with a login role
    and database 'mlflow' whose password is made here and given to clients as PGPASSWORD. TCP clients
    must authenticate (scram-sha-256); only the local socket trusts its owner."""
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
    port = free_port()
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            [_pg_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50"],
            stdout=log_file, stderr=subprocess.STDOUT, **run_as,
        )
    try:
        wait_for_port(port, proc, "PostgreSQL", 60, log)
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
        stop(proc, signal.SIGINT)  # "fast" shutdown: does not wait for clients to disconnect
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def mlflow_server(pg: dict, s3_endpoint: str, repo_root: Path, work: Path) -> Iterator[dict]:
    """infra/mlflow/mlflow-server.sh: PostgreSQL backend store and registry, artifacts proxied to
    s3://<bucket>/mlflow-artifacts on the moto server. Only the server holds S3 credentials for it."""
    import boto3

    bucket = "mlflow-prod"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    port = free_port()
    log = work / "server.log"  # ``work`` is the server's working directory: nothing else may land there
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_BACKEND_STORE_URI": pg["uri"],
        "PGPASSWORD": pg["password"],
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{bucket}/mlflow-artifacts",
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
    }
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            ["bash", str(repo_root / "infra" / "mlflow" / "mlflow-server.sh")],
            cwd=work, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for_port(port, proc, "mlflow server", 180, log)
        yield {"url": f"http://127.0.0.1:{port}", "bucket": bucket, "prefix": "mlflow-artifacts", "workdir": work, "log": log}
    finally:
        stop(proc, group=True)  # the server and its uvicorn workers: the group started here
