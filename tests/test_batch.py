"""pipelines/upscale.py end to end: a real moto S3 server on 127.0.0.1, the session's Ray cluster.

The input prefix has nested folders, mixed formats (PNG, JPEG, upper-case .JPEG, WebP, BMP), one
truncated JPEG and one image over 16 megapixels. Runs are jobs on the session cluster with
fractional CPUs per actor (the Ray Train tests share the cluster). The CLI's ``main`` runs in this
process, connected to that cluster (the ``cli`` fixture); tests/test_remote_tracking.py starts it as a
subprocess.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import time

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import load_photo
from srgan.distributed.bulk import (ERRORS_REPORT, TMP_SUFFIX, BulkUpscaleConfig, actor_arguments, output_key, plan_from_listing,
                                   plan_outputs, run_bulk_upscale)
from srgan.core.checkpoint import save_generator
from srgan.errors import UserError
from srgan.io.datasets import pack_images
from srgan.core.images import decode_image, encode_image
from srgan.core.inference import Upscaler, UpscalerOptions
from srgan.core.models import GeneratorConfig, build_generator

# relative key -> (photo, (height, width) of the crop, PIL format)
GOOD = {
    "a/one.png": ("coffee.png", (40, 56), "PNG"),
    "a/b/two.jpg": ("chelsea.png", (48, 40), "JPEG"),
    "a/b/c/three.JPEG": ("rocket.jpg", (32, 48), "JPEG"),
    "d/four.webp": ("astronaut.png", (44, 36), "WEBP"),
    "five.bmp": ("motorcycle_left.png", (36, 36), "BMP"),
    "d/e/six.png": ("camera.png", (40, 40), "PNG"),  # greyscale
}
BAD = {"a/b/truncated.jpg": "corrupt", "d/huge.png": "too_large"}
OUT_EXT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".png"}  # BMP is written as PNG


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def _good_bytes(photo: str, size: tuple[int, int], fmt: str, offset: int = 0) -> bytes:
    arr = load_photo(photo)
    return _encode(np.ascontiguousarray(arr[offset : offset + size[0], offset : offset + size[1]]), fmt)


def _out_key(key: str) -> str:
    return os.path.splitext(key)[0] + OUT_EXT[GOOD[key][2]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    return save_generator(tmp_path_factory.mktemp("bulk-ckpt") / "small", build_generator(GeneratorConfig(num_blocks=2, num_features=16)))


@pytest.fixture(scope="module")
def bucket(s3_server):
    """s3://<bucket>/photos: the six good images and the two bad ones."""
    client = boto3.client("s3", endpoint_url=s3_server)
    name = "bulk-upscale"
    client.create_bucket(Bucket=name)
    for key, spec in GOOD.items():
        client.put_object(Bucket=name, Key=f"photos/{key}", Body=_good_bytes(*spec))
    client.put_object(Bucket=name, Key="photos/a/b/truncated.jpg", Body=_good_bytes("coffee.png", (200, 200), "JPEG")[:3000])
    client.put_object(Bucket=name, Key="photos/d/huge.png", Body=_encode(np.zeros((3300, 5000), np.uint8), "PNG"))  # 16.5 MP
    return client, name


def _upscale(cli, *args):
    """``pipelines/upscale.py ARGS``'s ``main`` in this process (the ``cli`` fixture), its job on the
    session cluster: the same code path as the subprocess a user starts, without a second import of
    torch, Ray and MLflow (tests/test_remote_tracking.py runs the CLI as a subprocess)."""
    return cli("upscale", *args, on_cluster=True)


