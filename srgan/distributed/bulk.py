"""Bulk upscaling of an object-store prefix (a Ray edge): Ray Data + the Upscaler on an actor pool.

    plan, on the driver (no Ray): list the inputs (an image prefix at any depth, or Parquet shards made
        by pipelines/prepare.py), map each key to its output key (same relative key, the output
        format's extension), list the output prefix once: inputs whose output exists are skipped
      -> read_binary_files / parquet_shards      only what is left to do: the path list holds only the
                                                 images (or shards) with work left, and the shard reader
                                                 drops the done rows of half-done shards as it reads
      -> map_batches(UpscaleBatch, actor pool)   the generator loaded once per actor (num_gpus per actor
                                                 with gpu); decode, upscale (same-size images share a
                                                 forward pass, large ones are tiled), encode, write to
                                                 output_key(key) (a pure function: no key map is sent)
      -> one result row per input                the driver prints progress, then a summary, and writes
                                                 the errors report

Guarantees:
- Resumable: a rerun skips every input whose output exists and reads nothing else of it. Failed inputs
  have no output, so a rerun tries them again.
- Never a partial output: an S3 object is written by one PUT (visible whole or not at all); a local
  file is written under a hidden temporary name in the same folder, then renamed. Temporary files left
  by a killed run are removed by the next run.
- A bad input (corrupt, truncated, empty, not an image, too large, or colliding with another input's
  output key) is listed with its key, kind and reason in ``_upscale_errors.jsonl`` (JSON lines, sorted
  by key) under the output prefix; the job goes on. The report is rewritten only when it changes.
- The output prefix may not be the input prefix or lie inside it, so no input is ever overwritten.
- Transient object-store errors (503 SlowDown, 500, a reset connection) are retried with bounded
  attempts on every read, listing and write (srgan.io.storage): a run under faults writes the same
  bytes as a fault-free one (benchmarks/faults/data.py's s3-faults scenario compares them by hash).
- Scale: an actor's state is O(1) in the number of inputs (its constructor arguments are a few hundred
  bytes at a million inputs); the driver's plan is O(N) (the listing itself). BENCHMARKS.md's
  bulk-plan row measures both at 1,000,000 keys.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import Field, StrictBool, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from srgan.errors import UserError
from srgan.config import CORE, OPTIONS, Float, Int, PositiveInt, must, one_line
from srgan.core.images import FORMAT_EXTENSIONS, ImageError, ImageLimits, decode_image, encode_image
from srgan.core.inference import Upscaler, UpscalerOptions
from srgan.tracking.refs import DEFAULT_MODEL, RUNTIMES, ModelSource, load_upscaler, resolve_model
from srgan.io.storage import resolve, s3_client

__all__ = ["BulkUpscaleConfig", "BulkSummary", "UpscaleBatch", "output_key", "plan_outputs", "plan_from_listing",
           "actor_arguments", "run_bulk_upscale", "ERRORS_REPORT"]

log = logging.getLogger(__name__)

ERRORS_REPORT = "_upscale_errors.jsonl"
TMP_SUFFIX = ".srgan-partial"  # hidden local temporary files: ".<name>.<random>.srgan-partial"
# Output format when none is asked for: the input's, by extension (BMP is written as PNG).
FORMAT_BY_EXTENSION = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".bmp": "png"}
EXTENSION_FORMATS = {ext: fmt for fmt, ext in FORMAT_EXTENSIONS.items()}
RESULT_COLUMNS = ("key", "ok", "kind", "reason", "out_pixels")


# ------------------------------------------------------------------------------------------ config


def _flag(loc: tuple) -> str:
    return "--" + "-".join(map(str, loc)).replace("_", "-") if loc else ""  # the pipelines/upscale.py flag


@pydantic_dataclass(frozen=True, config=OPTIONS)
class BulkUpscaleConfig:
    """What ``pipelines/upscale.py`` runs. Sizes are LR (input) pixels. A bad value is a one-line :class:`UserError`."""

    input: str
    output: str
    model: str = DEFAULT_MODEL
    tracking_uri: str | None = None
    format: Annotated[str | None, must("png, jpeg or webp", lambda f: f is None or f in FORMAT_EXTENSIONS)] = None  # None: each input's own format
    quality: Annotated[Int, Field(ge=1, le=100)] = 90  # for jpeg and webp
    workers: PositiveInt = 1  # actors, each with its own copy of the generator
    gpu: StrictBool = False  # one GPU per actor
    num_cpus: Annotated[Float, Field(gt=0)] = 1.0  # CPUs reserved per actor (fractions allowed)
    batch_size: PositiveInt = 4  # images per map_batches call (same-size ones share a forward pass)
    tile_size: Int = 256
    s3_endpoint: str | None = None
    limits: Annotated[ImageLimits, CORE] = field(default_factory=ImageLimits)
    runtime: Annotated[str, must("torch or onnxruntime", lambda r: r in RUNTIMES)] = "torch"  # docs/export.md
    # A stalled execution (no result and no block moved for this long) is stopped and started again
    # for what is left, at most stall_retries times. It must exceed the longest batch: a 16 MP input
    # at 0.4 output MP/s on a CPU takes about 11 minutes (docs/serving.md's throughput figures).
    stall_timeout_s: Annotated[Float, Field(gt=0)] = 1800.0
    stall_retries: Annotated[Int, Field(ge=0)] = 2

    @model_validator(mode="after")
    def _check(self) -> BulkUpscaleConfig:
        self.upscaler_options()  # the core's own checks (tile_size)
        if self.runtime == "onnxruntime" and self.gpu:
            raise ValueError("the onnxruntime runtime runs on the CPU: drop --gpu, or use --runtime torch")
        return self

    _one_line = one_line(UserError, name=_flag)  # after the validator above, so that it wraps it

    def upscaler_options(self) -> UpscalerOptions:
        return UpscalerOptions(device="cuda" if self.gpu else "auto", tile_size=self.tile_size, max_batch=self.batch_size)


@dataclass
class BulkSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    output_pixels: int = 0
    seconds: float = 0.0
    errors_report: str | None = None  # URI of the report, when anything failed

    @property
    def output_megapixels(self) -> float:
        return self.output_pixels / 1e6

    @property
    def megapixels_per_s(self) -> float:
        return self.output_megapixels / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        errors = f" (see {self.errors_report})" if self.errors_report else ""
        return (f"done {self.done}, skipped {self.skipped}, failed {self.failed}{errors}; "
                f"{self.output_megapixels:.2f} output MP in {self.seconds:.1f} s = {self.megapixels_per_s:.3f} MP/s")


# ------------------------------------------------------------------------------------------ storage


def _join(root: str, key: str) -> str:
    return f"{root.rstrip('/')}/{key}"


class OutputStore:
    """Writes whole files/objects under an output prefix (see the module docstring)."""

    def __init__(self, uri: str, s3_endpoint: str | None) -> None:
        self.fs, self.root = resolve(uri, s3_endpoint=s3_endpoint)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.uri = self.root if self.local else uri.rstrip("/")  # for messages: local paths made absolute
        self._s3_endpoint = s3_endpoint
        self._client = None

    def put(self, key: str, data: bytes) -> None:
        path = _join(self.root, key)
        if self.local:
            directory, name = os.path.split(path)
            os.makedirs(directory, exist_ok=True)
            tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # atomic on one filesystem: the name appears with the whole content
            return
        if self._client is None:
            # boto3 for writes: one PUT per object, so an object is visible whole or not at all (pyarrow's
            # S3 streams complete a multipart upload even when a write failed part-way). It retries
            # transient errors (srgan.io.storage.s3_client); a whole-object PUT is idempotent.
            self._client = s3_client(self._s3_endpoint)
        bucket, _, object_key = path.partition("/")
        self._client.put_object(Bucket=bucket, Key=object_key, Body=data)

    def read(self, key: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(_join(self.root, key)) as f:
                return f.read()
        except (FileNotFoundError, OSError):
            return None

    def delete(self, key: str) -> None:
        self.fs.delete_file(_join(self.root, key))

    def existing(self) -> set[str]:
        """Keys (relative to the prefix) of every file under it; removes local temporaries left by a killed run."""
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise UserError(f"cannot list {self.uri}: {exc}") from None
        keys = set()
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            if self.local and info.base_name.startswith(".") and info.base_name.endswith(TMP_SUFFIX):
                self.fs.delete_file(info.path)
                continue
            keys.add(info.path[len(self.root) + 1 :])
        return keys


# ------------------------------------------------------------------------------------------ planning


@dataclass(frozen=True)
class Failure:
    key: str
    kind: str
    reason: str

    def to_json(self) -> str:
        return json.dumps({"key": self.key, "kind": self.kind, "reason": " ".join(self.reason.split())}, sort_keys=True)


@dataclass
class Plan:
    """What is left to do, and how to read only that.

    ``todo``: the input keys to process, sorted (their output keys are computed where they are needed,
    by :func:`output_key`, so no key -> output map is ever shipped). ``source_paths``: the image paths
    (filesystem form) of ``todo``, or the Parquet shards holding at least one ``todo`` key.
    ``excluded_keys``: for shards, the keys in ``source_paths`` that are not to be processed (done
    already, or the losing side of a collision); the shard reader drops them as it reads, so its size is
    bounded by the shards a previous run left half done, not by the dataset.
    """

    todo: list[str]
    skipped: int
    failures: list[Failure]
    parquet: bool
    in_fs: pafs.FileSystem | None
    in_root: str
    source_paths: list[str]
    excluded_keys: list[str] = field(default_factory=list)


def output_key(key: str, fmt: str | None) -> str:
    """The output key of input ``key``: same relative key, the output format's extension (pure, so the
    driver's plan and every actor agree without exchanging a map)."""
    dot = key.rfind(".")
    name_start = key.rfind("/") + 1
    if dot <= name_start or key[name_start] == ".":  # no extension, or a dot file: splitext's rules
        stem, ext = os.path.splitext(key)
    else:  # the common case, without splitext's generic path handling (a third of planning a million keys)
        stem, ext = key[:dot], key[dot:]
    return stem + FORMAT_EXTENSIONS[fmt or FORMAT_BY_EXTENSION.get(ext.lower(), "png")]


