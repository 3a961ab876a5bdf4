"""Training ingest (srgan.io.datasets, srgan.distributed.ingest): decode + crop without Ray, listing local and S3 prefixes, and the Ray Data
pipeline end to end on the real local cluster reading from the moto S3 server."""

from __future__ import annotations

import contextlib
import io
import time
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest
import ray.data
import torch
from PIL import Image

from srgan.errors import UserError
from srgan.distributed.ingest import build_train_dataset, count_skips
from srgan.io.datasets import SkipTally, decode_and_crop, list_images
from srgan.core.images import ImageLimits, ImageTooLargeError, decode_image



# --------------------------------------------------------------------------------------- helpers


def photo_bytes(photos_dir: Path, name: str) -> bytes:
    return (photos_dir / name).read_bytes()


def as_jpeg(data: bytes) -> bytes:
    """Re-encode a real photo as a JPEG (scikit-image ships few JPEGs)."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def decoded_uint8(data: bytes) -> np.ndarray:
    """The image as the ingest sees it: (3, H, W) uint8."""
    return decode_image(data).rgb.mul(255).round().to(torch.uint8).numpy()


def locate(crop: np.ndarray, image: np.ndarray) -> tuple[int, int] | None:
    """Top-left (y, x) where ``crop`` (3, c, c) is an exact window of ``image`` (3, H, W), or None."""
    c = crop.shape[-1]
    height, width = image.shape[-2:]
    if height < c or width < c:
        return None
    # Candidates: positions whose pixel equals the crop's first pixel; then narrow column by column of row 0.
    ys, xs = np.nonzero((image[:, : height - c + 1, : width - c + 1] == crop[:, :1, :1]).all(axis=0))
    for j in range(1, c):
        keep = (image[:, ys, xs + j] == crop[:, 0, j : j + 1]).all(axis=0)
        ys, xs = ys[keep], xs[keep]
    for y, x in zip(ys.tolist(), xs.tolist()):
        if np.array_equal(image[:, y : y + c, x : x + c], crop):
            return y, x
    return None


def bad_objects(photos_dir: Path) -> dict[str, bytes]:
    """Real bad files: name -> bytes."""
    rocket = photo_bytes(photos_dir, "rocket.jpg")
    return {
        "truncated.jpg": rocket[: len(rocket) // 2],
        "empty.jpg": b"",
        "notes.jpg": b"shopping list: milk, eggs\nthis is not a picture\n",
    }


def batch_of(items: dict[str, bytes]) -> dict[str, np.ndarray]:
    return {"bytes": np.array(list(items.values()), dtype=object), "path": np.array(list(items), dtype=object)}


# --------------------------------------------------------------------------------------- decode_and_crop


def test_crops_are_real_windows_of_the_decoded_images(photos_dir):
    items = {
        "astronaut.png": photo_bytes(photos_dir, "astronaut.png"),  # RGB PNG
        "camera.png": photo_bytes(photos_dir, "camera.png"),  # greyscale PNG -> replicated to RGB
        "rocket.jpg": photo_bytes(photos_dir, "rocket.jpg"),  # JPEG
    }
    out, skips = decode_and_crop(batch_of(items), crop_size=48, crops_per_image=3, rng=np.random.default_rng(0), limits=ImageLimits())
    assert skips == []
    assert list(out) == ["gt"]
    gt = out["gt"]
    assert gt.shape == (9, 3, 48, 48) and gt.dtype == np.uint8
    for i, (name, data) in enumerate(items.items()):
        image = decoded_uint8(data)
        positions = [locate(crop, image) for crop in gt[3 * i : 3 * i + 3]]  # an image's crops are adjacent
        assert None not in positions, f"a crop of {name} is not a window of it"
        assert len(set(positions)) > 1, "crops of one image should be at random positions"
    grey = gt[3:6]
    assert np.array_equal(grey[:, 0], grey[:, 1]) and np.array_equal(grey[:, 0], grey[:, 2])


@pytest.mark.parametrize(("crop_size", "count"), [(32, 1), (96, 16)])  # PIL cuts the windows / the whole image is converted
def test_batch_crops_are_each_image_decoded_alone_in_order(photos_dir, crop_size, count):
    """The batch's one output array holds, in order, exactly the windows each good image gives alone
    with the same draws; a skipped object in between leaves no gap and no stale window."""
    from srgan.core.images import TRAINING_BACKGROUND, decode_random_crops

    bad = bad_objects(photos_dir)
    good = {name: photo_bytes(photos_dir, name) for name in ("chelsea.png", "rocket.jpg", "camera.png")}
    batch = batch_of({"chelsea.png": good["chelsea.png"], "bad/truncated.jpg": bad["truncated.jpg"],
                      "rocket.jpg": good["rocket.jpg"], "bad/empty.jpg": bad["empty.jpg"], "camera.png": good["camera.png"]})
    out, skips = decode_and_crop(batch, crop_size=crop_size, crops_per_image=count, rng=np.random.default_rng(11), limits=ImageLimits())
    rng = np.random.default_rng(11)
    alone = [decode_random_crops(data, crop_size=crop_size, count=count, rng=rng, background=TRAINING_BACKGROUND) for data in good.values()]
    assert [kind for kind, _ in skips] == ["corrupt", "empty"]
    assert out["gt"].shape == (3 * count, 3, crop_size, crop_size) and out["gt"].flags.c_contiguous
    assert np.array_equal(out["gt"], np.concatenate(alone))
    with pytest.raises(ValueError, match="out must be uint8"):
        decode_random_crops(good["rocket.jpg"], crop_size=crop_size, count=count, rng=rng, out=np.empty((count, 3, 8, 8), np.uint8))


def test_same_rng_same_crops_other_rng_other_crops(photos_dir):
    batch = batch_of({"coffee.png": photo_bytes(photos_dir, "coffee.png")})
    crops = [
        decode_and_crop(batch, crop_size=32, crops_per_image=4, rng=np.random.default_rng(seed), limits=ImageLimits())[0]["gt"]
        for seed in (1, 1, 2)
    ]
    assert np.array_equal(crops[0], crops[1])
    assert not np.array_equal(crops[0], crops[2])


@pytest.mark.parametrize(
    ("name", "kind"),
    [("truncated.jpg", "corrupt"), ("empty.jpg", "empty"), ("notes.jpg", "not_image"), ("t20.png", "too_small"), ("astronaut.png", "too_large")],
)
def test_each_bad_object_is_skipped_with_its_kind(photos_dir, datasets_dir, name, kind):
    objects = bad_objects(photos_dir) | {
        "t20.png": (datasets_dir / "train" / "T91" / "t20.png").read_bytes(),  # a real 78x78 image, smaller than 96
        "astronaut.png": photo_bytes(photos_dir, "astronaut.png"),
    }
    limits = ImageLimits(max_pixels=512 * 512 - 1) if kind == "too_large" else ImageLimits()
    out, skips = decode_and_crop(batch_of({name: objects[name]}), crop_size=96, crops_per_image=2, rng=np.random.default_rng(), limits=limits)
    assert skips == [(kind, name)]
    assert out["gt"].shape == (0, 3, 96, 96) and out["gt"].dtype == np.uint8


def test_mixed_batch_keeps_the_good_and_reports_the_bad(photos_dir):
    good = {"chelsea.png": photo_bytes(photos_dir, "chelsea.png"), "rocket.jpg": photo_bytes(photos_dir, "rocket.jpg")}
    bad = bad_objects(photos_dir)
    batch = batch_of({"bad/truncated.jpg": bad["truncated.jpg"], "chelsea.png": good["chelsea.png"],
                      "bad/empty.jpg": bad["empty.jpg"], "rocket.jpg": good["rocket.jpg"], "bad/notes.jpg": bad["notes.jpg"]})
    out, skips = decode_and_crop(batch, crop_size=64, crops_per_image=1, rng=np.random.default_rng(3), limits=ImageLimits())
    assert skips == [("corrupt", "bad/truncated.jpg"), ("empty", "bad/empty.jpg"), ("not_image", "bad/notes.jpg")]
    assert out["gt"].shape == (2, 3, 64, 64)
    assert locate(out["gt"][0], decoded_uint8(good["chelsea.png"])) is not None
    assert locate(out["gt"][1], decoded_uint8(good["rocket.jpg"])) is not None


def test_skip_tally_counts_unique_paths():
    tally = SkipTally()
    assert tally.add([("corrupt", "a.jpg"), ("empty", "b.jpg")]) == [("corrupt", "a.jpg"), ("empty", "b.jpg")]
    assert tally.add([("corrupt", "a.jpg"), ("corrupt", "c.jpg")]) == [("corrupt", "c.jpg")]  # a.jpg again: next epoch
    tally.add([("not_image", f"junk/{i}.jpg") for i in range(30)])
    summary = tally.summary()
    assert summary["counts"] == {"corrupt": 2, "empty": 1, "not_image": 30}
    assert summary["total"] == 33
    assert summary["examples"]["corrupt"] == ["a.jpg", "c.jpg"]
    assert summary["examples"]["not_image"] == [f"junk/{i}.jpg" for i in range(20)]


# --------------------------------------------------------------------------------------- listing

TREE = {  # key -> is an image
    "top.png": True,
    "a/one.JPEG": True,
    "a/b/two.Png": True,
    "a/b/c/three.jpeg": True,
    "a/b/c/four.WEBP": True,
    "a/five.bmp": True,
    "a/readme.txt": False,
    "a/b/labels.json": False,
    "a/b/c/shard.parquet": False,
    "a/b/c/photo.jpg.bak": False,
    "noext": False,
}


def test_list_images_local_tree(tmp_path):
    for key in TREE:
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(b"x")
    root = tmp_path.resolve()
    expected = sorted(str(root / k) for k, is_image in TREE.items() if is_image)
    for uri in (str(tmp_path), f"file://{tmp_path}", f"{tmp_path}/"):
        _, paths = list_images(uri)
        assert paths == expected


def test_list_images_on_s3(s3_bucket):
    s3 = boto3.client("s3")
    for key in TREE:
        s3.put_object(Bucket=s3_bucket, Key=f"data/{key}", Body=b"x")
    s3.put_object(Bucket=s3_bucket, Key="elsewhere/outside.png", Body=b"x")  # another prefix: not listed
    expected = sorted(f"{s3_bucket}/data/{k}" for k, is_image in TREE.items() if is_image)
    for uri in (f"s3://{s3_bucket}/data", f"s3://{s3_bucket}/data/"):
        _, paths = list_images(uri)
        assert paths == expected


def test_list_images_errors(tmp_path, s3_bucket):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("no pictures here")
    cases = {
        str(tmp_path / "missing"): "does not exist",
        f"s3://{s3_bucket}/missing": "does not exist",
        str(tmp_path / "docs"): "no images under",
        "ftp://host/x": "unsupported URI scheme",
    }
    for uri, words in cases.items():
        with pytest.raises(UserError) as info:
            list_images(uri)
        message = str(info.value)
        assert words in message and "\n" not in message, message


# --------------------------------------------------------------------------------------- Ray Data, end to end


def dataset_objects(photos_dir: Path, datasets_dir: Path) -> tuple[dict[str, bytes], dict[str, bytes], dict[str, str]]:
    """Real photos in nested folders, some as ``.JPEG``, plus three bad objects.

    Returns (good key -> bytes, bad key -> bytes, bad key -> expected skip kind).
    """
    good = {
        "astronaut.png": photo_bytes(photos_dir, "astronaut.png"),
        "animals/chelsea.png": photo_bytes(photos_dir, "chelsea.png"),
        "animals/n0001/coffee.JPEG": as_jpeg(photo_bytes(photos_dir, "coffee.png")),
        "grey/camera.png": photo_bytes(photos_dir, "camera.png"),
        "space/rocket.JPEG": photo_bytes(photos_dir, "rocket.jpg"),
        "space/deep/ihc.Png": photo_bytes(photos_dir, "ihc.png"),
    }
    # A few T91 images, so that two epochs in the same order cannot happen by chance (10! orders).
    good |= {f"t91/{n}": (datasets_dir / "train" / "T91" / n).read_bytes() for n in ("t1.png", "t2.png", "t3.png", "t5.png")}
    made = bad_objects(photos_dir)
    kinds = {"space/truncated.jpg": "corrupt", "animals/n0001/empty.jpg": "empty", "notes.jpg": "not_image"}
    bad = {key: made[key.rsplit("/", 1)[-1]] for key in kinds}
    return good, bad, kinds


def upload_dataset(bucket: str, photos_dir: Path, datasets_dir: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    """:func:`dataset_objects` and a non-image file under ``s3://bucket/raw``: (good key -> bytes, bad key -> kind)."""
    good, bad, kinds = dataset_objects(photos_dir, datasets_dir)
    s3 = boto3.client("s3")
    for key, data in (good | bad | {"README.txt": b"not listed: not an image extension"}).items():
        s3.put_object(Bucket=bucket, Key=f"raw/{key}", Body=data)
    return good, kinds