def _objects(client, bucket: str, prefix: str) -> dict[str, tuple[str, object]]:
    """key (relative to prefix) -> (ETag, LastModified) of every object under the prefix."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return {o["Key"][len(prefix) + 1 :]: (o["ETag"], o["LastModified"]) for page in pages for o in page.get("Contents", [])}


def _get(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def test_bulk_s3_to_s3_outputs_errors_and_rerun(cli, ray_cluster, bucket, checkpoint):
    client, name = bucket
    args = ["--input", f"s3://{name}/photos", "--output", f"s3://{name}/photos-x4", "--model", str(checkpoint),
            "--num-cpus", "0.25", "--workers", "1", "--stall-timeout-s", "120"]
    first = _upscale(cli, *args)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]  # something failed
    assert "done 6, skipped 0, failed 2" in first.stdout and "upscaled 8/8" in first.stdout, first.stdout

    outputs = _objects(client, name, "photos-x4")
    assert set(outputs) == {_out_key(k) for k in GOOD} | {ERRORS_REPORT}
    for key, (photo, (height, width), fmt) in GOOD.items():
        out = decode_image(_get(client, name, f"photos-x4/{_out_key(key)}"))
        assert out.size == (4 * width, 4 * height), key
        assert out.mode == ("L" if photo == "camera.png" else "RGB")
    # Pixels equal a direct Upscaler call on the same input (a lossless PNG output).
    direct = Upscaler.from_checkpoint(checkpoint, options=UpscalerOptions(device="cpu"))
    want = decode_image(encode_image(direct.upscale_image(decode_image(_get(client, name, "photos/a/one.png"))), "png"))
    got = decode_image(_get(client, name, "photos-x4/a/one.png"))
    assert ((got.rgb - want.rgb).abs().max() * 255).item() <= 1

    report = [json.loads(line) for line in _get(client, name, f"photos-x4/{ERRORS_REPORT}").decode().splitlines()]
    assert {r["key"]: r["kind"] for r in report} == BAD
    assert all(r["reason"] and "\n" not in r["reason"] for r in report)

    # A rerun skips the six done inputs, fails the two bad ones again and writes nothing new.
    second = _upscale(cli, *args)
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    assert "done 0, skipped 6, failed 2" in second.stdout, second.stdout
    assert _objects(client, name, "photos-x4") == outputs


def _shard_keys(folder) -> dict[str, list[str]]:
    """shard file name -> the keys packed in it."""
    return {p.name: pq.read_table(p, columns=["path"]).column("path").to_pylist() for p in sorted(folder.glob("*.parquet"))}


def test_bulk_parquet_shards_to_local_folder_reads_only_what_is_left(cli, ray_cluster, tmp_path, checkpoint):
    src = tmp_path / "src"
    for key, spec in GOOD.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(_good_bytes(*spec))
    pack_images(str(src), str(tmp_path / "shards"), images_per_shard=4)
    (full, four), (small, two) = sorted(_shard_keys(tmp_path / "shards").items(), key=lambda kv: -len(kv[1]))
    assert (len(four), len(two)) == (4, 2)
    out = tmp_path / "out"
    # Done before this run: one row of the 4-image shard (read, that row filtered out) and all of the
    # 2-image shard (not read at all). Their outputs must stay as they are.
    done_before = {os.path.splitext(k)[0] + ".webp": b"done before" for k in [four[0], *two]}
    for out_key, data in done_before.items():
        (out / out_key).parent.mkdir(parents=True, exist_ok=True)
        (out / out_key).write_bytes(data)
    stale = out / "a" / f".one.png.0badc0de{TMP_SUFFIX}"  # what a killed run can leave behind
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"partial")
    # The actor runs the generator with onnxruntime (exported on the fly): the bulk job's other runtime.
    proc = _upscale(cli, "--input", str(tmp_path / "shards"), "--output", str(out), "--model", str(checkpoint),
                    "--format", "webp", "--num-cpus", "0.25", "--runtime", "onnxruntime", "--stall-timeout-s", "120")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"model {checkpoint} (onnxruntime)" in proc.stdout, proc.stdout
    assert "done 3, skipped 3, failed 0" in proc.stdout and "upscaled 3/3" in proc.stdout, proc.stdout
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == sorted(os.path.splitext(k)[0] + ".webp" for k in GOOD)  # no temporaries, no report
    for out_key, data in done_before.items():
        assert (out / out_key).read_bytes() == data
    for key in four[1:]:
        height, width = GOOD[key][1]
        assert Image.open(out / (os.path.splitext(key)[0] + ".webp")).size == (4 * width, 4 * height)


@pytest.mark.whole_cluster  # runs last: it waits for every CPU of the session cluster
def test_a_stalled_execution_is_started_again_for_what_is_left(ray_cluster, tmp_path, checkpoint):
    """Every CPU of the cluster held by a placement group: nothing can run, and Ray Data's no-progress
    guard stops the execution after stall_timeout_s. The job says so in one line (free CPU 0), plans
    again, and once the CPUs are back the new execution finishes the work: each input once."""
    import threading

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    src, out = tmp_path / "src", tmp_path / "out"
    keys = ["a/one.png", "a/b/two.jpg", "d/e/six.png"]
    for key in keys:
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(_good_bytes(*GOOD[key]))
    # Generous retries: an actor's start (a worker process, torch, the model) is no progress either.
    config = BulkUpscaleConfig(input=str(src), output=str(out), model=str(checkpoint), num_cpus=0.25,
                               stall_timeout_s=8, stall_retries=5)
    # The whole cluster's CPUs: ready only once nothing else holds any (an actor of an earlier test
    # still being torn down), so that nothing can start until the test lets go.
    blocker = placement_group([{"CPU": ray.cluster_resources()["CPU"]}])
    ray.get(blocker.ready(), timeout=60)
    lines: list[str] = []
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(summary=run_bulk_upscale(config, report=lines.append)), daemon=True)
    job.start()
    try:
        deadline = time.monotonic() + 120
        while not any("WARNING: no progress" in line for line in lines) and time.monotonic() < deadline and job.is_alive():
            time.sleep(0.2)
    finally:
        remove_placement_group(blocker)
    job.join(timeout=240)
    assert not job.is_alive() and "summary" in result, lines
    warning = next(line for line in lines if "WARNING: no progress" in line)
    assert "free CPU 0" in warning and "input(s) left" in warning, warning
    summary = result["summary"]
    assert (summary.done, summary.failed, summary.skipped) == (3, 0, 0), (summary.line(), lines)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == sorted(_out_key(k) for k in keys)


@pytest.mark.whole_cluster  # runs last: it holds all but half a CPU of the session cluster
def test_shards_are_read_while_less_than_one_cpu_is_free(ray_cluster, tmp_path, checkpoint):
    """Ray 2.60's read_parquet lists its paths in a task that asks for a whole CPU: with the bulk job's
    own actor holding the rest, that task never started (a CI run stalled 3 x 120 s with 0.75 CPU
    free). The project's shard reader needs only the read's fraction, so a bulk job and a training
    epoch over shards both finish with half a CPU free."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from srgan.distributed.ingest import build_train_dataset

    src, shards, out = tmp_path / "src", tmp_path / "shards", tmp_path / "out"
    for key, spec in GOOD.items():
        (src / key).parent.mkdir(parents=True, exist_ok=True)
        (src / key).write_bytes(_good_bytes(*spec))
    pack_images(str(src), str(shards), images_per_shard=4)
    blocker = placement_group([{"CPU": ray.cluster_resources()["CPU"] - 0.5}])
    ray.get(blocker.ready(), timeout=60)
    try:
        # One actor (0.25 CPU) and reads of 0.25 CPU fit; a task of 1 CPU would wait for ever.
        # Retries: an actor's start is no progress either (a loaded machine); the old reader stalled at every try.
        config = BulkUpscaleConfig(input=str(shards), output=str(out), model=str(checkpoint), num_cpus=0.25,
                                   stall_timeout_s=20, stall_retries=2)
        lines: list[str] = []
        summary = run_bulk_upscale(config, report=lines.append)
        assert (summary.done, summary.failed, summary.skipped) == (len(GOOD), 0, 0), (summary.line(), lines)
        ds = build_train_dataset(str(shards), crop_size=32, crops_per_image=2, num_cpus=0.25,
                                 skip_counter_name=f"skips-{tmp_path.name}")
        ds.context.execution_no_progress_timeout_s = 20
        rows = ds.take_all()
        assert len(rows) == 2 * len(GOOD) and all(row["gt"].shape == (3, 32, 32) for row in rows)
    finally:
        remove_placement_group(blocker)


