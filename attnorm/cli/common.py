"""What the command modules share: user errors, ``key=value`` overrides, the training commands'
options and run, the generator options of the GAN commands."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from attnorm.errors import UserError


class CommandError(UserError):
    """Bad user input found by a command: :func:`attnorm.cli.main` prints
    ``attnorm <command>: error: <message>`` on stderr and returns 2 (no traceback)."""


@contextlib.contextmanager
def user_errors(*types: type[BaseException]) -> Iterator[None]:
    """Turn the library's ``types`` exceptions (default: FileNotFoundError, ValueError) into
    :class:`CommandError`, i.e. one error line instead of a traceback."""
    try:
        yield
    except (types or (FileNotFoundError, ValueError)) as exc:
        raise CommandError(str(exc)) from exc


# ---------------------------------------------------------------------------- argument types
def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in ``[low, high]``."""
    def parse(text: str) -> int:
        value = _number(text, int, "an integer")
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
seed_int = int_at_least(0, 2 ** 32 - 1)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _number(text, float, "a number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def int_list(low: int = 1, high: int | None = None) -> Callable[[str], tuple[int, ...]]:
    """argparse type: comma-separated integers, each in ``[low, high]``."""
    one = int_at_least(low, high)

    def parse(text: str) -> tuple[int, ...]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
        try:
            return tuple(one(t) for t in items)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (in {text!r}; expected comma-separated integers)") from None
    parse.__name__ = "integer list"
    return parse


def output_file(path: str | None, what: str, extensions: tuple[str, ...] | None = None) -> Path | None:
    """Check an output file option before any work (:func:`attnorm.io.check_output_path`)."""
    from attnorm.io import check_output_path
    return None if path is None else check_output_path(path, what, extensions)


def output_folder(path: str | None, what: str) -> Path | None:
    from attnorm.io import check_output_path
    return None if path is None else check_output_path(path, what, folder=True)


def image_output(path: str | None, what: str = "--out") -> Path | None:
    from attnorm.io import IMAGE_EXTENSIONS
    return output_file(path, what, IMAGE_EXTENSIONS)


def check_image_size(height: int, width: int, what: str, fix: str) -> None:
    """CommandError when an image to write would have more than :func:`attnorm.io.max_image_pixels` pixels."""
    from attnorm.io import max_image_pixels
    limit = max_image_pixels()
    if height * width > limit:
        raise CommandError(f"{what} would be {width}x{height} = {height * width:,} pixels, over the limit "
                           f"of {limit:,} (ATTNORM_MAX_IMAGE_PIXELS); {fix}")


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
    p.add_argument("--steps", type=positive_int, help="train until this step (with --resume: the new total)")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--resolution", type=positive_int, **resolution_kw)
    p.add_argument("--seed", type=seed_int)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its checkpoint (changed lr_g/lr_d/betas are applied)")
    how.add_argument("--overwrite", action="store_true",
                     help="start over in an --out that already holds a run (its checkpoint, stats and samples "
                          "are removed); without it such a folder is refused")
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
    from attnorm.errors import check_device
    from attnorm.training.config import check_run_folder, read_config_file
    overrides = train_overrides(args)
    out = Path(args.out or f"runs/{prefix}-{time.strftime('%Y%m%d-%H%M%S')}")
    output_folder(str(out), "--out")
    with user_errors():
        if args.resume:
            if not args.out:
                raise CommandError("--resume needs --out RUN_DIR (the run to continue)")
            saved = Path(args.out) / "config.json"
            if not saved.exists():
                raise CommandError(f"{saved} not found; is {args.out} a {task} run folder?")
            base = read_config_file(saved)
            unknown = sorted(set(base) - set(resolve()))
            if unknown:
                raise CommandError(f"{saved} is not the config of a {task} run (unknown keys {unknown[:4]}); "
                                   f"resume a run with the command that started it")
            cfg = resolve(args.config, overrides, base=base)
        else:
            cfg = resolve(args.config, overrides)
        check_run_folder(out, args.resume, getattr(args, "overwrite", False))
        check_device(cfg["device"])
    return cfg, out


def run_training(trainer, resume: bool, describe: Callable[[object], str], overwrite: bool = False) -> int:
    """Train (rank 0 prints ``describe(trainer)`` first and the stop line after); 0 when done,
    1 if a loss went non-finite, 130 when interrupted (after saving a checkpoint); user errors
    (no checkpoint to resume, a corrupt one, a full disk) propagate to the CLI's error line."""
    from attnorm.training.distributed import close_process_group
    from attnorm.training.loop import NonFiniteLossError
    main_rank = trainer.rank == 0
    if main_rank:
        print(describe(trainer))
    try:
        loop = trainer.run(resume=resume, overwrite=overwrite)
    except NonFiniteLossError as exc:
        close_process_group(False)
        if main_rank:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        close_process_group(False)
        raise CommandError(str(exc)) from exc
    except BaseException:
        close_process_group(False)
        raise
    close_process_group(True)
    if loop.stop_reason == "interrupted":
        if main_rank:
            print(f"interrupted at step {loop.step}; checkpoint {loop.checkpoint_path} saved; continue with "
                  f"--resume", file=sys.stderr)
        return 130
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
                        "(default: the shipped attnorm/weights/gan_centred16.safetensors; the random-pose "
                        "model: attnorm/weights/gan_procedural32.safetensors)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the latents")
    p.add_argument("--truncation", type=positive_float, default=None, help="redraw |z| entries above T (e.g. 1.0)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-ema", action="store_true", help="use the trained G instead of its EMA")
    p.add_argument("--scale", type=positive_int, default=None,
                   help="enlarge the saved grid (nearest); default: up to ~128 px per image")


