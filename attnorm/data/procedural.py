"""Embedded procedural class-conditional dataset: shapes that need long-range consistency.

Every class is an object whose correctness is global: closed curves, symmetry,
repeated parts (ring, triangle, hexagon outline, star, cross, butterfly, checker
patch, concentric circles, dot grid, chevrons, crescent, flower). Objects are drawn
with random position, scale, rotation and colour on a random textured background
(smooth noise, linear gradient or stripes).

``pose`` sets how much the object's placement varies: ``"random"`` (the default: random
centre, scale and rotation), ``"upright"`` (random centre and scale, no rotation) or
``"centred"`` (centre of the image, scale 0.75, no rotation). Colours and backgrounds vary
the same way in all three, and image ``i`` has the same colours and background in each.
Fewer pose modes make the data far quicker for a GAN to learn: ``attnorm demo`` trains
on ``"centred"`` (issue 8).

Shapes are signed distance functions in a canonical frame (object inside ~[-1, 1]^2),
rendered with a one-pixel anti-aliased edge, so any resolution works. Image ``i``
of a dataset with seed ``s`` depends only on ``(s, i)`` (``numpy.random.default_rng``
seeded with ``[s, i]``); its label is ``i % num_classes`` (balanced classes).

    ds = ProceduralShapes(resolution=32, num_classes=12, seed=0)
    x, y = ds[5]                        # (3, 32, 32) float32 in [-1, 1], int
    xb, yb = ds.get_batch(range(256))   # (256, 3, 32, 32), (256,) long
    ProceduralShapes(resolution=32, num_classes=10, pose="centred")  # the demo's easier variant
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch

POSES = ("random", "upright", "centred")
CLASS_NAMES = ("ring", "triangle", "hexagon_outline", "star", "cross", "butterfly", "checker",
               "concentric", "dot_grid", "chevrons", "crescent", "flower")


# ------------------------------------------------------------------ signed distances (canonical frame)
def _polygon(x: np.ndarray, y: np.ndarray, k: int, apothem: float) -> np.ndarray:
    """Filled regular k-gon (a vertex up), approximately signed distance."""
    theta = np.arctan2(x, y)  # angle from +y
    sector = 2 * np.pi / k
    phi = np.mod(theta + np.pi / k, sector) - np.pi / k  # angle to the nearest edge normal
    return np.hypot(x, y) * np.cos(phi) - apothem


def _box(x, y, hx, hy):
    return np.maximum(np.abs(x) - hx, np.abs(y) - hy)


def _ellipse(x, y, cx, cy, rx, ry):
    return (np.hypot((x - cx) / rx, (y - cy) / ry) - 1.0) * min(rx, ry)


def sdf_ring(x, y):
    return np.abs(np.hypot(x, y) - 0.65) - 0.17


def sdf_triangle(x, y):
    return _polygon(x, y + 0.15, 3, 0.45)


def sdf_hexagon_outline(x, y):
    return np.abs(_polygon(x, y, 6, 0.62)) - 0.13


def sdf_star(x, y):
    theta = np.arctan2(x, y)
    sector = 2 * np.pi / 5
    phi = np.abs(np.mod(theta + sector / 2, sector) - sector / 2) / (sector / 2)  # 0 at a tip, 1 between
    r_edge = 0.85 - (0.85 - 0.36) * phi
    return (np.hypot(x, y) - r_edge) * 0.6


def sdf_cross(x, y):
    return np.minimum(_box(x, y, 0.8, 0.22), _box(x, y, 0.22, 0.8))


def sdf_butterfly(x, y):
    ax = np.abs(x)  # mirror symmetry about the vertical axis
    wings = np.minimum(_ellipse(ax, y, 0.42, 0.32, 0.42, 0.36), _ellipse(ax, y, 0.32, -0.38, 0.3, 0.26))
    spots = np.minimum(_ellipse(ax, y, 0.5, 0.38, 0.13, 0.13), _ellipse(ax, y, 0.33, -0.4, 0.09, 0.09))
    body = _box(x, y, 0.06, 0.6)
    return np.minimum(np.maximum(wings, -spots), body)


def sdf_checker(x, y):
    # 4 x 4 cells of side 0.4 inside [-0.8, 0.8]^2; cell (0, 0) (bottom-left) is filled
    parity = (np.floor((x + 0.8) / 0.4) + np.floor((y + 0.8) / 0.4)) % 2
    lines = np.array([-0.4, 0.0, 0.4])  # interior grid lines only: no seam along the outer border
    dx = np.abs(x[..., None] - lines).min(-1)
    dy = np.abs(y[..., None] - lines).min(-1)
    d = np.minimum(dx, dy)
    cells = np.where(parity == 0, -d, d)
    return np.maximum(cells, _box(x, y, 0.8, 0.8))


def sdf_concentric(x, y):
    r = np.hypot(x, y)
    period = 0.3
    rings = np.abs(np.mod(r, period) - period / 2) - 0.06
    return np.maximum(rings, r - 0.9)


def sdf_dot_grid(x, y):
    s = 0.5  # 4 x 4 dots at +-0.25, +-0.75
    qx = x - s * (np.floor(x / s) + 0.5)
    qy = y - s * (np.floor(y / s) + 0.5)
    return np.maximum(np.hypot(qx, qy) - 0.14, _box(x, y, 1.0, 1.0))


def sdf_chevrons(x, y):
    yy = y + 0.7 * np.abs(x)  # V shapes pointing down
    period = 0.45
    stripes = np.abs(np.mod(yy, period) - period / 2) - 0.1
    return np.maximum(np.maximum(stripes, np.abs(x) - 0.8), np.abs(yy - 0.2) - 0.7)


def sdf_crescent(x, y):
    return np.maximum(np.hypot(x, y) - 0.75, -(np.hypot(x - 0.35, y - 0.15) - 0.6))


def sdf_flower(x, y):
    theta = np.arctan2(y, x)
    r_edge = 0.5 + 0.32 * np.cos(6 * theta)
    return np.maximum((np.hypot(x, y) - r_edge) * 0.5, -(np.hypot(x, y) - 0.16))


SHAPES: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    sdf_ring, sdf_triangle, sdf_hexagon_outline, sdf_star, sdf_cross, sdf_butterfly, sdf_checker,
    sdf_concentric, sdf_dot_grid, sdf_chevrons, sdf_crescent, sdf_flower)


def shape_alpha(class_index: int, x: np.ndarray, y: np.ndarray, pixel: float) -> np.ndarray:
    """Coverage in [0, 1] of class ``class_index``'s shape at canonical points (x, y).

    ``pixel`` is the pixel size in canonical units: the edge is anti-aliased over one pixel.
    """
    d = SHAPES[class_index](x, y)
    return np.clip(0.5 - d / pixel, 0.0, 1.0)


# ------------------------------------------------------------------ backgrounds
BACKGROUNDS = ("noise", "gradient", "stripes")


def _background_head(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """The first draws of every image: the background's two colours and its kind (index into
    :data:`BACKGROUNDS`)."""
    c0, c1 = rng.uniform(0.0, 1.0, 3), rng.uniform(0.0, 1.0, 3)
    return c0, c1, int(rng.integers(3))


def _background(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(R, R, 3) in [0, 1]: smooth noise, gradient or stripes between two colours."""
    c0, c1, kind = _background_head(rng)
    if kind == 0:  # smooth noise: a coarse random grid, bilinearly upsampled
        g = int(rng.integers(3, 7))
        coarse = rng.uniform(0.0, 1.0, (g, g))
        gx = (u + 1) / 2 * (g - 1)
        gy = (v + 1) / 2 * (g - 1)
        x0 = np.clip(np.floor(gx).astype(int), 0, g - 2)
        y0 = np.clip(np.floor(gy).astype(int), 0, g - 2)
        fx, fy = gx - x0, gy - y0
        t = (coarse[y0, x0] * (1 - fx) * (1 - fy) + coarse[y0, x0 + 1] * fx * (1 - fy)
             + coarse[y0 + 1, x0] * (1 - fx) * fy + coarse[y0 + 1, x0 + 1] * fx * fy)
    elif kind == 1:  # linear gradient along a random direction
        a = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + 0.5 * (u * np.cos(a) + v * np.sin(a)) / np.sqrt(2), 0, 1)
    else:  # stripes
        a = rng.uniform(0, np.pi)
        f = rng.uniform(2.0, 6.0) * np.pi
        t = 0.5 + 0.5 * np.sin(f * (u * np.cos(a) + v * np.sin(a)) + rng.uniform(0, 2 * np.pi))
    img = c0 + (c1 - c0) * t[..., None]  # (R, R, 3)
    img = img + rng.normal(0.0, 0.03, img.shape)  # fine grain
    return img


