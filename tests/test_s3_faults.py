"""Object-store faults: the fault proxy (benchmarks/faults/s3proxy.py) in front of the real moto S3
server, and the clients of srgan.io.storage retrying through it.

- The proxy injects 503 SlowDown, 500 and connection resets at its seeded rate, and counts them.
- Every S3 client retries a bounded number of times, in the driver and in a Ray worker it was pickled
  to (pyarrow's own pickling drops the retry strategy: a defect this file holds fixed).
- Ray Train's checkpoints on s3:// go through the same retrying filesystem (the trainer's RunConfig),
  pickled to the controller and the workers with it: a store that fails three requests in a row, which
  a client with AWS's default 3 attempts gives up on, still takes the run directory and a checkpoint.

Each retry waits out the strategy's own backoff (random, doubling from about a second), so these tests
inject as few faults in a row as tell the cases apart.
- Ingest and bulk upscaling through the proxy at 20% faults finish as the fault-free run does: the
  same objects, the same skip counts, byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import uuid
from pathlib import Path

import boto3
import numpy as np
import pyarrow.fs as pafs
import pytest
import torch
from PIL import Image

from benchmarks.faults.s3proxy import FAULT_KINDS, s3_fault_proxy
from conftest import load_photo
from srgan.io.storage import S3_MAX_ATTEMPTS, RetryingS3FileSystem, s3_client, s3_filesystem

FAULT_RATE = 0.2  # about 1 request in 5 fails: every run below retries many times


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _digests(client, bucket: str, prefix: str) -> dict[str, str]:
    """key (relative to prefix) -> sha256 of every object under it (read past the proxy)."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return {k[len(prefix) + 1 :]: hashlib.sha256(client.get_object(Bucket=bucket, Key=k)["Body"].read()).hexdigest() for k in keys}


# --------------------------------------------------------------------------------------- the proxy and the clients


def test_proxy_injects_each_fault_kind_and_clients_retry_through_them(s3_server, s3_bucket):
    blobs = {f"obj/{i}.bin": np.random.default_rng(i).bytes(20_000 + i) for i in range(4)}
    with s3_fault_proxy(s3_server, rate=0.3, seed=3) as proxy:
        client = s3_client(proxy.endpoint)
        for key, data in blobs.items():
            client.put_object(Bucket=s3_bucket, Key=key, Body=data)
        assert {k: client.get_object(Bucket=s3_bucket, Key=k)["Body"].read() for k in blobs} == blobs
        fs = s3_filesystem(proxy.endpoint)
        for key, data in blobs.items():
            with fs.open_input_stream(f"{s3_bucket}/{key}") as f:
                assert f.read() == data
        counters = proxy.counters
    assert counters.faults > 0 and all(counters.by_kind[k] > 0 for k in FAULT_KINDS), counters
    assert counters.requests == counters.forwarded + counters.faults >= 2 * len(blobs) + counters.faults
    # Nothing a faulted request would have written was written: the store holds exactly the objects.
    want = {k.removeprefix("obj/"): hashlib.sha256(v).hexdigest() for k, v in blobs.items()}
    assert _digests(boto3.client("s3", endpoint_url=s3_server), s3_bucket, "obj") == want


def test_the_proxy_draws_faults_from_its_seed(s3_server, s3_bucket):
    def faults(seed: int) -> list[int]:
        with s3_fault_proxy(s3_server, rate=0.5, seed=seed) as proxy:
            client = s3_client(proxy.endpoint, max_attempts=20)
            seen = []
            for i in range(6):
                before = proxy.counters.faults
                client.put_object(Bucket=s3_bucket, Key=f"seed/{i}", Body=b"x")
                seen.append(proxy.counters.faults - before)
            return seen

    assert faults(5) == faults(5)


def test_pickled_filesystem_keeps_its_retry_attempts(s3_server, s3_bucket):
    """Regression: pyarrow pickles S3FileSystem without its retry_strategy, so Ray workers retried 3
    times whatever the driver asked. Every request fails here: a GET is tried exactly max_attempts times
    (2, so that a dropped strategy's 3 shows)."""
    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket=s3_bucket, Key="k", Body=b"data")
    with s3_fault_proxy(s3_server, rate=1.0, seed=0, kinds=("slowdown",)) as proxy:
        fs = pickle.loads(pickle.dumps(s3_filesystem(proxy.endpoint, max_attempts=2)))
        assert isinstance(fs, RetryingS3FileSystem) and fs.max_attempts == 2
        with pytest.raises(OSError, match="SLOW_DOWN|SlowDown|503"):
            with fs.open_input_stream(f"{s3_bucket}/k") as f:
                f.read()
        assert proxy.counters.requests == 2
    assert s3_filesystem().max_attempts == S3_MAX_ATTEMPTS


