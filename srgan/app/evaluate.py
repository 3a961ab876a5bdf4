"""What ``pipelines/evaluate.py`` runs: a model reference (or ``bicubic``) on benchmark directories,
scored with the core's protocol (:mod:`srgan.core.evaluation`) and, when asked for, LPIPS
(:mod:`srgan.io.perceptual`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from srgan.core.evaluation import DatasetScore, ImageScore, UpscaleFn, bicubic_model, evaluate_dataset, find_pairs, upscaler_model
from srgan.core.inference import UpscalerOptions, pick_device
from srgan.errors import UserError
from srgan.io.perceptual import LPIPS_BACKBONES, LPIPSMetric, LPIPSUnavailableError, load_lpips
from srgan.tracking.refs import load_upscaler

__all__ = ["METRICS", "EvalConfig", "DatasetReport", "EvalReport", "build_model", "run_evaluation", "format_table", "report_json"]

METRICS = ("psnr", "ssim", "lpips")
_COLUMNS = {"psnr": "PSNR-Y (dB)", "ssim": "SSIM-Y", "lpips": "LPIPS"}


@dataclass(frozen=True)
class EvalConfig:
    """What ``pipelines/evaluate.py`` runs."""

    model: str  # "bicubic" or a checkpoint directory / URI
    data: tuple[str, ...]
    scale: int = 4
    use_degrade: bool = False
    device: str = "auto"
    tile_size: int = 256
    runtime: str = "torch"  # or "onnxruntime" (srgan.tracking.refs.load_upscaler)
    tracking_uri: str | None = None  # for models:/ URIs; default MLFLOW_TRACKING_URI or sqlite:///mlflow.db
    metrics: tuple[str, ...] = ("psnr", "ssim")  # what is reported, in this order (PSNR/SSIM are always cheap)
    lpips_net: str = "alex"  # LPIPS's backbone: alex (its authors' choice for a metric) or vgg

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise UserError(f"--scale must be a positive integer, got {self.scale}")
        if not self.data:
            raise UserError("--data needs at least one dataset directory")
        if self.tile_size < 32:
            raise UserError(f"--tile-size must be >= 32, got {self.tile_size}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics or len(set(self.metrics)) != len(self.metrics):
            raise UserError(f"--metrics takes a comma-separated subset of {','.join(METRICS)}, got {','.join(self.metrics) or 'nothing'}")
        if self.lpips_net not in LPIPS_BACKBONES:
            raise UserError(f"--lpips-net must be one of {', '.join(sorted(LPIPS_BACKBONES))}, got {self.lpips_net}")


@dataclass
class DatasetReport:
    """One dataset: the core's PSNR/SSIM scores and, when measured, LPIPS per image (same order)."""

    score: DatasetScore
    lpips: list[float] | None = None  # None: not measured (not asked for, or unavailable)

    @property
    def mean_lpips(self) -> float | None:
        return None if not self.lpips else sum(self.lpips) / len(self.lpips)


@dataclass
class EvalReport:
    """Every dataset's scores, the metrics asked for, and why LPIPS is missing if it was asked for."""

    metrics: tuple[str, ...]
    datasets: list[DatasetReport] = field(default_factory=list)
    lpips_unavailable: str | None = None  # one line: why, and how to make it available


def build_model(config: EvalConfig) -> UpscaleFn:
    """``bicubic`` or an Upscaler over a checkpoint, checked against ``config.scale``."""
    if config.model == "bicubic":
        return bicubic_model(config.scale)
    upscaler = load_upscaler(config.model, runtime=config.runtime, options=UpscalerOptions(device=config.device, tile_size=config.tile_size),
                             tracking_uri=config.tracking_uri)
    if upscaler.scale != config.scale:
        raise UserError(f"model {config.model} is x{upscaler.scale} but --scale is {config.scale}")
    return upscaler_model(upscaler)


