"""Write a fixed evaluation mask set: the ``masks`` command.

    attnorm masks --out masks/ --n 100 --size 256 --kind free --seed 0

Wraps :func:`attnorm.data.masks.write_eval_masks`: writes ``mask_00000.png`` ...
(8-bit PNG, 255 = hole), ``masks.json`` (settings, per-bin counts, one record per
mask with its hole fraction ``area`` and LaMa-style area bin) and ``masks.csv``,
then prints the number of masks per area bin. Mask ``i`` is a pure function of
``(kind, size, seed, i)``, so the same command always writes the same files.

Kinds: ``box`` (DeepFill v1 random boxes), ``free`` (alias of ``free_form``,
DeepFill v2 brush strokes), ``center`` (centred H/2 x W/2 box) and ``mixed``
(box or free-form, 1/2 each). ``--size`` is one int (square) or ``H W``.
"""

from __future__ import annotations

import argparse
import warnings

from attnorm.data.masks import AREA_BIN_LABELS, MASK_KINDS, write_eval_masks

__all__ = ["KIND_ALIASES", "add_arguments", "format_bin_counts", "main_from_args", "write_masks"]

KIND_ALIASES = {"free": "free_form", "freeform": "free_form", "centre": "center"}


def _kind(name: str) -> str:
    kind = KIND_ALIASES.get(name, name)
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {name!r}; choose from box, free (free_form), center, mixed, binned")
    return kind


def format_bin_counts(records: list[dict]) -> str:
    """A small table: one line per area bin with its count (all bins, zeros included)."""
    n = len(records)
    lines = [f"{'hole area':>10}  {'masks':>6}"]
    for k, label in enumerate(AREA_BIN_LABELS):
        c = sum(r["bin"] == k for r in records)
        lines.append(f"{label:>10}  {c:>6}")
    lines.append(f"{'total':>10}  {n:>6}")
    return "\n".join(lines)


def write_masks(out: str, n: int, size: int | tuple[int, int] = 256, kind: str = "free_form",
                seed: int = 0) -> list[dict]:
    """:func:`write_eval_masks` with the command's kind aliases; returns its records."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the >=60% warning: the command prints the bin table instead
        return write_eval_masks(out, n, size, _kind(kind), seed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--n", type=int, default=100, help="number of masks (default 100)")
    parser.add_argument("--size", type=int, nargs="+", default=[256],
                        help="mask size: one int for a square, or H W (default 256)")
    parser.add_argument("--kind", default="free", choices=["box", "free", "free_form", "center", "mixed", "binned"],
                        help="mask recipe (default free = DeepFill v2 free-form strokes)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")


def main_from_args(args: argparse.Namespace) -> int:
    if len(args.size) not in (1, 2):
        raise SystemExit("--size takes one int (square) or two (H W)")
    size = args.size[0] if len(args.size) == 1 else (args.size[0], args.size[1])
    if args.n < 1:
        raise SystemExit(f"--n must be >= 1, got {args.n}")
    records = write_masks(args.out, args.n, size, args.kind, args.seed)
    print(f"wrote {len(records)} {_kind(args.kind)} masks (size {size}, seed {args.seed}) to {args.out}")
    print(format_bin_counts(records))
    big = sum(r["bin"] == len(AREA_BIN_LABELS) - 1 for r in records)
    if big:
        print(f"note: {big} mask(s) cover >= 60% of the image (LaMa-style evaluation usually drops them)")
    return 0
