"""Files and images: atomic writes, output-path checks, content hashes, the one image reader,
the image-extension list, tensor <-> 8-bit image conversions and ``.safetensors`` files
(through the ``safetensors`` package).

Every output file goes through :func:`atomic_write` (a temporary file beside the target,
then ``os.replace``): a failure (full disk, no permission) leaves the old file as it was,
removes the temporary file and raises :class:`attnorm.errors.OutputError` with the reason;
temporary files left by a killed process are removed the next time their target is written
(:func:`remove_stale_temps`).

Every image file is read through :func:`open_image` (:func:`read_rgb` for pictures,
:func:`read_grey01` for masks): EXIF orientation applied, 16-bit, float, palette and
alpha images converted to 8-bit with their full range, a pixel limit
(:func:`max_image_pixels`) against decompression bombs, and one
:class:`attnorm.errors.ImageReadError` line for a missing, empty, corrupt or oversized file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import re
import warnings
from pathlib import Path
from struct import error as struct_error
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from attnorm.errors import CheckpointError, ImageReadError, ImageTooLargeError, OutputError

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS", "IMAGE_EXTENSIONS", "atomic_write", "check_output_path", "image_error", "json_safe",
    "list_images", "max_image_pixels", "open_image", "read_grey01", "read_rgb", "read_safetensors",
    "remove_stale_temps", "save_image_file", "sha256_file", "to_rgb_uint8", "to_uint8", "write_json",
    "write_safetensors", "write_text",
]

#: File name endings (lower case) that attnorm reads as images: data folders, masks, evaluation sets;
#: also the endings an output image may have.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")

#: Default of :func:`max_image_pixels`: Pillow's decompression-bomb threshold (about 89.5 M pixels),
#: here an error instead of a warning.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

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


_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up; free some space or write elsewhere",
    errno.EFBIG: "the file is larger than this file system or the file-size limit allows; write elsewhere",
    errno.EACCES: "no permission to write there; choose another path",
    errno.EPERM: "no permission to write there; choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOTDIR: "a file stands where a folder of the path should be; choose another path",
    errno.EISDIR: "that is a folder; give a file name",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


def _os_error(exc: BaseException | None) -> OSError | None:
    """The first :class:`OSError` in ``exc``'s cause/context chain (torch wraps write errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _output_error(path: Path, exc: OSError, kept: bool) -> OutputError:
    reason = exc.strerror or str(exc)
    hint = _OS_HINTS.get(exc.errno or -1, "check the path and the disk")
    old = "; the previous file is unchanged" if kept else ""
    return OutputError(f"cannot write {path}: {reason} ({hint}){old}")


_TEMP_RE = re.compile(r"^\.?(?P<target>.+)\.tmp(?P<pid>\d+)(?:\.[A-Za-z0-9]+)?$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write` for target ``path`` (or, when ``path``
    is a folder, for every file in it) left by processes that no longer run (kill -9, power
    loss); returns the removed paths. Temporary files of live processes are left alone."""
    path = Path(path)
    folder, target = (path, None) if path.is_dir() else (path.parent, path.name)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if not m or (target is not None and m["target"] != target) or not entry.is_file(follow_symlinks=False):
            continue
        if _pid_alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object], suffix: str = "",
                 mode: int | None = None) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then ``os.replace`` it onto ``path``.

    Readers see the old file or the new one, never a torn one; the temporary file
    (``.NAME.tmpPID``) is removed if ``write`` fails, and those of dead processes are removed
    first. A failure to write (full disk, no permission, a folder in the way) raises
    :class:`attnorm.errors.OutputError` naming the file and the reason, also when the writer
    wrapped the ``OSError`` (torch does). ``suffix`` ends the temporary name (``np.savez``
    wants ``.npz``); ``mode`` sets its permissions before the rename.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _output_error(path, exc, kept=False) from exc
    remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    existed = path.exists()
    try:
        write(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except Exception as exc:
        os_exc = _os_error(exc)
        if os_exc is None or isinstance(exc, OutputError):
            raise
        raise _output_error(path, os_exc, kept=existed) from exc
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | os.PathLike, obj, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (strict: NaN/inf made :func:`json_safe`) to ``path`` atomically."""
    import json
    return write_text(path, json.dumps(json_safe(obj), indent=indent) + "\n")


