"""The command-line layer: every command in one package, argparse only there, the library never
importing it; the top-level help, the hidden alias and the ``python -m`` entry points."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from attnorm import cli

PACKAGE = Path(cli.__file__).resolve().parents[1]  # attnorm/


def _is_main_guard(node) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _imports(tree):
    """(module name, line) of every import outside ``if __name__ == "__main__":`` blocks."""
    out = []

    def visit(node):
        if _is_main_guard(node):
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            out.extend([(base, node.lineno)] + [(f"{base}.{a.name}", node.lineno) for a in node.names])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def test_argparse_only_in_the_cli_package_and_library_never_imports_it():
    library = [p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts]
    assert len(library) > 20
    for path in library:
        rel = path.relative_to(PACKAGE.parent)
        source = path.read_text()
        for name, line in _imports(ast.parse(source)):
            assert name.split(".")[0] != "argparse", f"{rel}:{line} imports argparse"
            assert not name.startswith("attnorm.cli"), f"{rel}:{line} imports the command package"
        assert "ArgumentParser" not in source, rel


def test_help_lists_the_commands_but_not_the_hidden_alias(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"\n    {name}" in out
    assert "evaluate-inpaint" not in out
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


def test_every_command_has_arguments_and_help(capsys):
    for name in cli.COMMANDS:
        parser, run = cli.command_parser(name)
        assert run.__doc__ and parser.prog == f"attnorm {name}"
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["--help"])
        assert exit_.value.code == 0
        assert f"usage: attnorm {name}" in capsys.readouterr().out


def test_python_m_entry_points():
    for module, usage in (("attnorm.cli", "usage: attnorm [-h] <command>"),
                          ("attnorm.metrics.classifier", "usage: attnorm train-classifier")):
        res = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and res.stdout.startswith(usage), (module, res.stderr)
