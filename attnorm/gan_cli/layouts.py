"""Semantic layouts of the generator's AN layers for generated images.

Each row: the image, the argmax layout of every AN layer (one colour per entity),
then each entity's soft activation map, all upsampled to the image size. Prints how
many entities are the argmax for >= 2% of the pixels.

    attnorm layouts --ckpt C --classes 0,3 --n 2 --out layouts.png
"""

from __future__ import annotations

import argparse
import json

from ._common import add_generator_arguments, grid_scale, load


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_generator_arguments(p)
    p.add_argument("--classes", default=None, help="comma-separated indices or names (default: all)")
    p.add_argument("--n", type=int, default=2, help="images per class")
    p.add_argument("--out", default="layouts.png")
    p.add_argument("--json", default=None, help="also write entity usage as JSON here")


def main_from_args(args) -> int:
    from attnorm.viz.gan import layout_figure, parse_classes
    from attnorm.viz.grid import save_image
    g, names = load(args)
    classes = parse_classes(args.classes, names, g.num_classes)
    grid, usage = layout_figure(g, classes, n=args.n, seed=args.seed, truncation=args.truncation,
                                device=args.device)
    path = save_image(grid, args.out, scale=grid_scale(args, g.resolution))
    print(f"wrote {path}")
    for u in usage:
        print(f"AN layer {u['layer']} ({u['size']}x{u['size']}): {u['used']} of {u['num_entities']} "
              f"entities are argmax for >= 2% of pixels")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(usage, f, indent=2)
    return 0