def check_output_path(path: str | os.PathLike, what: str = "output", extensions: tuple[str, ...] | None = None,
                      folder: bool = False) -> Path:
    """Check before any work that ``path`` can be written; returns it as a :class:`Path`.

    A file output (``folder=False``) must not be an existing folder and must end with one of
    ``extensions`` (when given, case-insensitive); a folder output must not be a file. The
    nearest existing parent must be a folder this process may write in (missing folders are
    created later). :class:`attnorm.errors.OutputError` names ``what`` (e.g. ``--out``) and the fix.
    """
    path = Path(path)
    if folder:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{what} {path} is a file; give a folder")
    else:
        if path.is_dir():
            example = path / ("out" + (extensions or ("",))[0])
            raise OutputError(f"{what} {path} is a folder; give a file name, e.g. {example}")
        if extensions and path.suffix.lower() not in extensions:
            got = f"ends with {path.suffix!r}" if path.suffix else "has no extension"
            example = path.with_suffix(extensions[0]) if path.suffix else path.with_name(path.name + extensions[0])
            which = f"one of {', '.join(extensions[:5])}{', ...' if len(extensions) > 5 else ''}" \
                if len(extensions) > 1 else extensions[0]
            raise OutputError(f"{what} {path} {got}; it must end with {which}, e.g. {example}")
    parent = path if folder else path.parent
    parent = parent.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {what} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {what} {path}: no permission to write in {parent}; choose another path")
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


def max_image_pixels() -> int:
    """The most pixels (width x height) an image file may have: ``$ATTNORM_MAX_IMAGE_PIXELS``
    if set, else :data:`DEFAULT_MAX_IMAGE_PIXELS`. Larger files are refused by :func:`open_image`
    (skipped and counted in data folders)."""
    value = os.environ.get("ATTNORM_MAX_IMAGE_PIXELS")
    if value:
        try:
            return max(1, int(float(value)))
        except ValueError:
            raise ImageReadError(f"ATTNORM_MAX_IMAGE_PIXELS must be a number of pixels, got {value!r}") from None
    return DEFAULT_MAX_IMAGE_PIXELS


_READ_FIX = "pass an image file (" + ", ".join(IMAGE_EXTENSIONS[:4]) + "...)"


def _unreadable(path, reason: str, fix: str = _READ_FIX, cls: type = ImageReadError) -> ImageReadError:
    return cls(f"cannot read image {path}: {reason}; {fix}", reason)


def _too_large(path, w: int, h: int, limit: int) -> ImageTooLargeError:
    return _unreadable(path, f"{w}x{h} = {w * h:,} pixels is over the limit of {limit:,} "
                             "(a decompression bomb or a very large photo)",
                       "downscale it, or raise the limit with ATTNORM_MAX_IMAGE_PIXELS", ImageTooLargeError)


@contextlib.contextmanager
def open_image(path, load: bool = True) -> Iterator[Image.Image]:
    """The image file ``path`` (a path, or an open binary file such as ``io.BytesIO``) as a Pillow
    image: checked against :func:`max_image_pixels` before it is decoded, then (``load=True``) decoded and turned upright by its EXIF orientation.

    Raises :class:`attnorm.errors.ImageReadError` (a ``ValueError``) in one line for a missing,
    empty, unreadable, truncated or corrupt file and :class:`~attnorm.errors.ImageTooLargeError`
    for one over the pixel limit; Pillow's decompression-bomb warning is not shown.
    """
    source = path
    if hasattr(path, "read"):  # an open binary file or io.BytesIO (uploads)
        path = getattr(path, "name", None) or "<uploaded image>"
    else:
        path = source = Path(path)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise _unreadable(path, "file not found", "check the path") from None
        except OSError as exc:
            raise _unreadable(path, exc.strerror or str(exc), "check the path") from None
        if path.is_dir():
            raise _unreadable(path, "it is a folder, not a file", "give an image file")
        if size == 0:
            raise _unreadable(path, "empty file (0 bytes)")
    limit = max_image_pixels()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", message="Palette images with Transparency")
        try:
            im = Image.open(source)
        except Image.DecompressionBombError:
            raise _unreadable(path, f"more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a decompression "
                                    "bomb or a very large photo)", "downscale it", ImageTooLargeError) from None
        except UnidentifiedImageError:
            raise _unreadable(path, "not an image file Pillow can read (unknown format or corrupt header)") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise _unreadable(path, f"{type(exc).__name__}: {exc}") from None
        with im:
            w, h = im.size
            if w * h > limit:
                raise _too_large(path, w, h, limit)
            if w < 1 or h < 1:
                raise _unreadable(path, f"no pixels ({w}x{h})")
            if not load:
                yield im
                return
            try:
                im.load()
                upright = ImageOps.exif_transpose(im)
            except Image.DecompressionBombError:
                raise _too_large(path, w, h, limit) from None
            except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct_error) as exc:
                raise _unreadable(path, f"truncated or corrupt ({type(exc).__name__}: {exc})") from None
            yield upright if upright is not None else im


