"""Helpers of the bad-input and fault probe suite (tests/test_probe_*.py, issue 12).

Every probe drives a real command (``attnorm.cli.main`` in this process, or ``python -m
attnorm.cli`` in a child process where the fault needs one: kill -9, Ctrl-C) with bad input
or a fault, and checks the contract: the exit status, exactly one ``attnorm <command>: error:``
line on stderr naming the problem and the fix, no traceback, and no file lost or corrupted.

Each probe test is named ``test_<id>_...`` with the case id of issue 12: ``x1``..``x8`` (major),
``m1``..``m19`` (minor) and ``p01``..``p20`` (cases that already behaved, kept so).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

from attnorm import cli

#: the 47 case ids of issue 12
CASE_IDS = ([f"x{i}" for i in range(1, 9)] + [f"m{i}" for i in range(1, 20)]
            + [f"p{i:02d}" for i in range(1, 21)])


def run_ok(capsys, argv: list[str]) -> str:
    """Run ``attnorm ARGV`` expecting success; returns stdout. No traceback, nothing alarming on stderr."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 0, (rc, err)
    assert "Traceback" not in err and "error:" not in err, err
    return out


def probe(capsys, argv: list[str], *fragments: str, rc: int = 2) -> str:
    """Run ``attnorm ARGV`` expecting a user error: exit status ``rc``, exactly one stderr line
    ``attnorm <command>: error: ...`` containing every fragment (case-sensitive), no traceback.
    Returns the line."""
    argv = [str(a) for a in argv]
    capsys.readouterr()
    got = cli.main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert got == rc, (got, err)
    assert "Traceback" not in err and "Traceback" not in out, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"attnorm {argv[0]}") and ": error: " in lines[0], lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert "weights_only=False" not in lines[0]
    return lines[0]


def digest(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(folder: str | os.PathLike) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (hidden files included)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """A full disk, in this process: writes past ``nbytes`` of any file fail with EFBIG
    (``RLIMIT_FSIZE`` soft limit, SIGXFSZ ignored); both are restored after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


def child(argv: list[str], **kw) -> subprocess.Popen:
    """``python -m attnorm.cli ARGV`` in a child process (one thread), stdout/stderr piped."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "attnorm.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def dead_pid() -> int:
    """A process id that no process has now (for planting a killed writer's temporary file)."""
    for pid in range(4_000_000, 3_000_000, -7919):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise RuntimeError("no free pid found")
