"""Run ``attnorm`` commands from a test: ``cli_error(capsys, argv)`` for the user-error contract."""

from attnorm import cli


def cli_error(capsys, argv: list[str]) -> str:
    """Run ``attnorm ARGV`` expecting a user error: exit code 2, nothing on stdout after what the
    command printed before, exactly one line on stderr (no traceback). Returns that line."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"attnorm {argv[0]}") and ": error: " in lines[0], lines[0]
    return lines[0]