@contextlib.contextmanager
def preserve_order():
    """Datasets built inside keep rows in the order the pipeline reads the files, so an order test sees the
    per-epoch file shuffle rather than which parallel task happened to finish first."""
    context = ray.data.DataContext.get_current()
    saved, context.execution_options.preserve_order = context.execution_options.preserve_order, True
    try:
        yield
    finally:
        context.execution_options.preserve_order = saved


def epoch_sources(ds, good: dict[str, bytes], crop_size: int) -> list[str]:
    """Iterate one epoch as a trainer does; the source image of every crop, in order."""
    images = {key: decoded_uint8(data) for key, data in good.items()}
    sources = []
    for batch in ds.iter_torch_batches(batch_size=4):
        assert list(batch) == ["gt"]
        gt = batch["gt"]
        assert gt.dtype == torch.uint8 and tuple(gt.shape[1:]) == (3, crop_size, crop_size)
        for crop in gt.numpy():
            found = [key for key, image in images.items() if locate(crop, image) is not None]
            assert len(found) == 1, f"a crop matches {found}"
            sources.append(found[0])
    return sources


def test_ingest_from_s3_two_epochs(s3_server, s3_bucket, ray_cluster, photos_dir, datasets_dir):
    # s3_server before ray_cluster: a cluster started here inherits the AWS variables. Ray workers read S3
    # with their own environment's credentials (pyarrow does not ship the driver's with the filesystem).
    good, bad = upload_dataset(s3_bucket, photos_dir, datasets_dir)
    counter = f"skips-{uuid.uuid4().hex[:8]}"
    assert count_skips(counter) == {"counts": {}, "total": 0, "examples": {}, "converted": {}, "converted_examples": {}}  # no such actor yet
    with preserve_order():
        ds = build_train_dataset(f"s3://{s3_bucket}/raw", crop_size=48, skip_counter_name=counter)
    expected_skips = {
        "counts": {"corrupt": 1, "empty": 1, "not_image": 1},
        "total": 3,
        "examples": {kind: [key] for key, kind in bad.items()},
        "converted": {}, "converted_examples": {},  # plain RGB and grey photos: nothing to convert
    }

    first = epoch_sources(ds, good, 48)
    assert sorted(first) == sorted(good)  # each good image exactly once: one crop per image per epoch
    assert first != sorted(good), "the files were read in listing order"
    assert count_skips(counter) == expected_skips

    second = epoch_sources(ds, good, 48)
    assert sorted(second) == sorted(good)
    assert second != first, "the second epoch came in the same order"
    assert count_skips(counter) == expected_skips  # the same bad objects again: still three


