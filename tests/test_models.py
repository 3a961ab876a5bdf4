"""Generator and discriminator architecture (Ledig et al., Fig. 4)."""

from __future__ import annotations

import pytest
import torch

from srgan.core.models import Discriminator, GeneratorConfig, SRResNet, build_generator, count_parameters


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_generator_output_shapes(scale):
    net = SRResNet(scale=scale, num_blocks=2, num_features=16).eval()
    out = net(torch.rand(2, 3, 12, 10))
    assert out.shape == (2, 3, 12 * scale, 10 * scale)
    assert len(net.upsample) == {2: 1, 4: 2, 8: 3}[scale]


def test_paper_generator_parameter_count():
    net = SRResNet()
    # 9x9 head + 16 residual blocks + trunk conv/BN + two x2 sub-pixel stages + 9x9 tail, PReLU (1 param each).
    assert count_parameters(net) == 1_549_462
    assert abs(count_parameters(net) - 1.55e6) < 0.01e6


def test_paper_generator_structure():
    net = SRResNet()
    assert net.head[0].kernel_size == (9, 9) and net.tail.kernel_size == (9, 9)
    assert len(net.body) == 16
    block = net.body[0].body
    assert [type(m).__name__ for m in block] == ["Conv2d", "BatchNorm2d", "PReLU", "Conv2d", "BatchNorm2d"]
    assert [type(m).__name__ for m in net.body_tail] == ["Conv2d", "BatchNorm2d"]
    assert net.upsample[0].conv.out_channels == 256 and net.upsample[0].shuffle.upscale_factor == 2


def test_config_roundtrip_and_validation():
    cfg = GeneratorConfig(scale=2, num_blocks=3, num_features=8)
    assert build_generator(cfg).config == cfg
    with pytest.raises(ValueError, match="scale"):
        GeneratorConfig(scale=3)
    with pytest.raises(ValueError, match="num_blocks"):
        GeneratorConfig(num_blocks=0)


def test_receptive_radius_bounds_the_dependency():
    """Changing one LR pixel changes no output pixel farther than receptive_radius LR pixels away."""
    torch.manual_seed(0)
    net = SRResNet(scale=4, num_blocks=2, num_features=8).eval()
    r = net.receptive_radius
    x = torch.rand(1, 3, 2 * r + 21, 2 * r + 21)
    c = r + 10
    y = x.clone()
    y[..., c, c] += 1.0
    with torch.no_grad():
        diff = (net(x) - net(y)).abs().sum(dim=(0, 1))  # (H*4, W*4)
    changed = diff.nonzero()
    assert len(changed) > 0
    reach = (changed // 4 - c).abs().max().item()
    assert reach <= r
    assert reach >= r - 2  # the bound is tight, not a loose guess


def test_bicubic_skip_starts_near_bicubic():
    from srgan.core.degrade import bicubic_upscale

    torch.manual_seed(0)
    net = SRResNet(num_blocks=1, num_features=8, bicubic_skip=True).eval()
    for p in net.tail.parameters():
        torch.nn.init.zeros_(p)  # the residual branch outputs 0 -> sr is exactly the bicubic image
    lq = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        sr = net(lq)
    assert torch.allclose((sr + 1) / 2, bicubic_upscale(lq, 4), atol=1e-6)


@pytest.mark.parametrize("crop", [96, 128])
def test_discriminator_crop_sizes(crop):
    net = Discriminator()
    logits = net(torch.rand(3, 3, crop, crop) * 2 - 1)
    assert logits.shape == (3,)
    assert torch.isfinite(logits).all()


def test_discriminator_structure():
    net = Discriminator()
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [c.stride[0] for c in convs] == [1, 2, 1, 2, 1, 2, 1, 2]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.features) == 7
    assert all(m.negative_slope == 0.2 for m in net.features if isinstance(m, torch.nn.LeakyReLU))
    dense = [m for m in net.classifier if isinstance(m, torch.nn.Linear)]
    assert dense[0].in_features == 512 * 6 * 6 and dense[0].out_features == 1024 and dense[1].out_features == 1
    # At 96x96 the adaptive pool is the identity: the conv stack already ends at 6x6.
    assert net.features(torch.rand(1, 3, 96, 96)).shape[-2:] == (6, 6)


def test_discriminator_rejects_tiny_input():
    with pytest.raises(ValueError, match="at least 16x16"):
        Discriminator()(torch.rand(1, 3, 8, 8))
