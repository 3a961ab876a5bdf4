"""Training under faults (issue 13, items 5 and 7): registration that a rerun cannot duplicate; a
driver SIGKILLed with its whole process group, then rerun; a worker killed twice in one run."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from srgan.core.checkpoint import save_generator
from srgan.core.models import SRResNet
from srgan.tracking.registry import register_generator
from srgan.tracking.runs import open_run, resolve_tracking_uri


def test_registering_the_same_run_and_step_again_returns_the_same_version(tmp_path):
    """A driver killed after registering (or a registration retried after a timeout that had in fact
    reached the server) must not make a second version of the same checkpoint."""
    uri = resolve_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id, _ = open_run(uri, experiment="exp", run_key="k", run_name="r")
    ckpt = save_generator(tmp_path / "ck", SRResNet(num_blocks=1, num_features=4))
    first = register_generator(uri, run_id=run_id, checkpoint_dir=ckpt, step=8, name="gen", metric_name="val_psnr_y", metric_value=30.0)
    again = register_generator(uri, run_id=run_id, checkpoint_dir=ckpt, step=8, name="gen", metric_name="val_psnr_y", metric_value=30.0)
    assert (first.version, first.champion) == ("1", True)
    assert (again.version, again.champion, again.uri) == ("1", True, "models:/gen/1")
    # A later step of the same run (a resume with more steps) is a new version, as before.
    later = register_generator(uri, run_id=run_id, checkpoint_dir=ckpt, step=9, name="gen", metric_name="val_psnr_y", metric_value=29.0)
    assert later.version == "2" and not later.champion
    # Another run's step 8 is its own version.
    other, _ = open_run(uri, experiment="exp", run_key="k2", run_name="r2")
    assert register_generator(uri, run_id=other, checkpoint_dir=ckpt, step=8, name="gen", metric_name="val_psnr_y", metric_value=1.0).version == "3"
    client = MlflowClient(uri, registry_uri=uri)
    assert sorted(int(v.version) for v in client.search_model_versions("name = 'gen'")) == [1, 2, 3]
    assert str(client.get_model_version_by_alias("gen", "champion").version) == "1"
