"""What the benchmark scripts record next to every figure about the code they measured."""

from __future__ import annotations

import subprocess


def git_commit() -> str:
    """Short hash of HEAD, with " (dirty)" when the work tree has changes; "unknown" outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
        return rev.stdout.strip() + (" (dirty)" if dirty else "")
    except Exception:
        return "unknown"
