"""Training data without Ray: listing image prefixes and Parquet shards, decoding to random uint8 HR
crops, counting skipped objects, and packing a prefix into shards (``pipelines/prepare.py``).

:mod:`srgan.distributed.ingest` runs these functions inside Ray Data.

Only ``gt`` crops are made here: the LR input is made on the training worker's device by
:func:`srgan.core.degrade.degrade` (the one MATLAB-bicubic degradation), so no resampling happens here.

A corrupt, empty, non-image, oversized or too small object never fails an epoch: the decoder skips it
and returns ``(kind, path)``; :class:`SkipTally` keeps the *unique* paths per kind (a bad file read
again next epoch is still one bad object), and Ray's ``SkipCounter`` actor wraps it. What the decoder
converts instead of skipping (a 16-bit source to 8 bits, CMYK to RGB, alpha composited on
:data:`~srgan.core.images.TRAINING_BACKGROUND`, an EXIF orientation applied) is counted the same way,
apart from the skips (``summary()["converted"]``; kinds in :data:`CONVERSION_KINDS`).

Listing 1.28 M small objects every epoch is the slow path; :func:`pack_images` (``pipelines/prepare.py``)
packs a prefix into Parquet shards once, and :func:`build_train_dataset` reads those the same way.

Nothing here imports Ray: ``prepare.py`` packs shards on a machine without it.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from srgan.errors import UserError
from srgan.core.images import (
    IMAGE_EXTENSIONS,
    CONVERSION_KINDS,
    TRAINING_BACKGROUND,
    ImageDecodeError,
    ImageLimits,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_random_crops,
    decode_random_crops_on,
    decode_rgb_uint8,
    random_windows,
)
from srgan.io.storage import read_at_most, resolve

if TYPE_CHECKING:  # torch is imported where it runs: Ray Data's decode and counting processes never need it
    import torch
    from torch import Tensor

__all__ = [
    "SKIP_KINDS",
    "CONVERSION_KINDS",
    "SHARD_COLUMNS",
    "list_images",
    "list_image_infos",
    "is_parquet_source",
    "list_parquet_shards",
    "decode_and_crop",
    "decode_and_crop_on",
    "random_crops",
    "SkipTally",
    "SkipList",
    "empty_skip_summary",
    "relative_key",
    "PackSummary",
    "pack_images",
    "PACK_FORMATS",
    "RAW_COLUMNS",
    "is_raw_source",
    "list_raw_shards",
    "crop_raw_table",
    "crop_raw_shard",
]

logger = logging.getLogger(__name__)

# Why an object was skipped. Every skip is reported as (kind, path).
SKIP_KINDS = ("empty", "not_image", "corrupt", "too_large", "too_small")
# Columns of a packed shard: the key relative to the packed prefix, and the encoded bytes as stored.
SHARD_COLUMNS = ("path", "image")
PARQUET_EXTENSION = ".parquet"
MAX_EXAMPLES = 20  # skipped paths kept per kind in a summary
MAX_SHARD_BYTES = 1 << 30  # a shard is closed early at 1 GiB (keeps 32-bit Arrow binary offsets safe)
# Shard formats: the objects' own bytes, or pixels decoded once at packing (for data read many times).
PACK_FORMATS = ("encoded", "raw-uint8")
RAW_COLUMNS = ("path", "height", "width", "pixels", "skip")
RAW_METADATA = {b"srgan.format": b"raw-uint8"}
RAW_EXTENSION = ".arrow"  # raw-uint8 shards are Arrow IPC files: read without a decoding pass, see pack_images
MAX_RAW_SHARD_BYTES = 256 << 20  # one raw shard is one Ray object in flight: about 450 ImageNet images

SkipList = list[tuple[str, str]]


# --------------------------------------------------------------------------------------- listing


def _is_image_name(path: str) -> bool:
    """True for .jpg/.jpeg/.png/.webp/.bmp in any letter case (ImageNet's are ``.JPEG``)."""
    return path.lower().endswith(IMAGE_EXTENSIONS)


def _resolve(uri: str, s3_endpoint: str | None) -> tuple[pafs.FileSystem, str]:
    try:
        return resolve(uri, s3_endpoint=s3_endpoint)
    except ValueError as exc:  # an unsupported scheme
        raise UserError(str(exc)) from None


def _info(fs: pafs.FileSystem, path: str, uri: str) -> pafs.FileInfo:
    """``fs.get_file_info(path)``, with storage errors (no bucket, no access) as one-line user errors."""
    try:
        return fs.get_file_info(path)
    except OSError as exc:
        raise UserError(f"cannot read {uri}: {exc}") from None


def _list_files(fs: pafs.FileSystem, root: str, uri: str, *, recursive: bool) -> list[pafs.FileInfo]:
    """Every file under ``root`` (a directory or prefix), or ``[]`` if there is nothing there."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=recursive, allow_not_found=True))
    except OSError as exc:
        raise UserError(f"cannot list {uri}: {exc}") from None
    return [i for i in infos if i.type == pafs.FileType.File]


def list_image_infos(uri: str, s3_endpoint: str | None) -> tuple[pafs.FileSystem, str, list[pafs.FileInfo]]:
    """(filesystem, root, image file infos sorted by path). ``root`` is what keys are made relative to."""
    fs, path = _resolve(uri, s3_endpoint)
    info = _info(fs, path, uri)
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"{uri} does not exist: pass a local folder, file:// or s3:// prefix that holds images")
    if info.type == pafs.FileType.File:  # a single image is a (tiny) dataset too
        files, root = [info], path.rsplit("/", 1)[0]
    else:
        files, root = _list_files(fs, path, uri, recursive=True), path
    images = sorted((i for i in files if _is_image_name(i.path)), key=lambda i: i.path)
    if not images:
        exts = ", ".join(IMAGE_EXTENSIONS)
        raise UserError(f"no images under {uri}: expected files ending in {exts} (any letter case) at any depth")
    return fs, root, images


def list_images(uri: str, *, s3_endpoint: str | None = None) -> tuple[pafs.FileSystem, list[str]]:
    """All image files under a local path, ``file://`` or ``s3://`` prefix, at any depth, sorted.

    Returns ``(filesystem, paths)`` with paths in the filesystem's own form (``bucket/key`` on S3,
    absolute on local disk). A missing prefix, or one without images, raises :class:`UserError`.
    """
    fs, _, images = list_image_infos(uri, s3_endpoint)
    return fs, [i.path for i in images]


def _parquet_files(fs: pafs.FileSystem, path: str, uri: str, extension: str = PARQUET_EXTENSION) -> list[str]:
    """The ``*.parquet`` (``extension``) file ``path`` itself, or those directly under the prefix ``path`` (sorted)."""
    info = _info(fs, path, uri)
    if info.type == pafs.FileType.File:
        return [path] if path.lower().endswith(extension) else []
    if info.type != pafs.FileType.Directory:
        return []
    # Top level only: a raw ImageNet root has 1000 folders there, so this stays one cheap listing.
    files = _list_files(fs, path, uri, recursive=False)
    return sorted(i.path for i in files if i.path.lower().endswith(extension))


def is_raw_source(uri: str, *, s3_endpoint: str | None = None) -> bool:
    """True if ``uri`` is a raw-uint8 shard (``.arrow``) or a prefix with such shards at its top level."""
    fs, path = _resolve(uri, s3_endpoint)
    return bool(_parquet_files(fs, path, uri, RAW_EXTENSION))


def list_raw_shards(uri: str, *, s3_endpoint: str | None = None) -> tuple[pafs.FileSystem, list[str]]:
    """``(filesystem, shard paths)`` of a raw-uint8 prefix (or one ``.arrow`` file); none raises :class:`UserError`."""
    fs, path = _resolve(uri, s3_endpoint)
    shards = _parquet_files(fs, path, uri, RAW_EXTENSION)
    if not shards:
        raise UserError(f"no raw-uint8 shards at {uri}: pack a prefix with pipelines/prepare.py --format raw-uint8 first")
    return fs, shards


def is_parquet_source(uri: str, *, s3_endpoint: str | None = None) -> bool:
    """True if ``uri`` is a ``.parquet`` file or a prefix with ``*.parquet`` files at its top level."""
    fs, path = _resolve(uri, s3_endpoint)
    return bool(_parquet_files(fs, path, uri))


def list_parquet_shards(uri: str, *, s3_endpoint: str | None = None) -> tuple[pafs.FileSystem, list[str]]:
    """``(filesystem, shard paths)`` of a packed prefix (or one ``.parquet`` file); none raises :class:`UserError`."""
    fs, path = _resolve(uri, s3_endpoint)
    shards = _parquet_files(fs, path, uri)
    if not shards:
        raise UserError(f"no Parquet shards at {uri}: pack a prefix with pipelines/prepare.py first")
    return fs, shards


def relative_key(path: str, root: str) -> str:
    """``path`` relative to ``root`` (both in filesystem form), the key a packed shard stores."""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else path


# --------------------------------------------------------------------------------------- decoding


def _skip_kind(exc: Exception) -> str:
    """The skip kind of a decoder error (every decode path maps errors the same way)."""
    if isinstance(exc, ImageTooLargeError):
        return "too_large"
    if isinstance(exc, UnsupportedImageError):
        return "not_image"
    if not isinstance(exc, ImageDecodeError):  # a decoder bug on one object must not fail the epoch
        logger.error("unexpected error decoding an image; counted as corrupt", exc_info=exc)
    return "corrupt"


def _decode_crops(data: bytes, limits: ImageLimits, crop_size: int, count: int, rng: np.random.Generator,
                  conversions: list[str], out: np.ndarray) -> str | None:
    """Decode ``data`` into ``count`` random crops written to ``out`` -> None, or the skip kind (``out``
    then holds nothing of use); the conversions applied to a decoded object go to ``conversions``.
    Never raises."""
    if len(data) == 0:
        return "empty"
    try:
        crops = decode_random_crops(data, crop_size=crop_size, count=count, rng=rng, limits=limits,
                                    background=TRAINING_BACKGROUND, conversions=conversions, out=out)
    except Exception as exc:  # noqa: BLE001
        return _skip_kind(exc)
    return "too_small" if crops is None else None


def random_crops(rgb: np.ndarray | Tensor, crop_size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` uniformly placed ``crop_size`` windows -> uint8 (count, 3, c, c).

    ``rgb`` is the training decoder's (H, W, 3) uint8 array (only the windows are copied, then put in
    channel-first order), or a (3, H, W) float tensor in [0, 1] (only the windows are converted,
    rounding to nearest: an 8-bit source's values come back exactly). Crop positions depend on the
    image size and ``rng`` only.
    """
    if isinstance(rgb, np.ndarray):
        return random_windows(rgb, crop_size, count, rng)
    import torch  # a tensor came in: torch is loaded already

    height, width = rgb.shape[-2:]
    tops = rng.integers(0, height - crop_size + 1, size=count)
    lefts = rng.integers(0, width - crop_size + 1, size=count)
    windows = torch.stack([rgb[:, t : t + crop_size, s : s + crop_size] for t, s in zip(tops.tolist(), lefts.tolist())])
    return windows.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def decode_and_crop(
    batch: dict[str, np.ndarray],
    *,
    crop_size: int,
    crops_per_image: int,
    rng: np.random.Generator,
    limits: ImageLimits,
    converted: SkipList | None = None,
) -> tuple[dict[str, np.ndarray], SkipList]:
    """Decode a batch of encoded images and take random HR crops.

    Input columns: ``bytes`` (N encoded images) and ``path`` (N keys, used only to report skips).
    Returns ``({"gt": uint8 (K, 3, crop_size, crop_size)}, skips)`` with ``K = crops_per_image x``
    the number of usable images, the crops of one image next to each other, and ``skips`` the
    ``(kind, path)`` of every image left out (kinds in :data:`SKIP_KINDS`). The shape holds for
    ``K = 0`` too, so a batch of bad objects still has the dataset's schema. Never raises on bad input.
    ``converted``, if given, receives ``(kind, path)`` for each conversion of a used image (kinds in
    :data:`CONVERSION_KINDS`): alpha is composited on :data:`~srgan.core.images.TRAINING_BACKGROUND`.
    """
    # One array for the batch's crops, each image's windows written straight into their place: 16 crops
    # of a 500x375 photo are 442 kB, and a fresh array for each image, then their concatenation, cost
    # more than the crops' own copies (the new pages' faults; a large array gets huge pages).
    out = np.empty((len(batch["bytes"]) * crops_per_image, 3, crop_size, crop_size), np.uint8)  # (N x count, 3, c, c)
    skips: SkipList = []
    k = 0
    for data, path in zip(batch["bytes"], batch["path"]):
        conversions: list[str] = []
        kind = _decode_crops(bytes(data), limits, crop_size, crops_per_image, rng, conversions, out[k : k + crops_per_image])
        if kind is not None:
            skips.append((kind, str(path)))
            continue
        k += crops_per_image
        if converted is not None:
            converted.extend((c, str(path)) for c in conversions)
    return {"gt": out[:k]}, skips


