"""Image files <-> tensors, with size limits, EXIF orientation, alpha, greyscale and 16-bit PNG.

One decoder for every entry point (evaluation, Serve, bulk jobs, training ingest), so every path
treats bad input the same way: it raises a subclass of :class:`ImageError` whose message is one line.

A :class:`DecodedImage` keeps RGB in float [0, 1] for the network plus what is needed to write the
result back in the input's own form: its mode (RGB, L, RGBA, LA), bit depth (8 or 16) and alpha.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from srgan.core.png import PNG_SIGNATURE, check_png_stream, png16_bytes, png16_to_planes
from srgan.errors import ImageDecodeError, ImageError, ImageTooLargeError, UnsupportedImageError

__all__ = [
    "ImageLimits",
    "DecodedImage",
    "ImageError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "UnsupportedImageError",
    "decode_image",
    "encode_image",
    "read_image_file",
    "SUPPORTED_FORMATS",
    "FORMAT_EXTENSIONS",
]

# PIL format name -> accepted for decoding.
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
FORMAT_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
_EXIF_ORIENTATION = 0x0112
# Leading bytes of the supported formats (BMP's "BM" is too short to trust on its own).
_SIGNATURES = (PNG_SIGNATURE, b"\xff\xd8\xff", b"RIFF")


@dataclass(frozen=True)
class ImageLimits:
    """Input limits: encoded bytes and decoded pixels (the latter also stops decompression bombs)."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 16_000_000


@dataclass(frozen=True)
class DecodedImage:
    """An image ready for the network.

    rgb: (3, H, W) float32 in [0, 1] (greyscale is replicated to three channels).
    alpha: (1, H, W) float32 in [0, 1], or None.
    mode: "RGB", "L", "RGBA" or "LA": what the input was, and what the output is written as.
    bit_depth: 8 or 16.
    """

    rgb: Tensor
    alpha: Tensor | None
    mode: str
    bit_depth: int = 8
    format: str = "PNG"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL reports it."""
        return int(self.rgb.shape[-1]), int(self.rgb.shape[-2])


# --------------------------------------------------------------------------------------- decoding


def _apply_orientation(x: Tensor, orientation: int) -> Tensor:
    """Apply an EXIF orientation (1..8) to a (C, H, W) tensor, as PIL's ``exif_transpose`` does."""
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-1, -2)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(x, k=-1, dims=(-2, -1))  # 90 degrees clockwise
    if orientation == 7:
        return x.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return torch.rot90(x, k=1, dims=(-2, -1))  # 90 degrees counter-clockwise
    return x


def _pil_to_planes(img: Image.Image) -> tuple[Tensor, str]:
    """PIL image (8-bit family) -> ((C, H, W) float32 in [0, 1], mode in RGB/L/RGBA/LA)."""
    mode = img.mode
    if mode == "P":
        mode = "RGBA" if "transparency" in img.info else "RGB"
    elif mode == "1":
        mode = "L"
    elif mode == "PA":
        mode = "RGBA"
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32) / 65535.0  # 16-bit greyscale outside PNG
        return torch.from_numpy(arr)[None], "L"
    elif mode not in ("RGB", "L", "RGBA", "LA"):
        mode = "RGB"  # CMYK, YCbCr, ...
    if img.mode != mode:
        img = img.convert(mode)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0, mode


