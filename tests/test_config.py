"""The typed config: YAML + flags + --set, validated up front with one-line errors."""

from __future__ import annotations

import dataclasses

import pytest

from srgan.config import Config, ConfigError, apply_overrides, build_config, config_from_dict, flatten


def test_defaults_are_the_paper():
    cfg = config_from_dict({})
    assert (cfg.model.num_blocks, cfg.model.num_features, cfg.model.scale, cfg.model.bicubic_skip) == (16, 64, 4, False)
    assert (cfg.data.crop_size, cfg.train.batch_size, cfg.optim.lr, cfg.optim.beta1) == (96, 16, 1e-4, 0.9)
    assert cfg.train.steps == 1_000_000


def test_shipped_configs_load(repo_root):
    paths = sorted((repo_root / "configs").glob("*.yaml"))
    assert len(paths) >= 5
    for path in paths:
        header = path.read_text().split("\n\n")[0]
        assert path.read_text().startswith("#"), "each config starts with its launch command"
        assert "pipelines/train.py" in header
        flags = {"init_from": "models:/srgan-generator@champion"} if "phase: srgan" in path.read_text() else {}
        assert "--init-from" in header or not flags
        assert isinstance(build_config(path, flags, []), Config)
    paper = build_config(repo_root / "configs" / "paper_srresnet_x4.yaml", {}, [])
    assert paper.model.num_blocks == 16 and paper.train.steps == 1_000_000 and not paper.model.bicubic_skip


def test_layering_yaml_then_flags_then_set(tmp_path):
    yaml_file = tmp_path / "exp.yaml"
    yaml_file.write_text("train:\n  steps: 100\n  batch_size: 8\noptim:\n  lr: 1.0e-3\n")
    cfg = build_config(yaml_file, {"steps": 50, "workers": 2, "gpu": None}, ["optim.lr=5e-4", "model.num_blocks=4"])
    assert cfg.train.steps == 50  # the flag beats the YAML
    assert cfg.train.batch_size == 8  # the YAML beats the default
    assert cfg.optim.lr == 5e-4 and cfg.model.num_blocks == 4  # --set beats everything
    assert cfg.run.workers == 2 and cfg.run.gpu is False


def test_overrides_do_not_mutate():
    base = {"train": {"steps": 1}}
    out = apply_overrides(base, {"train.steps": 2})
    assert base == {"train": {"steps": 1}} and out == {"train": {"steps": 2}}


@pytest.mark.parametrize(
    "values,match",
    [
        ({"train": {"steps": -1}}, "train.steps must be a positive integer"),
        ({"train": {"phase": "gan"}}, "train.phase must be one of"),
        ({"train": {"stepz": 3}}, "unknown key train.stepz"),
        ({"trian": {}}, "unknown config section 'trian'"),
        ({"model": {"scale": 3}}, "scale must be 2, 4 or 8"),
        ({"data": {"crop_size": 30}}, "multiple of the scale"),
        ({"data": {"train": "ftp://host/x"}}, "unsupported URI"),
        ({"train": {"batch_size": 10}, "run": {"workers": 4}}, "divisible by run.workers"),
        ({"train": {"steps": "many"}}, "must be an integer"),
        ({"optim": {"lr": 0}}, "optim.lr must be > 0"),
        ({"train": {"time_limit_min": -1}}, "time_limit_min must be >= 0"),
        ({"loss": {"content_layer": "relu9_9"}}, "content_layer"),
        ({"model": {"scalez": 4}}, "unknown key model.scalez; valid keys: bicubic_skip, num_blocks, num_features, scale"),
        ({"train": {"bf16": "yes"}}, "train.bf16 must be true or false, got 'yes'"),
        ({"model": {"bicubic_skip": 1}}, "model.bicubic_skip must be true or false, got 1"),
        ({"train": {"steps": True}}, "train.steps must be an integer, got True"),
        ({"train": {"steps": 1.5}}, "train.steps must be an integer, got 1.5"),
        ({"optim": {"lr": "fast"}}, "optim.lr must be a number, got 'fast'"),
        ({"run": {"name": "a/b"}}, "run.name must be a non-empty name without '/'"),
        ({"run": {"max_failures": -1}}, "run.max_failures must be >= 0, got -1"),
        ({"train": {"ema_decay": 1}}, "train.ema_decay must be < 1, got 1"),
        ({"train": []}, "config section 'train' must be a mapping, got list"),
        ({"data": {"decode_device": "gpu"}}, "data.decode_device must be one of 'cpu' or 'cuda', got 'gpu'"),
        ({"data": {"decode_device": "cuda"}}, "data.decode_device: cuda needs GPU workers"),
        ({"data": {"prefetch_batches": -1}}, "data.prefetch_batches must be >= 0"),
        ({"train": {"compile": "yes"}}, "train.compile must be true or false, got 'yes'"),
        ({"run": {"torch_threads": 1.5}}, "run.torch_threads must be an integer, got 1.5"),
    ],
)
def test_bad_values_are_one_line_errors(values, match):
    with pytest.raises(ConfigError, match=match) as err:
        config_from_dict(values)
    assert "\n" not in str(err.value)


