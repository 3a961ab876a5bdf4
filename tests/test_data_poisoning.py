"""Data poisoning: a training set with corrupt, empty, non-image, text-as-.jpg, tiny, 16-bit, CMYK,
palette-with-transparency, EXIF-rotated and 100-megapixel objects (benchmarks/faults/data.py's
:func:`poisoned_objects`). The ingest skips and counts what it must, converts and counts what it can,
and refuses the 100 MP image from its header without decoding a pixel."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from benchmarks.faults.data import CROP, POISON, _huge_png, expected_counts, poisoned_objects, write_tree
from srgan.core.images import TRAINING_BACKGROUND, ImageLimits, decode_random_crops, decode_rgb_uint8
from srgan.io.datasets import SkipTally, decode_and_crop, decode_and_crop_on, pack_images, random_crops
from test_data import locate


def _batch(items: dict[str, bytes]) -> dict[str, np.ndarray]:
    return {"bytes": np.array(list(items.values()), dtype=object), "path": np.array(list(items), dtype=object)}


def _decode(items: dict[str, bytes], *, count: int = 2, seed: int = 0):
    converted = []
    out, skips = decode_and_crop(_batch(items), crop_size=CROP, crops_per_image=count, rng=np.random.default_rng(seed),
                                 limits=ImageLimits(), converted=converted)
    return out["gt"], skips, converted


@pytest.fixture(scope="module")
def poisoned():
    """60 objects, 10 poisoned (one per category)."""
    return poisoned_objects(60, fraction=1 / 6, seed=5)


def test_the_poisoned_set_has_every_category(poisoned):
    objects, categories = poisoned
    assert sorted(categories.values()) == sorted(POISON) and len(objects) == 60


@pytest.mark.parametrize("category", sorted(POISON))
def test_each_poison_is_skipped_or_converted_with_its_kind(poisoned, category):
    objects, categories = poisoned
    [key] = [k for k, c in categories.items() if c == category]
    gt, skips, converted = _decode({key: objects[key]})
    action, kind = POISON[category]
    if action == "skip":
        assert skips == [(kind, key)] and converted == [] and gt.shape == (0, 3, CROP, CROP)
    else:
        assert skips == [] and converted == [(kind, key)] and gt.shape == (2, 3, CROP, CROP)


def test_good_objects_are_neither_skipped_nor_converted(poisoned):
    objects, categories = poisoned
    good = {k: v for k, v in objects.items() if k not in categories}
    gt, skips, converted = _decode(good, count=1)
    assert skips == [] and converted == [] and len(gt) == len(good)


def test_the_100mp_image_is_refused_from_its_header_without_decoding(monkeypatch):
    data = _huge_png()
    assert len(data) < ImageLimits().max_bytes  # only the pixel limit can refuse it
    assert Image.open(io.BytesIO(data)).size == (10_000, 10_000)

    def no_decoding(self):
        raise AssertionError("a pixel of the 100 MP image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    gt, skips, converted = _decode({"huge.png": data})
    assert skips == [("too_large", "huge.png")] and len(gt) == 0


# --------------------------------------------------------------------------------------- what conversions give


def _one(poisoned, category: str) -> bytes:
    objects, categories = poisoned
    return next(objects[k] for k, c in categories.items() if c == category)


def test_palette_transparency_is_composited_on_the_training_background():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    palette = Image.fromarray(arr).quantize(8)
    indices = np.asarray(palette)
    buf = io.BytesIO()
    palette.save(buf, format="PNG", transparency=int(indices[0, 0]))  # one palette entry fully transparent
    data = buf.getvalue()
    rgb = decode_rgb_uint8(data, background=TRAINING_BACKGROUND)
    opaque = np.asarray(palette.convert("RGB"))
    transparent = indices == indices[0, 0]
    assert transparent.any() and (~transparent).any()
    assert (rgb[transparent] == TRAINING_BACKGROUND).all()  # the background, whatever the palette colour was
    assert np.array_equal(rgb[~transparent], opaque[~transparent])
    assert not np.array_equal(decode_rgb_uint8(data), rgb)  # without a background alpha is only dropped


@pytest.mark.parametrize("crop, count", [(8, 2), (24, 5)])  # the per-window path and the whole-array path
def test_composited_crops_are_windows_of_the_composited_image(crop, count):
    rng = np.random.default_rng(2)
    rgba = np.dstack([rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), rng.integers(0, 256, (40, 56), dtype=np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    data = buf.getvalue()
    fast = decode_random_crops(data, crop_size=crop, count=count, rng=np.random.default_rng(3), background=TRAINING_BACKGROUND)
    whole = random_crops(decode_rgb_uint8(data, background=TRAINING_BACKGROUND), crop, count, np.random.default_rng(3))
    assert np.array_equal(fast, whole)
    colour, alpha = rgba[..., :3].astype(np.int64), rgba[..., 3:].astype(np.int64)
    want = np.rint((colour * alpha + 255 * (255 - alpha)) / 255).astype(np.uint8)  # over white
    assert np.array_equal(decode_rgb_uint8(data, background=TRAINING_BACKGROUND), want)


def test_cmyk_16bit_and_exif_crops_are_windows_of_the_converted_image(poisoned):
    expected = {
        "cmyk": lambda data: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")),
        "png16": lambda data: np.rint(_png16_array(data) / 257.0).astype(np.uint8),
        "exif_rotated": lambda data: np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")),
    }
    for category, convert in expected.items():
        data = _one(poisoned, category)
        image = np.ascontiguousarray(convert(data).transpose(2, 0, 1))
        gt, skips, _ = _decode({category: data}, count=3)
        assert skips == [] and all(locate(crop, image) is not None for crop in gt), category


def _png16_array(data: bytes) -> np.ndarray:
    from srgan.core.png import png16_to_planes

    planes, _ = png16_to_planes(data)  # (C, H, W) float in [0, 1]
    return np.rint(planes.numpy().transpose(1, 2, 0) * 65535.0)


def test_the_device_path_skips_and_converts_as_the_cpu_path(poisoned):
    """data.decode_device: cuda runs the same code; on the CPU it must give the same skips, conversions
    and crops for the same rng."""
    objects, _ = poisoned
    gt, skips, converted = _decode(objects, count=1, seed=9)
    device_converted = []
    crops, device_skips = decode_and_crop_on(_batch(objects), crop_size=CROP, crops_per_image=1, rng=np.random.default_rng(9),
                                             limits=ImageLimits(), device="cpu", converted=device_converted)
    assert device_skips == skips and device_converted == converted
    assert np.array_equal(crops.numpy(), gt)


def test_raw_shards_are_packed_with_the_same_conversions(poisoned, tmp_path):
    objects, categories = poisoned
    key = next(k for k, c in categories.items() if c == "palette_alpha")
    write_tree(tmp_path / "src", {key: objects[key]})
    pack_images(str(tmp_path / "src"), str(tmp_path / "raw"), format="raw-uint8")
    import pyarrow as pa

    [shard] = (tmp_path / "raw").iterdir()
    table = pa.ipc.open_file(pa.memory_map(str(shard))).read_all()
    height, width = table.column("height")[0].as_py(), table.column("width")[0].as_py()
    planes = np.frombuffer(table.column("pixels")[0].as_py(), np.uint8).reshape(3, height, width)
    assert np.array_equal(planes.transpose(1, 2, 0), decode_rgb_uint8(objects[key], background=TRAINING_BACKGROUND))


def test_conversions_are_counted_once_per_object_apart_from_skips():
    tally = SkipTally()
    for _ in range(2):  # two epochs
        tally.add([("corrupt", "a.jpg")], [("cmyk", "b.jpg"), ("exif_rotated", "c.jpg"), ("alpha", "d.png")])
    summary = tally.summary()
    assert summary["counts"] == {"corrupt": 1} and summary["total"] == 1  # skips keep their meaning
    assert summary["converted"] == {"cmyk": 1, "exif_rotated": 1, "alpha": 1}
    assert summary["converted_examples"]["cmyk"] == ["b.jpg"]


# --------------------------------------------------------------------------------------- through the real ingest


def test_ingest_counts_every_poison_category_exactly(ray_cluster, tmp_path, poisoned):
    from srgan.distributed.ingest import build_train_dataset, count_skips

    objects, categories = poisoned
    write_tree(tmp_path / "train", objects)
    want_skips, want_converted = expected_counts(categories)
    name = f"poison-{uuid.uuid4().hex[:8]}"
    ds = build_train_dataset(str(tmp_path / "train"), crop_size=CROP, crops_per_image=2, skip_counter_name=name, files_per_task=8)
    for epoch in range(2):  # the second epoch reads the same objects again: the counts stay
        rows = sum(len(b["gt"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
        summary = count_skips(name)
        assert rows == 2 * (len(objects) - sum(want_skips.values())), epoch
        assert summary["counts"] == want_skips and summary["total"] == sum(want_skips.values())
        assert summary["converted"] == want_converted
    assert want_skips == {"corrupt": 1, "empty": 1, "not_image": 2, "too_small": 1, "too_large": 1}
    assert want_converted == {"16bit": 1, "cmyk": 1, "alpha": 1, "exif_rotated": 1}
