"""Generate images of chosen classes from a train-gan checkpoint.

    attnorm sample --ckpt runs/x/checkpoints/latest.pt --classes 0,3 --n 16 --out grid.png
    attnorm sample --ckpt C --classes ring,star --n 8 --out grid.png --out-dir imgs/ --truncation 1.0
"""

from __future__ import annotations

import argparse

from ._common import add_generator_arguments, grid_scale, load


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_generator_arguments(p)
    p.add_argument("--classes", default=None, help="comma-separated indices or names (default: all)")
    p.add_argument("--n", type=int, default=8, help="images per class")
    p.add_argument("--cols", type=int, default=None, help="grid columns (default: n, at most 16)")
    p.add_argument("--out", default="samples.png", help="grid image")
    p.add_argument("--out-dir", default=None, help="also write every image as <class>_<i>.png here")


def main_from_args(args) -> int:
    from pathlib import Path

    from attnorm.viz.gan import parse_classes, sample_images
    from attnorm.viz.grid import make_grid, save_image, to_uint8
    g, names = load(args)
    classes = parse_classes(args.classes, names, g.num_classes)
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