def test_boto3_client_makes_bounded_attempts(s3_server, s3_bucket):
    with s3_fault_proxy(s3_server, rate=1.0, seed=0, kinds=("internal",)) as proxy:
        with pytest.raises(Exception, match="InternalError"):
            s3_client(proxy.endpoint, max_attempts=3).put_object(Bucket=s3_bucket, Key="k", Body=b"x")
        assert proxy.counters.requests == 3
    assert s3_client().meta.config.retries == {"mode": "standard", "total_max_attempts": S3_MAX_ATTEMPTS}


def _fail_first(proxy, n: int) -> None:
    """Make the proxy (started at rate 1.0) fail its first ``n`` requests, whatever they are, then
    forward every other one: a burst of faults, the same on every run (no draw decides it)."""
    draw = proxy._draw

    def first_n():
        kind = draw()
        if proxy.counters.faults >= n:
            proxy.set_rate(0.0)
        return kind

    proxy._draw = first_n


@pytest.mark.slow  # about 8 s of the retry strategy's own backoff
def test_checkpoints_go_through_the_retrying_filesystem(s3_server, s3_bucket, tmp_path):
    """Regression: Ray Train's checkpoints on s3:// went through Ray's own filesystem for the URI
    (pyarrow's default 3 attempts a request): a flaky store could fail a checkpoint upload. The
    trainer's RunConfig now names the retrying filesystem and a bucket-relative path; Ray's
    StorageContext built from it (the controller's, then pickled to every worker, as Ray sends it)
    creates the run directory and persists a checkpoint through three faults in a row."""
    import dataclasses

    from ray.train import Checkpoint

    from srgan.config import Config
    from srgan.distributed.trainer import SELECTION, _run_config, _storage_path

    with s3_fault_proxy(s3_server, rate=1.0, seed=0, kinds=("slowdown",)) as proxy:
        _fail_first(proxy, 3)
        with pytest.raises(OSError, match="SLOW_DOWN|SlowDown|503|UNKNOWN"):
            s3_filesystem(proxy.endpoint, max_attempts=3).get_file_info(f"{s3_bucket}/runs")
        assert proxy.counters.requests == 3  # AWS's default gives up inside the burst

    local = tmp_path / "ckpt"
    (local / "sub").mkdir(parents=True)
    files = {"training_state.pt": np.random.default_rng(0).bytes(300_000), "checkpoint.json": b'{"metadata": {"step": 4}}',
             "sub/generator.safetensors": np.random.default_rng(1).bytes(50_000)}
    for name, data in files.items():
        (local / name).write_bytes(data)
    with s3_fault_proxy(s3_server, rate=1.0, seed=0, kinds=("slowdown",)) as proxy:
        _fail_first(proxy, 3)
        base = Config()
        config = dataclasses.replace(base, data=dataclasses.replace(base.data, s3_endpoint=proxy.endpoint),
                                     run=dataclasses.replace(base.run, name="ckpt", storage=f"s3://{s3_bucket}/runs/"))
        run_config = _run_config(config, _storage_path(config.run.storage), SELECTION["srresnet"])
        fs = run_config.storage_filesystem
        assert isinstance(fs, RetryingS3FileSystem) and fs.max_attempts == S3_MAX_ATTEMPTS
        assert run_config.storage_path == f"{s3_bucket}/runs"  # Ray wants no scheme beside a filesystem
        controller = run_config.storage_context  # creates and checks the run's validation marker: the burst hits it
        assert proxy.counters.faults == 3
        worker = pickle.loads(pickle.dumps(controller))  # as Ray hands it to the controller and the workers
        assert isinstance(worker.storage_filesystem, RetryingS3FileSystem) and worker.storage_filesystem.max_attempts == S3_MAX_ATTEMPTS
        persisted = worker.persist_current_checkpoint(Checkpoint.from_directory(str(local)), "checkpoint_000000")
        assert persisted.path == f"{s3_bucket}/runs/ckpt/checkpoint_000000"
        with persisted.as_directory() as back:  # read back through the proxy (and the retrying filesystem)
            assert {n: (Path(back) / n).read_bytes() for n in files} == files
        counters = proxy.counters
    assert counters.faults == 3 and counters.forwarded > len(files), counters
    stored = _digests(boto3.client("s3", endpoint_url=s3_server), s3_bucket, "runs/ckpt/checkpoint_000000")
    stored = {k: v for k, v in stored.items() if not k.endswith("/") and k}  # pyarrow's directory markers
    assert stored == {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}


