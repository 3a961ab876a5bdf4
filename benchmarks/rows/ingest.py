"""The training ingest (srgan.distributed.ingest.build_train_dataset) end to end on a local Ray with 2 CPUs.

- ingest-pipeline-local / -s3: crops per second out of the Ray Data dataset (one epoch, iterated as the
  trainer does, time to first batch included), from local files and from a moto S3 server, against the
  decode-only loop (PIL, the same bytes in memory) in 2 processes: the most 2 cores can decode.
- ingest-vs-dataloader: the same dataset from local files against torch's DataLoader(num_workers=2)
  over the same files with the same decode and crop (srgan.io.datasets.decode_and_crop).
- listing: many small objects on moto, as a raw prefix and as Parquet shards of the same objects: time
  to the first batch (listing included) and the steady rate after it. BENCHMARKS.md extrapolates them
  to ImageNet's 1.28 M objects.
- shard-reader: the project's Parquet shard reader against ray.data.read_parquet on the same shards
  (rows/s of an epoch, target >= 0.9), and whether each finishes with less than one CPU free.
- raw-shard-tasks: a training epoch of raw-uint8 shards as the trainer reads them (up to 8 shards a
  task) against the same datasource at one task a shard.
Both sides of each row run back to back in this process (the dataset, then the baseline, alternating).
"""

from __future__ import annotations

import io
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import Row, Settings, local_ray, moto_s3, side_by_side

CROP = 96


# ------------------------------------------------------------------------------------------ the two sides


def _decode_only(blobs: list[bytes]) -> int:
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            im.load()
    return len(blobs)


def decode_only_processes(blobs: list[bytes], processes: int, pool) -> float:
    """Images per second of PIL's decode-only loop over ``blobs`` split across ``processes`` workers (the
    pool's workers already hold them, or a longer list that starts with them: only the count travels)."""
    t0 = time.perf_counter()
    done = sum(pool.map(_decode_only_shard, [(i, processes, len(blobs)) for i in range(processes)]))
    return done / (time.perf_counter() - t0)


_POOL_BLOBS: list[bytes] = []


def _init_pool(blobs: list[bytes]) -> None:
    global _POOL_BLOBS
    _POOL_BLOBS = blobs
    import torch

    torch.set_num_threads(1)


def _decode_only_shard(args: tuple[int, int]) -> int:
    index, count, limit = args  # the first ``limit`` of the pool's blobs (the pool holds the longest set)
    return _decode_only(_POOL_BLOBS[:limit][index::count])


def ray_epoch(uri: str, *, crops_per_image: int = 1, s3_endpoint: str | None = None, stop_after: int | None = None,
              steady_from: int = 0) -> dict:
    """One epoch of the training dataset as the trainer iterates it: seconds to the first batch, crops,
    seconds in all, and the steady rate: crops/s from the ``steady_from``-th crop on (after what the
    first blocks and the prefetch already hold). ``stop_after``: stop once this many crops came."""
    from srgan.distributed.ingest import build_train_dataset

    t0 = time.perf_counter()
    ds = build_train_dataset(uri, crop_size=CROP, crops_per_image=crops_per_image, s3_endpoint=s3_endpoint,
                             skip_counter_name="bench-skips")  # the trainer's task sizes: up to 1,024 objects, a CPU each
    first = t_steady = None
    crops = crops_steady = 0
    for batch in ds.iter_batches(batch_size=16, batch_format="numpy", prefetch_batches=2):
        crops += len(batch["gt"])
        if first is None:
            first = time.perf_counter() - t0
        if t_steady is None and crops >= max(steady_from, 1):
            t_steady, crops_steady = time.perf_counter(), crops
        if stop_after is not None and crops >= stop_after:
            break
    total = time.perf_counter() - t0
    steady = (crops - crops_steady) / max(time.perf_counter() - t_steady, 1e-9) if t_steady else float("nan")
    return {"first_s": first, "crops": crops, "seconds": total, "rate": crops / total, "steady": steady}


