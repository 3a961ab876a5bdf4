"""One typed configuration for a training run: pydantic dataclasses, one YAML per experiment, CLI overrides.

Resolution order (later wins): dataclass defaults < YAML file < named CLI flags < ``--set key=value``.
Nothing is mutated: each layer builds a new nested dict, and :func:`config_from_dict` validates the
result once, up front, raising :class:`ConfigError` with a one-line message.

The pydantic helpers here (:data:`OPTIONS`, :data:`Int`, :data:`Float`, :func:`must`, :data:`CORE`,
:func:`error_line`) are also what the Serve and bulk options in ``srgan.distributed`` are built with. The
core (``srgan.core``) stays plain dataclasses: :data:`CORE` checks their fields here, then builds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from collections.abc import Callable
from dataclasses import asdict, field
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, Strict, StrictBool, ValidationError, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError, core_schema

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

# ------------------------------------------------------------------------------------------ pydantic helpers

# Unknown keys are refused; a number is a fine string (run.name: 2024), a string is never a number or a bool.
OPTIONS = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


def _yaml_number(value: Any) -> Any:
    """YAML 1.1 reads 5e-4 and 1e6 (no dot) as strings and 1.0e6 as a float: all fine for a number field."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    return int(value) if isinstance(value, float) and value.is_integer() else value


Int = Annotated[int, Strict(), BeforeValidator(_yaml_number)]  # refuses booleans and 1.5
Float = Annotated[float, Strict(), BeforeValidator(_yaml_number)]  # refuses booleans


def must(be: str, ok: Callable[[Any], Any]) -> AfterValidator:
    """A field check that fails as ``<key> must be <be>, got <value>``."""

    def check(value: Any) -> Any:
        if not ok(value):
            raise PydanticCustomError("must", "{be}", {"be": be})
        return value

    return AfterValidator(check)


PositiveInt = Annotated[Int, must("a positive integer", lambda n: n >= 1)]
NonNegativeInt = Annotated[Int, Field(ge=0)]
NonNegativeFloat = Annotated[Float, Field(ge=0)]


class _CoreFields:
    """``Annotated[SomeCoreDataclass, CORE]``: the given fields checked like ours (unknown keys refused, the
    same number and bool rules), then ``SomeCoreDataclass(**given)``: its own defaults and ``ValueError``
    checks apply (those surface as ``<section>: <message>``). The core itself never imports pydantic."""

    _TYPES = {int: Int, float: Float, bool: StrictBool}

    def __get_pydantic_core_schema__(self, cls: type, handler: pydantic.GetCoreSchemaHandler) -> core_schema.CoreSchema:
        hints = typing.get_type_hints(cls)
        fields = {f.name: (self._TYPES.get(hints[f.name], hints[f.name]), None) for f in dataclasses.fields(cls)}
        mirror = pydantic.create_model(cls.__name__, __config__=ConfigDict(**OPTIONS, from_attributes=True), **fields)
        build = lambda given: cls(**{name: getattr(given, name) for name in given.model_fields_set})  # noqa: E731
        return core_schema.no_info_after_validator_function(build, handler.generate_schema(mirror))


CORE = _CoreFields()

_MUST_BE = {  # pydantic's error type -> what the value must be
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false", "string_type": "a string",
    "greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}", "less_than_equal": "<= {le}",
    "literal_error": "one of {expected}", "must": "{be}",
}


def _keys(cls: type, path: tuple) -> list[str]:
    """The field names of the (nested) dataclass at ``path`` below ``cls``."""
    for name in path:
        cls = next(type(f.default_factory()) for f in dataclasses.fields(cls) if f.name == name)  # type: ignore[misc]
    return sorted(f.name for f in dataclasses.fields(cls))


