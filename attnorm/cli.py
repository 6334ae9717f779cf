"""``attnorm <command>``: the command-line entry point.

Each command lives in its own module, which provides ``add_arguments(parser)``
and ``main_from_args(args)``; modules are imported only when their command runs,
so ``attnorm --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("attnorm.bench", "benchmark AN vs literal Algorithm 1, self-attention and conv1x1+IN"),
    "train-gan": ("attnorm.gan_cli.train", "train the class-conditional AN-GAN (small CPU preset by default)"),
    "sample": ("attnorm.gan_cli.sample", "generate images of chosen classes from a train-gan checkpoint"),
    "interpolate": ("attnorm.gan_cli.interpolate", "categorical interpolation between two classes (fixed z per row)"),
    "layouts": ("attnorm.gan_cli.layouts", "show the AN semantic layouts of generated images"),
    "inpaint": ("attnorm.inpaint_commands", "inpaint an image (or a folder) with its mask using a trained generator"),
    "train-inpaint": ("attnorm.inpaint_cli.train", "train the AN inpainting generator (DeepFill critics; small CPU preset by default)"),
    "export-inpaint": ("attnorm.inpaint_cli.export", "export a train-inpaint checkpoint's generator (EMA) as .safetensors"),
    "masks": ("attnorm.mask_commands", "write a fixed evaluation mask set (PNGs + masks.json/csv) and print per-bin counts"),
    "evaluate": ("attnorm.evaluate_cli", "evaluate a model: `evaluate gan` (FID/KID/IS/intra-FID/PR/acc) or `evaluate inpaint`"),
    "evaluate-inpaint": ("attnorm.evaluate_inpaint", "score an inpainting checkpoint or baseline: PSNR/SSIM/L1 per mask-area bin"),
    "demo": ("attnorm.gan_cli.demo", "train the small AN-GAN on procedural shapes (~5 min CPU) and write all figures"),
    "serve": ("attnorm.serve.command", "local web app + HTTP API: inpaint by painting a mask, explore the GAN"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnorm", description="Attentive Normalization toolkit")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, (_module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser = build_parser()
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}")
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"attnorm {name}", description=module.__doc__ or help_text,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    result = module.main_from_args(parser.parse_args(rest))
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