def test_batches_of_only_bad_objects_flow_through(s3_server, s3_bucket, ray_cluster, photos_dir, datasets_dir):
    """files_per_task=1 makes every bad object a read task and a batch of its own: empty (K = 0) blocks must not break
    the dataset's schema, and a prefix whose images are all bad gives an empty epoch, not an error."""
    good, _ = upload_dataset(s3_bucket, photos_dir, datasets_dir)
    counter = f"skips-{uuid.uuid4().hex[:8]}"
    ds = build_train_dataset(f"s3://{s3_bucket}/raw/space", crop_size=40, skip_counter_name=counter, files_per_task=1)
    assert sorted(epoch_sources(ds, good, 40)) == ["space/deep/ihc.Png", "space/rocket.JPEG"]
    assert count_skips(counter)["examples"] == {"corrupt": ["truncated.jpg"]}  # keys relative to the dataset's URI

    only_bad = build_train_dataset(f"s3://{s3_bucket}/raw/space/truncated.jpg", crop_size=40, skip_counter_name=counter)
    assert only_bad.count() == 0
    assert count_skips(counter)["total"] == 1  # the same object again


def test_seed_replays_the_epoch_orders_from_a_local_tree(tmp_path, ray_cluster, photos_dir, datasets_dir):
    good, bad, _ = dataset_objects(photos_dir, datasets_dir)
    for key, data in (good | bad).items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(data)
    orders = []
    for _ in range(2):  # two datasets with the same seed: the same sequence of epoch orders
        with preserve_order():
            ds = build_train_dataset(str(tmp_path), crop_size=32, seed=7, skip_counter_name=f"skips-{uuid.uuid4().hex[:8]}")
        orders.append([epoch_sources(ds, good, 32) for _ in range(2)])
    assert orders[0] == orders[1]
    assert orders[0][0] != orders[0][1]  # still a new order at every epoch
    assert sorted(orders[0][0]) == sorted(good)


