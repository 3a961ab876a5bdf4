"""srgan.core.metrics against scikit-image and closed-form values, on real photos.

The reference Y channel is computed here in numpy with MATLAB's ``rgb2ycbcr`` BT.601 formula,
independently of :func:`srgan.core.metrics.rgb_to_y`; the reference SSIM/PSNR come from scikit-image.
Photos are cropped to an odd-sized window (not a multiple of 4) so the tests stay fast on a CPU.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import load_photo
from srgan.core.metrics import prepare_for_metric, psnr, rgb_to_y, ssim

CROP = 4
WINDOW = (121, 151)  # (H, W): odd and not multiples of 4, so cropping and "valid" borders are exercised
SMALL = (73, 95)  # for the slower RGB-mode SSIM and batched checks

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "Set5/bird.png", "Set14/comic.png"]
DISTORTIONS = ["noise", "blur", "jpeg"]


# ------------------------------------------------------------------------------------ helpers


def _photo(name: str, datasets_dir: Path) -> np.ndarray:
    """Full real photo as (H, W, 3) uint8: a scikit-image photo or a Set5/Set14 HR image."""
    if "/" in name:
        dataset, stem = name.split("/")
        arr = np.asarray(Image.open(datasets_dir / dataset / "HR" / stem).convert("RGB"))
    else:
        arr = load_photo(name)
    assert arr.dtype == np.uint8 and arr.ndim == 3
    return np.ascontiguousarray(arr[..., :3])


def _distort(rgb: np.ndarray, kind: str) -> np.ndarray:
    """A real degradation of a uint8 RGB photo, as uint8 RGB of the same shape."""
    if kind == "noise":
        rng = np.random.default_rng(1234)
        return np.clip(rgb.astype(np.float64) + rng.normal(0.0, 12.0, rgb.shape), 0, 255).round().astype(np.uint8)
    if kind == "blur":
        return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius=1.5)))
    if kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=25)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    raise AssertionError(kind)


def _window(a: np.ndarray, size: tuple[int, int] = WINDOW) -> np.ndarray:
    """Central (H, W) window of an (H, W, ...) array."""
    h, w = size
    top, left = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
    assert top >= 0 and left >= 0
    return np.ascontiguousarray(a[top : top + h, left : left + w])


def _pair(name: str, kind: str, datasets_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(sr, gt) uint8 (H, W, 3): the photo distorted as a whole, then both windowed identically."""
    gt = _photo(name, datasets_dir)
    sr = _distort(gt, kind)
    return _window(sr), _window(gt)


def _np_y(rgb: np.ndarray) -> np.ndarray:
    """MATLAB rgb2ycbcr luma, float64, for (..., 3) RGB in 0..255."""
    rgb = rgb.astype(np.float64)
    return 16.0 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255.0


def _crop(a: np.ndarray, b: int = CROP) -> np.ndarray:
    return a[b:-b, b:-b]


def _chw(a: np.ndarray) -> torch.Tensor:
    """(H, W, C) numpy -> (C, H, W) tensor (dtype kept)."""
    return torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1)


def _sk_ssim(x: np.ndarray, y: np.ndarray, **kw) -> float:
    return float(
        structural_similarity(
            x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, **kw
        )
    )


# ------------------------------------------------------------------------- SSIM vs scikit-image


@pytest.mark.parametrize("kind", DISTORTIONS)
@pytest.mark.parametrize("name", PHOTOS)
def test_ssim_y_matches_skimage_on_real_photos(name, kind, datasets_dir):
    sr, gt = _pair(name, kind, datasets_dir)
    expected = _sk_ssim(_crop(_np_y(sr)), _crop(_np_y(gt)))
    assert 0.3 < expected < 0.995, "the distortion should be real but not destroy the photo"

    got = ssim(_chw(sr), _chw(gt), crop_border=CROP, y_channel=True)
    assert got.shape == (1,) and got.dtype == torch.float64
    assert abs(float(got[0]) - expected) < 1e-4


def test_ssim_y_matches_skimage_on_full_size_set14_image(datasets_dir):
    """The benchmark geometry itself: a whole Set14 HR image (250x361, not a multiple of 4)."""
    gt = _photo("Set14/comic.png", datasets_dir)
    sr = _distort(gt, "jpeg")
    expected = _sk_ssim(_crop(_np_y(sr)), _crop(_np_y(gt)))
    got = float(ssim(_chw(sr), _chw(gt), crop_border=CROP)[0])
    assert abs(got - expected) < 1e-4


