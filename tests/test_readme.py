"""The README's usage snippet runs, and CI calls the README's test command verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_python_snippet_runs():
    snippet = _blocks("python")[0]
    exec(compile(snippet, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    test_cmd = [b.strip() for b in _blocks("bash") if "pytest" in b]
    assert test_cmd, "README must give a test command"
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd[0] in ci
