"""The Ray Train edge: TorchTrainer around the plain-torch engine, checkpoints, resume, MLflow.

Ray touchpoints (marked ``# RAY``): ``ray.init``, the Ray Data dataset, ``TorchTrainer``/
``ScalingConfig``/``RunConfig``, and inside each worker ``get_context``, ``get_dataset_shard``,
``prepare_model``, ``get_checkpoint`` and ``report``. Everything else is ordinary PyTorch.

Semantics:
- ``train.batch_size`` is the GLOBAL batch: each of the N workers takes ``batch_size / N`` crops a
  step and DDP averages the gradients, so the optimisation matches one worker at the full batch.
- Phases: ``srresnet`` (pixel MSE) and ``srgan`` (VGG content + 1e-3 adversarial, D trained
  alternately; G starts from ``train.init_from``, D fresh). See :data:`SELECTION` for how each picks
  its best checkpoint and registry champion.
- Validation runs on rank 0 every ``val_every`` steps and at every checkpoint; every checkpoint
  therefore carries a fresh selection metric, which Ray uses to keep the best ``keep_checkpoints``.
- Resume: re-running with the same ``run.name`` and ``run.storage`` restores the latest checkpoint
  (step, G, D, optimisers, EMA, RNG of rank 0; other ranks reseed from (seed, rank, step)) and logs to
  the same MLflow run; steps already in MLflow are not logged again.
- Checkpoints on ``s3://`` go through :func:`srgan.io.storage.s3_filesystem` (``RunConfig(storage_filesystem=...)``),
  so each request is retried like every other S3 request of the project (:func:`_ray_storage`).
- Fault recovery: ``run.max_failures`` (FailureConfig) restarts a failed worker group from the latest
  checkpoint within the same driver and MLflow run; a lost node too, once a node with room for the
  workers is back (Ray Train retries the start of the group every 60 s meanwhile).
- Tracking outages: rank 0 logs through :class:`srgan.tracking.runs.BufferedLogger` (a sender thread;
  metrics wait in memory while the server is down and are sent when it is back), so training and
  checkpoints (Ray storage, not MLflow) never wait on MLflow; the driver's MLflow calls are retried
  within a bound (:func:`srgan.tracking.runs.with_tracking_retries`) and registration says in one
  line what it could not do. docs/training.md, "Faults".
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from srgan.core.checkpoint import save_generator, state_fingerprint
from srgan.config import Config, config_from_dict, flatten
from srgan.core.engine import (
    DeviceMeans, compile_module, cycle_batches, ema_update, lr_at, make_ema, make_optimizer, set_lr, srgan_step, srresnet_step, start_early,
    validate,
)
from srgan.core.models import build_discriminator, build_generator
from srgan.distributed.cluster import init_ray
from srgan.core.training_state import Nets, load_training_checkpoint, save_training_checkpoint

if TYPE_CHECKING:
    import ray.train

__all__ = ["TrainSummary", "run_training", "train_loop_per_worker", "checkpoint_files", "SELECTION", "Selection"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Selection:
    """How a phase picks its best checkpoint (Ray's ``CheckpointConfig``) and its registry champion."""

    attribute: str  # the metric reported with each Ray checkpoint
    mode: str  # "max" or "min"
    mlflow_key: str  # the same value in MLflow


# SRResNet: validation Y-PSNR (higher is better). SRGAN trades PSNR for perceptual quality by design,
# so it selects by the mean VGG feature distance between SR and HR on the validation set (the content
# loss's own measure, on whole images; lower is better).
SELECTION = {
    "srresnet": Selection("val_psnr_y", "max", "val/psnr_y"),
    "srgan": Selection("val_content_distance", "min", "val/content_distance"),
}


# ----------------------------------------------------------------------------------- the worker


@dataclass
class _Throughput:
    """Images/s and the fraction of wall time spent waiting for data, since the last log line."""

    t_start: float = 0.0
    data_wait: float = 0.0
    images: int = 0

    def reset(self) -> None:
        self.t_start, self.data_wait, self.images = time.perf_counter(), 0.0, 0

    def read(self) -> tuple[float, float]:
        elapsed = max(time.perf_counter() - self.t_start, 1e-9)
        return self.images / elapsed, self.data_wait / elapsed


def _build_nets(config: Config, device: torch.device, init_from: str, tracking_uri: str) -> Nets:
    """Fresh networks and optimisers on ``device``; G starts from ``init_from`` when given. Every rank
    loads it, so every rank's EMA starts from it too (DDP's start-up broadcast of rank 0's weights then
    changes nothing); D always starts fresh."""
    from srgan.tracking.refs import load_generator_ref

    net_g = build_generator(config.model).to(device)
    if init_from:  # pinned by the driver (srgan.app.train_job.check_phase): the same weights on every rank
        source, _ = load_generator_ref(init_from, map_location=device, tracking_uri=tracking_uri, s3_endpoint=config.data.s3_endpoint)
        net_g.load_state_dict(source.state_dict())
    net_d = build_discriminator(config.discriminator).to(device) if config.train.phase == "srgan" else None
    if config.train.channels_last:
        net_g = net_g.to(memory_format=torch.channels_last)
        net_d = net_d.to(memory_format=torch.channels_last) if net_d is not None else None
    ema = make_ema(net_g) if config.train.ema_decay > 0 else None  # eager: made before any compile
    opt_g = make_optimizer(net_g, config.optim)
    opt_d = make_optimizer(net_d, config.optim) if net_d is not None else None
    if config.train.compile:  # the same parameters inside: optimisers, EMA and checkpoints see no difference
        net_g = compile_module(net_g)
        net_d = compile_module(net_d) if net_d is not None else None
    return Nets(net_g=net_g, opt_g=opt_g, ema=ema, net_d=net_d, opt_d=opt_d)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train  # RAY
    import ray.train.torch  # RAY

    from srgan.core.losses import build_content_loss
    from srgan.io.storage import fetch_weights_file

    config = config_from_dict(loop_config["config"])
    gan = config.train.phase == "srgan"
    ctx = ray.train.get_context()  # RAY
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()  # RAY
    threads = _set_torch_threads(loop_config.get("torch_threads", 0))
    print(f"[srgan] worker rank {rank}/{world} pid {os.getpid()} device {device} {threads}", flush=True)
    torch.manual_seed(config.train.seed + rank)

    # Ray Data's streaming execution takes seconds to start (read tasks, decode workers, the first
    # reads): started now, it runs while the nets are built and the checkpoint or init_from loads.
    per_worker = config.train.batch_size // world
    shard = ray.train.get_dataset_shard("train")  # RAY
    batches = start_early(cycle_batches(lambda epoch: _iter_crops(shard, config, per_worker, device, loop_config)))

    checkpoint = ray.train.get_checkpoint()  # RAY
    # A checkpoint (resume or restart after a failure) wins over init_from, which only starts a run.
    nets = _build_nets(config, device, "" if checkpoint is not None else loop_config["init_from"], loop_config["tracking_uri"])
    # Remote VGG weights and the validation set are downloaded here; the directory goes when the loop ends
    # (or, if it raises, when the worker's process exits).
    scratch = tempfile.TemporaryDirectory(prefix="srgan-worker-")
    for part in ("vgg", "val"):  # one folder each: a remote weights file and val set may share a name
        (Path(scratch.name) / part).mkdir()
    content_loss = build_content_loss(config.loss, vgg_weights=fetch_weights_file(config.loss.vgg_weights, into=Path(scratch.name) / "vgg")).to(device) if gan else None
    logger = _rank0_logger(loop_config) if rank == 0 else None

    step = 0
    if checkpoint is not None:
        with checkpoint_files(checkpoint, scratch=Path(scratch.name)) as ckpt_dir:
            step = load_training_checkpoint(ckpt_dir, nets=nets, map_location=device)
        if rank != 0:
            torch.manual_seed(config.train.seed + rank + step)
        if rank == 0:
            print(f"[srgan] resumed from step {step}", flush=True)
    elif logger is not None:
        # Evidence of where this run started: equal fingerprints = bit-identical weights.
        tags = {"srgan.step0_fingerprint.net_g": state_fingerprint(nets.net_g)}
        if nets.net_d is not None:
            tags["srgan.step0_fingerprint.net_d"] = state_fingerprint(nets.net_d)
        logger.set_tags(tags)
    model_g = ray.train.torch.prepare_model(nets.net_g)  # RAY: DDP across workers (gloo on CPU, nccl on GPU)
    model_d = ray.train.torch.prepare_model(nets.net_d) if gan else None  # RAY

    val_dir, val_degrade = _local_val_set(config, str(Path(scratch.name) / "val")) if rank == 0 else ("", False)

    meter = _Throughput()
    meter.reset()
    means = DeviceMeans()  # the losses since the last log line, summed on the device
    last_val: dict[str, float] = {}
    deadline = time.monotonic() + 60 * config.train.time_limit_min if config.train.time_limit_min > 0 else None
    out_of_time = False
    while step < config.train.steps and not out_of_time:
        t0 = time.perf_counter()
        epoch, gt_u8 = next(batches)  # (n, 3, crop, crop) uint8, already on the device
        meter.data_wait += time.perf_counter() - t0  # only the time blocked on the prefetching thread
        step += 1
        lr = lr_at(step, config.optim)
        for opt in (nets.opt_g, nets.opt_d):
            if opt is not None:
                set_lr(opt, lr)
        if gan:
            out = srgan_step(model_g, model_d, nets.opt_g, nets.opt_d, gt_u8, content_loss=content_loss, config=config.step)
        else:
            out = srresnet_step(model_g, nets.opt_g, gt_u8, config=config.step)
        if nets.ema is not None:
            ema_update(nets.ema, model_g, config.train.ema_decay)
        means.add(out)  # queued on the device: no host synchronisation between log steps
        meter.images += gt_u8.shape[0] * world

        if deadline is not None and step % config.train.log_every == 0:
            out_of_time = _all_agree(time.monotonic() > deadline, world, device)
        last_step = step == config.train.steps or out_of_time
        if step % config.train.log_every == 0 or last_step:
            losses = _mean_over_workers(means, world)  # the one host synchronisation of a log interval
            means.reset()
            if logger is not None:
                ips, wait = meter.read()
                print(f"[srgan] step {step}/{config.train.steps} epoch {epoch} {_format_losses(losses)} lr {lr:.2e} {ips:.1f} img/s data-wait {wait:.0%}", flush=True)
                metrics = {f"train/{k}": v for k, v in losses.items()}
                logger.log({**metrics, "train/lr": lr, "train/images_per_s": ips, "train/data_wait_frac": wait, "train/epoch": epoch}, step)
                _log_skips(logger, loop_config["skip_counter"], step)
            meter.reset()

        do_checkpoint = step % config.train.checkpoint_every == 0 or last_step
        if step % config.train.val_every == 0 or do_checkpoint:
            if logger is not None:
                net_eval = nets.ema if nets.ema is not None else model_g
                last_val = _validate_and_log(logger, net_eval, val_dir, val_degrade, config, step, content_loss)
            meter.reset()
        if do_checkpoint:
            if logger is not None:
                logger.settle(timeout_s=CHECKPOINT_SETTLE_S)  # the steps before a checkpoint reach MLflow first
            _report_checkpoint(step, Nets(model_g, nets.opt_g, nets.ema, model_d, nets.opt_d), config, loop_config["run_id"], rank, last_val)
    if out_of_time and rank == 0:
        print(f"[srgan] stopped at step {step}: train.time_limit_min={config.train.time_limit_min} reached (re-run to continue)", flush=True)
    if logger is not None:
        logger.close(timeout_s=loop_config["tracking_wait_s"])
    scratch.cleanup()


def _format_losses(losses: dict[str, float]) -> str:
    if "loss_g" not in losses:
        return f"loss {losses['loss']:.5f}"
    return (
        f"G {losses['loss_g']:.4g} (content {losses['loss_g_content']:.4g}, adv {losses['loss_g_adversarial']:.4g}) "
        f"D {losses['loss_d']:.3f} D(x) {losses['d_real']:.2f} D(G(z)) {losses['d_fake']:.2f}"
    )


def _all_agree(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (so all DDP ranks stop at the same step)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _mean_over_workers(means: DeviceMeans, world: int) -> dict[str, float]:
    """Each loss averaged over the steps since the last log line and over the DDP ranks: one
    all-reduce of the device sums (the keys and step counts are the same on every rank), then one read."""
    sums = means.sums()  # (K,) on the device
    if world > 1:
        import torch.distributed as dist

        sums = sums.clone()
        dist.all_reduce(sums)
    return {k: v / (means.count * world) for k, v in zip(means.keys, sums.tolist())}


def _set_torch_threads(requested: int) -> str:
    """Set torch's intra-op threads to ``requested`` (when > 0); describe them and what Ray had given.

    Measured on Ray 2.60 (docs/performance.md): a Train worker starts with OMP_NUM_THREADS set to
    floor(its CPUs), at least 1 (0.5 and 1 CPU: 1 thread; 2 CPUs: 2), but only when the node's
    environment sets none; an image or runtime_env exporting OMP_NUM_THREADS=16 gives every
    fractional worker 16 threads on the same cores. Setting it here does not depend on that."""
    before, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS", "unset")
    if requested > 0:
        torch.set_num_threads(requested)
    return f"threads {torch.get_num_threads()} (Ray's default {before}, OMP_NUM_THREADS {omp})"


def _iter_crops(shard, config: Config, per_worker: int, device: torch.device, loop_config: dict[str, Any]):
    """One epoch of uint8 HR crop batches (per_worker, 3, c, c) on ``device``.

    Ray Data's iterator prefetches ``data.prefetch_batches`` batches on its own thread and copies
    them to the device there (from pinned memory on CUDA), so the loop only blocks when ingest is
    behind. With ``data.decode_device: cuda`` the shard holds encoded bytes and the crops are decoded
    here, on the GPU (:func:`srgan.distributed.ingest.iter_device_crops`)."""
    if loop_config.get("worker_decodes"):
        from srgan.distributed.ingest import iter_device_crops

        yield from iter_device_crops(
            shard, crop_size=config.data.crop_size, crops_per_image=config.data.crops_per_image, batch_size=per_worker,
            device=device, prefetch_batches=config.data.prefetch_batches, skip_counter_name=loop_config["skip_counter"],
        )
        return
    # crops_per_image > 1: an image's crops are adjacent rows; a local shuffle buffer spreads them over batches.
    shuffle_buffer = per_worker * 8 if config.data.crops_per_image > 1 else None
    for batch in shard.iter_torch_batches(  # RAY
        batch_size=per_worker, drop_last=True, local_shuffle_buffer_size=shuffle_buffer,
        prefetch_batches=config.data.prefetch_batches, pin_memory=device.type == "cuda", device=device,
    ):
        yield batch["gt"]


# How long rank 0 waits at the end of training for buffered metrics to reach a tracking server that is
# down or overloaded: the driver's own bound (SRGAN_TRACKING_WAIT_S, 120 s), passed in the loop config
# since workers may not share the driver's environment. What is still unsent then is counted in one
# warning line (the checkpoints are in Ray storage). 30 s lost 13 values of a run whose server, slow
# on a saturated machine, answered the driver's registration a minute later.


# How long rank 0 waits at a checkpoint for a lagging (not a down) tracking server to take the metrics
# of the steps before it: a worker group restarted from that checkpoint never logs them again.
CHECKPOINT_SETTLE_S = 30.0

# How long rank 0 waits after reporting a checkpoint until Ray Train's controller has registered it.
# A reported checkpoint is in storage, but the controller only learns of it at its next poll of the
# workers (every 2 s, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S); a node lost before then took the report
# with it, and the group restarted from the checkpoint before, one interval further back. Waiting
# bounds what a lost node costs to one checkpoint interval (the node-loss scenario of
# benchmarks/reliability.py lost 7 and 8 steps at interval 4 without it).
CHECKPOINT_COMMIT_WAIT_S = 120.0


def _rank0_logger(loop_config: dict[str, Any]):
    from srgan.tracking.runs import BufferedLogger

    return BufferedLogger(loop_config["tracking_uri"], loop_config["run_id"])


def _log_skips(logger, counter_name: str, step: int) -> None:
    from srgan.distributed.ingest import count_skips

    summary = count_skips(counter_name)
    metrics = {"data/skipped_total": summary.get("total", 0)}
    metrics.update({f"data/skipped_{kind}": n for kind, n in summary.get("counts", {}).items()})
    logger.log(metrics, step)


def _local_val_set(config: Config, scratch: str) -> tuple[str, bool]:
    """The validation set as a local directory (downloaded once into ``scratch`` if remote), and whether LR must be made."""
    from srgan.io.storage import fetch_to_local

    from srgan.core.evaluation import find_pairs

    local = fetch_to_local(config.data.val, s3_endpoint=config.data.s3_endpoint, into=scratch)
    has_lr = (Path(local) / "LR_bicubic" / f"X{config.model.scale}").is_dir()
    find_pairs(local, scale=config.model.scale, use_degrade=not has_lr)  # fail now, not at the first validation
    return str(local), not has_lr


def _validate_and_log(logger, net, val_dir: str, val_degrade: bool, config: Config, step: int, content_loss=None) -> dict[str, float]:
    """Validate on rank 0, log to MLflow; returns the metrics reported with the next Ray checkpoint."""
    t0 = time.perf_counter()
    want_bicubic = not logger.sent_once("val/bicubic_psnr_y")  # the sender drops it if the run has one
    result = validate(
        net,
        val_dir,
        scale=config.model.scale,
        use_degrade=val_degrade,
        with_bicubic=want_bicubic,
        max_images=config.data.val_max_images,
        content_loss=content_loss,
    )
    metrics = {"val/psnr_y": result.score.psnr_y, "val/ssim_y": result.score.ssim_y}
    if result.content_distance is not None:
        metrics["val/content_distance"] = result.content_distance
    if result.bicubic is not None:
        logger.log({"val/bicubic_psnr_y": result.bicubic.psnr_y, "val/bicubic_ssim_y": result.bicubic.ssim_y}, step, once=True)
    logger.log(metrics, step)
    if result.grid is not None:
        logger.log_image(result.grid, key="val_grid_lr_bicubic_sr_hr", step=step)
    perceptual = f", VGG distance {result.content_distance:.4g}" if result.content_distance is not None else ""
    print(f"[srgan] step {step} validation: Y-PSNR {result.score.psnr_y:.2f} dB, SSIM {result.score.ssim_y:.4f}{perceptual} on {len(result.score.images)} images ({time.perf_counter() - t0:.1f} s)", flush=True)
    reported = {"val_psnr_y": result.score.psnr_y, "val_ssim_y": result.score.ssim_y}
    if result.content_distance is not None:
        reported["val_content_distance"] = result.content_distance
    return reported


@contextlib.contextmanager
def checkpoint_files(checkpoint: ray.train.Checkpoint, *, scratch: Path | None = None) -> Iterator[Path]:
    """A Ray checkpoint's files in a local directory that only this process reads.

    A checkpoint on local disk (or a shared mount) is read where it is. A remote one (S3) is
    downloaded into a fresh folder under ``scratch`` (default: the system's temporary directory)
    and removed on exit. The trainer reads every checkpoint through here. Not ``as_directory()``:
    Ray 2.60 downloads a remote checkpoint into one temporary folder per node, shared by the workers
    there, and a worker that arrives after the first download has finished downloads again into that
    same folder, rewriting files in place while the others read them. Two DDP workers resuming on
    one node then failed with "PytorchStreamReader failed reading file data/71" (CI, 2026-12-07).
    """
    import pyarrow.fs

    if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
        yield Path(checkpoint.path)
        return
    into = Path(tempfile.mkdtemp(prefix="checkpoint-", dir=scratch))
    try:
        checkpoint.to_directory(into)
        yield into
    finally:
        shutil.rmtree(into, ignore_errors=True)


def _report_checkpoint(step: int, nets: Nets, config: Config, run_id: str, rank: int, last_val: dict[str, float]) -> None:
    import ray.train  # RAY

    metrics = {"step": step, **last_val}
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            save_training_checkpoint(Path(tmp), step=step, nets=nets, config=config.to_dict(), run_id=run_id)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))  # RAY
        _wait_until_registered(step)
        print(f"[srgan] checkpoint step {step} saved", flush=True)
    else:
        ray.train.report(metrics, checkpoint=None)  # RAY: every rank reports (it is a barrier)


