"""What ``pipelines/evaluate.py`` runs: a model reference (or ``bicubic``) on benchmark directories,
scored with the core's protocol (:mod:`srgan.core.evaluation`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from srgan.core.evaluation import DatasetScore, ImageScore, UpscaleFn, bicubic_model, evaluate_dataset, find_pairs, format_table, upscaler_model
from srgan.core.inference import UpscalerOptions
from srgan.errors import UserError
from srgan.tracking.refs import load_upscaler

__all__ = ["EvalConfig", "build_model", "run_evaluation", "format_table"]


@dataclass(frozen=True)
class EvalConfig:
    """What ``pipelines/evaluate.py`` runs."""

    model: str  # "bicubic" or a checkpoint directory / URI
    data: tuple[str, ...]
    scale: int = 4
    use_degrade: bool = False
    device: str = "auto"
    tile_size: int = 256
    tracking_uri: str | None = None  # for models:/ URIs; default MLFLOW_TRACKING_URI or sqlite:///mlflow.db

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise UserError(f"--scale must be a positive integer, got {self.scale}")
        if not self.data:
            raise UserError("--data needs at least one dataset directory")
        if self.tile_size < 32:
            raise UserError(f"--tile-size must be >= 32, got {self.tile_size}")


def build_model(config: EvalConfig) -> UpscaleFn:
    """``bicubic`` or an Upscaler over a checkpoint, checked against ``config.scale``."""
    if config.model == "bicubic":
        return bicubic_model(config.scale)
    upscaler = load_upscaler(config.model, options=UpscalerOptions(device=config.device, tile_size=config.tile_size), tracking_uri=config.tracking_uri)
    if upscaler.scale != config.scale:
        raise UserError(f"model {config.model} is x{upscaler.scale} but --scale is {config.scale}")
    return upscaler_model(upscaler)


def run_evaluation(config: EvalConfig, *, on_image: Callable[[str, ImageScore], None] | None = None) -> list[DatasetScore]:
    """Evaluate ``config.model`` on every dataset; layouts are checked before any model is loaded."""
    for directory in config.data:
        find_pairs(directory, scale=config.scale, use_degrade=config.use_degrade)
    model = build_model(config)
    scores = []
    for directory in config.data:
        callback = None if on_image is None else (lambda s, d=Path(directory).name: on_image(d, s))
        scores.append(evaluate_dataset(model, directory, scale=config.scale, use_degrade=config.use_degrade, model_name=config.model, on_image=callback))
    return scores
