"""The package's layers hold: import-linter's contracts (pyproject.toml) pass on the tree, and they
break on a tree that violates them, so the guard can fail. The core's third-party imports are also
checked against an allow-list: what a bare GPU machine has."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CORE_ALLOWED = {"torch", "torchvision", "numpy", "PIL", "safetensors", "yaml"}


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    # The tree under test comes first on the path, so a copied package shadows the installed one.
    return subprocess.run([str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(cwd), "PATH": str(exe.parent)})


def test_import_contracts_are_kept(repo_root):
    proc = _lint_imports(repo_root)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("core/ranges.py", "import ray", "The core is plain PyTorch"),
    ("io/storage.py", "from srgan.distributed import cluster", "Layers"),
    ("tracking/runs.py", "import srgan.app.cli", "Nothing in the package imports the CLI plumbing"),
    ("core/models.py", "import srgan.core.checkpoint", "No import cycles"),  # checkpoint imports models
])
def test_a_violation_breaks_its_contract(repo_root, tmp_path, module, line, contract):
    shutil.copytree(repo_root / "srgan", tmp_path / "srgan", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo_root / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "srgan" / module
    target.write_text(target.read_text() + f"\n{line}  # injected by the test\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode != 0, proc.stdout[-3000:]
    # lint-imports wraps long contract names over lines: read the summary with whitespace joined, and
    # require this contract's own status to be BROKEN (not merely its name somewhere in the output).
    summary = " ".join(proc.stdout.split("Contracts:")[0].split())
    assert re.search(re.escape(contract) + r"(?:(?!KEPT|BROKEN).)*BROKEN", summary), proc.stdout[-3000:]


# Parsed in a fresh child process: CPython 3.11's AST constructor keeps its recursion-depth counter in
# interpreter-wide state, so in this long-lived test process (threads left by Ray, torch and earlier
# tests) a parse can fail with "AST constructor recursion depth mismatch" (CI saw it once; CPython
# gh-106905). A child with one thread and nothing parsed before has no such state.
_LIST_IMPORTS = """
import ast, json, sys
out = {}
for path in sys.argv[1:]:
    found = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
    out[path] = found
print(json.dumps(out))
"""


def _absolute_imports(paths: list[Path]) -> dict[str, list[str]]:
    """Every absolute import's module name in each file, function-local ones included."""
    proc = subprocess.run([sys.executable, "-c", _LIST_IMPORTS, *map(str, paths)],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


def test_core_imports_only_what_a_bare_gpu_machine_has(repo_root):
    """Every import in srgan/core (function-local ones included) is the standard library, the project
    itself (srgan.core, srgan.errors), or one of the allowed packages."""
    stdlib = set(sys.stdlib_module_names)
    paths = sorted((repo_root / "srgan" / "core").glob("*.py"))
    imports = _absolute_imports(paths)
    assert len(imports) == len(paths) > 5
    for path in paths:
        modules = imports[str(path)]
        extra = {m.split(".")[0] for m in modules} - stdlib - CORE_ALLOWED - {"srgan", "__future__"}
        assert not extra, f"{path.name} imports {sorted(extra)}"
        for module in modules:
            if module.startswith("srgan."):
                assert module.startswith(("srgan.core", "srgan.errors")), f"{path.name} imports {module}"


def test_ray_datas_decode_side_loads_no_torch(repo_root):
    """Every Ray Data process of ingest (read and decode tasks, the skip counter, the split coordinator
    that unpickles the decode function) imports srgan.distributed.ingest, and the decode tasks decode
    8-bit images with it: without torch, each starts
    about 2.6 s of CPU and 470 MB lighter (docs/design.md). torch is imported inside the functions that need it (the
    16-bit PNG decoder, the device path, the training worker's batches)."""
    # Imported, then used: 8-bit PNG, JPEG (one EXIF-rotated) and RGBA through the training decode.
    code = (
        "import io, sys, numpy as np\n"
        "from PIL import Image\n"
        "import srgan.distributed.ingest, srgan.io.datasets, srgan.core.images\n"
        "from srgan.core.images import ImageLimits\n"
        "from srgan.io.datasets import decode_and_crop\n"
        "def enc(mode, fmt, **kw):\n"
        "    buf = io.BytesIO(); Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 80, len(mode)), dtype=np.uint8).squeeze(), mode).save(buf, fmt, **kw); return buf.getvalue()\n"
        "exif = Image.Exif(); exif[0x0112] = 6\n"
        "blobs = [enc('RGB', 'PNG'), enc('RGB', 'JPEG'), enc('RGB', 'JPEG', exif=exif.tobytes()), enc('RGBA', 'PNG')]\n"
        "out, skips = decode_and_crop({'bytes': np.array(blobs, dtype=object), 'path': np.array(['a', 'b', 'c', 'd'])},\n"
        "                             crop_size=32, crops_per_image=2, rng=np.random.default_rng(0), limits=ImageLimits())\n"
        "assert out['gt'].shape == (8, 3, 32, 32) and not skips, (out['gt'].shape, skips)\n"
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout
