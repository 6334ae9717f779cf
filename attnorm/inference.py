"""Running trained generators: inpaint an image; sample, interpolate and show the layouts of the
class-conditional GAN.

Every function runs its generator in eval mode (SSR off, running BN statistics) through
:func:`eval_mode`, which restores the module's mode afterwards, so outputs are a
deterministic function of the inputs and seeds.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from attnorm.io import to_uint8
from attnorm.models.gan import Generator, truncated_normal
from attnorm.viz.grid import colorize_layout, entity_usage, heatmap, make_grid

__all__ = [
    "eval_mode", "inpaint_image", "inpaint_layout_images", "interpolation_images", "latents", "layout_figure",
    "class_samples", "evaluation_samples", "sample_images", "to_uint8",
]


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module.eval()`` inside the block; its training flag is restored on exit, also on errors."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


# ---------------------------------------------------------------------------- inpainting
def _as_batch(t: Tensor, what: str, channels: int) -> Tensor:
    if t.dim() == 2 and channels == 1:
        t = t[None, None]
    elif t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[1] != channels:
        raise ValueError(f"{what} must be ({channels}, H, W) or (b, {channels}, H, W)"
                         f"{' or (H, W)' if channels == 1 else ''}, got shape {tuple(t.shape)}")
    return t


@torch.no_grad()
def inpaint_image(generator: nn.Module, image: Tensor, mask: Tensor, threshold: float = 0.5,
                  return_layout: bool = False):
    """Fill the holes of ``image`` with ``generator``'s refined output; known pixels are untouched.

    Args:
        generator: an :class:`~attnorm.models.inpaint.InpaintGenerator` (or any module
            ``g(x, m) -> (coarse, refined)``). It is run in eval mode (its mode is restored
            afterwards), on its own device.
        image: (3, H, W) or (b, 3, H, W) in [-1, 1], any H and W.
        mask: (H, W), (1, H, W), (1, 1, H, W) (shared by the batch) or (b, 1, H, W) (one per
            image); values >= ``threshold`` are holes, so soft masks are binarised.
        threshold: hole threshold (0.5).
    Returns: a tensor of ``image``'s shape, dtype and device, equal to ``image`` bit for bit
    on known pixels (``where(hole, prediction, image)``); an image whose mask is empty
    is returned unchanged (the generator is not run when no mask has a hole).
    With ``return_layout=True`` it returns ``(result, layout)``: AN's soft layout
    (b, n, ceil(H/4), ceil(W/4)) from the same forward pass (needs ``attention="an"``),
    or None when the generator was not run.
    """
    single = image.dim() == 3
    x = _as_batch(image, "image", 3)
    m = _as_batch(mask, "mask", 1)
    b, _, h, w = x.shape
    if m.shape[-2:] != (h, w):
        raise ValueError(f"mask size {tuple(m.shape[-2:])} does not match image size {(h, w)}")
    if m.shape[0] not in (1, b):
        raise ValueError(f"got {m.shape[0]} masks for {b} images: give one mask or one per image")
    hole = (m >= threshold).expand(b, 1, h, w)  # (b, 1, H, W) bool
    if not bool(hole.any()):
        out = image.clone()
        return (out, None) if return_layout else out
    param = next(generator.parameters(), None)
    device = param.device if param is not None else x.device
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    with eval_mode(generator):
        res = generator(x.to(device, dtype), hole.to(device, dtype),
                        **({"return_layout": True} if return_layout else {}))
    layout = res[2] if return_layout else None
    pred = res[1].to(x.device, x.dtype)
    out = torch.where(hole.expand_as(x), pred, x)  # known pixels: the input's own values
    out = out[0] if single else out
    return (out, layout) if return_layout else out


def inpaint_layout_images(layout: Tensor, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One soft layout (n, h', w') at 1/4 resolution -> (argmax colour map (H, W, 3) uint8 at the
    image size ``(H, W)``, grid of the ``n`` per-entity maps (value 0..1 -> black..white) at 1/4 size)."""
    h, w = size
    n, lh, lw = layout.shape
    f = max(-(-h // lh), -(-w // lw))
    colour = colorize_layout(layout)  # (h', w', 3)
    colour = np.repeat(np.repeat(colour, f, axis=0), f, axis=1)[:h, :w]
    lay = layout[:, :-(-h // f), :-(-w // f)].detach().float().cpu().clamp(0, 1)
    tiles = (lay * 255).round().to(torch.uint8)[..., None].expand(-1, -1, -1, 3).numpy()
    return np.ascontiguousarray(colour), make_grid(tiles, ncol=int(np.ceil(np.sqrt(n))))


# ---------------------------------------------------------------------------- class-conditional GAN
def latents(n: int, z_dim: int, seed: int, truncation: float | None = None) -> Tensor:
    """``n`` latents from ``torch.Generator().manual_seed(seed)`` (optionally truncated)."""
    return truncated_normal((n, z_dim), truncation, generator=torch.Generator().manual_seed(seed))


def evaluation_samples(g, n: int, num_classes: int, z_dim: int, seed: int = 0, batch_size: int = 250,
                       truncation: float | None = None, device="cpu") -> Iterator[tuple[Tensor, Tensor]]:
    """The ``n`` samples that ``attnorm evaluate gan`` scores, batch by batch: sample ``i`` has label
    ``i % num_classes`` and its own latent, drawn batch after batch from one
    ``torch.Generator().manual_seed(seed)``. ``g`` is any callable ``g(z, y)``; an ``nn.Module`` runs in
    eval mode. Yields (labels (b,), images (b, 3, R, R) as float32 on the CPU)."""
    gen = torch.Generator().manual_seed(int(seed))
    labels = torch.arange(n) % num_classes
    mode = eval_mode(g) if isinstance(g, nn.Module) else contextlib.nullcontext()
    with mode, torch.no_grad():
        for i in range(0, n, batch_size):
            y = labels[i:i + batch_size]
            z = truncated_normal((len(y), z_dim), truncation, generator=gen)
            yield y, g(z.to(device), y.to(device)).float().cpu()


@torch.no_grad()
def class_samples(G: Generator, z: Tensor, classes: list[int], device="cpu",
                  return_layouts: bool = False):
    """Every class of ``classes`` with the same latents ``z`` (k, z_dim), class-major: returns
    (images (len(classes) * k, 3, R, R), labels) and, with ``return_layouts``, G's AN layouts."""
    k = z.shape[0]
    zz = z.to(device).repeat(len(classes), 1)  # (len(classes) * k, z_dim)
    y = torch.tensor(classes, device=device).repeat_interleave(k)
    with eval_mode(G):
        if return_layouts:
            x, layouts = G(zz, y, return_layouts=True)
            return x, y, layouts
        return G(zz, y), y


def sample_images(G: Generator, classes: list[int], n: int, seed: int = 0, truncation: float | None = None,
                  device="cpu") -> tuple[Tensor, Tensor]:
    """``n`` images per class, class-major; the same ``n`` latents for every class. Returns (x, labels)."""
    return class_samples(G, latents(n, G.z_dim, seed, truncation), classes, device)


@torch.no_grad()
def interpolation_images(G: Generator, class_a: int, class_b: int, steps: int = 8, rows: int = 4,
                         seed: int = 0, truncation: float | None = None, device="cpu") -> Tensor:
    """(rows * steps, 3, R, R): row r keeps one z; column j uses class weights
    ``(1 - t_j) onehot(a) + t_j onehot(b)``, ``t_j = j / (steps - 1)``, through the CBN soft-class path."""
    t = torch.linspace(0, 1, steps, device=device)  # (steps,)
    w = torch.zeros(steps, G.num_classes, device=device)
    w[:, class_a] += 1 - t
    w[:, class_b] += t  # (steps, C)
    z = latents(rows, G.z_dim, seed, truncation).to(device).repeat_interleave(steps, 0)  # (rows * steps, z_dim)
    with eval_mode(G):
        return G(z, w.repeat(rows, 1))


def layout_figure(G: Generator, classes: list[int], n: int = 2, seed: int = 0, truncation: float | None = None,
                  device="cpu", threshold: float = 0.02) -> tuple[np.ndarray, list[dict]]:
    """One row per generated image: the image, then for every AN layer of G its argmax layout
    in colour and each entity's soft activation map, upsampled to the image size.

    Returns (grid uint8 (H, W, 3), per-layer usage dicts {"layer", "size", "used", "num_entities",
    "fractions"}); ``used`` counts the entities that are the argmax for >= ``threshold`` of the pixels."""
    x, _, layouts = class_samples(G, latents(n, G.z_dim, seed, truncation), classes, device, return_layouts=True)
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