def decode_and_crop_on(
    batch: dict[str, np.ndarray],
    *,
    crop_size: int,
    crops_per_image: int,
    rng: np.random.Generator,
    limits: ImageLimits,
    device: str | torch.device,
    converted: SkipList | None = None,
) -> tuple[Tensor, SkipList]:
    """:func:`decode_and_crop` with the JPEGs decoded on ``device`` (``data.decode_device: cuda``; the
    same code runs on the CPU in tests): -> (uint8 (K, 3, c, c) on ``device``, skips). The same crop
    positions for the same ``rng``, the same skip kinds and conversions (see :func:`decode_random_crops_on`)."""
    import torch
    from torch import Tensor

    blobs = [bytes(data) for data in batch["bytes"]]
    notes: list[list[str]] = []
    results = decode_random_crops_on(blobs, crop_size=crop_size, count=crops_per_image, rng=rng, device=device, limits=limits,
                                     background=TRAINING_BACKGROUND, conversions=notes)
    crops: list[Tensor] = []
    skips: SkipList = []
    for data, path, result, conversions in zip(blobs, batch["path"], results, notes):
        if isinstance(result, Tensor):
            crops.append(result)
            if converted is not None:
                converted.extend((c, str(path)) for c in conversions)
        else:  # empty first, as the CPU path checks it before decoding
            skips.append(("empty" if not data else "too_small" if result is None else _skip_kind(result), str(path)))
    empty = torch.zeros((0, 3, crop_size, crop_size), dtype=torch.uint8, device=device)
    return (torch.cat(crops) if crops else empty), skips


