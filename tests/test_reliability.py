"""The reliability harness's quick run (``benchmarks/reliability.py --quick``), as CI runs it: a pytest
session of its own (marker ``reliability``), with its own time budget, after the functional suite.

The harness starts its own moto S3 server and local Ray cluster (the scenarios start a Serve app, an
MLflow server, training runs), so this module uses none of the session fixtures. Each scenario is
one test: its checks (zero 5xx, every hostile request a 4xx, full step counts, identical outputs under
injected faults) must all hold. Times are printed, never asserted: they are figures of the full run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[1]
# What --quick must cover (the reliability issue): hostile load, one worker kill, S3 faults, a
# tracking outage; and the poisoned data set.
QUICK = ("serve-hostile", "data-poisoning", "s3-faults", "train-worker-kill", "train-tracking-outage")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("reliability") / "quick.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "reliability.py"), "--quick", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    print(proc.stdout[-6000:])  # the table: pytest -s shows it, CI keeps it on failure
    assert out.exists(), f"the harness wrote no results (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return {o["name"]: o for o in json.loads(out.read_text())}


def test_quick_covers_what_ci_must_see(quick_run):
    assert set(QUICK) <= set(quick_run), f"missing from --quick: {sorted(set(QUICK) - set(quick_run))}"


@pytest.mark.parametrize("name", QUICK)
def test_scenario_checks_hold(quick_run, name):
    outcome = quick_run.get(name)
    if outcome is None:
        pytest.fail(f"{name} did not run")
    assert outcome["checks"], f"{name} checked nothing"
    failed = [what for what, ok in outcome["checks"].items() if not ok]
    assert not failed, f"{name}: {failed}\nfigures: {outcome['figures']}\nran: {outcome['ran']}"