def _select(keys: Iterable[str], fmt: str | None, existing: set[str]) -> tuple[list[str], int, list[Failure]]:
    """(todo keys in key order, how many already have an output, collisions as failures).

    Two inputs that map to one output key (``a.jpg`` and ``a.png`` with ``--format png``): the first in
    key order wins, the other is a failure, so no output is ever written twice per run.
    """
    todo: list[str] = []
    owner: dict[str, str] = {}
    skipped, failures = 0, []
    for key in sorted(keys):
        out = output_key(key, fmt)
        if out in owner:
            failures.append(Failure(key, "collision", f"its output {out} is also the output of {owner[out]}"))
            continue
        owner[out] = key
        if out in existing:
            skipped += 1
        else:
            todo.append(key)
    return todo, skipped, failures


def plan_outputs(keys: Iterable[str], fmt: str | None, existing: set[str]) -> tuple[dict[str, str], int, list[Failure]]:
    """(todo: input key -> output key, how many already have an output, collisions as failures); see :func:`_select`."""
    todo, skipped, failures = _select(keys, fmt, existing)
    return {key: output_key(key, fmt) for key in todo}, skipped, failures


def _same_or_inside(inner: str, outer: str) -> bool:
    outer = outer.rstrip("/")
    return inner.rstrip("/") == outer or inner.startswith(outer + "/")


