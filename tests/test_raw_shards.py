"""Pre-decoded ``raw-uint8`` shards (``pipelines/prepare.py --format raw-uint8``): decoded once at packing,
then training only cuts windows. Crops and skips must be those of decoding the objects themselves."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from srgan.core.images import ImageLimits, decode_rgb_uint8
from srgan.errors import UserError
from srgan.io.datasets import crop_raw_shard, decode_and_crop, is_raw_source, is_parquet_source, pack_images


def read_raw(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def write_tree(root: Path, photos_dir: Path, datasets_dir: Path) -> dict[str, bytes]:
    """Real photos (PNG RGB and grey, JPEG, EXIF-rotated JPEG, a 78x78 PNG) and bad objects."""
    chelsea = Image.open(photos_dir / "chelsea.png").convert("RGB")
    exif = chelsea.getexif()
    exif[0x0112] = 8
    buf = io.BytesIO()
    chelsea.save(buf, format="JPEG", quality=90, exif=exif)
    rocket = (photos_dir / "rocket.jpg").read_bytes()
    files = {
        "astronaut.png": (photos_dir / "astronaut.png").read_bytes(),
        "n01/camera.png": (photos_dir / "camera.png").read_bytes(),
        "n01/rocket.JPEG": rocket,
        "n02/chelsea-rot8.jpg": buf.getvalue(),
        "n02/t20.png": (datasets_dir / "train" / "T91" / "t20.png").read_bytes(),
        "bad/truncated.jpg": rocket[: len(rocket) // 2],
        "bad/empty.jpg": b"",
        "bad/notes.jpg": b"not a picture\n",
    }
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)
    return files


def test_raw_shards_crop_like_decoding_the_objects(tmp_path, photos_dir, datasets_dir):
    files = write_tree(tmp_path / "src", photos_dir, datasets_dir)
    summary = pack_images(str(tmp_path / "src"), str(tmp_path / "raw"), format="raw-uint8", images_per_shard=5)
    shards = sorted((tmp_path / "raw").iterdir())
    assert [p.name for p in shards] == ["part-00000.arrow", "part-00001.arrow"] and summary.shards == 2
    assert is_raw_source(str(tmp_path / "raw")) and not is_parquet_source(str(tmp_path / "raw")) and not is_raw_source(str(tmp_path / "src"))
    # The storage cost, as the summary states it: every good image's pixels, against the files read.
    good = ("astronaut.png", "n01/camera.png", "n01/rocket.JPEG", "n02/chelsea-rot8.jpg", "n02/t20.png")
    assert summary.bytes == sum(decode_rgb_uint8(files[k]).size for k in good) and summary.input_bytes == sum(map(len, files.values()))

    all_skips = {}
    for crop_size, count, seed in ((64, 2, 0), (96, 1, 5)):
        for shard in shards:
            keys = read_raw(shard).column("path").to_pylist()
            source = shard.read_bytes() if seed == 0 else pa.memory_map(str(shard))  # bytes or an open file
            out, skips = crop_raw_shard(source, crop_size=crop_size, crops_per_image=count, rng=np.random.default_rng(seed))
            batch = {"bytes": np.array([files[k] for k in keys], dtype=object), "path": np.array(keys, dtype=object)}
            ref, ref_skips = decode_and_crop(batch, crop_size=crop_size, crops_per_image=count, rng=np.random.default_rng(seed), limits=ImageLimits())
            assert skips == ref_skips  # kinds recorded at packing (and too_small at training) = the decoder's
            assert out["gt"].dtype == np.uint8 and out["gt"].flags.c_contiguous and np.array_equal(out["gt"], ref["gt"])  # same positions, same pixels
            if crop_size == 96:
                all_skips |= {path: kind for kind, path in skips}
    assert all_skips == {"bad/truncated.jpg": "corrupt", "bad/empty.jpg": "empty", "bad/notes.jpg": "not_image", "n02/t20.png": "too_small"}


def test_raw_rows_hold_the_oriented_pixels_and_the_packing_limits(tmp_path, photos_dir, datasets_dir):
    files = write_tree(tmp_path / "src", photos_dir, datasets_dir)
    pack_images(str(tmp_path / "src"), str(tmp_path / "raw"), format="raw-uint8", limits=ImageLimits(max_pixels=270_000))
    rows = {r["path"]: r for r in read_raw(tmp_path / "raw" / "part-00000.arrow").to_pylist()}
    rotated = rows["n02/chelsea-rot8.jpg"]
    assert (rotated["height"], rotated["width"]) == (451, 300)  # stored 451 x 300, shown 300 x 451
    planes = np.ascontiguousarray(decode_rgb_uint8(files["n02/chelsea-rot8.jpg"]).transpose(2, 0, 1))  # (3, H, W)
    assert rotated["pixels"] == planes.tobytes()
    assert rows["n01/rocket.JPEG"]["skip"] == "too_large" and rows["n01/rocket.JPEG"]["pixels"] == b""  # 273 280 pixels
    assert rows["astronaut.png"]["skip"] is None


def test_unknown_format_is_refused(tmp_path, photos_dir, datasets_dir):
    write_tree(tmp_path / "src", photos_dir, datasets_dir)
    with pytest.raises(UserError, match="format must be one of encoded, raw-uint8"):
        pack_images(str(tmp_path / "src"), str(tmp_path / "out"), format="png")


def test_prepare_cli_packs_raw_shards(cli, tmp_path, photos_dir, datasets_dir):
    files = write_tree(tmp_path / "src", photos_dir, datasets_dir)
    proc = cli("prepare", "--input", str(tmp_path / "src"), "--output", str(tmp_path / "raw"), "--format", "raw-uint8")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-2].startswith(f"decoded {sum(map(len, files.values()))} encoded bytes into ")
    assert lines[-1].startswith("packed 8 images (") and lines[-1].endswith(f"into 1 shards under {tmp_path / 'raw'}")
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["part-00000.arrow"]
    with pytest.raises(UserError, match="already holds"):  # a second run into the same prefix is refused
        pack_images(str(tmp_path / "src"), str(tmp_path / "raw"), format="raw-uint8")


def test_ray_data_cuts_crops_from_memory_mapped_local_shards(ray_cluster, tmp_path, photos_dir, datasets_dir):
    import uuid

    from srgan.distributed.ingest import build_train_dataset, count_skips

    files = write_tree(tmp_path / "src", photos_dir, datasets_dir)
    pack_images(str(tmp_path / "src"), str(tmp_path / "raw"), format="raw-uint8", images_per_shard=3)
    counter = f"raw-{uuid.uuid4().hex[:8]}"
    ds = build_train_dataset(str(tmp_path / "raw"), crop_size=64, crops_per_image=2, skip_counter_name=counter)
    epochs = [torch.cat([b["gt"] for b in ds.iter_torch_batches(batch_size=4)]) for _ in range(2)]
    assert [tuple(e.shape) for e in epochs] == [(10, 3, 64, 64)] * 2 and epochs[0].dtype == torch.uint8  # 5 good images x 2
    assert not torch.equal(epochs[0], epochs[1])  # new positions (or order) every epoch
    sources = {k: torch.from_numpy(np.ascontiguousarray(decode_rgb_uint8(files[k]).transpose(2, 0, 1))) for k in
               ("astronaut.png", "n01/camera.png", "n01/rocket.JPEG", "n02/chelsea-rot8.jpg", "n02/t20.png")}
    for crop in epochs[0]:  # each crop is an exact window of one of the images (the first row locates it)
        assert any(_is_window(crop, image) for image in sources.values())
    assert count_skips(counter)["counts"] == {"corrupt": 1, "empty": 1, "not_image": 1}


def _is_window(crop: torch.Tensor, image: torch.Tensor) -> bool:
    """True if ``crop`` (3, c, c) is an exact window of ``image`` (3, H, W): candidates by the first pixel."""
    c = crop.shape[-1]
    if image.shape[-2] < c or image.shape[-1] < c:
        return False
    hits = (image[:, : image.shape[-2] - c + 1, : image.shape[-1] - c + 1] == crop[:, :1, :1]).all(0).nonzero().tolist()
    return any(torch.equal(image[:, y : y + c, x : x + c], crop) for y, x in hits)