# --------------------------------------------------------------------------------------- skip counting


class SkipTally:
    """Unique skipped objects per kind (plain Python; :class:`SkipCounter` is its Ray actor)."""

    def __init__(self) -> None:
        # kind -> {path: None}: an insertion-ordered set, so examples are the first paths seen.
        self._paths: dict[str, dict[str, None]] = {}
        self._converted: dict[str, dict[str, None]] = {}  # the same, for conversions (not skips)

    def add(self, skips: Iterable[tuple[str, str]], converted: Iterable[tuple[str, str]] = ()) -> SkipList:
        """Record skips (and conversions of used objects); returns the skips not seen before."""
        _record(self._converted, converted)
        return _record(self._paths, skips)

    def summary(self) -> dict[str, Any]:
        """``{"counts": {kind: unique paths}, "total": int, "examples": {kind: [up to 20 paths]},
        "converted": {conversion kind: unique paths}, "converted_examples": {...}}``; ``counts`` and
        ``total`` are skips only."""
        counts = {kind: len(paths) for kind, paths in self._paths.items()}
        return {"counts": counts, "total": sum(counts.values()), "examples": _examples(self._paths),
                "converted": {kind: len(paths) for kind, paths in self._converted.items()},
                "converted_examples": _examples(self._converted)}