def _wait_until_registered(step: int, timeout_s: float = CHECKPOINT_COMMIT_WAIT_S) -> None:
    """Block until the controller has registered this worker's latest report (the checkpoint just
    reported): see :data:`CHECKPOINT_COMMIT_WAIT_S`. The other ranks wait at the next all-reduce."""
    import ray.train  # RAY

    t0 = time.monotonic()
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=timeout_s)  # RAY
    if time.monotonic() - t0 >= timeout_s:
        print(f"[srgan] WARNING: checkpoint step {step} is in storage but Ray Train had not registered it after {timeout_s:.0f} s; "
              "training goes on (a node lost now resumes from the checkpoint before)", flush=True)


# ----------------------------------------------------------------------------------- the driver


@dataclass
class TrainSummary:
    run_id: str
    experiment: str
    tracking_uri: str
    checkpoint: str
    best_val_psnr_y: float | None
    bicubic_val_psnr_y: float | None
    registered: str | None
    champion: bool
    skipped: dict[str, Any]
    seconds: float
    selection_metric: str = "val_psnr_y"
    selection_value: float | None = None


def _storage_path(storage: str) -> str:
    if "://" in storage and not storage.startswith("file://"):
        return storage
    return str(Path(storage.removeprefix("file://")).resolve())


def _ray_storage(storage: str, s3_endpoint: str | None):
    """``(storage_path, storage_filesystem)`` for Ray Train's ``RunConfig``, from :func:`_storage_path`'s
    URI. ``s3://bucket/prefix``: ``("bucket/prefix", s3_filesystem(endpoint))``, so that checkpoint
    uploads and downloads, the checkpoint-manager snapshot and resume all go through the retrying
    filesystem (10 attempts, :data:`srgan.io.storage.S3_MAX_ATTEMPTS`; Ray's own for an ``s3://`` path
    would make pyarrow's default 3), and it survives pickling to the controller and every worker. Ray
    wants the path without its scheme when a filesystem is given; the paths it hands back (checkpoint
    paths) were scheme-less before too, and what it stores in the run's snapshot is relative to the run
    directory, so runs started before this resume alike. A local path: ``(path, None)``."""
    if storage.startswith("s3://"):
        from srgan.io.storage import s3_filesystem

        return storage.removeprefix("s3://").rstrip("/"), s3_filesystem(s3_endpoint)
    return storage, None


def _run_config(config: Config, storage: str, selection: Selection):
    """Ray Train's ``RunConfig`` of the run: name, storage (:func:`_ray_storage`), checkpoints, failures."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig  # RAY

    storage_path, storage_filesystem = _ray_storage(storage, config.data.s3_endpoint)
    return RunConfig(  # RAY
        name=config.run.name,
        storage_path=storage_path,
        storage_filesystem=storage_filesystem,
        checkpoint_config=CheckpointConfig(num_to_keep=config.train.keep_checkpoints, checkpoint_score_attribute=selection.attribute, checkpoint_score_order=selection.mode),
        failure_config=FailureConfig(max_failures=config.run.max_failures),
        # Ray Train otherwise re-emits each worker print() through its logger: every line twice.
        worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
    )


def _cpus_per_worker(config: Config) -> float:
    """Fractional CPUs on small CPU machines, so Ray Data's read/decode tasks always get a core."""
    if config.run.cpus_per_worker > 0:
        return config.run.cpus_per_worker
    if config.run.gpu:
        return 1.0
    import ray  # RAY

    total = ray.cluster_resources().get("CPU", 1.0)
    return max(0.25, min(1.0, total / (2 * config.run.workers)))


def _decode_task_cpus(config: Config, cpus_per_worker: float) -> float:
    """CPUs per Ray Data read/decode task: a core (decoding is single-threaded), or what the Train
    workers leave free when that is less (at least a quarter), so that a decode task can always start."""
    import ray  # RAY

    free = ray.cluster_resources().get("CPU", 1.0) - config.run.workers * cpus_per_worker
    return max(0.25, min(1.0, free))