class _FileCrops:
    """A map-style torch Dataset: file i -> its uint8 (1, 3, 96, 96) crop, by the project's decoder."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from srgan.core.images import ImageLimits
        from srgan.io.datasets import decode_and_crop

        data = Path(self.paths[i]).read_bytes()
        batch = {"bytes": np.array([data], dtype=object), "path": np.array([self.paths[i]], dtype=object)}
        out, _ = decode_and_crop(batch, crop_size=CROP, crops_per_image=1, rng=np.random.default_rng(), limits=ImageLimits())
        return out["gt"][0]


def dataloader_epoch(paths: list[str], loader_holder: dict) -> float:
    """Crops per second of one epoch of DataLoader(num_workers=2, persistent workers) over ``paths``."""
    import torch

    if "loader" not in loader_holder:
        loader_holder["loader"] = torch.utils.data.DataLoader(_FileCrops(paths), batch_size=16, shuffle=True, num_workers=2,
                                                              persistent_workers=True, prefetch_factor=2,
                                                              multiprocessing_context="spawn")  # no fork of a process running Ray's threads
    t0, crops = time.perf_counter(), 0
    for batch in loader_holder["loader"]:
        crops += len(batch)
    return crops / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------ data


def _dataset_blobs(s: Settings, count: int) -> list[bytes]:
    """The ImageNet-like JPEGs, repeated to ``count`` (a short epoch; the long one is twice it)."""
    blobs = s.images["jpeg"]
    return (blobs * (count // len(blobs) + 1))[:count]


def local_epoch_images(s: Settings) -> int:
    """The short local epoch: 4,096 images quick (the trainer's smallest epoch), 8,192 full. An
    execution decodes on one core until Ray Data's first resource refresh (about 1 s in); epochs of
    960/1,920 were mostly that second, which T(2N) - T(N) does not cancel when N's first task ends
    before it (the decode tasks' spans showed two tasks at once for 0.05 s of 2.2 s)."""
    return 4096 if s.quick else 8192


def s3_epoch_images(s: Settings) -> int:
    """The short epoch on moto S3 (480 quick, 2,880 full): moto answers a GET in 15-25 ms on these
    cores, so longer S3 epochs would take minutes for a row that is only reported. (Quick took 960
    until 2026-12-07: its upload and two rounds of 960 + 1,920 GETs were about a minute of the quick
    suite, over its 10 minutes on a slow host.)"""
    return 480 if s.quick else 2880


def _write_local(blobs: list[bytes], folder: Path) -> list[str]:
    paths = []
    for i, b in enumerate(blobs):
        path = folder / f"c{i % 10}" / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b)
        paths.append(str(path))
    return paths


def _put_all(endpoint: str, bucket: str, items: list[tuple[str, bytes]], threads: int = 16) -> None:
    import boto3
    from concurrent.futures import ThreadPoolExecutor

    client = boto3.client("s3", endpoint_url=endpoint)
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), items))


# ------------------------------------------------------------------------------------------ rows


def _marginal(short: float, long: float, extra: int) -> float:
    """Crops per second of the ``extra`` crops the long epoch has over the short one: the fixed start-up
    of an execution (the same for both lengths) cancels out."""
    return extra / max(long - short, 1e-9)


def _rows_pipeline(s: Settings) -> list[Row]:
    """Each side runs an epoch of N and of 2N images; the steady rate is N / (T(2N) - T(N)), the start-up
    is what T(N) has beyond N at that rate. An ImageNet epoch (1.28 M images) pays the start-up once, so
    the steady rate is what the target is for; the end-to-end rate of the short epoch is shown too."""
    n, n_s3 = local_epoch_images(s), s3_epoch_images(s)
    blobs = _dataset_blobs(s, n)
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        return _pipeline_rows_in(work, s, n, n_s3, blobs)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # 12,288 files quick, 24,576 full