@pytest.mark.parametrize(
    "name,kind", [("astronaut.png", "jpeg"), ("coffee.png", "noise"), ("Set5/bird.png", "blur"), ("Set14/comic.png", "jpeg")]
)
def test_ssim_rgb_matches_skimage_channel_axis(name, kind, datasets_dir):
    sr, gt = _pair(name, kind, datasets_dir)
    sr, gt = _window(sr, SMALL), _window(gt, SMALL)
    expected = _sk_ssim(_crop(sr).astype(np.float64), _crop(gt).astype(np.float64), channel_axis=2)
    assert expected < 0.995

    got = ssim(_chw(sr), _chw(gt), crop_border=CROP, y_channel=False)
    assert abs(float(got[0]) - expected) < 1e-4
    # and it is a different quantity from the Y-channel SSIM
    y_val = float(ssim(_chw(sr), _chw(gt), crop_border=CROP, y_channel=True)[0])
    assert abs(y_val - expected) > 1e-4


def test_ssim_of_identical_images_is_one(datasets_dir):
    gt = _window(_photo("Set5/bird.png", datasets_dir), SMALL)
    for y_channel in (True, False):
        assert float(ssim(_chw(gt), _chw(gt), crop_border=CROP, y_channel=y_channel)[0]) == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------------------------ PSNR


@pytest.mark.parametrize("y_channel", [True, False])
@pytest.mark.parametrize("crop_border", [0, CROP])
def test_psnr_of_identical_images_is_inf(y_channel, crop_border):
    gt = _chw(_window(load_photo("coffee.png")))
    value = psnr(gt, gt.clone(), crop_border=crop_border, y_channel=y_channel)
    assert value.shape == (1,)
    assert math.isinf(float(value[0])) and float(value[0]) > 0


@pytest.mark.parametrize("d", [0.5, 1.0, 3.0, 10.0])
def test_psnr_constant_y_offset_is_closed_form(d):
    """Adding 255*d/219 to R, G and B moves BT.601 Y by exactly d: PSNR = 20 log10(255 / d)."""
    gt = _window(load_photo("chelsea.png")).astype(np.float64)
    sr = gt + 255.0 * d / 219.0
    np.testing.assert_allclose(_np_y(sr) - _np_y(gt), d, rtol=0, atol=1e-9)  # construction check, in numpy

    got = float(psnr(_chw(sr), _chw(gt), crop_border=CROP, y_channel=True)[0])
    assert got == pytest.approx(20.0 * math.log10(255.0 / d), rel=1e-9)


def test_psnr_constant_rgb_offset_on_uint8_is_closed_form():
    """uint8 inputs, gt + 3 grey levels: RGB PSNR = 20 log10(255/3); Y PSNR uses the 219/255 luma gain."""
    gt = (_window(load_photo("astronaut.png")) // 2).astype(np.uint8)  # 0..127, so + 3 cannot wrap
    sr = (gt + np.uint8(3)).astype(np.uint8)
    rgb = float(psnr(_chw(sr), _chw(gt), crop_border=CROP, y_channel=False)[0])
    y = float(psnr(_chw(sr), _chw(gt), crop_border=CROP, y_channel=True)[0])
    assert rgb == pytest.approx(20.0 * math.log10(255.0 / 3.0), rel=1e-9)
    assert y == pytest.approx(20.0 * math.log10(255.0 / (3.0 * 219.0 / 255.0)), rel=1e-9)


@pytest.mark.parametrize("kind", DISTORTIONS)
@pytest.mark.parametrize("name", PHOTOS)
def test_psnr_y_matches_skimage_on_real_photos(name, kind, datasets_dir):
    sr, gt = _pair(name, kind, datasets_dir)
    expected = peak_signal_noise_ratio(_crop(_np_y(gt)), _crop(_np_y(sr)), data_range=255)
    got = psnr(_chw(sr), _chw(gt), crop_border=CROP, y_channel=True)
    assert got.dtype == torch.float64
    assert float(got[0]) == pytest.approx(expected, abs=1e-9)


def test_psnr_rgb_matches_skimage_and_uint8_does_not_wrap(datasets_dir):
    """RGB mode equals skimage on the RGB arrays; uint8 input (sr darker than gt) gives the float result."""
    gt = _window(_photo("Set5/bird.png", datasets_dir))
    sr = _distort(gt, "noise")
    expected = peak_signal_noise_ratio(
        _crop(gt).astype(np.float64), _crop(sr).astype(np.float64), data_range=255
    )
    as_uint8 = float(psnr(_chw(sr), _chw(gt), crop_border=CROP, y_channel=False)[0])
    as_float = float(psnr(_chw(sr.astype(np.float64)), _chw(gt.astype(np.float64)), crop_border=CROP, y_channel=False)[0])
    assert as_uint8 == pytest.approx(expected, abs=1e-9)
    assert as_float == pytest.approx(expected, abs=1e-9)


# --------------------------------------------------------------------------------------- rgb_to_y


def test_rgb_to_y_black_is_16_and_white_is_235():
    black = torch.zeros(2, 3, 5, 7, dtype=torch.uint8)
    white = torch.full((2, 3, 5, 7), 255, dtype=torch.uint8)
    yb, yw = rgb_to_y(black), rgb_to_y(white)
    assert yb.shape == (2, 1, 5, 7) and yb.dtype == torch.float64
    assert torch.allclose(yb, torch.full_like(yb, 16.0), rtol=0, atol=1e-9)
    assert torch.allclose(yw, torch.full_like(yw, 235.0), rtol=0, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_rgb_to_y_matches_formula_on_random_image(dtype):
    rng = np.random.default_rng(7)
    hwc = rng.integers(0, 256, size=(2, 23, 17, 3)) if dtype == np.uint8 else rng.uniform(0, 255, size=(2, 23, 17, 3))
    hwc = hwc.astype(dtype)
    x = torch.from_numpy(hwc).permute(0, 3, 1, 2)
    y = rgb_to_y(x)
    assert y.shape == (2, 1, 23, 17) and y.dtype == torch.float64
    np.testing.assert_allclose(y[:, 0].numpy(), _np_y(hwc), rtol=0, atol=1e-9)
    assert not np.allclose(y.numpy(), np.round(y.numpy())), "Y must not be rounded"


def test_rgb_to_y_matches_formula_on_real_photo():
    photo = _window(load_photo("astronaut.png"))
    y = rgb_to_y(_chw(photo)[None])
    np.testing.assert_allclose(y[0, 0].numpy(), _np_y(photo), rtol=0, atol=1e-9)


def test_greyscale_input_is_treated_as_rgb_with_equal_channels():
    grey = _window(load_photo("camera.png"))[..., None]  # (H, W, 1) real greyscale photo
    noisy = _distort(np.repeat(grey, 3, axis=2), "noise")[..., :1]
    g_sr, g_gt = _chw(noisy), _chw(grey)  # (1, H, W)
    rgb_sr, rgb_gt = g_sr.expand(3, -1, -1), g_gt.expand(3, -1, -1)

    prepared = prepare_for_metric(g_gt, crop_border=CROP, y_channel=True)
    assert prepared.shape == (1, 1, WINDOW[0] - 2 * CROP, WINDOW[1] - 2 * CROP)
    np.testing.assert_allclose(
        prepared[0, 0].numpy(), _crop(16.0 + 219.0 * grey[..., 0].astype(np.float64) / 255.0), rtol=0, atol=1e-9
    )
    for y_channel in (True, False):
        assert float(psnr(g_sr, g_gt, crop_border=CROP, y_channel=y_channel)[0]) == pytest.approx(
            float(psnr(rgb_sr, rgb_gt, crop_border=CROP, y_channel=y_channel)[0]), rel=1e-12
        )
    assert float(ssim(g_sr, g_gt, crop_border=CROP)[0]) == pytest.approx(
        float(ssim(rgb_sr, rgb_gt, crop_border=CROP)[0]), rel=1e-12
    )
    # and against skimage on the independently computed Y
    y_sr = 16.0 + 219.0 * noisy[..., 0].astype(np.float64) / 255.0
    y_gt = 16.0 + 219.0 * grey[..., 0].astype(np.float64) / 255.0
    assert float(ssim(g_sr, g_gt, crop_border=CROP)[0]) == pytest.approx(_sk_ssim(_crop(y_sr), _crop(y_gt)), abs=1e-4)


# ------------------------------------------------------------------------------------ crop_border


def test_crop_border_ignores_differences_inside_the_border():
    gt = _window(load_photo("coffee.png"))
    sr = _distort(gt, "jpeg")
    spoiled = sr.copy()
    b = CROP
    spoiled[:b] = 255 - spoiled[:b]  # wreck exactly the 4-pixel border on every side
    spoiled[-b:] = 255 - spoiled[-b:]
    spoiled[:, :b] = 0
    spoiled[:, -b:] = 255

    for y_channel in (True, False):
        clean_p = float(psnr(_chw(sr), _chw(gt), crop_border=b, y_channel=y_channel)[0])
        assert float(psnr(_chw(spoiled), _chw(gt), crop_border=b, y_channel=y_channel)[0]) == clean_p
        # without cropping, the wrecked border is seen
        assert float(psnr(_chw(spoiled), _chw(gt), crop_border=0, y_channel=y_channel)[0]) < clean_p - 1.0
    clean_s = float(ssim(_chw(sr), _chw(gt), crop_border=b)[0])
    assert float(ssim(_chw(spoiled), _chw(gt), crop_border=b)[0]) == clean_s
    assert float(ssim(_chw(spoiled), _chw(gt), crop_border=0)[0]) < clean_s - 0.01

    # a difference confined to the border leaves identical images: PSNR inf, SSIM 1
    border_only = gt.copy()
    border_only[:b] = 255 - border_only[:b]
    assert math.isinf(float(psnr(_chw(border_only), _chw(gt), crop_border=b)[0]))
    assert float(ssim(_chw(border_only), _chw(gt), crop_border=b)[0]) == pytest.approx(1.0, abs=1e-12)

    # the first row inside the crop (index b) does count
    inside = gt.copy()
    inside[b] = 255 - inside[b]
    assert math.isfinite(float(psnr(_chw(inside), _chw(gt), crop_border=b)[0]))


def test_crop_border_equals_manual_crop():
    sr, gt = _window(_distort(load_photo("chelsea.png"), "blur")), _window(load_photo("chelsea.png"))
    for y_channel in (True, False):
        cropped = float(psnr(_chw(sr), _chw(gt), crop_border=CROP, y_channel=y_channel)[0])
        manual = float(psnr(_chw(_crop(sr)), _chw(_crop(gt)), crop_border=0, y_channel=y_channel)[0])
        assert cropped == pytest.approx(manual, rel=1e-12)
    s_cropped = float(ssim(_chw(sr), _chw(gt), crop_border=CROP)[0])
    s_manual = float(ssim(_chw(_crop(sr)), _chw(_crop(gt)), crop_border=0)[0])
    assert s_cropped == pytest.approx(s_manual, rel=1e-12)


# ----------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_shape_mismatch_raises_value_error(metric):
    photo = _chw(_window(load_photo("astronaut.png")))
    with pytest.raises(ValueError):
        metric(photo, photo[:, :, :-1], crop_border=CROP)
    with pytest.raises(ValueError):
        metric(photo[None].expand(2, -1, -1, -1), photo[None], crop_border=CROP)
    with pytest.raises(ValueError):
        metric(photo, photo[:1], crop_border=CROP)  # RGB vs greyscale


def test_ssim_on_too_small_images_raises_value_error():
    photo = _chw(_window(load_photo("astronaut.png")))
    small = photo[:, :18, :40]  # 10 rows left after cropping 4 per side: below the 11x11 window
    with pytest.raises(ValueError):
        ssim(small, small.clone(), crop_border=CROP)
    tiny = photo[:, :10, :10]
    with pytest.raises(ValueError):
        ssim(tiny, tiny.clone(), crop_border=0)
    # exactly 11x11 after cropping is accepted
    ok = photo[:, :19, :19]
    assert float(ssim(ok, ok.clone(), crop_border=CROP)[0]) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------------------------- batches


@pytest.mark.parametrize("y_channel", [True, False])
def test_batch_returns_per_image_values(y_channel, datasets_dir):
    size = SMALL
    pairs = [
        _pair(name, kind, datasets_dir)
        for name, kind in [("astronaut.png", "jpeg"), ("coffee.png", "noise"), ("Set5/bird.png", "blur")]
    ]
    srs = [_window(sr, size) for sr, _ in pairs]
    gts = [_window(gt, size) for _, gt in pairs]
    sr_b = torch.stack([_chw(a) for a in srs])
    gt_b = torch.stack([_chw(a) for a in gts])
    assert sr_b.shape == (3, 3, *size)

    for metric in (psnr, ssim):
        batched = metric(sr_b, gt_b, crop_border=CROP, y_channel=y_channel)
        assert batched.shape == (3,) and batched.dtype == torch.float64
        single = [float(metric(_chw(s), _chw(g), crop_border=CROP, y_channel=y_channel)[0]) for s, g in zip(srs, gts)]
        np.testing.assert_allclose(batched.numpy(), single, rtol=1e-12, atol=0)
        assert len(set(np.round(single, 6))) == 3, "the three images should score differently"