def _list_inputs(config: BulkUpscaleConfig) -> tuple[pafs.FileSystem, str, bool, dict[str, str], list[Failure]]:
    """(fs, root, parquet?, key -> path or shard, inputs refused by size) for the input URI."""
    from srgan.io.datasets import list_image_infos, is_parquet_source, list_parquet_shards

    if is_parquet_source(config.input, s3_endpoint=config.s3_endpoint):
        fs, shards = list_parquet_shards(config.input, s3_endpoint=config.s3_endpoint)
        located = {}
        for shard in shards:  # the key column only: cheap, and enough to plan
            for key in pq.read_table(shard, columns=["path"], filesystem=fs).column("path").to_pylist():
                located.setdefault(key, shard)
        return fs, resolve(config.input, s3_endpoint=config.s3_endpoint)[1], True, located, []
    fs, root, infos = list_image_infos(config.input, config.s3_endpoint)
    located, refused = {}, []
    for info in infos:
        key = info.path[len(root.rstrip("/")) + 1 :]
        if info.size is not None and info.size > config.limits.max_bytes:  # refused without reading it
            refused.append(Failure(key, "too_large", f"{info.size} bytes; the limit is {config.limits.max_bytes}"))
        else:
            located[key] = info.path
    return fs, root, False, located, refused