def _pipeline_rows_in(work: Path, s: Settings, n: int, n_s3: int, blobs: list[bytes]) -> list[Row]:
    trees = {"short": work / "short", "long": work / "long"}
    paths = {"short": _write_local(blobs, trees["short"]), "long": _write_local(blobs + blobs, trees["long"])}
    repeats = 2 if s.quick else 3
    ctx = multiprocessing.get_context("spawn")
    seconds: dict[str, list[float]] = {f"{side}_{length}": [] for side in ("local", "s3", "base", "loader") for length in ("short", "long")}
    firsts: dict[str, list[float]] = {"local": [], "s3": []}
    with moto_s3() as endpoint, local_ray(num_cpus=2), ctx.Pool(2, initializer=_init_pool, initargs=(blobs + blobs,)) as pool:
        for length, count in (("short", n_s3), ("long", 2 * n_s3)):
            _put_all(endpoint, "bench-ingest", [(f"{length}/c{i % 10}/img_{i:05d}.jpg", b) for i, b in enumerate((blobs + blobs)[:count])])
        decode_only_processes(blobs, 2, pool)  # warm-up
        ray_epoch(str(trees["short"]))  # warm-up: Ray's worker processes start once
        loaders = {length: {} for length in trees}
        for length in trees:
            dataloader_epoch(paths[length], loaders[length])
        for _ in range(repeats):
            for length, count in (("short", n), ("long", 2 * n)):
                local = ray_epoch(str(trees[length]))
                seconds[f"local_{length}"].append(local["seconds"])
                seconds[f"base_{length}"].append(count / decode_only_processes((blobs + blobs)[:count], 2, pool))
                s3 = ray_epoch(f"s3://bench-ingest/{length}", s3_endpoint=endpoint)
                seconds[f"s3_{length}"].append(s3["seconds"])
                seconds[f"loader_{length}"].append(count / dataloader_epoch(paths[length], loaders[length]))
                if length == "short":
                    firsts["local"].append(local["first_s"])
                    firsts["s3"].append(s3["first_s"])
        del loaders
        accounting = _cpu_of_epoch(str(trees["long"]))  # what bounds the steady ratio: who used the 2 cores
    med = {k: statistics.median(v) for k, v in seconds.items()}
    size = {"local": n, "s3": n_s3, "base": n, "loader": n}
    steady = {side: _marginal(med[f"{side}_short"], med[f"{side}_long"], size[side]) for side in size}
    start_up = {side: max(0.0, med[f"{side}_short"] - size[side] / steady[side]) for side in steady}

    def ran(k: int) -> str:
        return (f"epochs of {k} and {2 * k} 500x375 JPEG q90 (the ImageNet-like set repeated), 96x96 crops, 1 per image, local Ray 2 CPUs, "
                f"{repeats} alternating rounds; steady = {k} / (T({2 * k}) - T({k})), start-up = T({k}) - {k} / steady")

    rows = []
    for name, key in (("ingest-pipeline-local", "local"), ("ingest-pipeline-s3", "s3")):
        ratio = steady[key] / steady["base"]
        target, passed = (">= 0.8", ratio >= 0.8) if key == "local" else ("reported", True)
        k = size[key]
        rows.append(Row(name, f"{steady[key]:.0f} crops/s steady; start-up {start_up[key]:.1f} s (first batch {statistics.median(firsts[key]):.1f} s); "
                              f"{k / med[key + '_short']:.0f} crops/s over the {k}-image epoch",
                        f"{steady['base']:.0f} img/s (PIL decode only, 2 processes, in memory, {n}/{2 * n} images; {n / med['base_short']:.0f} over {n})",
                        ratio, target, passed, ran(k) + ("; moto S3 on 127.0.0.1 (shorter epochs: moto's GETs)" if key == "s3" else f"; {accounting}")))
    ratio = steady["local"] / steady["loader"]
    rows.append(Row("ingest-vs-dataloader", f"{steady['local']:.0f} crops/s steady (Ray Data; {n / med['local_short']:.0f} over {n})",
                    f"{steady['loader']:.0f} crops/s steady (DataLoader, 2 workers; {n / med['loader_short']:.0f} over {n})", ratio, ">= 1.0",
                    ratio >= 1.0, ran(n) + "; DataLoader: same files, decode_and_crop per image, batch 16, persistent workers"))
    return rows


