"""Real services for the harness, on 127.0.0.1: a local Ray head (and extra nodes, each under a temp
dir of its own so that it can be killed alone), a moto S3 server.
(MLflow on PostgreSQL: tests/servers.py's ``postgres`` and ``mlflow_server``, imported from here.)"""

from __future__ import annotations

import atexit
import os
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

from benchmarks.faults import REPO, process_tree

sys.path.insert(0, str(REPO / "tests"))
from servers import free_port, mlflow_server, postgres, stop, stop_process_trees, wait_for_port  # noqa: E402,F401 - re-exported

RAY = str(Path(sys.executable).with_name("ray"))


def harness_auth() -> None:
    """Token auth on, with a token file of this run's own (never the user's ~/.ray/auth_token)."""
    folder = Path(tempfile.mkdtemp(prefix="srgan-rel-auth-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # a secret: not left in /tmp after the run
    path = folder / "auth_token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)})


def _ray_env() -> dict[str, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    return env


def _ray_start(args: list[str]) -> None:
    for attempt in (1, 2):  # a loaded machine can miss GCS's start-up deadline once
        proc = subprocess.run([RAY, "start", *args], capture_output=True, text=True, timeout=180, env=_ray_env())
        if proc.returncode == 0:
            return
        if attempt == 2 or "Deadline Exceeded" not in proc.stdout + proc.stderr:
            raise RuntimeError(f"ray start failed: {(proc.stdout + proc.stderr)[-2000:]}")


@contextmanager
def ray_head(temp_dir: Path, *, num_cpus: int = 2, resources: str | None = None) -> Iterator[dict[str, str]]:
    """``ray start --head`` on 127.0.0.1 with free ports and the dashboard (State and job API) on the
    loopback; yields {"address", "dashboard", "temp_dir"}; stops only this cluster's processes."""
    ports = {name: free_port() for name in (
        "port", "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "metrics-export-port", "runtime-env-agent-port", "dashboard-port")}
    args = ["--head", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--object-store-memory=1000000000",
            "--disable-usage-stats", f"--temp-dir={temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1"]
    args += [f"--{name}={port}" for name, port in ports.items()]
    if resources:
        args.append(f"--resources={resources}")
    _ray_start(args)
    try:
        yield {"address": f"127.0.0.1:{ports['port']}", "dashboard": f"http://127.0.0.1:{ports['dashboard-port']}",
               "temp_dir": str(temp_dir)}
    finally:
        # A driver whose raylet dies is ended by Ray with exit code 1 (the harness itself connects
        # when a scenario runs Ray Data in-process): disconnect first, then stop the cluster. Only a
        # connection to this cluster: a scenario's own head stopping leaves the shared one's alone.
        # (By its port: Ray may name the machine's own address instead of 127.0.0.1.)
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized() and ray.get_runtime_context().gcs_address.rsplit(":", 1)[-1] == str(ports["port"]):
            ray.shutdown()
        kill_matching(str(temp_dir))
        # The Ray Client server names no temp dir and is no raylet's child: found by the GCS address.
        kill_matching(f"ray.util.client.server --address=127.0.0.1:{ports['port']} ")


def ray_worker_node(address: str, temp_dir: Path, *, num_cpus: int = 1, resources: str | None = None) -> dict[str, str]:
    """A node joined to ``address`` (its own raylet, object store and agents), its processes under
    ``temp_dir`` (keep it short: Ray's socket paths live there) and every listening port chosen free;
    blocks until it is up. Stop it with :func:`kill_node` (its processes alone: the head and other
    nodes stay)."""
    ports = {name: free_port() for name in (
        "node-manager-port", "object-manager-port", "metrics-export-port", "runtime-env-agent-port",
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port")}
    args = [f"--address={address}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
            "--object-store-memory=500000000", "--disable-usage-stats", f"--temp-dir={temp_dir}"]
    args += [f"--{name}={port}" for name, port in ports.items()]
    if resources:
        args.append(f"--resources={resources}")
    _ray_start(args)
    return {"temp_dir": str(temp_dir)}


def node_processes(temp_dir: Path | str) -> list[int]:
    """Every process of the Ray node whose temp dir is ``temp_dir``: those whose command line names it
    (raylet, agents, log monitor) and all their descendants (workers, actors, Ray Data tasks)."""
    pattern = str(temp_dir).rstrip("/")
    roots = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # The path, then a path or the next argument: /tmp/rn-1 does not match /tmp/rn-10's processes.
        if f"{pattern}/" in cmdline or f"{pattern} " in f"{cmdline} ":
            roots.append(int(entry.name))
    return sorted({pid for root in roots for pid in process_tree(root)} - {os.getpid()})


def kill_node(temp_dir: Path | str) -> int:
    """SIGKILL every process of the node under ``temp_dir`` at once (a machine lost: nothing is told,
    nothing flushes); returns how many were killed."""
    pids = node_processes(temp_dir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def kill_matching(pattern: str, grace_s: float = 2.0) -> None:
    """SIGTERM then SIGKILL every process whose command line holds ``pattern``, and their descendants."""
    stop_process_trees(pattern, grace_s)


@contextmanager
def moto_s3() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with fake keys in the standard AWS variables; yields its endpoint."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto S3 server did not start") from None
            time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "AKIASRGANRELIABILITY",
                       "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30), "AWS_REGION": "us-east-1"})
    try:
        yield endpoint
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
