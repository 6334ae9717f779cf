"""Categorical interpolation: fixed z per row, class weights moved from class A to class B.

The class weights go through the conditional batch norms' soft-class path; D is not used.

    attnorm interpolate --ckpt C --from 0 --to 3 --steps 8 --rows 4 --out interp.png
"""

from __future__ import annotations

import argparse

from ._common import add_generator_arguments, grid_scale, load


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_generator_arguments(p)
    p.add_argument("--from", dest="class_from", required=True, help="start class (index or name)")
    p.add_argument("--to", dest="class_to", required=True, help="end class (index or name)")
    p.add_argument("--steps", type=int, default=8, help="columns, endpoints included")
    p.add_argument("--rows", type=int, default=4, help="rows, one fixed z each")
    p.add_argument("--out", default="interp.png")


def main_from_args(args) -> int:
    from attnorm.viz.gan import interpolation_images, parse_classes
    from attnorm.viz.grid import make_grid, save_image, to_uint8
    g, names = load(args)
    (a,) = parse_classes(args.class_from, names, g.num_classes)
    (b,) = parse_classes(args.class_to, names, g.num_classes)
    if args.steps < 2:
        raise SystemExit("error: --steps must be >= 2")
    x = interpolation_images(g, a, b, steps=args.steps, rows=args.rows, seed=args.seed,
                             truncation=args.truncation, device=args.device)
    path = save_image(make_grid(to_uint8(x), ncol=args.steps), args.out, scale=grid_scale(args, g.resolution))
    print(f"wrote {path} ({args.rows} rows x {args.steps} steps, class {a} -> {b})")
    return 0
