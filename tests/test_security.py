"""Security properties, tested on the real loaders and the session's real runs: nothing untrusted is
unpickled (every load is weights-only or safetensors), and no credential reaches a log or MLflow."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from conftest import RAY_SESSION, SESSION_AWS_KEYS
from srgan.core.checkpoint import WEIGHTS_FILE, load_generator, save_generator
from srgan.core.models import GeneratorConfig, build_generator
from srgan.core.training_state import TRAINING_STATE_FILE, Nets, load_training_checkpoint


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: the proof that a loader executed the file's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _hostile_file(path: Path, marker: Path) -> None:
    """A file that torch.load without weights_only would execute: a pickle that calls ``open``."""
    torch.save({"step": 1, "net_g": _Payload(marker)}, path)


def test_a_pickle_bearing_training_state_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "checkpoint"
    run.mkdir()
    _hostile_file(run / TRAINING_STATE_FILE, marker)
    # Sanity: the file really carries code (a plain torch.load would call open()), read from its pickle
    # opcodes without running anything.
    assert "io.open" in torch.serialization.get_unsafe_globals_in_checkpoint(run / TRAINING_STATE_FILE)

    net_g = build_generator(GeneratorConfig(num_blocks=1, num_features=8))
    nets = Nets(net_g=net_g, opt_g=torch.optim.Adam(net_g.parameters()))
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_training_checkpoint(run, nets=nets, map_location="cpu")
    assert not marker.exists()


def test_a_pickle_posing_as_generator_weights_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    save_generator(tmp_path / "gen", build_generator(GeneratorConfig(num_blocks=1, num_features=8)))
    _hostile_file(tmp_path / "gen" / WEIGHTS_FILE, marker)  # a pickle where the safetensors file belongs
    with pytest.raises(Exception) as info:
        load_generator(tmp_path / "gen")
    assert not marker.exists(), f"the pickle ran ({info.value!r})"


def _files(root: Path):
    for path in root.rglob("*"):
        if path.is_file() and path.stat().st_size < 64 * 2**20:
            yield path


def test_no_credential_reaches_a_log_or_mlflow(srresnet_champion):
    """The session's S3 keys are fake but distinctive (tests/conftest.py). The champion's job ran
    with them in every node's environment, as instance roles or node env provide them: none appears in
    its console, in any Ray log of the session, in the MLflow server's log, or in any param or tag."""
    from mlflow.tracking import MlflowClient

    secrets = [k for k in SESSION_AWS_KEYS if k]
    assert os.environ["AWS_ACCESS_KEY_ID"] == SESSION_AWS_KEYS[0]  # the run really had them
    champion = srresnet_champion
    texts = {"job console": champion.proc.stdout + champion.proc.stderr,
             "mlflow server log": champion.server["log"].read_text(errors="replace")}
    for path in _files(RAY_SESSION["temp_dir"] / "session_latest" / "logs"):
        texts[str(path)] = path.read_text(errors="replace")
    client = MlflowClient(champion.db, registry_uri=champion.db)
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            texts[f"mlflow run {run.info.run_id}"] = repr(run.data.params) + repr(run.data.tags)
    assert len(texts) > 5
    leaks = [name for name, text in texts.items() if any(s in text for s in secrets)]
    assert not leaks, f"a credential appears in: {leaks}"