def _torch_threads(config: Config, cpus_per_worker: float) -> int:
    """Intra-op threads per Train worker: ``run.torch_threads``, else the whole CPUs it holds (at least
    one: a worker holding 0.5 CPU runs one thread, not one per core of the node)."""
    return config.run.torch_threads or max(1, math.floor(cpus_per_worker))


def run_training(config: Config, *, requested_init_from: str = "") -> TrainSummary:
    """Train ``config`` on Ray and register the best generator; blocks until done."""
    from ray.train import ScalingConfig  # RAY
    from ray.train.torch import TorchTrainer  # RAY

    from srgan.distributed.ingest import build_train_dataset, count_skips, decodes_on_worker, training_epoch_objects
    from srgan.tracking.runs import finish_run, log_params_once, open_run, resolve_tracking_uri, wait_limit_s, with_tracking_retries

    t0 = time.perf_counter()
    tracking_uri = resolve_tracking_uri(config.run.tracking_uri)
    storage = _storage_path(config.run.storage)
    run_key = f"{storage.rstrip('/')}/{config.run.name}"
    tracked = lambda fn, what: with_tracking_retries(fn, what=what, tracking_uri=tracking_uri)  # noqa: E731
    run_id, resumed = tracked(lambda: open_run(tracking_uri, experiment=config.run.experiment, run_key=run_key, run_name=config.run.name), "open the MLflow run (nothing was trained)")
    tracked(lambda: log_params_once(tracking_uri, run_id, flatten(config)), "log the run's params (nothing was trained)")
    print(f"[srgan] MLflow run {run_id} ({'resumed' if resumed else 'new'}) in experiment '{config.run.experiment}' at {tracking_uri}", flush=True)
    init_from = tracked(lambda: _record_init_from(config, requested_init_from, tracking_uri, run_id), "tag the run (nothing was trained)")
    selection = SELECTION[config.train.phase]

    init_ray()  # RAY
    skip_counter = f"srgan-skips-{config.run.name}-{uuid.uuid4().hex[:8]}"
    cpus_per_worker = _cpus_per_worker(config)
    dataset = build_train_dataset(  # RAY: Ray Data decode + random crop -> uint8 Arrow tensors
        config.data.train,
        crop_size=config.data.crop_size,
        crops_per_image=config.data.crops_per_image,
        s3_endpoint=config.data.s3_endpoint,
        skip_counter_name=skip_counter,
        seed=config.train.seed,
        decode=config.data.decode_device,
        num_cpus=_decode_task_cpus(config, cpus_per_worker),
        min_objects_per_epoch=training_epoch_objects(steps=config.train.steps, batch_size=config.train.batch_size,
                                                     crops_per_image=config.data.crops_per_image),
    )
    trainer = TorchTrainer(  # RAY
        train_loop_per_worker,
        train_loop_config={
            "config": config.to_dict(),
            "run_id": run_id,
            "tracking_uri": tracking_uri,
            "tracking_wait_s": wait_limit_s(),
            "skip_counter": skip_counter,
            "init_from": init_from,
            "torch_threads": _torch_threads(config, cpus_per_worker),
            "worker_decodes": decodes_on_worker(config.data.train, config.data.decode_device, s3_endpoint=config.data.s3_endpoint),
        },
        datasets={"train": dataset},
        scaling_config=ScalingConfig(num_workers=config.run.workers, use_gpu=config.run.gpu, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=_run_config(config, storage, selection),
    )
    try:
        result = trainer.fit()
    except Exception:
        try:
            tracked(lambda: finish_run(tracking_uri, run_id, status="FAILED"), "mark the run FAILED")
        except Exception as exc:  # noqa: BLE001 - the training error is the one to report
            print(f"[srgan] WARNING: {exc}", flush=True)
        raise
    best, best_metrics = _best_checkpoint(result, selection)
    skipped = count_skips(skip_counter)
    step = best_metrics["step"]
    summary = tracked(
        lambda: _register(config, tracking_uri, run_id, best, best_metrics, skipped, t0),
        f"register the best generator (step {step}, checkpoint {best.path}); it is safe in run storage: rerun the same command once the server is back to register it (nothing is retrained)",
    )
    tracked(lambda: finish_run(tracking_uri, run_id), f"mark the run FINISHED (registered {summary.registered})")
    return summary


def _best_checkpoint(result, selection: Selection):
    """The best checkpoint by the selection metric Ray reported with it, and those metrics (step,
    val_psnr_y...). From Ray's own records, so choosing it needs no tracking server."""
    ranked = [(ckpt, m) for ckpt, m in (result.best_checkpoints or []) if m.get(selection.attribute) is not None]
    if ranked:
        pick = max if selection.mode == "max" else min
        return pick(ranked, key=lambda pair: pair[1][selection.attribute])
    best = result.checkpoint  # no validation metric reported: the latest
    with checkpoint_files(best) as ckpt_dir:
        meta = json.loads((ckpt_dir / "checkpoint.json").read_text())
    return best, {"step": meta["metadata"]["step"]}


def _record_init_from(config: Config, requested: str, tracking_uri: str, run_id: str) -> str:
    """Tag the run with the generator it starts from: what the user named and the pinned reference
    (``srgan.app.train_job.check_phase`` pinned it before Ray started)."""
    pinned = config.train.init_from
    if not pinned:
        return ""
    requested = requested or pinned
    from srgan.tracking.runs import MetricLogger

    MetricLogger(tracking_uri, run_id).set_tags({"srgan.init_from": requested, "srgan.init_from_resolved": pinned})
    print(f"[srgan] generator initialised from {pinned}" + (f" ({requested})" if pinned != requested else ""), flush=True)
    return pinned


def _register(config: Config, tracking_uri: str, run_id: str, best, best_metrics: dict[str, Any], skipped: dict[str, Any], t0: float) -> TrainSummary:
    """Register ``best`` (idempotent: a version this run already made for the same step is reused, so
    a retried or rerun registration never makes a second one) and tag the run."""
    from srgan.tracking.registry import register_generator
    from srgan.tracking.runs import MetricLogger

    selection = SELECTION[config.train.phase]
    logger = MetricLogger(tracking_uri, run_id)
    bicubic = [m.value for m in logger.client.get_metric_history(run_id, "val/bicubic_psnr_y")]
    step = best_metrics["step"]
    score = best_metrics.get(selection.attribute)
    with checkpoint_files(best) as ckpt_dir:
        registration = register_generator(
            tracking_uri,
            run_id=run_id,
            checkpoint_dir=ckpt_dir,
            step=step,
            name=config.registered_name,
            metric_name=selection.attribute,
            metric_value=score,
            higher_is_better=selection.mode == "max",
            tags={"phase": config.train.phase, "selection_metric": selection.attribute},
        )
    logger.set_tags({"srgan.best_checkpoint": best.path, "srgan.best_step": step})
    return TrainSummary(
        run_id=run_id,
        experiment=config.run.experiment,
        tracking_uri=tracking_uri,
        checkpoint=best.path,
        best_val_psnr_y=best_metrics.get("val_psnr_y"),
        bicubic_val_psnr_y=bicubic[-1] if bicubic else None,
        registered=registration.uri,
        champion=registration.champion,
        skipped=skipped,
        seconds=time.perf_counter() - t0,
        selection_metric=selection.attribute,
        selection_value=score,
    )
