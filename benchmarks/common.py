"""What every benchmark row shares: the row record, the run's settings, side-by-side timing and the
ImageNet-like test images. Rows live in benchmarks/rows/<group>.py; benchmarks/run.py runs them."""

from __future__ import annotations

import io
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    name: str
    project: str  # this project's figure, with its unit
    baseline: str  # the baseline's or the limit's figure
    ratio: float
    target: str
    passed: bool
    ran: str  # what the row ran (sizes, counts)


@dataclass
class Settings:
    """One run's settings, handed to every row function."""

    quick: bool = False
    repeats: int = 7
    min_seconds: float = 1.0  # each timed repeat runs its side for at least this long
    gpu: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    @cached_property
    def images(self) -> dict[str, list[bytes]]:
        """The ImageNet-like JPEGs and PNGs (24 quick, 96 full), made once per run."""
        return imagenet_like(24 if self.quick else 96)


def shared_train() -> Path:
    root = Path(os.environ.get("SRGAN_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
    return root / "train"


def imagenet_like(count: int) -> dict[str, list[bytes]]:
    """``count`` photos resized to 500x375 (bicubic), as JPEG q90 and as PNG (PIL defaults)."""
    paths = sorted(p for p in shared_train().rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if not paths:
        raise SystemExit(f"error: no training photos under {shared_train()}; set SRGAN_SHARED_DATASETS")
    out: dict[str, list[bytes]] = {"jpeg": [], "png": []}
    for path in (paths * (count // len(paths) + 1))[:count]:
        img = Image.open(path).convert("RGB").resize((500, 375), Image.Resampling.BICUBIC)
        for fmt, key, params in (("JPEG", "jpeg", {"quality": 90}), ("PNG", "png", {})):
            buf = io.BytesIO()
            img.save(buf, format=fmt, **params)
            out[key].append(buf.getvalue())
    return out


def median_rate(fn: Callable[[], int], repeats: int, min_seconds: float) -> float:
    """Items per second of ``fn`` (which returns how many items it did): the median of ``repeats``
    timings, each of whole calls lasting at least ``min_seconds`` (one pass over a few dozen images is
    too short to time on a shared machine)."""
    rates = []
    for _ in range(repeats):
        t0, n = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - t0) < min_seconds or n == 0:
            n += fn()
        rates.append(n / elapsed)
    return statistics.median(rates)


def side_by_side(a: Callable[[], int], b: Callable[[], int], s: Settings) -> tuple[float, float]:
    """Median rates of ``a`` and ``b``, measured alternately (one warm-up each first), so that load on
    the machine falls on both sides alike."""
    a(), b()
    rates_a, rates_b = [], []
    for _ in range(s.repeats):
        rates_a.append(median_rate(a, 1, s.min_seconds))
        rates_b.append(median_rate(b, 1, s.min_seconds))
    return statistics.median(rates_a), statistics.median(rates_b)


class torch_threads:
    """``with torch_threads(1): ...`` runs a per-core row, then restores torch's thread count."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        import torch

        self.saved = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.saved)


# ----------------------------------------------------------------------------- shared by the rows
# Imports of Ray, boto3 and torch stay inside these helpers: benchmarks/rows/gpu.py runs on a bare
# GPU machine that has torch and PIL only, and imports this module.


def machine() -> str:
    """One line naming the CPU (or GPU) a figure came from."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class moto_s3:
    """``with moto_s3() as endpoint:`` a moto S3 server on 127.0.0.1 (its own process, ended on exit),
    with the standard AWS variables pointing at it while the block runs."""

    def __enter__(self) -> str:
        import socket
        import subprocess
        import sys

        port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.proc.kill()
                    raise RuntimeError("moto S3 server did not start") from None
                time.sleep(0.1)
        self.endpoint = f"http://127.0.0.1:{port}"
        env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_REGION": "us-east-1"}
        self.saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        return self.endpoint

    def __exit__(self, *exc) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self.proc.terminate()
        self.proc.wait(timeout=10)


class local_ray:
    """``with local_ray(num_cpus=2):`` this row's own local Ray (never another engineer's cluster:
    RAY_ADDRESS is ignored while it runs), shut down on exit. ``dashboard=True`` where Ray Train runs
    (its placement-group cleaner polls the State API the dashboard serves)."""

    def __init__(self, num_cpus: int = 2, dashboard: bool = False):
        self.num_cpus, self.dashboard = num_cpus, dashboard

    def __enter__(self):
        import ray

        self.saved_address = os.environ.pop("RAY_ADDRESS", None)
        # Ray starts its workers at nice 15. On a machine shared with other (nice 0) work, its tasks,
        # actors and replicas then get a small fraction of the CPU that the baseline, running in this
        # process or its children at nice 0, gets: a row would measure priority, not code. Both sides
        # run at the same priority here (a setting of this benchmark, not of the project's clusters).
        self.saved_niceness = os.environ.get("RAY_worker_niceness")
        os.environ["RAY_worker_niceness"] = str(os.nice(0))
        kwargs = {"dashboard_host": "127.0.0.1"} if self.dashboard else {}
        ray.init(num_cpus=self.num_cpus, _node_ip_address="127.0.0.1", include_dashboard=self.dashboard,
                 log_to_driver=False, configure_logging=False, **kwargs)
        if self.dashboard:  # Ray Train's workers find this cluster, not another one on the machine
            os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        import logging
        import warnings

        # The table is the output: Ray Data's per-dataset INFO lines and its concurrency hints are noise here.
        for name in ("ray.data", "ray.train", "ray.serve"):
            logging.getLogger(name).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=r".*minimum number of concurrent actors.*")
        return ray

    def __exit__(self, *exc) -> None:
        import ray

        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
        if self.saved_niceness is None:
            os.environ.pop("RAY_worker_niceness", None)
        else:
            os.environ["RAY_worker_niceness"] = self.saved_niceness
        if self.saved_address is not None:
            os.environ["RAY_ADDRESS"] = self.saved_address


def demo_generator(seed: int = 0):
    """The demo config's generator (configs/demo_cpu.yaml: 8 blocks, 64 features, bicubic skip, x4),
    random weights: speed does not depend on them."""
    import torch

    from srgan.core.models import GeneratorConfig, build_generator

    torch.manual_seed(seed)
    return build_generator(GeneratorConfig(num_blocks=8, num_features=64, bicubic_skip=True))


def demo_checkpoint(folder: Path) -> str:
    from srgan.core.checkpoint import save_generator

    return str(save_generator(folder / "demo-generator", demo_generator()))


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ------------------------------------------------------------------- CPU accounting, from /proc
# (psutil is not a dependency of the project; these read what Linux keeps for every process)

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy since boot (all cores): /proc/stat's first line,
    user + nice + system + irq + softirq + steal."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICKS


def proc_stats() -> Iterator[tuple[int, str, list[str]]]:
    """(pid, command name, the fields after it) of /proc/PID/stat for every process: fields[0] is the
    state, [1] the parent pid, [11] and [12] utime and stime in clock ticks. (The name is read between
    the first "(" and the last ")": it may hold spaces and parentheses.)"""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        yield int(entry.name), text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()


def thread_sched() -> dict[str, float]:
    """The calling thread's scheduler figures so far: {"on_cpu_s", "runqueue_s", "sleeps"} from
    /proc/thread-self (schedstat: time on a core and time runnable but waiting for one; status: the
    voluntary context switches, each a sleep on a lock, a futex or I/O)."""
    run_ns, wait_ns = (int(x) for x in Path("/proc/thread-self/schedstat").read_text().split()[:2])
    sleeps = next(int(line.split()[1]) for line in Path("/proc/thread-self/status").read_text().splitlines()
                  if line.startswith("voluntary_ctxt_switches"))
    return {"on_cpu_s": run_ns / 1e9, "runqueue_s": wait_ns / 1e9, "sleeps": float(sleeps)}


def process_cpu_seconds() -> dict[int, tuple[str, float]]:
    """pid -> (command name, user + system CPU seconds so far) for every process."""
    return {pid: (name, (int(fields[11]) + int(fields[12])) / _TICKS) for pid, name, fields in proc_stats()}


def cpu_by_kind(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds between two process_cpu_seconds() snapshots, summed by kind: "this process",
    "ray workers" (ray::... tasks and actors), "ray daemons" (raylet, GCS and the node's agents), and
    "other" (the rest of the machine). A process that started in between counts from zero; one that
    exited in between is not seen."""
    me, out = os.getpid(), {"this process": 0.0, "ray workers": 0.0, "ray daemons": 0.0, "other": 0.0}
    agents = ("ray::DashboardA", "ray::RuntimeEnv")  # the node's agents (names cut to 15 characters)
    for pid, (name, seconds) in after.items():
        used = seconds - before.get(pid, (name, 0.0))[1]
        kind = ("this process" if pid == me else "ray daemons" if name in ("raylet", "gcs_server") or name.startswith(agents)
                else "ray workers" if name.startswith("ray::") else "other")
        out[kind] += max(used, 0.0)
    return out
