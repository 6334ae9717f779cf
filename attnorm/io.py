"""Files and images: atomic writes, content hashes, image reading, the image-extension list,
tensor <-> 8-bit image conversions and ``.safetensors`` files (through the ``safetensors`` package)."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS", "atomic_write", "image_error", "json_safe", "list_images", "read_rgb", "read_safetensors",
    "sha256_file", "to_rgb_uint8", "to_uint8", "write_safetensors",
]

#: File name endings (lower case) that attnorm reads as images: data folders, masks, evaluation sets.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


# ---------------------------------------------------------------------------- files
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


def json_safe(obj):
    """``obj`` with every float that strict JSON cannot hold replaced: inf -> ``"inf"`` / ``"-inf"``,
    NaN -> None (dicts, lists and tuples are converted recursively)."""
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return obj
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------- images
def list_images(root: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[Path]:
    """Every file under ``root`` (recursively) whose name ends with one of ``extensions``
    (case-insensitive), sorted."""
    exts = tuple(e.lower() for e in extensions)
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and p.name.lower().endswith(exts))


def image_error(path: str | os.PathLike) -> str | None:
    """None if Pillow can open ``path`` and its structure checks out (``verify``, no full
    decode), else the reason as ``"ErrorType: message"``."""
    try:
        with Image.open(path) as im:
            im.verify()
        return None
    except Exception as exc:  # Pillow raises many types for broken files
        return f"{type(exc).__name__}: {exc}"


def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Any image array -> (H, W, 3) uint8: grey is repeated, alpha dropped, bool/float scaled."""
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"cannot make an RGB image of an array of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file as an RGB Pillow image (grey, palette, alpha, CMYK, 16-bit...)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGB", "L", "RGBA", "LA", "P", "CMYK", "1"):
            return im.convert("RGB")
        return Image.fromarray(to_rgb_uint8(np.asarray(im)))


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] -> uint8, channels last: (3, H, W) -> (H, W, 3), (b, 3, H, W) -> (b, H, W, 3).

    ``round((x + 1) * 127.5)`` clipped to [0, 255]: what a saved PNG holds.
    """
    a = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return a.movedim(-3, -1).numpy()


# ---------------------------------------------------------------------------- safetensors
def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (copied to the CPU, contiguous) and string ``metadata`` as ``.safetensors``."""
    from safetensors.torch import save_file
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(state, str(path), metadata=dict(metadata) if metadata else None)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a ``.safetensors`` file; ValueError if it is not one."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except SafetensorError as exc:
        raise ValueError(f"{path} is not a readable safetensors file: {exc}") from exc
