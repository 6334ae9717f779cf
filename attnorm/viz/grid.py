"""Grids of images / layouts as uint8 arrays and line plots, saved with Pillow
(tensors become uint8 tiles with :func:`attnorm.io.to_uint8`)."""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


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


def save_line_plot(records: list[dict], keys: list[str], path: str | os.PathLike) -> Path:
    """A minimal line plot with Pillow (no matplotlib): ``records[i][key]`` against ``records[i]["step"]``
    for each key, on a shared y axis; fewer than two records give an empty frame."""
    from PIL import ImageDraw
    path = Path(path)
    w, h, m = 640, 300, 40
    im = Image.new("RGB", (w, h), "white")
    dr = ImageDraw.Draw(im)
    steps = [r["step"] for r in records]
    vals = [r[k] for r in records for k in keys if k in r]
    if len(steps) < 2 or not vals:
        im.save(path)
        return path
    lo, hi = min(vals), max(vals)
    hi = hi if hi > lo else lo + 1
    sx = lambda s: m + (s - steps[0]) / max(steps[-1] - steps[0], 1) * (w - 2 * m)  # noqa: E731
    sy = lambda v: h - m - (v - lo) / (hi - lo) * (h - 2 * m)  # noqa: E731
    dr.rectangle([m, m, w - m, h - m], outline="black")
    colours = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"]
    for j, k in enumerate(keys):
        pts = [(sx(r["step"]), sy(r[k])) for r in records if k in r]
        dr.line(pts, fill=colours[j % 4], width=2)
        dr.text((m + 5 + 110 * j, 8), k, fill=colours[j % 4])
    dr.text((2, m - 12), f"{hi:.2f}", fill="black")
    dr.text((2, h - m), f"{lo:.2f}", fill="black")
    dr.text((w - m - 40, h - m + 5), f"step {steps[-1]}", fill="black")
    im.save(path)
    return path