def _cpu_of_epoch(uri: str) -> str:
    """One epoch of ``uri``, with the CPU every process used during it (from /proc), by kind, against
    the 2 cores' capacity over its wall time: where the cores went that the decode-only baseline had."""
    from benchmarks.common import cpu_by_kind, machine_busy_seconds, process_cpu_seconds

    before, busy0, t0, wall0 = process_cpu_seconds(), machine_busy_seconds(), time.perf_counter(), time.time()
    epoch = ray_epoch(uri)
    wall, busy = time.perf_counter() - t0, machine_busy_seconds() - busy0
    used = cpu_by_kind(before, process_cpu_seconds())
    capacity = (os.cpu_count() or 2) * wall  # every core's time, as machine_busy_seconds counts it
    parts = ", ".join(f"{kind} {seconds:.2f} s ({seconds / capacity:.0%})" for kind, seconds in used.items())
    return (f"CPU over one {epoch['crops']}-image epoch ({wall:.1f} s wall = {capacity:.1f} core-s of {os.cpu_count()} cores): {parts}; "
            f"idle {max(capacity - busy, 0.0):.2f} s ({max(capacity - busy, 0.0) / capacity:.0%}); {_task_spans(wall0)}")


def _task_spans(since: float) -> str:
    """The decode tasks Ray ran since ``since`` (ray.timeline(): each task's start and duration), and
    for how long two of them ran at once: what an idle core during the epoch was waiting for."""
    import ray

    def read() -> list[tuple[float, float]]:
        return sorted((e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6) for e in ray.timeline()
                      if e.get("ph") == "X" and str(e.get("cat", "")).startswith("task::ReadImageFiles") and e["ts"] / 1e6 >= since)

    # Task events reach the GCS in batches, about once a second: read until two reads a second apart agree.
    spans, deadline = read(), time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(1.0)
        if (again := read()) == spans and spans:
            break
        spans = again
    if not spans:
        return "no task spans in ray.timeline()"
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    both, running, last = 0.0, 0, edges[0][0]
    for t, step in edges:
        both += (t - last) if running >= 2 else 0.0
        running, last = running + step, t
    starts = ", ".join(f"{start - spans[0][0]:.2f}-{end - spans[0][0]:.2f} s" for start, end in spans)
    return f"{len(spans)} decode tasks ({starts} from the first start), two at once for {both:.2f} s"


def _tiny_jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    arr = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr).resize((128, 128), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _row_listing(s: Settings) -> Row:
    from srgan.io.datasets import list_image_infos, pack_images

    # Quick keeps 5,000 objects: at 2,500 (tried 2026-12-07, 66 s against 138 s) the raw prefix's
    # three read tasks had made every crop by its first batch (a task's crops leave it as one block, at
    # its end, below Ray Data's 128 MiB block target), so its "steady" window measured a buffer: 23,659
    # crops/s against 277 at 5,000.
    count = 5_000 if s.quick else 50_000
    # Steady: from the 2nd shard's worth of crops on (a shard is one 1,000-row block, decoded whole
    # before its first batch leaves), to stop_after.
    steady_from, stop_after = 1_000, (4_000 if s.quick else 20_000)
    bodies = [_tiny_jpeg(i) for i in range(64)]
    items = [(f"raw/n{i % 100:03d}/img_{i:06d}.jpg", bodies[i % len(bodies)]) for i in range(count)]
    with moto_s3() as endpoint, local_ray(num_cpus=2):
        t0 = time.perf_counter()
        _put_all(endpoint, "bench-listing", items)
        upload_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        list_image_infos("s3://bench-listing/raw", endpoint)
        list_s = time.perf_counter() - t0
        pack_images("s3://bench-listing/raw", "s3://bench-listing/shards", images_per_shard=1000, s3_endpoint=endpoint)
        ray_epoch("s3://bench-listing/shards", s3_endpoint=endpoint, stop_after=200)  # warm-up: Ray's workers
        raw = ray_epoch("s3://bench-listing/raw", s3_endpoint=endpoint, stop_after=stop_after, steady_from=steady_from)
        shards = ray_epoch("s3://bench-listing/shards", s3_endpoint=endpoint, stop_after=stop_after, steady_from=steady_from)
    return Row("listing", f"shards: first batch {shards['first_s']:.1f} s, then {shards['steady']:.0f} crops/s",
               f"raw prefix: first batch {raw['first_s']:.1f} s, then {raw['steady']:.0f} crops/s", raw["first_s"] / shards["first_s"],
               "report both (ratio: raw / shards time to first batch)", True,
               f"{count:,} objects of 128x128 JPEG (~{len(bodies[0]) // 1000} kB) on moto S3, 96x96 crops, local Ray 2 CPUs; driver listing alone "
               f"{list_s:.1f} s ({list_s / count * 1e6:.0f} us/object); steady rate from crop {steady_from:,} to {stop_after:,}; "
               f"{count // 1000} shards of 1,000; upload took {upload_s:.0f} s")


def _epoch_rows(make_dataset, column: str, batch_format: str = "pyarrow") -> Callable[[], int]:
    """A timing side: one epoch of a fresh ``make_dataset()``, blocks as they come; its row count."""

    def run() -> int:
        return sum(len(batch[column]) for batch in make_dataset().iter_batches(batch_size=None, batch_format=batch_format))

    return run


def _packed_copies(blobs: list[bytes], count: int, root: Path, *, per_shard: int, fmt: str = "encoded") -> Path:
    """``count`` files of the photos (repeated) under root/src, packed by pack_images into root/shards."""
    from srgan.io.datasets import pack_images

    src = root / "src"
    src.mkdir()
    for i in range(count):
        (src / f"n{i % 10:02d}_{i:05d}.jpg").write_bytes(blobs[i % len(blobs)])
    pack_images(str(src), str(root / "shards"), images_per_shard=per_shard, threads=2, format=fmt)
    return root / "shards"


def _stalls(make_dataset, timeout_s: float) -> str:
    """'finished in N s' or 'stalled' for one epoch under Ray Data's no-progress guard of ``timeout_s``."""
    from ray.data.exceptions import ExecutionTimeoutError

    ds = make_dataset()
    ds.context.execution_no_progress_timeout_s = timeout_s
    t0 = time.perf_counter()
    try:
        ds.materialize()
    except ExecutionTimeoutError:
        return f"stalled ({timeout_s:.0f} s without progress)"
    return f"finished in {time.perf_counter() - t0:.1f} s"


def _row_shard_reader(s: Settings) -> Row:
    """The project's Parquet shard reader (srgan.distributed.ingest.read_parquet_shards) against
    ray.data.read_parquet over the same shards: rows/s of an epoch with the cluster free, each at
    1 CPU a read task; then both with 0.75 CPU free (the bulk job's actor holding the rest)."""
    import pyarrow.fs as pafs
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from srgan.distributed.ingest import read_parquet_shards
    from srgan.io.datasets import list_parquet_shards

    shards_n, per_shard = (4, 128) if s.quick else (16, 256)
    blobs = s.images["jpeg"]
    with tempfile.TemporaryDirectory() as tmp, local_ray(num_cpus=2):
        fs, paths = list_parquet_shards(str(_packed_copies(blobs, shards_n * per_shard, Path(tmp), per_shard=per_shard)))

        def ours(num_cpus: float = 1.0):  # as ingest and the bulk job read shards (up to 8 a task)
            return read_parquet_shards(paths, filesystem=fs, num_cpus=num_cpus, columns=["path", "image"])

        def theirs(num_cpus: float = 1.0):
            return ray.data.read_parquet(paths, filesystem=pafs.LocalFileSystem(), columns=["path", "image"], partitioning=None, num_cpus=num_cpus)

        project, baseline = side_by_side(_epoch_rows(ours, "path"), _epoch_rows(theirs, "path"), s)
        blocker = placement_group([{"CPU": 1.25}])
        ray.get(blocker.ready(), timeout=60)
        try:
            # Ray Data's no-progress guard: ours finishes in well under a second, so the window only
            # sets how long read_parquet is given before it counts as stalled.
            window = 15 if s.quick else 30
            held = (_stalls(lambda: ours(0.25), window), _stalls(lambda: theirs(0.25), window))
        finally:
            remove_placement_group(blocker)
    ratio = project / baseline
    mb = shards_n * per_shard * sum(map(len, blobs)) / len(blobs) / 1e6
    return Row("shard-reader", f"{project:.0f} rows/s (read_parquet_shards)", f"{baseline:.0f} rows/s (ray.data.read_parquet)", ratio, ">= 0.9",
               ratio >= 0.9 and held[0].startswith("finished"),
               f"{shards_n} local shards x {per_shard} JPEG rows ({mb:.0f} MB), a whole epoch per timing (Ray Data's start-up "
               f"included), no decode, local Ray 2 CPUs, read tasks at 1 CPU (the project's: up to 8 shards a task); with 1.25 CPU held and read tasks at 0.25 CPU: "
               f"read_parquet_shards {held[0]}, read_parquet {held[1]}")


def _row_raw_shard_tasks(s: Settings) -> Row:
    """A training epoch of raw-uint8 shards as the trainer reads them (build_train_dataset: up to 8
    shards a read task) against the same datasource at one task a shard (Ray Data's own count)."""
    import ray

    from srgan.distributed.ingest import _raw_shards, build_train_dataset, get_skip_counter
    from srgan.io.datasets import list_raw_shards

    shards_n, per_shard = (8, 32) if s.quick else (16, 64)
    blobs = s.images["jpeg"]
    with tempfile.TemporaryDirectory() as tmp, local_ray(num_cpus=2):
        raw = _packed_copies(blobs, shards_n * per_shard, Path(tmp), per_shard=per_shard, fmt="raw-uint8")
        fs, paths = list_raw_shards(str(raw))
        counter = get_skip_counter("bench-raw-skips")

        def project():
            return build_train_dataset(str(raw), crop_size=CROP, skip_counter_name="bench-raw-skips")

        def one_task_a_shard():
            source = _raw_shards(paths, filesystem=fs, shuffle=None, crop_size=CROP, crops_per_image=1, counter=counter)
            return ray.data.read_datasource(source, num_cpus=1.0)

        ours, baseline = side_by_side(_epoch_rows(project, "gt", "default"), _epoch_rows(one_task_a_shard, "gt", "default"), s)
    ratio = ours / baseline
    return Row("raw-shard-tasks", f"{ours:.0f} crops/s (up to 8 shards a task)", f"{baseline:.0f} crops/s (one task a shard)", ratio, ">= 1.0",
               ratio >= 1.0, f"{shards_n} local raw-uint8 shards x {per_shard} 500x375 images, one 96x96 crop each, a whole epoch per "
               f"timing (Ray Data's start-up included), 1 CPU a read task, local Ray 2 CPUs")


ROWS = {
    "ingest-pipeline-local": _rows_pipeline,  # also ingest-pipeline-s3 and ingest-vs-dataloader (one set-up)
    "listing": _row_listing,
    "shard-reader": _row_shard_reader,
    "raw-shard-tasks": _row_raw_shard_tasks,
}


def _row_sizing(s: Settings) -> Row:
    """Per-core rates docs/sizing.md needs beyond the decode rows: cropping pre-decoded uint8 images
    (what a pre-decoded shard leaves to the CPU) and reading encoded bytes from a Parquet shard (all the
    CPU does when the GPU decodes), both on 1 thread."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.common import median_rate, torch_threads
    from srgan.core.images import decode_rgb_uint8, random_windows

    blobs = s.images["jpeg"]
    arrays = [decode_rgb_uint8(b) for b in blobs]
    rng = np.random.default_rng(0)

    def crop_decoded() -> int:
        crops = [random_windows(a, CROP, 1, rng) for a in arrays]
        np.concatenate(crops)
        return len(arrays)

    shard = Path(tempfile.mkdtemp(prefix="bench-sizing-")) / "part.parquet"
    many = (blobs * (480 // len(blobs) + 1))[:480]
    pq.write_table(pa.table({"path": [f"k{i}" for i in range(len(many))], "image": pa.array(many, pa.binary())}), shard)

    def read_bytes() -> int:
        table = pq.read_table(shard, columns=["image"])
        return table.num_rows

    with torch_threads(1):
        crop_rate = median_rate(crop_decoded, s.repeats, s.min_seconds)
        read_rate = median_rate(read_bytes, s.repeats, s.min_seconds)
    mean_kb = sum(map(len, blobs)) / len(blobs) / 1e3
    return Row("sizing-per-core", f"pre-decoded crop {crop_rate:.0f} img/s; shard bytes {read_rate:.0f} img/s", "", float("nan"), "report", True,
               f"1 thread; {len(blobs)} 500x375 images as uint8 arrays -> one 96x96 crop each (channel-first copy); "
               f"a local Parquet shard of {len(many)} JPEG q90 ({mean_kb:.0f} kB each) read whole (encoded bytes only, for GPU decoding)")


ROWS["sizing-per-core"] = _row_sizing
ALIASES = {"ingest-pipeline-s3": "ingest-pipeline-local", "ingest-vs-dataloader": "ingest-pipeline-local"}
