"""pipelines/evaluate.py end to end, as a user runs it: its ``main`` in process through the ``cli``
fixture (tests/test_cli.py runs a real subprocess for the exit-code contract)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from srgan.core.checkpoint import save_generator
from srgan.core.models import SRResNet


def _json_lines(stdout: str) -> dict:
    return {row["dataset"]: row for row in map(json.loads, stdout.strip().splitlines())}


@pytest.mark.parametrize("extra", [[], ["--degrade"]], ids=["shipped-lr", "degrade"])
def test_bicubic_baseline_matches_the_literature(cli, datasets_dir, extra):
    """28.43 dB on Set5 and 26.09 dB on Set14; with --degrade too, which proves degrade() is MATLAB's."""
    data = f"{datasets_dir / 'Set5'},{datasets_dir / 'Set14'}"
    proc = cli("evaluate", "--model", "bicubic", "--data", data, "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    rows = _json_lines(proc.stdout)
    assert set(rows["Set5"]) == {"dataset", "model", "psnr_y", "ssim_y", "images"}
    assert rows["Set5"]["psnr_y"] == pytest.approx(28.43, abs=0.02)
    assert rows["Set14"]["psnr_y"] == pytest.approx(26.09, abs=0.02)
    assert rows["Set5"]["images"] == 5 and rows["Set14"]["images"] == 14
    assert rows["Set5"]["model"] == "bicubic"
    assert 0.80 < rows["Set5"]["ssim_y"] < 0.82 and 0.69 < rows["Set14"]["ssim_y"] < 0.72


def test_table_and_verbose_output(cli, datasets_dir):
    proc = cli("evaluate", "--model", "bicubic", "--data", str(datasets_dir / "Set5"), "--verbose")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["dataset", "model", "images"]
    assert lines[1].split()[:4] == ["Set5", "bicubic", "5", "28.43"]
    assert sum(name in proc.stdout for name in ("baby", "bird", "butterfly", "head", "woman")) == 5


def test_checkpoint_model(cli, datasets_dir, tmp_path):
    torch.manual_seed(0)
    ckpt = save_generator(tmp_path / "ck", SRResNet(num_blocks=1, num_features=8, bicubic_skip=True))
    proc = cli("evaluate", "--model", str(ckpt), "--data", str(datasets_dir / "Set5"), "--json")
    assert proc.returncode == 0, proc.stderr
    row = _json_lines(proc.stdout)["Set5"]
    assert row["model"] == str(ckpt) and row["images"] == 5
    # An untrained residual on top of the bicubic skip: a real number, below the bicubic baseline + 1 dB.
    assert 10 < row["psnr_y"] < 29.5


def test_onnxruntime_runtime_scores_like_torch(cli, datasets_dir, tmp_path):
    """--runtime onnxruntime exports the checkpoint on the fly and scores Set5 as torch does (the
    export's parity bound is 1/255 per pixel: far below a 0.05 dB change of the mean PSNR)."""
    torch.manual_seed(1)
    ckpt = save_generator(tmp_path / "ck", SRResNet(num_blocks=1, num_features=8, bicubic_skip=True))
    rows = {}
    for runtime in ("torch", "onnxruntime"):
        proc = cli("evaluate", "--model", str(ckpt), "--data", str(datasets_dir / "Set5"), "--json", "--runtime", runtime, "--device", "cpu")
        assert proc.returncode == 0, proc.stderr
        rows[runtime] = _json_lines(proc.stdout)["Set5"]
    assert rows["torch"]["images"] == rows["onnxruntime"]["images"] == 5
    assert abs(rows["torch"]["psnr_y"] - rows["onnxruntime"]["psnr_y"]) < 0.05
    assert abs(rows["torch"]["ssim_y"] - rows["onnxruntime"]["ssim_y"]) < 1e-3


def _one_line_error(proc) -> str:
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_bad_inputs_get_one_line_errors(cli, datasets_dir, tmp_path):
    assert "does not exist" in _one_line_error(cli("evaluate", "--model", "bicubic", "--data", str(tmp_path / "nope")))
    assert "no HR/ folder" in _one_line_error(cli("evaluate", "--model", "bicubic", "--data", str(tmp_path)))
    # HR only: the error suggests --degrade, and --degrade then works.
    shutil.copytree(datasets_dir / "Set5" / "HR", tmp_path / "hr-only" / "HR")
    msg = _one_line_error(cli("evaluate", "--model", "bicubic", "--data", str(tmp_path / "hr-only")))
    assert "--degrade" in msg
    ok = cli("evaluate", "--model", "bicubic", "--data", str(tmp_path / "hr-only"), "--degrade", "--json")
    assert ok.returncode == 0 and _json_lines(ok.stdout)["hr-only"]["psnr_y"] == pytest.approx(28.43, abs=0.02)
    assert "not a generator checkpoint" in _one_line_error(cli("evaluate", "--model", str(tmp_path), "--data", str(datasets_dir / "Set5")))
    torch.manual_seed(0)
    x2 = save_generator(tmp_path / "x2", SRResNet(scale=2, num_blocks=1, num_features=8))
    assert "is x2 but --scale is 4" in _one_line_error(cli("evaluate", "--model", str(x2), "--data", str(datasets_dir / "Set5")))
    usage = cli("evaluate", "--data", str(datasets_dir / "Set5"))
    assert usage.returncode == 2 and "--model" in usage.stderr


def test_metrics_choose_what_is_reported(cli, datasets_dir):
    proc = cli("evaluate", "--model", "bicubic", "--data", str(datasets_dir / "Set5"), "--metrics", "psnr", "--json")
    assert proc.returncode == 0, proc.stderr
    row = _json_lines(proc.stdout)["Set5"]
    assert list(row) == ["dataset", "model", "psnr_y", "images"] and row["psnr_y"] == pytest.approx(28.43, abs=0.02)
    assert proc.stderr == ""  # no LPIPS asked for: no note
    assert "psnr,ssim,lpips, got psnr,fid" in _one_line_error(cli("evaluate", "--model", "bicubic", "--data", str(datasets_dir / "Set5"), "--metrics", "psnr,fid"))
    assert "--lpips-net must be one of alex, vgg" in _one_line_error(cli("evaluate", "--model", "bicubic", "--data", str(datasets_dir / "Set5"),
                                                                         "--metrics", "lpips", "--lpips-net", "squeeze"))
