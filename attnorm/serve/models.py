"""Everything ``attnorm serve`` needs from the rest of the package, in one place.

The server and its tests import model code only through this module, so a change of the
package layout touches only the imports below. Defined here are the few pieces the web
app needs that the library does not provide: the default GAN lookup, one interpolation
row for a chosen latent, and the AN layouts of one chosen sample.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from attnorm.checkpoints import (DEFAULT_GAN_WEIGHTS, DEFAULT_INPAINT_WEIGHTS, GAN_SAFETENSORS_FORMAT,
                                 load_gan_generator, load_inpaint_generator)
from attnorm.data.masks import load_mask
from attnorm.data.photos import to_tensor
from attnorm.inference import class_samples, eval_mode, inpaint_image, latents, sample_images
from attnorm.inference import inpaint_layout_images as layout_images
from attnorm.io import to_uint8
from attnorm.models.gan import Generator
from attnorm.viz.grid import colorize_layout, entity_usage, heatmap, make_grid

__all__ = ["DEFAULT_GAN_WEIGHTS", "DEFAULT_INPAINT_WEIGHTS", "GAN_SAFETENSORS_FORMAT", "default_gan_checkpoint",
           "inpaint_image", "interpolate_z", "latents", "layout_images", "load_gan", "load_inpaint_generator",
           "load_mask", "make_grid", "sample_images", "sample_layouts", "to_tensor", "to_uint8"]


def default_gan_checkpoint(weights_dir: str | os.PathLike | None = None) -> Path | None:
    """The shipped GAN weights that ``attnorm serve`` uses without ``--gan-ckpt``: the package's
    default GAN file (:data:`attnorm.checkpoints.DEFAULT_GAN_WEIGHTS`) when it ships, else the first
    ``gan_*.safetensors`` (by name) in the weights folder, else None (no GAN weights in this install)."""
    folder = Path(weights_dir) if weights_dir is not None else DEFAULT_GAN_WEIGHTS.parent
    preferred = folder / DEFAULT_GAN_WEIGHTS.name
    if preferred.is_file():
        return preferred
    found = sorted(folder.glob("gan_*.safetensors"))
    return found[0] if found else None


def load_gan(path: str | os.PathLike, device: str | torch.device = "cpu",
             use_ema: bool = True) -> tuple[Generator, list[str] | None]:
    """(G in eval mode, class names or None) from a ``train-gan`` checkpoint (its EMA weights when it
    kept an EMA) or an ``attnorm export-gan`` ``.safetensors`` file."""
    g, extra = load_gan_generator(path, device=device, use_ema=use_ema)
    return g, extra.get("classes")


@torch.no_grad()
def interpolate_z(G: Generator, z: torch.Tensor, class_a: int, class_b: int, steps: int) -> torch.Tensor:
    """(steps, 3, R, R): one latent ``z`` (z_dim,) under class weights ``(1 - t) onehot(a) + t onehot(b)``,
    ``t = j / (steps - 1)``: the images of one row of ``attnorm interpolate``."""
    dev = next(G.parameters()).device
    t = torch.linspace(0, 1, steps, device=dev)
    w = torch.zeros(steps, G.num_classes, device=dev)
    w[:, class_a] += 1 - t
    w[:, class_b] += t
    with eval_mode(G):
        return G(z.to(dev).reshape(1, -1).expand(steps, -1), w)


def sample_layouts(G: Generator, class_index: int, z: torch.Tensor) -> tuple[np.ndarray, list[dict]]:
    """One generated image (R, R, 3) uint8 and, for each AN layer of G, a dict with its argmax layout in
    colour (``argmax`` (R, R, 3)), each entity's activation map (``maps`` (n, R, R, 3), grey, normalised
    per map) and the entity usage (``used``, ``fractions``), as ``attnorm layouts`` shows them."""
    dev = next(G.parameters()).device
    x, _, layouts = class_samples(G, z.reshape(1, -1), [class_index], dev, return_layouts=True)
    if not layouts:
        raise ValueError("this generator has no AttentiveNorm layer (attention != 'an'): no layout to show")
    res = x.shape[-1]
    layers = []
    for j, s in enumerate(layouts):  # s: (1, n, h, w)
        n = s.shape[1]
        used, frac = entity_usage(s)
        layers.append({"layer": j, "size": int(s.shape[-1]), "num_entities": int(n), "used": int(used),
                       "fractions": [round(f, 4) for f in frac], "argmax": colorize_layout(s[0], res),
                       "maps": np.stack([heatmap(s[0, k], res) for k in range(n)])})
    return to_uint8(x)[0], layers