class ProceduralShapes:
    """Class-conditional procedural images, deterministic per ``(seed, index)``.

    Args:
        resolution: image size R (any >= 8).
        num_classes: use the first ``num_classes`` of :data:`CLASS_NAMES` (2..12).
        length: nominal dataset length (indices beyond it also work).
        seed: dataset seed.
        pose: ``"random"``, ``"upright"`` or ``"centred"`` (see the module doc).
    """

    def __init__(self, resolution: int = 32, num_classes: int = len(CLASS_NAMES), length: int = 50_000,
                 seed: int = 0, pose: str = "random") -> None:
        if pose not in POSES:
            raise ValueError(f"pose must be one of {', '.join(POSES)}, got {pose!r}")
        if not 1 <= num_classes <= len(CLASS_NAMES):
            raise ValueError(f"num_classes must be in [1, {len(CLASS_NAMES)}], got {num_classes}")
        if resolution < 8:
            raise ValueError(f"resolution must be >= 8, got {resolution}")
        self.resolution, self.num_classes, self.length, self.seed = resolution, num_classes, length, seed
        self.pose = pose
        self.classes = list(CLASS_NAMES[:num_classes])
        # pixel-centre grid in [-1, 1]
        c = (np.arange(resolution) + 0.5) / resolution * 2 - 1
        self._v, self._u = np.meshgrid(c, c, indexing="ij")  # (R, R): v = row (down), u = column

    def __len__(self) -> int:
        return self.length

    def label(self, index: int) -> int:
        return int(index) % self.num_classes

    def _rng(self, index: int) -> np.random.Generator:
        """Image ``index``'s own random stream (its every draw, in :meth:`render`'s order)."""
        return np.random.default_rng([self.seed, int(index)])

    def background(self, index: int) -> str:
        """The kind of image ``index``'s background: one of :data:`BACKGROUNDS` (without rendering it)."""
        return BACKGROUNDS[_background_head(self._rng(index))[2]]

    def render(self, index: int) -> np.ndarray:
        """(R, R, 3) float32 image in [0, 1] for ``index``."""
        rng = self._rng(index)
        label = self.label(index)
        u, v = self._u, self._v
        bg = _background(rng, u, v)
        # object pose: centre, scale, rotation (canonical frame: x right, y up)
        scale = rng.uniform(0.55, 0.85)
        cx, cy = rng.uniform(-1, 1, 2) * (0.95 - scale)
        ang = rng.uniform(0, 2 * np.pi)
        if self.pose != "random":  # the draws above still happen, so colours match across poses
            ang = 0.0
            if self.pose == "centred":
                scale, cx, cy = 0.75, 0.0, 0.0
        du, dv = u - cx, -(v - cy)
        x = (np.cos(ang) * du + np.sin(ang) * dv) / scale
        y = (-np.sin(ang) * du + np.cos(ang) * dv) / scale
        alpha = shape_alpha(label, x, y, pixel=2.0 / self.resolution / scale)[..., None]  # (R, R, 1)
        fg = rng.uniform(0.0, 1.0, 3)
        # contrast: a light object on a dark background or the other way round
        lum = lambda c: c @ np.array([0.299, 0.587, 0.114])  # noqa: E731
        fg = 0.55 + 0.45 * fg if lum(bg.mean((0, 1))) < 0.5 else 0.45 * fg
        img = bg * (1 - alpha) + fg * alpha
        return np.clip(img, 0.0, 1.0).astype(np.float32)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.render(index)
        return torch.from_numpy(img.transpose(2, 0, 1) * 2 - 1), self.label(index)  # (3, R, R)

    def get_batch(self, indices: Iterable[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked images (b, 3, R, R) in [-1, 1] and labels (b,) long."""
        indices = [int(i) for i in indices]
        imgs = np.stack([self.render(i) for i in indices])  # (b, R, R, 3)
        x = torch.from_numpy(imgs.transpose(0, 3, 1, 2) * 2 - 1)  # (b, 3, R, R)
        return x.contiguous(), torch.tensor([self.label(i) for i in indices], dtype=torch.long)