def plan_from_listing(located: dict[str, str], *, parquet: bool, fmt: str | None, existing: set[str],
                      in_fs: pafs.FileSystem | None = None, in_root: str = "", refused: Iterable[Failure] = ()) -> Plan:
    """The plan for a listing (key -> image path, or key -> the shard holding it) and the output
    prefix's existing keys. Pure (no I/O): benchmarks/rows/bulk.py plans a million synthetic keys with it."""
    todo, skipped, failures = _select(located, fmt, existing)
    paths = sorted({located[key] for key in todo})
    excluded: list[str] = []
    if parquet:
        # A shard that still holds work is read; the rows of it that are done (or lost a collision)
        # are filtered out in the read, so the actors never see them.
        wanted = set(todo)
        read = set(paths)
        excluded = sorted(key for key, shard in located.items() if shard in read and key not in wanted)
    return Plan(todo, skipped, list(refused) + failures, parquet, in_fs, in_root, paths, excluded)


def make_plan(config: BulkUpscaleConfig, store: OutputStore, *, also_done: Iterable[str] = ()) -> Plan:
    """List the inputs and the outputs; ``also_done``: input keys to treat as done (a restart's
    inputs that already have a result row)."""
    in_fs, in_root, parquet, located, refused = _list_inputs(config)
    if type(in_fs) is type(store.fs) and _same_or_inside(store.root, in_root):
        raise UserError(f"the output {config.output} is the input prefix or inside it: write the results elsewhere")
    existing = store.existing() | {output_key(k, config.format) for k in also_done}
    return plan_from_listing(located, parquet=parquet, fmt=config.format, existing=existing,
                             in_fs=in_fs, in_root=in_root, refused=refused)


# ------------------------------------------------------------------------------------------ the actor


class UpscaleBatch:
    """``map_batches`` callable class: the generator is loaded once per actor, then every batch is
    decoded, upscaled, encoded and written. Returns one row per input: key, ok, kind, reason, out_pixels.
    Bad input is a row with ``ok=False``, never an exception."""

    def __init__(self, *, source: ModelSource, options: UpscalerOptions, output: str, s3_endpoint: str | None,
                 in_root: str | None, fmt: str | None, quality: int, limits: ImageLimits, runtime: str = "torch") -> None:
        # O(1) state, whatever the number of inputs: the read delivers only what is left to do, and
        # each output key is computed here from its input key.
        self.upscaler = load_upscaler(source, runtime=runtime, options=options)
        self.store = OutputStore(output, s3_endpoint)
        self.in_root, self.fmt, self.quality, self.limits = in_root, fmt, quality, limits

    def _key(self, path: str) -> str:
        return path if self.in_root is None else path[len(self.in_root.rstrip("/")) + 1 :]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blobs = batch["bytes"] if "bytes" in batch else batch["image"]
        rows: list[tuple[str, bool, str, str, int]] = []
        decoded = []
        for path, blob in zip(batch["path"], blobs):
            key = self._key(str(path))
            try:
                decoded.append((key, decode_image(bytes(blob), limits=self.limits)))
            except ImageError as exc:
                rows.append((key, False, exc.kind, str(exc), 0))
        results = self._upscale_all([image for _, image in decoded])
        rows += [self._write(key, result) for (key, _), result in zip(decoded, results)]
        return {name: np.asarray([r[i] for r in rows], dtype=object) for i, name in enumerate(RESULT_COLUMNS)}

    def _upscale_all(self, images: list) -> list:
        """Same-size images share forward passes; if the batch fails, each image is tried alone, so
        only the image at fault is lost (an exception stands in for its result)."""
        try:
            return self.upscaler.upscale_images(images)
        except Exception:  # noqa: BLE001
            results = []
            for image in images:
                try:
                    results.append(self.upscaler.upscale_image(image))
                except Exception as exc:  # noqa: BLE001 - memory, a network too large for this device, ...
                    results.append(exc)
            return results

    def _write(self, key: str, result) -> tuple[str, bool, str, str, int]:
        if isinstance(result, Exception):
            return key, False, "error", f"{type(result).__name__}: {result}", 0
        out_key = output_key(key, self.fmt)
        try:
            self.store.put(out_key, encode_image(result, EXTENSION_FORMATS[os.path.splitext(out_key)[1]], quality=self.quality))
        except Exception as exc:  # noqa: BLE001 - a failed write is this input's failure, not the job's
            return key, False, "write_error", f"{type(exc).__name__}: {exc}", 0
        width, height = result.size
        return key, True, "", "", width * height