def decode_image(data: bytes, *, limits: ImageLimits = ImageLimits()) -> DecodedImage:
    """Decode PNG/JPEG/WebP/BMP bytes with limits, EXIF orientation applied.

    Raises:
        ImageTooLargeError: more than ``limits.max_bytes`` bytes or ``limits.max_pixels`` pixels.
        UnsupportedImageError: not an image, or a format outside :data:`SUPPORTED_FORMATS`.
        ImageDecodeError: empty, corrupt or truncated data.
    """
    if not data:
        raise ImageDecodeError("empty image data")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        img = Image.open(io.BytesIO(data))  # lazy: reads only the header
    except UnidentifiedImageError:
        if data.startswith(_SIGNATURES):  # a known format whose header is cut or mangled
            raise ImageDecodeError("corrupt or truncated image header") from None
        raise UnsupportedImageError(f"not a recognised image; supported formats: {', '.join(SUPPORTED_FORMATS)}") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image rejected as a decompression bomb: {exc}") from None
    except Exception as exc:  # PIL raises assorted errors on malformed headers
        raise ImageDecodeError(f"cannot read image header: {exc}") from None
    if img.format not in SUPPORTED_FORMATS:
        raise UnsupportedImageError(f"image format {img.format} is not supported; use one of {', '.join(SUPPORTED_FORMATS)}")
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}")
    if width == 0 or height == 0:
        raise ImageDecodeError(f"image has no pixels ({width}x{height})")

    try:
        orientation = int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not lose the picture
        orientation = 1
    try:
        png_depth = check_png_stream(data) if img.format == "PNG" else 0
        if png_depth == 16:
            planes, mode = png16_to_planes(data)
            bit_depth = 16
        else:
            img.load()
            planes, mode = _pil_to_planes(img)
            bit_depth = 16 if img.mode.startswith("I") else 8
    except ImageError:
        raise
    except Exception as exc:  # truncated streams, bad CRCs, libjpeg errors, ...
        raise ImageDecodeError(f"corrupt or truncated {img.format} data: {exc}") from None
    finally:
        img.close()

    planes = _apply_orientation(planes, orientation)
    colour, alpha = (planes[:-1], planes[-1:]) if mode in ("RGBA", "LA") else (planes, None)
    rgb = colour.expand(3, -1, -1).contiguous() if colour.shape[0] == 1 else colour.contiguous()
    return DecodedImage(rgb=rgb, alpha=alpha, mode=mode, bit_depth=bit_depth, format=str(img.format))


def read_image_file(path, *, limits: ImageLimits = ImageLimits()) -> DecodedImage:
    """:func:`decode_image` on a local file."""
    with open(path, "rb") as f:
        data = f.read(limits.max_bytes + 1)
    return decode_image(data, limits=limits)


# --------------------------------------------------------------------------------------- encoding


def _luma(rgb: Tensor) -> Tensor:
    """(3, H, W) -> (1, H, W) with ITU-R 601 weights, as PIL's ``convert('L')``."""
    return (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]).unsqueeze(0)


def _output_planes(img: DecodedImage, *, keep_alpha: bool) -> tuple[Tensor, str]:
    """(C, H, W) float planes in [0, 1] in the image's own mode (alpha dropped if not kept)."""
    grey = img.mode in ("L", "LA")
    colour = _luma(img.rgb) if grey else img.rgb
    if keep_alpha and img.alpha is not None:
        return torch.cat([colour, img.alpha]).clamp(0, 1), ("LA" if grey else "RGBA")
    return colour.clamp(0, 1), ("L" if grey else "RGB")


def encode_image(img: DecodedImage, fmt: str = "png", *, quality: int = 95) -> bytes:
    """Encode to ``png``, ``jpeg`` or ``webp`` in the image's own mode.

    PNG keeps alpha and 16-bit depth; JPEG drops alpha; JPEG and WebP are 8-bit. ``quality``
    (1..100) applies to the lossy formats.
    """
    fmt = fmt.lower()
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt not in FORMAT_EXTENSIONS:
        raise UnsupportedImageError(f"output format {fmt!r} is not supported; use png, jpeg or webp")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    planes, mode = _output_planes(img, keep_alpha=fmt != "jpeg")
    hwc = planes.permute(1, 2, 0).numpy()
    if fmt == "png" and img.bit_depth == 16:
        return png16_bytes(np.rint(hwc * 65535.0).astype(np.uint16))
    arr = np.rint(hwc * 255.0).astype(np.uint8)
    pil = Image.fromarray(arr[:, :, 0] if mode == "L" else arr)  # mode follows the channel count
    buf = io.BytesIO()
    if fmt == "png":
        pil.save(buf, format="PNG")
    else:
        pil.save(buf, format=fmt.upper(), quality=quality)
    return buf.getvalue()


def with_planes(img: DecodedImage, *, rgb: Tensor, alpha: Tensor | None) -> DecodedImage:
    """A copy of ``img`` (same mode, depth, format) with new pixel planes."""
    return replace(img, rgb=rgb, alpha=alpha)
