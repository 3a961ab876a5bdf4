"""The MLflow registry on a real SQLite store: versions, the champion alias, downloads without pickles."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from srgan.core.checkpoint import save_generator
from srgan.core.models import SRResNet
from srgan.errors import ModelReferenceError
from srgan.tracking.refs import load_generator_ref, resolve_model
from srgan.tracking.registry import register_generator
from srgan.tracking.runs import MetricLogger, open_run, resolve_tracking_uri


def test_champion_moves_only_when_better(tmp_path, mlflow_db, monkeypatch):
    import tempfile

    from srgan.tracking.refs import load_upscaler

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # every temporary directory the loads make lands here
    uri = resolve_tracking_uri(mlflow_db)
    run_id, resumed = open_run(uri, experiment="exp", run_key="k1", run_name="r1")
    assert not resumed
    nets = {}
    for step, psnr in ((10, 30.0), (20, 29.0), (30, 31.0)):
        torch.manual_seed(step)
        nets[step] = SRResNet(num_blocks=1, num_features=4)
        ckpt = save_generator(tmp_path / f"ck{step}", nets[step])
        reg = register_generator(uri, run_id=run_id, checkpoint_dir=ckpt, step=step, name="gen", metric_name="val_psnr_y", metric_value=psnr)
        assert reg.uri == f"models:/gen/{reg.version}"
        assert reg.champion == (psnr != 29.0)
    client = MlflowClient(uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias("gen", "champion").version) == "3"
    # Each version keeps its own files: version 1 still loads the step-10 weights.
    loaded, _ = load_generator_ref("models:/gen/1", tracking_uri=uri)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), nets[10].state_dict().values()))
    champion, _ = load_generator_ref("models:/gen@champion", tracking_uri=uri)
    assert all(torch.equal(a, b) for a, b in zip(champion.state_dict().values(), nets[30].state_dict().values()))
    upscaler = load_upscaler("models:/gen@champion", tracking_uri=uri)
    assert (upscaler.source.uri, upscaler.version) == ("models:/gen/3", "3")
    # The downloads were removed once loaded (a replica, bulk actor or worker loads models over and over).
    assert sorted(scratch.iterdir()) == []
    files = sorted(a.path for a in client.list_artifacts(run_id, "generator/step_10"))
    assert files == ["generator/step_10/checkpoint.json", "generator/step_10/generator.safetensors"]


def test_lower_is_better_metric_and_pinning_an_alias(tmp_path, mlflow_db):
    uri = resolve_tracking_uri(mlflow_db)
    run_id, _ = open_run(uri, experiment="exp", run_key="gan", run_name="gan")
    for step, distance in ((10, 0.50), (20, 0.70), (30, 0.40)):
        ckpt = save_generator(tmp_path / f"ck{step}", SRResNet(num_blocks=1, num_features=4))
        reg = register_generator(uri, run_id=run_id, checkpoint_dir=ckpt, step=step, name="gan", metric_name="val_content_distance",
                                 metric_value=distance, higher_is_better=False, tags={"phase": "srgan"})
        assert reg.champion == (distance != 0.70)
    client = MlflowClient(uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("gan", "champion")
    assert str(champion.version) == "3" and champion.tags["phase"] == "srgan" and champion.tags["val_content_distance"] == "0.400000"
    pinned = resolve_model("models:/gan@champion", tracking_uri=uri)
    assert (pinned.uri, pinned.version, pinned.is_alias) == ("models:/gan/3", "3", True)
    assert resolve_model("models:/gan/2", tracking_uri=uri).uri == "models:/gan/2"
    for bad in ("models:/gan", "models:/gan/two", "models:/@champion"):
        with pytest.raises(ModelReferenceError, match="must look like models:/NAME@ALIAS or models:/NAME/VERSION"):
            resolve_model(bad, tracking_uri=uri)


def test_same_run_key_resumes_and_steps_are_not_repeated(tmp_path, mlflow_db):
    uri = resolve_tracking_uri(mlflow_db)
    run_id, _ = open_run(uri, experiment="exp", run_key="same", run_name="r")
    MetricLogger(uri, run_id).log({"loss": 1.0}, step=5)
    again, resumed = open_run(uri, experiment="exp", run_key="same", run_name="r")
    assert resumed and again == run_id
    logger = MetricLogger(uri, again)
    logger.log({"loss": 9.0}, step=5)  # a replayed step is dropped
    logger.log({"loss": 0.5}, step=6)
    history = [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, "loss")]
    assert history == [(5, 1.0), (6, 0.5)]
    other, resumed = open_run(uri, experiment="exp", run_key="different", run_name="r")
    assert not resumed and other != run_id


def test_relative_sqlite_uri_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_unknown_registered_model_is_a_user_error(tmp_path, mlflow_db):
    from srgan.errors import UserError

    uri = resolve_tracking_uri(mlflow_db)
    open_run(uri, experiment="exp", run_key="k", run_name="r")  # creates the store
    with pytest.raises(UserError, match="models:/nope@champion is not registered in"):
        load_generator_ref("models:/nope@champion", tracking_uri=uri)


def test_settle_waits_for_a_lagging_store_and_not_for_a_down_one(mlflow_db, monkeypatch):
    """At a checkpoint rank 0 waits for a slow store to take the queued steps (a worker lost after the
    checkpoint takes unsent metrics with it, and the restarted group never logs those steps again),
    but returns at once while the store is down. The store is real (SQLite); its answers are delayed."""
    import time

    from mlflow.tracking import MlflowClient

    from srgan.tracking.runs import BufferedLogger

    uri = resolve_tracking_uri(mlflow_db)
    run_id, _ = open_run(uri, experiment="exp", run_key="k", run_name="r")
    logger = BufferedLogger(uri, run_id, retry_every_s=0.2)
    client = logger._client().client
    real_log_batch = client.log_batch

    def slow(*args, **kwargs):
        time.sleep(0.5)
        return real_log_batch(*args, **kwargs)

    monkeypatch.setattr(client, "log_batch", slow)
    for step in (1, 2, 3, 4):
        logger.log({"loss": float(step)}, step)
    assert logger.settle(timeout_s=30)
    assert [m.step for m in MlflowClient(uri).get_metric_history(run_id, "loss")] == [1, 2, 3, 4]

    def down(*args, **kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr(client, "log_batch", down)
    logger.log({"loss": 5.0}, 5)
    deadline = time.monotonic() + 10
    while logger.outages == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    assert not logger.settle(timeout_s=30) and time.monotonic() - t0 < 15  # at once, not the 30 s bound (a wide margin for a loaded CPU)
    monkeypatch.setattr(client, "log_batch", real_log_batch)
    logger.close(timeout_s=30)
    assert [m.step for m in MlflowClient(uri).get_metric_history(run_id, "loss")] == [1, 2, 3, 4, 5]