# ------------------------------------------------------------------------------------------ the job


def actor_arguments(config: BulkUpscaleConfig, plan: Plan, source: ModelSource) -> dict[str, Any]:
    """What every UpscaleBatch actor is constructed with: the same few fields for ten inputs or a
    million (benchmarks/rows/bulk.py measures its pickled size)."""
    return {
        "source": source,
        "options": config.upscaler_options(),
        "output": config.output,
        "s3_endpoint": config.s3_endpoint,
        "in_root": None if plan.parquet else plan.in_root,  # shards store keys relative to the packed prefix
        "fmt": config.format,
        "quality": config.quality,
        "limits": config.limits,
        "runtime": config.runtime,
    }


def _dataset(config: BulkUpscaleConfig, plan: Plan, source: ModelSource):
    """The Ray Data pipeline: read what is left to do -> UpscaleBatch on an actor pool -> result rows."""
    import ray  # RAY
    from ray.data import ActorPoolStrategy  # RAY

    read_cpus = 0.25  # reading is I/O: fractional CPUs leave the cores to the actors
    if plan.parquet:
        from srgan.distributed.ingest import read_parquet_shards

        # Rows already done are dropped as each shard is read (a shard all done was left out at planning).
        ds = read_parquet_shards(plan.source_paths, filesystem=plan.in_fs, num_cpus=read_cpus, columns=["path", "image"],
                                 exclude_keys=plan.excluded_keys)
    else:
        # A file removed since listing is dropped here and reported as missing by the driver.
        ds = ray.data.read_binary_files(plan.source_paths, filesystem=plan.in_fs, include_paths=True, ignore_missing_paths=True, num_cpus=read_cpus)
    ds = ds.map_batches(
        UpscaleBatch,
        fn_constructor_kwargs=actor_arguments(config, plan, source),
        batch_size=config.batch_size,
        compute=ActorPoolStrategy(size=config.workers),  # RAY: the generator is loaded once per actor
        num_cpus=config.num_cpus,
        num_gpus=1 if config.gpu else 0,
    )
    ds.context.execution_no_progress_timeout_s = config.stall_timeout_s  # RAY: raises ExecutionTimeoutError
    return ds


class _Progress:
    """Counts result rows; prints a line at most every ``every_s`` seconds."""

    def __init__(self, total: int, summary: BulkSummary, report: Callable[[str], None], every_s: float = 5.0) -> None:
        self.total, self.summary, self.report, self.every_s = total, summary, report, every_s
        self.t0 = self.last = time.perf_counter()

    def line(self) -> str:
        s, elapsed = self.summary, time.perf_counter() - self.t0
        return (f"upscaled {s.done + s.failed}/{self.total} ({s.failed} failed), "
                f"{s.output_megapixels:.2f} output MP, {s.output_megapixels / max(elapsed, 1e-9):.3f} MP/s")

    def tick(self) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            self.report(self.line())


def _execute(config: BulkUpscaleConfig, store: OutputStore, plan: Plan, source: ModelSource, summary: BulkSummary,
             report: Callable[[str], None]) -> list[Failure]:
    """Run the dataset; fills ``summary`` and returns the failures it met (missing inputs included).
    A stalled execution (:attr:`BulkUpscaleConfig.stall_timeout_s`) is started again for what is left:
    the outputs are listed again, so an input whose output was written but whose result row had not
    arrived is counted done, not redone."""
    from ray.data.exceptions import ExecutionTimeoutError  # RAY

    from srgan.distributed.cluster import init_ray  # RAY: the project's one way to join or start a cluster

    init_ray()  # (also turns Ray Data's progress bars off: the driver prints its own progress lines)
    failures: list[Failure] = []
    seen: set[str] = set()
    progress = _Progress(len(plan.todo), summary, report)
    todo, attempt = plan, 0
    while True:
        try:
            _consume(_dataset(config, todo, source), summary, failures, seen, progress)
            break
        except ExecutionTimeoutError as exc:
            attempt += 1
            if attempt > config.stall_retries:
                raise RuntimeError(f"the bulk job made no progress for {config.stall_timeout_s:.0f} s, {'once' if attempt == 1 else f'{attempt} times'} "
                                   f"({_stall_detail(exc)}); rerun the same command to continue (done outputs are kept)") from None
            todo = _left_to_do(config, store, plan, seen, summary)
            report(f"WARNING: no progress for {config.stall_timeout_s:.0f} s ({_stall_detail(exc)}); "
                   f"starting again for the {len(todo.todo)} input(s) left (retry {attempt}/{config.stall_retries})")
            if not todo.todo:
                break
    report(progress.line())
    missing = sorted(set(plan.todo) - seen)
    failures += [Failure(key, "missing", "the input could not be read (removed since it was listed?)") for key in missing]
    return failures


