"""Image files <-> tensors, with size limits, EXIF orientation, alpha, greyscale and 16-bit PNG.

One decoder for every entry point (evaluation, Serve, bulk jobs, training ingest), so every path
treats bad input the same way: it raises a subclass of :class:`ImageError` whose message is one line.

A :class:`DecodedImage` keeps RGB in float [0, 1] for the network plus what is needed to write the
result back in the input's own form: its mode (RGB, L, RGBA, LA), bit depth (8 or 16) and alpha.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from srgan.core.png import PNG_SIGNATURE, check_png_stream, png16_bytes, png16_to_planes
from srgan.errors import ImageDecodeError, ImageError, ImageTooLargeError, UnsupportedImageError

if TYPE_CHECKING:  # torch is imported where it runs: Ray Data's decode and counting processes never need it
    import torch
    from torch import Tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageLimits",
    "DecodedImage",
    "ImageError",
    "ImageDecodeError",
    "ImageTooLargeError",
    "UnsupportedImageError",
    "decode_image",
    "decode_rgb_uint8",
    "decode_random_crops",
    "random_windows",
    "decode_random_crops_on",
    "CropBatcher",
    "encode_image",
    "read_image_file",
    "SUPPORTED_FORMATS",
    "FORMAT_EXTENSIONS",
    "CONVERSION_KINDS",
    "TRAINING_BACKGROUND",
]

# PIL format name -> accepted for decoding.
SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
FORMAT_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
_EXIF_ORIENTATION = 0x0112
# Leading bytes of the supported formats (BMP's "BM" is too short to trust on its own).
_SIGNATURES = (PNG_SIGNATURE, b"\xff\xd8\xff", b"RIFF")
# What the training decoder converts on its way to 8-bit RGB (reported per object, for counting):
# a 16-bit source rounded to 8 bits, CMYK (or another colour space) to RGB, alpha composited on
# TRAINING_BACKGROUND, an EXIF orientation applied.
CONVERSION_KINDS = ("16bit", "cmyk", "alpha", "exif_rotated")
# The background transparent pixels are composited on for training: white, as a page shows them. The
# colour stored under a transparent pixel is arbitrary (a palette entry, zeros, an editor's
# leftovers): dropping alpha would train on whatever it is; compositing makes it one defined value.
TRAINING_BACKGROUND = (255, 255, 255)


# The image files the project reads from folders and prefixes (evaluation sets, training data, bulk inputs).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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
    import torch

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


def _pil_to_uint8(img: Image.Image, *, planar: bool = False) -> tuple[np.ndarray | None, str]:
    """PIL image -> ((H, W, C) uint8, mode in RGB/L/RGBA/LA), or (None, "L") for 16-bit greyscale.

    ``planar``: the array is an (H, W, C) view of (C, H, W) planes, copied out band by band, so that
    channel-first windows are row copies rather than gathers of every third byte (16 crops of a
    500x375 JPEG: 0.205 against 0.24 ms for the conversion and the windows; one small window: slower)."""
    mode = img.mode
    if mode == "P":
        mode = "RGBA" if "transparency" in img.info else "RGB"
    elif mode == "1":
        mode = "L"
    elif mode == "PA":
        mode = "RGBA"
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        return None, "L"  # 16-bit greyscale outside PNG: no 8-bit view
    elif mode not in ("RGB", "L", "RGBA", "LA"):
        mode = "RGB"  # CMYK, YCbCr, ...
    if img.mode != mode:
        img = img.convert(mode)
    if planar:
        planes = np.stack([np.asarray(band, dtype=np.uint8) for band in img.split()])  # (C, H, W)
        return planes.transpose(1, 2, 0), mode
    arr = np.asarray(img, dtype=np.uint8)
    return (arr[:, :, None] if arr.ndim == 2 else arr), mode


def _open_checked(data: bytes, limits: ImageLimits) -> tuple[Image.Image, int]:
    """The header, checked against the limits before any pixel is decoded; returns (lazy image, EXIF orientation)."""
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
    return img, orientation


def _load_checked(data: bytes, limits: ImageLimits) -> tuple[Image.Image, int, str, bool]:
    """The checked header, then the pixels: -> (image, EXIF orientation, format, is a 16-bit PNG). An
    8-bit image comes back loaded; a 16-bit PNG is left to torchvision (after the full stream check).
    Decoding errors become :class:`ImageDecodeError`; the caller closes the image."""
    img, orientation = _open_checked(data, limits)
    fmt = str(img.format)
    try:
        png16 = fmt == "PNG" and check_png_stream(data, inflate_8bit=False) == 16
        if not png16:
            img.load()
    except Exception as exc:  # truncated streams, bad CRCs, libjpeg errors, ...
        img.close()
        if isinstance(exc, ImageError):
            raise
        raise ImageDecodeError(f"corrupt or truncated {fmt} data: {exc}") from None
    return img, orientation, fmt, png16


def _pixels(img: Image.Image, data: bytes, png16: bool, *, planar: bool = False) -> tuple[np.ndarray | Tensor, str, int]:
    """-> (pixels, mode, bit depth): the decoder's own (H, W, C) uint8 array for 8-bit sources (a view of
    planes if ``planar``), else (C, H, W) float32 in [0, 1]."""
    if png16:
        planes, mode = png16_to_planes(data)
        return planes, mode, 16
    arr, mode = _pil_to_uint8(img, planar=planar)
    if arr is None:  # 16-bit greyscale outside PNG
        import torch  # here only: 8-bit decodes (Ray Data's decode tasks) never load it

        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 65535.0)[None], mode, 16
    return arr, mode, 8


def _decode_pixels(data: bytes, limits: ImageLimits) -> tuple[np.ndarray | Tensor, str, int, str, int]:
    """-> (pixels, mode, bit depth, format, EXIF orientation), orientation not yet applied."""
    img, orientation, fmt, png16 = _load_checked(data, limits)
    try:
        pixels, mode, bit_depth = _pixels(img, data, png16)
    except ImageError:
        raise
    except Exception as exc:  # torchvision's 16-bit decoder on a stream the check let through
        raise ImageDecodeError(f"corrupt or truncated {fmt} data: {exc}") from None
    finally:
        img.close()
    return pixels, mode, bit_depth, fmt, orientation


def _conversions(img: Image.Image, orientation: int, png16: bool) -> list[str]:
    """The :data:`CONVERSION_KINDS` the training decoder applies to this (checked, unloaded) image."""
    kinds = []
    if png16 or img.mode.startswith("I"):
        kinds.append("16bit")
    if img.mode not in ("RGB", "RGBA", "L", "LA", "P", "PA", "1") and not img.mode.startswith("I"):
        kinds.append("cmyk")  # CMYK mostly; YCbCr, LAB, ... too: whatever PIL converts to RGB
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        kinds.append("alpha")
    if orientation in range(2, 9):
        kinds.append("exif_rotated")
    return kinds


def _composite(arr: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """(H, W, C) uint8 with alpha last (LA or RGBA) -> (H, W, 3) uint8 composited on ``background``:
    round((c * a + b * (255 - a)) / 255) per channel, in integers (the same values on every path)."""
    colour = arr[:, :, :-1].astype(np.uint16)
    alpha = arr[:, :, -1:].astype(np.uint16)
    bg = np.asarray(background, np.uint16)
    return ((colour * alpha + bg * (255 - alpha) + 127) // 255).astype(np.uint8)


def _colour(arr: np.ndarray, mode: str, background: tuple[int, int, int] | None) -> np.ndarray:
    """(H, W, C) uint8 in ``mode`` -> its (H, W, 3) or (H, W, 1) colour: alpha dropped (``background``
    None) or composited on ``background``."""
    if mode not in ("RGBA", "LA"):
        return arr
    return arr[:, :, :-1] if background is None else _composite(arr, background)


def _rgb_view(pixels: np.ndarray | Tensor, mode: str, orientation: int, background: tuple[int, int, int] | None = None) -> np.ndarray:
    """Decoder pixels -> an oriented (H, W, 3) uint8 RGB view: alpha dropped (or composited on
    ``background``), grey replicated, 16-bit sources rounded to 8 bits (the same rounding as an 8-bit save)."""
    if not isinstance(pixels, np.ndarray):  # 16-bit planes: torch is already loaded for them
        import torch

        # In place: the planes are this decode's own, and a second float copy of 16 MP RGBA is 256 MB.
        pixels = pixels.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    colour = _colour(_orient_hwc(pixels, orientation), mode, background)
    return np.broadcast_to(colour, (*colour.shape[:2], 3)) if colour.shape[2] == 1 else colour


def _orient_hwc(arr: np.ndarray, orientation: int) -> np.ndarray:
    """:func:`_apply_orientation` for an (H, W, C) array, as numpy views (no copy)."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(arr, k=-1, axes=(0, 1))
    if orientation == 7:
        return arr.transpose(1, 0, 2)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(arr, k=1, axes=(0, 1))
    return arr


