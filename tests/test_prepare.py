"""pipelines/prepare.py as a user runs it (its ``main`` through ``run_cli``, in this process): packing
local and S3 prefixes into Parquet shards, training ingest from the shards matching ingest from the raw
prefix, and one-line errors. (tests/test_cli.py keeps a real subprocess for the exit-code contract.)"""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from srgan.errors import UserError
from srgan.distributed.ingest import build_train_dataset, count_skips, decodes_on_worker, iter_device_crops
from srgan.io.datasets import PackSummary, is_parquet_source, pack_images


def run_prepare(cli, *args: str):
    """``pipelines/prepare.py ARGS``'s ``main`` in this process (the ``cli`` fixture, whose tripwire also
    proves that packing never starts Ray). The environment is this process's: AWS_* from the s3_server
    fixture, as a user's shell would have them."""
    return cli("prepare", *args)


def dataset_files(photos_dir: Path) -> tuple[dict[str, bytes], dict[str, bytes], dict[str, str]]:
    """Real photos in nested folders (some ``.JPEG``) and three bad objects: (good, bad) key -> bytes, bad key -> kind."""
    buf = io.BytesIO()
    Image.open(photos_dir / "chelsea.png").convert("RGB").save(buf, format="JPEG", quality=90)
    good = {
        "astronaut.png": (photos_dir / "astronaut.png").read_bytes(),
        "n01/chelsea.JPEG": buf.getvalue(),
        "n01/deep/camera.png": (photos_dir / "camera.png").read_bytes(),
        "n02/rocket.JPEG": (photos_dir / "rocket.jpg").read_bytes(),
        "n02/coffee.Png": (photos_dir / "coffee.png").read_bytes(),
        "n02/x/y/ihc.png": (photos_dir / "ihc.png").read_bytes(),
    }
    rocket = good["n02/rocket.JPEG"]
    bad = {"n02/truncated.jpg": rocket[: len(rocket) // 2], "n01/empty.jpg": b"", "notes.jpg": b"not a picture\n"}
    kinds = {"n02/truncated.jpg": "corrupt", "n01/empty.jpg": "empty", "notes.jpg": "not_image"}
    return good, bad, kinds


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)


def read_shards(paths: list[Path]) -> dict[str, bytes]:
    rows: dict[str, bytes] = {}
    for path in paths:
        table = pq.read_table(path)
        assert table.schema.field("path").type == pa.string() and table.schema.field("image").type == pa.binary()
        rows |= dict(zip(table.column("path").to_pylist(), table.column("image").to_pylist()))
    return rows


def test_help_documents_every_flag(cli):
    proc = run_prepare(cli, "--help")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--input", "--output", "--images-per-shard", "--s3-endpoint", "--seed", "--threads", "--format"):
        assert flag in proc.stdout


def test_pack_a_local_tree(cli, tmp_path, photos_dir):
    good, bad, _ = dataset_files(photos_dir)
    files = good | bad
    write_tree(tmp_path / "src", files | {"n01/labels.txt": b"n01 cat"})  # not an image: not packed
    proc = run_prepare(cli, "--input", str(tmp_path / "src"), "--output", str(tmp_path / "out"), "--images-per-shard", "4")
    assert proc.returncode == 0, proc.stderr
    shards = sorted((tmp_path / "out").iterdir())
    assert [p.name for p in shards] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.read_metadata(p).num_rows for p in shards] == [4, 4, 1]
    assert read_shards(shards) == files  # every object, the bad ones included, byte for byte, keyed relative to --input
    lines = proc.stdout.strip().splitlines()
    assert sum("part-0000" in line for line in lines) == 3  # one progress line per shard
    total = sum(map(len, files.values()))
    assert lines[-1] == f"packed 9 images ({total} bytes) into 3 shards under {tmp_path / 'out'}"