def _consume(ds, summary: BulkSummary, failures: list[Failure], seen: set[str], progress: _Progress) -> None:
    """Take the dataset's result rows into ``summary``, ``failures`` and ``seen``."""
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for key, ok, kind, reason, pixels in zip(*(batch[c] for c in RESULT_COLUMNS)):
            seen.add(str(key))
            if ok:
                summary.done += 1
                summary.output_pixels += int(pixels)
            else:
                summary.failed += 1
                failures.append(Failure(str(key), str(kind), str(reason)))
        progress.tick()


def _left_to_do(config: BulkUpscaleConfig, store: OutputStore, plan: Plan, seen: set[str], summary: BulkSummary) -> Plan:
    """The plan of a restart after a stall: the inputs and outputs listed again, less every input
    that already has a result row (a failed one too: it is not tried twice in one run). Inputs of
    ``plan`` that now have an output but no row are counted done here (their output pixels unknown)."""
    again = make_plan(config, store, also_done=seen)
    left = set(again.todo)
    written = [k for k in plan.todo if k not in seen and k not in left]
    summary.done += len(written)
    seen.update(written)
    return again


def _stall_detail(exc: Exception) -> str:
    """The stalled operators of Ray Data's message, and the cluster's free CPUs and GPUs: one line."""
    import ray  # RAY

    ops = "; ".join(line.strip(" -") for line in str(exc).splitlines() if line.startswith("  - "))
    free = ray.available_resources()
    return f"{ops or 'no operator named'}; free CPU {free.get('CPU', 0):g}, GPU {free.get('GPU', 0):g}"


def _write_report(store: OutputStore, failures: list[Failure]) -> str | None:
    """Write the errors report if it changed (so a rerun with the same failures writes nothing); remove it
    when nothing failed. Returns its URI, or None."""
    previous = store.read(ERRORS_REPORT)
    if not failures:
        if previous is not None:
            store.delete(ERRORS_REPORT)
        return None
    text = "".join(f.to_json() + "\n" for f in sorted(failures, key=lambda f: f.key)).encode()
    if previous != text:
        store.put(ERRORS_REPORT, text)
    return _join(store.uri, ERRORS_REPORT)


def run_bulk_upscale(config: BulkUpscaleConfig, *, report: Callable[[str], None] = print) -> BulkSummary:
    """Upscale every image under ``config.input`` into ``config.output`` (see the module docstring)."""
    t0 = time.perf_counter()
    try:
        store = OutputStore(config.output, config.s3_endpoint)
    except ValueError as exc:  # an unsupported scheme
        raise UserError(str(exc)) from None
    plan = make_plan(config, store)
    summary = BulkSummary(skipped=plan.skipped)
    report(f"{len(plan.todo)} to upscale, {plan.skipped} already done (skipped), {len(plan.failures)} refused")
    failures = list(plan.failures)
    if plan.todo:
        if config.runtime == "onnxruntime":
            from srgan.export import onnx_export

            onnx_export.require("onnxruntime")  # a missing extra is one line here, not an actor failure
        source = resolve_model(config.model, tracking_uri=config.tracking_uri)  # before Ray starts
        report(f"model {source.uri} ({config.runtime}); {config.workers} worker(s){' with a GPU each' if config.gpu else ''}")
        failures += _execute(config, store, plan, source, summary, report)
    summary.failed = len(failures)
    summary.errors_report = _write_report(store, failures)
    summary.seconds = time.perf_counter() - t0
    return summary