def image_error(path: str | os.PathLike) -> str | None:
    """None if ``path`` opens within the pixel limit and its structure checks out (Pillow's
    ``verify``, no full decode), else the reason (one line, without the file name)."""
    try:
        with open_image(path, load=False) as im:
            im.verify()
        return None
    except ImageReadError as exc:
        return exc.reason
    except Exception as exc:  # Pillow's verify raises many types for broken files
        return f"corrupt ({type(exc).__name__}: {exc})"


def _scaled01(im: Image.Image) -> np.ndarray | None:
    """(H, W) float64 in [0, 1] of a 16-bit, 32-bit integer or float image (modes ``I;16*``, ``I``,
    ``F``); None for the 8-bit modes. 16-bit spans 0..65535; 32-bit integers are read as
    16-bit when any value exceeds 255, else as 8-bit; floats as [0, 1] when none exceeds 1,
    else as 0..255 (NaN reads 0)."""
    if im.mode.startswith("I;16"):
        return np.asarray(im, dtype=np.float64) / 65535.0
    if im.mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        return np.clip(arr / (65535.0 if arr.size and arr.max() > 255 else 255.0), 0.0, 1.0)
    if im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        return np.clip(arr if not arr.size or arr.max() <= 1.0 else arr / 255.0, 0.0, 1.0)
    return None


def _without_palette_alpha(im: Image.Image) -> Image.Image:
    """Palette images with a transparent colour go through RGBA (what Pillow asks for)."""
    return im.convert("RGBA") if im.mode in ("P", "PA") and ("transparency" in im.info or im.mode == "PA") else im


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image file as an upright RGB Pillow image (:func:`open_image`): EXIF orientation
    applied; grey repeated; palette, CMYK and the other 8-bit modes converted by Pillow; alpha
    dropped (the stored colours are kept); 16-bit, 32-bit integer and float images scaled to
    0..255 (:func:`_scaled01`), not clipped. Raises :class:`attnorm.errors.ImageReadError`."""
    with open_image(path) as im:
        scaled = _scaled01(im)
        if scaled is not None:
            grey = np.round(scaled * 255.0).astype(np.uint8)
            return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
        try:
            return _without_palette_alpha(im).convert("RGB")
        except (OSError, ValueError) as exc:
            raise _unreadable(path, f"cannot convert mode {im.mode} to RGB ({exc})") from None


def read_grey01(path: str | os.PathLike) -> np.ndarray:
    """An image file as upright grey levels (H, W) float64 in [0, 1] (:func:`open_image`): 8-bit
    images by 255 after Pillow's grey conversion (alpha ignored), 16-bit by 65535, float as
    [0, 1] (or 0..255). Raises :class:`attnorm.errors.ImageReadError`."""
    with open_image(path) as im:
        scaled = _scaled01(im)
        if scaled is not None:
            return scaled
        try:
            return np.asarray(_without_palette_alpha(im).convert("L"), dtype=np.float64) / 255.0
        except (OSError, ValueError) as exc:
            raise _unreadable(path, f"cannot convert mode {im.mode} to grey ({exc})") from None


def save_image_file(img: Image.Image | np.ndarray, path: str | os.PathLike) -> Path:
    """Save a Pillow image or a (H, W, 3) / (H, W) uint8 array atomically (:func:`atomic_write`), in the
    format of ``path``'s extension; :class:`attnorm.errors.OutputError` for an unknown extension or a
    failed write (the previous file is then unchanged)."""
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise OutputError(f"cannot write image {path}: unknown image extension {path.suffix!r}; "
                          f"name it with .png, .jpg, .bmp, .tif or .webp")
    im = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img))
    if fmt == "JPEG" and im.mode not in ("RGB", "L", "CMYK"):
        im = im.convert("RGB")
    return atomic_write(path, lambda tmp: im.save(tmp, format=fmt))


def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Any image array -> (H, W, 3) uint8: grey is repeated, alpha dropped, bool/float scaled,
    uint16 scaled from 0..65535."""
    arr = np.asarray(arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
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
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
