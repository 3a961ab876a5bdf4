"""Training ingest on Ray Data (a Ray edge): image prefixes or Parquet shards -> random uint8 HR crops.

One epoch, as Ray Data runs it::

    list the files once, on the driver (srgan.io.datasets: list_images / the shards of a packed prefix)
      -> _image_files                          read tasks of up to 1,024 objects, a core each, read on 8 threads (S3) or 1 (local),
                                               decoded and cropped IMAGES_PER_BLOCK (32) objects at a time in the same task;
                                               the file order is reshuffled at every epoch; bad objects skipped and counted
         or parquet_shards -> map_batches      up to 8 shards a task, the decode fused into the read
      -> rows {"gt": uint8 (3, crop, crop)}    Arrow tensors; the trainer makes floats on its device

raw-uint8 shards (``*.arrow``) skip the decode: the read tasks map the shards and cut windows. With
``data.decode_device: cuda`` the tasks ship encoded bytes and the Train worker decodes them on its GPU
(:func:`iter_device_crops`). docs/performance.md compares the three.

A bad object never fails an epoch: the decoder skips it and reports ``(kind, path)`` to a named
:class:`SkipCounter` actor that keeps the *unique* paths per kind and logs each one once. Objects it
converts (16-bit, CMYK, alpha on the training background, EXIF-rotated) are counted there too, apart
from the skips (``count_skips(...)["converted"]``); raw-uint8 shards were converted at packing and
report no conversions.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import numpy as np
import ray

from srgan.core.images import ImageLimits
from srgan.errors import UserError
from srgan.io.datasets import (
    SHARD_COLUMNS,
    SkipList,
    SkipTally,
    crop_raw_table,
    decode_and_crop,
    decode_and_crop_on,
    empty_skip_summary,
    is_parquet_source,
    list_image_infos,
    list_parquet_shards,
    list_raw_shards,
    is_raw_source,
    relative_key,
)
from srgan.io.storage import read_at_most

__all__ = ["SkipCounter", "get_skip_counter", "count_skips", "build_train_dataset", "epoch_passes", "training_epoch_objects", "decodes_on_worker", "iter_device_crops"]


@ray.remote(num_cpus=0)
class SkipCounter(SkipTally):
    """Ray actor that counts skipped objects across all decode tasks and epochs, logging each once.

    Create it with :func:`get_skip_counter` (named, ``get_if_exists=True``, no CPU); read it with
    :func:`count_skips`. It lives as long as the job that created it holds a handle.
    """

    def add(self, skips: Iterable[tuple[str, str]], converted: Iterable[tuple[str, str]] = ()) -> SkipList:
        new = super().add(skips, converted)
        for kind, path in new:
            logging.getLogger(__name__).warning("[srgan] skipped training image (%s): %s", kind, path)
        return new


# Handles kept by the process that made them: a named actor without lifetime="detached" is destroyed
# once no handle to it is left, and the datasets/trainer only hold theirs while they run.
_COUNTERS: dict[str, Any] = {}
_LOST_COUNTERS: set[str] = set()  # counters this process found dead (warned about once)


def get_skip_counter(name: str) -> ray.actor.ActorHandle:
    """The :class:`SkipCounter` named ``name`` in this job's namespace, created on first use, on the
    caller's node (the driver's, which builds the datasets). Anywhere else it would die with a lost
    worker node, and every restarted worker group would then fail on reading it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # RAY

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    handle = SkipCounter.options(name=name, get_if_exists=True, scheduling_strategy=here).remote()
    _COUNTERS[name] = handle
    return handle


def count_skips(skip_counter_name: str) -> dict[str, Any]:
    """Summary of the named :class:`SkipCounter`; an empty summary if no such actor exists, or if it
    died (with its node): a lost count is worth a warning, never a failed training run."""
    try:
        handle = ray.get_actor(skip_counter_name)
    except ValueError:
        return empty_skip_summary()
    try:
        return ray.get(handle.summary.remote())
    except ray.exceptions.RayActorError as exc:
        if skip_counter_name not in _LOST_COUNTERS:  # read at every log step: one warning, not one per step
            _LOST_COUNTERS.add(skip_counter_name)
            logging.getLogger(__name__).warning("[srgan] WARNING: the skip counter %s is gone (%s: its node died); its counts are lost",
                                                skip_counter_name, type(exc).__name__)
        return empty_skip_summary()