def decode_image(data: bytes, *, limits: ImageLimits = ImageLimits()) -> DecodedImage:
    """Decode PNG/JPEG/WebP/BMP bytes with limits, EXIF orientation applied.

    Raises:
        ImageTooLargeError: more than ``limits.max_bytes`` bytes or ``limits.max_pixels`` pixels.
        UnsupportedImageError: not an image, or a format outside :data:`SUPPORTED_FORMATS`.
        ImageDecodeError: empty, corrupt or truncated data.
    """
    import torch

    pixels, mode, bit_depth, fmt, orientation = _decode_pixels(data, limits)
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0
    planes = _apply_orientation(pixels, orientation)
    colour, alpha = (planes[:-1], planes[-1:]) if mode in ("RGBA", "LA") else (planes, None)
    rgb = colour.expand(3, -1, -1).contiguous() if colour.shape[0] == 1 else colour.contiguous()
    return DecodedImage(rgb=rgb, alpha=alpha, mode=mode, bit_depth=bit_depth, format=fmt)


def decode_rgb_uint8(data: bytes, *, limits: ImageLimits = ImageLimits(),
                     background: tuple[int, int, int] | None = None) -> np.ndarray:
    """The training path: an (H, W, 3) uint8 RGB array with no float copy and no transposed copy of the
    image: orientation, alpha and grey are numpy views of the decoder's array (crops copy only their
    windows). Alpha is dropped, grey replicated, EXIF orientation applied, 16-bit sources rounded to 8
    bits; equal to ``round(decode_image(data).rgb * 255)`` in (H, W, C) order, with the same checks
    and errors as :func:`decode_image`. With ``background`` (training: :data:`TRAINING_BACKGROUND`)
    an image with alpha is composited on it instead (a copy)."""
    pixels, mode, _, _, orientation = _decode_pixels(data, limits)
    return _rgb_view(pixels, mode, orientation, background)


def _raw_box(orientation: int, top: int, left: int, size: int, height: int, width: int) -> tuple[int, int]:
    """The (row, column) in the stored image of the ``size`` window at (top, left) of the oriented
    image (``height`` x ``width`` are the stored image's): orienting that stored window gives it."""
    if orientation == 2:
        return top, width - left - size
    if orientation == 3:
        return height - top - size, width - left - size
    if orientation == 4:
        return height - top - size, left
    if orientation == 5:
        return left, top
    if orientation == 6:
        return height - left - size, top
    if orientation == 7:
        return height - left - size, width - top - size
    if orientation == 8:
        return left, width - top - size
    return top, left


_WHOLE_ARRAY_FRACTION = 0.25  # crops covering more of the image than this: convert the whole image once


def decode_random_crops(data: bytes, *, crop_size: int, count: int, rng: np.random.Generator,
                        limits: ImageLimits = ImageLimits(), background: tuple[int, int, int] | None = None,
                        conversions: list[str] | None = None, out: np.ndarray | None = None) -> np.ndarray | None:
    """``count`` random ``crop_size`` windows of the decoded image -> uint8 (count, 3, c, c), or None if
    the (oriented) image is smaller than a crop. The training decoder's fast path.

    Equal to ``random_crops(decode_rgb_uint8(data, background=background), ...)`` with the same ``rng``
    (same positions, same values), but an 8-bit image is decoded once and, unless the crops cover over
    a quarter of it, cropped by PIL before any array exists. 16-bit sources are converted whole. Same
    errors as :func:`decode_image`. ``conversions``, if given, receives the :data:`CONVERSION_KINDS`
    applied to a decoded image (nothing for a refused or too small one). ``out``, if given, is the
    (count, 3, c, c) uint8 array the windows are written to and returned in (a slice of a batch's).
    """
    img, orientation, fmt, png16 = _load_checked(data, limits)
    try:
        width, height = img.size
        o_height, o_width = (width, height) if orientation in (5, 6, 7, 8) else (height, width)
        if o_height < crop_size or o_width < crop_size:
            return None
        if conversions is not None:
            conversions.extend(_conversions(img, orientation, png16))
        if png16 or img.mode.startswith("I") or count * crop_size * crop_size > _WHOLE_ARRAY_FRACTION * width * height:
            # 16-bit sources, or crops covering much of the image: convert the whole image once.
            try:
                pixels, mode, _ = _pixels(img, data, png16, planar=True)
            except Exception as exc:  # torchvision's 16-bit decoder on a stream the check let through
                raise ImageDecodeError(f"corrupt or truncated {fmt} data: {exc}") from None
            return random_windows(_rgb_view(pixels, mode, orientation, background), crop_size, count, rng, out=out)
        tops = rng.integers(0, o_height - crop_size + 1, size=count)
        lefts = rng.integers(0, o_width - crop_size + 1, size=count)
        out = _window_array(count, crop_size, out)
        for i, (t, s) in enumerate(zip(tops.tolist(), lefts.tolist())):
            row, col = _raw_box(orientation, t, s, crop_size, height, width)
            window, mode = _pil_to_uint8(img.crop((col, row, col + crop_size, row + crop_size)))
            colour = _colour(_orient_hwc(window, orientation), mode, background)
            out[i] = colour.transpose(2, 0, 1)  # (c, c, 1) grey broadcasts to three channels
        return out
    finally:
        img.close()


