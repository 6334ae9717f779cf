"""Differentiable augmentation (DiffAugment, Zhao et al., NeurIPS 2020) for GAN training.

The same random transformation family is applied to every image D sees, real and fake, in the D
phase and in the G phase; the ops are differentiable, so G's gradient passes through them. D can
then no longer separate real from fake by details the augmentation destroys, which is what stops
it from overfitting a small dataset, and G cannot win with patterns that do not survive a shift.

Policies (comma-separated, applied in this order, each with fresh randomness per image):

* ``color``: brightness ``x + (u - 0.5)``, saturation ``(x - mean_c) * 2u + mean_c``, contrast
  ``(x - mean_chw) * (u + 0.5) + mean_chw``, with ``u ~ U[0, 1)`` per image and op.
* ``translation``: integer shift of up to ``ratio * size`` pixels (ratio 1/8) along each axis,
  uncovered pixels 0 (zero padding).
* ``cutout``: a square of half the image side set to 0 at a random centre (clipped at the border).

Images are (b, c, h, w) in [-1, 1]. ``diff_augment(x, "")`` returns x unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """``"color,translation"`` -> ("color", "translation"); unknown names raise ValueError."""
    names = tuple(p.strip() for p in (policy or "").split(",") if p.strip())
    bad = [p for p in names if p not in POLICIES]
    if bad:
        raise ValueError(f"unknown DiffAugment policy {bad[0]!r}; choose from {', '.join(POLICIES)} "
                         f"(comma-separated, e.g. \"color,translation,cutout\")")
    return names


def _uniform(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype, generator=generator)


def color(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    x = x + (_uniform(x, generator) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(x, generator) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, generator) + 0.5) + mean


def translation(x: Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> Tensor:
    b, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sy, sy + 1, (b, 1, 1), device=x.device, generator=generator)
    tx = torch.randint(-sx, sx + 1, (b, 1, 1), device=x.device, generator=generator)
    # output pixel (i, j) reads input pixel (i - ty, j - tx), i.e. the image moves by (ty, tx)
    rows = torch.arange(h, device=x.device).view(1, h, 1) - ty  # (b, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) - tx  # (b, 1, w)
    inside = ((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)).unsqueeze(1)  # (b, 1, h, w)
    flat = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).view(b, 1, h * w)  # (b, 1, hw)
    moved = x.flatten(2).gather(2, flat.expand(-1, x.shape[1], -1)).view_as(x)
    return moved * inside.to(x.dtype)


def cutout(x: Tensor, ratio: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # centre drawn so that the square may reach past the border by up to half its side
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device, generator=generator)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = ((rows >= cy - ch // 2) & (rows < cy - ch // 2 + ch)
            & (cols >= cx - cw // 2) & (cols < cx - cw // 2 + cw)).unsqueeze(1)  # (b, 1, h, w)
    return x * (~hole).to(x.dtype)


def consistency_transform(x: Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> Tensor:
    """The transformation of consistency regularisation (bCR, Zhao et al. 2021; CR-GAN, Zhang et al. 2020): each
    image mirrored left-right with probability 1/2, then shifted by up to ``ratio * size`` pixels along each axis,
    the uncovered border filled by reflection (the images stay images, unlike DiffAugment's zero padding)."""
    b, c, h, w = x.shape
    flip = torch.rand(b, device=x.device, generator=generator) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    padded = torch.nn.functional.pad(x, (sx, sx, sy, sy), mode="reflect")  # (b, c, h + 2 sy, w + 2 sx)
    oy = torch.randint(0, 2 * sy + 1, (b, 1, 1), device=x.device, generator=generator)
    ox = torch.randint(0, 2 * sx + 1, (b, 1, 1), device=x.device, generator=generator)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + oy  # (b, h, 1): output row i reads padded row i + oy
    cols = torch.arange(w, device=x.device).view(1, 1, w) + ox
    flat = (rows * (w + 2 * sx) + cols).view(b, 1, h * w)
    return padded.flatten(2).gather(2, flat.expand(-1, c, -1)).view(b, c, h, w)


_OPS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: Tensor, policy: str | tuple[str, ...] | None,
                 generator: torch.Generator | None = None) -> Tensor:
    """Apply the policy's ops (see the module docstring) to the batch ``x``."""
    names = parse_policy(policy) if isinstance(policy, str) or policy is None else policy
    for name in names:
        x = _OPS[name](x, generator=generator)
    return x
