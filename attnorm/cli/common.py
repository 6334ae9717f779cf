"""What the command modules share: user errors, ``key=value`` overrides, the training commands'
options and run, the generator options of the GAN commands."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterator


class CommandError(Exception):
    """Bad user input: :func:`attnorm.cli.main` prints ``attnorm <command>: error: <message>``
    on stderr and returns 2 (no traceback)."""


@contextlib.contextmanager
def user_errors(*types: type[BaseException]) -> Iterator[None]:
    """Turn the library's ``types`` exceptions (default: FileNotFoundError, ValueError) into
    :class:`CommandError`, i.e. one error line instead of a traceback."""
    try:
        yield
    except (types or (FileNotFoundError, ValueError)) as exc:
        raise CommandError(str(exc)) from exc


def parse_overrides(items: list[str]) -> dict:
    """``["steps=10", "attention=sa", "betas=[0,0.9]"]`` -> dict (values parsed as JSON when possible)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise CommandError(f"expected key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def intermixed(parser: argparse.ArgumentParser) -> None:
    """Let ``key=value`` positionals come before, between or after the options."""
    parser.parse_args = parser.parse_intermixed_args


# ---------------------------------------------------------------------------- training commands
def train_arguments(p: argparse.ArgumentParser, defaults: str, data_help: str, resolution_kw: dict) -> None:
    """The options of ``train-gan`` / ``train-inpaint``: ``defaults`` names the DEFAULT_CONFIG
    module, ``resolution_kw`` shapes ``--resolution``."""
    p.add_argument("--config", help=f"JSON config file (keys of {defaults}.DEFAULT_CONFIG)")
    p.add_argument("--data", help=data_help)
    p.add_argument("--out", help="run folder (default: runs/<task>-<time>)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--resolution", type=int, **resolution_kw)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (values parsed as JSON)")
    intermixed(p)


def train_overrides(args: argparse.Namespace) -> dict:
    """The options given on the command line, then the ``key=value`` overrides."""
    ov = {}
    for key, val in (("data", args.data), ("steps", args.steps), ("batch_size", args.batch_size),
                     ("resolution", args.resolution), ("seed", args.seed), ("device", args.device)):
        if val is not None:
            ov[key] = val
    ov.update(parse_overrides(args.overrides))
    return ov


def run_config(args: argparse.Namespace, resolve: Callable, task: str, prefix: str) -> tuple[dict, Path]:
    """The run's config and folder from ``--config/--out/--resume`` and the overrides.

    ``resolve(config_file, overrides, base=None)`` layers the task's config; a resumed run
    starts from the ``config.json`` saved in its folder.
    """
    overrides = train_overrides(args)
    with user_errors():
        if args.resume:
            if not args.out:
                raise CommandError("--resume needs --out RUN_DIR (the run to continue)")
            saved = Path(args.out) / "config.json"
            if not saved.exists():
                raise CommandError(f"{saved} not found; is {args.out} a {task} run folder?")
            cfg = resolve(args.config, overrides, base=json.loads(saved.read_text()))
        else:
            cfg = resolve(args.config, overrides)
    return cfg, Path(args.out or f"runs/{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")


def run_training(trainer, resume: bool, describe: Callable[[object], str]) -> int:
    """Train (rank 0 prints ``describe(trainer)`` first and the stop line after); 1 if a loss
    went non-finite, 2 if ``--resume`` finds no checkpoint."""
    from attnorm.training.distributed import close_process_group
    from attnorm.training.loop import NonFiniteLossError
    main_rank = trainer.rank == 0
    if main_rank:
        print(describe(trainer))
    try:
        loop = trainer.run(resume=resume)
    except NonFiniteLossError as exc:
        close_process_group(False)
        if main_rank:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        close_process_group(False)
        raise CommandError(str(exc)) from exc
    close_process_group(True)
    if main_rank:
        print(f"stopped at step {loop.step} ({loop.stop_reason}); checkpoint {loop.checkpoint_path}")
    return 0


def millions(module) -> float:
    """Parameter count in millions."""
    return sum(p.numel() for p in module.parameters()) / 1e6


# ---------------------------------------------------------------------------- GAN generator commands
def generator_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the commands that run a train-gan generator."""
    p.add_argument("--ckpt", default=None,
                   help="train-gan checkpoint (checkpoints/latest.pt) or exported .safetensors "
                        "(default: the shipped attnorm/weights/gan_procedural32.safetensors)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latents")
    p.add_argument("--truncation", type=float, default=None, help="redraw |z| entries above T (e.g. 1.0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-ema", action="store_true", help="use the trained G instead of its EMA")
    p.add_argument("--scale", type=int, default=None,
                   help="enlarge the saved grid (nearest); default: up to ~128 px per image")


def load_gan(args: argparse.Namespace):
    """(G, class names) of ``--ckpt``."""
    from attnorm.checkpoints import DEFAULT_GAN_WEIGHTS, load_gan_generator
    if args.ckpt is None and not DEFAULT_GAN_WEIGHTS.is_file():
        raise CommandError(f"the shipped GAN weights {DEFAULT_GAN_WEIGHTS} are missing from this install; "
                           "pass --ckpt RUN_DIR/checkpoints/latest.pt")
    if args.ckpt is not None and not Path(args.ckpt).is_file():
        raise CommandError(f"checkpoint {args.ckpt} not found (train-gan writes RUN_DIR/checkpoints/latest.pt)")
    try:
        g, extra = load_gan_generator(args.ckpt, device=args.device, use_ema=not args.no_ema)
    except Exception as exc:  # any failure to read a user-given file is a user error
        raise CommandError(f"could not load a train-gan generator from {args.ckpt}: {exc}") from exc
    return g, extra.get("classes")


def grid_scale(args: argparse.Namespace, resolution: int) -> int:
    return args.scale if args.scale else max(1, 128 // resolution)


def parse_classes(spec: str | None, class_names: list[str] | None, num_classes: int) -> list[int]:
    """``"0,3"`` or ``"ring,star"`` (names from the checkpoint) or None / ``"all"`` (all classes) -> indices."""
    if spec is None or spec.strip() in ("", "all"):
        return list(range(num_classes))
    out = []
    for tok in (t.strip() for t in spec.split(",") if t.strip()):
        if tok.lstrip("-").isdigit():
            idx = int(tok)
        elif class_names and tok in class_names:
            idx = class_names.index(tok)
        else:
            raise CommandError(f"unknown class {tok!r}; use indices 0..{num_classes - 1}"
                               + (f" or names {class_names}" if class_names else ""))
        if not 0 <= idx < num_classes:
            raise CommandError(f"class {idx} out of range 0..{num_classes - 1}")
        out.append(idx)
    return out