def _window_array(count: int, crop_size: int, out: np.ndarray | None) -> np.ndarray:
    """``out`` checked as the (count, 3, c, c) uint8 destination of the windows, or a new one."""
    shape = (count, 3, crop_size, crop_size)
    if out is None:
        return np.empty(shape, np.uint8)
    if out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {shape}, not {out.dtype} {out.shape}")
    return out


def random_windows(rgb: np.ndarray, crop_size: int, count: int, rng: np.random.Generator,
                   out: np.ndarray | None = None) -> np.ndarray | None:
    """``count`` random ``crop_size`` windows of an (H, W, 3) uint8 array -> (count, 3, c, c) uint8, drawn
    as :func:`decode_random_crops` draws them (tops, then lefts); None if the array is smaller. Each
    window is copied once, into ``out`` if given."""
    height, width = rgb.shape[:2]
    if height < crop_size or width < crop_size:
        return None
    tops = rng.integers(0, height - crop_size + 1, size=count)
    lefts = rng.integers(0, width - crop_size + 1, size=count)
    out = _window_array(count, crop_size, out)
    for i, (t, s) in enumerate(zip(tops.tolist(), lefts.tolist())):
        out[i] = rgb[t : t + crop_size, s : s + crop_size].transpose(2, 0, 1)
    return out


# --------------------------------------------------------------------------------------- GPU-side decoding

_DEVICE_JPEG_MODES = ("RGB", "L")  # what nvjpeg decodes to RGB exactly as libjpeg does; CMYK etc. go to the CPU


def _jpeg_complete(data: bytes) -> bool:
    """True if the last scan (SOS, FF DA) is followed by an end-of-image marker (FF D9). A byte FF in
    entropy-coded data is always stuffed (FF 00), so FF D9 after the last SOS is the real EOI. A cut
    file fails this; nvjpeg may not notice and fill the missing rows, where PIL raises."""
    return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") > 0


def _windows(image: Tensor, tops: np.ndarray, lefts: np.ndarray, crop_size: int) -> Tensor:
    """(3, H, W) -> (count, 3, c, c): the windows at (tops[i], lefts[i]), on the image's device."""
    import torch

    return torch.stack([image[:, t : t + crop_size, s : s + crop_size] for t, s in zip(tops.tolist(), lefts.tolist())])


def _cpu_windows(data: bytes, limits: ImageLimits, tops: np.ndarray, lefts: np.ndarray, crop_size: int, device: torch.device) -> Tensor:
    """The CPU decoder's windows at positions already drawn (a JPEG the device decoder refused)."""
    import torch

    rgb = decode_rgb_uint8(data, limits=limits)  # (H, W, 3), oriented; raises ImageError for bad data
    return _windows(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1), tops, lefts, crop_size).to(device)


