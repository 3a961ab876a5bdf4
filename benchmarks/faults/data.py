"""Data scenarios of the reliability harness: a poisoned training set, S3 faults, the bulk job killed.

- ``data-poisoning``: a training prefix where 5% of the objects are poisoned, every category present
  (:data:`POISON`): corrupt, zero-byte, non-image, text named .jpg, tiny, 16-bit PNG, CMYK JPEG, palette
  PNG with transparency, EXIF-rotated, 100 megapixels. One epoch through the real ingest (Ray Data on
  the shared cluster): every category counted exactly, every good and converted object cropped, and
  the decode workers' memory under the stated bound (the 100 MP image is refused from its header).
- ``s3-faults``: ingest and the bulk job through the fault proxy (benchmarks/faults/s3proxy.py) at 20%
  faults, against the same through a fault-free proxy: the same objects and skip counts,
  byte-identical bulk outputs (hashes).
- ``bulk-kill-rerun`` (full only): the bulk job's driver SIGKILLed part-way, then rerun: exactly one
  complete output per input, nothing complete redone.

:func:`poisoned_objects` is also the poisoned set of tests/test_data_poisoning.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import struct
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.faults import Outcome, Run, Scenario, project_command, rss_mib

# Poison category -> (what the ingest must do with it: a skip kind, or a conversion kind).
POISON = {
    "corrupt": ("skip", "corrupt"),  # truncated JPEG or PNG
    "zero_byte": ("skip", "empty"),
    "non_image": ("skip", "not_image"),  # a gzip stream named .png
    "text_as_jpg": ("skip", "not_image"),
    "tiny": ("skip", "too_small"),  # smaller than a crop
    "huge_100mp": ("skip", "too_large"),  # 10000 x 10000: refused from the header
    "png16": ("convert", "16bit"),
    "cmyk": ("convert", "cmyk"),
    "palette_alpha": ("convert", "alpha"),
    "exif_rotated": ("convert", "exif_rotated"),
}
CROP = 32
HUGE_SIDE = 10_000  # 100 MP: 300 MB as 8-bit RGB if it were decoded
MEMORY_BYTES_PER_PIXEL = 72  # the stated decode bound, bytes per allowed pixel (docs/training.md; 65 measured, 16-bit RGBA)


# --------------------------------------------------------------------------------------- the poisoned set


def _photo() -> np.ndarray:
    from PIL import Image
    import skimage.data

    return np.asarray(Image.open(Path(skimage.data.__file__).parent / "astronaut.png").convert("RGB"))


def _save(img, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


class _Bits:
    """A deflate bit stream: fields LSB first, Huffman codes most significant bit first (RFC 1951)."""

    def __init__(self) -> None:
        self.value, self.n = 0, 0

    def put(self, value: int, count: int) -> None:
        self.value |= value << self.n
        self.n += count

    def code(self, code: int, count: int) -> None:
        self.put(int(f"{code:0{count}b}"[::-1], 2), count)

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.n + 7) // 8, "little")


_LITERAL_0 = (0b00110000, 8)  # fixed Huffman: literal 0
_RUN = ((0b11000101, 8), (0, 5))  # fixed Huffman: length 258 (code 285), distance 1 (code 0)


def _zeros_zlib(n: int) -> bytes:
    """A zlib stream of ``n`` zero bytes, written directly (one literal, then runs of 258 at distance 1):
    milliseconds for 300 MB, where zlib's compressor takes seconds. Eight runs are 13 bytes, so after
    the first run (24 bits with the header) the stream is one 13-byte unit repeated."""
    runs, tail = divmod(n - 1, 258)
    w = _Bits()
    w.put(1, 1)  # BFINAL
    w.put(1, 2)  # BTYPE 01: fixed Huffman codes
    w.code(*_LITERAL_0)
    parts = []
    if runs:
        for c in _RUN:
            w.code(*c)
        unit = _Bits()
        for _ in range(8):
            for c in _RUN:
                unit.code(*c)
        parts += [w.bytes(), unit.bytes() * ((runs - 1) // 8)]  # w is 24 bits: byte-aligned here
        w, runs = _Bits(), (runs - 1) % 8
    for _ in range(runs):
        for c in _RUN:
            w.code(*c)
    for _ in range(tail):
        w.code(*_LITERAL_0)
    w.code(0, 7)  # end of block
    parts.append(w.bytes())
    adler = ((n % 65521) << 16) | 1  # Adler-32 of n zero bytes
    return b"\x78\x01" + b"".join(parts) + struct.pack(">I", adler)


def _huge_png(side: int = HUGE_SIDE) -> bytes:
    """A complete, valid side x side RGB PNG, all black (every row: filter byte 0, then zeros): about
    1.9 MB for 100 MP, under the 20 MiB byte limit, so only the pixel limit can refuse it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = _zeros_zlib(side * (1 + 3 * side))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _window(photo: np.ndarray, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    top = int(rng.integers(0, photo.shape[0] - height))
    left = int(rng.integers(0, photo.shape[1] - width))
    return np.ascontiguousarray(photo[top : top + height, left : left + width])


def _poison(category: str, photo: np.ndarray, rng: np.random.Generator, huge: Callable[[], bytes]) -> tuple[str, bytes]:
    """(file extension, bytes) of one poisoned object of ``category``."""
    from PIL import Image

    from srgan.core.png import png16_bytes

    arr = _window(photo, rng, 48, 64)
    if category == "corrupt":
        data = _save(Image.fromarray(arr), "JPEG", quality=90) if rng.random() < 0.5 else _save(Image.fromarray(arr), "PNG")
        return (".jpg" if data[:2] == b"\xff\xd8" else ".png"), data[: len(data) // 2]
    if category == "zero_byte":
        return ".jpg", b""
    if category == "non_image":
        return ".png", zlib.compress(rng.bytes(256))  # binary, but no image
    if category == "text_as_jpg":
        return ".jpg", b"shopping list: milk, eggs, bread\nthis is not a photo\n"
    if category == "tiny":
        return ".png", _save(Image.fromarray(_window(photo, rng, CROP - 8, CROP - 4)), "PNG")
    if category == "huge_100mp":
        return ".png", huge()
    if category == "png16":
        return ".png", png16_bytes(arr.astype(np.uint16) * 257 + rng.integers(0, 257, arr.shape, dtype=np.uint16))
    if category == "cmyk":
        return ".jpg", _save(Image.fromarray(arr).convert("CMYK"), "JPEG", quality=90)
    if category == "palette_alpha":
        return ".png", _save(Image.fromarray(arr).quantize(16), "PNG", transparency=0)
    if category == "exif_rotated":
        img = Image.fromarray(arr)
        exif = img.getexif()
        exif[0x0112] = int(rng.choice([3, 6, 8]))
        return ".jpg", _save(img, "JPEG", quality=90, exif=exif.tobytes())
    raise ValueError(f"unknown poison category {category!r}")


def poisoned_objects(total: int, *, fraction: float = 0.05, seed: int = 0) -> tuple[dict[str, bytes], dict[str, str]]:
    """``total`` training objects, ``fraction`` of them poisoned, every :data:`POISON` category as
    evenly as the count allows (at least one each). -> (key -> bytes, poisoned key -> category).
    Good objects are plain 8-bit RGB JPEGs and PNGs, 40..96 px a side, without EXIF: nothing to convert."""
    from PIL import Image

    n_poison = max(len(POISON), round(total * fraction))
    if n_poison > total:
        raise ValueError(f"{total} objects cannot hold {n_poison} poisoned ones")
    rng = np.random.default_rng(seed)
    photo = _photo()
    cache: dict[str, bytes] = {}

    def huge() -> bytes:  # one 100 MP stream, shared by the huge objects
        if "png" not in cache:
            cache["png"] = _huge_png()
        return cache["png"]

    categories = [list(POISON)[i % len(POISON)] for i in range(n_poison)]
    slots = set(rng.choice(total, size=n_poison, replace=False).tolist())
    objects, poisoned = {}, {}
    poison_iter = iter(categories)
    for i in range(total):
        folder = f"n{i % 7:02d}"
        if i in slots:
            category = next(poison_iter)
            ext, data = _poison(category, photo, rng, huge)
            key = f"{folder}/{category}_{i:04d}{ext}"
            poisoned[key] = category
        else:
            arr = _window(photo, rng, int(rng.integers(40, 97)), int(rng.integers(40, 97)))
            fmt = "JPEG" if i % 2 else "PNG"
            key = f"{folder}/img_{i:04d}{'.jpg' if fmt == 'JPEG' else '.png'}"
            data = _save(Image.fromarray(arr), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        objects[key] = data
    return objects, poisoned


def expected_counts(poisoned: dict[str, str]) -> tuple[dict[str, int], dict[str, int]]:
    """(skip kind -> count, conversion kind -> count) the ingest must report for ``poisoned``."""
    skips: dict[str, int] = {}
    converted: dict[str, int] = {}
    for category in poisoned.values():
        action, kind = POISON[category]
        target = skips if action == "skip" else converted
        target[kind] = target.get(kind, 0) + 1
    return skips, converted


def write_tree(root: Path, objects: dict[str, bytes]) -> None:
    for key, data in objects.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)


# --------------------------------------------------------------------------------------- measuring


class WorkerMemory:
    """Samples the resident memory of the processes running a Ray task whose title holds ``marker``
    (Ray names a busy worker ``ray::<task>``), every ``interval`` s on a thread: each process's peak
    while it ran the task, then (``settle_s`` after the epoch) its resting RSS, with everything the
    task imports still loaded. Growth is peak minus resting: what decoding itself held at its worst
    (the first sample of a task is no baseline: the worker is still importing torch then)."""

    def __init__(self, marker: str, *, interval: float = 0.05, settle_s: float = 1.5) -> None:
        self.marker, self.interval, self.settle_s = marker, interval, settle_s
        self.peak: dict[int, float] = {}
        self.resting: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
                    if title.startswith("ray::") and self.marker in title:
                        pid = int(entry.name)
                        self.peak[pid] = max(self.peak.get(pid, 0.0), rss_mib(pid))
                except OSError:
                    continue
            self._stop.wait(self.interval)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        deadline = time.monotonic() + self.settle_s
        while time.monotonic() < deadline:  # the workers at rest: the lowest RSS each shows
            for pid in self.peak:
                try:
                    rss = rss_mib(pid)
                except OSError:  # gone (an idle worker Ray stopped): no resting figure for it
                    continue
                if rss > 0:  # an exiting (zombie) process has no VmRSS: no figure either
                    self.resting[pid] = min(self.resting.get(pid, float("inf")), rss)
            time.sleep(self.interval)

    @property
    def peak_mib(self) -> float:
        return max(self.peak.values(), default=0.0)

    @property
    def growth_mib(self) -> float:
        """The largest rise of one worker's peak over its resting RSS (workers still alive after the epoch)."""
        return max((self.peak[pid] - self.resting[pid] for pid in self.resting), default=0.0)


def _ray_init(run: Run) -> None:
    import ray

    if not ray.is_initialized():
        os.environ.update({k: v for k, v in run.env().items() if k.startswith("RAY_")})
        ray.init(address=run.ray_address, log_to_driver=False)


def _epoch(uri: str, *, counter: str, s3_endpoint: str | None = None, crops_per_image: int = 1) -> tuple[int, dict]:
    """One epoch of the real ingest: (crop rows, the skip counter's summary)."""
    from srgan.distributed.ingest import build_train_dataset, count_skips

    ds = build_train_dataset(uri, crop_size=CROP, crops_per_image=crops_per_image, s3_endpoint=s3_endpoint,
                             skip_counter_name=counter)
    rows = sum(len(b["gt"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
    return rows, count_skips(counter)


# --------------------------------------------------------------------------------------- data-poisoning


def data_poisoning(run: Run) -> Outcome:
    from srgan.core.images import ImageLimits

    total = 200 if run.quick else 1000
    out = Outcome("data-poisoning")
    t0 = time.monotonic()
    objects, poisoned = poisoned_objects(total, fraction=0.05, seed=13)
    root = run.dir("data-poisoning") / "train"
    write_tree(root, objects)
    made_s = time.monotonic() - t0
    want_skips, want_converted = expected_counts(poisoned)
    _ray_init(run)
    t1 = time.monotonic()
    with WorkerMemory("ReadImageFiles") as memory:
        rows, summary = _epoch(str(root), counter=f"poison-{uuid.uuid4().hex[:8]}")
    epoch_s = time.monotonic() - t1
    used = total - sum(want_skips.values())
    bound_mib = MEMORY_BYTES_PER_PIXEL * ImageLimits().max_pixels / 2**20
    bomb_mib = 3 * HUGE_SIDE * HUGE_SIDE / 2**20  # the 100 MP image as 8-bit RGB, had it been decoded
    out.ran = (f"{total} objects in {root} ({len(poisoned)} poisoned: {len(POISON)} categories), one epoch, crop {CROP}, "
               f"read and decoded as training does (tasks of up to 1,024 objects, a CPU each), on the shared cluster")
    out.figures.update({
        "objects": total, "poisoned": len(poisoned), "crops": rows,
        "skipped": " ".join(f"{k}={v}" for k, v in sorted(summary["counts"].items())),
        "converted": " ".join(f"{k}={v}" for k, v in sorted(summary["converted"].items())),
        "decode workers (at rest after)": f"{len(memory.peak)} ({len(memory.resting)})",
        "decode worker peak RSS": f"{memory.peak_mib:.0f} MiB",
        "decode worker growth over resting RSS": f"{memory.growth_mib:.0f} MiB",
        "stated bound (growth)": f"{bound_mib:.0f} MiB ({MEMORY_BYTES_PER_PIXEL} B x max_pixels)",
        "make set": f"{made_s:.1f} s", "epoch": f"{epoch_s:.1f} s",
    })
    out.check("every skip kind counted exactly", summary["counts"] == want_skips)
    out.check("every conversion counted exactly", summary["converted"] == want_converted)
    out.check("every good and converted object cropped once", rows == used)
    out.check("decode workers sampled, at work and at rest", bool(memory.peak) and bool(memory.resting))
    out.check("decode worker RSS growth under the stated bound", memory.growth_mib < bound_mib)
    out.check("the 100 MP image was not decoded (growth under its 8-bit size)", memory.growth_mib < bomb_mib)
    return out


# --------------------------------------------------------------------------------------- s3-faults

FAULT_RATE = 0.2  # about 1 request in 5 fails: every run retries many times


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    return _save(Image.fromarray(arr), "PNG")


def _bucket(client) -> str:
    name = f"rel-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    return name


def _digests(client, bucket: str, prefix: str) -> dict[str, str]:
    """key (relative to prefix) -> sha256 of every object under it (read straight from moto)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return {k[len(prefix) + 1 :]: hashlib.sha256(client.get_object(Bucket=bucket, Key=k)["Body"].read()).hexdigest() for k in keys}


def _small_generator(folder: Path) -> Path:
    import torch

    from srgan.core.checkpoint import save_generator
    from srgan.core.models import GeneratorConfig, build_generator

    torch.manual_seed(0)
    return save_generator(folder, build_generator(GeneratorConfig(num_blocks=1, num_features=8)))


def _bulk(bucket: str, output: str, model: Path, endpoint: str, *, inputs: str = "in"):
    from srgan.distributed.bulk import BulkUpscaleConfig, run_bulk_upscale

    config = BulkUpscaleConfig(input=f"s3://{bucket}/{inputs}", output=f"s3://{bucket}/{output}", model=str(model),
                               num_cpus=0.25, batch_size=2, s3_endpoint=endpoint)
    return run_bulk_upscale(config, report=lambda line: None)


def s3_faults(run: Run) -> Outcome:
    import boto3

    from benchmarks.faults.s3proxy import s3_fault_proxy

    out = Outcome("s3-faults")
    upstream = os.environ["AWS_ENDPOINT_URL"]  # the harness's moto server
    client = boto3.client("s3", endpoint_url=upstream)
    bucket = _bucket(client)
    n_train, n_bulk = (20, 3) if run.quick else (200, 12)
    objects, poisoned = poisoned_objects(n_train, fraction=0.05, seed=21)  # at least one of each category
    for key, data in objects.items():
        client.put_object(Bucket=bucket, Key=f"train/{key}", Body=data)
    photo = _photo()
    for i in range(n_bulk):
        client.put_object(Bucket=bucket, Key=f"in/{i % 2}/img_{i}.png", Body=_png(np.ascontiguousarray(photo[12 * i : 12 * i + 40, :48])))
    client.put_object(Bucket=bucket, Key="in/cut.png", Body=_png(photo[:40, :40])[:300])  # one failure: the report is written too
    model = _small_generator(run.dir("s3-faults") / "generator")
    _ray_init(run)

    def ingest(label: str, rate: float) -> dict:
        with s3_fault_proxy(upstream, rate=rate, seed=17) as proxy:
            t0 = time.monotonic()
            rows, summary = _epoch(f"s3://{bucket}/train", counter=f"s3f-{label}-{uuid.uuid4().hex[:6]}", s3_endpoint=proxy.endpoint)
            return {"rows": rows, "summary": summary, "proxy": proxy.counters.as_dict(), "s": time.monotonic() - t0}

    def bulk(label: str, rate: float) -> dict:
        with s3_fault_proxy(upstream, rate=rate, seed=19) as proxy:
            t0 = time.monotonic()
            summary = _bulk(bucket, f"out-{label}", model, proxy.endpoint)
            return {"summary": summary, "proxy": proxy.counters.as_dict(), "s": time.monotonic() - t0,
                    "outputs": _digests(client, bucket, f"out-{label}")}

    # The four runs at once, each through a proxy of its own (its own counters): Ray Data's start-up
    # per execution overlaps instead of adding up.
    with ThreadPoolExecutor(4) as pool:
        futures = {(job.__name__, label): pool.submit(job, label, rate)
                   for job in (ingest, bulk) for label, rate in (("fault-free", 0.0), ("faulty", FAULT_RATE))}
        results = {key: future.result() for key, future in futures.items()}
    clean, faulty = results["ingest", "fault-free"], results["ingest", "faulty"]
    clean_bulk, faulty_bulk = results["bulk", "fault-free"], results["bulk", "faulty"]
    faults = {k: faulty["proxy"][k] + faulty_bulk["proxy"][k] for k in ("faults", "slowdown", "internal", "reset", "requests")}
    requests_clean = clean["proxy"]["requests"] + clean_bulk["proxy"]["requests"]
    out.ran = (f"{len(objects)} training objects ({len(poisoned)} poisoned) and {n_bulk + 1} bulk inputs on moto S3; one ingest "
               f"epoch and one bulk job through a proxy at 0% faults, the same at {FAULT_RATE:.0%}, the four at once")
    out.figures.update({
        "faults injected": f"{faults['faults']} (slowdown {faults['slowdown']}, 500 {faults['internal']}, reset {faults['reset']})",
        "requests fault-free / faulty": f"{requests_clean} / {faults['requests']}",
        "retries seen (extra requests)": faults["requests"] - requests_clean,
        "ingest requests fault-free / faulty": f"{clean['proxy']['requests']} / {faulty['proxy']['requests']}",
        "bulk requests fault-free / faulty": f"{clean_bulk['proxy']['requests']} / {faulty_bulk['proxy']['requests']}",
        "crops": f"{clean['rows']} / {faulty['rows']}",
        "skipped": " ".join(f"{k}={v}" for k, v in sorted(faulty["summary"]["counts"].items())),
        "bulk done/failed": f"{faulty_bulk['summary'].done}/{faulty_bulk['summary'].failed}",
        "bulk outputs (sha256 equal)": f"{sum(faulty_bulk['outputs'].get(k) == h for k, h in clean_bulk['outputs'].items())}"
                                       f"/{len(clean_bulk['outputs'])}",
        "ingest time fault-free / faulty": f"{clean['s']:.1f} s / {faulty['s']:.1f} s",
        "bulk time fault-free / faulty": f"{clean_bulk['s']:.1f} s / {faulty_bulk['s']:.1f} s",
    })
    want_skips, _ = expected_counts(poisoned)
    out.check("faults were injected in ingest and in bulk", faulty["proxy"]["faults"] > 0 and faulty_bulk["proxy"]["faults"] > 0)
    out.check("ingest: the same objects (crop rows) as fault-free", faulty["rows"] == clean["rows"] == len(objects) - sum(want_skips.values()))
    paths = [{kind: sorted(keys) for kind, keys in r["summary"]["examples"].items()} for r in (clean, faulty)]  # read order varies
    out.check("ingest: the same skip counts and paths", faulty["summary"]["counts"] == clean["summary"]["counts"] == want_skips
              and paths[0] == paths[1])
    out.check("bulk: the same done/failed", (faulty_bulk["summary"].done, faulty_bulk["summary"].failed)
              == (clean_bulk["summary"].done, clean_bulk["summary"].failed) == (n_bulk, 1))
    out.check("bulk: outputs byte-identical (sha256), report included",
              faulty_bulk["outputs"] == clean_bulk["outputs"] and len(clean_bulk["outputs"]) == n_bulk + 1)
    return out


# --------------------------------------------------------------------------------------- bulk-kill-rerun


def _objects(client, bucket: str, prefix: str) -> dict[str, tuple[str, object]]:
    """key (relative to prefix) -> (ETag, LastModified)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return {o["Key"][len(prefix) + 1 :]: (o["ETag"], o["LastModified"]) for page in pages for o in page.get("Contents", [])}


def bulk_kill_rerun(run: Run) -> Outcome:
    """The bulk job's driver SIGKILLed once two outputs exist, then the same command again."""
    import boto3

    from srgan.core.images import decode_image

    out = Outcome("bulk-kill-rerun")
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    bucket = _bucket(client)
    photo = _photo()
    n = 16
    for i in range(n):
        client.put_object(Bucket=bucket, Key=f"many/{i % 4}/img_{i:02d}.png", Body=_png(np.ascontiguousarray(photo[8 * i : 8 * i + 160, 8 * i : 8 * i + 160])))
    work = run.dir("bulk-kill-rerun")
    import torch

    from srgan.core.checkpoint import save_generator
    from srgan.core.models import GeneratorConfig, build_generator

    torch.manual_seed(0)
    model = save_generator(work / "generator", build_generator(GeneratorConfig(num_blocks=2, num_features=16)))
    cmd = project_command("upscale.py", "--input", f"s3://{bucket}/many", "--output", f"s3://{bucket}/many-x4", "--model", str(model),
                          "--num-cpus", "0.25", "--batch-size", "1")
    t0 = time.monotonic()
    with open(work / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=run.env(), start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and len(_objects(client, bucket, "many-x4")) < 2:
        time.sleep(0.1)
    killed_after = time.monotonic() - t0
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, by its pid: its actors die with the job
    proc.wait(30)
    before = _objects(client, bucket, "many-x4")
    t1 = time.monotonic()
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=run.env(), timeout=300)
    rerun_s = time.monotonic() - t1
    (work / "rerun.log").write_text(rerun.stdout + rerun.stderr)
    after = _objects(client, bucket, "many-x4")
    inputs = sorted(k for k in _objects(client, bucket, "many"))
    skipped = int(rerun.stdout.split("skipped ")[1].split(",")[0]) if "skipped " in rerun.stdout else -1
    whole = all(decode_image(client.get_object(Bucket=bucket, Key=f"many-x4/{k}")["Body"].read()).size == (640, 640) for k in after)
    out.ran = f"{n} PNG inputs (160x160) on moto S3, pipelines/upscale.py on the shared cluster, SIGKILL of the driver once 2 outputs exist, then rerun"
    out.figures.update({"inputs": n, "outputs before the kill": len(before), "killed after": f"{killed_after:.1f} s",
                        "rerun skipped": skipped, "rerun": f"{rerun_s:.1f} s", "outputs after": len(after)})
    out.check("killed part-way", 2 <= len(before) < n)
    out.check("rerun exit 0", rerun.returncode == 0)
    out.check("exactly one output per input, nothing else", sorted(after) == inputs)
    out.check("every output whole (decodes at 4x)", whole)
    out.check("nothing complete redone (same ETag and time, skipped >= outputs before)",
              all(after.get(k) == v for k, v in before.items()) and skipped >= len(before))
    return out


SCENARIOS = {
    "data-poisoning": Scenario(run=data_poisoning, quick=True,
                               what="5% poisoned training objects (10 categories): exact counts, conversions, decode memory bound"),
    "s3-faults": Scenario(run=s3_faults, quick=True,
                          what="ingest and bulk through a 20% fault proxy vs fault-free: same objects and skips, identical outputs"),
    "bulk-kill-rerun": Scenario(run=bulk_kill_rerun, quick=False,
                                what="the bulk job's driver SIGKILLed part-way, then rerun: one complete output per input, none redone"),
}