def test_a_small_prefix_is_read_several_times_per_epoch_in_one_fused_task_per_core(tmp_path, ray_cluster, photos_dir, datasets_dir):
    """min_objects_per_epoch: every good object comes passes times in one epoch (one Ray Data execution),
    bad ones are still counted once; the decode runs inside the read tasks (no operator of its own)."""
    from srgan.distributed.ingest import epoch_passes

    good, bad, _ = dataset_objects(photos_dir, datasets_dir)
    for key, data in (good | bad).items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(data)
    objects = len(good) + len(bad)
    passes = epoch_passes(objects, 3 * objects - 1)
    assert passes == 3 and epoch_passes(objects, 0) == 1 and epoch_passes(objects, objects) == 1
    counter = f"skips-{uuid.uuid4().hex[:8]}"
    ds = build_train_dataset(str(tmp_path), crop_size=32, skip_counter_name=counter, min_objects_per_epoch=3 * objects - 1)
    sources = epoch_sources(ds, good, 32)
    assert sorted(sources) == sorted(list(good) * passes)
    assert count_skips(counter)["total"] == len(bad)  # the same bad paths in every pass: counted once
    operators = [line for line in ds.stats().splitlines() if line.startswith("Operator ")]
    assert len(operators) == 1 and "ReadImageFiles" in operators[0] and "MapBatches" not in operators[0], operators