def decode_random_crops_on(blobs: list[bytes], *, crop_size: int, count: int, rng: np.random.Generator, device: str | torch.device,
                           limits: ImageLimits = ImageLimits(), background: tuple[int, int, int] | None = None,
                           conversions: list[list[str]] | None = None) -> list[Tensor | ImageError | None]:
    """:func:`decode_random_crops` for a batch, with JPEGs decoded on ``device`` (nvjpeg on CUDA, libjpeg
    through torchvision on the CPU) and cropped there.

    Returns one entry per blob, in order: uint8 (count, 3, c, c) crops on ``device``, None (smaller than
    a crop), or the :class:`ImageError` the CPU decoder raised. With the same ``rng`` it draws the same
    positions as :func:`decode_random_crops` called on each blob in turn, and gives the same skip for
    every bad object, because only a checked header, complete, 8-bit RGB/grey JPEG at least a crop in
    size is decoded on the device; anything else (PNG, WebP, CMYK, a cut file, a small image) and any
    JPEG the device decoder rejects go through the CPU decoder. On the CPU the crops are bit-identical
    to the CPU path (PIL and torchvision both use libjpeg-turbo's default islow IDCT). ``background``
    and ``conversions`` (one list per blob, filled as :func:`decode_random_crops` fills its own) as there.
    """
    import torch

    with warnings.catch_warnings():  # torchvision 0.29 announces a move of its decoders to TorchCodec on import
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    out: list[Tensor | ImageError | None] = [None] * len(blobs)
    jobs: list[tuple[int, int, np.ndarray, np.ndarray, tuple[int, int]]] = []  # (index, orientation, tops, lefts, (H, W) stored)
    notes: list[list[str]] = [[] for _ in blobs] if conversions is None else conversions
    notes.extend([] for _ in range(len(blobs) - len(notes)))
    for i, data in enumerate(blobs):
        try:
            img, orientation = _open_checked(data, limits)  # limits and format from the header alone
            width, height = img.size
            on_device = img.format == "JPEG" and img.mode in _DEVICE_JPEG_MODES and _jpeg_complete(data)
            device_notes = _conversions(img, orientation, False) if on_device else []
            img.close()
            o_height, o_width = (width, height) if orientation in (5, 6, 7, 8) else (height, width)
            if not on_device or o_height < crop_size or o_width < crop_size:
                # The CPU decoder, now (rng drawn in order): its own crop-or-skip decision, as today.
                crops = decode_random_crops(data, crop_size=crop_size, count=count, rng=rng, limits=limits,
                                            background=background, conversions=notes[i])
                out[i] = None if crops is None else torch.from_numpy(crops).to(device)
                continue
            notes[i].extend(device_notes)  # RGB or grey JPEGs: an EXIF orientation is all there is to note
        except ImageError as exc:
            out[i] = exc
            continue
        except Exception as exc:  # noqa: BLE001 - a decoder bug on one object must not fail the batch
            out[i] = ImageDecodeError(f"unexpected decoder error: {exc}")
            continue
        tops = rng.integers(0, o_height - crop_size + 1, size=count)  # drawn as decode_random_crops draws
        lefts = rng.integers(0, o_width - crop_size + 1, size=count)
        jobs.append((i, orientation, tops, lefts, (height, width)))
    if not jobs:
        return out
    encoded = [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i, *_ in jobs]  # bytearray: writable, no warning
    try:
        images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)  # one batched call: [(3, H, W) uint8]
    except RuntimeError:  # one bad stream fails the batch: decode one by one, so only it falls back
        images = []
        for data in encoded:
            try:
                images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                images.append(None)
    for (i, orientation, tops, lefts, stored), image in zip(jobs, images):
        try:
            if image is None or tuple(image.shape[-2:]) != stored:  # refused, or not the header's size
                out[i] = _cpu_windows(blobs[i], limits, tops, lefts, crop_size, device)
            else:
                out[i] = _windows(_apply_orientation(image, orientation), tops, lefts, crop_size)
        except ImageError as exc:
            out[i] = exc
        except Exception as exc:  # noqa: BLE001
            out[i] = ImageDecodeError(f"unexpected decoder error: {exc}")
    return out


class CropBatcher:
    """Regroups crop tensors of any length into batches of exactly ``batch_size``, on their device.

    Decoding on the Train worker yields a short batch whenever an object is skipped; the loop needs
    full ones. With ``shuffle_pool > 0`` at least that many crops stay pooled and each batch is drawn
    from a random permutation of the pool, so that the adjacent crops of one image spread over
    batches (what the local shuffle buffer does on the CPU path)."""

    def __init__(self, batch_size: int, *, shuffle_pool: int = 0, generator: torch.Generator | None = None):
        self.batch_size, self.shuffle_pool, self.generator = batch_size, shuffle_pool, generator
        self._pending: list[Tensor] = []  # (k_i, 3, c, c) each
        self._count = 0

    def add(self, crops: Tensor):
        """Queue (k, 3, c, c) crops; yields every batch that is ready."""
        if len(crops):
            self._pending.append(crops)
            self._count += len(crops)
        while self._count >= self.batch_size + self.shuffle_pool:
            yield self._take()

    def finish(self):
        """The epoch's end: yields the full batches left; the remainder is dropped (``drop_last``)."""
        while self._count >= self.batch_size:
            yield self._take()
        self._pending, self._count = [], 0

    def _take(self) -> Tensor:
        import torch

        pool = torch.cat(self._pending) if len(self._pending) > 1 else self._pending[0]  # (count, 3, c, c)
        if self.shuffle_pool:
            pool = pool[torch.randperm(len(pool), generator=self.generator, device=pool.device)]
        batch, rest = pool[: self.batch_size], pool[self.batch_size :]
        self._pending, self._count = ([rest] if len(rest) else []), len(rest)
        return batch


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
    import torch

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
