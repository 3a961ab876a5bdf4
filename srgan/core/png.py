"""PNG internals the image decoder needs beyond PIL: a structural validator and 16-bit colour.

- :func:`check_png_stream` checks every chunk's CRC, the inflated size and the row filters before a
  native decoder sees the data (PIL skips the data CRCs; libpng, as torchvision calls it, crashes the
  process on some malformed streams). It never inflates more than the header allows.
- :func:`png16_to_planes` / :func:`png16_bytes` read and write 16-bit PNGs (PIL truncates 16-bit RGB).
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING

import numpy as np

from srgan.errors import ImageDecodeError

if TYPE_CHECKING:  # torch is imported where it runs: Ray Data's decode and counting processes never need it
    import torch
    from torch import Tensor

__all__ = ["PNG_SIGNATURE", "check_png_stream", "png16_to_planes", "png16_bytes"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png_row_layout(width: int, height: int, bit_depth: int, colour_type: int, interlace: int) -> list[tuple[int, int]]:
    """(rows, bytes per row without the filter byte) of every pass of the image data."""
    bits = _PNG_CHANNELS[colour_type] * bit_depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    layout = []
    for x0, y0, dx, dy in passes:
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w > 0 and h > 0:
            layout.append((h, -(-(w * bits) // 8)))
    return layout


def check_png_stream(data: bytes, *, inflate_8bit: bool = True) -> int:
    """Validate a PNG's structure before a native decoder sees it; returns its bit depth.

    Checks every chunk's CRC (PIL skips the image data's CRCs: a flipped byte decodes to garbage),
    then inflates the image data and checks that it has exactly the size the header implies and that
    every row's filter type is 0..4: libpng, as torchvision calls it for 16-bit PNGs, crashes the
    process on some malformed streams. ``inflate_8bit=False`` skips that inflate for 8-bit images,
    which PIL decodes (it raises on bad filters and short data itself): the decoder then inflates
    them once, not twice. CRCs are checked either way.
    """
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE):
        raise ImageDecodeError("truncated PNG header")
    pos, idat, header = 8, [], None
    while True:
        if pos + 12 > len(data):
            raise ImageDecodeError("truncated PNG: the data ends before the IEND chunk")
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise ImageDecodeError(f"truncated PNG: chunk {tag!r} runs past the end of the data")
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(tag + payload) & 0xFFFFFFFF != crc:
            raise ImageDecodeError(f"corrupt PNG: CRC mismatch in chunk {tag.decode('latin-1')!r}")
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", payload[:13])
        elif tag == b"IDAT":
            idat.append(payload)
        elif tag == b"IEND":
            break
        pos = end
    if header is None or not idat:
        raise ImageDecodeError("corrupt PNG: missing IHDR or IDAT")
    width, height, bit_depth, colour_type, _, _, interlace = header
    if colour_type not in _PNG_CHANNELS:
        raise ImageDecodeError(f"corrupt PNG: unknown colour type {colour_type}")
    if bit_depth != 16 and not inflate_8bit:
        return bit_depth
    layout = _png_row_layout(width, height, bit_depth, colour_type, interlace)
    expected = sum(rows * (1 + row_bytes) for rows, row_bytes in layout)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(idat), expected + 1)  # never inflate more than the header allows
    except zlib.error as exc:
        raise ImageDecodeError(f"corrupt PNG image data: {exc}") from None
    if len(raw) != expected:
        raise ImageDecodeError(f"corrupt PNG: image data inflates to {len(raw)} bytes, expected {expected}")
    offset = 0
    for rows, row_bytes in layout:
        filters = np.frombuffer(raw, np.uint8, count=rows * (1 + row_bytes), offset=offset)[:: 1 + row_bytes]
        if filters.max(initial=0) > 4:
            raise ImageDecodeError(f"corrupt PNG: bad row filter type {int(filters.max())}")
        offset += rows * (1 + row_bytes)
    return bit_depth


def png16_to_planes(data: bytes) -> tuple[Tensor, str]:
    """16-bit PNG -> ((C, H, W) float32 in [0, 1], mode). PIL would truncate 16-bit RGB to 8 bits."""
    import warnings

    import torch
    from torchvision.io import ImageReadMode, decode_png

    # torchvision 0.29 marks its image codecs deprecated (in favour of TorchCodec); the pinned version
    # still ships them, and it is the one decoder on our dependency list that keeps 16-bit colour.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        planes = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[planes.shape[0]]
    # In place: one float copy of the image, not two (a 16 MP RGBA PNG is 256 MB per float copy).
    return planes.to(torch.float32).div_(65535.0), mode


def png16_bytes(arr: np.ndarray) -> bytes:
    """Write a 16-bit PNG from a (H, W, C) uint16 array (PIL cannot write 16-bit colour)."""
    height, width, channels = arr.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = arr.astype(">u2").reshape(height, width * channels).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 per row

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
