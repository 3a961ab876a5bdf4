"""The benchmark suite: each row runs this project and its baseline (or this machine's limit) side by
side, in one process and on the same bytes, and prints the ratio, so it holds on a noisy machine.

    python benchmarks/run.py [--quick] [--gpu] [--only NAME[,NAME...]] [--json PATH] [--repeats N]

Rows live in benchmarks/rows/<group>.py (each module's ``ROWS``); ``--only`` picks some by name and
``--list`` prints them all with what they compare. Every timing is the median of ``--repeats`` timings
of at least 1 s each, the two sides alternating; ``--quick`` uses smaller inputs, fewer repeats and
shorter timings, and each row says what it ran. BENCHMARKS.md records the full run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Row, Settings  # noqa: E402


def all_rows(gpu_only: bool = False) -> tuple[dict, dict]:
    """(every row, aliases), in file-name order of benchmarks/rows/*.py, then each module's own order.

    ``gpu_only``: benchmarks/rows/gpu.py alone. It runs on a bare GPU machine with torch only, where
    the other modules' imports (Ray, pyarrow) do not exist. A module's ``ALIASES`` maps the name of a
    row it prints to the ROWS entry that produces it (one set-up can produce several rows)."""
    rows: dict = {}
    aliases: dict = {}
    for path in sorted((Path(__file__).parent / "rows").glob("gpu.py" if gpu_only else "[!_]*.py")):
        module = importlib.import_module(f"benchmarks.rows.{path.stem}")
        for name, fn in module.ROWS.items():
            if name in rows:
                raise SystemExit(f"error: row {name!r} is defined twice (benchmarks/rows/{path.name})")
            rows[name] = fn
        aliases.update(getattr(module, "ALIASES", {}))
    return rows, aliases


def _ratio(x: float) -> str:
    return f"{x:.2f}" if x >= 0.01 or x == 0 else f"{x:.1e}"  # a payload ratio of 1e-5 is not "0.00"


def print_table(rows: list[Row]) -> None:
    header = ("name", "this project", "baseline", "ratio", "target", "pass/fail")
    table = [header] + [(r.name, r.project, r.baseline, _ratio(r.ratio), r.target, "pass" if r.passed else "FAIL") for r in rows]
    widths = [max(len(t[c]) for t in table) for c in range(len(header))]
    for t in table:
        print(" | ".join(cell.ljust(widths[c]) for c, cell in enumerate(t)))
    for r in rows:
        print(f"  {r.name}: {r.ran}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small inputs and few repeats (under 10 minutes on 2 cores)")
    p.add_argument("--gpu", action="store_true", help="the GPU rows only (falls back to CPU without CUDA)")
    p.add_argument("--only", default="", help="comma-separated rows to run (see --list)")
    p.add_argument("--list", action="store_true", help="print the rows and exit")
    p.add_argument("--json", default=None, help="also write the rows as JSON to this path")
    p.add_argument("--repeats", type=int, default=0, help="timed repeats per side (default 3 quick, 7 full)")
    args = p.parse_args()
    rows, aliases = all_rows(gpu_only=args.gpu)
    if args.list:
        print("\n".join(list(rows) + [f"{alias} (with {name})" for alias, name in aliases.items()]))
        return 0
    asked = [aliases.get(n, n) for n in args.only.split(",") if n]
    only = list(dict.fromkeys(asked)) or [n for n in rows if n.startswith("gpu-") == args.gpu]
    unknown = sorted(set(only) - set(rows))
    if unknown:
        print(f"error: unknown row {unknown[0]!r}; `python benchmarks/run.py --list` prints the rows", file=sys.stderr)
        return 2
    s = Settings(quick=args.quick, repeats=args.repeats or (3 if args.quick else 7),
                 min_seconds=0.25 if args.quick else 1.0, gpu=args.gpu)
    import torch

    print(f"[bench] {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"{'quick' if s.quick else 'full'}, {s.repeats} repeats", flush=True)
    done: list[Row] = []
    t_all = time.perf_counter()
    for name in only:
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        load_before = os.getloadavg()[0]
        try:
            out = rows[name](s)
        except Exception as exc:  # noqa: BLE001 - one broken row is a FAIL line, the others still run
            traceback.print_exc()
            out = Row(name, "error", "", float("nan"), "runs", False, f"{type(exc).__name__}: {str(exc)[:300]}")
        out = out if isinstance(out, list) else [out]
        load = f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        for r in out:  # a shared machine's load is part of what a figure means
            r.ran = f"{r.ran}; {load}"
        done.extend(out)
        print(f"[bench] {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    print_table(done)
    print(f"[bench] {len(done)} rows in {time.perf_counter() - t_all:.0f} s; "
          f"{sum(not r.passed for r in done)} below target")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in done], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
