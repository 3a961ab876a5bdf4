"""What ``pipelines/train.py`` does around the trainer: check sources up front, make the demo data,
run, and tell the user where everything is."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyarrow.fs as pafs

from srgan.config import Config, ConfigError
from srgan.io.storage import resolve

__all__ = ["DEMO_DATA_DIR", "check_sources", "run_job", "print_summary"]

DEMO_DATA_DIR = Path("data") / "demo"


def _check_exists(uri: str, what: str, s3_endpoint: str | None) -> None:
    try:
        fs, path = resolve(uri, s3_endpoint=s3_endpoint)
        info = fs.get_file_info(path)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{what} {uri}: {' '.join(str(exc).split())[:200]}") from None
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"{what} {uri} does not exist")


def check_sources(config: Config) -> Config:
    """Validate data URIs before Ray starts; with no training data, make and use the demo set."""
    data = config.data
    if not data.train:
        if data.val:
            raise ConfigError("--val-data was given without --data; give both, or neither for the demo")
        train_dir, val_dir = _make_demo()
        data = dataclasses.replace(data, train=str(train_dir.resolve()), val=str(val_dir.resolve()))
    elif not data.val:
        raise ConfigError("--val-data is required with --data (e.g. ../shared/datasets/Set5)")
    _check_exists(data.train, "training data", data.s3_endpoint)
    _check_exists(data.val, "validation data", data.s3_endpoint)
    # Ray workers run in other working directories: hand them absolute local paths.
    data = dataclasses.replace(data, train=_absolute(data.train), val=_absolute(data.val))
    if "://" not in data.val:
        _check_val_layout(data.val, config.model.scale)
    config = dataclasses.replace(config, data=data)
    return check_phase(config)


def check_phase(config: Config) -> Config:
    """Before Ray starts: pin the generator to start from and check that it matches ``model``; check
    that the srgan phase's VGG19 weights can be found (or ``random`` was asked for, announced loudly).

    Returns the config with ``train.init_from`` pinned (``models:/NAME@ALIAS`` -> ``models:/NAME/N``,
    a local checkpoint -> its absolute path): the weights checked here are the weights every worker,
    and every restart, loads, even if the alias moves meanwhile."""
    from srgan.io.weights import check_vgg19_weights  # imagenet: the torch cache, else one download here
    from srgan.tracking.refs import load_generator_ref, resolve_model

    train = config.train
    if train.init_from:
        source = resolve_model(train.init_from, tracking_uri=config.run.tracking_uri or None, s3_endpoint=config.data.s3_endpoint)
        _, info = load_generator_ref(source, s3_endpoint=config.data.s3_endpoint)
        if info.generator != config.model:
            diff = [f"model.{k}={v}" for k, v in dataclasses.asdict(info.generator).items() if getattr(config.model, k) != v]
            raise ConfigError(f"--init-from {train.init_from} is a different generator; set {' '.join('--set ' + d for d in diff)} (or use a config with that model)")
        config = dataclasses.replace(config, train=dataclasses.replace(train, init_from=source.uri))
    if train.phase == "srgan":
        where = check_vgg19_weights(config.loss.vgg_weights)
        if config.loss.vgg_weights == "random":
            print("[srgan] WARNING: --vgg-weights random: the VGG content loss uses RANDOM weights and is NOT perceptual (tests only)", flush=True)
        else:
            print(f"[srgan] VGG19 weights: {where}", flush=True)
    return config


def _absolute(uri: str) -> str:
    return uri if "://" in uri else str(Path(uri).expanduser().resolve())


def _check_val_layout(val_dir: str, scale: int) -> None:
    """A local validation set must have HR/ (LR_bicubic/X<scale>/ is optional: degrade() makes LR)."""
    from srgan.core.evaluation import find_pairs

    has_lr = (Path(val_dir) / "LR_bicubic" / f"X{scale}").is_dir()
    find_pairs(val_dir, scale=scale, use_degrade=not has_lr)


def _make_demo() -> tuple[Path, Path]:
    from srgan.app.demo_data import make_demo_dataset

    return make_demo_dataset(DEMO_DATA_DIR)


def run_job(config: Config, *, requested_init_from: str = ""):
    """Train ``config`` (already checked: see :func:`check_sources`) on Ray and register the result."""
    from srgan.distributed.trainer import run_training

    return run_training(config, requested_init_from=requested_init_from)


def print_summary(summary) -> None:
    """The end of a run: results, and where to look."""
    db = summary.tracking_uri
    print()
    print(f"run:         {summary.run_id} (experiment '{summary.experiment}') in {db}")
    if summary.best_val_psnr_y is not None:
        line = f"validation:  Y-PSNR {summary.best_val_psnr_y:.2f} dB"
        if summary.bicubic_val_psnr_y is not None:
            delta = summary.best_val_psnr_y - summary.bicubic_val_psnr_y
            line += f" (bicubic {summary.bicubic_val_psnr_y:.2f} dB, {delta:+.2f} dB)"
        print(line)
    if summary.selection_metric != "val_psnr_y" and summary.selection_value is not None:
        print(f"selected by: {summary.selection_metric} = {summary.selection_value:.4f} (lower is better)")
    print(f"checkpoint:  {summary.checkpoint}")
    print(f"registered:  {summary.registered}" + ("  (alias @champion)" if summary.champion else "  (champion kept: it scores higher)"))
    counts = summary.skipped.get("counts", {})
    print(f"skipped:     {summary.skipped.get('total', 0)} objects" + (f" {counts}" if counts else ""))
    print(f"time:        {summary.seconds:.0f} s")
    if db.startswith("sqlite:"):
        print(f"look:        mlflow ui --backend-store-uri {db}   (then open http://127.0.0.1:5000)")
    elif db.startswith(("http://", "https://")):
        print(f"look:        {db.rstrip('/')}/#/experiments  (experiment '{summary.experiment}', run {summary.run_id})")
    print(f"evaluate:    python pipelines/evaluate.py --model {summary.registered} --tracking-uri {db} --data ../shared/datasets/Set5")