def load_gan(args: argparse.Namespace):
    """(G, class names) of ``--ckpt`` (default: the shipped GAN weights); user errors (missing,
    unsafe, corrupt or other-task checkpoint, bad device) as one line."""
    from attnorm.checkpoints import DEFAULT_GAN_WEIGHTS, load_gan_generator
    from attnorm.errors import check_device
    check_device(args.device)
    if args.ckpt is None and not DEFAULT_GAN_WEIGHTS.is_file():
        raise CommandError(f"the shipped GAN weights {DEFAULT_GAN_WEIGHTS} are missing from this install; "
                           "pass --ckpt RUN_DIR/checkpoints/latest.pt")
    if args.ckpt is not None and not Path(args.ckpt).is_file():
        raise CommandError(f"checkpoint {args.ckpt} not found (train-gan writes RUN_DIR/checkpoints/latest.pt)")
    try:
        g, extra = load_gan_generator(args.ckpt, device=args.device, use_ema=not args.no_ema)
    except UserError:
        raise
    except Exception as exc:  # any failure to read a user-given file is a user error
        raise CommandError(f"could not load a train-gan generator from {args.ckpt}: {exc}") from exc
    return g, extra.get("classes")


def grid_scale(args: argparse.Namespace, resolution: int) -> int:
    return args.scale if args.scale else max(1, 128 // resolution)


def check_grid(args: argparse.Namespace, count: int, ncol: int, resolution: int, tiles_per_image: int = 1) -> None:
    """CommandError before generating when the saved grid (``count`` images of ``resolution`` px,
    ``ncol`` per row, each ``tiles_per_image`` tiles wide, 2 px padding, times ``--scale``) would
    exceed the pixel limit."""
    ncol = max(1, min(ncol, count))
    rows = -(-count // ncol)
    scale = grid_scale(args, resolution)
    h = (rows * (resolution + 2) + 2) * scale
    w = (ncol * tiles_per_image * (resolution + 2) + 2) * scale
    check_image_size(h, w, "the grid", "use a smaller --scale or fewer images")


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


# ---------------------------------------------------------------------------- export-gan / export-inpaint
def export_arguments(p: argparse.ArgumentParser, command: str) -> None:
    """Options of ``export-gan`` / ``export-inpaint`` (``command``: the train command of the checkpoint)."""
    p.add_argument("checkpoint", help=f"{command} checkpoint (RUN/checkpoints/latest.pt)")
    p.add_argument("out", help="output .safetensors file")
    p.add_argument("--no-ema", action="store_true", help="export the trained G instead of its EMA")


def run_export(args: argparse.Namespace, export: Callable, **options) -> int:
    """Check the paths, run ``export(checkpoint, out, use_ema=..., **options)`` and report the written file."""
    if not Path(args.checkpoint).is_file():
        raise CommandError(f"checkpoint {args.checkpoint} not found")
    output_file(args.out, "output", (".safetensors",))
    with user_errors():
        path = export(args.checkpoint, args.out, use_ema=not args.no_ema, **options)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0