# --------------------------------------------------------------------------------------- Ray Data


def _decode_crop_batch(
    batch: dict[str, np.ndarray],
    *,
    image_column: str,
    root: str | None,
    crop_size: int,
    crops_per_image: int,
    limits: ImageLimits,
    counter: ray.actor.ActorHandle,
) -> dict[str, np.ndarray]:
    """A batch of encoded objects -> its block: {image_column, path} -> {"gt": uint8 (K, 3, c, c)}; skips
    go to ``counter``. The image-file read tasks call it on IMAGES_PER_BLOCK files; for Parquet shards
    it is a ``map_batches`` UDF fused into the read."""
    # Raw reads carry the filesystem path; report the key relative to the source, as shards store it.
    paths = [str(p) if root is None else relative_key(str(p), root) for p in batch["path"]]
    # Fresh OS entropy per batch: crops must differ at every epoch, and Ray runs batches in any order.
    rng = np.random.default_rng()
    converted: SkipList = []
    out, skips = decode_and_crop(
        {"bytes": batch[image_column], "path": np.asarray(paths, dtype=object)},
        crop_size=crop_size,
        crops_per_image=crops_per_image,
        rng=rng,
        limits=limits,
        converted=converted,
    )
    if skips or converted:
        # Wait for the actor: a summary read right after the epoch must include them. (One call per
        # batch that has any; EXIF-rotated phone photos can make that most batches, for ~1 ms each.)
        ray.get(counter.add.remote(skips, converted))
    return out


def _is_local(filesystem) -> bool:
    """True for local paths, also inside the retrying wrapper Ray Data puts around a filesystem."""
    import pyarrow.fs as pafs

    inner = filesystem.unwrap() if hasattr(filesystem, "unwrap") else filesystem
    return isinstance(inner, pafs.LocalFileSystem)


def _raw_shards(paths: list[str], *, filesystem, shuffle: Any, crop_size: int, crops_per_image: int, counter: ray.actor.ActorHandle):
    """A Ray Data datasource of crops cut straight out of raw-uint8 shards, in the read tasks.

    Local shards are memory-mapped: a crop touches only its own rows in the page cache and nothing else
    is copied. Remote ones are opened for random access, so each record batch is one ranged read.
    (``read_binary_files`` would copy every whole shard into the object store first: two thirds of
    the time, see docs/performance.md.)"""
    import pyarrow as pa
    from ray.data.block import BlockAccessor
    from ray.data.datasource import FileBasedDatasource

    class RawShards(FileBasedDatasource):  # RAY
        def _open_input_source(self, filesystem, path, **open_args):
            return pa.memory_map(path) if _is_local(filesystem) else filesystem.open_input_file(path)

        def _read_stream(self, f, path):
            reader = pa.ipc.open_file(f)
            rng = np.random.default_rng()  # fresh entropy per shard and epoch, as the decode tasks draw
            for i in range(reader.num_record_batches):
                out, skips = crop_raw_table(reader.get_batch(i), crop_size=crop_size, crops_per_image=crops_per_image, rng=rng)
                if skips:
                    ray.get(counter.add.remote(skips))  # a retried read reports them again: counted once
                yield BlockAccessor.batch_to_block(out)

    return RawShards(paths, filesystem=filesystem, shuffle=shuffle)


