"""One typed configuration for a training run: dataclasses, one YAML per experiment, CLI overrides.

Resolution order (later wins): dataclass defaults < YAML file < named CLI flags < ``--set key=value``.
Nothing is mutated: each layer builds a new nested dict, and :func:`config_from_dict` validates the
result once, up front, raising :class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from srgan.errors import ConfigError
from srgan.core.engine import OptimConfig, StepConfig
from srgan.core.losses import LossConfig
from srgan.core.models import DiscriminatorConfig, GeneratorConfig

__all__ = [
    "ConfigError",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "RunSettings",
    "Config",
    "config_from_dict",
    "load_config",
    "apply_overrides",
    "flatten",
    "PHASES",
    "REGISTERED_NAMES",
]

PHASES = ("srresnet", "srgan")  # pixel-MSE SRResNet, then perceptual + adversarial SRGAN


@dataclass(frozen=True)
class DataConfig:
    train: str = ""  # URI of training images or Parquet shards; "" = the built-in demo set
    val: str = ""  # URI of a validation set (HR/ [+ LR_bicubic/X<scale>/]); "" = the demo's held-out split
    crop_size: int = 96  # HR crop side (the paper: 96)
    crops_per_image: int = 1  # >1 amortises decoding; crops of one image are spread by a shuffle buffer
    val_max_images: int = 0  # 0 = all validation images
    s3_endpoint: str | None = None  # overrides AWS_ENDPOINT_URL for every s3:// URI

    def validate(self, scale: int) -> None:
        if self.crop_size < 16 or self.crop_size % scale:
            raise ConfigError(f"data.crop_size must be >= 16 and a multiple of the scale ({scale}), got {self.crop_size}")
        if self.crops_per_image < 1:
            raise ConfigError(f"data.crops_per_image must be >= 1, got {self.crops_per_image}")
        for name in ("train", "val"):
            uri = getattr(self, name)
            if uri and "://" in uri and not uri.startswith(("s3://", "file://")):
                raise ConfigError(f"data.{name}: unsupported URI {uri!r}; use a local path, file:// or s3://")


@dataclass(frozen=True)
class TrainConfig:
    phase: str = "srresnet"  # srresnet (pixel MSE) or srgan (VGG content + adversarial; needs init_from)
    init_from: str = ""  # generator to start from: checkpoint dir/URI or models:/NAME@ALIAS ("" = fresh)
    steps: int = 1_000_000  # optimiser steps (the paper: 1e6 for SRResNet)
    batch_size: int = 16  # GLOBAL batch: split evenly over the workers
    log_every: int = 50
    val_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3  # best K by validation PSNR
    bf16: bool = False  # bf16 autocast for the forward pass (meant for CUDA; also runs on CPU)
    channels_last: bool = False
    ema_decay: float = 0.0  # 0 = no EMA; e.g. 0.999 keeps an EMA of net_g used for validation and export
    time_limit_min: float = 0.0  # 0 = none; else stop (validate, checkpoint) at the first log step past it
    seed: int = 0

    def validate(self) -> None:
        if self.phase not in PHASES:
            raise ConfigError(f"train.phase must be one of {', '.join(PHASES)}, got {self.phase!r}")
        if self.steps < 1:
            raise ConfigError(f"train.steps must be a positive integer, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be >= 1, got {self.batch_size}")
        for name in ("log_every", "val_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.time_limit_min < 0:
            raise ConfigError(f"train.time_limit_min must be >= 0, got {self.time_limit_min}")
        if self.phase == "srgan" and not self.init_from:
            raise ConfigError(
                "--phase srgan needs --init-from: an SRResNet checkpoint directory/URI or a registered model "
                "(e.g. models:/srgan-generator@champion)"
            )


@dataclass(frozen=True)
class RunSettings:
    name: str = "srresnet-demo"  # the same name + storage resumes the run
    storage: str = "runs"  # Ray Train storage: a local directory or s3://bucket/prefix
    workers: int = 1  # Ray Train workers (one per GPU with --gpu)
    gpu: bool = False
    cpus_per_worker: float = 0.0  # 0 = automatic (fractional on small CPU machines so Ray Data can run)
    max_failures: int = 3  # worker failures Ray Train recovers from (restart from the last checkpoint)
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    experiment: str = "srgan"
    register_as: str = ""  # "" = the phase's own name: srgan-generator (srresnet), srgan-generator-gan (srgan)

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"run.name must be a non-empty name without '/', got {self.name!r}")
        if self.workers < 1:
            raise ConfigError(f"run.workers must be >= 1, got {self.workers}")
        if self.cpus_per_worker < 0 or self.max_failures < 0:
            raise ConfigError("run.cpus_per_worker and run.max_failures must be >= 0")
        if "://" in self.storage and not self.storage.startswith(("s3://", "file://")):
            raise ConfigError(f"run.storage: unsupported URI {self.storage!r}; use a local directory or s3://")


@dataclass(frozen=True)
class Config:
    model: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)  # the srgan phase only
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunSettings = field(default_factory=RunSettings)

    def validate(self) -> Config:
        self.data.validate(self.model.scale)
        self.optim.validate()
        self.train.validate()
        self.run.validate()
        if self.train.batch_size % self.run.workers:
            raise ConfigError(f"train.batch_size ({self.train.batch_size}) must be divisible by run.workers ({self.run.workers})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def step(self) -> StepConfig:
        """What one training step of the core engine needs from this config."""
        return StepConfig(scale=self.model.scale, loss=self.loss, bf16=self.train.bf16, channels_last=self.train.channels_last)

    @property
    def registered_name(self) -> str:
        """The MLflow registered model this run's best generator is added to."""
        return self.run.register_as or REGISTERED_NAMES[self.train.phase]


