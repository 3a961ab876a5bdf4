"""LPIPS (srgan.io.perceptual) and `pipelines/evaluate.py --metrics ...,lpips`: the backbone from
torchvision's cache (a state dict placed at the cache path: right keys, seeded random values, features
only, 10 MB), checked against LPIPS's definition computed here from torchvision's AlexNet and the
package's linear layers; without the weights (and no network: HTTPS through a closed port), LPIPS is
reported as unavailable and the other metrics still are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.models import alexnet

from srgan.core.degrade import bicubic_upscale, degrade
from srgan.core.evaluation import read_uint8
from srgan.io.perceptual import LPIPSUnavailableError, load_lpips

ALEX_FILE = "alexnet-owt-7be5be79.pth"


def _alexnet_features_state() -> dict[str, torch.Tensor]:
    """torchvision alexnet's ``features.*`` keys and shapes (a meta-device model: nothing allocated), seeded random values."""
    with torch.device("meta"):
        shapes = {f"features.{k}": v.shape for k, v in alexnet().features.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    return {k: torch.randn(shape, generator=generator) * 0.05 for k, shape in shapes.items()}


@pytest.fixture
def cached_alexnet(tmp_path, monkeypatch):
    """TORCH_HOME with an AlexNet state dict at torchvision's cache path; returns the state dict."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    state = _alexnet_features_state()
    path = tmp_path / "torch-home" / "hub" / "checkpoints" / ALEX_FILE
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return state


def _reference_lpips(state: dict[str, torch.Tensor], x255: torch.Tensor, y255: torch.Tensor) -> float:
    """LPIPS v0.1 (Zhang et al. 2018) by its definition: scale the [-1, 1] input, take AlexNet's five
    conv ReLUs, unit-normalise each over channels, square the difference, weight the channels by the
    package's linear layer, average over space, sum over layers."""
    import lpips

    with torch.device("meta"):
        features = alexnet().features
    features = features.to_empty(device="cpu")
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})
    lins = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth", map_location="cpu", weights_only=True)
    shift, scale = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(img255: torch.Tensor) -> list[torch.Tensor]:
        h, out = ((img255.float().unsqueeze(0) / 127.5 - 1) - shift) / scale, []
        for index, layer in enumerate(features):
            h = layer(h)
            if index in (1, 4, 7, 9, 11):  # relu1..relu5
                out.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    with torch.no_grad():
        total = sum(((a - b) ** 2 * lins[f"lin{k}.model.1.weight"]).sum(dim=1).mean() for k, (a, b) in enumerate(zip(taps(x255), taps(y255))))
    return float(total)


def test_lpips_from_the_cache_matches_its_definition(cached_alexnet, no_network, datasets_dir):
    metric = load_lpips(net="alex", device="cpu")
    gt = read_uint8(datasets_dir / "Set5" / "HR" / "baby.png")[:, :128, :128]
    sr = bicubic_upscale(degrade(gt, 4), 4)
    assert torch.equal(metric.model.net.slice1[0].weight, cached_alexnet["features.0.weight"])  # the cached file's values
    got = metric(sr, gt, crop_border=4)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(_reference_lpips(cached_alexnet, sr[:, 4:-4, 4:-4], gt[:, 4:-4, 4:-4]), rel=1e-4)
    assert metric(gt, gt, crop_border=4).item() == pytest.approx(0.0, abs=1e-7)


def test_lpips_without_weights_is_unavailable_in_one_line(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(LPIPSUnavailableError) as err:
        load_lpips(net="alex")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"LPIPS's AlexNet ImageNet weights not found in torchvision's cache ({tmp_path / 'empty' / 'hub' / 'checkpoints' / ALEX_FILE})")
    assert "download from https://download.pytorch.org/models/" in message and "leave lpips out of --metrics" in message


def _json_rows(stdout: str) -> dict:
    return {row["dataset"]: row for row in map(json.loads, stdout.strip().splitlines())}


@pytest.fixture
def small_set(tmp_path, datasets_dir) -> Path:
    """Two 96x96 HR crops of Set5 photos (LR made by --degrade): LPIPS on CPU stays quick."""
    from PIL import Image

    root = tmp_path / "small"
    (root / "HR").mkdir(parents=True)
    for name in ("baby", "bird"):
        hr = read_uint8(datasets_dir / "Set5" / "HR" / f"{name}.png")[:, 100:196, 100:196]
        Image.fromarray(hr.permute(1, 2, 0).numpy()).save(root / "HR" / f"{name}.png")
    return root


def test_evaluate_reports_lpips_from_the_cache(cli, cached_alexnet, no_network, small_set):
    proc = cli("evaluate", "--model", "bicubic", "--data", str(small_set), "--degrade", "--metrics", "psnr,ssim,lpips", "--json", "--verbose")
    assert proc.returncode == 0, proc.stderr
    row = _json_rows(proc.stdout)["small"]
    assert list(row) == ["dataset", "model", "psnr_y", "ssim_y", "lpips", "images", "per_image"]
    per_image = {image["name"]: image["lpips"] for image in row["per_image"]}
    assert row["lpips"] == pytest.approx((per_image["baby"] + per_image["bird"]) / 2, abs=1e-6)
    # LPIPS's definition for that image, with the protocol's crop (scale pixels per side).
    gt = read_uint8(small_set / "HR" / "bird.png")
    sr = bicubic_upscale(degrade(gt, 4), 4)
    expected = _reference_lpips(cached_alexnet, sr[:, 4:-4, 4:-4], gt[:, 4:-4, 4:-4])
    assert expected > 0 and per_image["bird"] == pytest.approx(expected, rel=1e-4)

    table = cli("evaluate", "--model", "bicubic", "--data", str(small_set), "--degrade", "--metrics", "lpips,psnr")
    assert table.returncode == 0, table.stderr
    header, first = table.stdout.splitlines()[:2]
    assert header.split() == ["dataset", "model", "images", "LPIPS", "PSNR-Y", "(dB)"]
    assert first.split() == ["small", "bicubic", "2", f"{row['lpips']:.4f}", f"{row['psnr_y']:.2f}"]


def test_evaluate_without_lpips_weights_says_unavailable_and_exits_0(cli, tmp_path, monkeypatch, no_network, small_set):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    proc = cli("evaluate", "--model", "bicubic", "--data", str(small_set), "--degrade", "--metrics", "psnr,ssim,lpips", "--json")
    assert proc.returncode == 0, proc.stderr
    row = _json_rows(proc.stdout)["small"]
    assert row["lpips"] is None and row["images"] == 2  # the other metrics stand
    assert row["psnr_y"] > 20 and 0 < row["ssim_y"] < 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: LPIPS unavailable: LPIPS's AlexNet ImageNet weights not found"), proc.stderr
    assert "leave lpips out of --metrics" in lines[0]
