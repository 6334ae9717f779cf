"""``attnorm <command>``: the command-line entry point (also ``python -m attnorm.cli``).

Every command lives in one module of this package, grouped by task: for command
``train-gan`` the module :mod:`attnorm.cli.gan` has ``train_gan_arguments(parser)`` and
``train_gan(args) -> exit code``, whose docstring is the command's ``--help`` text. Modules
are imported only when their command runs, so ``attnorm --help`` stays fast.

Output: the library reports progress and warnings through :mod:`logging`; while a command
runs, the ``attnorm`` logger prints them as plain lines on stdout (``--quiet``: warnings
only).

Errors (the one error boundary, :func:`main`): a user error ends the command with one line
``attnorm <command>: error: <what is wrong and how to fix it>`` on stderr and exit code 2,
without a traceback. User errors are :class:`attnorm.errors.UserError` and its subclasses
(an unreadable or oversized input image, an unwritable output, an unsafe, corrupt or
wrong-task checkpoint, a bad device, a run folder that holds another run),
:class:`CommandError` (a bad argument found by a command) and argparse's usage errors
(an unknown option, a value out of bounds). Ctrl-C prints ``attnorm <command>: interrupted``
and exits with 130 (training first saves a checkpoint, see
:class:`attnorm.training.loop.TrainingLoop`). ``--debug`` anywhere on the command line, or
``ATTNORM_DEBUG=1``, adds the traceback. Any other exception is an internal error and shows
its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import logging
import os
import sys
import traceback
from typing import Iterator

from attnorm.errors import UserError

from .common import CommandError

__all__ = ["COMMANDS", "CommandError", "build_parser", "main"]

# command name -> (module in this package, function name, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train-gan": ("gan", "train_gan", "train the class-conditional AN-GAN (small CPU preset by default)"),
    "sample": ("gan", "sample", "generate images of chosen classes from a train-gan checkpoint"),
    "interpolate": ("gan", "interpolate", "categorical interpolation between two classes (fixed z per row)"),
    "layouts": ("gan", "layouts", "show the AN semantic layouts of generated images"),
    "export-gan": ("gan", "export_gan", "export a train-gan checkpoint's generator (EMA) as .safetensors"),
    "demo": ("demo", "demo", "train the small AN-GAN on procedural shapes (~5 min CPU) and write all figures"),
    "inpaint": ("inpaint", "inpaint", "inpaint an image (or a folder) with its mask using a trained generator"),
    "train-inpaint": ("inpaint", "train_inpaint",
                      "train the AN inpainting generator (DeepFill critics; small CPU preset by default)"),
    "export-inpaint": ("inpaint", "export_inpaint",
                       "export a train-inpaint checkpoint's generator (EMA) as .safetensors"),
    "masks": ("inpaint", "masks", "write a fixed evaluation mask set (PNGs + masks.json/csv) and print per-bin counts"),
    "evaluate": ("evaluate", "evaluate",
                 "evaluate a model: `evaluate gan` (FID/KID/IS/intra-FID/PR/acc) or `evaluate inpaint` (PSNR/SSIM/L1)"),
    "train-classifier": ("evaluate", "train_classifier",
                         "train the procedural-shapes classifier that the GAN metrics use as feature network"),
    "bench": ("bench", "bench", "benchmark AN vs literal Algorithm 1, self-attention and conv1x1+IN"),
    "serve": ("serve", "serve", "local web app + HTTP API: inpaint by painting a mask, explore the GAN"),
    "serve-loadtest": ("serve", "serve_loadtest", "load-test a running `attnorm serve` (concurrent inpainting)"),
}
# old names that still run, not listed in --help
HIDDEN_ALIASES: dict[str, str] = {"evaluate-inpaint": "evaluate inpaint"}


class UsageError(CommandError):
    """argparse's usage error (unknown option, missing or invalid value) as one error line."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors raise :class:`UsageError` instead of printing the
    usage and exiting, so :func:`main` reports them as every other user error (one line, exit 2).
    Sub-parsers (``evaluate gan``) are of the same class."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: only for ``attnorm --help`` and unknown commands."""
    parser = _Parser(prog="attnorm", description="Attentive Normalization toolkit",
                     epilog="--debug (anywhere) or ATTNORM_DEBUG=1: show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (_module, _function, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """The parser of command ``name`` and the function that runs it."""
    module_name, function_name, help_text = COMMANDS[name]
    module = importlib.import_module(f"{__name__}.{module_name}")
    run = getattr(module, function_name)
    parser = _Parser(prog=f"attnorm {name}", description=inspect.getdoc(run) or help_text,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    getattr(module, f"{function_name}_arguments")(parser)
    return parser, run


class _StdoutHandler(logging.StreamHandler):
    """Writes to the current ``sys.stdout`` (looked up at every record, so redirections apply)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _PlainFormatter(logging.Formatter):
    """Progress lines as they are; warnings and errors prefixed ``warning: `` / ``error: ``."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        return msg if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {msg}"


@contextlib.contextmanager
def command_logging(quiet: bool = False) -> Iterator[logging.Logger]:
    """While a command runs: the ``attnorm`` logger prints plain lines on stdout (INFO, or
    WARNING with ``quiet``); its previous handlers, level and propagation are restored after."""
    logger = logging.getLogger("attnorm")
    saved = logger.handlers[:], logger.level, logger.propagate
    handler = _StdoutHandler()
    handler.setFormatter(_PlainFormatter())
    logger.handlers = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    try:
        yield logger
    finally:
        logger.handlers, logger.level, logger.propagate = saved


def _debug(argv: list[str]) -> tuple[bool, list[str]]:
    """(``--debug`` given or ``ATTNORM_DEBUG`` set, argv without ``--debug``)."""
    env = os.environ.get("ATTNORM_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
    return env or "--debug" in argv, [a for a in argv if a != "--debug"]


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run ``attnorm ARGV``; returns the exit status (0 done, 1 stopped by a non-finite loss,
    2 user error, 130 interrupted). See the module docstring for the error contract."""
    debug, argv = _debug(list(sys.argv[1:] if argv is None else argv))
    if argv and argv[0] in HIDDEN_ALIASES:
        argv = HIDDEN_ALIASES[argv[0]].split() + argv[1:]
    name, args = "", None
    try:
        if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
            parser = build_parser()
            if argv and argv[0] not in ("-h", "--help"):
                parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
            parser.print_help()
            return 0
        name = argv[0]
        parser, run = command_parser(name)
        args = parser.parse_args(argv[1:])
        with command_logging(quiet=bool(getattr(args, "quiet", False))):
            result = run(args)
    except UserError as exc:
        if debug:
            traceback.print_exc()
        target = getattr(args, "target", None)  # `evaluate gan`, `evaluate inpaint`
        prog = f"attnorm {name}{' ' + target if target else ''}" if name else "attnorm"
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"attnorm{' ' + name if name else ''}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `attnorm ... | head`: the reader left; stay quiet like other tools
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return result if isinstance(result, int) else 0
