"""The project's own promises: README commands, CI entry point, pinned dependencies."""

from __future__ import annotations

import re
import tomllib


def _fenced_after(readme: str, marker: str) -> str:
    after = readme.split(marker, 1)[1]
    return re.search(r"```bash\n(.*?)\n```", after, re.S).group(1).strip()


def test_readme_opens_with_the_two_commands(repo_root):
    readme = (repo_root / "README.md").read_text()
    main_cmd = _fenced_after(readme, "<!-- main-command -->")
    test_cmd = _fenced_after(readme, "<!-- test-command -->")
    # The first section is "## Two commands" and holds both, in that order, before any other section.
    sections = [m.start() for m in re.finditer(r"^## ", readme, re.M)]
    assert sections and readme[sections[0]:].startswith("## Two commands\n"), "the README's first section must be the two commands"
    next_section = sections[1] if len(sections) > 1 else len(readme)
    assert sections[0] < readme.index("<!-- main-command -->") < readme.index("<!-- test-command -->") < next_section
    assert "pip install -e ." in main_cmd and "pipelines/" in main_cmd
    assert 'pip install -e ".[dev]"' in test_cmd and "pytest" in test_cmd


def test_ci_runs_exactly_the_readme_test_command(repo_root):
    readme = (repo_root / "README.md").read_text()
    script_lines = [line.strip() for line in (repo_root / ".ci" / "run").read_text().splitlines()]
    assert _fenced_after(readme, "<!-- test-command -->") in script_lines


def test_dependencies_are_pinned(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    deps = project["dependencies"] + [d for group in extras.values() for d in group if not d.startswith(f"{project['name']}[")]
    # dev pulls in the other extras by name (pip resolves the project's own extras)
    assert f"{project['name']}[export,lpips]" in extras["dev"]
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps and "ray[train,data,serve]==2.60.0" in deps
    for dep in deps:
        assert "==" in dep, f"{dep} is not pinned"
    names = {re.split(r"[\[=<>]", d)[0].lower() for d in deps}
    assert {"mlflow", "pyarrow", "pillow", "boto3", "numpy", "pytest", "moto", "httpx", "scikit-image", "pyyaml", "onnxruntime", "lpips", "playwright"} <= names
