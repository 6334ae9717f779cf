"""Inpaint images with a trained generator: ``inpaint_image`` and the ``inpaint`` command.

Command (module interface of :mod:`attnorm.cli`: ``add_arguments`` / ``main_from_args``)::

    attnorm inpaint --checkpoint g.pt --image photo.png --mask hole.png --out result.png
    attnorm inpaint --checkpoint g.pt --image photos/ --mask masks/ --out results/

Folders are paired by file stem (``photos/a.jpg`` with ``masks/a.png``). Images and
masks may have any size; a mask is resized (nearest) to its image when they differ
only if ``--resize-mask`` is given, otherwise a size mismatch is an error.

Checkpoints: ``{"config": generator.config, "state_dict": ...}`` as written by
:func:`save_generator`; a file holding only a ``generator`` sub-dict of that form
is also accepted.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from attnorm.data.masks import load_mask
from attnorm.data.photos import to_tensor
from attnorm.models.inpaint import InpaintGenerator

__all__ = ["inpaint_image", "load_generator", "save_generator", "to_uint8", "add_arguments", "main_from_args"]


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
def inpaint_image(generator: nn.Module, image: Tensor, mask: Tensor, threshold: float = 0.5) -> Tensor:
    """Fill the holes of ``image`` with ``generator``'s refined output; known pixels are untouched.

    Args:
        generator: an :class:`InpaintGenerator` (or any module ``g(x, m) -> (coarse, refined)``).
            It is run in eval mode (its mode is restored afterwards), on its own device.
        image: (3, H, W) or (b, 3, H, W) in [-1, 1], any H and W.
        mask: (H, W), (1, H, W), (1, 1, H, W) (shared by the batch) or (b, 1, H, W) (one per
            image); values >= ``threshold`` are holes, so soft masks are binarised.
        threshold: hole threshold (0.5).
    Returns: a tensor of ``image``'s shape, dtype and device, equal to ``image`` bit for bit
    on known pixels (``where(hole, prediction, image)``); an image whose mask is empty
    is returned unchanged (the generator is not run when no mask has a hole).
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
        return out
    param = next(generator.parameters(), None)
    device = param.device if param is not None else x.device
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = generator.training
    generator.eval()
    try:
        _coarse, refined = generator(x.to(device, dtype), hole.to(device, dtype))[:2]
    finally:
        generator.train(was_training)
    pred = refined.to(x.device, x.dtype)
    out = torch.where(hole.expand_as(x), pred, x)  # known pixels: the input's own values
    return out[0] if single else out


# ---------------------------------------------------------------------------- checkpoints
def save_generator(path: str | os.PathLike, generator: InpaintGenerator) -> None:
    """Save ``{"config", "state_dict"}``: enough to rebuild with :func:`load_generator`."""
    torch.save({"config": dict(generator.config), "state_dict": generator.state_dict()}, path)


def load_generator(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> InpaintGenerator:
    """Rebuild an :class:`InpaintGenerator` from a checkpoint written by :func:`save_generator`."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if "config" not in ckpt and isinstance(ckpt.get("generator"), dict):
        ckpt = ckpt["generator"]
    if "config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not an inpainting generator checkpoint (needs 'config' and 'state_dict'; "
                         f"found keys {sorted(ckpt)})")
    g = InpaintGenerator(**ckpt["config"])
    g.load_state_dict(ckpt["state_dict"])
    return g.eval()


def to_uint8(x: Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8 (inverse of :func:`attnorm.data.photos.to_tensor`)."""
    return ((x.detach().cpu().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------- command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", "--checkpoint", dest="checkpoint", required=True,
                        help="generator checkpoint (save_generator format)")
    parser.add_argument("--image", required=True, help="image file, or folder of images")
    parser.add_argument("--mask", required=True,
                        help="mask file (white = hole; non-binary masks are thresholded at 0.5), "
                             "or folder paired with --image by file stem")
    parser.add_argument("--out", required=True, help="output file, or folder when --image is a folder")
    parser.add_argument("--resize-mask", action="store_true", help="resize masks (nearest) to their image")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def _pairs(image: Path, mask: Path, out: Path) -> list[tuple[Path, Path, Path]]:
    if image.is_file():
        if not mask.is_file():
            raise FileNotFoundError(f"mask file {mask} not found")
        return [(image, mask, out)]
    if not image.is_dir():
        raise FileNotFoundError(f"{image} not found")
    if not mask.is_dir():
        raise ValueError("--image is a folder, so --mask must be a folder too")
    masks = {p.stem: p for p in sorted(mask.iterdir()) if p.is_file()}
    pairs = []
    for p in sorted(image.iterdir()):
        if p.is_file() and p.stem in masks:
            pairs.append((p, masks[p.stem], out / f"{p.stem}.png"))
    if not pairs:
        raise ValueError(f"no image in {image} has a mask with the same name in {mask}")
    out.mkdir(parents=True, exist_ok=True)
    return pairs


def main_from_args(args: argparse.Namespace) -> int:
    generator = load_generator(args.checkpoint, map_location=args.device)
    for img_path, mask_path, out_path in _pairs(Path(args.image), Path(args.mask), Path(args.out)):
        with Image.open(img_path) as im:
            x = to_tensor(im.convert("RGB"))  # (3, H, W)
        m = load_mask(mask_path, size=x.shape[-2:] if args.resize_mask else None)
        if m.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"mask {mask_path} is {tuple(m.shape[-2:])} but image {img_path} is "
                             f"{tuple(x.shape[-2:])}; pass --resize-mask to resize it")
        y = inpaint_image(generator, x, m)
        Image.fromarray(to_uint8(y)).save(out_path)
        print(f"{img_path} + {mask_path} -> {out_path}")
    return 0