def _record(seen_by_kind: dict[str, dict[str, None]], items: Iterable[tuple[str, str]]) -> SkipList:
    new: SkipList = []
    for kind, path in items:
        seen = seen_by_kind.setdefault(kind, {})
        if path not in seen:
            seen[path] = None
            new.append((kind, path))
    return new


def _examples(seen_by_kind: dict[str, dict[str, None]]) -> dict[str, list[str]]:
    return {kind: list(itertools.islice(paths, MAX_EXAMPLES)) for kind, paths in seen_by_kind.items()}


def empty_skip_summary() -> dict[str, Any]:
    return SkipTally().summary()


# --------------------------------------------------------------------------------------- packing


@dataclass(frozen=True)
class PackSummary:
    """What :func:`pack_images` wrote: ``bytes`` stored in the image column(s) (the objects' own bytes,
    or the decoded pixels of ``raw-uint8``), against ``input_bytes`` read."""

    images: int
    shards: int
    bytes: int
    output: str
    format: str = "encoded"
    input_bytes: int = 0


def _same_or_inside(inner: str, outer: str) -> bool:
    outer = outer.rstrip("/")
    return inner == outer or inner.startswith(outer + "/")


def _check_output(in_fs: pafs.FileSystem, in_root: str, out_fs: pafs.FileSystem, out_path: str, output_uri: str) -> None:
    """Refuse an output at or inside the input (shards would join the images they pack) or holding shards."""
    if type(in_fs) is type(out_fs) and _same_or_inside(out_path, in_root):
        raise UserError(f"the output {output_uri} is the input prefix or inside it: write the shards elsewhere")
    if _parquet_files(out_fs, out_path, output_uri) or _parquet_files(out_fs, out_path, output_uri, RAW_EXTENSION):
        raise UserError(f"{output_uri} already holds Parquet shards: pick an empty output prefix or delete them first")