def test_plan_reads_only_shards_with_work_and_filters_their_done_rows():
    located = {"s1/a.png": "shard-1", "s1/b.png": "shard-1", "s1/b.jpg": "shard-1", "s2/c.png": "shard-2", "s3/d.png": "shard-3"}
    plan = plan_from_listing(located, parquet=True, fmt="png", existing={"s1/a.png", "s2/c.png"})
    assert plan.todo == ["s1/b.jpg", "s3/d.png"] and plan.skipped == 2
    assert [(f.key, f.kind) for f in plan.failures] == [("s1/b.png", "collision")]
    assert plan.source_paths == ["shard-1", "shard-3"]  # shard-2 is done: not read
    assert plan.excluded_keys == ["s1/a.png", "s1/b.png"]  # the rows of shard-1 that are not to be processed
    raw = plan_from_listing({k: f"/in/{k}" for k in located}, parquet=False, fmt="png", existing={"s1/a.png"}, in_root="/in")
    assert raw.source_paths == ["/in/s1/b.jpg", "/in/s2/c.png", "/in/s3/d.png"] and raw.excluded_keys == []


def test_actor_arguments_do_not_grow_with_the_inputs(tmp_path, checkpoint):
    from srgan.tracking.refs import resolve_model

    config = BulkUpscaleConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=str(checkpoint))
    source = resolve_model(str(checkpoint))
    sizes = []
    for count in (10, 10_000):
        plan = plan_from_listing({f"k/{i:06d}.png": f"/in/k/{i:06d}.png" for i in range(count)}, parquet=False, fmt=None,
                                 existing=set(), in_root="/in")
        assert len(plan.todo) == count
        sizes.append(len(pickle.dumps(actor_arguments(config, plan, source))))
    assert sizes[0] == sizes[1]


