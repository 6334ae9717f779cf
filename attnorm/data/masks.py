"""Inpainting masks: random boxes, free-form brush strokes, files, and fixed evaluation sets.

Convention everywhere in attnorm: a mask is a float tensor of shape (1, H, W) or
(b, 1, H, W) with **1 = hole** (pixel to fill) and 0 = known pixel.

Recipes (sizes given for a 256x256 image are scaled with the image):

* ``"box"`` -- DeepFill v1: a box of half the image (128 of 256) on each side, placed
  uniformly inside the image, then each of its four sides is moved inwards by a
  random 0..16 px (16/256 of the image side), so box sides lie in [96, 128] at 256.
* ``"center"`` -- the common evaluation protocol: a centred H/2 x W/2 box.
* ``"free_form"`` -- DeepFill v2 brush strokes: 1-3 strokes, each a polyline of 4-11
  steps from a uniformly drawn start point; the step angles alternate around a
  mean of 2pi/5 with a spread of up to 2pi/15, step lengths are N(r, r/2) clipped
  to [0, 2r] with r = diag/8, line width uniform in [12, 40] px at 256 (scaled by
  sqrt(H*W)/256), round joints; the mask is then flipped left-right and
  up-down, each with probability 1/2.
* ``"mixed"`` -- box or free-form with probability 1/2 each.
* ``"binned"`` -- hole-area-balanced masks for evaluation and training: sample ``i``
  targets the LaMa area bin ``i % 5`` (0-10%, ..., 40-50%) and is a union of free-form
  strokes and boxes of random size (the box sides uniform in [1/8, 1/2] of the image
  side), added one by one (each a stroke or a box with probability 1/2) until the
  hole area lies in that bin; a draw that overshoots the bin starts again.

Every mask is a pure function of ``(seed, index)``: :class:`MaskGenerator` seeds a
fresh ``numpy.random.Generator`` with ``SeedSequence([seed, index])`` per sample,
so each sample of a batch gets its own mask and a data-loader worker order
cannot change them.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from attnorm.io import list_images

log = logging.getLogger(__name__)

__all__ = [
    "AREA_BIN_LABELS", "MASK_KINDS", "MaskGenerator", "Stroke", "area_bin", "area_bin_label",
    "binned_mask", "box_mask", "center_mask", "draw_strokes", "free_form_mask", "free_form_strokes",
    "hole_bbox", "load_mask", "mask_area", "random_box", "save_mask", "write_eval_masks",
]

MASK_KINDS = ("box", "center", "free_form", "mixed", "binned")

# LaMa-style evaluation bins of the hole-area fraction: [0, 10%), [10, 20%), ... [50, 60%);
# a seventh overflow bin collects masks covering 60% or more (LaMa's evaluation drops them).
AREA_BIN_LABELS = ("0-10%", "10-20%", "20-30%", "30-40%", "40-50%", "50-60%", ">=60%")


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as (H, W); an int means a square."""
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(s) for s in size)
    if h < 1 or w < 1:
        raise ValueError(f"mask size must be positive, got {size!r}")
    return h, w


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


# ---------------------------------------------------------------------------- boxes
def random_box(size: int | Sequence[int], rng: np.random.Generator | int | None = None,
               box_fraction: float = 0.5, max_shrink: float = 16 / 256) -> tuple[int, int, int, int]:
    """DeepFill v1 box as ``(top, left, height, width)``.

    Args:
        size: image size, int or (H, W).
        rng: numpy Generator or seed.
        box_fraction: box side before shrinking, as a fraction of the image side (128/256).
        max_shrink: the most each side moves inwards, as a fraction of the image side (16/256).
    """
    h, w = _size2(size)
    rng = _rng(rng)
    bh, bw = max(1, round(h * box_fraction)), max(1, round(w * box_fraction))
    dh, dw = round(h * max_shrink), round(w * max_shrink)
    top = int(rng.integers(0, h - bh + 1))  # position uniform over all placements
    left = int(rng.integers(0, w - bw + 1))
    # each of the four sides moves inwards by 0..d pixels (inclusive)
    s_top, s_bottom = (int(v) for v in rng.integers(0, dh + 1, size=2))
    s_left, s_right = (int(v) for v in rng.integers(0, dw + 1, size=2))
    height = max(1, bh - s_top - s_bottom)
    width = max(1, bw - s_left - s_right)
    return top + s_top, left + s_left, height, width


def box_mask(size: int | Sequence[int], box: tuple[int, int, int, int]) -> Tensor:
    """(1, H, W) float mask with ones inside ``box = (top, left, height, width)``."""
    h, w = _size2(size)
    top, left, bh, bw = box
    m = torch.zeros(1, h, w)
    m[:, top:top + bh, left:left + bw] = 1.0
    return m