def test_missing_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(tmp_path / "nope.yaml", {}, [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(bad, {}, [])
    with pytest.raises(ConfigError, match="key=value"):
        build_config(None, {}, ["train.steps"])


def test_flatten_for_mlflow_params():
    flat = flatten(config_from_dict({}))
    assert flat["model.num_blocks"] == "16" and flat["loss.adversarial_weight"] == "0.001"
    assert all("." in k for k in flat)


def test_srgan_phase_needs_init_from_and_registers_under_its_own_name(repo_root):
    with pytest.raises(ConfigError, match="--phase srgan needs --init-from"):
        build_config(None, {"phase": "srgan"}, [])
    cfg = build_config(repo_root / "configs" / "paper_srgan_x4.yaml", {"init_from": "models:/srgan-generator@champion"}, [])
    assert cfg.train.phase == "srgan" and cfg.registered_name == "srgan-generator-gan"
    assert cfg.loss.content_layer == "relu5_4" and cfg.loss.adversarial_weight == 1e-3
    assert cfg.optim.lr == 1e-4 and cfg.optim.lr_decay_step == 100_000 and cfg.train.steps == 200_000
    assert cfg.discriminator.base_features == 64 and cfg.run.max_failures == 3
    assert build_config(None, {}, []).registered_name == "srgan-generator"
    assert build_config(None, {"register_as": "mine"}, []).registered_name == "mine"
    vgg22 = build_config(None, {"vgg_weights": "random"}, ["loss.content_layer=vgg22"])
    assert vgg22.loss.content_layer == "relu2_2" and vgg22.loss.vgg_weights == "random"
    with pytest.raises(ConfigError, match="discriminator"):
        build_config(None, {}, ["discriminator.base_features=0"])


def test_yaml_1_1_numbers_and_empty_sections(tmp_path):
    yaml_file = tmp_path / "exp.yaml"
    # PyYAML reads 1e6 and 5e-4 (no dot) as strings, 2.0e5 as a float, and an empty section as null.
    yaml_file.write_text("train:\n  steps: 1e6\n  val_every: 2.0e5\noptim:\n  lr: 5e-4\nrun:\n  name: 2024\ndata:\n")
    cfg = build_config(yaml_file, {}, ["run.gpu=yes", "train.log_every=1e2"])
    assert cfg.train.steps == 1_000_000 and type(cfg.train.steps) is int and cfg.train.val_every == 200_000
    assert cfg.optim.lr == 5e-4 and type(cfg.optim.lr) is float
    assert cfg.run.name == "2024" and cfg.run.gpu is True and cfg.train.log_every == 100 and cfg.data == config_from_dict({}).data


def test_config_is_frozen_and_replace_revalidates():
    cfg = config_from_dict({"loss": {"content_layer": "vgg22"}})
    assert type(cfg.model).__module__ == "srgan.core.models" and cfg.loss.content_layer == "relu2_2"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train = cfg.train  # type: ignore[misc]
    moved = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train="/abs/train"))
    assert moved.data.train == "/abs/train" and moved.model == cfg.model and config_from_dict(moved.to_dict()) == moved
    with pytest.raises(ConfigError, match="divisible by run.workers"):
        dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, workers=3))


def test_throughput_options_default_off_and_set_from_the_command_line():
    cfg = build_config(None, {}, [])
    assert (cfg.data.decode_device, cfg.data.prefetch_batches, cfg.train.compile, cfg.run.torch_threads) == ("cpu", 4, False, 0)
    cfg = build_config(None, {"gpu": True}, ["data.decode_device=cuda", "data.prefetch_batches=8", "train.compile=true", "run.torch_threads=2"])
    assert (cfg.data.decode_device, cfg.data.prefetch_batches, cfg.train.compile, cfg.run.torch_threads) == ("cuda", 8, True, 2)