def test_local_run_storage_keeps_rays_own_filesystem(tmp_path):
    from srgan.distributed.trainer import _ray_storage

    assert _ray_storage(str(tmp_path), None) == (str(tmp_path), None)


# --------------------------------------------------------------------------------------- ingest and bulk through faults


def _poke_bucket(s3_server) -> tuple[str, object]:
    client = boto3.client("s3", endpoint_url=s3_server)
    bucket = f"faults-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    return bucket, client


@pytest.mark.soak  # CI: the harness's quick s3-faults runs ingest and bulk through the proxy
def test_ingest_under_faults_reads_the_same_objects_with_the_same_skips(ray_cluster, s3_server):
    from srgan.distributed.ingest import build_train_dataset, count_skips

    bucket, client = _poke_bucket(s3_server)
    photo = load_photo("astronaut.png")
    for i in range(10):
        client.put_object(Bucket=bucket, Key=f"train/{i % 3}/img_{i}.png", Body=_png(np.ascontiguousarray(photo[16 * i : 16 * i + 80, :96])))
    client.put_object(Bucket=bucket, Key="train/0/empty.jpg", Body=b"")
    client.put_object(Bucket=bucket, Key="train/1/notes.jpg", Body=b"not an image\n")
    client.put_object(Bucket=bucket, Key="train/2/cut.png", Body=_png(photo[:80, :80])[:500])

    def epoch(endpoint: str, name: str) -> tuple[int, dict]:
        ds = build_train_dataset(f"s3://{bucket}/train", crop_size=32, crops_per_image=2, s3_endpoint=endpoint,
                                 skip_counter_name=name, files_per_task=4)
        rows = sum(len(b["gt"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy"))
        return rows, count_skips(name)

    with s3_fault_proxy(s3_server, rate=0.0) as clean:
        clean_rows, clean_skips = epoch(clean.endpoint, f"clean-{uuid.uuid4().hex[:6]}")
    with s3_fault_proxy(s3_server, rate=FAULT_RATE, seed=11) as proxy:
        rows, skips = epoch(proxy.endpoint, f"faulty-{uuid.uuid4().hex[:6]}")
        counters = proxy.counters
    assert counters.faults > 0, counters
    assert clean_rows == rows == 20  # every good object read once: 10 x 2 crops
    assert skips["counts"] == clean_skips["counts"] == {"empty": 1, "not_image": 1, "corrupt": 1}
    assert {k: sorted(v) for k, v in skips["examples"].items()} == {k: sorted(v) for k, v in clean_skips["examples"].items()}
    assert counters.requests > clean.counters.requests  # the retries: more requests than the fault-free run


@pytest.mark.soak
def test_bulk_upscale_under_faults_writes_byte_identical_outputs(ray_cluster, s3_server, tmp_path):
    from srgan.core.checkpoint import save_generator
    from srgan.core.models import GeneratorConfig, build_generator
    from srgan.distributed.bulk import BulkUpscaleConfig, run_bulk_upscale

    bucket, client = _poke_bucket(s3_server)
    photo = load_photo("coffee.png")
    for i in range(5):
        client.put_object(Bucket=bucket, Key=f"in/{i % 2}/img_{i}.png", Body=_png(np.ascontiguousarray(photo[10 * i : 10 * i + 40, :48])))
    client.put_object(Bucket=bucket, Key="in/cut.png", Body=_png(photo[:40, :40])[:300])  # one failure: the report too
    torch.manual_seed(0)
    model = save_generator(tmp_path / "g", build_generator(GeneratorConfig(num_blocks=1, num_features=8)))

    def run(endpoint: str, out: str):
        config = BulkUpscaleConfig(input=f"s3://{bucket}/in", output=f"s3://{bucket}/{out}", model=str(model), num_cpus=0.25,
                                   batch_size=2, s3_endpoint=endpoint)
        return run_bulk_upscale(config, report=lambda line: None)

    with s3_fault_proxy(s3_server, rate=0.0) as clean:
        clean_summary = run(clean.endpoint, "clean")
    with s3_fault_proxy(s3_server, rate=FAULT_RATE, seed=7) as proxy:
        summary = run(proxy.endpoint, "faulty")
        counters = proxy.counters
    assert counters.faults > 0, counters
    assert (summary.done, summary.failed) == (clean_summary.done, clean_summary.failed) == (5, 1)
    clean_out, faulty_out = _digests(client, bucket, "clean"), _digests(client, bucket, "faulty")
    assert len(clean_out) == 6 and "_upscale_errors.jsonl" in clean_out  # 5 outputs + the report
    assert faulty_out == clean_out
