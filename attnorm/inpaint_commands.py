"""Inpaint images with a trained generator: ``inpaint_image`` and the ``inpaint`` command.

Command (module interface of :mod:`attnorm.cli`: ``add_arguments`` / ``main_from_args``)::

    attnorm inpaint --image photo.png --mask hole.png --out result.png          # shipped weights
    attnorm inpaint --ckpt runs/x/checkpoints/latest.pt --image photos/ --mask masks/ --out results/
    attnorm inpaint --image photo.png --mask hole.png --out result.png --layouts  # + AN layout maps

Folders are paired by file stem (``photos/a.jpg`` with ``masks/a.png``). Images and
masks may have any size; a mask is resized (nearest) to its image when they differ
only if ``--resize-mask`` is given, otherwise a size mismatch is an error. Masks:
white = hole; grey levels are thresholded at 0.5 (>= 128 of 255 is a hole). Known
pixels are copied bit for bit to the output PNG; an empty mask writes the input.

Checkpoints (:func:`load_generator`), any of:

* ``{"config": generator.config, "state_dict": ...}`` as written by :func:`save_generator`
  (or a file holding that dict under ``generator``);
* a ``train-inpaint`` training checkpoint (``RUN/checkpoints/latest.pt``): the generator
  config is in its ``extra`` entry; the EMA weights are used when the run kept an EMA;
* a ``.safetensors`` file written by :func:`save_generator_safetensors` (config in the
  metadata), e.g. the shipped :data:`DEFAULT_WEIGHTS`, used when ``--ckpt`` is omitted.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from attnorm.data.masks import load_mask
from attnorm.data.photos import to_tensor
from attnorm.models.inpaint import InpaintGenerator

__all__ = ["DEFAULT_WEIGHTS", "inpaint_image", "layout_images", "load_generator", "save_generator",
           "save_generator_safetensors", "to_uint8", "add_arguments", "main_from_args"]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "inpaint_skimage.safetensors"
SAFETENSORS_FORMAT = "attnorm-inpaint-generator-v1"


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
        generator: an :class:`InpaintGenerator` (or any module ``g(x, m) -> (coarse, refined)``).
            It is run in eval mode (its mode is restored afterwards), on its own device.
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
    was_training = generator.training
    generator.eval()
    try:
        res = generator(x.to(device, dtype), hole.to(device, dtype), **({"return_layout": True} if return_layout
                                                                          else {}))
        refined = res[1]
        layout = res[2] if return_layout else None
    finally:
        generator.train(was_training)
    pred = refined.to(x.device, x.dtype)
    out = torch.where(hole.expand_as(x), pred, x)  # known pixels: the input's own values
    out = out[0] if single else out
    return (out, layout) if return_layout else out


# ---------------------------------------------------------------------------- checkpoints
def save_generator(path: str | os.PathLike, generator: InpaintGenerator) -> None:
    """Save ``{"config", "state_dict"}``: enough to rebuild with :func:`load_generator`."""
    torch.save({"config": dict(generator.config), "state_dict": generator.state_dict()}, path)


def save_generator_safetensors(path: str | os.PathLike, generator: InpaintGenerator,
                               meta: dict | None = None) -> Path:
    """Write the generator's weights as ``.safetensors`` (no ``safetensors`` package needed) with
    ``format``, ``config`` (JSON) and ``meta`` (JSON: provenance, training settings) in the metadata."""
    import json

    from attnorm.metrics.classifier import write_safetensors
    from attnorm.files import atomic_write
    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    info = {"format": SAFETENSORS_FORMAT, "config": json.dumps(dict(generator.config)),
            "meta": json.dumps(meta or {})}
    return atomic_write(path, lambda tmp: write_safetensors(tmp, state, metadata=info), mode=0o644)


def read_generator_metadata(path: str | os.PathLike) -> dict:
    """``{"config": ..., "meta": ...}`` of a generator ``.safetensors`` file."""
    import json

    from attnorm.metrics.classifier import read_safetensors
    _state, info = read_safetensors(path)
    return {"config": json.loads(info.get("config", "{}")), "meta": json.loads(info.get("meta", "{}"))}


def load_generator(path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu",
                   use_ema: bool = True) -> InpaintGenerator:
    """Rebuild an :class:`InpaintGenerator` (eval mode) from any checkpoint format of the module
    docstring; ``path=None`` loads the shipped :data:`DEFAULT_WEIGHTS`. ``use_ema`` picks the
    EMA weights of a training checkpoint (when it has them) over the trained ones."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        hint = (" (the shipped weights are missing from this install; pass --ckpt)"
                if path == DEFAULT_WEIGHTS else "")
        raise FileNotFoundError(f"generator checkpoint {path} not found{hint}")
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"):
        import json

        from attnorm.metrics.classifier import read_safetensors
        state, info = read_safetensors(path)
        if info.get("format") != SAFETENSORS_FORMAT or "config" not in info:
            raise ValueError(f"{path} is not an inpainting generator .safetensors file "
                             f"(metadata format {info.get('format')!r})")
        g = InpaintGenerator(**json.loads(info["config"]))
        g.load_state_dict(state)
        return g.to(map_location).eval()
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not an inpainting generator checkpoint")
    from attnorm.training.loop import CHECKPOINT_FORMAT
    if ckpt.get("format") == CHECKPOINT_FORMAT:
        from attnorm.training.inpaint import generator_from_training_checkpoint
        if "generator" not in (ckpt.get("extra") or {}) or (ckpt.get("extra") or {}).get("task") != "inpaint":
            raise ValueError(f"{path} is a training checkpoint but not of train-inpaint")
        return generator_from_training_checkpoint(ckpt, use_ema=use_ema).to(map_location)
    if "config" not in ckpt and isinstance(ckpt.get("generator"), dict):
        ckpt = ckpt["generator"]
    if "config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not an inpainting generator checkpoint (needs 'config' and 'state_dict'; "
                         f"found keys {sorted(ckpt)})")
    g = InpaintGenerator(**ckpt["config"])
    g.load_state_dict(ckpt["state_dict"])
    return g.eval()