def parquet_shards(paths: list[str], *, filesystem, shuffle: Any = None, columns: list[str] | None = None,
                   exclude_keys: Iterable[str] = ()):
    """A Ray Data datasource of the rows of packed Parquet shards, read SHARD_READ_ROWS rows at a time
    in the read tasks (``ray.data.read_datasource(..., num_cpus=...)``), one shard after another on
    the task's thread; rows whose ``path`` is in ``exclude_keys`` are dropped as they are read (the
    bulk job's inputs already done).

    Not ``ray.data.read_parquet``: Ray 2.60's Parquet reader lists the paths in a task of its own that
    asks for a whole CPU, whatever the read's ``num_cpus``. Where less than one CPU is free (a bulk
    job's own actors, Train workers on a small machine) that task never starts and the read stalls:
    a CI run's bulk job waited three times 120 s with 0.75 CPU free. Here Ray takes the shards' sizes
    from one listing of their common prefix, on the driver, and the only tasks are the reads."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from ray.data.datasource import FileBasedDatasource

    excluded = pa.array(sorted(set(exclude_keys)), type=pa.string())

    class ParquetShards(FileBasedDatasource):  # RAY
        def _open_input_source(self, filesystem, path, **open_args):
            return filesystem.open_input_file(path)  # random access: a row group is one ranged read on S3

        def _read_stream(self, f, path):
            # Batches, not whole row groups: a row group of 256 ImageNet JPEGs is ~28 MB, and a shard
            # may hold 1 GiB (a few large images would make one row group most of it).
            for batch in pq.ParquetFile(f).iter_batches(batch_size=SHARD_READ_ROWS, columns=columns):
                table = pa.Table.from_batches([batch])
                if len(excluded):
                    table = table.filter(pc.invert(pc.is_in(table["path"], value_set=excluded)))
                if table.num_rows:
                    yield table

    return ParquetShards(paths, filesystem=filesystem, shuffle=shuffle)


# Rows of a Parquet shard read at once (a block of the read).
SHARD_READ_ROWS = 64


# Shards (Parquet or raw-uint8) per read task, at most: Ray Data starts one task at a time until its
# first resource refresh (about a second), so 16 small shards read as 16 tasks took 1.2-1.4 s where 2
# tasks took 0.13 s (benchmarks/rows/ingest.py: shard-reader, raw-shard-tasks); an ImageNet shard of
# 1,000 images is seconds of decoding, so 8 of them keep a retried task cheap.
SHARDS_PER_TASK = 8


def _read_shards(source, shards: int, num_cpus: float) -> ray.data.Dataset:
    """A shard datasource as a dataset: up to SHARDS_PER_TASK shards a read task, but at least one task
    per slot the cluster has for tasks of ``num_cpus`` (so a few shards still read on every core)."""
    return ray.data.read_datasource(source, num_cpus=num_cpus, override_num_blocks=_read_tasks(shards, SHARDS_PER_TASK, num_cpus))


def read_parquet_shards(paths: list[str], *, filesystem, num_cpus: float, shuffle: Any = None,
                        columns: list[str] | None = None, exclude_keys: Iterable[str] = ()) -> ray.data.Dataset:
    """:func:`parquet_shards` as a dataset, read as every shard source is (:func:`_read_shards`)."""
    source = parquet_shards(paths, filesystem=filesystem, shuffle=shuffle, columns=columns, exclude_keys=exclude_keys)
    return _read_shards(source, len(paths), num_cpus)


def _image_files(paths: list[str], sizes: list[int], *, filesystem, shuffle: Any, to_block: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
                 row_bytes: int | None, max_bytes: int) -> Datasource:
    """A Ray Data datasource whose read tasks read image files and turn them into blocks themselves,
    IMAGES_PER_BLOCK files at a time: ``to_block({"bytes", "path"})`` gives a block's columns (the
    decode and crop, or the keys for decoding on the GPU). A task reads its files on a few threads on an
    object store (a GET waits tens of milliseconds; reads run ahead of the decode) and on its own
    thread locally (READ_THREADS_PER_TASK says why).

    Not a ``FileBasedDatasource`` with a fused ``map_batches``: that makes a one-row Arrow block per
    file, adds its path column, concatenates them and runs the UDF once per block, about 0.25 ms of the
    task's 0.9 ms an image here (BENCHMARKS.md, "Ingest read tasks that decode"). The file order is
    shuffled at every execution (epoch) as ``shuffle`` (:func:`_file_shuffle`) says, as the shard
    sources shuffle their shards. The sizes (for Ray Data's memory budget) come from the project's own
    listing: Ray Data runs no metadata pass over the paths. ``row_bytes``: a block row's size, for that
    budget (None: rows are the files themselves). A read takes at most ``max_bytes`` + 1 bytes of a
    file (:func:`srgan.io.storage.read_at_most`): the decoder refuses a larger one as ``too_large``."""
    from ray._common.retry import call_with_retry  # RAY: the retry Ray Data's file reads use
    from ray.data.block import BlockAccessor, BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    threads = read_threads(filesystem)

    def read_task(task_paths: list[str], retried: list[str]) -> Callable[[], Iterable[Any]]:
        def fetch(path: str) -> bytes:
            # Transient errors the filesystem's own retries left (Ray Data's DataContext.retried_io_errors).
            return call_with_retry(partial(read_at_most, filesystem, path, max_bytes), description=f"read {path}", match=retried)

        def blocks() -> Iterable[Any]:
            files = _read_ahead(task_paths, fetch, threads)
            while group := list(itertools.islice(files, IMAGES_PER_BLOCK)):
                batch = {"bytes": np.empty(len(group), dtype=object), "path": np.array([p for p, _ in group], dtype=object)}
                batch["bytes"][:] = [data for _, data in group]  # (element-wise: equal-length bytes would become a 2-D array)
                yield BlockAccessor.batch_to_block(to_block(batch))

        return blocks

    class ImageFiles(Datasource):  # RAY
        def get_name(self) -> str:
            return "ImageFiles"

        def estimate_inmemory_data_size(self) -> int:
            return len(paths) * row_bytes if row_bytes is not None else sum(sizes)

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
            # Ray Data counts executions in its DataContext: a new file order per epoch, seeded as its
            # own file reads seed theirs (FileShuffleConfig.get_seed).
            execution = getattr(data_context, "_execution_idx", 0)
            retried = list(getattr(data_context, "retried_io_errors", []))
            seed = None if shuffle == "files" else shuffle.get_seed(execution)
            order = np.random.default_rng(seed).permutation(len(paths))
            tasks = []
            for part in np.array_split(order, max(1, min(parallelism, len(paths)))):
                task_paths = [paths[i] for i in part]
                task_bytes = len(part) * row_bytes if row_bytes is not None else sum(sizes[i] for i in part)
                # num_rows unknown: skips make any count a guess, and Ray Data's count() would return it unread.
                meta = BlockMetadata(num_rows=None, size_bytes=task_bytes, input_files=task_paths, exec_stats=None)
                tasks.append(ReadTask(read_task(task_paths, retried), meta, per_task_row_limit=per_task_row_limit))
            return tasks

    return ImageFiles()


# Files a block of the image-file read holds: one decode call, and a few hundred kB of crops (3.5 MB
# of encoded bytes on the GPU path). One file a block cost about 0.25 ms an image in Arrow and Ray
# Data's per-block work; at 32 those costs are a few percent of one decode.
IMAGES_PER_BLOCK = 32


def _read_ahead(paths: list[str], fetch: Callable[[str], bytes], threads: int) -> Iterable[tuple[str, bytes]]:
    """``(path, fetch(path))`` in order; with ``threads`` > 1, up to 2 x threads fetches run ahead of the
    one handed out, on a pool."""
    if threads <= 1:
        for path in paths:
            yield path, fetch(path)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads, thread_name_prefix="srgan-read") as pool:
        pending: deque = deque()
        for path in paths:
            pending.append((path, pool.submit(fetch, path)))
            if len(pending) > 2 * threads:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


# Concurrent reads per read/decode task on an object store (GETs wait tens of milliseconds and release
# the GIL). Local files are read on the task's own thread: from the page cache a read costs 0.04 ms,
# and 8 threads made the decode tasks use 1.14 ms of CPU an image instead of 0.93 (an epoch of 8,192
# local images 19% longer, medians of 5; the ingest-pipeline-local row). Measured on page-cached
# files: a local disk read cold, or a network filesystem mounted as a local path, waits on I/O that
# one thread does not overlap (pack such data into shards, which a task reads sequentially).
READ_THREADS_PER_TASK = 8


def read_threads(filesystem) -> int:
    """Reads in flight per read task of :func:`_image_files` on ``filesystem``: 1 for local paths,
    READ_THREADS_PER_TASK for an object store."""
    return 1 if _is_local(filesystem) else READ_THREADS_PER_TASK


def _bytes_batch(batch: dict[str, np.ndarray], *, image_column: str, root: str | None) -> dict[str, np.ndarray]:
    """The block of ``data.decode_device: cuda`` (as :func:`_decode_crop_batch` is for the CPU):
    {image_column, path} -> {"bytes", "path"} with the keys a skip is reported under; nothing is
    decoded (the Train worker decodes on its GPU)."""
    paths = [str(p) if root is None else relative_key(str(p), root) for p in batch["path"]]
    return {"bytes": batch[image_column], "path": np.asarray(paths, dtype=object)}


def epoch_passes(objects: int, min_objects_per_epoch: int) -> int:
    """How many times an epoch reads a raw prefix of ``objects`` objects: enough to reach
    ``min_objects_per_epoch`` (at least once; 0 = once)."""
    return max(1, math.ceil(min_objects_per_epoch / max(objects, 1)))


# Objects a training epoch of a raw prefix should hold at least (small sets are read several times per
# epoch): an execution's start-up then comes every few hundred batches, not every few.
MIN_OBJECTS_PER_EPOCH = 4096


def training_epoch_objects(*, steps: int, batch_size: int, crops_per_image: int) -> int:
    """The ``min_objects_per_epoch`` training asks for: MIN_OBJECTS_PER_EPOCH, or the objects the whole
    run needs if that is fewer (decoding ahead of a run that stops would take the CPU from its last steps)."""
    return min(MIN_OBJECTS_PER_EPOCH, math.ceil(steps * batch_size / crops_per_image))


def _read_tasks(objects: int, files_per_task: int, num_cpus: float) -> int:
    """Read tasks for ``objects`` files: ``files_per_task`` each, but at least one per slot the cluster
    has for such tasks (so a small prefix still decodes on every core), and never an empty one."""
    cpus = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else 1  # RAY (the read starts Ray if need be)
    slots = max(1, int(cpus // num_cpus))
    return max(1, min(objects, max(math.ceil(objects / files_per_task), slots)))


def _file_shuffle(seed: int | None) -> Any:
    """A file order that changes at every epoch (execution); reproducible per epoch when ``seed`` is set."""
    from ray.data import FileShuffleConfig

    if seed is None:
        return "files"
    return FileShuffleConfig(seed=seed, reseed_after_execution=True)


def build_train_dataset(
    uri: str,
    *,
    crop_size: int = 96,
    crops_per_image: int = 1,
    s3_endpoint: str | None = None,
    limits: ImageLimits = ImageLimits(),
    skip_counter_name: str,
    seed: int | None = None,
    files_per_task: int = 1024,
    num_cpus: float = 1.0,
    decode: str = "cpu",
    min_objects_per_epoch: int = 0,
) -> ray.data.Dataset:
    """A Ray Dataset of random HR training crops: rows ``{"gt": uint8 (3, crop_size, crop_size)}``, RGB, 0..255.

    ``uri`` is an image prefix (local, ``file://`` or ``s3://``; jpg/jpeg/png/webp/bmp in any case, any
    depth) or Parquet shards from :func:`pack_images` (a ``.parquet`` file or a prefix holding them).
    Every epoch (each iteration of the dataset) reads the files in a new order and draws new crop
    positions. The LR input is not made here: the trainer calls :func:`srgan.core.degrade.degrade` on its
    device, and converts ``gt`` to [-1, 1] there.

    With ``crops_per_image == 1`` each row comes from a different image, so every training batch holds
    crops of distinct images (the paper's setting). With ``crops_per_image > 1`` the crops of an image
    are adjacent rows: the trainer should then iterate with a local shuffle buffer
    (``iter_torch_batches(local_shuffle_buffer_size=...)``) so they spread over batches. Rows of one
    Parquet shard keep their packed order (shuffled once by :func:`pack_images`); shards are reordered
    every epoch.

    Bad objects are skipped and reported to the :class:`SkipCounter` named ``skip_counter_name`` (read
    it with :func:`count_skips`); reusing a name adds to that counter. ``seed`` makes the per-epoch file
    order reproducible (crop positions always use fresh entropy).

    Each task reads and decodes (one fused Ray Data operator) up to ``files_per_task`` objects of a raw
    prefix, or up to SHARDS_PER_TASK (8) Parquet shards; a task needs ``num_cpus``. Decoding is
    single-threaded, so a task is one core's work: fractional tasks ran more tasks than cores, and Ray
    started and killed worker processes at every epoch; small tasks (32 objects) spent more time
    scheduled than decoding (docs/performance.md has the figures). Give less than 1 CPU only where less is free, as the
    trainer does on small machines where its workers hold CPUs.

    ``min_objects_per_epoch``: a raw prefix smaller than this is read several times per epoch
    (:func:`epoch_passes`; the passes are shuffled together, so a batch may hold two crops of one image).
    Each epoch is a new Ray Data execution, and an execution starts slowly (Ray Data runs one task at a
    time until its first resource refresh, a second in): a 15-image demo set restarted every 7 batches
    and the loop waited at every start. The trainer asks for 4,096 objects, or what the run needs if
    that is fewer. Shards are never repeated (they are for large data sets).

    A raw prefix is listed here, once (Ray Data takes the sizes from this listing). At ImageNet scale
    pack the prefix with ``pipelines/prepare.py`` instead: a task then reads a shard, not an object.

    ``raw-uint8`` shards (``prepare.py --format raw-uint8``: ``*.arrow`` files) are not decoded at all:
    the read tasks memory-map them (ranged reads on S3) and only cut windows; shards are reordered
    every epoch, rows keep their packed order. ``decode="cuda"`` (``data.decode_device``) leaves encoded sources undecoded: rows are then
    ``{"bytes", "path"}`` and the Train worker decodes them on its GPU (:func:`iter_device_crops`).
    """
    if crop_size < 1 or crops_per_image < 1:
        raise UserError(f"crop_size and crops_per_image must be >= 1, got {crop_size} and {crops_per_image}")
    if files_per_task < 1 or num_cpus <= 0:
        raise UserError(f"files_per_task must be >= 1 and num_cpus > 0, got {files_per_task} and {num_cpus}")
    import ray.data  # here, not at the top: packing and the pure functions don't need Ray Data

    if decode not in ("cpu", "cuda"):
        raise UserError(f"decode must be cpu or cuda, got {decode!r}")
    shuffle = _file_shuffle(seed)
    if is_raw_source(uri, s3_endpoint=s3_endpoint):  # nothing to decode: the read tasks cut the crops
        fs, shards = list_raw_shards(uri, s3_endpoint=s3_endpoint)
        counter = get_skip_counter(skip_counter_name)
        source = _raw_shards(shards, filesystem=fs, shuffle=shuffle, crop_size=crop_size, crops_per_image=crops_per_image, counter=counter)
        return _read_shards(source, len(shards), num_cpus)
    if is_parquet_source(uri, s3_endpoint=s3_endpoint):
        fs, shards = list_parquet_shards(uri, s3_endpoint=s3_endpoint)
        ds = read_parquet_shards(shards, filesystem=fs, num_cpus=num_cpus, shuffle=shuffle, columns=list(SHARD_COLUMNS))
        counter = get_skip_counter(skip_counter_name)
        # batch_size=None: the UDF takes each block the read yields (SHARD_READ_ROWS rows), which lets
        # Ray fuse it into the read task; a batch size would make a separate operator, and every block
        # would travel through the object store to be decoded. (Shards already store keys relative to
        # the packed prefix: root None.) Not randomize_block_order(): it is an all-to-all barrier (the
        # whole epoch is read before the first batch leaves); the shards are reordered at every epoch.
        fn, fn_kwargs = _block_fn(decode, image_column="image", root=None, crop_size=crop_size, crops_per_image=crops_per_image,
                                  limits=limits, counter=counter)
        return ds.map_batches(fn, batch_size=None, num_cpus=num_cpus, fn_kwargs=fn_kwargs)
    fs, root, images = list_image_infos(uri, s3_endpoint)
    passes = epoch_passes(len(images), min_objects_per_epoch)
    paths, sizes = [i.path for i in images] * passes, [i.size for i in images] * passes
    counter = get_skip_counter(skip_counter_name)  # after listing: a bad URI leaves no actor behind
    fn, fn_kwargs = _block_fn(decode, image_column="bytes", root=root, crop_size=crop_size, crops_per_image=crops_per_image,
                              limits=limits, counter=counter)
    # The datasource holds the counter's handle (in fn_kwargs), so the actor lives while the dataset does.
    source = _image_files(paths, sizes, filesystem=fs, shuffle=shuffle, to_block=partial(fn, **fn_kwargs),
                          row_bytes=None if decode == "cuda" else crops_per_image * 3 * crop_size * crop_size, max_bytes=limits.max_bytes)
    return ray.data.read_datasource(source, num_cpus=num_cpus, override_num_blocks=_read_tasks(len(paths), files_per_task, num_cpus))


def _block_fn(decode: str, *, image_column: str, root: str | None, crop_size: int, crops_per_image: int, limits: ImageLimits,
              counter: ray.actor.ActorHandle) -> tuple[Callable[..., dict[str, np.ndarray]], dict[str, Any]]:
    """What turns a batch of encoded objects into a block, and its keyword arguments: the decode and
    crop on the CPU, or (``decode="cuda"``) only the keys, for the Train worker's GPU decode."""
    if decode == "cuda":
        return _bytes_batch, {"image_column": image_column, "root": root}
    return _decode_crop_batch, {"image_column": image_column, "root": root, "crop_size": crop_size, "crops_per_image": crops_per_image,
                                "limits": limits, "counter": counter}


# --------------------------------------------------------------------------------------- decoding on the Train worker


def decodes_on_worker(uri: str, decode: str, *, s3_endpoint: str | None = None) -> bool:
    """True if :func:`build_train_dataset` ships encoded bytes for the Train workers to decode:
    ``decode == "cuda"`` and the source is not raw-uint8 shards (those need no decoding anywhere)."""
    return decode == "cuda" and not is_raw_source(uri, s3_endpoint=s3_endpoint)


def iter_device_crops(shard, *, crop_size: int, crops_per_image: int, batch_size: int, device, prefetch_batches: int,
                      skip_counter_name: str, limits: ImageLimits = ImageLimits(), seed: int | None = None):
    """One epoch of uint8 HR crop batches (batch_size, 3, c, c) on ``device``, decoded on the worker.

    Ray Data prefetches the encoded bytes on its own thread; here each batch of objects is decoded
    with :func:`srgan.io.datasets.decode_and_crop_on` (nvjpeg on CUDA, CPU fallback for the rest),
    bad objects go to the :class:`SkipCounter`, and :class:`srgan.core.images.CropBatcher` regroups
    the crops into full batches (skips make decoded batches short), mixing an image's crops over
    batches when ``crops_per_image > 1``. The last incomplete batch of an epoch is dropped, as
    ``drop_last`` does on the CPU path."""
    import torch

    from srgan.core.images import CropBatcher

    counter = ray.get_actor(skip_counter_name)  # RAY
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(rng.integers(2**62)))
    batcher = CropBatcher(batch_size, shuffle_pool=8 * batch_size if crops_per_image > 1 else 0, generator=generator)
    objects = max(1, batch_size // crops_per_image)  # about one training batch of crops per decode call
    for batch in shard.iter_batches(batch_size=objects, batch_format="numpy", prefetch_batches=prefetch_batches):  # RAY
        converted: SkipList = []
        crops, skips = decode_and_crop_on(batch, crop_size=crop_size, crops_per_image=crops_per_image, rng=rng, limits=limits,
                                          device=device, converted=converted)
        if skips or converted:
            ray.get(counter.add.remote(skips, converted))  # RAY: a summary read right after must include them
        yield from batcher.add(crops)
    yield from batcher.finish()
