"""Losses: pixel MSE, VGG19 content loss (weights injected; the core never downloads: tests/test_weights.py
covers filling torchvision's cache), adversarial, TV."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models import vgg19

from srgan.core.losses import (
    VGG_FEATURE_SCALE,
    LossConfig,
    VGGContentLoss,
    VGGWeightsNotFoundError,
    build_content_loss,
    discriminator_loss,
    generator_adversarial_loss,
    load_vgg19_state_dict,
    perceptual_loss,
    pixel_loss,
    tv_loss,
    vgg19_cache_path,
)
from srgan.core.models import Discriminator, SRResNet
from srgan.io.storage import fetch_weights_file


@pytest.fixture(scope="module")
def vgg_state():
    """A VGG19 state dict with random (seeded) weights, standing in for the ImageNet file."""
    torch.manual_seed(0)
    return vgg19(weights=None).state_dict()


def _head(state: dict, upto: int = 8) -> dict:
    """The entries up to features.<upto> (relu2_2 needs 0..8): a small stand-in file, same key names."""
    return {k: v for k, v in state.items() if k.startswith("features.") and int(k.split(".")[1]) <= upto}


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory, vgg_state):
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(_head(vgg_state), path)
    return path


def test_pixel_loss_is_mse_on_signed_range():
    sr, gt = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), -1.0)
    assert pixel_loss(sr, gt).item() == pytest.approx(1.0)


@pytest.mark.parametrize("layer,channels,stride", [("relu2_2", 128, 2), ("relu5_4", 512, 16)])
def test_content_loss_layers_and_gradient_reaches_generator(layer, channels, stride, vgg_state):
    torch.manual_seed(0)
    loss_fn = VGGContentLoss(layer=layer, state_dict=vgg_state)
    feats = loss_fn.extract(torch.rand(1, 3, 96, 96) * 2 - 1)
    assert feats.shape == (1, channels, 96 // stride, 96 // stride)
    assert type(loss_fn.features[-1]).__name__ == "ReLU"

    net_g = SRResNet(num_blocks=1, num_features=8)
    sr = net_g(torch.rand(2, 3, 24, 24))
    gt = torch.rand(2, 3, 96, 96) * 2 - 1
    loss = loss_fn(sr, gt)
    assert loss.item() > 0
    loss.backward()
    assert net_g.head[0].weight.grad is not None and net_g.head[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss_fn.parameters())  # VGG is frozen


def test_content_loss_scaling_and_normalisation(vgg_state):
    """Features are ImageNet-normalised VGG outputs multiplied by 1/12.75."""
    loss_fn = VGGContentLoss(layer="vgg22", state_dict=vgg_state)
    reference = vgg19(weights=None)
    reference.load_state_dict(vgg_state)
    reference = reference.features[:9].eval()
    img = torch.rand(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference((img - mean) / std) / 12.75
        got = loss_fn.extract(img * 2 - 1)
    assert VGG_FEATURE_SCALE == pytest.approx(1 / 12.75)
    assert torch.allclose(got, expected, atol=1e-5)


def test_vgg_stays_in_eval_mode(vgg_state):
    loss_fn = VGGContentLoss(layer="relu2_2", state_dict=vgg_state)
    loss_fn.train()
    assert not loss_fn.features.training
    assert all(not p.requires_grad for p in loss_fn.parameters())


def test_weights_from_path_uri_and_cache(vgg_file, vgg_state, tmp_path, monkeypatch):
    key = "features.0.weight"
    assert torch.equal(load_vgg19_state_dict(vgg_file)[key], vgg_state[key])
    assert torch.equal(load_vgg19_state_dict(f"file://{vgg_file}")[key], vgg_state[key])
    # torchvision's standard cache under TORCH_HOME, with torchvision's own file name.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = vgg19_cache_path()
    assert cache == tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(vgg_file.read_bytes())
    assert torch.equal(load_vgg19_state_dict(None)[key], vgg_state[key])
    assert torch.equal(load_vgg19_state_dict("imagenet")[key], vgg_state[key])  # the default's name
    assert LossConfig().vgg_weights == "imagenet"
    loss_fn = build_content_loss(LossConfig(content_layer="relu2_2"))
    assert torch.equal(loss_fn.features[0].weight, vgg_state[key])


def test_weights_from_s3(vgg_file, vgg_state, s3_server, s3_bucket, tmp_path):
    import boto3

    boto3.client("s3", endpoint_url=s3_server).upload_file(str(vgg_file), s3_bucket, "weights/vgg19.pth")
    assert vgg_file.stat().st_size < 2_000_000
    uri = f"s3://{s3_bucket}/weights/vgg19.pth"
    with pytest.raises(VGGWeightsNotFoundError, match="is remote"):  # the core reads local files only
        load_vgg19_state_dict(uri)
    local = fetch_weights_file(uri, into=tmp_path)  # a Train worker passes its scratch directory
    assert local == str(tmp_path / "vgg19.pth")
    state = load_vgg19_state_dict(local)
    assert torch.equal(state["features.0.weight"], vgg_state["features.0.weight"])


def test_safetensors_weights(tmp_path, vgg_state):
    from safetensors.torch import save_file

    path = tmp_path / "vgg19.safetensors"
    save_file({k: v.contiguous() for k, v in _head(vgg_state).items()}, str(path))
    assert torch.equal(load_vgg19_state_dict(path)["features.0.weight"], vgg_state["features.0.weight"])


def test_missing_weights_error_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(VGGWeightsNotFoundError) as err:
        load_vgg19_state_dict(None)
    message = str(err.value)
    assert "vgg19-dcbb9e9d.pth" in message and str(tmp_path / "empty-cache") in message
    assert "TORCH_HOME" in message and "--vgg-weights" in message
    assert "\n" not in message
    with pytest.raises(VGGWeightsNotFoundError, match="not found in torchvision's cache"):  # the core reads the cache, never downloads
        load_vgg19_state_dict("imagenet")
    with pytest.raises(VGGWeightsNotFoundError, match="--vgg-weights|vgg19 state dict"):
        load_vgg19_state_dict(tmp_path / "nope.pth")


def test_incomplete_state_dict_is_rejected(vgg_state):
    with pytest.raises(ValueError, match="lacks"):
        VGGContentLoss(layer="relu5_4", state_dict=_head(vgg_state))


def test_random_weights_only_when_asked(caplog):
    with caplog.at_level("WARNING"):
        assert load_vgg19_state_dict("random") is None
    assert "RANDOM" in caplog.text


def test_adversarial_losses_are_stable_and_correct():
    logits = torch.tensor([-200.0, -3.0, 0.0, 3.0, 200.0], requires_grad=True)
    g = generator_adversarial_loss(logits)
    expected = -torch.log(torch.sigmoid(torch.tensor([-3.0, 0.0, 3.0]))).sum() / 5 + 200 / 5
    assert torch.isfinite(g) and g.item() == pytest.approx(expected.item(), rel=1e-5)
    g.backward()
    assert torch.isfinite(logits.grad).all()
    # Non-saturating: the gradient stays large when D confidently rejects the fake.
    assert logits.grad[0].abs().item() == pytest.approx(1 / 5, rel=1e-5)

    real, fake = torch.tensor([50.0, 2.0]), torch.tensor([-50.0, -2.0])
    d = discriminator_loss(real, fake)
    assert d.item() == pytest.approx(2 * math.log1p(math.exp(-2.0)) / 2, rel=1e-4)


def test_tv_loss():
    assert tv_loss(torch.full((1, 3, 8, 8), 0.5)).item() == 0
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 3, 8, 8)
    assert tv_loss(ramp).item() == pytest.approx(1.0)


def test_perceptual_loss_weights_from_config(vgg_state):
    torch.manual_seed(0)
    config = LossConfig(content_layer="relu2_2", adversarial_weight=1e-3, tv_weight=0.5)
    content = VGGContentLoss(layer="relu2_2", state_dict=vgg_state)
    net_d = Discriminator()
    sr, gt = torch.rand(2, 3, 96, 96) * 2 - 1, torch.rand(2, 3, 96, 96) * 2 - 1
    terms = perceptual_loss(sr, gt, net_d(sr), content_loss=content, config=config)
    expected = terms["content"] + 1e-3 * terms["adversarial"] + 0.5 * terms["tv"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_loss_config_validation():
    assert LossConfig(content_layer="VGG54").content_layer == "relu5_4"
    with pytest.raises(ValueError, match="content_layer"):
        LossConfig(content_layer="relu3_3")
    with pytest.raises(ValueError, match="adversarial_weight"):
        LossConfig(adversarial_weight=-1)


def test_vgg19_url_is_torchvisions_and_the_training_path_never_imports_torchvision(repo_root):
    # The URL is written out in srgan.core.losses so that building the engine (the driver, Ray Train's
    # controller, every worker) never imports torchvision.models (about 2 s of CPU each).
    import subprocess
    import sys

    from torchvision.models import VGG19_Weights

    from srgan.core.losses import VGG19_IMAGENET_URL, vgg19_cache_path

    assert VGG19_IMAGENET_URL == VGG19_Weights.IMAGENET1K_V1.url
    assert vgg19_cache_path().name == "vgg19-dcbb9e9d.pth"
    code = "import sys, srgan.distributed.trainer, srgan.io.weights; print('torchvision' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stdout + proc.stderr[-2000:]
