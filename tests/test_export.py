"""ONNX export and the onnxruntime runtime: a real export (torch's dynamo exporter), real onnxruntime
sessions, parity with PyTorch on real images, and the CLI's checks and one-line errors."""

from __future__ import annotations

import json
import re
import shutil
import sys

import numpy as np
import pytest
import torch

from conftest import load_photo, randomise_bn_statistics
from srgan.core.checkpoint import save_generator
from srgan.core.degrade import bicubic_upscale, degrade
from srgan.core.inference import Upscaler, UpscalerOptions, weights_digest
from srgan.core.models import SRResNet
from srgan.errors import CheckpointError, ConfigError, UserError
from srgan.export import SIDECAR_FILE, ExportDependencyError, export_onnx, load_exported, parity, read_sidecar
from srgan.export.onnx_export import ExportableGenerator, require
from srgan.tracking.refs import load_upscaler

onnx = pytest.importorskip("onnx", reason='the export extra: pip install -e ".[export]"')


def _net(seed: int = 0, *, skip: bool = True) -> SRResNet:
    """A small x4 generator with non-trivial weights and BN statistics, with the demo's bicubic skip."""
    torch.manual_seed(seed)
    net = SRResNet(num_blocks=2, num_features=8, bicubic_skip=skip)
    return randomise_bn_statistics(net)


def _photo_lq(name: str = "chelsea.png") -> torch.Tensor:
    gt = torch.from_numpy(load_photo(name).copy()).permute(2, 0, 1)[:3]
    return degrade(gt, 4).float() / 255  # (3, h, w) [0, 1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One real export per module (the dynamo exporter takes seconds): (net, export directory)."""
    net = _net()
    out = export_onnx(net, tmp_path_factory.mktemp("onnx") / "g", opset=18, model={"name": "unit"}, weights_digest=weights_digest(net))
    return net, out


def test_graph_has_dynamic_sizes_and_a_sidecar(exported):
    net, out = exported
    model = onnx.load(str(out / "generator.onnx"))
    onnx.checker.check_model(model, full_check=True)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims][1] == 3
    assert all(dims[i].dim_param for i in (0, 2, 3))  # batch, height, width are symbolic
    meta = read_sidecar(out)
    assert (meta["scale"], meta["opset"], meta["receptive_radius"]) == (4, 18, net.receptive_radius)
    assert meta["input"]["range"] == [0.0, 1.0] and meta["output"]["range"] == [-1.0, 1.0]
    assert meta["model"] == {"name": "unit", "weights_digest": weights_digest(net)}
    assert meta["generator"]["bicubic_skip"] is True


