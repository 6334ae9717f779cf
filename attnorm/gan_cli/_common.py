"""Shared options of the inference commands."""

from __future__ import annotations

import argparse


def add_generator_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", required=True, help="train-gan checkpoint (checkpoints/latest.pt)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latents")
    p.add_argument("--truncation", type=float, default=None, help="redraw |z| entries above T (e.g. 1.0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-ema", action="store_true", help="use the trained G instead of its EMA")
    p.add_argument("--scale", type=int, default=None,
                   help="enlarge the saved grid (nearest); default: up to ~128 px per image")


def load(args):
    from pathlib import Path

    from attnorm.training.gan import load_generator
    if not Path(args.ckpt).is_file():
        raise SystemExit(f"error: checkpoint {args.ckpt} not found (train-gan writes RUN_DIR/checkpoints/latest.pt)")
    g, extra = load_generator(args.ckpt, device=args.device, use_ema=not args.no_ema)
    return g, extra.get("classes")


def grid_scale(args, resolution: int) -> int:
    return args.scale if args.scale else max(1, 128 // resolution)
