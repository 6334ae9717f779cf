"""The README's usage snippet runs, and CI calls the README's test command verbatim."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks(lang, name="README.md"):
    return re.findall(rf"```{lang}\n(.*?)```", (ROOT / name).read_text(), flags=re.S)


def test_readme_python_snippet_runs():
    snippet = _blocks("python")[0]
    exec(compile(snippet, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    test_cmd = [b.strip() for b in _blocks("bash") if "pytest" in b]
    assert test_cmd, "README must give a test command"
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd[0] in ci
    # and then the benchmark scripts' tests, which the default run leaves out (pyproject.toml's addopts)
    assert ci.rstrip().splitlines()[-1] == "python -m pytest -m benchmarks"
    assert "-m 'not benchmarks'" in (ROOT / "pyproject.toml").read_text()


def _readme_commands(files=("README.md",)):
    """Every `attnorm ...` command of the given Markdown files (code blocks and inline code) as an argv list."""
    import shlex
    lines = []
    for name in files:
        lines += [ln for block in _blocks("bash", name) for ln in block.splitlines()]
        lines += re.findall(r"`([^`\n]*(?:attnorm |-m attnorm)[^`\n]*)`", (ROOT / name).read_text())
    out = []
    for line in lines:
        for part in line.split("&&"):
            tokens = shlex.split(part, comments=True)
            while tokens and "=" in tokens[0] and not tokens[0].startswith("-"):  # VAR=value prefixes
                tokens = tokens[1:]
            if tokens[:1] == ["attnorm"]:
                out.append(tokens[1:])
            elif "-m" in tokens and tokens[tokens.index("-m") + 1] == "attnorm.cli":
                out.append(tokens[tokens.index("-m") + 2:])
            elif "-m" in tokens and tokens[tokens.index("-m") + 1] == "attnorm.metrics.classifier":
                out.append(["train-classifier", *tokens[tokens.index("-m") + 2:]])
    return out


def test_every_readme_command_parses():
    """Each command and option the README shows exists (the commands run in the other tests)."""
    from attnorm import cli
    commands = _readme_commands()
    assert len(commands) >= 25
    seen = _check_commands_parse(cli, commands)
    assert {"train-gan", "sample", "interpolate", "layouts", "inpaint", "train-inpaint", "export-inpaint", "masks",
            "evaluate", "bench", "demo", "train-classifier"} <= seen


def test_every_command_in_the_docs_parses():
    """The Markdown files under docs/ (the experiment records the README links to) are held to the same rule."""
    from attnorm import cli
    docs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))
    assert "docs/gan_experiments.md" in docs
    commands = _readme_commands(docs)
    assert len(commands) >= 10
    _check_commands_parse(cli, commands)
    # and every link from the README to a file of the repository points at one that exists
    for target in re.findall(r"\]\(([^)#:]+)\)", (ROOT / "README.md").read_text()):
        assert (ROOT / target).exists(), target


def _check_commands_parse(cli, commands) -> set:
    """Each command exists and its options parse (argparse exits on an unknown option); returns the
    commands that were parsed with their arguments (not mere mentions of a name)."""
    seen = set()
    for argv in commands:
        if not argv or argv[0].startswith("<"):  # `python -m attnorm.cli`, `attnorm <command>`: placeholders
            continue
        assert argv[0] in cli.COMMANDS, argv  # no hidden alias in the README
        if len(argv) == 1 and argv[0] != "demo":
            continue  # a mention of the command's name
        parser, _run = cli.command_parser(argv[0])
        assert parser.parse_args([a for a in argv[1:] if a != "..."]) is not None
        seen.add(argv[0])
    return seen
