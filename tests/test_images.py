"""srgan.core.images on real images: EXIF orientation, modes, 16-bit PNG, encoding, limits and errors.

Every expected value comes from an independent source: PIL's own conversions and ``exif_transpose``,
the arrays the files were written from, imageio, or the small spec-based PNG reader below.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

from conftest import load_photo
from srgan.core.png import png16_bytes as _png16_bytes
from srgan.core.images import (
    SUPPORTED_FORMATS,
    DecodedImage,
    ImageDecodeError,
    ImageError,
    ImageLimits,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_image,
    decode_random_crops,
    decode_rgb_uint8,
    encode_image,
    read_image_file,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ORIENTATION = 0x0112
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------ helpers


def _rgb_photo(h: int = 48, w: int = 72) -> np.ndarray:
    """A non-square (H, W, 3) uint8 window of a real photo (coffee cup: structured, not symmetric)."""
    return np.ascontiguousarray(load_photo("coffee.png")[120 : 120 + h, 200 : 200 + w, :3])


def _grey_photo(h: int = 48, w: int = 72) -> np.ndarray:
    """A (H, W) uint8 window of a real greyscale photo."""
    return np.ascontiguousarray(load_photo("camera.png")[100 : 100 + h, 180 : 180 + w])


def _alpha(h: int = 48, w: int = 72) -> np.ndarray:
    """A real-content alpha plane (another photo's luminance), with 0 and 255 present."""
    a = np.ascontiguousarray(load_photo("astronaut.png")[200 : 200 + h, 150 : 150 + w, 1]).copy()
    a[0, 0], a[0, 1] = 0, 255
    return a


def _save(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def _hwc(t: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor -> (H, W, C) numpy."""
    return t.permute(1, 2, 0).numpy()


def _pil_planes(data: bytes, mode: str) -> np.ndarray:
    """PIL's own decode of ``data`` converted to ``mode``, as (H, W, C) float32 in [0, 1]."""
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
    return arr[:, :, None] if arr.ndim == 2 else arr


def _check_rgb_tensor(img: DecodedImage, h: int, w: int) -> None:
    assert isinstance(img.rgb, torch.Tensor)
    assert img.rgb.dtype == torch.float32
    assert tuple(img.rgb.shape) == (3, h, w)
    assert float(img.rgb.min()) >= 0.0 and float(img.rgb.max()) <= 1.0
    assert img.size == (w, h)


@contextlib.contextmanager
def _no_pixel_work(m: pytest.MonkeyPatch):
    """Asserts that no pixel data is decoded (PIL's ``load``) or inflated (``zlib.decompressobj``)
    inside the block: "rejected from the header" as a count, not as a wall-clock bound that a loaded
    machine could miss."""
    calls: list[str] = []

    def spy(name, real):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)
        return wrapper

    m.setattr(Image.Image, "load", spy("Image.load", Image.Image.load))
    m.setattr(ImageFile.ImageFile, "load", spy("ImageFile.load", ImageFile.ImageFile.load))
    m.setattr(zlib, "decompressobj", spy("zlib.decompressobj", zlib.decompressobj))
    yield
    assert calls == [], f"pixel data was touched before the rejection: {calls}"


def _expect_error(cls: type[ImageError], data: bytes, **kwargs) -> ImageError:
    """decode_image(data) raises exactly ``cls`` (a sibling class fails), a ValueError with a one-line message."""
    with pytest.raises(cls) as info:
        decode_image(data, **kwargs)
    exc = info.value
    assert isinstance(exc, ImageError) and isinstance(exc, ValueError)
    message = str(exc)
    assert message.strip(), "error message must not be empty"
    assert "\n" not in message and "\r" not in message, f"message is not one line: {message!r}"
    return exc


def _photo_file(name: str) -> bytes:
    """Bytes of a file shipped with scikit-image's data (real JPEG/GIF/TIFF files)."""
    import skimage.data

    return (Path(skimage.data.__file__).parent / name).read_bytes()


def _chunks(data: bytes):
    """(tag, payload, stored_crc, payload_offset) for each PNG chunk."""
    assert data[:8] == PNG_SIGNATURE
    pos = 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        yield tag, payload, crc, pos + 8
        if tag == b"IEND":
            return
        pos += 12 + length


def _read_png16_spec(data: bytes) -> np.ndarray:
    """A minimal independent PNG decoder, written from the PNG specification.

    Non-interlaced 16-bit greyscale / grey+alpha / RGB / RGBA; checks every chunk CRC; undoes all five
    filter types. Returns (H, W, C) uint16.
    """
    ihdr, idat = None, b""
    for tag, payload, crc, _ in _chunks(data):
        assert zlib.crc32(tag + payload) & 0xFFFFFFFF == crc, f"bad CRC in {tag!r}"
        if tag == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", payload)
        elif tag == b"IDAT":
            idat += payload
    assert ihdr is not None
    width, height, depth, colour_type, compression, filter_method, interlace = ihdr
    assert (depth, compression, filter_method, interlace) == (16, 0, 0, 0)
    channels = {0: 1, 4: 2, 2: 3, 6: 4}[colour_type]
    bpp, stride = 2 * channels, 2 * channels * width
    raw = zlib.decompress(idat)
    assert len(raw) == height * (stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = [0] * stride
    for r in range(height):
        base = r * (stride + 1)
        ftype, line = raw[base], raw[base + 1 : base + 1 + stride]
        cur = [0] * stride
        for i in range(stride):
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            else:
                raise AssertionError(f"bad filter type {ftype}")
            cur[i] = (line[i] + pred) & 0xFF
        out[r] = cur
        prev = cur
    return out.view(">u2").astype(np.uint16).reshape(height, width, channels)


def _uint16_photo(channels: int, h: int = 40, w: int = 56) -> np.ndarray:
    """(H, W, C) uint16 from real photos, with real low bytes (values a 8-bit path would merge)."""
    rgb = _rgb_photo(h, w).astype(np.uint16)
    grey = _grey_photo(h, w).astype(np.uint16)
    alpha = _alpha(h, w).astype(np.uint16)
    low = load_photo("chelsea.png")[50 : 50 + h, 60 : 60 + w, :].astype(np.uint16)  # unrelated real bytes
    planes = {1: [grey], 2: [grey, alpha], 3: [rgb[..., 0], rgb[..., 1], rgb[..., 2]], 4: [rgb[..., 0], rgb[..., 1], rgb[..., 2], alpha]}
    hi = np.stack(planes[channels], axis=-1)
    arr = (hi << 8) | low[..., : channels] if channels <= 3 else (hi << 8) | np.concatenate([low, low[..., :1]], axis=-1)
    arr = arr.astype(np.uint16)
    arr[0, 0] = 65535
    arr[0, 1] = 0
    return arr


def _bomb_png(width: int, height: int) -> bytes:
    """A valid 8-bit greyscale all-black PNG, compressed row block by row block (never held raw in memory)."""

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)

    comp = zlib.compressobj(1)
    rows_per_block = max(1, 4_000_000 // (width + 1))
    block = bytes((width + 1) * rows_per_block)  # filter byte 0 + zero pixels per row
    parts, left = [], height
    while left > 0:
        n = min(rows_per_block, left)
        parts.append(comp.compress(block if n == rows_per_block else bytes((width + 1) * n)))
        left -= n
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_on_jpeg_matches_pil_exif_transpose(orientation):
    img = Image.fromarray(_rgb_photo())
    exif = img.getexif()
    exif[ORIENTATION] = orientation
    data = _save(img, "JPEG", quality=92, exif=exif.tobytes())

    with Image.open(io.BytesIO(data)) as im:
        assert im.getexif().get(ORIENTATION) == orientation
        raw = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.float32) / 255.0
    if orientation == 1:
        assert np.array_equal(expected, raw)
    else:  # the reference really is transformed, so ignoring EXIF would fail
        assert expected.shape != raw.shape or not np.allclose(expected, raw)

    dec = decode_image(data)
    assert dec.mode == "RGB" and dec.alpha is None and dec.format == "JPEG"
    _check_rgb_tensor(dec, expected.shape[0], expected.shape[1])
    np.testing.assert_allclose(_hwc(dec.rgb), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("orientation", [3, 6, 7, 8])
def test_exif_orientation_on_rgba_png_turns_alpha_too(orientation):
    img = Image.fromarray(np.dstack([_rgb_photo(), _alpha()]))
    exif = img.getexif()
    exif[ORIENTATION] = orientation
    data = _save(img, "PNG", exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as im:
        assert im.getexif().get(ORIENTATION) == orientation
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGBA"), dtype=np.float32) / 255.0

    dec = decode_image(data)
    assert dec.mode == "RGBA"
    _check_rgb_tensor(dec, expected.shape[0], expected.shape[1])
    np.testing.assert_allclose(_hwc(dec.rgb), expected[..., :3], rtol=0, atol=1e-6)
    assert dec.alpha is not None and tuple(dec.alpha.shape) == (1, expected.shape[0], expected.shape[1])
    np.testing.assert_allclose(_hwc(dec.alpha)[..., 0], expected[..., 3], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------ modes


def _mode_case(kind: str) -> tuple[Image.Image, dict]:
    rgb, grey, alpha = _rgb_photo(), _grey_photo(), _alpha()
    if kind == "RGB":
        return Image.fromarray(rgb), {}
    if kind == "L":
        return Image.fromarray(grey), {}
    if kind == "RGBA":
        return Image.fromarray(np.dstack([rgb, alpha])), {}
    if kind == "LA":
        return Image.fromarray(np.dstack([grey, alpha])), {}
    if kind in ("P+transparency", "P"):
        pal = Image.fromarray(rgb).quantize(colors=32)
        if kind == "P":
            return pal, {}
        index = int(np.bincount(np.asarray(pal).ravel()).argmax())  # the commonest colour becomes transparent
        return pal, {"transparency": index}
    if kind == "1":
        return Image.fromarray(grey > 110), {}
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind,pil_mode,expected_mode",
    [
        ("RGB", "RGB", "RGB"),
        ("L", "L", "L"),
        ("RGBA", "RGBA", "RGBA"),
        ("LA", "LA", "LA"),
        ("P+transparency", "P", "RGBA"),
        ("P", "P", "RGB"),
        ("1", "1", "L"),
    ],
)
def test_png_modes_decode_to_rgb_plus_alpha(kind, pil_mode, expected_mode):
    img, params = _mode_case(kind)
    data = _save(img, "PNG", **params)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == pil_mode  # the file really is in the mode under test

    dec = decode_image(data)
    h, w = img.size[1], img.size[0]
    assert dec.mode == expected_mode
    assert dec.bit_depth == 8 and dec.format == "PNG"
    _check_rgb_tensor(dec, h, w)

    expected = _pil_planes(data, expected_mode)  # PIL's own conversion of the same file
    colour = expected[..., :3] if expected_mode.startswith("RGB") else np.repeat(expected[..., :1], 3, axis=2)
    np.testing.assert_allclose(_hwc(dec.rgb), colour, rtol=0, atol=1e-6)
    if expected_mode in ("RGBA", "LA"):
        assert dec.alpha is not None
        assert dec.alpha.dtype == torch.float32 and tuple(dec.alpha.shape) == (1, h, w)
        np.testing.assert_allclose(_hwc(dec.alpha)[..., 0], expected[..., -1], rtol=0, atol=1e-6)
    else:
        assert dec.alpha is None

    if kind == "P+transparency":
        assert float(dec.alpha.min()) == 0.0 and float(dec.alpha.max()) == 1.0
    if kind == "1":
        assert set(np.unique(dec.rgb.numpy()).tolist()) == {0.0, 1.0}
    if expected_mode in ("L", "LA"):
        assert torch.equal(dec.rgb[0], dec.rgb[1]) and torch.equal(dec.rgb[1], dec.rgb[2])


@pytest.mark.parametrize("fmt,params", [("BMP", {}), ("WEBP", {"lossless": True})])
def test_other_supported_lossless_formats_decode_exactly(fmt, params):
    assert fmt in SUPPORTED_FORMATS
    rgb = _rgb_photo()
    dec = decode_image(_save(Image.fromarray(rgb), fmt, **params))
    assert dec.format == fmt and dec.mode == "RGB"
    np.testing.assert_allclose(_hwc(dec.rgb), rgb.astype(np.float32) / 255.0, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ 16-bit PNG


def _assert_full_precision(dec: DecodedImage, arr: np.ndarray) -> None:
    """Decoded planes equal the uint16 source exactly (so steps below 1/255 survive)."""
    colour = np.rint(_hwc(dec.rgb).astype(np.float64) * 65535.0).astype(np.int64)
    channels = arr.shape[2]
    src_colour = arr[..., :3] if channels >= 3 else np.repeat(arr[..., :1], 3, axis=2)
    np.testing.assert_array_equal(colour, src_colour.astype(np.int64))
    if channels in (2, 4):
        assert dec.alpha is not None and tuple(dec.alpha.shape) == (1, arr.shape[0], arr.shape[1])
        np.testing.assert_array_equal(
            np.rint(_hwc(dec.alpha)[..., 0].astype(np.float64) * 65535.0).astype(np.int64), arr[..., -1].astype(np.int64)
        )
    else:
        assert dec.alpha is None
    # pixels that an 8-bit decode would merge (same high byte) stay distinct
    hi = arr[..., 0] >> 8
    same_hi = hi[:, :-1] == hi[:, 1:]
    differ = arr[..., 0][:, :-1] != arr[..., 0][:, 1:]
    assert (same_hi & differ).any(), "source must contain sub-1/255 steps"
    got = dec.rgb[0].numpy()
    assert (got[:, :-1] != got[:, 1:])[same_hi & differ].all()
    assert float(dec.rgb.min()) >= 0.0 and float(dec.rgb.max()) <= 1.0 and dec.rgb.dtype == torch.float32


def test_16bit_greyscale_png_written_by_pil_keeps_full_precision():
    arr = _uint16_photo(1)
    img = Image.fromarray(arr[..., 0])
    assert img.mode == "I;16"
    data = _save(img, "PNG")
    assert data[24] == 16 and data[25] == 0  # IHDR: 16-bit greyscale

    dec = decode_image(data)
    assert dec.bit_depth == 16 and dec.mode == "L" and dec.format == "PNG"
    _check_rgb_tensor(dec, arr.shape[0], arr.shape[1])
    _assert_full_precision(dec, arr)


@pytest.mark.parametrize("channels,mode", [(1, "L"), (2, "LA"), (3, "RGB"), (4, "RGBA")])
def test_16bit_png_from_png16_bytes_keeps_full_precision(channels, mode):
    arr = _uint16_photo(channels)
    data = _png16_bytes(arr)
    dec = decode_image(data)
    assert dec.bit_depth == 16 and dec.mode == mode
    _check_rgb_tensor(dec, arr.shape[0], arr.shape[1])
    _assert_full_precision(dec, arr)


@pytest.mark.parametrize("channels,mode,colour_type", [(1, "L", 0), (2, "LA", 4), (3, "RGB", 2), (4, "RGBA", 6)])
def test_encode_16bit_png_round_trips_exactly(channels, mode, colour_type):
    arr = _uint16_photo(channels)
    dec = decode_image(_png16_bytes(arr))
    encoded = encode_image(dec, "png")
    assert encoded[:8] == PNG_SIGNATURE
    assert (encoded[24], encoded[25]) == (16, colour_type)

    again = decode_image(encoded)
    assert again.mode == mode and again.bit_depth == 16
    assert torch.equal(again.rgb, dec.rgb)
    if dec.alpha is None:
        assert again.alpha is None
    else:
        assert torch.equal(again.alpha, dec.alpha)
    np.testing.assert_array_equal(_read_png16_spec(encoded), arr)  # and the file holds the source values


def test_spec_reader_agrees_with_pil_on_a_pil_written_16bit_png():
    """Validates the test's own PNG reader on a file from another encoder (PIL, adaptive filters)."""
    arr = _uint16_photo(1)
    np.testing.assert_array_equal(_read_png16_spec(_save(Image.fromarray(arr[..., 0]), "PNG")), arr)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_bytes_is_a_valid_png_for_independent_decoders(channels):
    import imageio.v3 as iio

    arr = _uint16_photo(channels)
    data = _png16_bytes(arr)
    np.testing.assert_array_equal(_read_png16_spec(data), arr)  # all CRCs, IHDR, zlib, filters per spec

    with Image.open(io.BytesIO(data)) as im:
        im.verify()  # PIL's chunk/CRC check
    read = iio.imread(data, extension=".png")
    assert read.shape[:2] == arr.shape[:2]
    if channels == 1:
        # imageio (Pillow plugin) reads 16-bit greyscale at full depth: identical uint16 values
        assert read.dtype == np.uint16
        np.testing.assert_array_equal(read, arr[..., 0])
    else:
        # Pillow cannot hold 16-bit colour; it keeps the most significant byte of every sample
        # (and opens 16-bit grey+alpha as RGBA)
        assert read.dtype == np.uint8
        expected = (arr >> 8).astype(np.uint8)
        if channels == 2:
            expected = expected[..., [0, 0, 0, 1]]
        np.testing.assert_array_equal(read, expected)


# ---------------------------------------------------------------------------------- encode_image


@pytest.mark.parametrize("kind", ["RGB", "L", "RGBA", "LA"])
def test_encode_png_keeps_mode_and_alpha(kind):
    img, _ = _mode_case(kind)
    dec = decode_image(_save(img, "PNG"))
    encoded = encode_image(dec, "png")
    with Image.open(io.BytesIO(encoded)) as im:
        assert im.format == "PNG" and im.mode == kind
        np.testing.assert_array_equal(np.asarray(im), np.asarray(img))  # 8-bit values exactly
    again = decode_image(encoded)
    assert again.mode == kind and again.bit_depth == 8
    assert torch.equal(again.rgb, dec.rgb)
    assert (again.alpha is None) == (dec.alpha is None)
    if dec.alpha is not None:
        assert torch.equal(again.alpha, dec.alpha)


@pytest.mark.parametrize("kind,jpeg_mode", [("RGBA", "RGB"), ("LA", "L"), ("RGB", "RGB"), ("L", "L")])
def test_encode_jpeg_drops_alpha(kind, jpeg_mode):
    img, _ = _mode_case(kind)
    dec = decode_image(_save(img, "PNG"))
    for fmt in ("jpeg", "jpg", "JPEG"):
        encoded = encode_image(dec, fmt, quality=95)
        with Image.open(io.BytesIO(encoded)) as im:
            assert im.format == "JPEG" and im.mode == jpeg_mode
    again = decode_image(encoded)
    assert again.alpha is None and again.mode == jpeg_mode
    assert float((again.rgb - dec.rgb).abs().mean()) < 0.02  # same picture, lossy


def test_jpeg_quality_changes_size():
    dec = decode_image(_save(Image.fromarray(load_photo("chelsea.png")), "PNG"))
    sizes = [len(encode_image(dec, "jpeg", quality=q)) for q in (10, 50, 95)]
    assert sizes[0] < sizes[1] < sizes[2]


@pytest.mark.parametrize("fmt", ["gif", "tiff", "bmp", "exr", ""])
def test_encode_unsupported_format_raises(fmt):
    dec = decode_image(_save(Image.fromarray(_rgb_photo()), "PNG"))
    with pytest.raises(UnsupportedImageError):
        encode_image(dec, fmt)


@pytest.mark.parametrize("quality", [0, -1, 101, 1000])
def test_encode_quality_out_of_range_raises_value_error(quality):
    dec = decode_image(_save(Image.fromarray(_rgb_photo()), "PNG"))
    with pytest.raises(ValueError):
        encode_image(dec, "jpeg", quality=quality)
    for ok in (1, 100):
        assert encode_image(dec, "jpeg", quality=ok)[:2] == b"\xff\xd8"


# ----------------------------------------------------------------------------------------- errors


def test_error_classes():
    for cls in (ImageDecodeError, ImageTooLargeError, UnsupportedImageError):
        assert issubclass(cls, ImageError) and issubclass(cls, ValueError)
    kinds = {ImageDecodeError.kind, ImageTooLargeError.kind, UnsupportedImageError.kind}
    assert len(kinds) == 3


def test_empty_bytes_is_decode_error():
    _expect_error(ImageDecodeError, b"")


def test_random_and_text_bytes_are_unsupported():
    rng = np.random.default_rng(2024)
    _expect_error(UnsupportedImageError, rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _expect_error(UnsupportedImageError, b"this is not an image, it is a sentence.\n" * 20)


def test_truncated_real_png_is_decode_error(datasets_dir):
    data = (datasets_dir / "Set5" / "HR" / "baby.png").read_bytes()
    decode_image(data)  # the whole file is fine
    _expect_error(ImageDecodeError, data[: len(data) // 2])


def test_truncated_real_jpeg_is_decode_error():
    data = _photo_file("rocket.jpg")
    decode_image(data)
    _expect_error(ImageDecodeError, data[: len(data) // 2])


def test_truncated_16bit_png_is_decode_error():
    data = _png16_bytes(_uint16_photo(3))
    decode_image(data)
    _expect_error(ImageDecodeError, data[: len(data) // 2])


@pytest.mark.parametrize("source,cut", [("png", 33), ("png", 50), ("jpeg", 20)])
def test_file_truncated_inside_its_header_is_decode_error(source, cut, datasets_dir):
    """A file with an intact PNG/JPEG signature, cut short in its header, is truncated data ("corrupt"),
    not an unrecognised format. (33 bytes of PNG = signature + the complete IHDR chunk.)"""
    data = (datasets_dir / "Set5" / "HR" / "baby.png").read_bytes() if source == "png" else _photo_file("rocket.jpg")
    assert data.startswith(PNG_SIGNATURE if source == "png" else b"\xff\xd8\xff")
    _expect_error(ImageDecodeError, data[:cut])


def _flip_idat_byte(data: bytes) -> bytes:
    """Flip one byte in the middle of the first IDAT chunk (its stored CRC no longer matches)."""
    for tag, payload, _, offset in _chunks(data):
        if tag == b"IDAT":
            corrupt = bytearray(data)
            corrupt[offset + len(payload) // 2] ^= 0xFF
            return bytes(corrupt)
    raise AssertionError("no IDAT")


def test_corrupt_8bit_png_with_bad_idat_crc_is_decode_error(datasets_dir):
    data = _flip_idat_byte((datasets_dir / "Set5" / "HR" / "bird.png").read_bytes())
    with Image.open(io.BytesIO(data)) as im, pytest.raises(SyntaxError):
        im.verify()  # PIL itself knows the file is broken (CRC mismatch)
    _expect_error(ImageDecodeError, data)


def test_corrupt_16bit_png_is_decode_error_not_a_crash(tmp_path):
    """Decoding runs in a child process, so a native crash shows up as a failure instead of killing pytest."""
    data = _flip_idat_byte(_png16_bytes(_uint16_photo(3)))
    path = tmp_path / "corrupt16.png"
    path.write_bytes(data)
    code = (
        "import sys\n"
        "from srgan.core.images import decode_image, ImageDecodeError\n"
        "try:\n"
        "    decode_image(open(sys.argv[1], 'rb').read())\n"
        "except ImageDecodeError as exc:\n"
        "    assert '\\n' not in str(exc)\n"
        "    print('ImageDecodeError:', exc)\n"
        "    sys.exit(0)\n"
        "print('decoded without error')\n"
        "sys.exit(3)\n"
    )

    def no_core_dump():
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=no_core_dump,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.returncode == 0, (
        f"decode_image on a corrupt 16-bit PNG ended with return code {proc.returncode} "
        f"(negative = killed by that signal, -11 = SIGSEGV); stdout={proc.stdout[-300:]!r} stderr={proc.stderr[-300:]!r}"
    )


def test_bytes_over_max_bytes_are_too_large(datasets_dir):
    data = (datasets_dir / "Set5" / "HR" / "butterfly.png").read_bytes()
    _expect_error(ImageTooLargeError, data, limits=ImageLimits(max_bytes=len(data) - 1))
    assert decode_image(data, limits=ImageLimits(max_bytes=len(data))).size == (256, 256)


def test_pixels_over_max_pixels_are_too_large(datasets_dir):
    data = (datasets_dir / "Set5" / "HR" / "woman.png").read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
    _expect_error(ImageTooLargeError, data, limits=ImageLimits(max_pixels=w * h - 1))
    assert decode_image(data, limits=ImageLimits(max_pixels=w * h)).size == (w, h)
    jpeg = _photo_file("rocket.jpg")
    _expect_error(ImageTooLargeError, jpeg, limits=ImageLimits(max_pixels=10_000))


def test_decompression_bomb_png_is_rejected_fast(monkeypatch):
    """20000x20000 all-black greyscale PNG: 400 megapixels in under 2 MB."""
    bomb = _bomb_png(20000, 20000)
    assert len(bomb) < 4_000_000
    with monkeypatch.context() as m:  # it is a well-formed PNG: PIL reads its header and CRCs
        m.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(io.BytesIO(bomb)) as im:
            assert im.size == (20000, 20000) and im.mode == "L"
            im.verify()
        # with PIL's own bomb guard off, the module's pixel limit alone must stop it before decoding
        with _no_pixel_work(m):
            exc = _expect_error(ImageTooLargeError, bomb)
        assert "20000" in str(exc)

    with monkeypatch.context() as m, _no_pixel_work(m):  # and with PIL's defaults
        _expect_error(ImageTooLargeError, bomb)
        _expect_error(ImageTooLargeError, bomb, limits=ImageLimits(max_pixels=1_000_000))


def test_bomb_below_pils_own_threshold_is_stopped_by_max_pixels(monkeypatch):
    """8000x8000 = 64 Mpx: under PIL's bomb threshold (~89 Mpx), over the default 16 Mpx limit."""
    bomb = _bomb_png(8000, 8000)
    assert 8000 * 8000 < Image.MAX_IMAGE_PIXELS
    inflated = sum(len(p) for tag, p, _, _ in _chunks(bomb) if tag == b"IDAT")
    assert len(zlib.decompress(b"".join(p for tag, p, _, _ in _chunks(bomb) if tag == b"IDAT"))) == 8000 * 8001
    assert inflated < 1_000_000

    with monkeypatch.context() as m, _no_pixel_work(m):
        exc = _expect_error(ImageTooLargeError, bomb)
    assert "8000" in str(exc)


@pytest.mark.parametrize("name,pil_format", [("no_time_for_that_tiny.gif", "GIF"), ("multipage.tif", "TIFF")])
def test_formats_pil_reads_but_not_supported_are_rejected(name, pil_format):
    data = _photo_file(name)
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == pil_format  # PIL can read it
    assert pil_format not in SUPPORTED_FORMATS
    _expect_error(UnsupportedImageError, data)
    # and one made here from a photo
    _expect_error(UnsupportedImageError, _save(Image.fromarray(_rgb_photo()), pil_format))


# -------------------------------------------------------------------------------- read_image_file


@pytest.mark.parametrize("name", ["baby", "bird", "butterfly", "head", "woman"])
def test_read_image_file_on_set5(name, datasets_dir):
    path = datasets_dir / "Set5" / "HR" / f"{name}.png"
    with Image.open(path) as im:
        expected = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        assert im.mode == "RGB"
    dec = read_image_file(path)
    assert dec.mode == "RGB" and dec.alpha is None and dec.bit_depth == 8 and dec.format == "PNG"
    _check_rgb_tensor(dec, expected.shape[0], expected.shape[1])
    np.testing.assert_allclose(_hwc(dec.rgb), expected, rtol=0, atol=1e-6)


def test_read_image_file_on_greyscale_set14_bridge(datasets_dir):
    path = datasets_dir / "Set14" / "HR" / "bridge.png"
    with Image.open(path) as im:
        assert im.mode == "L"
        grey = np.asarray(im, dtype=np.float32) / 255.0
    dec = read_image_file(path)
    assert dec.mode == "L" and dec.alpha is None and dec.bit_depth == 8
    _check_rgb_tensor(dec, 512, 512)
    for c in range(3):
        np.testing.assert_allclose(dec.rgb[c].numpy(), grey, rtol=0, atol=1e-6)


def test_read_image_file_respects_max_bytes(datasets_dir):
    path = datasets_dir / "Set14" / "HR" / "bridge.png"
    size = path.stat().st_size
    with pytest.raises(ImageTooLargeError):
        read_image_file(path, limits=ImageLimits(max_bytes=size - 1))
    assert read_image_file(path, limits=ImageLimits(max_bytes=size)).mode == "L"


def _interlaced_png(arr: np.ndarray, bit_depth: int) -> bytes:
    """Write an Adam7-interlaced PNG by hand (PIL cannot write one): each pass's rows with filter 0."""
    height, width, channels = arr.shape
    dtype = ">u2" if bit_depth == 16 else np.uint8
    raw = b""
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
        sub = arr[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        rows = sub.astype(dtype).reshape(sub.shape[0], -1).view(np.uint8)
        raw += np.concatenate([np.zeros((sub.shape[0], 1), np.uint8), rows], axis=1).tobytes()

    def chunk(tag, payload):
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)

    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 1)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_interlaced_png_passes_the_stream_check(bit_depth):
    """Adam7 PNGs have a different row layout; the pre-decode check must accept them, and pixels survive."""
    rng = np.random.default_rng(7)
    top = 255 if bit_depth == 8 else 65535
    arr = rng.integers(0, top + 1, size=(13, 11, 3)).astype(np.uint8 if bit_depth == 8 else np.uint16)
    decoded = decode_image(_interlaced_png(arr, bit_depth))
    assert decoded.bit_depth == bit_depth and decoded.size == (11, 13)
    assert np.array_equal(np.rint(decoded.rgb.permute(1, 2, 0).numpy() * top).astype(np.int64), arr.astype(np.int64))


# ------------------------------------------------------------------------ the training decoder (uint8)


def _uint8_cases() -> dict[str, bytes]:
    rgb, grey, alpha = _rgb_photo(), _grey_photo(), _alpha()
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[ORIENTATION] = 6
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.info["transparency"] = 3
    return {
        "rgb-png": _save(Image.fromarray(rgb), "PNG"),
        "grey-png": _save(Image.fromarray(grey), "PNG"),
        "rgba-png": _save(Image.fromarray(np.dstack([rgb, alpha])), "PNG"),
        "palette-transparency-png": _save(palette, "PNG", transparency=3),
        "rgb-16bit-png": _png16_bytes(_uint16_photo(3)),
        "grey-alpha-16bit-png": _png16_bytes(_uint16_photo(2)),
        "jpeg": _save(Image.fromarray(rgb), "JPEG", quality=90),
        "cmyk-jpeg": _save(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=90),
        "exif-rotated-jpeg": _save(rotated, "JPEG", quality=90, exif=exif.tobytes()),
        "webp": _save(Image.fromarray(rgb), "WEBP", quality=90),
        "bmp": _save(Image.fromarray(rgb), "BMP"),
    }


@pytest.mark.parametrize("case", sorted(_uint8_cases()))
def test_uint8_training_decoder_equals_the_rounded_float_decoder(case):
    data = _uint8_cases()[case]
    got = decode_rgb_uint8(data)  # (H, W, 3)
    want = decode_image(data).rgb.mul(255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert got.dtype == np.uint8 and got.shape == want.shape and got.shape[2] == 3
    assert np.array_equal(got, want)


def test_uint8_training_decoder_raises_the_same_errors(datasets_dir):
    for data, cls in ((b"", ImageDecodeError), (b"not an image at all", UnsupportedImageError),
                      (_flip_idat_byte((datasets_dir / "Set5" / "HR" / "bird.png").read_bytes()), ImageDecodeError),
                      (_flip_idat_byte(_png16_bytes(_uint16_photo(3))), ImageDecodeError)):
        with pytest.raises(cls):
            decode_rgb_uint8(data)
    with pytest.raises(ImageTooLargeError):
        decode_rgb_uint8(_save(Image.fromarray(_rgb_photo()), "PNG"), limits=ImageLimits(max_pixels=100))


def test_8bit_pngs_are_inflated_once_and_16bit_ones_checked_before_torchvision(monkeypatch, datasets_dir):
    """The stream check inflates only 16-bit PNGs (torchvision's libpng crashes on some malformed ones);
    8-bit PNGs get their CRCs checked and go to PIL, which inflates them once."""
    import srgan.core.png as png

    calls = []
    real = zlib.decompressobj
    monkeypatch.setattr(png.zlib, "decompressobj", lambda *a, **k: calls.append(1) or real(*a, **k))
    decode_rgb_uint8((datasets_dir / "Set5" / "HR" / "bird.png").read_bytes())
    assert calls == []
    decode_rgb_uint8(_png16_bytes(_uint16_photo(3)))
    assert calls  # the structural check inflated it before torchvision's decoder saw it


@pytest.mark.parametrize("orientation", range(1, 9))
def test_uint8_training_decoder_applies_every_exif_orientation(orientation):
    img = Image.fromarray(np.dstack([_rgb_photo(), _alpha()]))  # non-square, with alpha (dropped)
    exif = img.getexif()
    exif[ORIENTATION] = orientation
    data = _save(img, "PNG", exif=exif.tobytes())
    want = decode_image(data).rgb.mul(255.0).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(decode_rgb_uint8(data), want)


# (crop, count) on the 40x56 test photos: 2 crops of 8 px take the per-window path (PIL crops, only the
# windows are converted); 5 of 24 px cover more than a quarter of the image and take the whole-array path.
CROP_REGIMES = [(8, 2), (24, 5)]


@pytest.mark.parametrize("crop, count", CROP_REGIMES)
@pytest.mark.parametrize("case", sorted(_uint8_cases()))
def test_crops_cut_before_the_array_equal_crops_of_the_whole_array(case, crop, count):
    """The training fast path gives the same windows, at the same positions for the same rng, as
    cropping the whole decoded array."""
    from srgan.io.datasets import random_crops

    data = _uint8_cases()[case]
    fast = decode_random_crops(data, crop_size=crop, count=count, rng=np.random.default_rng(7))
    whole = random_crops(decode_rgb_uint8(data), crop, count, np.random.default_rng(7))
    assert fast.dtype == np.uint8 and fast.shape == (count, 3, crop, crop)
    assert np.array_equal(fast, whole)


@pytest.mark.parametrize("crop, count", CROP_REGIMES)
@pytest.mark.parametrize("orientation", range(1, 9))
def test_fast_crops_follow_every_exif_orientation(orientation, crop, count):
    from srgan.io.datasets import random_crops

    img = Image.fromarray(np.dstack([_rgb_photo(), _alpha()]))  # non-square: the oriented frame differs
    exif = img.getexif()
    exif[ORIENTATION] = orientation
    data = _save(img, "PNG", exif=exif.tobytes())
    fast = decode_random_crops(data, crop_size=crop, count=count, rng=np.random.default_rng(orientation))
    whole = random_crops(decode_rgb_uint8(data), crop, count, np.random.default_rng(orientation))
    assert np.array_equal(fast, whole)
    assert decode_random_crops(data, crop_size=10_000, count=1, rng=np.random.default_rng(0)) is None  # too small
