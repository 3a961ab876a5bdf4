"""The Ray Train edge: TorchTrainer around the plain-torch engine, checkpoints, resume, MLflow.

Ray touchpoints (marked ``# RAY``): ``ray.init``, the Ray Data dataset, ``TorchTrainer``/
``ScalingConfig``/``RunConfig``, and inside each worker ``get_context``, ``get_dataset_shard``,
``prepare_model``, ``get_checkpoint`` and ``report``. Everything else is ordinary PyTorch.

Semantics:
- ``train.batch_size`` is the GLOBAL batch: each of the N workers takes ``batch_size / N`` crops a
  step and DDP averages the gradients, so the optimisation matches one worker at the full batch.
- Validation runs on rank 0 every ``val_every`` steps and at every checkpoint; every checkpoint
  therefore carries a fresh ``val_psnr_y``, which Ray uses to keep the best ``keep_checkpoints``.
- Resume: re-running with the same ``run.name`` and ``run.storage`` restores the latest checkpoint
  (step, net_g, optimiser, EMA, RNG of rank 0; other ranks reseed from (seed, rank, step)) and logs to
  the same MLflow run; steps already in MLflow are not logged again.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from srgan.checkpoint import save_generator
from srgan.config import Config, config_from_dict, flatten
from srgan.engine import cycle_batches, ema_update, lr_at, make_ema, make_optimizer, set_lr, srresnet_step, unwrap, validate
from srgan.models import build_generator

__all__ = ["TrainSummary", "run_training", "train_loop_per_worker", "TRAINING_STATE_FILE"]

log = logging.getLogger(__name__)

TRAINING_STATE_FILE = "training_state.pt"
SELECTION_METRIC = "val_psnr_y"  # the SRResNet phase selects (and registers) by validation Y-PSNR


# ----------------------------------------------------------------------------- checkpoint state


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_checkpoint(directory: Path, *, step: int, net_g, optimizer, ema, config: Config, run_id: str) -> None:
    """generator.safetensors + checkpoint.json (the exported weights: EMA if enabled) + training state."""
    export = ema if ema is not None else unwrap(net_g)
    save_generator(directory, export, config=config.to_dict(), metadata={"step": step, "mlflow_run_id": run_id, "weights": "ema" if ema is not None else "net_g"})
    state = {
        "step": step,
        "net_g": unwrap(net_g).state_dict(),
        "optimizer": optimizer.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "rng": _rng_state(),
    }
    torch.save(state, directory / TRAINING_STATE_FILE)


def load_training_checkpoint(directory: Path, *, net_g, optimizer, ema, map_location) -> int:
    """Restore the training state saved by :func:`save_training_checkpoint`; returns its step."""
    state = torch.load(directory / TRAINING_STATE_FILE, map_location=map_location, weights_only=True)
    unwrap(net_g).load_state_dict(state["net_g"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    _set_rng_state(state["rng"])
    return int(state["step"])


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


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray.train  # RAY
    import ray.train.torch  # RAY

    config = config_from_dict(loop_config["config"])
    ctx = ray.train.get_context()  # RAY
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()  # RAY
    torch.manual_seed(config.train.seed + rank)

    net_g = build_generator(config.model).to(device)
    if config.train.channels_last:
        net_g = net_g.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(net_g, config.optim)
    ema = make_ema(net_g) if config.train.ema_decay > 0 else None

    step = 0
    checkpoint = ray.train.get_checkpoint()  # RAY
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            step = load_training_checkpoint(Path(ckpt_dir), net_g=net_g, optimizer=optimizer, ema=ema, map_location=device)
        if rank != 0:
            torch.manual_seed(config.train.seed + rank + step)
        if rank == 0:
            print(f"[srgan] resumed from step {step}", flush=True)
    model = ray.train.torch.prepare_model(net_g)  # RAY: DDP across workers (gloo on CPU, nccl on GPU)

    logger = _rank0_logger(loop_config) if rank == 0 else None
    val_dir, val_degrade = _local_val_set(config) if rank == 0 else ("", False)
    per_worker = config.train.batch_size // world
    shard = ray.train.get_dataset_shard("train")  # RAY
    shuffle_buffer = per_worker * 8 if config.data.crops_per_image > 1 else None
    batches = cycle_batches(lambda epoch: shard.iter_torch_batches(batch_size=per_worker, drop_last=True, local_shuffle_buffer_size=shuffle_buffer))

    meter = _Throughput()
    meter.reset()
    last_val: dict[str, float] = {}
    deadline = time.monotonic() + 60 * config.train.time_limit_min if config.train.time_limit_min > 0 else None
    out_of_time = False
    while step < config.train.steps and not out_of_time:
        t0 = time.perf_counter()
        epoch, batch = next(batches)
        gt_u8 = batch["gt"].to(device, non_blocking=True)  # (n, 3, crop, crop) uint8
        meter.data_wait += time.perf_counter() - t0
        step += 1
        lr = lr_at(step, config.optim)
        set_lr(optimizer, lr)
        out = srresnet_step(model, optimizer, gt_u8, config=config)
        if ema is not None:
            ema_update(ema, model, config.train.ema_decay)
        meter.images += gt_u8.shape[0] * world

        if deadline is not None and step % config.train.log_every == 0:
            out_of_time = _all_agree(time.monotonic() > deadline, world, device)
        last_step = step == config.train.steps or out_of_time
        if step % config.train.log_every == 0 or last_step:
            loss = _mean_over_workers(out["loss"], world, device)
            if logger is not None:
                ips, wait = meter.read()
                print(f"[srgan] step {step}/{config.train.steps} epoch {epoch} loss {loss:.5f} lr {lr:.2e} {ips:.1f} img/s data-wait {wait:.0%}", flush=True)
                logger.log({"train/loss": loss, "train/lr": lr, "train/images_per_s": ips, "train/data_wait_frac": wait, "train/epoch": epoch}, step)
                _log_skips(logger, loop_config["skip_counter"], step)
            meter.reset()

        do_checkpoint = step % config.train.checkpoint_every == 0 or last_step
        if step % config.train.val_every == 0 or do_checkpoint:
            if logger is not None:
                last_val = _validate_and_log(logger, ema if ema is not None else model, val_dir, val_degrade, config, step)
            meter.reset()
        if do_checkpoint:
            _report_checkpoint(step, model, optimizer, ema, config, loop_config["run_id"], rank, last_val)
    if out_of_time and rank == 0:
        print(f"[srgan] stopped at step {step}: train.time_limit_min={config.train.time_limit_min} reached (re-run to continue)", flush=True)


def _all_agree(flag: bool, world: int, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (so all DDP ranks stop at the same step)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _mean_over_workers(value: float, world: int, device: torch.device) -> float:
    if world == 1:
        return value
    import torch.distributed as dist

    t = torch.tensor([value], device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


def _rank0_logger(loop_config: dict[str, Any]):
    from srgan.tracking import MetricLogger

    return MetricLogger(loop_config["tracking_uri"], loop_config["run_id"])


def _log_skips(logger, counter_name: str, step: int) -> None:
    from srgan.data import count_skips

    summary = count_skips(counter_name)
    metrics = {"data/skipped_total": summary.get("total", 0)}
    metrics.update({f"data/skipped_{kind}": n for kind, n in summary.get("counts", {}).items()})
    logger.log(metrics, step)


def _local_val_set(config: Config) -> tuple[str, bool]:
    """The validation set as a local directory (downloaded once if remote), and whether LR must be made."""
    from srgan.storage import fetch_to_local

    from srgan.evaluation import find_pairs

    local = fetch_to_local(config.data.val, s3_endpoint=config.data.s3_endpoint)
    has_lr = (Path(local) / "LR_bicubic" / f"X{config.model.scale}").is_dir()
    find_pairs(local, scale=config.model.scale, use_degrade=not has_lr)  # fail now, not at the first validation
    return str(local), not has_lr


def _validate_and_log(logger, net, val_dir: str, val_degrade: bool, config: Config, step: int) -> dict[str, float]:
    t0 = time.perf_counter()
    want_bicubic = logger.last_step("val/bicubic_psnr_y") < 0
    result = validate(
        net,
        val_dir,
        scale=config.model.scale,
        use_degrade=val_degrade,
        with_bicubic=want_bicubic,
        max_images=config.data.val_max_images,
    )
    metrics = {"val/psnr_y": result.score.psnr_y, "val/ssim_y": result.score.ssim_y}
    if result.bicubic is not None:
        metrics.update({"val/bicubic_psnr_y": result.bicubic.psnr_y, "val/bicubic_ssim_y": result.bicubic.ssim_y})
    logger.log(metrics, step)
    if result.grid is not None:
        logger.log_image(result.grid, key="val_grid_lr_bicubic_sr_hr", step=step)
    print(f"[srgan] step {step} validation: Y-PSNR {result.score.psnr_y:.2f} dB, SSIM {result.score.ssim_y:.4f} on {len(result.score.images)} images ({time.perf_counter() - t0:.1f} s)", flush=True)
    return {SELECTION_METRIC: result.score.psnr_y, "val_ssim_y": result.score.ssim_y}


def _report_checkpoint(step, model, optimizer, ema, config, run_id, rank, last_val) -> None:
    import ray.train  # RAY

    metrics = {"step": step, **last_val}
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            save_training_checkpoint(Path(tmp), step=step, net_g=model, optimizer=optimizer, ema=ema, config=config, run_id=run_id)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))  # RAY
    else:
        ray.train.report(metrics, checkpoint=None)  # RAY: every rank reports (it is a barrier)


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


def _ray_init() -> None:
    import ray  # RAY

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)  # RAY: an existing cluster (ray job submit / ray start)
    else:
        # RAY: a local cluster for the embedded demo, on the loopback interface only, no dashboard.
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, configure_logging=False)


def _storage_path(storage: str) -> str:
    if "://" in storage and not storage.startswith("file://"):
        return storage
    return str(Path(storage.removeprefix("file://")).resolve())


def _cpus_per_worker(config: Config) -> float:
    """Fractional CPUs on small CPU machines, so Ray Data's read/decode tasks always get a core."""
    if config.run.cpus_per_worker > 0:
        return config.run.cpus_per_worker
    if config.run.gpu:
        return 1.0
    import ray  # RAY

    total = ray.cluster_resources().get("CPU", 1.0)
    return max(0.25, min(1.0, total / (2 * config.run.workers)))


