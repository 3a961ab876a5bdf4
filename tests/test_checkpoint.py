"""Generator checkpoints: safetensors + config, load without Ray, from a directory or s3://."""

from __future__ import annotations

import json

import pytest
import torch

from srgan.core.checkpoint import META_FILE, WEIGHTS_FILE, CheckpointError, load_generator, save_generator
from srgan.tracking.refs import load_generator_ref
from srgan.core.models import SRResNet


def _net():
    torch.manual_seed(1)
    return SRResNet(scale=2, num_blocks=2, num_features=8, bicubic_skip=True).eval()


def test_roundtrip_rebuilds_the_same_model(tmp_path):
    net = _net()
    path = save_generator(tmp_path / "ck", net, config={"lr": 1e-4}, metadata={"step": 7})
    assert sorted(p.name for p in path.iterdir()) == [META_FILE, WEIGHTS_FILE]
    loaded, info = load_generator(path)
    assert loaded.config == net.config  # scale, blocks, features and the skip come from the checkpoint
    assert info.config == {"lr": 1e-4} and info.metadata == {"step": 7}
    x = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_weights_are_safetensors_not_pickle(tmp_path):
    path = save_generator(tmp_path / "ck", _net())
    from safetensors import safe_open

    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
        assert "head.0.weight" in f.keys()
    meta = json.loads((path / META_FILE).read_text())
    assert meta["generator"] == {"scale": 2, "num_blocks": 2, "num_features": 8, "bicubic_skip": True}


def test_load_from_s3(tmp_path, s3_server, s3_bucket, monkeypatch):
    import tempfile

    import boto3

    from srgan.tracking.refs import fetch_model, resolve_model

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # every temporary directory the load makes lands here

    net = _net()
    path = save_generator(tmp_path / "ck", net)
    client = boto3.client("s3", endpoint_url=s3_server)
    for f in path.iterdir():
        client.upload_file(str(f), s3_bucket, f"models/run1/{f.name}")
    # The core reads local directories only; the tracking layer's resolver fetches remote ones.
    with pytest.raises(CheckpointError, match="is not a local directory"):
        load_generator(f"s3://{s3_bucket}/models/run1")
    loaded, info = load_generator_ref(f"s3://{s3_bucket}/models/run1")
    assert info.path == f"s3://{s3_bucket}/models/run1"
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert sorted(scratch.iterdir()) == []  # the download went once the weights were loaded
    # fetch_model alone hands the caller a download of its own, which stays until the caller removes it.
    kept = fetch_model(resolve_model(f"s3://{s3_bucket}/models/run1"))
    assert kept.parent.parent == scratch and sorted(p.name for p in kept.iterdir()) == [META_FILE, WEIGHTS_FILE]


def test_errors_are_one_line(tmp_path):
    cases = []
    with pytest.raises(CheckpointError, match="does not exist|not a directory") as e:
        load_generator(tmp_path / "missing")
    cases.append(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="expected checkpoint.json") as e:
        load_generator(tmp_path / "empty")
    cases.append(e)
    path = save_generator(tmp_path / "bad-json", _net())
    (path / META_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON") as e:
        load_generator(path)
    cases.append(e)
    path = save_generator(tmp_path / "mismatch", _net())
    meta = json.loads((path / META_FILE).read_text())
    meta["generator"]["num_blocks"] = 3
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match") as e:
        load_generator(path)
    cases.append(e)
    meta["format_version"] = 99
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unsupported checkpoint") as e:
        load_generator(path)
    cases.append(e)
    assert all("\n" not in str(c.value) for c in cases)
