"""User errors: what a caller (or a command's user) gave is wrong, and the message says what and
how to fix it.

:class:`UserError` is the base; ``attnorm <command>`` prints its message as one line
``attnorm <command>: error: <message>`` and exits with status 2 (no traceback unless
``--debug`` or ``ATTNORM_DEBUG=1``). Every other exception is an internal error and keeps
its traceback. The subclasses also derive from the built-in type a caller would expect
(``ValueError``, ``OSError``), so ``except ValueError`` in library code keeps working.

Also here: :func:`check_device`, the one check of a device name (``--device``, the
``device`` config key) before anything is built on it.
"""

from __future__ import annotations

import torch

__all__ = [
    "CheckpointError", "DeviceError", "ImageReadError", "ImageTooLargeError", "OutputError", "RunFolderError",
    "UnsafeCheckpointError", "UserError", "check_device",
]


class UserError(Exception):
    """Bad input from the user; the message names the problem and the fix (one line)."""


class ImageReadError(UserError, ValueError):
    """An image (or mask) file cannot be read: missing, empty, not an image, truncated, or too large.
    ``reason`` is the message without the file name (for lists of skipped files)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class ImageTooLargeError(ImageReadError):
    """An image has more pixels than :data:`attnorm.io.MAX_IMAGE_PIXELS` (a decompression bomb or a
    photo too large to process)."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file is corrupt, of the wrong kind, or does not match its model."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that would import code when loaded: refused, never executed."""


class OutputError(UserError, OSError):
    """An output file cannot be written (missing permission, full disk, a folder in the way...)."""


class RunFolderError(UserError, ValueError):
    """A training run folder cannot be used as asked (it holds another run, or no run to resume)."""


class DeviceError(UserError, ValueError):
    """A device name that torch does not know or this machine does not have."""


def check_device(spec: str | torch.device | None) -> torch.device:
    """``spec`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a :class:`torch.device`; None = cpu)
    as a :class:`torch.device`; :class:`DeviceError` if torch does not know it or it is not available."""
    if spec is None:
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"unknown device {str(spec)!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise DeviceError(f"device {str(spec)!r} is not available: {build} (torch {torch.__version__}); "
                              "use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceError(f"device {str(spec)!r} does not exist: this machine has {count} CUDA device(s) "
                              f"(cuda:0 to cuda:{count - 1})")
        return device
    if device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError(f"device {str(spec)!r} is not available on this machine; use --device cpu")
        return device
    raise DeviceError(f"device {str(spec)!r} is not supported by attnorm; use cpu, cuda, cuda:N or mps")