@pytest.mark.parametrize("shape", [(1, 3, 24, 20), (2, 3, 17, 41), (1, 3, 2, 9)])
def test_onnxruntime_matches_torch_at_any_size(exported, shape):
    net, out = exported
    gen = load_exported(out, threads=1)
    lq = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = net(lq)
    got = gen(lq)
    assert got.shape == (shape[0], 3, shape[2] * 4, shape[3] * 4)
    assert (got - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_polyphase_bicubic_equals_the_cores_bicubic(scale):
    graph = ExportableGenerator(SRResNet(scale=scale, num_blocks=1, num_features=4, bicubic_skip=True))
    for h, w in [(graph.min_side, graph.min_side), (5, 3), (31, 18)]:
        x = torch.rand(2, 3, h, w)
        assert (graph._bicubic(x) - bicubic_upscale(x, scale)).abs().max().item() < 1e-5


def test_onnxruntime_upscaler_tiles_batches_and_versions_like_torch(exported):
    net, out = exported
    lq = _photo_lq()[None, :, :60, :90]
    torch_up = Upscaler(net, options=UpscalerOptions(device="cpu", tile_size=512))
    ort_up = Upscaler(load_exported(out), options=UpscalerOptions(tile_size=40, tile_overlap=4))
    assert ort_up.runtime == "onnxruntime" and ort_up.version == torch_up.version
    assert (ort_up.upscale_tensor(lq) - torch_up.upscale_tensor(lq)).abs().max().item() < 1e-4
    batch = torch.stack([_photo_lq()[:, :30, :30], _photo_lq("coffee.png")[:, :30, :30]])
    assert (ort_up.upscale_tensor(batch) - torch_up.upscale_tensor(batch)).abs().max().item() < 1e-4
    with pytest.raises(ValueError, match="fp32"):
        Upscaler(load_exported(out), options=UpscalerOptions(precision="bf16"))


def test_parity_sees_other_weights(exported):
    """The parity check can fail: the graph of one model against the weights of another."""
    net, out = exported
    images = {"chelsea": _photo_lq()[:, :32, :32]}
    assert parity(net, load_exported(out), images)["chelsea"] < 1e-5
    assert parity(_net(seed=1), load_exported(out), images)["chelsea"] > 2 / 255


def test_an_export_that_failed_parity_is_refused(exported, tmp_path):
    _, out = exported
    bad = shutil.copytree(out, tmp_path / "bad")
    meta = json.loads((bad / SIDECAR_FILE).read_text())
    meta["parity"] = {"passed": False, "max_abs_error": 0.1}
    (bad / SIDECAR_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="failed its parity check"):
        load_exported(bad)


def test_export_cli_checks_parity_on_set5_and_serves_with_onnxruntime(cli, tmp_path, datasets_dir):
    ckpt = save_generator(tmp_path / "ckpt", _net(seed=2))
    out = tmp_path / "export"
    res = cli("export", "--model", str(ckpt), "--output", str(out), "--data", str(datasets_dir / "Set5"))
    assert res.returncode == 0, res.stderr
    assert "onnx.checker: ok" in res.stdout
    assert len(re.findall(r"max \|torch - onnxruntime\|", res.stdout)) == 5  # every Set5 image
    worst = float(re.search(r"parity on Set5 \(5 images\): max error (\S+)", res.stdout).group(1))
    meta = read_sidecar(out)
    assert meta["parity"]["passed"] and meta["parity"]["max_abs_error"] == pytest.approx(worst, rel=1e-2) and worst <= 1 / 255
    assert set(meta["parity"]["per_image"]) == {"baby", "bird", "butterfly", "head", "woman"}

    up = load_upscaler(out, runtime="onnxruntime")
    assert up.runtime == "onnxruntime" and up.scale == 4 and up.source.uri == str(out)
    lq = _photo_lq()[:, :20, :24]
    expected = Upscaler(_net(seed=2)).upscale_tensor(lq)
    assert (up.upscale_tensor(lq) - expected).abs().max().item() < 1e-4
    with pytest.raises(CheckpointError, match="only the onnxruntime runtime loads"):
        load_upscaler(out)

    again = cli("export", "--model", str(ckpt), "--output", str(out), "--data", str(datasets_dir / "Set5"))
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--overwrite" in again.stderr


def test_export_cli_one_line_errors(cli, tmp_path):
    ckpt = save_generator(tmp_path / "ckpt", _net(skip=False))
    for argv, fragment in [
        (["--model", str(ckpt), "--output", str(tmp_path / "o"), "--opset", "11"], "--opset must be 18-23"),
        (["--model", str(tmp_path / "missing"), "--output", str(tmp_path / "o")], "does not exist"),
        (["--model", str(ckpt), "--output", str(ckpt)], "non-empty directory"),
        (["--model", str(ckpt), "--output", str(tmp_path / "o"), "--data", str(tmp_path)], "no HR/ folder"),
    ]:
        res = cli("export", *argv)
        assert res.returncode == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
        assert fragment in res.stderr
    assert not (tmp_path / "o").exists()  # nothing written before the checks


def test_missing_extra_names_the_install_line(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what Python does when a package is absent
    with pytest.raises(ExportDependencyError, match=re.escape('pip install -e ".[export]"')):
        require("onnxruntime")
    res = cli("export", "--model", str(tmp_path), "--output", str(tmp_path / "o"))
    assert res.returncode == 2 and 'onnxruntime is not installed' in res.stderr and res.stderr.count("\n") == 1
    assert isinstance(ExportDependencyError("x"), UserError)


def test_load_upscaler_exports_a_checkpoint_on_the_fly(tmp_path):
    net = _net(seed=3)
    ckpt = save_generator(tmp_path / "ckpt", net)
    up = load_upscaler(ckpt, runtime="onnxruntime")
    torch_up = load_upscaler(ckpt)
    assert (up.runtime, torch_up.runtime) == ("onnxruntime", "torch") and up.version == torch_up.version
    img = _photo_lq("astronaut.png")[:, :36, :44]
    assert (up.upscale_tensor(img) - torch_up.upscale_tensor(img)).abs().max().item() < 1e-4
    with pytest.raises(ConfigError, match="runtime must be one of torch, onnxruntime"):
        load_upscaler(ckpt, runtime="tensorrt")
    with pytest.raises(ConfigError, match="on the CPU"):
        load_upscaler(ckpt, runtime="onnxruntime", options=UpscalerOptions(device="cuda"))
    assert np.isfinite(up.upscale_tensor(img).numpy()).all()
