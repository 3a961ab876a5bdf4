"""The SRGAN phase end to end on the session's Ray cluster and its MLflow server.

The SRGAN phase starts from the session's trained champion (``models:/srgan-generator@champion``,
tests/conftest.py) with two DDP workers (gloo) and random VGG weights. (A killed worker mid-run is the
reliability harness's, benchmarks/reliability.py --only train-worker-kill; a driver re-run resuming a run is checked on the
SRResNet phase in tests/test_train_pipeline.py; both restore through the same training-state file.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import write_local_training_data
from srgan.core.checkpoint import save_generator, state_fingerprint
from srgan.tracking.refs import load_generator_ref
from srgan.core.models import DiscriminatorConfig, GeneratorConfig, build_discriminator, build_generator

SMALL_D = ["--set", "discriminator.base_features=8", "--set", "discriminator.dense_features=16"]


def _steps(client, run_id, key) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


@pytest.fixture(scope="module")
def local_data(tmp_path_factory, datasets_dir):
    """Four real photos to train on; two Set5 images (HR + MATLAB LR) to validate on."""
    return write_local_training_data(tmp_path_factory.mktemp("srgan-data"), datasets_dir)


def test_srgan_phase_from_the_champion(ray_cluster, cli, srresnet_champion):
    work, db = srresnet_champion.work, srresnet_champion.db
    client = MlflowClient(db, registry_uri=db)
    start_version = str(client.get_model_version_by_alias("srgan-generator", "champion").version)
    steps, every = 4, 2  # two validations and two checkpoints, as a longer run has
    run_dir = work / "runs" / "gan"
    args = [*srresnet_champion.args, *SMALL_D, "--phase", "srgan", "--init-from", srresnet_champion.ref, "--vgg-weights", "random",
            "--name", "gan", "--storage", str(work / "runs"), "--steps", str(steps), "--set", "loss.content_layer=relu2_2",
            "--set", "train.log_every=1", "--set", f"train.val_every={every}", "--set", f"train.checkpoint_every={every}"]
    # In this process, on the session cluster (the ``cli`` fixture): the job a user's ``python
    # pipelines/train.py`` runs, without a second import of torch, Ray and MLflow.
    proc = cli("train", *args, cwd=work, on_cluster=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "--vgg-weights random" in out and "NOT perceptual" in out  # said loudly
    assert f"generator initialised from models:/srgan-generator/{start_version} (models:/srgan-generator@champion)" in out
    assert "registered:  models:/srgan-generator-gan/1  (alias @champion)" in out
    assert "selected by: val_content_distance" in out

    # One MLflow run; every step logged exactly once.
    experiment = client.get_experiment_by_name("srgan").experiment_id
    [run] = client.search_runs([experiment], "attributes.run_name = 'gan'")
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    for key in ("train/loss_g", "train/loss_g_content", "train/loss_g_adversarial", "train/loss_d", "train/d_real", "train/d_fake"):
        assert _steps(client, run_id, key) == list(range(1, steps + 1)), key
    assert _steps(client, run_id, "val/content_distance") == list(range(every, steps + 1, every))
    assert _steps(client, run_id, "val/psnr_y") == list(range(every, steps + 1, every))
    metrics = client.get_run(run_id).data.metrics
    assert 0 < metrics["train/d_real"] < 1 and 0 < metrics["train/d_fake"] < 1
    assert run.data.params["train.phase"] == "srgan" and run.data.params["loss.adversarial_weight"] == "0.001"
    assert any("val_grid" in a.path for a in client.list_artifacts(run_id, "images"))

    # Step 0: G is bit-identical to the pinned champion version; D starts fresh.
    tags = client.get_run(run_id).data.tags
    assert tags["srgan.init_from_resolved"] == f"models:/srgan-generator/{start_version}"
    srresnet, _ = load_generator_ref(tags["srgan.init_from_resolved"], tracking_uri=db)
    assert tags["srgan.step0_fingerprint.net_g"] == state_fingerprint(srresnet)
    # At the end both G and D have moved (read from the last training checkpoint: G, D, optimisers).
    state = torch.load(_latest_checkpoint(run_dir) / "training_state.pt", map_location="cpu", weights_only=True)
    net_g = build_generator(GeneratorConfig(num_blocks=1, num_features=8, bicubic_skip=True))
    net_g.load_state_dict(state["net_g"])
    net_d = build_discriminator(DiscriminatorConfig(base_features=8, dense_features=16))
    net_d.load_state_dict(state["net_d"])
    assert state["step"] == steps and state["optimizer_d"]["state"]
    assert state_fingerprint(net_g) != state_fingerprint(srresnet)
    assert state_fingerprint(net_d) != tags["srgan.step0_fingerprint.net_d"]

    # Registered under its own name, tagged with its phase; the PSNR-selected champion is untouched.
    gan = client.get_model_version_by_alias("srgan-generator-gan", "champion")
    assert gan.run_id == run_id and gan.tags["phase"] == "srgan" and gan.tags["selection_metric"] == "val_content_distance"
    distances = {m.step: m.value for m in client.get_metric_history(run_id, "val/content_distance")}
    assert int(gan.tags["step"]) in distances  # one of the kept checkpoints (Ray keeps the best by distance)
    assert str(client.get_model_version_by_alias("srgan-generator", "champion").version) == start_version


def _latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete Ray Train checkpoint folder of a run (the one with the highest step)."""
    found = [p.parent for p in run_dir.glob("**/training_state.pt")]
    assert found, f"no checkpoint under {run_dir}"
    return max(found, key=lambda p: torch.load(p / "training_state.pt", map_location="cpu", weights_only=True)["step"])


@pytest.mark.parametrize(
    "extra,match",
    [
        ([], "VGG19 ImageNet weights not found in torchvision's cache"),
        (["--vgg-weights", "/no/such/vgg19.pth"], "VGG19 weights not found at /no/such/vgg19.pth"),
    ],
)
def test_missing_vgg_weights_is_one_line_before_ray_starts(cli, local_data, tmp_path, extra, match, no_network):
    train_dir, val_dir = local_data
    save_generator(tmp_path / "srresnet", build_generator(GeneratorConfig(num_blocks=1, num_features=8)))
    # No network, for real (no_network): the default weights' download fails at once.
    proc = cli("train", "--phase", "srgan", "--init-from", str(tmp_path / "srresnet"), "--data", str(train_dir),
               "--val-data", str(val_dir), "--set", "model.num_blocks=1", "--set", "model.num_features=8", *extra,
               cwd=tmp_path, env={"TORCH_HOME": str(tmp_path / "empty-torch-home")})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0], proc.stderr
    assert "--vgg-weights PATH|URI" in lines[0]  # says how to supply them
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    "args,match",
    [
        (["--phase", "srgan"], "--phase srgan needs --init-from"),
        (["--phase", "srgan", "--init-from", "/no/such/checkpoint", "--vgg-weights", "random"], "checkpoint /no/such/checkpoint does not exist"),
        (["--phase", "srgan", "--init-from", "{ckpt}", "--vgg-weights", "random"], "is a different generator; set --set model.num_blocks=1"),
    ],
)
def test_bad_init_from_is_one_line(cli, local_data, tmp_path, args, match):
    train_dir, val_dir = local_data
    save_generator(tmp_path / "ckpt", build_generator(GeneratorConfig(num_blocks=1, num_features=8)))
    args = [a.replace("{ckpt}", str(tmp_path / "ckpt")) for a in args]
    proc = cli("train", *args, "--data", str(train_dir), "--val-data", str(val_dir), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], proc.stderr
