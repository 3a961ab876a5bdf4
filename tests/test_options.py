"""The Serve and bulk options (pydantic dataclasses): defaults, unknown keys, one-line errors. In process, no Ray."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from srgan.core.images import ImageLimits
from srgan.distributed.bulk import BulkUpscaleConfig
from srgan.distributed.serving import ModelConfig, ServeOptions, check_options
from srgan.errors import UserError
from srgan.tracking.refs import DEFAULT_MODEL

SERVE_DEFAULTS = {
    "model": DEFAULT_MODEL, "tracking_uri": None, "refresh_interval_s": 30.0,
    "allowed_models": (), "max_models_per_replica": 3,
    "max_bytes": ImageLimits.max_bytes, "max_pixels": ImageLimits.max_pixels,
    "max_batch_size": 8, "batch_wait_timeout_s": 0.01, "batch_max_side": 256, "tile_size": 256, "device": "auto",
    "precision": "fp32", "runtime": "torch", "torch_threads": 0, "quality": 90,
    "num_replicas": 1, "min_replicas": None, "max_replicas": None, "target_ongoing_requests": 2.0,
    "max_ongoing_requests": 32, "num_cpus": 1.0, "num_gpus": 0.0,
    # per-request time and memory, overload (None: the device's default deadline and rate)
    "deadline_s": None, "rate_mpx_s": None, "memory_budget_mpx": 64.0, "max_queued_requests": 64, "retry_after_s": 2,
    "body_idle_timeout_s": 15.0, "body_timeout_s": 120.0,
}
BULK_DEFAULTS = {
    "model": DEFAULT_MODEL, "tracking_uri": None, "format": None, "quality": 90, "workers": 1, "gpu": False,
    "num_cpus": 1.0, "batch_size": 4, "tile_size": 256, "s3_endpoint": None, "limits": ImageLimits(), "runtime": "torch",
    "stall_timeout_s": 1800.0, "stall_retries": 2,
}


def test_defaults_are_unchanged():
    assert dataclasses.asdict(ServeOptions.from_args(None)) == SERVE_DEFAULTS == dataclasses.asdict(ServeOptions())
    assert dataclasses.asdict(ModelConfig.from_dict({})) == {"model": DEFAULT_MODEL, "tracking_uri": None, "refresh_interval_s": 30.0}
    bulk = BulkUpscaleConfig(input="in", output="out")
    assert dataclasses.asdict(bulk) == {"input": "in", "output": "out", **{k: dataclasses.asdict(v) if k == "limits" else v for k, v in BULK_DEFAULTS.items()}}
    assert type(bulk.limits) is ImageLimits and bulk.upscaler_options().max_batch == 4


def test_options_round_trip_and_stay_frozen():
    options = ServeOptions.from_args({"model": "/ckpt", "min_replicas": 1, "max_replicas": 3, "quality": 80})
    assert ServeOptions.from_args(dataclasses.asdict(options)) == options  # what run_server hands build_app
    assert pickle.loads(pickle.dumps(options)) == options  # Serve pickles it for the replicas
    assert dataclasses.replace(options, tracking_uri="sqlite:///x").tracking_uri == "sqlite:///x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.quality = 10  # type: ignore[misc]
    assert options.model_config == ModelConfig("/ckpt", None, 30.0)
    assert ModelConfig.from_dict(options.deployment_options()["user_config"]) == options.model_config


def test_yaml_numbers_are_accepted_and_bools_are_not_integers():
    # YAML 1.1 reads 20e6 (no dot) as a string and 2.0e7 as a float.
    assert ServeOptions.from_args({"max_bytes": "20e6", "max_pixels": 1.6e7}).limits == ImageLimits(20_000_000, 16_000_000)
    assert BulkUpscaleConfig(input="i", output="o", num_cpus="5e-1", limits={"max_bytes": "1e6"}).limits.max_bytes == 1_000_000
    with pytest.raises(ValueError, match="max_bytes must be an integer, got True"):
        ServeOptions.from_args({"max_bytes": True})
    with pytest.raises(UserError, match="--gpu must be true or false, got 'yes'"):
        BulkUpscaleConfig(input="i", output="o", gpu="yes")


def test_unknown_keys_are_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown args key replicas; valid args keys: .*num_replicas"):
        ServeOptions.from_args({"replicas": 2})
    with pytest.raises(ValueError, match=r"unknown user_config key modle; valid user_config keys: model, refresh_interval_s, tracking_uri$"):
        ModelConfig.from_dict({"modle": "x"})
    with pytest.raises(UserError, match=r"unknown key frmat; valid keys: .*format"):
        BulkUpscaleConfig(input="i", output="o", frmat="png")
    with pytest.raises(UserError, match=r"unknown key limits.max_bits; valid keys: max_bytes, max_pixels$"):
        BulkUpscaleConfig(input="i", output="o", limits={"max_bits": 1})


@pytest.mark.parametrize("args,match", [
    ({"max_bytes": 0}, "max_bytes must be a positive integer, got 0"),
    ({"max_batch_size": 1.5}, "max_batch_size must be an integer, got 1.5"),
    ({"quality": 101}, "quality must be <= 100, got 101"),
    ({"target_ongoing_requests": 0}, "target_ongoing_requests must be > 0, got 0"),
    ({"num_gpus": -1}, "num_gpus must be >= 0, got -1"),
    ({"batch_wait_timeout_s": "soon"}, "batch_wait_timeout_s must be a number, got 'soon'"),
    ({"model": ""}, "model must be a checkpoint directory/URI or models:/NAME@ALIAS, got ''"),
    ({"refresh_interval_s": -1}, "refresh_interval_s must be >= 0, got -1"),
    ({"precision": "fp8"}, "precision must be fp32 or bf16, got 'fp8'"),  # the core's own check
    ({"tile_size": 8}, "tile_size must be >= "),
    ({"num_replicas": 2, "max_replicas": 4}, "not both"),
    ({"min_replicas": 3, "max_replicas": 2}, "min_replicas <= max_replicas"),
])
def test_bad_serve_args_are_one_line_value_errors(args, match):
    with pytest.raises(ValueError, match=match) as err:
        ServeOptions.from_args(args)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=match):  # what pipelines/serve.py calls
        check_options(args)


def test_bad_user_config_is_a_one_line_value_error():
    with pytest.raises(ValueError, match="refresh_interval_s must be >= 0, got -2") as err:
        ModelConfig.from_dict({"refresh_interval_s": -2})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kwargs,match", [
    ({"format": "gif"}, "--format must be png, jpeg or webp, got 'gif'"),
    ({"quality": 0}, "--quality must be >= 1, got 0"),
    ({"workers": 0}, "--workers must be a positive integer, got 0"),
    ({"batch_size": -1}, "--batch-size must be a positive integer, got -1"),
    ({"num_cpus": 0}, "--num-cpus must be > 0, got 0"),
    ({"stall_timeout_s": 0}, "--stall-timeout-s must be > 0, got 0"),
    ({"stall_retries": -1}, "--stall-retries must be >= 0, got -1"),
    ({"tile_size": 8}, "tile_size must be >= "),  # the core's own check
    ({"input": None}, "--input must be a string, got None"),
])
def test_bad_bulk_config_is_a_one_line_user_error(kwargs, match):
    with pytest.raises(UserError, match=match) as err:
        BulkUpscaleConfig(**{"input": "in", "output": "out", **kwargs})
    assert "\n" not in str(err.value)


def test_bulk_needs_input_and_output():
    with pytest.raises(UserError, match="--output is required"):
        BulkUpscaleConfig(input="in")
    assert BulkUpscaleConfig(input="in", output="out", format="jpeg", quality=100, gpu=True).upscaler_options().device == "cuda"
