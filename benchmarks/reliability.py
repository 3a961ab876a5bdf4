"""The reliability harness: the real services under load, faults and hostile input, in numbers.

    python benchmarks/reliability.py [--quick] [--only NAME[,NAME...]] [--list] [--json PATH]

Scenarios live in benchmarks/faults/{serve,data,train}.py (each module's ``SCENARIOS``). Everything
runs on 127.0.0.1: a moto S3 server and a local Ray cluster (token auth, dashboard on the loopback)
shared by the scenarios, which start their own clusters or servers where they need them (two nodes,
a Serve app, an MLflow server). Every loop is bounded in requests and time. ``--quick`` is the CI
subset (tests/test_reliability.py asserts its checks, never its times); only a full run writes its
figures into BENCHMARKS.md's reliability section.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.faults import REPO, Outcome, Run, Scenario  # noqa: E402
from benchmarks.faults.services import harness_auth, moto_s3, ray_head  # noqa: E402

MODULES = ("serve", "data", "train")
SECTION = "## Reliability: `benchmarks/reliability.py`"


def all_scenarios() -> dict[str, Scenario]:
    out: dict[str, Scenario] = {}
    for stem in MODULES:
        try:
            module = importlib.import_module(f"benchmarks.faults.{stem}")
        except ModuleNotFoundError as exc:
            if exc.name != f"benchmarks.faults.{stem}":
                raise
            continue
        for name, scenario in module.SCENARIOS.items():
            if name in out:
                raise SystemExit(f"error: scenario {name!r} is defined twice")
            out[name] = scenario
    return out


def print_table(outcomes: list[Outcome]) -> str:
    lines = []
    for o in outcomes:
        lines.append(f"### {o.name}: {'pass' if o.passed else 'FAIL'} ({o.seconds:.0f} s)")
        lines.append(f"ran: {o.ran}")
        lines.append("")
        lines.append("| figure | value |")
        lines.append("|---|---|")
        lines += [f"| {k} | {v} |" for k, v in o.figures.items()]
        lines.append("")
        lines += [f"- [{'x' if ok else ' '}] {what}" for what, ok in o.checks.items()]
        lines.append("")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_benchmarks_md(text: str, command: str) -> None:
    """Replace (or append) BENCHMARKS.md's reliability section with this full run's figures."""
    path = REPO / "BENCHMARKS.md"
    doc = path.read_text()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    section = f"{SECTION}\n\nCommand: `{command}`; {time.strftime('%Y-%m-%d')}, {machine}.\n\n{text}\n"
    if SECTION in doc:
        head, rest = doc.split(SECTION, 1)
        tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
        doc = head + section + tail.lstrip("\n")
    else:
        doc = doc.rstrip("\n") + "\n\n" + section
    path.write_text(doc)


def _write_json(path: str, outcomes: list[Outcome]) -> None:
    Path(path).write_text(json.dumps([{**asdict(o), "passed": o.passed} for o in outcomes], indent=2, default=str))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the CI subset at small sizes (under 3 minutes on 2 cores)")
    p.add_argument("--only", default="", help="comma-separated scenarios (see --list)")
    p.add_argument("--list", action="store_true", help="print the scenarios and exit")
    p.add_argument("--json", default=None, help="also write the outcomes as JSON to this path")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs) after the run (it is kept anyway when a scenario fails)")
    args = p.parse_args()
    scenarios = all_scenarios()
    if args.list:
        for name, s in scenarios.items():
            print(f"{name}{' (quick)' if s.quick else ''}: {s.what}")
        return 0
    only = [n for n in args.only.split(",") if n] or [n for n, s in scenarios.items() if s.quick or not args.quick]
    unknown = sorted(set(only) - set(scenarios))
    if unknown:
        print(f"error: unknown scenario {unknown[0]!r}; `python benchmarks/reliability.py --list` prints them", file=sys.stderr)
        return 2
    harness_auth()
    workdir = Path(tempfile.mkdtemp(prefix="srgan-rel-"))
    print(f"[reliability] {'quick' if args.quick else 'full'}: {', '.join(only)}; work in {workdir}", flush=True)
    outcomes: list[Outcome] = []
    t_all = time.monotonic()
    try:
        with moto_s3(), ray_head(Path("/tmp") / f"ray-rel-{os.getpid()}") as head:
            run = Run(quick=args.quick, workdir=workdir, ray_address=head["address"])
            for name in only:  # background work some scenarios begin now (see Scenario.start)
                if scenarios[name].start is not None:
                    scenarios[name].start(run)
            for name in only:
                print(f"[reliability] {name} ...", flush=True)
                t0 = time.monotonic()
                try:
                    outcome = scenarios[name].run(run)
                except Exception as exc:  # noqa: BLE001 - a broken scenario is a FAIL, the others still run
                    traceback.print_exc()
                    outcome = Outcome(name, checks={f"runs ({type(exc).__name__}: {str(exc)[:200]})": False})
                outcome.name, outcome.seconds = name, time.monotonic() - t0
                outcomes.append(outcome)
                if args.json:  # after every scenario: what ran survives a crash of the ones after it
                    _write_json(args.json, outcomes)
                print(f"[reliability] {name}: {'pass' if outcome.passed else 'FAIL'} in {outcome.seconds:.0f} s", flush=True)
    finally:
        # A failed scenario's consoles and server logs are what explain it: kept, with the rest.
        failed_any = len(outcomes) < len(only) or any(not o.passed for o in outcomes)
        if failed_any and not args.keep:
            print(f"[reliability] a scenario failed: its logs stay in {workdir} (remove it when done)", flush=True)
        elif not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text = print_table(outcomes)
    failed = [o.name for o in outcomes if not o.passed]
    print(f"[reliability] {len(outcomes)} scenarios in {time.monotonic() - t_all:.0f} s; "
          f"{len(failed)} failed{': ' + ', '.join(failed) if failed else ''}", flush=True)
    if args.json:
        _write_json(args.json, outcomes)
    if not args.quick and not args.only:
        write_benchmarks_md(text, "python benchmarks/reliability.py")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
