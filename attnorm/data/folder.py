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
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
LAYOUT_HINT = "expected one subfolder per class, e.g. DATA/cat/001.png, DATA/dog/002.jpg"


def load_rgb(path: str | os.PathLike, resolution: int) -> np.ndarray:
    """(R, R, 3) uint8: shorter side resized to ``resolution`` (bicubic), centre crop."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = resolution / min(w, h)
        nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
        im = im.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - resolution) // 2, (nh - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
        return np.asarray(im, dtype=np.uint8).copy()


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
            files = sorted(p for p in (self.root / name).rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            good = [p for p in files if self._verify(p)]
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
        try:
            with Image.open(path) as im:
                im.verify()  # header + structure check, no full decode
            return True
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            self.skipped.append((str(path), f"{type(exc).__name__}: {exc}"))
            return False

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
