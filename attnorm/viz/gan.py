"""Pictures from a trained class-conditional generator: samples, class interpolation, AN layouts.

All functions run G in eval mode (SSR off, running BN statistics), so outputs are
a deterministic function of the seed.
"""

from __future__ import annotations

import numpy as np
import torch

from attnorm.models.gan import Generator, truncated_normal

from .grid import colorize_layout, entity_usage, heatmap, make_grid, to_uint8


def parse_classes(spec: str | None, class_names: list[str] | None, num_classes: int) -> list[int]:
    """``"0,3"`` or ``"ring,star"`` (names from the checkpoint) or None (all classes) -> indices."""
    if spec is None or spec.strip() in ("", "all"):
        return list(range(num_classes))
    out = []
    for tok in (t.strip() for t in spec.split(",") if t.strip()):
        if tok.lstrip("-").isdigit():
            idx = int(tok)
        elif class_names and tok in class_names:
            idx = class_names.index(tok)
        else:
            raise ValueError(f"unknown class {tok!r}; use indices 0..{num_classes - 1}"
                             + (f" or names {class_names}" if class_names else ""))
        if not 0 <= idx < num_classes:
            raise ValueError(f"class {idx} out of range 0..{num_classes - 1}")
        out.append(idx)
    return out


def latents(n: int, z_dim: int, seed: int, truncation: float | None = None) -> torch.Tensor:
    return truncated_normal((n, z_dim), truncation, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sample_images(G: Generator, classes: list[int], n: int, seed: int = 0, truncation: float | None = None,
                  device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images per class, class-major; the same ``n`` latents for every class. Returns (x, labels)."""
    G.eval()
    z = latents(n, G.z_dim, seed, truncation).to(device).repeat(len(classes), 1)  # (C * n, z_dim)
    y = torch.tensor(classes, device=device).repeat_interleave(n)
    return G(z, y), y


@torch.no_grad()
def interpolation_images(G: Generator, class_a: int, class_b: int, steps: int = 8, rows: int = 4,
                         seed: int = 0, truncation: float | None = None, device="cpu") -> torch.Tensor:
    """(rows * steps, 3, R, R): row r keeps one z; column j uses class weights
    ``(1 - t_j) onehot(a) + t_j onehot(b)``, ``t_j = j / (steps - 1)``, through the CBN soft-class path."""
    G.eval()
    t = torch.linspace(0, 1, steps, device=device)  # (steps,)
    w = torch.zeros(steps, G.num_classes, device=device)
    w[:, class_a] += 1 - t
    w[:, class_b] += t  # (steps, C)
    z = latents(rows, G.z_dim, seed, truncation).to(device).repeat_interleave(steps, 0)  # (rows * steps, z_dim)
    return G(z, w.repeat(rows, 1))


@torch.no_grad()
def layout_figure(G: Generator, classes: list[int], n: int = 2, seed: int = 0, truncation: float | None = None,
                  device="cpu", threshold: float = 0.02) -> tuple[np.ndarray, list[dict]]:
    """One row per generated image: the image, then for every AN layer of G its argmax layout
    in colour and each entity's soft activation map, upsampled to the image size.

    Returns (grid uint8 (H, W, 3), per-layer usage dicts {"layer", "size", "used", "fractions"})."""
    G.eval()
    z = latents(n, G.z_dim, seed, truncation).to(device).repeat(len(classes), 1)
    y = torch.tensor(classes, device=device).repeat_interleave(n)
    x, layouts = G(z, y, return_layouts=True)
    if not layouts:
        raise ValueError("this generator has no AttentiveNorm layer (attention != 'an'): no layout to show")
    res = x.shape[-1]
    imgs = to_uint8(x)  # (b, R, R, 3)
    tiles, ncol = [], 0
    for i in range(x.shape[0]):
        row = [imgs[i]]
        for s in layouts:  # s: (b, n, h, w)
            row.append(colorize_layout(s[i], res))
            row += [heatmap(s[i, k], res) for k in range(s.shape[1])]
        ncol = len(row)
        tiles += row
    usage = []
    for j, s in enumerate(layouts):
        used, frac = entity_usage(s, threshold)
        usage.append({"layer": j, "size": int(s.shape[-1]), "used": used, "num_entities": int(s.shape[1]),
                      "fractions": [round(f, 4) for f in frac]})
    return make_grid(np.stack(tiles), ncol=ncol), usage
