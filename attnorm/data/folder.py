"""Class-conditional image folder: ``ROOT/<class name>/<image>``, one subfolder per class.

Images are read with Pillow, converted to RGB (grayscale, palette, RGBA, CMYK...),
resized so the shorter side is ``resolution``, centre-cropped to a square and
randomly flipped left-right (``hflip``, drawn from torch's global RNG, so a resumed
run flips the same images). Classes are the sorted subfolder names.

Files that Pillow cannot open or decode are skipped and counted: the scan at
construction verifies every file (``skipped`` lists ``(path, reason)``,
``num_skipped`` counts them, one warning is logged); a file that fails later, at
load time, is added to the same list and replaced by the next image.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import UnidentifiedImageError

from attnorm.data.photos import center_crop
from attnorm.io import IMAGE_EXTENSIONS, image_error, list_images, read_rgb

log = logging.getLogger(__name__)

LAYOUT_HINT = "expected one subfolder per class, e.g. DATA/cat/001.png, DATA/dog/002.jpg"


def load_rgb(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """(R, R, 3) uint8: shorter side resized to ``resolution`` (bicubic), centre crop."""
    return np.asarray(center_crop(read_rgb(path), resolution), dtype=np.uint8).copy()


class ImageFolderDataset:
    """Args:
        root: folder with one subfolder per class.
        resolution: output size R (square).
        hflip: random horizontal flip with probability 1/2.
        cache: keep decoded, resized images in memory (small datasets).

    ``ds[i]`` -> (float32 tensor (3, R, R) in [-1, 1], int label). Attributes:
    ``classes``, ``samples`` [(path, label)], ``skipped`` [(path, reason)], ``num_skipped``.
    """

    def __init__(self, root: str | os.PathLike, resolution: int = 64, hflip: bool = True,
                 cache: bool = False) -> None:
        self.root, self.resolution, self.hflip, self.cache = Path(root), resolution, hflip, cache
        if not self.root.is_dir():
            raise ValueError(f"data folder {str(self.root)!r} does not exist or is not a folder; "
                             f"pass --data pointing to an image folder ({LAYOUT_HINT})")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise ValueError(f"data folder {str(self.root)!r} has no class subfolders; {LAYOUT_HINT} "
                             f"(for unconditional data put all images in one subfolder)")
        self.skipped: list[tuple[str, str]] = []
        self.samples: list[tuple[str, int]] = []
        empty = []
        for label, name in enumerate(self.classes):
            good = [p for p in list_images(self.root / name) if self._verify(p)]
            if not good:
                empty.append(name)
            self.samples += [(str(p), label) for p in good]
        if self.skipped:
            log.warning("skipped %d unreadable image file(s) under %s, e.g. %s (%s)", len(self.skipped),
                        self.root, self.skipped[0][0], self.skipped[0][1])
        if empty:
            raise ValueError(
                f"class folder(s) {empty} under {str(self.root)!r} contain no readable images "
                f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove those folders")
        self._cache: dict[int, np.ndarray] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def _verify(self, path: Path) -> bool:
        error = image_error(path)  # header + structure check, no full decode
        if error is not None:
            self.skipped.append((str(path), error))
        return error is None

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        """Decode sample ``index``; on failure count it, drop it and try the following one."""
        for _ in range(len(self.samples)):
            index %= len(self.samples)
            if index in self._cache:
                return self._cache[index], self.samples[index][1]
            path, label = self.samples[index]
            try:
                arr = load_rgb(path, self.resolution)
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
                self.skipped.append((path, f"{type(exc).__name__}: {exc}"))
                log.warning("skipping unreadable image %s (%s); %d skipped so far", path, exc, self.num_skipped)
                index += 1
                continue
            if self.cache:
                self._cache[index] = arr
            return arr, label
        raise ValueError(f"no readable image left under {str(self.root)!r}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        arr, label = self._load(int(index))
        x = torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1.0  # (3, R, R)
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x.contiguous(), label

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self[i] for i in indices]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)