def _load_lpips(config: EvalConfig) -> tuple[LPIPSMetric | None, str | None]:
    """LPIPS if asked for and available; else why not. Missing weights are a note, not a failure:
    the other metrics are still worth reporting."""
    if "lpips" not in config.metrics:
        return None, None
    try:
        return load_lpips(net=config.lpips_net, device=pick_device(config.device)), None
    except LPIPSUnavailableError as exc:
        return None, " ".join(str(exc).split())


def run_evaluation(config: EvalConfig, *, on_image: Callable[[str, ImageScore], None] | None = None) -> EvalReport:
    """Evaluate ``config.model`` on every dataset; layouts are checked before any model is loaded."""
    for directory in config.data:
        find_pairs(directory, scale=config.scale, use_degrade=config.use_degrade)
    model = build_model(config)
    lpips_metric, why_not = _load_lpips(config)
    report = EvalReport(metrics=config.metrics, lpips_unavailable=why_not)
    for directory in config.data:
        name = Path(directory).name
        callback = None if on_image is None else (lambda s, d=name: on_image(d, s))
        lpips_values: list[float] | None = None if lpips_metric is None else []
        on_pair = None if lpips_metric is None else (lambda sr, gt, out=lpips_values: out.append(float(lpips_metric(sr, gt, crop_border=config.scale)[0])))
        score = evaluate_dataset(model, directory, scale=config.scale, use_degrade=config.use_degrade, model_name=config.model,
                                 on_image=callback, on_pair=on_pair)
        report.datasets.append(DatasetReport(score=score, lpips=lpips_values))
    return report


def _values(metrics: tuple[str, ...], psnr_y: float, ssim_y: float, lpips: float | None) -> dict[str, float | None]:
    """The asked-for metrics of one row, by name; LPIPS is None when it could not be measured."""
    every = {"psnr": psnr_y, "ssim": ssim_y, "lpips": lpips}
    return {m: every[m] for m in metrics}


_JSON_KEYS = {"psnr": ("psnr_y", 4), "ssim": ("ssim_y", 6), "lpips": ("lpips", 6)}


def _json_values(values: dict[str, float | None]) -> dict[str, float | None]:
    return {_JSON_KEYS[m][0]: None if v is None else round(v, _JSON_KEYS[m][1]) for m, v in values.items()}


def report_json(report: EvalReport, *, per_image: bool = False) -> list[dict]:
    """One JSON object per dataset: ``dataset``, ``model``, each asked-for metric (``psnr_y``, ``ssim_y``,
    ``lpips``: null when unavailable), ``images`` (the count) and, with ``per_image``, ``per_image``."""
    rows = []
    for d in report.datasets:
        s = d.score
        row = {"dataset": s.dataset, "model": s.model, **_json_values(_values(report.metrics, s.psnr_y, s.ssim_y, d.mean_lpips)), "images": len(s.images)}
        if per_image:
            lpips = d.lpips or [None] * len(s.images)
            row["per_image"] = [{"name": i.name, **_json_values(_values(report.metrics, i.psnr_y, i.ssim_y, v))} for i, v in zip(s.images, lpips)]
        rows.append(row)
    return rows


_CELL = {"psnr": "{:.2f}", "ssim": "{:.4f}", "lpips": "{:.4f}"}


def _cells(values: dict[str, float | None]) -> tuple[str, ...]:
    return tuple("n/a" if v is None else _CELL[m].format(v) for m, v in values.items())


def format_table(report: EvalReport, *, per_image: bool = False) -> str:
    """A plain-text table: one row per dataset (and per image with ``per_image``); ``n/a`` where
    LPIPS could not be measured."""
    rows = [("dataset", "model", "images", *(_COLUMNS[m] for m in report.metrics))]
    for d in report.datasets:
        s = d.score
        rows.append((s.dataset, s.model, str(len(s.images)), *_cells(_values(report.metrics, s.psnr_y, s.ssim_y, d.mean_lpips))))
        if per_image:
            lpips = d.lpips or [None] * len(s.images)
            rows += [(f"  {i.name}", "", "", *_cells(_values(report.metrics, i.psnr_y, i.ssim_y, v))) for i, v in zip(s.images, lpips)]
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[c]) for c, cell in enumerate(r)).rstrip() for r in rows)