def error_line(exc: ValidationError, cls: type, *, name: Callable[[tuple], str] = lambda loc: ".".join(map(str, loc)),
               unknown: str = "key") -> str:
    """pydantic's first error as one line that names the key (``name(loc)``) and says how to fix it."""
    err = exc.errors(include_url=False)[0]
    loc, kind, msg = err["loc"], err["type"], err["msg"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"unknown {unknown} {'.'.join(map(str, loc))}; valid {unknown}s: {', '.join(_keys(cls, loc[:-1]))}"
    where = name(loc)
    if kind in ("missing", "missing_argument"):
        return f"{where} is required"
    if kind in _MUST_BE:
        return f"{where} must be {_MUST_BE[kind].format(**err.get('ctx', {}))}, got {err['input']!r}"
    if msg.startswith("Input should be "):
        return f"{where} must be {msg.removeprefix('Input should be ')}, got {err['input']!r}"
    if kind == "value_error":  # a check in code (ours or a core dataclass's): its message says what is wrong
        msg = " ".join(str(err["ctx"]["error"]).split())
    return f"{where}: {msg}" if where else msg


def one_line(error: type[Exception], **how: Any) -> Any:
    """``_one_line = one_line(SomeUserError)`` in a pydantic dataclass, after its other validators: every error
    its construction finds is raised as ``error(error_line(...))``. (An ``error`` that is no ``ValueError``
    passes through pydantic as it is, so checks may raise it directly with their own message.)"""

    def wrap(cls: type, values: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(values)
        except ValidationError as exc:
            raise error(error_line(exc, cls, **how)) from None

    return model_validator(mode="wrap")(classmethod(wrap))


def _supported_uri(fix: str) -> AfterValidator:
    def check(uri: str) -> str:
        if "://" in uri and not uri.startswith(("s3://", "file://")):
            raise ValueError(f"unsupported URI {uri!r}; {fix}")
        return uri

    return AfterValidator(check)


# ------------------------------------------------------------------------------------------ the config

Phase = Literal["srresnet", "srgan"]  # pixel-MSE SRResNet, then perceptual + adversarial SRGAN
PHASES = typing.get_args(Phase)
DataURI = Annotated[str, _supported_uri("use a local path, file:// or s3://")]


@dataclass(frozen=True, config=OPTIONS)
class DataConfig:
    train: DataURI = ""  # URI of training images or Parquet shards; "" = the built-in demo set
    val: DataURI = ""  # URI of a validation set (HR/ [+ LR_bicubic/X<scale>/]); "" = the demo's held-out split
    crop_size: Int = 96  # HR crop side (the paper: 96); >= 16 and a multiple of model.scale
    crops_per_image: PositiveInt = 1  # >1 amortises decoding; crops of one image are spread by a shuffle buffer
    val_max_images: Int = 0  # 0 = all validation images
    s3_endpoint: str | None = None  # overrides AWS_ENDPOINT_URL for every s3:// URI
    # Where encoded images are decoded: cpu (Ray Data tasks) or cuda (Ray Data ships bytes; each Train
    # worker decodes its JPEG batches with nvjpeg and crops on the GPU; other formats fall back to its
    # CPU). raw-uint8 shards are never decoded: Ray Data only cuts their crops.
    decode_device: Literal["cpu", "cuda"] = "cpu"
    prefetch_batches: NonNegativeInt = 4  # batches Ray Data's iterator prepares (and copies to the device) ahead of the loop


@dataclass(frozen=True, config=OPTIONS)
class TrainConfig:
    phase: Phase = "srresnet"  # srresnet (pixel MSE) or srgan (VGG content + adversarial; needs init_from)
    init_from: str = ""  # generator to start from: checkpoint dir/URI or models:/NAME@ALIAS ("" = fresh)
    steps: PositiveInt = 1_000_000  # optimiser steps (the paper: 1e6 for SRResNet)
    batch_size: PositiveInt = 16  # GLOBAL batch: split evenly over the workers
    log_every: PositiveInt = 50
    val_every: PositiveInt = 1000
    checkpoint_every: PositiveInt = 1000
    keep_checkpoints: PositiveInt = 3  # best K by validation PSNR
    bf16: StrictBool = False  # bf16 autocast for the forward pass (meant for CUDA; also runs on CPU)
    channels_last: StrictBool = False
    compile: StrictBool = False  # torch.compile of G (and D in the srgan phase); the first steps pay for compiling
    ema_decay: Annotated[Float, Field(ge=0, lt=1)] = 0.0  # 0 = no EMA; e.g. 0.999 keeps an EMA of net_g used for validation and export
    time_limit_min: NonNegativeFloat = 0.0  # 0 = none; else stop (validate, checkpoint) at the first log step past it
    seed: Int = 0

    @model_validator(mode="after")
    def _srgan_needs_a_generator(self) -> TrainConfig:
        if self.phase == "srgan" and not self.init_from:
            raise ConfigError(
                "--phase srgan needs --init-from: an SRResNet checkpoint directory/URI or a registered model "
                "(e.g. models:/srgan-generator@champion)"
            )
        return self


@dataclass(frozen=True, config=OPTIONS)
class RunSettings:
    name: Annotated[str, must("a non-empty name without '/'", lambda n: n and "/" not in n)] = "srresnet-demo"  # the same name + storage resumes the run
    storage: Annotated[str, _supported_uri("use a local directory or s3://")] = "runs"  # Ray Train storage: a local directory or s3://bucket/prefix
    workers: PositiveInt = 1  # Ray Train workers (one per GPU with --gpu)
    gpu: StrictBool = False
    cpus_per_worker: NonNegativeFloat = 0.0  # 0 = automatic (fractional on small CPU machines so Ray Data can run)
    torch_threads: NonNegativeInt = 0  # torch intra-op threads per Train worker; 0 = its whole CPUs, at least 1
    max_failures: NonNegativeInt = 3  # worker failures Ray Train recovers from (restart from the last checkpoint)
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    experiment: str = "srgan"
    register_as: str = ""  # "" = the phase's own name: srgan-generator (srresnet), srgan-generator-gan (srgan)


@dataclass(frozen=True, config=OPTIONS)
class Config:
    """Validated whenever it is built, ``dataclasses.replace`` included; every error is a one-line :class:`ConfigError`."""

    model: Annotated[GeneratorConfig, CORE] = field(default_factory=GeneratorConfig)
    discriminator: Annotated[DiscriminatorConfig, CORE] = field(default_factory=DiscriminatorConfig)  # the srgan phase only
    loss: Annotated[LossConfig, CORE] = field(default_factory=LossConfig)
    optim: Annotated[OptimConfig, CORE] = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunSettings = field(default_factory=RunSettings)

    @model_validator(mode="after")
    def _across_sections(self) -> Config:
        self.optim.validate()  # the core's own checks (ConfigError)
        scale, crop = self.model.scale, self.data.crop_size
        if crop < 16 or crop % scale:
            raise ConfigError(f"data.crop_size must be >= 16 and a multiple of the scale ({scale}), got {crop}")
        if self.data.decode_device == "cuda" and not self.run.gpu:
            raise ConfigError("data.decode_device: cuda needs GPU workers (--gpu / run.gpu: true)")
        if self.train.batch_size % self.run.workers:
            raise ConfigError(f"train.batch_size ({self.train.batch_size}) must be divisible by run.workers ({self.run.workers})")
        return self

    _one_line = one_line(ConfigError)  # after the validator above, so that it wraps it

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


_SECTIONS = [f.name for f in dataclasses.fields(Config)]


def config_from_dict(values: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a nested dict (as read from YAML; an empty section is the defaults)."""
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of sections ({', '.join(_SECTIONS)})")
    for name, section in values.items():
        if name not in _SECTIONS:
            raise ConfigError(f"unknown config section {name!r}; valid sections: {', '.join(_SECTIONS)}")
        if not isinstance(section, (dict, type(None))):
            raise ConfigError(f"config section {name!r} must be a mapping, got {type(section).__name__}")
    return Config(**{name: section for name, section in values.items() if section is not None})


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
