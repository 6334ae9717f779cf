"""Commands of the inpainting task: ``inpaint``, ``train-inpaint``, ``export-inpaint``, ``masks``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    CommandError, check_image_size, export_arguments, image_output, millions, output_folder, positive_int, run_config,
    run_export, run_training, train_arguments, user_errors,
)


# ---------------------------------------------------------------------------- inpaint
def inpaint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", "--checkpoint", dest="checkpoint", default=None,
                        help="generator checkpoint: save_inpaint_generator .pt, train-inpaint "
                             "RUN/checkpoints/latest.pt (EMA weights if present) or .safetensors (default: the "
                             "shipped attnorm/weights/inpaint_photos.safetensors, trained on 128 px photo crops)")
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
    from attnorm.io import IMAGE_EXTENSIONS
    if image.is_file():
        if not mask.is_file():
            raise FileNotFoundError(f"mask file {mask} not found" + (" (it is a folder)" if mask.is_dir() else ""))
        image_output(str(out))
        return [(image, mask, out)]
    if not image.is_dir():
        raise FileNotFoundError(f"{image} not found")
    if not mask.is_dir():
        raise ValueError("--image is a folder, so --mask must be a folder too")
    output_folder(str(out), "--out")
    masks = {p.stem: p for p in sorted(mask.iterdir()) if p.is_file() and not p.name.startswith(".")}
    pairs = [(p, masks[p.stem], out / f"{p.stem}.png") for p in sorted(image.iterdir())
             if p.is_file() and p.stem in masks and not p.name.startswith(".")]
    if not pairs:
        raise ValueError(f"no image in {image} has a mask with the same name in {mask} "
                         f"(pairs are matched by file name without extension; images: "
                         f"{', '.join(IMAGE_EXTENSIONS[:4])}...)")
    return pairs


def _read_pair(img_path: Path, mask_path: Path, resize: bool):
    """(image (3, H, W) in [-1, 1], mask (1, H, W)); ImageReadError / CommandError for a bad pair."""
    from attnorm.data.masks import load_mask
    from attnorm.data.photos import to_tensor
    from attnorm.io import read_rgb
    x = to_tensor(read_rgb(img_path))  # (3, H, W), upright (EXIF)
    m = load_mask(mask_path, size=x.shape[-2:] if resize else None)
    if m.shape[-2:] != x.shape[-2:]:
        raise CommandError(f"mask {mask_path} is {tuple(m.shape[-2:])} (H, W) but image {img_path} is "
                           f"{tuple(x.shape[-2:])} (as displayed, EXIF orientation applied); draw the mask at the "
                           "image's size or pass --resize-mask")
    return x, m


def inpaint(args: argparse.Namespace) -> int:
    """Inpaint images with a trained generator.

        attnorm inpaint --image photo.png --mask hole.png --out result.png          # shipped weights
        attnorm inpaint --ckpt runs/x/checkpoints/latest.pt --image photos/ --mask masks/ --out results/
        attnorm inpaint --image photo.png --mask hole.png --out result.png --layouts  # + AN layout maps

    Folders are paired by file stem (photos/a.jpg with masks/a.png). Images and masks may
    have any size; a mask is resized (nearest) to its image when they differ only if
    --resize-mask is given, otherwise a size mismatch is an error. Masks: white = hole; grey
    levels are thresholded at 0.5 (>= 128 of 255 is a hole). Known pixels are copied bit for
    bit to the output PNG; an empty mask writes the input.

    --ckpt takes a save_inpaint_generator file, a train-inpaint checkpoint (its EMA weights
    unless --no-ema) or an exported .safetensors; without it the shipped weights are used
    (see attnorm.checkpoints).
    """
    from attnorm.checkpoints import load_inpaint_generator
    from attnorm.errors import ImageReadError, check_device
    from attnorm.inference import inpaint_image, inpaint_layout_images
    from attnorm.io import save_image_file, to_uint8
    check_device(args.device)
    with user_errors():
        pairs = _pairs(Path(args.image), Path(args.mask), Path(args.out))
    folder_mode = Path(args.image).is_dir()
    with user_errors():
        generator = load_inpaint_generator(args.checkpoint, map_location=args.device, use_ema=not args.no_ema)
    if args.layouts and generator.config.get("attention") != "an":
        raise CommandError(f"--layouts needs an AN generator; this one has "
                           f"attention={generator.config.get('attention')!r}")
    skipped: list[tuple[Path, str]] = []
    for img_path, mask_path, out_path in pairs:
        try:
            x, m = _read_pair(img_path, mask_path, args.resize_mask)
        except (ImageReadError, CommandError) as exc:
            if not folder_mode:
                raise
            skipped.append((img_path, str(exc)))
            print(f"warning: skipped {img_path} + {mask_path}: {exc}")
            continue
        y, layout = inpaint_image(generator, x, m, return_layout=True) if args.layouts \
            else (inpaint_image(generator, x, m), None)
        save_image_file(to_uint8(y), out_path)  # atomic: an existing file survives a failed write
        print(f"{img_path} + {mask_path} -> {out_path}")
        if not args.layouts:
            continue
        if layout is None:
            print(f"  {mask_path} has no hole: input copied, no layout (the generator did not run)")
            continue
        colour, entities = inpaint_layout_images(layout[0], tuple(x.shape[-2:]))
        stem = out_path.with_suffix("")
        save_image_file(colour, f"{stem}_layout.png")
        save_image_file(entities, f"{stem}_entities.png")
        print(f"  layouts -> {stem}_layout.png, {stem}_entities.png")
    if skipped:
        done = len(pairs) - len(skipped)
        print(f"inpainted {done} of {len(pairs)} pairs; skipped {len(skipped)} unreadable or mismatched: "
              + ", ".join(str(p) for p, _ in skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
        if not done:
            raise CommandError(f"none of the {len(pairs)} pairs in {args.image} could be read; first problem: "
                               f"{skipped[0][1]}")
    return 0


# ---------------------------------------------------------------------------- train-inpaint
def train_inpaint_arguments(p: argparse.ArgumentParser) -> None:
    train_arguments(p, "attnorm.training.inpaint",
                    "folder of images, searched recursively (default: scikit-image train photos)",
                    {"help": "training crop side (multiple of 4)"})


def train_inpaint(args: argparse.Namespace) -> int:
    """Train the two-stage AN inpainting generator (DeepFill-style critics, WGAN-GP).

        attnorm train-inpaint                                   # small CPU preset: skimage train photos, 64 px
        attnorm train-inpaint --config configs/inpaint_256.json --data /data/places --out runs/inp256 --device cuda
        attnorm train-inpaint --out runs/x --resume steps=4000  # continue a run (its saved config, + overrides)
        attnorm train-inpaint --steps 200 critic=patch width=0.5 # key=value overrides any config key

    Keys: see attnorm.training.inpaint.DEFAULT_CONFIG (critic=global_local|patch|none,
    mask_kind=box|free_form|mixed, warmup_steps, d_steps, lr_g, lr_d, ema_decay, amp, ...).
    The run folder gets config.json, stats.jsonl, samples/ (input | coarse | refined |
    composite | ground truth) and checkpoints/latest.pt, which `attnorm inpaint --ckpt`
    reads directly (EMA weights if present). Under torchrun every rank trains and the
    gradients are averaged over the ranks.
    """
    from attnorm.training.inpaint import InpaintTraining, resolve_config
    cfg, out = run_config(args, resolve_config, "train-inpaint", "inpaint")
    with user_errors():
        trainer = InpaintTraining(cfg, out)
    return run_training(trainer, args.resume, lambda t: (
        f"run folder: {out}  ({len(t.images)} images, {t.cfg['mask_kind']} masks, critic {t.cfg['critic']}, "
        f"G {millions(t.G):.2f} M params, D {millions(t.D):.2f} M)"), overwrite=args.overwrite)


# ---------------------------------------------------------------------------- export-inpaint
def export_inpaint_arguments(p: argparse.ArgumentParser) -> None:
    export_arguments(p, "train-inpaint")


def export_inpaint(args: argparse.Namespace) -> int:
    """Export a train-inpaint checkpoint's generator (EMA weights if present) as .safetensors.

        attnorm export-inpaint runs/inpaint_photos/checkpoints/latest.pt attnorm/weights/inpaint_photos.safetensors

    The file holds the generator's state dict (float32) and, in its metadata, format,
    config (the generator's constructor arguments) and meta (source checkpoint, step, EMA
    or not, the run's training config); `attnorm inpaint --ckpt FILE` reads it.
    """
    from attnorm.checkpoints import export_inpaint_generator
    return run_export(args, export_inpaint_generator)


# ---------------------------------------------------------------------------- masks
#: the command's extra names of mask kinds
KIND_ALIASES = {"free": "free_form", "freeform": "free_form", "centre": "center"}


def mask_kind(name: str) -> str:
    """A mask kind of :data:`attnorm.data.masks.MASK_KINDS` from its name or alias."""
    from attnorm.data.masks import MASK_KINDS
    kind = KIND_ALIASES.get(name, name)
    if kind not in MASK_KINDS:
        raise CommandError(f"unknown mask kind {name!r}; choose from box, free (free_form), center, mixed, binned")
    return kind


def format_bin_counts(records: list[dict]) -> str:
    """A small table: one line per area bin with its count (all bins, zeros included)."""
    from attnorm.data.masks import AREA_BIN_LABELS
    lines = [f"{'hole area':>10}  {'masks':>6}"]
    for k, label in enumerate(AREA_BIN_LABELS):
        lines.append(f"{label:>10}  {sum(r['bin'] == k for r in records):>6}")
    lines.append(f"{'total':>10}  {len(records):>6}")
    return "\n".join(lines)


def masks_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--n", type=positive_int, default=100, help="number of masks (default 100)")
    parser.add_argument("--size", type=positive_int, nargs="+", default=[256],
                        help="mask size: one int for a square, or H W (default 256)")
    parser.add_argument("--kind", default="free", choices=["box", "free", "free_form", "center", "mixed", "binned"],
                        help="mask recipe (default free = DeepFill v2 free-form strokes)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")


def masks(args: argparse.Namespace) -> int:
    """Write a fixed evaluation mask set.

        attnorm masks --out masks/ --n 100 --size 256 --kind free --seed 0

    Writes mask_00000.png ... (8-bit PNG, 255 = hole), masks.json (settings, per-bin
    counts, one record per mask with its hole fraction `area` and LaMa-style area bin) and
    masks.csv, then prints the number of masks per area bin (attnorm.data.masks.write_eval_masks).
    Mask i is a pure function of (kind, size, seed, i), so the same command always writes
    the same files.

    Kinds: box (DeepFill v1 random boxes), free (alias of free_form, DeepFill v2 brush
    strokes), center (centred H/2 x W/2 box) and mixed (box or free-form, 1/2 each).
    --size is one int (square) or H W.
    """
    from attnorm.data.masks import write_eval_masks
    if len(args.size) not in (1, 2):
        raise CommandError("--size takes one int (square) or two (H W)")
    size = args.size[0] if len(args.size) == 1 else (args.size[0], args.size[1])
    h, w = (size, size) if isinstance(size, int) else size
    check_image_size(h, w, f"a mask of --size {' '.join(map(str, args.size))}", "choose a smaller --size")
    output_folder(args.out, "--out")
    kind = mask_kind(args.kind)
    with user_errors():
        records = write_eval_masks(args.out, args.n, size, kind, args.seed)
    print(f"wrote {len(records)} {kind} masks (size {size}, seed {args.seed}) to {args.out}")
    print(format_bin_counts(records))
    return 0
