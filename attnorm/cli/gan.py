"""Commands of the class-conditional GAN: ``train-gan``, ``sample``, ``interpolate``, ``layouts``, ``export-gan``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (
    CommandError, check_grid, export_arguments, generator_arguments, grid_scale, image_output, int_at_least, load_gan,
    millions, output_file, output_folder, parse_classes, positive_int, run_config, run_export, run_training,
    train_arguments,
)


# ---------------------------------------------------------------------------- train-gan
def train_gan_arguments(p: argparse.ArgumentParser) -> None:
    train_arguments(p, "attnorm.training.gan", "image folder with one subfolder per class (default: procedural shapes)",
                    {"choices": [16, 32, 64, 128]})


def train_gan(args: argparse.Namespace) -> int:
    """Train the class-conditional AN-GAN.

        attnorm train-gan                                  # small CPU preset, procedural shapes, 32 px
        attnorm train-gan --config configs/gan_128.json --data /data/imagenet_folder --out runs/an128
        attnorm train-gan --out runs/x --resume steps=4000 # continue a run (its saved config, + overrides)
        attnorm train-gan --steps 200 attention=sa ch=8    # key=value overrides any config key

    The run folder gets config.json, stats.jsonl, samples/ and checkpoints/latest.pt.
    Under torchrun (WORLD_SIZE set) it trains with DistributedDataParallel.
    """
    from attnorm.training.gan import GANTraining, resolve_config
    cfg, out = run_config(args, resolve_config, "train-gan", "gan")
    try:
        trainer = GANTraining(cfg, out)
    except (ValueError, FileNotFoundError) as exc:  # bad data folder, bad config value
        raise CommandError(str(exc)) from exc
    return run_training(trainer, args.resume, lambda t: (
        f"run folder: {out}  ({t.num_classes} classes, {len(t.dataset)} images, "
        f"G {millions(t.G):.2f} M params, D {millions(t.D):.2f} M)"), overwrite=args.overwrite)


# ---------------------------------------------------------------------------- sample
def sample_arguments(p: argparse.ArgumentParser) -> None:
    generator_arguments(p)
    p.add_argument("--classes", default=None, help="comma-separated indices or names (default: all)")
    p.add_argument("--n", type=positive_int, default=8, help="images per class")
    p.add_argument("--cols", type=positive_int, default=None, help="grid columns (default: n, at most 16)")
    p.add_argument("--out", default="samples.png", help="grid image")
    p.add_argument("--out-dir", default=None, help="also write every image as <class>_<i>.png here")


def sample(args: argparse.Namespace) -> int:
    """Generate images of chosen classes from a train-gan checkpoint.

        attnorm sample --ckpt runs/x/checkpoints/latest.pt --classes 0,3 --n 16 --out grid.png
        attnorm sample --ckpt C --classes ring,star --n 8 --out grid.png --out-dir imgs/ --truncation 1.0
    """
    from attnorm.inference import sample_images
    from attnorm.io import to_uint8
    from attnorm.viz.grid import make_grid, save_image
    image_output(args.out)
    output_folder(args.out_dir, "--out-dir")
    g, names = load_gan(args)
    classes = parse_classes(args.classes, names, g.num_classes)
    check_grid(args, len(classes) * args.n, args.cols or min(args.n, 16), g.resolution)
    x, y = sample_images(g, classes, args.n, seed=args.seed, truncation=args.truncation, device=args.device)
    imgs = to_uint8(x)
    path = save_image(make_grid(imgs, ncol=args.cols or min(args.n, 16)), args.out,
                      scale=grid_scale(args, g.resolution))
    print(f"wrote {path} ({len(classes)} classes x {args.n} images)")
    if args.out_dir:
        for i, (img, lbl) in enumerate(zip(imgs, y.tolist())):
            name = names[lbl] if names else str(lbl)
            save_image(img, Path(args.out_dir) / f"{lbl:03d}_{name}_{i % args.n:03d}.png")
        print(f"wrote {len(imgs)} images to {args.out_dir}")
    return 0


# ---------------------------------------------------------------------------- interpolate
def interpolate_arguments(p: argparse.ArgumentParser) -> None:
    generator_arguments(p)
    p.add_argument("--from", dest="class_from", required=True, help="start class (index or name)")
    p.add_argument("--to", dest="class_to", required=True, help="end class (index or name)")
    p.add_argument("--steps", type=int_at_least(2), default=8, help="columns, endpoints included (>= 2)")
    p.add_argument("--rows", type=positive_int, default=4, help="rows, one fixed z each")
    p.add_argument("--out", default="interp.png")


def interpolate(args: argparse.Namespace) -> int:
    """Categorical interpolation: fixed z per row, class weights moved from class A to class B.

    The class weights go through the conditional batch norms' soft-class path; D is not used.

        attnorm interpolate --ckpt C --from 0 --to 3 --steps 8 --rows 4 --out interp.png
    """
    from attnorm.inference import interpolation_images
    from attnorm.io import to_uint8
    from attnorm.viz.grid import make_grid, save_image
    image_output(args.out)
    g, names = load_gan(args)
    (a,) = _one_class(args.class_from, "--from", names, g.num_classes)
    (b,) = _one_class(args.class_to, "--to", names, g.num_classes)
    check_grid(args, args.rows * args.steps, args.steps, g.resolution)
    x = interpolation_images(g, a, b, steps=args.steps, rows=args.rows, seed=args.seed,
                             truncation=args.truncation, device=args.device)
    path = save_image(make_grid(to_uint8(x), ncol=args.steps), args.out, scale=grid_scale(args, g.resolution))
    print(f"wrote {path} ({args.rows} rows x {args.steps} steps, class {a} -> {b})")
    return 0


def _one_class(spec: str, option: str, names, num_classes: int) -> list[int]:
    classes = parse_classes(spec, names, num_classes)
    if len(classes) != 1:
        raise CommandError(f"{option} takes one class (an index or a name), got {spec!r}")
    return classes


# ---------------------------------------------------------------------------- layouts
def layouts_arguments(p: argparse.ArgumentParser) -> None:
    generator_arguments(p)
    p.add_argument("--classes", default=None, help="comma-separated indices or names (default: all)")
    p.add_argument("--n", type=positive_int, default=2, help="images per class")
    p.add_argument("--out", default="layouts.png")
    p.add_argument("--json", default=None, help="also write entity usage as JSON here")


def layouts(args: argparse.Namespace) -> int:
    """Semantic layouts of the generator's AN layers for generated images.

    Each row: the image, the argmax layout of every AN layer (one colour per entity),
    then each entity's soft activation map, all upsampled to the image size. Prints how
    many entities are the argmax for >= 2% of the pixels.

        attnorm layouts --ckpt C --classes 0,3 --n 2 --out layouts.png
    """
    from attnorm.inference import layout_figure
    from attnorm.viz.grid import save_image
    from attnorm.io import write_json
    image_output(args.out)
    output_file(args.json, "--json")
    g, names = load_gan(args)
    classes = parse_classes(args.classes, names, g.num_classes)
    tiles = 1 + sum(1 + m.num_entities for m in _an_layers(g))
    check_grid(args, len(classes) * args.n * tiles, tiles, g.resolution)
    try:
        grid, usage = layout_figure(g, classes, n=args.n, seed=args.seed, truncation=args.truncation,
                                    device=args.device)
    except ValueError as exc:  # no AN layer
        raise CommandError(str(exc)) from exc
    path = save_image(grid, args.out, scale=grid_scale(args, g.resolution))
    print(f"wrote {path}")
    for u in usage:
        print(f"AN layer {u['layer']} ({u['size']}x{u['size']}): {u['used']} of {u['num_entities']} "
              f"entities are argmax for >= 2% of pixels")
    if args.json:
        write_json(args.json, usage)
    return 0


def _an_layers(g) -> list:
    from attnorm.layers import AttentiveNorm
    return [m for m in g.modules() if isinstance(m, AttentiveNorm)]


# ---------------------------------------------------------------------------- export-gan
def export_gan_arguments(p: argparse.ArgumentParser) -> None:
    export_arguments(p, "train-gan")
    p.add_argument("--standing-stats", type=int_at_least(0), default=0, metavar="BATCHES",
                   help="recompute G's batch-norm statistics over this many batches of fresh samples "
                        "before writing (BigGAN's standing statistics; default 0: keep the running averages)")
    p.add_argument("--standing-batch-size", type=int_at_least(2), default=None, metavar="N",
                   help="samples per standing-statistics batch (default: the run's training batch size)")


def export_gan(args: argparse.Namespace) -> int:
    """Export a train-gan checkpoint's generator (EMA weights if present) as .safetensors.

        attnorm export-gan runs/gan_shipped/checkpoints/latest.pt attnorm/weights/gan_procedural32.safetensors

    The file holds G's state dict and, in its metadata, format, config (G's constructor
    arguments), the class names and meta (source step, EMA or not, the run's training config);
    `attnorm sample/interpolate/layouts --ckpt FILE` and `attnorm evaluate gan --ckpt FILE` read it.
    `--standing-stats 200` replaces the batch norms' running averages by the average batch statistics
    of 200 fresh batches of the training batch size (recorded in the metadata).
    """
    from attnorm.checkpoints import export_gan_generator
    return run_export(args, export_gan_generator, standing_stats=args.standing_stats,
                      standing_batch_size=args.standing_batch_size)
