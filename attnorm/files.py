"""File helpers shared across the package: content hashes and atomic writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, memoised on (path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], suffix: str = "",
                 mode: int | None = None) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then ``os.replace`` it onto ``path``.

    Readers see the old file or the new one, never a torn one; the temporary file is removed
    if ``write`` fails. ``suffix`` ends the temporary name (``np.savez`` wants ``.npz``);
    ``mode`` sets its permissions before the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}{suffix}")
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