def layout_images(layout: Tensor, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One soft layout (n, h', w') at 1/4 resolution -> (argmax colour map (H, W, 3) uint8 at the
    image size ``(H, W)``, grid of the ``n`` per-entity maps (value 0..1 -> black..white) at 1/4 size)."""
    from attnorm.viz.grid import colorize_layout, make_grid
    h, w = size
    n, lh, lw = layout.shape
    f = max(-(-h // lh), -(-w // lw))
    colour = colorize_layout(layout)  # (h', w', 3)
    colour = np.repeat(np.repeat(colour, f, axis=0), f, axis=1)[:h, :w]
    lay = layout[:, :-(-h // f), :-(-w // f)].detach().float().cpu().clamp(0, 1)
    tiles = (lay * 255).round().to(torch.uint8)[..., None].expand(-1, -1, -1, 3).numpy()
    return np.ascontiguousarray(colour), make_grid(tiles, ncol=int(np.ceil(np.sqrt(n))))


def to_uint8(x: Tensor) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W, 3) uint8 (inverse of :func:`attnorm.data.photos.to_tensor`)."""
    return ((x.detach().cpu().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


# ---------------------------------------------------------------------------- command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", "--checkpoint", dest="checkpoint", default=None,
                        help="generator checkpoint: save_generator .pt, train-inpaint RUN/checkpoints/latest.pt "
                             "(EMA weights if present) or .safetensors (default: the shipped "
                             "attnorm/weights/inpaint_skimage.safetensors, trained on 128 px skimage crops)")
    parser.add_argument("--image", required=True, help="image file, or folder of images")
    parser.add_argument("--mask", required=True,
                        help="mask file (white = hole; non-binary masks are thresholded at 0.5, i.e. grey "
                             ">= 128 of 255 is a hole), or folder paired with --image by file stem; it must have "
                             "the image's size unless --resize-mask")
    parser.add_argument("--out", required=True, help="output file, or folder when --image is a folder")
    parser.add_argument("--resize-mask", action="store_true", help="resize masks (nearest) to their image")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--layouts", action="store_true",
                        help="also write the attentive branch's AN layouts next to each output: OUT_layout.png "
                             "(argmax entity colour map, image size) and OUT_entities.png (one map per entity, "
                             "1/4 size, white = 1)")
    parser.add_argument("--no-ema", action="store_true", help="training checkpoints: use G instead of its EMA")


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
    try:
        generator = load_generator(args.checkpoint, map_location=args.device, use_ema=not args.no_ema)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.layouts and generator.config.get("attention") != "an":
        print(f"error: --layouts needs an AN generator; this one has attention={generator.config.get('attention')!r}",
              file=sys.stderr)
        return 2
    try:
        pairs = _pairs(Path(args.image), Path(args.mask), Path(args.out))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for img_path, mask_path, out_path in pairs:
        with Image.open(img_path) as im:
            x = to_tensor(im.convert("RGB"))  # (3, H, W)
        m = load_mask(mask_path, size=x.shape[-2:] if args.resize_mask else None)
        if m.shape[-2:] != x.shape[-2:]:
            print(f"error: mask {mask_path} is {tuple(m.shape[-2:])} (H, W) but image {img_path} is "
                  f"{tuple(x.shape[-2:])}; pass --resize-mask to resize it", file=sys.stderr)
            return 2
        if args.layouts:
            y, layout = inpaint_image(generator, x, m, return_layout=True)
        else:
            y, layout = inpaint_image(generator, x, m), None
        Image.fromarray(to_uint8(y)).save(out_path)
        print(f"{img_path} + {mask_path} -> {out_path}")
        if args.layouts:
            if layout is None:
                print(f"  {mask_path} has no hole: input copied, no layout (the generator did not run)")
                continue
            colour, entities = layout_images(layout[0], tuple(x.shape[-2:]))
            stem = out_path.with_suffix("")
            Image.fromarray(colour).save(f"{stem}_layout.png")
            Image.fromarray(entities).save(f"{stem}_entities.png")
            print(f"  layouts -> {stem}_layout.png, {stem}_entities.png")
    return 0