def test_onnxruntime_on_a_gpu_is_refused_in_one_line(cli, tmp_path, checkpoint):
    proc = cli("upscale", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--model", str(checkpoint),
               "--runtime", "onnxruntime", "--gpu")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "onnxruntime runtime runs on the CPU" in lines[0], proc.stderr


def test_output_at_or_inside_input_is_refused(cli, tmp_path, checkpoint):
    src = tmp_path / "src"
    src.mkdir()
    (src / "one.png").write_bytes(_good_bytes("coffee.png", (16, 16), "PNG"))
    with pytest.raises(UserError, match="is the input prefix or inside it"):  # before any Ray or model work
        run_bulk_upscale(BulkUpscaleConfig(input=str(src), output=f"file://{src}/", model=str(checkpoint)))
    proc = cli("upscale", "--input", str(src), "--output", str(src / "sub" / "out"), "--model", str(checkpoint))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is the input prefix or inside it" in lines[0], proc.stderr
    assert sorted(p.name for p in src.rglob("*")) == ["one.png"]  # nothing written


def test_plan_outputs_skips_existing_and_reports_collisions():
    todo, skipped, failures = plan_outputs(["x/a.jpg", "x/a.png", "b.bmp", "c.webp"], "png", existing={"c.png"})
    assert todo == {"b.bmp": "b.png", "x/a.jpg": "x/a.png"} and skipped == 1
    assert [(f.key, f.kind) for f in failures] == [("x/a.png", "collision")]
    todo, skipped, failures = plan_outputs(["x/a.jpg", "x/a.png", "b.bmp", "c.JPEG"], None, existing=set())
    assert todo == {"b.bmp": "b.png", "c.JPEG": "c.jpg", "x/a.jpg": "x/a.jpg", "x/a.png": "x/a.png"} and not failures


def test_output_key_follows_splitext_rules():
    # The fast path must agree with os.path.splitext: dot files, dotted folders, no extension.
    cases = {"a/b.JPG": "a/b.jpg", "a.b/c": "a.b/c.png", "a/.b": "a/.b.png", "a/..b.png": "a/..b.png",
             "dir.d/.hidden.webp": "dir.d/.hidden.webp", "x/y.bmp": "x/y.png", "t.tar.jpeg": "t.tar.jpg"}
    assert {key: output_key(key, None) for key in cases} == cases
    assert output_key("a.b/c", "webp") == "a.b/c.webp" and output_key("a/.b", "jpeg") == "a/.b.jpg"