def test_read_tasks_hand_their_files_to_the_decode_images_per_block_at_a_time(tmp_path):
    """The image-file datasource's read tasks (called here as Ray Data's workers call them) read their
    files and pass them to the block function IMAGES_PER_BLOCK at a time, with the keys and bytes
    paired (one Arrow block per file cost the tasks about 0.25 ms an image, BENCHMARKS.md): every file
    once per execution, in a new order at each, and with a seed the same orders again."""
    from types import SimpleNamespace

    from srgan.distributed.ingest import IMAGES_PER_BLOCK, _file_shuffle, _image_files
    from srgan.io.storage import resolve

    files = 2 * IMAGES_PER_BLOCK + 6
    paths = []
    for i in range(files):
        path = tmp_path / f"img_{i:03d}.bin"
        path.write_bytes(f"contents of {i}".encode() * (i + 1))
        paths.append(str(path))
    fs, _ = resolve(str(tmp_path))
    calls: list[int] = []

    def to_block(batch):
        calls.append(len(batch["path"]))
        for path, data in zip(batch["path"], batch["bytes"]):
            assert data == Path(path).read_bytes()
        return {"path": batch["path"]}

    def epoch(source, execution: int) -> list[str]:
        calls.clear()
        tasks = source.get_read_tasks(2, data_context=SimpleNamespace(_execution_idx=execution, retried_io_errors=[]))
        assert len(tasks) == 2
        order = [p for task in tasks for block in task() for p in block["path"].to_pylist()]
        assert sorted(calls) == [3, 3, IMAGES_PER_BLOCK, IMAGES_PER_BLOCK]  # two tasks of 35: a full block and the rest each
        return order

    sizes = [Path(p).stat().st_size for p in paths]
    unseeded = _image_files(paths, sizes, filesystem=fs, shuffle=_file_shuffle(None), to_block=to_block, row_bytes=None, max_bytes=ImageLimits().max_bytes)
    first, second = epoch(unseeded, 0), epoch(unseeded, 1)
    assert sorted(first) == sorted(second) == paths and first != second and first != paths
    seeded = [_image_files(paths, sizes, filesystem=fs, shuffle=_file_shuffle(3), to_block=to_block, row_bytes=None, max_bytes=ImageLimits().max_bytes) for _ in range(2)]
    assert [epoch(seeded[0], e) for e in (0, 1)] == [epoch(seeded[1], e) for e in (0, 1)]
    assert epoch(seeded[0], 0) != epoch(seeded[0], 1)
    assert unseeded.estimate_inmemory_data_size() == sum(sizes)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_read_tasks_read_no_more_of_an_object_than_the_byte_limit_needs(where, tmp_path, request):
    """A stray multi-GB object in a training prefix must not be read whole into a task's memory: a read
    stops at max_bytes + 1 bytes (a ranged GET on S3), which the decoder refuses as too_large, and
    objects within the limit arrive whole."""
    from types import SimpleNamespace

    from srgan.distributed.ingest import _file_shuffle, _image_files
    from srgan.io.storage import resolve

    limit = 1000
    objects = {"small.jpg": b"s" * 600, "edge.jpg": b"e" * limit, "huge.jpg": bytes(range(256)) * 40}  # 10,240 bytes
    if where == "local":
        for name, data in objects.items():
            (tmp_path / name).write_bytes(data)
        root = str(tmp_path)
    else:
        bucket = request.getfixturevalue("s3_bucket")
        client = boto3.client("s3")
        for name, data in objects.items():
            client.put_object(Bucket=bucket, Key=f"p/{name}", Body=data)
        root = f"s3://{bucket}/p"
    fs, base = resolve(root)
    paths = [f"{base}/{name}" for name in objects]
    seen: dict[str, bytes] = {}

    def to_block(batch):
        seen.update(zip(batch["path"], batch["bytes"]))
        return {"path": batch["path"]}

    source = _image_files(paths, [len(d) for d in objects.values()], filesystem=fs, shuffle=_file_shuffle(0), to_block=to_block,
                          row_bytes=None, max_bytes=limit)
    for task in source.get_read_tasks(1, data_context=SimpleNamespace(_execution_idx=0, retried_io_errors=[])):
        list(task())
    got = {path.rsplit("/", 1)[1]: data for path, data in seen.items()}
    assert got["small.jpg"] == objects["small.jpg"] and got["edge.jpg"] == objects["edge.jpg"]
    assert got["huge.jpg"] == objects["huge.jpg"][: limit + 1]  # the first limit + 1 bytes, no more
    with pytest.raises(ImageTooLargeError):
        decode_image(got["huge.jpg"], limits=ImageLimits(max_bytes=limit))