def run_training(config: Config) -> TrainSummary:
    """Train ``config`` on Ray and register the best generator; blocks until done."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # RAY
    from ray.train.torch import TorchTrainer  # RAY

    from srgan.data import build_train_dataset, count_skips
    from srgan.tracking import finish_run, log_params_once, open_run, resolve_tracking_uri

    t0 = time.perf_counter()
    tracking_uri = resolve_tracking_uri(config.run.tracking_uri)
    storage = _storage_path(config.run.storage)
    run_key = f"{storage.rstrip('/')}/{config.run.name}"
    run_id, resumed = open_run(tracking_uri, experiment=config.run.experiment, run_key=run_key, run_name=config.run.name)
    log_params_once(tracking_uri, run_id, flatten(config))
    print(f"[srgan] MLflow run {run_id} ({'resumed' if resumed else 'new'}) in experiment '{config.run.experiment}' at {tracking_uri}", flush=True)

    _ray_init()
    skip_counter = f"srgan-skips-{config.run.name}-{uuid.uuid4().hex[:8]}"
    dataset = build_train_dataset(  # RAY: Ray Data decode + random crop -> uint8 Arrow tensors
        config.data.train,
        crop_size=config.data.crop_size,
        crops_per_image=config.data.crops_per_image,
        s3_endpoint=config.data.s3_endpoint,
        skip_counter_name=skip_counter,
        seed=config.train.seed,
    )
    trainer = TorchTrainer(  # RAY
        train_loop_per_worker,
        train_loop_config={
            "config": config.to_dict(),
            "run_id": run_id,
            "tracking_uri": tracking_uri,
            "skip_counter": skip_counter,
        },
        datasets={"train": dataset},
        scaling_config=ScalingConfig(num_workers=config.run.workers, use_gpu=config.run.gpu, resources_per_worker={"CPU": _cpus_per_worker(config)}),
        run_config=RunConfig(
            name=config.run.name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=config.train.keep_checkpoints, checkpoint_score_attribute=SELECTION_METRIC, checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=config.run.max_failures),
            # Ray Train otherwise re-emits each worker print() through its logger: every line twice.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}},
        ),
    )
    try:
        result = trainer.fit()
    except Exception:
        finish_run(tracking_uri, run_id, status="FAILED")
        raise
    best = result.get_best_checkpoint(metric=SELECTION_METRIC, mode="max") or result.checkpoint
    skipped = count_skips(skip_counter)
    summary = _register(config, tracking_uri, run_id, best, skipped, t0)
    finish_run(tracking_uri, run_id)
    return summary


def _register(config: Config, tracking_uri: str, run_id: str, best, skipped: dict[str, Any], t0: float) -> TrainSummary:
    from srgan.registry import register_generator
    from srgan.tracking import MetricLogger

    logger = MetricLogger(tracking_uri, run_id)
    history = {m.step: m.value for m in logger.client.get_metric_history(run_id, "val/psnr_y")}
    bicubic = [m.value for m in logger.client.get_metric_history(run_id, "val/bicubic_psnr_y")]
    with best.as_directory() as ckpt_dir:
        meta = json.loads((Path(ckpt_dir) / "checkpoint.json").read_text())
        step = meta["metadata"]["step"]
        best_psnr = history.get(step)  # every checkpoint step is also a validation step
        registration = register_generator(
            tracking_uri,
            run_id=run_id,
            checkpoint_dir=ckpt_dir,
            step=step,
            name=config.run.register_as,
            metric_name=SELECTION_METRIC,
            metric_value=best_psnr,
        )
    logger.set_tags({"srgan.best_checkpoint": best.path, "srgan.best_step": step})
    return TrainSummary(
        run_id=run_id,
        experiment=config.run.experiment,
        tracking_uri=tracking_uri,
        checkpoint=best.path,
        best_val_psnr_y=best_psnr,
        bicubic_val_psnr_y=bicubic[-1] if bicubic else None,
        registered=registration.uri,
        champion=registration.champion,
        skipped=skipped,
        seconds=time.perf_counter() - t0,
    )
