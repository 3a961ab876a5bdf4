"""Training scenarios of the reliability harness: a worker, the driver, a node and the tracking server lost.

Every run is pipelines/train.py as a user types it (tiny SRResNet: 1 block, 8 features, 32x32 crops,
two DDP workers over gloo), tracked on a real ``mlflow server`` (SQLite backend store, artifacts
served by it) that a scenario can kill and start again on the same port.

- ``train-worker-kill`` (quick: one kill; full: two kills and the PSNR comparison): a Train worker
  SIGKILLed by its pid after a registered checkpoint; Ray Train restarts the group from it. The run
  reaches its full step count in the same MLflow run, each step logged once; steps lost at most one
  checkpoint interval; the loss levels around the restart are printed (a figure, not a check). Full:
  the final validation PSNR against uninterrupted runs (the same seed, and three seeds for the spread).
- ``train-tracking-outage`` (quick): the tracking server lost mid-run: one warning line, the run
  finishes, every step reaches MLflow (buffered), the generator is registered. Full: SIGKILLed and
  started again on its port; quick: hung (SIGSTOP, every call meets its 10 s bound), then resumed.
  In --quick both share ONE training run (kill a worker, then the server), begun on a thread as the
  harness starts (``start_quick_run``), beside the serve and data scenarios: the quick subset stays
  within its 3 minutes. Full runs keep every scenario to itself.
- ``train-driver-kill`` (full): pipelines/train.py SIGKILLed with its process group after a
  checkpoint, then rerun: it resumes, one MLflow run, one registry version.
- ``train-node-loss`` (full): a two-node cluster of its own (services.ray_head / ray_worker_node):
  a head with 0 CPUs, so that the Train workers and Ray Data's tasks can only go to the worker node
  (the driver, Ray Train's controller, its dataset manager and sync actor need no CPU and stay on
  the head, the driver's node), and a worker node with 2 CPUs under a temp dir of its own. Checkpoints
  on the moto S3 server (``s3://rel-node-loss/runs``). Once one is registered, every process of the
  worker node (raylet, agents, workers) is SIGKILLed at once (services.kill_node); a fresh node (a
  new temp dir) joins only after Ray Train's first attempt to start the new group has timed out (it
  waits 60 s for the group's placement group, RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, then retries
  without limit: FailureConfig.controller_failure_limit is -1), so the run must wait for a node, as
  for an autoscaler's replacement, not fail. Checked: exit 0, one worker-group restart (the node
  loss counts once against run.max_failures; the start-up timeouts do not), the old workers on the
  killed node and the new ones on the new node, resumed from the registered checkpoint, at most one
  interval lost, one MLflow run with every step once, the full step count, one registry version.
  Figures: new node start -> first step after the restart, steps lost, kill -> failure detected.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from benchmarks.faults import PYTHON, REPO, Outcome, Run, Scenario, project_command, wait_until
from benchmarks.faults.services import free_port, kill_node, node_processes, ray_head, ray_worker_node, wait_for_port

SMALL = ["--set", "model.num_blocks=1", "--set", "model.num_features=8", "--set", "model.bicubic_skip=true",
         "--set", "data.crop_size=32"]
TRAIN_PHOTOS = ("astronaut.png", "rocket.jpg", "motorcycle_left.png", "coffee.png")


# ------------------------------------------------------------------------------------------- parts


def _datasets() -> Path:
    return Path(os.environ.get("SRGAN_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def training_data(root: Path) -> tuple[Path, Path]:
    """Four real photos to train on; two Set5 images (HR + MATLAB LR) to validate on."""
    from PIL import Image
    import skimage.data

    train, val = root / "train", root / "val"
    if train.is_dir():
        return train, val
    train.mkdir(parents=True)
    photos = Path(skimage.data.__file__).parent
    for name in TRAIN_PHOTOS:
        Image.open(photos / name).convert("RGB").save(train / f"{Path(name).stem}.png")
    for sub, suffix in (("HR", ""), ("LR_bicubic/X4", "x4")):
        (val / sub).mkdir(parents=True)
        for name in ("butterfly", "head"):
            shutil.copy(_datasets() / "Set5" / sub / f"{name}{suffix}.png", val / sub)
    return train, val


class TrackingServer:
    """A real ``mlflow server`` (SQLite backend, artifacts served by it) on a fixed port, so that it
    can be killed and started again where its clients expect it."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "mlflow-server.log"
        self.proc: subprocess.Popen | None = None
        # In its own process group, a server outlives the harness unless killed: a scenario that raised
        # before its own kill() once left one (and its 7 job workers) running for an hour.
        atexit.register(self.kill)

    def start(self) -> float:
        """Start it; returns the seconds until its port answered."""
        t0 = time.monotonic()
        mlflow = str(Path(PYTHON).with_name("mlflow"))
        args = [mlflow, "server", "--backend-store-uri", f"sqlite:///{self.work / 'mlflow.db'}",
                "--artifacts-destination", (self.work / "artifacts").as_uri(), "--serve-artifacts",
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with open(self.log, "a") as out:
            self.proc = subprocess.Popen(args, cwd=self.work, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, self.proc, "mlflow server", 120, self.log)
        return time.monotonic() - t0

    def pause(self) -> None:
        """SIGSTOP the server and its workers: a hung server (connections accepted, nothing answered)."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the server and its workers (the process group started here)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


class Training:
    """pipelines/train.py in its own process group, its output in a log file that can be waited on."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str], cwd: Path) -> None:
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(project_command("train.py", *args), cwd=cwd, env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float, *, after: int = 0) -> re.Match:
        """The first match of ``pattern`` in the output past character ``after``."""
        def found():
            m = re.compile(pattern).search(self.text(), after)
            if m is None and self.proc.poll() is not None:
                raise RuntimeError(f"pipelines/train.py exited ({self.proc.returncode}) before {pattern!r}:\n{self.text()[-3000:]}")
            return m
        return wait_until(found, timeout, interval=0.1, what=repr(pattern))

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise

    def kill_group(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def train_args(data: tuple[Path, Path], *, name: str, storage: str, tracking: str, steps: int, every: int,
               workers: int = 2, seed: int = 0, extra: tuple[str, ...] = ()) -> list[str]:
    train, val = data
    return ["--data", str(train), "--val-data", str(val), "--workers", str(workers), "--batch-size", "4",
            "--storage", storage, "--tracking-uri", tracking, "--name", name, "--experiment", "reliability",
            "--register-as", f"rel-{name}", "--steps", str(steps), "--max-failures", "3", *SMALL,
            "--set", "train.log_every=1", "--set", f"train.val_every={every}", "--set", f"train.checkpoint_every={every}",
            "--set", f"train.seed={seed}", *extra]


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it registered


def _snapshot_step(text: str) -> int | None:
    try:
        latest = json.loads(text)["latest_checkpoint_result"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    return latest["metrics"]["step"] if latest else None


def registered_step(run_dir: Path) -> int | None:
    """The step of the latest checkpoint Ray Train has registered (its checkpoint manager's snapshot)."""
    try:
        return _snapshot_step((run_dir / SNAPSHOT).read_text())
    except FileNotFoundError:
        return None


def registered_step_s3(client, bucket: str, run_prefix: str) -> int | None:
    """:func:`registered_step` of a run stored on S3 (``s3://bucket/run_prefix/``)."""
    try:
        return _snapshot_step(client.get_object(Bucket=bucket, Key=f"{run_prefix}/{SNAPSHOT}")["Body"].read().decode())
    except client.exceptions.NoSuchKey:
        return None


def printed_losses(text: str) -> list[tuple[int, float]]:
    """(step, loss) of every '[srgan] step N/M ... loss X' line, in output order (a restart repeats steps)."""
    return [(int(s), float(v)) for s, v in re.findall(r"\[srgan\] step (\d+)/\d+ epoch \d+ loss ([0-9.e+-]+)", text)]


def kill_worker(training: Training, run_dir: Path, *, after_step: int, world: int, killed: tuple[int, ...] = (),
                timeout: float = 240) -> dict[str, int]:
    """SIGKILL Train worker rank 1 once Ray has registered a checkpoint at or past ``after_step``;
    returns the registered step and the last step printed before the kill.

    The rank's pid is taken from its newest start line whose pid is not in ``killed`` (the workers
    killed before: a restarted group's line then belongs to the new group). Where the line falls in
    the console says nothing: Ray's log monitor can deliver it before or after rank 0's "resumed" line.
    """
    pattern = re.compile(rf"\[srgan\] worker rank {world - 1}/{world} pid (\d+)")

    def new_pid() -> int | None:
        pids = [int(p) for p in pattern.findall(training.text())]
        fresh = [p for p in pids if p not in killed]
        if not fresh and training.proc.poll() is not None:
            raise RuntimeError(f"pipelines/train.py exited ({training.proc.returncode}) before rank {world - 1} of a new worker group "
                               f"started:\n{training.text()[-3000:]}")
        return fresh[-1] if fresh else None

    pid = wait_until(new_pid, timeout, interval=0.1, what=f"a start line of rank {world - 1} with a pid not in {list(killed)}")
    step = wait_until(lambda: (s := registered_step(run_dir)) is not None and s >= after_step and s, timeout, interval=0.05,
                      what=f"a registered checkpoint at step >= {after_step}")
    losses = printed_losses(training.text())
    os.kill(pid, signal.SIGKILL)
    return {"registered": step, "last_printed": losses[-1][0] if losses else 0, "pid": pid}


def mlflow_steps(url: str, name: str, key: str) -> tuple[str, list[int], list[float]]:
    """The one run named ``name`` in experiment 'reliability': its id, and ``key``'s steps and values."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    runs = client.search_runs([client.get_experiment_by_name("reliability").experiment_id], f"attributes.run_name = '{name}'")
    if len(runs) != 1:
        return f"{len(runs)} runs", [], []
    history = client.get_metric_history(runs[0].info.run_id, key)
    return runs[0].info.run_id, [m.step for m in history], [m.value for m in history]


def registry_versions(url: str, model: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    return [str(v.version) for v in MlflowClient(url, registry_uri=url).search_model_versions(f"name = '{model}'")]


def final_psnr(text: str, steps: int) -> float | None:
    """The validation Y-PSNR at the last step (not the best checkpoint's, which the summary prints)."""
    found = re.findall(rf"\[srgan\] step {steps} validation: Y-PSNR ([0-9.]+) dB", text)
    return float(found[-1]) if found else None


def loss_continuity(text: str, resumed_from: int, every: int) -> dict[str, float]:
    """The loss around the first restart: the mean printed loss of the steps 1-2 (a fresh start's
    level), of the checkpoint interval the restart resumed from, and of the interval after it."""
    cut = re.search(r"resumed from step \d+", text)
    before_text, after_text = (text[: cut.start()], text[cut.end():]) if cut else (text, "")
    first, then = printed_losses(before_text), printed_losses(after_text)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {
        "start": mean([v for s, v in first if s <= 2]),
        "before": mean([v for s, v in first if resumed_from - every < s <= resumed_from]),
        "after": mean([v for s, v in then if resumed_from < s <= resumed_from + every]),
    }


# --------------------------------------------------------------------------- quick: kill + outage

_SHARED: dict[str, Future] = {}


def start_quick_run(run: Run) -> None:
    """``Scenario.start`` of both quick training scenarios: their one shared run begins at once, on a
    thread, beside the serve and data scenarios (about 140 s of mostly waiting on Ray's start-up; run
    one after the other the quick subset would miss its 3-minute budget). Full runs: nothing."""
    if run.quick:
        _begin_shared_run(run)


def _begin_shared_run(run: Run) -> Future:
    """The shared kill + outage run, on a thread of its own; begun once per harness run."""
    if "quick" not in _SHARED:
        _SHARED["quick"] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="train-quick").submit(_run_worker_kill_and_outage, run)
    return _SHARED["quick"]


def _worker_kill_and_outage(run: Run) -> dict:
    """The shared run's result: begun by :func:`start_quick_run`, else started now."""
    return _begin_shared_run(run).result()


def _run_worker_kill_and_outage(run: Run) -> dict:
    """One training run (quick): a worker killed after the first checkpoint, then, once the new group
    is training, the tracking server killed and started again."""
    work = run.dir("train-quick")
    data = training_data(work / "data")
    server = TrackingServer(work)
    server.start()
    steps, every = 16, 4
    run_dir = work / "runs" / "quick"
    args = train_args(data, name="quick", storage=str(work / "runs"), tracking=server.url, steps=steps, every=every)
    result: dict = {"steps": steps, "every": every}
    t0 = time.monotonic()
    training = Training(args, work / "train.log", run.env(), work)
    try:
        training.wait_for(r"\[srgan\] step 1/", 180)
        result["first_step_s"] = time.monotonic() - t0
        kill = kill_worker(training, run_dir, after_step=every, world=2)
        result["kill"] = kill
        t_kill = time.monotonic()
        resumed = training.wait_for(r"resumed from step (\d+)", 180)
        result["recovery_s"] = time.monotonic() - t_kill
        if run.quick:
            # A hung server: SIGSTOPped, it accepts connections and answers nothing, so each call runs
            # into its 10 s bound; SIGCONT once rank 0 has said so. (No restart: the server's start-up
            # costs about 10 s of CPU, which the quick subset's budget has no room for.) It hangs once
            # the new group has validated, so that its rank 0 has read the run's history: a request
            # of the killed worker still queued at a slow server, let through only after that read,
            # could log its step twice (a race this run does not set out to measure).
            training.wait_for(r"\[srgan\] step \d+ validation", 120, after=resumed.end())
            t_down = time.monotonic()
            server.pause()
            training.wait_for(r"WARNING: tracking server .* unreachable", 60)  # rank 0 met the outage
            server.resume()
            result["outage"] = "hung"
        else:  # as soon as the new worker group trains: the outage overlaps its first steps
            t_down = time.monotonic()
            server.kill()
            result["restart_s"] = server.start()  # started again at once: down until its port answers (about 18 s here)
            training.wait_for(r"WARNING: tracking server .* unreachable", 60)  # rank 0 met the outage
            result["outage"] = "killed"
        result["outage_s"] = time.monotonic() - t_down
        result["rc"] = training.wait(240)
    finally:
        training.kill_group()
    result["seconds"] = time.monotonic() - t0
    result["text"] = training.text()
    result["url"] = server.url
    result["mlflow"] = {key: mlflow_steps(server.url, "quick", key) for key in ("train/loss", "val/psnr_y")}
    result["versions"] = registry_versions(server.url, "rel-quick")
    server.kill()
    return result


def _check_full_run(out: Outcome, r: dict, *, kills: int) -> None:
    text, steps = r["text"], r["steps"]
    run_id, loss_steps, _ = r["mlflow"]["train/loss"]
    out.check("the run exits 0", r["rc"] == 0)
    out.check(f"{kills} restart(s) by Ray Train's failure policy", text.count("[FailurePolicy] RETRY") == kills)
    out.check("one MLflow run", not run_id.endswith(" runs"))
    if not out.check(f"every step 1..{steps} in MLflow exactly once", loss_steps == list(range(1, steps + 1))):
        out.figures["train/loss steps in MLflow"] = ", ".join(map(str, loss_steps))
    out.check("the full step count reached (a checkpoint at the last step)", f"checkpoint step {steps} saved" in text)
    out.check("one registry version", r["versions"] == ["1"])


def worker_kill(run: Run) -> Outcome:
    out = Outcome("train-worker-kill")
    if run.quick:
        r = _worker_kill_and_outage(run)
        kills = [r["kill"]]
    else:
        r = _twice_killed(run)
        kills = r["kills"]
    every = r["every"]
    resumed = [int(n) for n in re.findall(r"resumed from step (\d+)", r["text"])]
    out.ran = f"2 DDP workers (gloo), {r['steps']} steps, checkpoint every {every}, {len(kills)} worker SIGKILL(s); MLflow server"
    _check_full_run(out, r, kills=len(kills))
    lost = [k["last_printed"] - res for k, res in zip(kills, resumed)]
    out.check("each restart resumed from the registered checkpoint", len(resumed) == len(kills) and all(res >= k["registered"] for k, res in zip(kills, resumed)))
    out.check("steps lost at most one checkpoint interval", bool(lost) and all(0 <= n <= every for n in lost))
    cont = loss_continuity(r["text"], resumed[0], every) if resumed else {}
    # The loss levels around the restart are a figure, not a check: a tiny model's loss over a few
    # noisy steps would pass or fail such a comparison by luck. What shows the state was restored is
    # "resumed from the registered checkpoint" above, and (full run) the final PSNR against an
    # uninterrupted run.
    out.figures.update({
        "steps lost per kill": ", ".join(map(str, lost)),
        "resumed from": ", ".join(map(str, resumed)),
        "loss: steps 1-2 / the interval before the checkpoint / the interval after the restart": f"{cont.get('start', float('nan')):.4f} / {cont.get('before', float('nan')):.4f} / {cont.get('after', float('nan')):.4f}",
        "run time": f"{r['seconds']:.0f} s",
    })
    if "recovery_s" in r:
        out.figures["start -> first step; kill -> resumed"] = f"{r['first_step_s']:.0f} s; {r['recovery_s']:.0f} s"
    if not run.quick:
        out.figures.update(r["psnr_figures"])
        out.check(r["psnr_check"][0], r["psnr_check"][1])
    return out


def tracking_outage(run: Run) -> Outcome:
    out = Outcome("train-tracking-outage")
    r = _worker_kill_and_outage(run)
    text = r["text"]
    out.ran = ("the train-worker-kill run's tracking server (mlflow server, SQLite) " +
               ("hung mid-run (SIGSTOP), then resumed (SIGCONT)" if r.get("outage") == "hung" else "SIGKILLed mid-run, started again on its port"))
    _check_full_run(out, r, kills=1)
    out.check("ONE warning line for the outage", len(re.findall(r"WARNING: tracking server .* unreachable", text)) == 1)
    late = re.search(r"answers again after (\d+) s: sent (\d+) buffered metric values", text)
    out.check("metrics of the outage sent when the server answered again", late is not None)
    out.check("registered after the outage", "registered:  models:/rel-quick/1  (alias @champion)" in text)
    # (The surviving worker's gloo "Connection closed by peer" traceback of the kill is expected.)
    out.check("no error from the tracking code", "srgan/tracking/" not in text)
    out.figures.update({
        "outage": f"{r.get('outage_s', 0):.0f} s" + (f" (server restart {r['restart_s']:.0f} s)" if "restart_s" in r else " (hung)"),
        "metric values sent late": late.group(2) if late else "0",
        "checkpoints": str(text.count("checkpoint step")) + " saved, none lost",
    })
    return out


# ------------------------------------------------------------------------------- full scenarios


def _twice_killed(run: Run) -> dict:
    work = run.dir("train-worker-kill")
    data = training_data(work / "data")
    server = TrackingServer(work)
    server.start()
    steps, every = 48, 6
    r: dict = {"steps": steps, "every": every, "kills": []}
    t0 = time.monotonic()
    name = "twice"
    training = Training(train_args(data, name=name, storage=str(work / "runs"), tracking=server.url, steps=steps, every=every),
                        work / f"{name}.log", run.env(), work)
    try:
        r["kills"].append(kill_worker(training, work / "runs" / name, after_step=every, world=2))
        first = training.wait_for(r"resumed from step (\d+)", 180)
        r["kills"].append(kill_worker(training, work / "runs" / name, after_step=int(first.group(1)) + every, world=2,
                                      killed=(r["kills"][0]["pid"],)))
        training.wait_for(r"resumed from step (\d+)", 180, after=first.end())
        r["rc"] = training.wait(400)
    finally:
        training.kill_group()
    r["seconds"] = time.monotonic() - t0
    r["text"] = training.text()
    r["mlflow"] = {"train/loss": mlflow_steps(server.url, name, "train/loss")}
    r["versions"] = registry_versions(server.url, f"rel-{name}")
    killed_psnr = final_psnr(r["text"], steps)
    # Uninterrupted references: the same seed, and two more seeds for the spread.
    psnrs = {}
    for seed in (0, 1, 2):
        ref = f"ref{seed}"
        proc = subprocess.run(project_command("train.py", *train_args(data, name=ref, storage=str(work / "runs"), tracking=server.url, steps=steps, every=every, seed=seed)),
                              cwd=work, env=run.env(), capture_output=True, text=True, timeout=400)
        psnrs[seed] = final_psnr(proc.stdout + proc.stderr, steps)
    server.kill()
    spread = max(psnrs.values()) - min(psnrs.values()) if all(psnrs.values()) else float("nan")
    delta = abs(killed_psnr - psnrs[0]) if killed_psnr and psnrs[0] else float("nan")
    r["psnr_figures"] = {
        "final val PSNR killed twice / same seed uninterrupted": f"{killed_psnr} / {psnrs[0]} dB (|delta| {delta:.2f} dB)",
        "final val PSNR over seeds 0, 1, 2 (uninterrupted)": f"{', '.join(str(v) for v in psnrs.values())} dB (spread {spread:.2f} dB)",
    }
    r["psnr_check"] = ("final PSNR within 0.2 dB of the same-seed run, or within the 3-seed spread", delta <= max(0.2, spread))
    return r


def driver_kill(run: Run) -> Outcome:
    out = Outcome("train-driver-kill")
    work = run.dir("train-driver-kill")
    data = training_data(work / "data")
    server = TrackingServer(work)
    server.start()
    steps, every = 36, 6
    name = "driver"
    args = train_args(data, name=name, storage=str(work / "runs"), tracking=server.url, steps=steps, every=every)
    out.ran = f"pipelines/train.py (2 workers, {steps} steps, checkpoint every {every}) SIGKILLed with its process group, rerun twice"
    training = Training(args, work / "first.log", run.env(), work)
    try:
        registered = wait_until(lambda: (s := registered_step(work / "runs" / name)) is not None and s >= 2 * every and s, 300, 0.05, "a second checkpoint")
        last = printed_losses(training.text())[-1][0]
        t_kill = time.monotonic()
        training.kill_group()
    finally:
        training.kill_group()
    rerun = Training(args, work / "rerun.log", run.env(), work)
    rc = rerun.wait(400)
    seconds = time.monotonic() - t_kill
    again = subprocess.run(project_command("train.py", *args), cwd=work, env=run.env(), capture_output=True, text=True, timeout=400)
    text = rerun.text()
    resumed = [int(n) for n in re.findall(r"resumed from step (\d+)", text)]
    run_id, loss_steps, _ = mlflow_steps(server.url, name, "train/loss")
    versions = registry_versions(server.url, f"rel-{name}")
    server.kill()
    out.check("the rerun exits 0", rc == 0)
    out.check("it resumed from the last registered checkpoint", len(resumed) == 1 and resumed[0] >= registered)
    out.check("one MLflow run, resumed", not run_id.endswith(" runs") and "(resumed) in experiment" in text)
    if not out.check(f"every step 1..{steps} in MLflow exactly once", loss_steps == list(range(1, steps + 1))):
        out.figures["train/loss steps in MLflow"] = ", ".join(map(str, loss_steps))
    out.check("a third run of the same command exits 0", again.returncode == 0)
    out.check("one registry version after both reruns", versions == ["1"])
    out.figures.update({
        "killed at step (printed) / registered checkpoint": f"{last} / {registered}",
        "steps lost": str(last - resumed[0]) if resumed else "?",
        "kill -> rerun finished": f"{seconds:.0f} s",
    })
    return out


# ------------------------------------------------------------------------------------ node loss


class LogTimes(threading.Thread):
    """Watches a :class:`Training`'s output from character ``after`` on (polling every 0.1 s, on a
    thread of its own, so that a blocking call meanwhile - ``ray start`` - misses nothing) and keeps
    the monotonic time at which each named pattern first matched."""

    def __init__(self, training: Training, patterns: dict[str, str], *, after: int) -> None:
        super().__init__(daemon=True, name="log-times")
        self.training, self.after = training, after
        self.patterns = {k: re.compile(v) for k, v in patterns.items()}
        self.seen: dict[str, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set() and len(self.seen) < len(self.patterns):
            text, now = self.training.text(), time.monotonic()
            for key, pattern in self.patterns.items():
                if key not in self.seen and pattern.search(text, self.after):
                    self.seen[key] = now
            self.stopping.wait(0.1)

    def wait_for(self, key: str, timeout: float) -> float:
        def seen():
            if key not in self.seen and self.training.proc.poll() is not None:
                time.sleep(0.3)  # the watcher's last look at the finished output
                if key not in self.seen:
                    raise RuntimeError(f"pipelines/train.py exited ({self.training.proc.returncode}) before {key}:\n{self.training.text()[-3000:]}")
            return self.seen.get(key)
        return wait_until(seen, timeout, interval=0.1, what=key)


def _worker_pids(text: str, world: int) -> dict[int, int]:
    """rank -> pid of the latest worker group's start lines in ``text``."""
    return {int(r): int(p) for r, p in re.findall(rf"\[srgan\] worker rank (\d+)/{world} pid (\d+)", text)}


def _failure_sources(text: str) -> list[str]:
    """The source of every '[FailurePolicy] RETRY' decision in the output ('worker group', 'controller')."""
    return re.findall(r"\[FailurePolicy\] RETRY[^\n]*\n[^\n]*?Source: ([a-z ]+)", text)


def node_loss(run: Run) -> Outcome:
    """A two-node cluster of the scenario's own: a head with 0 CPUs (the driver, Ray Train's controller
    and Ray Data's coordinator; they need none) and a worker node with 2 (both Train workers and every
    Ray Data task). Once a checkpoint on S3 is registered, every process of the worker node is
    SIGKILLed, raylet included; a fresh node (new temp dir) joins only after Ray Train's first attempt
    to restart the group has timed out for lack of room (its placement-group wait, 60 s), so the run
    must wait for the node, as it would for an autoscaler, rather than fail."""
    from srgan.io.storage import s3_client

    out = Outcome("train-node-loss")
    work = run.dir("train-node-loss")
    data = training_data(work / "data")
    steps, every, world = 24, 4, 2
    name, bucket = "nodeloss", "rel-node-loss"
    s3 = s3_client()  # the harness's moto server (the standard AWS variables)
    s3.create_bucket(Bucket=bucket)
    server = TrackingServer(work)
    server.start()
    tag = f"/tmp/rnl-{os.getpid()}"  # short: Ray's socket paths live under a node's temp dir
    head_dir, first_dir, second_dir = Path(f"{tag}-h"), Path(f"{tag}-n1"), Path(f"{tag}-n2")
    out.ran = (f"own cluster on 127.0.0.1: head (0 CPUs: driver, Train controller) + worker node (2 CPUs); {world} DDP workers, "
               f"{steps} steps, checkpoint every {every} on S3 (moto); the worker node SIGKILLed (raylet and all) after a "
               "registered checkpoint, a fresh node joined after Ray Train's first start-up timeout; MLflow server")
    r: dict = {}
    training, watch = None, None
    t0 = time.monotonic()
    try:
        with ray_head(head_dir, num_cpus=0) as head:
            try:
                ray_worker_node(head["address"], first_dir, num_cpus=2)
                args = train_args(data, name=name, storage=f"s3://{bucket}/runs", tracking=server.url, steps=steps, every=every)
                training = Training(args, work / f"{name}.log", run.env(RAY_ADDRESS=head["address"]), work)
                training.wait_for(rf"\[srgan\] worker rank {world - 1}/{world} pid \d+", 300)
                r["registered"] = wait_until(lambda: (s := registered_step_s3(s3, bucket, f"runs/{name}")) is not None and s >= every and s,
                                             300, interval=0.2, what=f"a registered checkpoint at step >= {every}")
                text = training.text()
                pids = _worker_pids(text, world)
                r["workers_on_first"] = len(pids) == world and set(pids.values()) <= set(node_processes(first_dir))
                cut = len(text)
                watch = LogTimes(training, {
                    "the worker group's failure": r"\[FailurePolicy\] RETRY[^\n]*\n[^\n]*?Source: worker group",
                    "a start-up timeout": r"\[FailurePolicy\] RETRY[^\n]*\n[^\n]*?Source: controller",
                    "the resume": r"resumed from step \d+",
                }, after=cut)
                watch.start()
                t_kill = time.monotonic()
                r["killed_processes"] = kill_node(first_dir)
                time.sleep(1.0)  # the step lines already on their way to the driver
                losses = printed_losses(training.text())
                r["last_printed"] = losses[-1][0] if losses else 0
                r["detect_s"] = watch.wait_for("the worker group's failure", 180) - t_kill
                r["waited_s"] = watch.wait_for("a start-up timeout", 180) - t_kill
                t_join = time.monotonic()
                ray_worker_node(head["address"], second_dir, num_cpus=2)
                r["node_up_s"] = time.monotonic() - t_join
                watch.wait_for("the resume", 300)
                r["resumed"] = int(re.search(r"resumed from step (\d+)", training.text()[cut:]).group(1))
                training.wait_for(rf"\[srgan\] step {r['resumed'] + 1}/", 300, after=cut)
                r["recovery_s"] = time.monotonic() - t_join  # to within the 0.1 s poll
                # Each rank's start line reaches the driver through Ray's log monitor, and rank 1's can
                # come after rank 0's first step line (the order seen in a resume's console): wait for every rank's.
                for rank in range(world):
                    training.wait_for(rf"\[srgan\] worker rank {rank}/{world} pid \d+", 60, after=cut)
                after = _worker_pids(training.text()[cut:], world)  # the new group's start lines
                r["workers_on_second"] = len(after) == world and set(after.values()) <= set(node_processes(second_dir))
                r["rc"] = training.wait(600)
            finally:
                if watch is not None:
                    watch.stopping.set()
                if training is not None:
                    training.kill_group()
                for node in (first_dir, second_dir):  # the worker nodes, then (leaving the block) the head
                    kill_node(node)
        r["seconds"] = time.monotonic() - t0
        text = training.text()
        run_id, loss_steps, _ = mlflow_steps(server.url, name, "train/loss")
        versions = registry_versions(server.url, f"rel-{name}")
    finally:
        server.kill()
        for folder in (head_dir, first_dir, second_dir):
            shutil.rmtree(folder, ignore_errors=True)
    sources = _failure_sources(text)
    lost = r["last_printed"] - r["resumed"]
    out.check("the run exits 0", r.get("rc") == 0)
    out.check("both Train workers ran on the killed node", r["workers_on_first"])
    out.check("one worker-group restart (the node loss), however many start-up retries while no node had room",
              sources.count("worker group") == 1 and set(sources) <= {"worker group", "controller"})
    out.check("the run waited through a start-up timeout for the new node (not failed)", sources.count("controller") >= 1)
    out.check("the restarted workers ran on the new node", r["workers_on_second"])
    out.check("resumed from the registered checkpoint on S3", r["resumed"] >= r["registered"])
    out.check("steps lost at most one checkpoint interval", 0 <= lost <= every)
    out.check("one MLflow run", not run_id.endswith(" runs"))
    if not out.check(f"every step 1..{steps} in MLflow exactly once", loss_steps == list(range(1, steps + 1))):
        out.figures["train/loss steps in MLflow"] = ", ".join(map(str, loss_steps))
    out.check("the full step count reached (a checkpoint at the last step)", f"checkpoint step {steps} saved" in text)
    out.check("one registry version", versions == ["1"])
    out.figures.update({
        "new node start -> first step after the restart (recovery)": f"{r['recovery_s']:.0f} s (the node up in {r['node_up_s']:.0f} s)",
        "steps lost (last step printed before the kill - checkpoint resumed from)": f"{lost} ({r['last_printed']} - {r['resumed']})",
        "kill -> worker group failed; kill -> Ray Train's start-up timeout": f"{r['detect_s']:.0f} s; {r['waited_s']:.0f} s",
        "processes killed on the node": str(r["killed_processes"]),
        "Ray Train's failure decisions (by source)": ", ".join(sources) or "none seen",
        "run time": f"{r['seconds']:.0f} s",
    })
    return out


SCENARIOS = {
    "train-worker-kill": Scenario(run=worker_kill, quick=True, start=start_quick_run, what="a Train worker SIGKILLed (quick: once; full: twice + the PSNR comparison): same MLflow run, full steps"),
    "train-tracking-outage": Scenario(run=tracking_outage, quick=True, start=start_quick_run, what="the MLflow server lost mid-run (full: killed, restarted; quick: hung, resumed): one warning, every step logged, registered"),
    "train-driver-kill": Scenario(run=driver_kill, quick=False, what="pipelines/train.py SIGKILLed with its process group, rerun: resumed, one run, one version"),
    "train-node-loss": Scenario(run=node_loss, quick=False, what="the node of both Train workers SIGKILLed (raylet and all), a fresh one joins late: resumed from S3, same MLflow run, full steps"),
}