def test_the_skip_counter_lives_on_the_callers_node_and_a_dead_one_never_fails_a_read(ray_cluster):
    """The counter is created on the driver's node: one placed on a worker node died with that node,
    and every restarted worker group then failed reading it until max_failures ran out (the reliability
    harness's train-node-loss, one run in three). A counter that is gone anyway reads as empty, with a
    warning."""
    import ray
    from ray.util.state import list_actors

    from srgan.distributed.ingest import get_skip_counter

    name = f"skips-{uuid.uuid4().hex[:8]}"
    handle = get_skip_counter(name)
    ray.get(handle.add.remote([("corrupt", "a.jpg")]))
    assert count_skips(name)["total"] == 1
    [actor] = list_actors(filters=[("name", "=", name)])
    assert actor.node_id == ray.get_runtime_context().get_node_id()
    ray.kill(handle, no_restart=True)
    deadline = time.monotonic() + 30
    while True:  # the dead actor's name may still resolve for a moment: its handle then raises, caught
        summary = count_skips(name)
        if summary["total"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert summary == {"counts": {}, "total": 0, "examples": {}, "converted": {}, "converted_examples": {}}


def test_image_files_read_on_threads_from_s3_and_on_the_task_thread_locally(tmp_path):
    """A GET waits on the network, so an object store's files are read on READ_THREADS_PER_TASK
    threads; local files come from the page cache, where the threads only cost CPU (BENCHMARKS.md).
    (read_threads is what _image_files sets; building the datasource itself would start Ray.)"""
    from srgan.distributed.ingest import READ_THREADS_PER_TASK, read_threads
    from srgan.io.storage import resolve

    local_fs, _ = resolve(str(tmp_path))
    s3_fs, _ = resolve("s3://bucket/prefix", s3_endpoint="http://127.0.0.1:9")  # nothing is read
    assert (read_threads(local_fs), read_threads(s3_fs)) == (1, READ_THREADS_PER_TASK) and READ_THREADS_PER_TASK > 1