# Each phase registers under its own name, so an SRGAN run (selected by a perceptual measure) never
# moves the champion alias of the PSNR-selected SRResNet models.
REGISTERED_NAMES = {"srresnet": "srgan-generator", "srgan": "srgan-generator-gan"}


_SECTIONS: dict[str, type] = {f.name: f.default_factory().__class__ for f in dataclasses.fields(Config)}  # type: ignore[misc]


def _build_section(name: str, cls: type, values: Any) -> Any:
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ConfigError(f"config section {name!r} must be a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown key {name}.{unknown[0]}; valid keys: {', '.join(sorted(known))}")
    typed = {}
    for key, value in values.items():
        typed[key] = _coerce(f"{name}.{key}", known[key].type, value)
    try:
        return cls(**typed)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{name}: {exc}") from None


def _coerce(key: str, annotation: Any, value: Any) -> Any:
    """Check/convert a scalar against its field's annotation (a string, because of ``from __future__``)."""
    ann = str(annotation)
    if value is None:
        if "None" in ann:
            return None
        raise ConfigError(f"{key} must not be empty")
    if isinstance(value, str) and ann.split(" ")[0] in ("int", "float"):
        try:  # YAML 1.1 reads "5e-4" (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if ann.startswith("bool"):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if ann.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # YAML reads 1e6 as a float
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if ann.startswith("float"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if ann.startswith("str"):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a nested dict (as read from YAML)."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections ({', '.join(_SECTIONS)})")
    unknown = sorted(set(values) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section {unknown[0]!r}; valid sections: {', '.join(_SECTIONS)}")
    sections = {name: _build_section(name, cls, values.get(name)) for name, cls in _SECTIONS.items()}
    return Config(**sections).validate()


def load_config(path: str | Path | None) -> dict[str, Any]:
    """Read a YAML experiment file into a nested dict (``{}`` for no file)."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        values = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{p} must hold a mapping of sections, got {type(values).__name__}")
    return values


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A new nested dict with dotted ``section.key`` overrides applied (the input is left untouched)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for dotted, value in overrides.items():
        if dotted.count(".") != 1:
            raise ConfigError(f"override {dotted!r} must look like section.key (e.g. train.steps)")
        section, key = dotted.split(".")
        if section not in _SECTIONS:
            raise ConfigError(f"unknown config section {section!r} in override {dotted!r}")
        out.setdefault(section, {})
        out[section] = {**(out[section] or {}), key: value}
    return out


def parse_set_option(item: str) -> tuple[str, Any]:
    """``key=value`` from ``--set``; the value is parsed as YAML (numbers, booleans, strings)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def flatten(config: Config) -> dict[str, str]:
    """``{"section.key": "value"}`` for logging as MLflow params."""
    return {f"{section}.{key}": str(value) for section, fields in config.to_dict().items() for key, value in fields.items()}


# Named CLI flags of pipelines/train.py -> the config field each one sets.
FLAG_FIELDS = {
    "phase": "train.phase",
    "init_from": "train.init_from",
    "vgg_weights": "loss.vgg_weights",
    "max_failures": "run.max_failures",
    "data": "data.train",
    "val_data": "data.val",
    "steps": "train.steps",
    "batch_size": "train.batch_size",
    "workers": "run.workers",
    "gpu": "run.gpu",
    "name": "run.name",
    "storage": "run.storage",
    "tracking_uri": "run.tracking_uri",
    "experiment": "run.experiment",
    "register_as": "run.register_as",
    "s3_endpoint": "data.s3_endpoint",
}


def build_config(config_path: str | Path | None, flags: dict[str, Any], set_items: list[str]) -> Config:
    """defaults < YAML < named flags (those not None) < ``--set key=value``; validated once."""
    values = load_config(config_path)
    flag_overrides = {FLAG_FIELDS[k]: v for k, v in flags.items() if v is not None and k in FLAG_FIELDS}
    values = apply_overrides(values, flag_overrides)
    values = apply_overrides(values, dict(parse_set_option(item) for item in set_items))
    return config_from_dict(values)
