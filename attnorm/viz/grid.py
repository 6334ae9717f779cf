"""Grids of images / layouts as uint8 arrays, saved with Pillow."""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(b, 3, h, w) or (3, h, w) in [-1, 1] -> uint8 (b, h, w, 3) / (h, w, 3)."""
    a = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return a.movedim(-3, -1).numpy()


def make_grid(tiles: np.ndarray, ncol: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tiles (N, h, w, 3) uint8 -> one (rows*(h+pad)+pad, ncol*(w+pad)+pad, 3) image, row-major."""
    n, h, w, c = tiles.shape
    ncol = max(1, min(ncol, n))
    nrow = -(-n // ncol)
    out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = tiles[i]
    return out


def save_image(img: np.ndarray, path: str | os.PathLike, scale: int = 1) -> Path:
    """Save a (H, W, 3) uint8 array as PNG/JPEG (``scale``: nearest-neighbour enlargement)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(img)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    im.save(path)
    return path


def layout_palette(n: int) -> np.ndarray:
    """``n`` distinct colours (n, 3) uint8: evenly spaced hues, alternating lightness."""
    cols = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0  # golden-ratio hue steps: neighbours far apart
        l_, s = (0.5, 0.9) if i % 2 == 0 else (0.35, 0.75)
        cols.append(colorsys.hls_to_rgb(h, l_, s))
    return (np.array(cols) * 255).round().astype(np.uint8)


def _upsample(a: np.ndarray, size: int) -> np.ndarray:
    """Nearest upsampling of (h, w[, c]) to (size, size[, c]) (size a multiple of h)."""
    f = size // a.shape[0]
    return np.repeat(np.repeat(a, f, axis=0), f, axis=1)


def colorize_layout(layout: torch.Tensor, size: int | None = None) -> np.ndarray:
    """Soft layout (n, h, w) -> argmax entity in colour (size, size, 3) uint8."""
    n, h, _ = layout.shape
    arg = layout.argmax(0).cpu().numpy()  # (h, w)
    img = layout_palette(n)[arg]  # (h, w, 3)
    return _upsample(img, size or h)


def heatmap(m: torch.Tensor, size: int | None = None) -> np.ndarray:
    """(h, w) activation map -> grey (size, size, 3) uint8, normalised to its own min/max."""
    a = m.detach().float().cpu().numpy()
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
    img = np.repeat((a * 255).round().astype(np.uint8)[..., None], 3, axis=-1)
    return _upsample(img, size or a.shape[0])


def entity_usage(layout: torch.Tensor, threshold: float = 0.02) -> tuple[int, list[float]]:
    """Layouts (b, n, h, w) -> (number of entities that are argmax for >= ``threshold`` of the
    pixels, the fraction of pixels each entity wins)."""
    b, n, h, w = layout.shape
    counts = torch.bincount(layout.argmax(1).flatten().cpu(), minlength=n).double()
    frac = (counts / (b * h * w)).tolist()
    return sum(f >= threshold for f in frac), frac
