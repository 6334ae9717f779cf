"""Everything ``attnorm serve`` needs from the rest of the package, in one place.

The server and its tests import model code only through this module, so when the
package layout changes (inference helpers moving to another module) only the
imports below need updating. The functions defined here are the few pieces the
web app needs that no command provides: the default GAN lookup, a GAN loader that
also reads exported ``.safetensors`` files, one interpolation row for a chosen z and
the AN layouts of one chosen sample.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from attnorm.data.masks import load_mask
from attnorm.data.photos import to_tensor
from attnorm.inpaint_commands import DEFAULT_WEIGHTS as DEFAULT_INPAINT_WEIGHTS
from attnorm.inpaint_commands import inpaint_image, layout_images, to_uint8
from attnorm.inpaint_commands import load_generator as load_inpaint_generator
from attnorm.metrics.classifier import read_safetensors
from attnorm.models.gan import Generator
from attnorm.viz.gan import latents, parse_classes, sample_images
from attnorm.viz.grid import colorize_layout, entity_usage, heatmap, make_grid
from attnorm.viz.grid import to_uint8 as batch_to_uint8

__all__ = ["DEFAULT_INPAINT_WEIGHTS", "GAN_SAFETENSORS_FORMAT", "WEIGHTS_DIR", "batch_to_uint8",
           "default_gan_checkpoint", "inpaint_image", "interpolate_z", "latents", "layout_images", "load_gan",
           "load_inpaint_generator", "load_mask", "make_grid", "parse_classes", "sample_images", "sample_layouts",
           "to_tensor", "to_uint8"]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
# metadata "format" of an exported class-conditional generator (.safetensors): "config" holds the
# Generator constructor arguments (JSON), "classes" the class names (JSON list, optional)
GAN_SAFETENSORS_FORMAT = "attnorm-gan-generator-v1"


def default_gan_checkpoint(weights_dir: str | os.PathLike | None = None) -> Path | None:
    """The shipped GAN weights used when ``attnorm serve`` gets no ``--gan-ckpt``: the first
    ``gan_*.safetensors`` (by name) in the package's ``weights/`` folder, or None when none ships."""
    found = sorted(Path(weights_dir or WEIGHTS_DIR).glob("gan_*.safetensors"))
    return found[0] if found else None


def load_gan(path: str | os.PathLike, device: str | torch.device = "cpu",
             use_ema: bool = True) -> tuple[Generator, list[str] | None]:
    """(G in eval mode, class names or None) from a ``train-gan`` checkpoint (its EMA weights when it
    kept an EMA) or from a ``.safetensors`` export (metadata ``format`` = :data:`GAN_SAFETENSORS_FORMAT`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GAN checkpoint {path} not found")
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"):
        state, info = read_safetensors(path)
        if info.get("format") != GAN_SAFETENSORS_FORMAT or "config" not in info:
            raise ValueError(f"{path} is not a class-conditional generator .safetensors file "
                             f"(metadata format {info.get('format')!r}, expected {GAN_SAFETENSORS_FORMAT!r})")
        g = Generator(**json.loads(info["config"]))
        g.load_state_dict(state)
        names = json.loads(info["classes"]) if info.get("classes") else None
        return g.to(device).eval(), names
    from attnorm.training.gan import load_generator
    try:
        g, extra = load_generator(path, device=device, use_ema=use_ema)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a train-gan checkpoint ({type(exc).__name__}: {exc})") from None
    return g, extra.get("classes")


@torch.no_grad()
def interpolate_z(G: Generator, z: torch.Tensor, class_a: int, class_b: int, steps: int) -> torch.Tensor:
    """(steps, 3, R, R): one latent ``z`` (z_dim,) under class weights ``(1 - t) onehot(a) + t onehot(b)``,
    ``t = j / (steps - 1)``: the same images as one row of ``attnorm interpolate``."""
    G.eval()
    dev = next(G.parameters()).device
    t = torch.linspace(0, 1, steps, device=dev)
    w = torch.zeros(steps, G.num_classes, device=dev)
    w[:, class_a] += 1 - t
    w[:, class_b] += t
    return G(z.to(dev).reshape(1, -1).expand(steps, -1), w)


@torch.no_grad()
def sample_layouts(G: Generator, class_index: int, z: torch.Tensor) -> tuple[np.ndarray, list[dict]]:
    """One generated image (R, R, 3) uint8 and, for each AN layer of G, a dict with its argmax layout in
    colour (``argmax`` (R, R, 3)), each entity's activation map (``maps`` (n, R, R, 3), grey, normalised
    per map) and the entity usage (``used``, ``fractions``), as ``attnorm layouts`` shows them."""
    G.eval()
    dev = next(G.parameters()).device
    x, layouts = G(z.to(dev).reshape(1, -1), torch.tensor([class_index], device=dev), return_layouts=True)
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
    return batch_to_uint8(x)[0], layers