def _plan_shards(images: Sequence[pafs.FileInfo], images_per_shard: int) -> list[list[pafs.FileInfo]]:
    """Group images into shards of at most ``images_per_shard`` files and about :data:`MAX_SHARD_BYTES`."""
    shards: list[list[pafs.FileInfo]] = [[]]
    size = 0
    for info in images:
        if shards[-1] and (len(shards[-1]) >= images_per_shard or size + (info.size or 0) > MAX_SHARD_BYTES):
            shards.append([])
            size = 0
        shards[-1].append(info)
        size += info.size or 0
    return shards


def _read_all(fs: pafs.FileSystem, paths: Sequence[str], pool: ThreadPoolExecutor, max_bytes: int) -> list[bytes]:
    """Object bytes in ``paths`` order, fetched concurrently (object stores reward parallel GETs); of an
    object over ``max_bytes``, its first ``max_bytes`` + 1 (:func:`read_at_most`)."""

    def read(path: str) -> bytes:
        try:
            return read_at_most(fs, path, max_bytes)
        except OSError as exc:  # gone or unreadable since the listing: not a bad image, a storage problem
            raise UserError(f"cannot read {path}: {exc}") from None

    return list(pool.map(read, paths))


def _write_shard(fs: pafs.FileSystem, path: str, keys: list[str], blobs: list[bytes]) -> None:
    table = pa.table({"path": pa.array(keys, pa.string()), "image": pa.array(blobs, pa.binary())})
    # Encoded images do not compress further: store them as they are; dictionaries would not help either.
    pq.write_table(
        table, path, filesystem=fs, compression={"path": "snappy", "image": "none"}, use_dictionary=False,
        row_group_size=256,
    )


def _decode_raw(data: bytes, limits: ImageLimits) -> tuple[int, int, bytes, str | None]:
    """One object as a raw-uint8 row: (height, width, (3, H, W) planar RGB bytes, None), or (0, 0, b"",
    skip kind). Orientation, alpha and grey are resolved here, exactly as the training decoder does it;
    planes, so that a crop is 3 x c contiguous row copies."""
    if len(data) == 0:
        return 0, 0, b"", "empty"
    try:
        rgb = decode_rgb_uint8(data, limits=limits, background=TRAINING_BACKGROUND)  # (H, W, 3) uint8 view
    except Exception as exc:  # noqa: BLE001
        return 0, 0, b"", _skip_kind(exc)
    return rgb.shape[0], rgb.shape[1], np.ascontiguousarray(rgb.transpose(2, 0, 1)).tobytes(), None


