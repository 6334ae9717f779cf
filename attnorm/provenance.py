"""The code state recorded next to every measured figure (benchmarks, evaluations)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

_SOURCE = Path(__file__).resolve().parent


def git_commit() -> str:
    """Short hash of the commit attnorm's source tree is at, with " (dirty)" when the tree has
    changes. ``ATTNORM_COMMIT`` overrides it (a copy of the tree without ``.git``, e.g. on a lent
    GPU machine); "unknown" where neither tells."""
    if os.environ.get("ATTNORM_COMMIT"):
        return os.environ["ATTNORM_COMMIT"]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=_SOURCE, capture_output=True,
                             text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=_SOURCE, capture_output=True,
                               text=True).stdout.strip()
        return rev.stdout.strip() + (" (dirty)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else ``platform.processor()``, else "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