def center_mask(size: int | Sequence[int], fraction: float = 0.5) -> Tensor:
    """(1, H, W) centred box of ``fraction`` of each side (evaluation protocol: H/2 x W/2)."""
    h, w = _size2(size)
    bh, bw = max(1, round(h * fraction)), max(1, round(w * fraction))
    return box_mask((h, w), ((h - bh) // 2, (w - bw) // 2, bh, bw))


# ---------------------------------------------------------------------------- strokes
@dataclass(frozen=True)
class Stroke:
    """One brush stroke: polyline ``points`` [(x, y), ...] in pixels, line ``width`` in pixels."""

    points: tuple[tuple[float, float], ...]
    width: float


def free_form_strokes(size: int | Sequence[int], rng: np.random.Generator | int | None = None,
                      num_strokes: tuple[int, int] = (1, 3), num_vertex: tuple[int, int] = (4, 11),
                      mean_angle: float = 2 * math.pi / 5, angle_range: float = 2 * math.pi / 15,
                      width_range: tuple[float, float] = (12.0, 40.0)) -> list[Stroke]:
    """Draw the random parameters of DeepFill v2 brush strokes (no rasterising).

    Args:
        size: image size, int or (H, W).
        rng: numpy Generator or seed.
        num_strokes: inclusive range of the number of strokes.
        num_vertex: inclusive range of steps per stroke (a stroke has ``k`` steps, ``k + 1`` points).
        mean_angle, angle_range: step angles are uniform in
            [mean - u1, mean + u2], u1, u2 ~ U(0, angle_range) per stroke; every other
            step is mirrored (2pi - angle), which makes strokes zig-zag.
        width_range: line width range in pixels for a 256x256 image (scaled by sqrt(H*W)/256).
    """
    h, w = _size2(size)
    rng = _rng(rng)
    radius = math.sqrt(h * h + w * w) / 8  # r = diag / 8
    scale = math.sqrt(h * w) / 256
    strokes = []
    for _ in range(int(rng.integers(num_strokes[0], num_strokes[1] + 1))):
        steps = int(rng.integers(num_vertex[0], num_vertex[1] + 1))
        a_min = mean_angle - rng.uniform(0, angle_range)
        a_max = mean_angle + rng.uniform(0, angle_range)
        x, y = float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1))
        points = [(x, y)]
        for i in range(steps):
            angle = rng.uniform(a_min, a_max)
            if i % 2 == 0:
                angle = 2 * math.pi - angle
            length = float(np.clip(rng.normal(radius, radius / 2), 0, 2 * radius))
            x = float(np.clip(x + length * math.cos(angle), 0, w - 1))
            y = float(np.clip(y + length * math.sin(angle), 0, h - 1))
            points.append((x, y))
        width = float(rng.uniform(*width_range)) * scale
        strokes.append(Stroke(tuple(points), width))
    return strokes


def draw_strokes(size: int | Sequence[int], strokes: Sequence[Stroke]) -> np.ndarray:
    """Rasterise strokes with Pillow: (H, W) uint8 array, 1 = hole. Joints are filled discs."""
    h, w = _size2(size)
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for s in strokes:
        width = max(1, int(round(s.width)))
        draw.line(list(s.points), fill=1, width=width)
        rad = s.width / 2
        for x, y in s.points:
            draw.ellipse((x - rad, y - rad, x + rad, y + rad), fill=1)
    return np.array(img, dtype=np.uint8)  # writable copy


