"""The reliability harness's scenarios (benchmarks/reliability.py runs them).

Each module here (serve.py, data.py, train.py) has ``SCENARIOS``: name -> :class:`Scenario`. A
scenario drives the real services on 127.0.0.1 (Ray, Serve, moto S3, MLflow), bounded in requests and
time, and returns its :class:`Outcome`: figures to print (times, counts, memory) and checks (what must
hold: zero 5xx, full step counts, identical outputs). ``--quick`` runs the scenarios marked quick, at
their quick size; CI asserts their checks (tests/test_reliability.py), never their times.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import proc_stats

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


@dataclass
class Outcome:
    name: str
    figures: dict[str, object] = field(default_factory=dict)  # printed: "p99 latency" -> "0.41 s"
    checks: dict[str, bool] = field(default_factory=dict)  # must hold: "zero 5xx" -> True
    ran: str = ""  # what it ran: request counts, sizes, cluster shape
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    def check(self, what: str, ok: bool) -> bool:
        self.checks[what] = bool(ok)
        return bool(ok)


@dataclass
class Run:
    """One harness run's settings, handed to every scenario."""

    quick: bool
    workdir: Path  # a fresh directory per run; a scenario makes its own subdirectory
    ray_address: str | None = None  # the shared local cluster (quick runs); a scenario may start its own

    def dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for a project command: the shared cluster (if any), token auth, no proxies."""
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update({"RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1"})
        if self.ray_address:
            env["RAY_ADDRESS"] = self.ray_address
        env.update(extra)
        return env


@dataclass(frozen=True)
class Scenario:
    run: Callable[[Run], Outcome]
    quick: bool  # part of --quick (CI)
    what: str  # one line for --list
    # Called for every selected scenario as the harness run begins, before any scenario runs: work it
    # may begin in the background (--quick: the shared training run overlaps the other scenarios, which
    # keeps the CI subset within its budget; full runs stay one scenario at a time, their times being
    # the figures).
    start: Callable[[Run], None] | None = None


def project_command(*args: str) -> list[str]:
    """``python pipelines/<script> ...`` with this interpreter."""
    return [PYTHON, str(REPO / "pipelines" / args[0]), *args[1:]]


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached in {timeout:.0f} s")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc, no psutil needed)."""
    children: dict[int, list[int]] = {}
    for child, _name, fields in proc_stats():
        children.setdefault(int(fields[1]), []).append(child)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def status_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory field of /proc/PID/status in MiB: VmRSS (resident now) or VmHWM (peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_mib(pid: int) -> float:
    """Resident memory of one process, MiB."""
    return status_mib(pid, "VmRSS")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an exited child not yet reaped still has a /proc entry)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def run_logged(cmd: list[str], log: Path, env: dict[str, str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a project command with its output in ``log``; the result's stdout is that output."""
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout, cwd=cwd, text=True)
    proc.stdout = log.read_text()
    return proc