def _write_raw_shard(fs: pafs.FileSystem, path: str, keys: list[str], rows: list[tuple[int, int, bytes, str | None]]) -> None:
    heights, widths, pixels, skips = zip(*rows)
    table = pa.table(
        {"path": pa.array(keys, pa.string()), "height": pa.array(heights, pa.int32()), "width": pa.array(widths, pa.int32()),
         "pixels": pa.array(pixels, pa.binary()), "skip": pa.array(skips, pa.string())},
    ).replace_schema_metadata(RAW_METADATA)
    # An uncompressed Arrow IPC file: a reader maps its buffers as they are (Parquet would copy every
    # value out of its pages: half the time of the whole read), and photos' pixels barely compress.
    with fs.open_output_stream(path) as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=64)


def _split_by_bytes(rows: list, sizes: list[int], limit: int) -> list[tuple[int, int]]:
    """[start, end) ranges of ``rows`` of at most ``limit`` bytes each (at least one row each)."""
    ranges, start, size = [], 0, 0
    for i, n in enumerate(sizes):
        if i > start and size + n > limit:
            ranges.append((start, i))
            start, size = i, 0
        size += n
    ranges.append((start, len(rows)))
    return ranges


def crop_raw_shard(source, *, crop_size: int, crops_per_image: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], SkipList]:
    """:func:`crop_raw_table` over a whole raw-uint8 shard: ``source`` is its bytes or an open Arrow file
    (``pa.memory_map(path)``, as the ingest's read tasks open local shards). The IPC file is read in
    place: no pixel is copied but the windows."""
    reader = pa.ipc.open_file(source if isinstance(source, pa.NativeFile) else pa.py_buffer(source))
    outs = [crop_raw_table(reader.get_batch(i), crop_size=crop_size, crops_per_image=crops_per_image, rng=rng) for i in range(reader.num_record_batches)]
    empty = np.zeros((0, 3, crop_size, crop_size), np.uint8)
    return {"gt": np.concatenate([o["gt"] for o, _ in outs]) if outs else empty}, [skip for _, skips in outs for skip in skips]


def crop_raw_table(table: pa.Table | pa.RecordBatch, *, crop_size: int, crops_per_image: int, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], SkipList]:
    """:func:`decode_and_crop` for raw-uint8 rows: no decoding; only the windows are copied, straight
    out of Arrow's buffers. Skips: the kind recorded at packing, or ``too_small`` (the crop size is a
    training choice). Positions are drawn as the decoders draw them (same ``rng``, same crops)."""
    skips: SkipList = []
    paths, heights, widths, kinds = (table.column(c).to_pylist() for c in ("path", "height", "width", "skip"))
    pixels = table.column("pixels")
    views = (view for chunk in getattr(pixels, "chunks", [pixels]) for view in _binary_views(chunk))
    # Each window is copied once, straight into its place in the output: (K, 3, c, c).
    out = np.empty((len(paths) * crops_per_image, 3, crop_size, crop_size), np.uint8)
    k = 0
    for path, height, width, kind, view in zip(paths, heights, widths, kinds, views):
        if kind is None and (height < crop_size or width < crop_size):
            kind = "too_small"
        if kind is not None:
            skips.append((kind, path))
            continue
        planes = view.reshape(3, height, width)
        tops = rng.integers(0, height - crop_size + 1, size=crops_per_image)  # drawn as random_windows draws
        lefts = rng.integers(0, width - crop_size + 1, size=crops_per_image)
        for t, s in zip(tops.tolist(), lefts.tolist()):
            out[k] = planes[:, t : t + crop_size, s : s + crop_size]
            k += 1
    return {"gt": out[:k]}, skips