def test_shards_train_like_the_raw_prefix(s3_server, s3_bucket, ray_cluster, cli, photos_dir):
    # s3_server before ray_cluster: a cluster started here inherits the AWS variables (Ray workers read S3
    # with their own environment's credentials).
    good, bad, kinds = dataset_files(photos_dir)
    s3 = boto3.client("s3")
    for key, data in (good | bad).items():
        s3.put_object(Bucket=s3_bucket, Key=f"raw/{key}", Body=data)
    raw, packed = f"s3://{s3_bucket}/raw", f"s3://{s3_bucket}/packed/train"

    proc = run_prepare(cli, "--input", raw, "--output", packed, "--images-per-shard", "4")
    assert proc.returncode == 0, proc.stderr
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="packed/train/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [f"packed/train/part-0000{i}.parquet" for i in range(3)]
    assert is_parquet_source(packed) and not is_parquet_source(raw)

    pixels = f"s3://{s3_bucket}/packed/raw-uint8"
    assert pack_images(raw, pixels, images_per_shard=4, format="raw-uint8").shards == 3

    crops = {}
    for name, uri in (("raw", raw), ("shards", packed), ("raw-uint8", pixels)):
        counter = f"{name}-{uuid.uuid4().hex[:8]}"
        ds = build_train_dataset(uri, crop_size=64, crops_per_image=2, skip_counter_name=counter)
        batches = list(ds.iter_torch_batches(batch_size=5, local_shuffle_buffer_size=8))
        assert all(b["gt"].dtype == torch.uint8 and tuple(b["gt"].shape[1:]) == (3, 64, 64) for b in batches)
        crops[name] = sum(len(b["gt"]) for b in batches)
        skips = count_skips(counter)
        assert skips["counts"] == {"corrupt": 1, "empty": 1, "not_image": 1}
        assert skips["examples"] == {kind: [key] for key, kind in kinds.items()}  # the same keys from every source
    assert crops == {"raw": 2 * len(good), "shards": 2 * len(good), "raw-uint8": 2 * len(good)}

    # data.decode_device=cuda's path with device="cpu": Ray Data ships bytes, the consumer decodes and regroups.
    for name, uri in (("bytes-raw", raw), ("bytes-shards", packed)):
        counter = f"{name}-{uuid.uuid4().hex[:8]}"
        assert decodes_on_worker(uri, "cuda") and not decodes_on_worker(uri, "cpu")
        ds = build_train_dataset(uri, crop_size=64, crops_per_image=2, skip_counter_name=counter, decode="cuda")
        batches = list(iter_device_crops(ds, crop_size=64, crops_per_image=2, batch_size=5, device="cpu", prefetch_batches=1, skip_counter_name=counter))
        assert [tuple(b.shape) for b in batches] == [(5, 3, 64, 64)] * (2 * len(good) // 5)  # full batches only (drop_last)
        assert count_skips(counter)["examples"] == {kind: [key] for key, kind in kinds.items()}
    assert not decodes_on_worker(pixels, "cuda")  # raw-uint8 needs no decoding anywhere


@pytest.mark.parametrize("case", ["missing-input", "output-inside-input"])
def test_user_errors_are_one_line_with_exit_2(cli, tmp_path, photos_dir, case):
    src = tmp_path / "src"
    write_tree(src, {"a/astronaut.png": (photos_dir / "astronaut.png").read_bytes()})
    inputs, output, words = {
        "missing-input": (tmp_path / "nope", tmp_path / "out", "does not exist"),
        "output-inside-input": (src, src / "a" / "shards", "is the input prefix or inside it"),
    }[case]
    proc = cli("prepare", "--input", str(inputs), "--output", str(output))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], proc.stderr
    assert not list(tmp_path.rglob("*.parquet"))


def test_pack_reads_no_more_of_an_object_than_the_byte_limit_needs(tmp_path, photos_dir):
    """An object over the byte limit is packed as its first max_bytes + 1 bytes, not read whole (a stray
    multi-GB object would fill the packer's memory): training then refuses it as too_large."""
    from srgan.core.images import ImageLimits, ImageTooLargeError, decode_image

    photo = (photos_dir / "astronaut.png").read_bytes()
    limit = len(photo)
    src = tmp_path / "src"
    write_tree(src, {"fits.png": photo, "over.png": photo + b"\0" * 5000})
    summary = pack_images(str(src), str(tmp_path / "out"), limits=ImageLimits(max_bytes=limit))
    table = pq.read_table(next((tmp_path / "out").glob("*.parquet")))
    stored = dict(zip(table.column("path").to_pylist(), table.column("image").to_pylist()))
    assert stored["fits.png"] == photo and stored["over.png"] == photo + b"\0"
    assert summary.input_bytes == 2 * limit + 1
    with pytest.raises(ImageTooLargeError):
        decode_image(stored["over.png"], limits=ImageLimits(max_bytes=limit))


def test_pack_refuses_the_input_itself_and_existing_shards(tmp_path, photos_dir):
    src = tmp_path / "src"
    write_tree(src, {"a/astronaut.png": (photos_dir / "astronaut.png").read_bytes()})
    with pytest.raises(UserError, match="is the input prefix or inside it"):
        pack_images(f"file://{src}", f"{src}/")
    size = (src / "a" / "astronaut.png").stat().st_size
    assert pack_images(str(src), str(tmp_path / "out")) == PackSummary(images=1, shards=1, bytes=size, output=str(tmp_path / "out"), input_bytes=size)
    with pytest.raises(UserError, match="already holds Parquet shards"):  # mixing runs would leave stale shards
        pack_images(str(src), str(tmp_path / "out"))
    assert not list(src.rglob("*.parquet"))
