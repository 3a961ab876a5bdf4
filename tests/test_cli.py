"""The exit-code contract of every CLI, in a real subprocess (the other flag tests run ``main`` in
process through the ``cli`` fixture): a user's mistake prints one ``error:`` line on stderr, nothing on
stdout, and exits 2. ``--help`` of each CLI exits 0 (in process)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(repo_root, tmp_path, script, *args):
    return subprocess.run([sys.executable, str(repo_root / "pipelines" / script), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)


def test_a_user_error_is_one_line_and_exit_2(repo_root, tmp_path):
    proc = _run(repo_root, tmp_path, "train.py", "--steps", "-5")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: train.steps must be a positive integer, got -5"], proc.stderr
    assert not any(tmp_path.iterdir())  # nothing was made: no runs/, no mlflow.db, no demo data


@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "prepare.py", "serve.py", "upscale.py"])
def test_help_exits_0(cli, tmp_path, script):
    proc = cli(script.removesuffix(".py"), "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr
