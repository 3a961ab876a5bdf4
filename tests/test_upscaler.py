"""Upscaler: tiling without seams, image modes, checkpoints that reload to identical output."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_photo, randomise_bn_statistics
from srgan.core.checkpoint import save_generator
from srgan.core.degrade import bicubic_upscale, degrade
from srgan.core.images import decode_image, encode_image
from srgan.core.inference import Upscaler, UpscalerOptions, _tile_spans, tiled_work, weights_digest
from srgan.core.models import SRResNet
from srgan.core.ranges import signed_to_unit


def _net(num_blocks: int = 4, seed: int = 0) -> SRResNet:
    """A small generator with non-trivial weights and BN statistics (eval-mode BN is an affine map)."""
    torch.manual_seed(seed)
    net = SRResNet(num_blocks=num_blocks, num_features=16)
    return randomise_bn_statistics(net)


def _photo_lq(name: str = "chelsea.png") -> torch.Tensor:
    """A real photo, degraded to LR: (1, 3, h, w) in [0, 1]."""
    arr = load_photo(name)
    gt = torch.from_numpy(arr.copy()).permute(2, 0, 1)[:3]
    return (degrade(gt, 4).float() / 255).unsqueeze(0)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_tiled_equals_untiled_on_real_photo():
    lq = _photo_lq()  # 112x75 LR from the 451x300 chelsea photo
    net = _net()
    whole = Upscaler(net, options=UpscalerOptions(tile_size=512)).upscale_tensor(lq)
    tiled_upscaler = Upscaler(net, options=UpscalerOptions(tile_size=40, tile_overlap=8))
    tiled = tiled_upscaler.upscale_tensor(lq)
    assert lq.shape[-1] > 40 and lq.shape[-2] > 40  # really more than one tile in each direction
    assert tiled.shape == whole.shape == (1, 3, lq.shape[-2] * 4, lq.shape[-1] * 4)
    as_uint8 = lambda t: (t * 255).round()  # noqa: E731
    assert (as_uint8(tiled) - as_uint8(whole)).abs().max().item() <= 1
    assert (tiled - whole).abs().max().item() < 1e-4


def test_tiled_equals_untiled_paper_model():
    """The default tile_pad (the receptive radius, 40 for the paper model) makes tiles independent."""
    lq = _photo_lq("astronaut.png")[..., :100, :90]
    net = _net(num_blocks=16)
    whole = Upscaler(net, options=UpscalerOptions(tile_size=256)).upscale_tensor(lq)
    tiled = Upscaler(net, options=UpscalerOptions(tile_size=48, tile_overlap=4)).upscale_tensor(lq)
    assert (tiled - whole).abs().max().item() < 1e-4


def test_too_little_context_shows_seams():
    """The check above can fail: with 1 pixel of context the tiles disagree visibly."""
    lq = _photo_lq()
    net = _net()
    whole = Upscaler(net, options=UpscalerOptions(tile_size=512)).upscale_tensor(lq)
    tiled = Upscaler(net, options=UpscalerOptions(tile_size=40, tile_overlap=0, tile_pad=1)).upscale_tensor(lq)
    assert (tiled - whole).abs().max().item() > 2 / 255


@pytest.mark.parametrize("mode", ["RGBA", "L", "LA", "RGB"])
def test_modes_are_kept(mode):
    arr = load_photo("astronaut.png")[:40, :36]
    img = Image.fromarray(arr).convert(mode)
    if mode in ("RGBA", "LA"):
        alpha = np.tile(np.linspace(0, 255, 36, dtype=np.uint8), (40, 1))
        img.putalpha(Image.fromarray(alpha))
    decoded = decode_image(_png(np.asarray(img)))
    out = Upscaler(_net(num_blocks=1), options=UpscalerOptions(tile_size=64)).upscale_image(decoded)
    result = Image.open(io.BytesIO(encode_image(out, "png")))
    assert result.mode == mode
    assert result.size == (36 * 4, 40 * 4)
    if decoded.alpha is not None:
        # Alpha is upscaled with MATLAB bicubic, not by the network.
        expected = bicubic_upscale(decoded.alpha, 4).clamp(0, 1)
        assert torch.allclose(out.alpha, expected, atol=1e-6)


def test_16bit_png_is_kept():
    rng = np.random.default_rng(0)
    arr16 = (rng.integers(0, 65535, size=(24, 20, 3))).astype(np.uint16)
    from srgan.core.png import png16_bytes as _png16_bytes

    decoded = decode_image(_png16_bytes(arr16))
    assert decoded.bit_depth == 16
    out = Upscaler(_net(num_blocks=1), options=UpscalerOptions(tile_size=64)).upscale_image(decoded)
    back = decode_image(encode_image(out, "png"))
    assert back.bit_depth == 16 and back.mode == "RGB" and back.size == (80, 96)
    # 16-bit output keeps sub-8-bit precision: many values are not multiples of 257 (= 65535/255).
    values = np.rint(back.rgb.numpy() * 65535).astype(np.int64)
    assert (values % 257 != 0).mean() > 0.5

    grey16 = Image.fromarray(rng.integers(0, 65535, size=(16, 12)).astype(np.uint16))
    buf = io.BytesIO()
    grey16.save(buf, format="PNG")
    g = decode_image(buf.getvalue())
    g_out = decode_image(encode_image(Upscaler(_net(num_blocks=1)).upscale_image(g), "png"))
    assert (g.mode, g.bit_depth) == ("L", 16) and (g_out.mode, g_out.bit_depth) == ("L", 16)
    assert g_out.size == (48, 64)


def test_batch_of_images_equals_one_by_one():
    up = Upscaler(_net(num_blocks=1), options=UpscalerOptions(tile_size=64, max_batch=2))
    arr = load_photo("coffee.png")
    imgs = [decode_image(_png(arr[y : y + 20, x : x + 24])) for y, x in [(0, 0), (50, 50), (100, 30)]]
    imgs.append(decode_image(_png(arr[:30, :30])))  # a different size: its own batch
    together = up.upscale_images(imgs)
    for img, out in zip(imgs, together):
        alone = up.upscale_image(img)
        assert out.rgb.shape == alone.rgb.shape
        assert torch.allclose(out.rgb, alone.rgb, atol=1e-5)


def test_checkpoint_roundtrip_gives_identical_output(tmp_path):
    net = _net(num_blocks=2, seed=3)
    ckpt = save_generator(tmp_path / "ckpt", net, config={"experiment": "unit"})
    lq = _photo_lq()[..., :32, :32]
    direct = Upscaler(net).upscale_tensor(lq)
    reloaded = Upscaler.from_checkpoint(ckpt)
    assert reloaded.model_info.config == {"experiment": "unit"}
    assert torch.equal(reloaded.upscale_tensor(lq), direct)


def test_bad_options():
    with pytest.raises(ValueError, match="bf16 needs a CUDA"):
        Upscaler(_net(num_blocks=1), options=UpscalerOptions(device="cpu", precision="bf16"))
    with pytest.raises(ValueError, match="precision"):
        UpscalerOptions(precision="fp8")
    with pytest.raises(ValueError, match="tile_size"):
        UpscalerOptions(tile_size=8)
    with pytest.raises(ValueError, match="expected"):
        Upscaler(_net(num_blocks=1)).upscale_tensor(torch.rand(1, 1, 8, 8))


@pytest.mark.gpu
def test_cuda_fp32_and_bf16_match_cpu():
    net = _net(num_blocks=2)
    lq = _photo_lq()[..., :64, :64]
    cpu = Upscaler(net, options=UpscalerOptions(device="cpu")).upscale_tensor(lq)
    gpu = Upscaler(_net(num_blocks=2), options=UpscalerOptions(device="cuda", tile_size=32, tile_overlap=4)).upscale_tensor(lq)
    assert (gpu - cpu).abs().max().item() < 1e-3
    bf16 = Upscaler(_net(num_blocks=2), options=UpscalerOptions(device="cuda", precision="bf16")).upscale_tensor(lq)
    assert (bf16 - cpu).abs().mean().item() < 0.02


class _OOMAboveSize(SRResNet):
    """A generator that fails like a full GPU when asked for inputs larger than ``limit`` pixels a side."""

    limit = 100

    def forward(self, lq):
        if max(lq.shape[-2:]) > self.limit:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return super().forward(lq)


def test_out_of_memory_retries_with_smaller_tiles(caplog):
    net = _net(num_blocks=1)
    failing = _OOMAboveSize(num_blocks=1, num_features=16).eval()
    failing.load_state_dict(net.state_dict())
    lq = _photo_lq()[..., :75, :112]
    expected = Upscaler(net, options=UpscalerOptions(tile_size=512)).upscale_tensor(lq)
    up = Upscaler(failing, options=UpscalerOptions(tile_size=512))
    with caplog.at_level("WARNING"):
        out = up.upscale_tensor(lq)
    assert up.tile_size == 64  # 512 -> 256 -> 128 fail (whole image), 64 + context fits
    assert caplog.text.count("out of memory") == 3
    assert (out - expected).abs().max().item() < 1e-4


class _CallableGenerator:
    """Not an nn.Module: the duck-typed contract an ONNX session meets (config, receptive_radius, call)."""

    runtime = "callable"

    def __init__(self, net: SRResNet):
        self.net, self.config, self.receptive_radius = net, net.config, net.receptive_radius
        self.weights_digest = "sha256:test"
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, lq: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(lq.shape))
        return self.net(lq)


def test_any_generator_callable_is_tiled_like_the_module():
    net = _net(num_blocks=2)
    lq = _photo_lq()[..., :70, :90]
    expected = Upscaler(net, options=UpscalerOptions(tile_size=40, tile_overlap=4)).upscale_tensor(lq)
    gen = _CallableGenerator(net)
    up = Upscaler(gen, options=UpscalerOptions(tile_size=40, tile_overlap=4))
    out = up.upscale_tensor(lq)
    assert len(gen.shapes) > 4  # really tiled: the callable saw each tile with its context
    assert (out - expected).abs().max().item() < 1e-5  # the module runs folded and channels_last on the CPU
    assert (up.runtime, up.version, up.device.type) == ("callable", "sha256:test", "cpu")
    with pytest.raises(ValueError, match="runs on cpu"):
        Upscaler(gen, options=UpscalerOptions(device="cuda:0"))


def test_cpu_run_copy_is_folded_and_channels_last_but_equal():
    """On the CPU the Upscaler runs a BN-folded, channels_last copy: same output, caller's net untouched."""
    net = _net(num_blocks=2)
    lq = _photo_lq()[..., :40, :48]
    with torch.inference_mode():
        expected = signed_to_unit(net(lq)).clamp(0, 1)
    up = Upscaler(net, options=UpscalerOptions(device="cpu"))
    out = up.upscale_tensor(lq)
    assert out.is_contiguous() and (out - expected).abs().max().item() < 1e-5
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in up.net_g.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 5  # the caller's module keeps its BNs
    assert up.version == weights_digest(net)


def test_tiles_are_the_fewest_and_equal():
    """512 LR at tile 256 is 2x2 tiles (the old plan ran 3x3), each with at most pad pixels of context."""
    assert _tile_spans(512, 256, 0) == [(0, 256), (256, 512)]
    assert _tile_spans(1024, 256, 8) == [(0, 212), (203, 415), (406, 618), (609, 821), (812, 1024)]
    assert tiled_work(512, 512, tile=256, overlap=0, pad=40) == pytest.approx((296 + 296) ** 2 / 512**2)
    gen = _CallableGenerator(_net(num_blocks=1))
    Upscaler(gen, options=UpscalerOptions(tile_size=50)).upscale_tensor(torch.rand(1, 3, 100, 90))
    pad = gen.receptive_radius
    assert gen.shapes == [(1, 3, 50 + pad, 45 + pad)] * 4  # 2 x 2 tiles, context on the inner side only