def binned_mask(size: int | Sequence[int], target_bin: int, rng: np.random.Generator | int | None = None,
                max_tries: int = 1000) -> Tensor:
    """(1, H, W) mask whose hole fraction lies in area bin ``target_bin`` (0..4: [0.1 k, 0.1 (k + 1))).

    A union of free-form strokes and random boxes, grown one shape at a time until the
    area reaches the bin; a draw that overshoots restarts. Bin 0 masks are never empty.
    """
    if not 0 <= int(target_bin) <= 4:
        raise ValueError(f"target_bin must be in 0..4, got {target_bin}")
    h, w = _size2(size)
    rng = _rng(rng)
    lo, hi = 0.1 * int(target_bin), 0.1 * (int(target_bin) + 1)
    arr = np.zeros((h, w), dtype=np.uint8)
    for _ in range(max_tries):
        arr = np.zeros((h, w), dtype=np.uint8)
        while True:
            if rng.random() < 0.5:
                arr |= draw_strokes((h, w), free_form_strokes((h, w), rng, num_strokes=(1, 1)))
            else:
                bh = int(rng.integers(max(1, h // 8), max(2, h // 2) + 1))
                bw = int(rng.integers(max(1, w // 8), max(2, w // 2) + 1))
                top, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
                arr[top:top + bh, left:left + bw] = 1
            area = arr.mean()
            if area >= lo and area > 0:
                break
        if area < hi:
            break
    return torch.from_numpy(arr.astype(np.float32)).unsqueeze(0)


def free_form_mask(size: int | Sequence[int], rng: np.random.Generator | int | None = None,
                   flip: bool = True, **stroke_kwargs) -> Tensor:
    """(1, H, W) DeepFill v2 free-form mask; ``stroke_kwargs`` go to :func:`free_form_strokes`."""
    h, w = _size2(size)
    rng = _rng(rng)
    arr = draw_strokes((h, w), free_form_strokes((h, w), rng, **stroke_kwargs))
    if flip:
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        if rng.random() < 0.5:
            arr = arr[::-1, :]
    return torch.from_numpy(np.ascontiguousarray(arr)).float().unsqueeze(0)


# ---------------------------------------------------------------------------- files
def load_mask(path: str | os.PathLike, size: int | Sequence[int] | None = None) -> Tensor:
    """Load a mask image as a (1, H, W) float tensor of 0/1 (1 = hole).

    Any Pillow-readable file: it is converted to grey, scaled to [0, 1] (by 255, or
    by 65535 for 16-bit files), thresholded (>= 0.5 is hole), then -- if ``size``
    is given -- resized by nearest neighbour (pixel-centre sampling), so it stays binary.
    An alpha channel is ignored.
    """
    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            arr = arr / (65535.0 if arr.max() > 255 or img.mode.startswith("I;16") else 255.0)
        else:
            arr = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    m = torch.from_numpy((arr >= 0.5).astype(np.float32)).unsqueeze(0)  # (1, H, W)
    if size is not None:
        h, w = _size2(size)
        if (h, w) != tuple(m.shape[-2:]):
            m = F.interpolate(m.unsqueeze(0), size=(h, w), mode="nearest-exact")[0]
    return m


def save_mask(path: str | os.PathLike, mask: Tensor | np.ndarray) -> None:
    """Write a (1, H, W) or (H, W) mask as an 8-bit PNG: 255 = hole, 0 = known (threshold 0.5)."""
    arr = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise ValueError(f"save_mask needs a single (1, H, W) or (H, W) mask, got shape {mask.shape}")
    Image.fromarray(((arr >= 0.5) * 255).astype(np.uint8), mode="L").save(path)


# ---------------------------------------------------------------------------- area / bbox
def mask_area(mask: Tensor) -> Tensor:
    """Hole fraction (pixels >= 0.5) per mask: a scalar for (1, H, W), (b,) for (b, 1, H, W)."""
    m = (mask >= 0.5).float()
    return m.flatten(-3).mean(-1) if m.dim() == 4 else m.mean()


def area_bin(mask_or_fraction: Tensor | float) -> int:
    """Index into :data:`AREA_BIN_LABELS` of a single mask (or hole fraction).

    Bins are half-open, ``[10k%, 10(k+1)%)``; 60% and above goes to the overflow bin 6.
    For a mask the bin is computed in integers (``10 * holes // pixels``), so masks
    exactly on a bin edge are binned exactly.
    """
    if isinstance(mask_or_fraction, Tensor) and mask_or_fraction.numel() > 1:
        m = mask_or_fraction >= 0.5
        k = (10 * int(m.sum())) // m.numel()
    else:
        k = int(math.floor(float(mask_or_fraction) * 10 + 1e-9))
    return max(0, min(k, len(AREA_BIN_LABELS) - 1))


def area_bin_label(mask_or_fraction: Tensor | float) -> str:
    return AREA_BIN_LABELS[area_bin(mask_or_fraction)]


def hole_bbox(mask: Tensor) -> tuple[int, int, int, int] | None:
    """Bounding box ``(top, left, height, width)`` of a single (1, H, W) / (H, W) mask's hole; None if empty."""
    m = (mask >= 0.5).reshape(mask.shape[-2:])
    rows = torch.nonzero(m.any(1)).flatten()
    cols = torch.nonzero(m.any(0)).flatten()
    if rows.numel() == 0:
        return None
    top, left = int(rows[0]), int(cols[0])
    return top, left, int(rows[-1]) - top + 1, int(cols[-1]) - left + 1


# ---------------------------------------------------------------------------- generator
class MaskGenerator:
    """A mask per sample, a pure function of ``(seed, index)``.

    Args:
        kind: ``"box"``, ``"center"``, ``"free_form"``, ``"mixed"``, or ``"files"``.
        size: mask size, int or (H, W).
        seed: base seed; sample ``i`` uses ``SeedSequence([seed, i])``.
        files: for ``kind="files"``: a folder (searched recursively) or a list of mask
            files; sample ``i`` uses file ``i % len(files)`` resized to ``size``.
        **kwargs: passed to :func:`random_box` (box) or :func:`free_form_mask` (free_form).

    ``gen(i)`` -> (1, H, W); ``gen.batch([i, j, ...])`` -> (b, 1, H, W).
    """

    def __init__(self, kind: str = "box", size: int | Sequence[int] = 256, seed: int = 0,
                 files: str | os.PathLike | Sequence[str | os.PathLike] | None = None, **kwargs) -> None:
        if kind not in MASK_KINDS + ("files",):
            raise ValueError(f"unknown mask kind {kind!r}; choose one of {MASK_KINDS + ('files',)}")
        self.kind = kind
        self.size = _size2(size)
        self.seed = int(seed)
        self.kwargs = kwargs
        self.files: list[Path] = []
        if kind == "files":
            if files is None:
                raise ValueError("kind='files' needs files= (a folder or a list of mask files)")
            if isinstance(files, (str, os.PathLike)):
                folder = Path(files)
                if not folder.is_dir():
                    raise FileNotFoundError(f"mask folder {folder} does not exist")
                self.files = list_images(folder)
            else:
                self.files = [Path(f) for f in files]
            if not self.files:
                raise ValueError(f"no mask images found in {files}")

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, int(index)]))

    def __call__(self, index: int) -> Tensor:
        if self.kind == "files":
            return load_mask(self.files[int(index) % len(self.files)], self.size)
        if self.kind == "center":
            return center_mask(self.size)
        rng = self.rng(index)
        kind = self.kind
        if kind == "binned":
            return binned_mask(self.size, int(index) % 5, rng)
        if kind == "mixed":
            kind = "box" if rng.random() < 0.5 else "free_form"
        if kind == "box":
            box_kw = {k: v for k, v in self.kwargs.items() if k in ("box_fraction", "max_shrink")}
            return box_mask(self.size, random_box(self.size, rng, **box_kw))
        ff_kw = {k: v for k, v in self.kwargs.items() if k not in ("box_fraction", "max_shrink")}
        return free_form_mask(self.size, rng, **ff_kw)

    def batch(self, indices: Sequence[int] | Tensor) -> Tensor:
        """(b, 1, H, W) masks for the given sample indices."""
        if isinstance(indices, Tensor):
            indices = indices.tolist()
        return torch.stack([self(int(i)) for i in indices])

    def __repr__(self) -> str:
        return f"MaskGenerator(kind={self.kind!r}, size={self.size}, seed={self.seed})"


def write_eval_masks(out_dir: str | os.PathLike, n: int, size: int | Sequence[int] = 256,
                     kind: str = "free_form", seed: int = 0, **kwargs) -> list[dict]:
    """Write a fixed evaluation mask set and its index; returns the records.

    Files: ``mask_00000.png`` ... (255 = hole), ``masks.json`` (settings + records) and
    ``masks.csv`` (one row per mask). Each record: ``file``, ``index``, ``area``
    (hole fraction), ``bin`` (index into :data:`AREA_BIN_LABELS`), ``bin_label``.
    Mask ``i`` is ``MaskGenerator(kind, size, seed)(i)``, so the set is reproducible.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = MaskGenerator(kind, size, seed, **kwargs)
    records = []
    for i in range(n):
        m = gen(i)
        name = f"mask_{i:05d}.png"
        save_mask(out / name, m)
        b = area_bin(m)
        records.append({"file": name, "index": i, "area": float(mask_area(m)), "bin": b,
                        "bin_label": AREA_BIN_LABELS[b]})
    counts = {lab: sum(r["bin"] == k for r in records) for k, lab in enumerate(AREA_BIN_LABELS)}
    meta = {"kind": kind, "size": list(gen.size), "seed": seed, "n": n, "bin_labels": list(AREA_BIN_LABELS),
            "bin_counts": counts, "masks": records}
    (out / "masks.json").write_text(json.dumps(meta, indent=1))
    with open(out / "masks.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "index", "area", "bin", "bin_label"])
        writer.writeheader()
        writer.writerows(records)
    if counts[AREA_BIN_LABELS[-1]]:
        log.warning("%d of %d masks cover >= 60%% of the image (LaMa-style evaluation usually drops them)",
                    counts[AREA_BIN_LABELS[-1]], n)
    return records