def _binary_views(chunk: pa.BinaryArray) -> Iterable[np.ndarray]:
    """Each value of a binary array as a read-only uint8 view of Arrow's data buffer (no copy)."""
    _, offsets_buf, data_buf = chunk.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32)[chunk.offset : chunk.offset + len(chunk) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        yield data[start:end]


def pack_images(
    input_uri: str,
    output_uri: str,
    *,
    images_per_shard: int = 1000,
    s3_endpoint: str | None = None,
    seed: int = 0,
    threads: int = 16,
    progress: Callable[[str], None] | None = None,
    format: str = "encoded",
    limits: ImageLimits = ImageLimits(),
) -> PackSummary:
    """Pack every image file under ``input_uri`` into Parquet shards ``part-00000.parquet``, ... under ``output_uri``.

    ``encoded`` columns: ``path`` (string, key relative to ``input_uri``) and ``image`` (binary, the
    object's bytes as stored: bad objects are packed too, and training skips and counts them as from the
    raw prefix; of an object over ``limits.max_bytes``, only its first ``max_bytes`` + 1 bytes, which
    training refuses as ``too_large``). ``raw-uint8`` decodes once, here, into Arrow IPC files ``part-00000.arrow``, ... (at
    most 256 MiB each): ``path``, ``height``, ``width``, ``pixels`` (binary, (3, H, W) planar RGB uint8,
    orientation applied) and ``skip`` (the skip kind of a bad object, else null; ``limits`` decide
    ``too_large``); training then only cuts windows (docs/performance.md has its cost).
    The files are packed in a ``seed``-shuffled order so every shard mixes the whole dataset (a sorted
    ImageNet listing would put one class per shard). ``progress`` receives a line after listing and one per shard.
    """
    if format not in PACK_FORMATS:
        raise UserError(f"format must be one of {', '.join(PACK_FORMATS)}, got {format!r}")
    if images_per_shard < 1:
        raise UserError(f"images per shard must be >= 1, got {images_per_shard}")
    if threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    in_fs, in_root, images = list_image_infos(input_uri, s3_endpoint)
    out_fs, out_path = _resolve(output_uri, s3_endpoint)
    _check_output(in_fs, in_root, out_fs, out_path, output_uri)
    if isinstance(out_fs, pafs.LocalFileSystem):
        try:
            out_fs.create_dir(out_path, recursive=True)  # object stores need no directories
        except OSError as exc:
            raise UserError(f"cannot create {output_uri}: {exc}") from None

    images = list(images)
    random.Random(seed).shuffle(images)
    plan = _plan_shards(images, images_per_shard)
    report = progress or (lambda line: None)
    report(f"found {len(images)} images under {input_uri}; writing {len(plan)} shards")
    total_bytes = input_bytes = done = written = 0

    extension, limit = (PARQUET_EXTENSION, MAX_SHARD_BYTES) if format == "encoded" else (RAW_EXTENSION, MAX_RAW_SHARD_BYTES)

    def write(name: str, keys: list[str], rows: list) -> None:
        try:
            if format == "encoded":
                _write_shard(out_fs, f"{out_path}/{name}", keys, rows)
            else:
                _write_raw_shard(out_fs, f"{out_path}/{name}", keys, rows)
        except OSError as exc:
            raise UserError(f"cannot write {output_uri}/{name}: {exc}") from None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for shard in plan:
            blobs = _read_all(in_fs, [i.path for i in shard], pool, limits.max_bytes)
            keys = [relative_key(i.path, in_root) for i in shard]
            input_bytes += sum(map(len, blobs))
            if format == "encoded":
                rows, sizes = blobs, [len(b) for b in blobs]
            else:  # PIL releases the GIL while it decodes: the pool decodes in parallel
                rows = list(pool.map(lambda data: _decode_raw(data, limits), blobs))
                sizes = [len(r[2]) for r in rows]
            for start, end in _split_by_bytes(rows, sizes, limit):  # decoded pixels outgrow the planned sizes
                name = f"part-{written:05d}{extension}"
                write(name, keys[start:end], rows[start:end])
                shard_bytes = sum(sizes[start:end])
                written += 1
                done += end - start
                total_bytes += shard_bytes
                report(f"{name}: {end - start} images, {shard_bytes / 1e6:.1f} MB ({done}/{len(images)})")
    return PackSummary(images=len(images), shards=written, bytes=total_bytes, output=output_uri, format=format, input_bytes=input_bytes)
