"""The one place the project connects to Ray, and what Ray prints on its console.

Training, Serve and bulk jobs call :func:`init_ray`: it joins the cluster at RAY_ADDRESS (``ray job
submit``, ``ray start``) or starts a local one on the loopback interface, with the dashboard bound to
127.0.0.1. Every worker process of the job runs a ``worker_process_setup_hook`` that keeps Ray's
per-epoch and per-report lines off the console, so the project's own lines stay readable.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

__all__ = ["init_ray", "local_disk_threshold", "quiet_framework_logs", "quiet_local_framework_logs"]

# Ray refuses to create (spill) objects once its temp disk is over 95% full, and its raylet logs that
# every 10 s to the console. On a big shared disk 5% is many GB; a local cluster keeps this much free.
_LOCAL_DISK_RESERVE_BYTES = 2 * 1024**3
_RAY_DEFAULT_DISK_THRESHOLD = 0.95


def init_ray() -> None:
    """Join the cluster at RAY_ADDRESS (ray job submit, ray start), else start a local one on the
    loopback interface. The one place the project connects to Ray: training, Serve and bulk jobs."""
    import ray  # RAY

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    hook = quiet_framework_logs if address else quiet_local_framework_logs
    hook()
    # RAY: every worker process of this job runs the same hook (merged with a submitted job's runtime_env).
    runtime_env = {"worker_process_setup_hook": f"{__name__}.{hook.__name__}"}
    if address:
        ray.init(address=address, runtime_env=runtime_env)  # RAY: an existing cluster (ray job submit / ray start)
    else:
        # RAY: a local cluster for the embedded demo, on the loopback interface only. The dashboard
        # is on (bound to 127.0.0.1): it serves the State API that Ray Train's placement-group
        # cleaner polls (without it, a warning every second), and it is Ray's own UI for the run.
        context = ray.init(_node_ip_address="127.0.0.1", include_dashboard=True, dashboard_host="127.0.0.1",
                           configure_logging=False, runtime_env=runtime_env,
                           _system_config={"local_fs_capacity_threshold": _local_disk_guard()})
        if context.dashboard_url:
            print(f"[srgan] Ray dashboard: http://{context.dashboard_url}", flush=True)
    from ray.data import DataContext  # RAY

    # No progress bars from Ray Data: the training loop and the bulk job print their own progress.
    DataContext.get_current().enable_progress_bars = False


def local_disk_threshold(capacity: int) -> float:
    """Ray's ``local_fs_capacity_threshold`` (the used fraction above which object creation fails) for
    a local cluster on a disk of ``capacity`` bytes: Ray's 95%, or, on a disk so big that 5% is more
    than the reserve, whatever keeps exactly the reserve free."""
    if capacity <= 0:
        return _RAY_DEFAULT_DISK_THRESHOLD
    return max(_RAY_DEFAULT_DISK_THRESHOLD, 1.0 - _LOCAL_DISK_RESERVE_BYTES / capacity)


def _local_disk_guard() -> float:
    """The threshold for the disk under Ray's temp dir, with one console line (instead of Ray's every
    10 s) when that disk is short of space."""
    root = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    usage = shutil.disk_usage(root)
    threshold = local_disk_threshold(usage.total)
    if usage.free < 2.5 * _LOCAL_DISK_RESERVE_BYTES or 1 - usage.free / usage.total >= threshold:
        print(f"[srgan] warning: the disk under {root} has {usage.free / 1024**3:.1f} GiB free of "
              f"{usage.total / 1024**3:.0f} GiB; Ray stops spilling objects at {threshold:.1%} full. "
              "Free space there or set RAY_TMPDIR to a bigger disk.", flush=True)
    return threshold


# Framework lines that repeat every epoch, checkpoint or worker-group start and say nothing a user acts
# on. Only these loggers' INFO lines are dropped (from Ray's log files too); their warnings stay, and
# so does every other Ray Train line: a worker failure and the FailurePolicy's RETRY/RAISE decision
# still reach the console.
_QUIET_LOGGERS = {
    "ray.data._internal.execution.streaming_executor": logging.WARNING,  # plan + finish, every epoch
    "ray.data._internal.progress": logging.ERROR,  # "progress bars disabled" (we disable them)
    "ray.train.v2._internal.execution.scaling_policy.scaling_policy": logging.WARNING,  # "Requesting resources"
    "ray.train.v2._internal.execution.worker_group.worker_group": logging.WARNING,  # "Started training worker group"
    "ray.train.v2._internal.execution.storage": logging.WARNING,  # "Checkpoint successfully created", every checkpoint
    "ray.train.torch.config": logging.WARNING,  # "Setting up process group"
    "ray.train.v2.torch.train_loop_utils": logging.WARNING,  # "Moving model to device"
    # "A run snapshot was found in storage folder ..." (three lines) on every resume: the project
    # prints its own "[srgan] ... resumed from step N".
    "ray.train.v2._internal.execution.checkpoint.checkpoint_manager": logging.WARNING,
}


def quiet_framework_logs() -> None:
    """Ray's ``worker_process_setup_hook`` (and the driver's own set-up): lower the per-epoch and
    per-report framework loggers to warnings. Cheap: it imports nothing beyond Ray itself."""
    import warnings

    import ray  # RAY

    # Ray Train's placement-group cleaner asks the State API for "the" cluster; with two clusters on
    # one machine (a local demo beside another) it finds both and its thread dies with a traceback.
    # In a worker, name this job's own cluster.
    if ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    for name, level in _QUIET_LOGGERS.items():
        _raise_level(name, level)
    # Ray Train's worker context logs "Reporting training result N: ..." at every checkpoint, through a
    # logger named by its file path, not under "ray.train".
    _raise_level(os.path.join(os.path.dirname(ray.__file__), "train", "v2", "_internal", "execution", "context.py"), logging.WARNING)
    # Raised by Ray Data's own internals (not by this project's calls) once per dataset manager.
    warnings.filterwarnings("ignore", message=r".*ExecutionOptions\.exclude_resources.* is deprecated")


def quiet_local_framework_logs() -> None:
    """:func:`quiet_framework_logs`, plus one warning that only matters where an autoscaler runs: on a
    busy local machine Ray Train's first resource request to its autoscaling coordinator (an actor it
    creates on demand) can take over 5 s, and it logs a traceback that it calls safe to ignore."""
    quiet_framework_logs()
    _raise_level("ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client", logging.ERROR)


class _MinLevel(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def _raise_level(logger_name: str, level: int) -> None:
    """A filter on the logger, not ``setLevel``: Ray Train re-runs ``logging.config.dictConfig`` in its
    processes, which resets the level (not the filters) of every logger below "ray.train"."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _MinLevel) for f in logger.filters):
        logger.addFilter(_MinLevel(level))
