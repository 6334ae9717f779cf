"""Train the class-conditional AN-GAN.

    attnorm train-gan                                  # small CPU preset, procedural shapes, 32 px
    attnorm train-gan --config configs/gan_128.json --data /data/imagenet_folder --out runs/an128
    attnorm train-gan --out runs/x --resume steps=4000 # continue a run (its saved config, + overrides)
    attnorm train-gan --steps 200 attention=sa ch=8    # key=value overrides any config key

The run folder gets config.json, stats.jsonl, samples/ and checkpoints/latest.pt.
Under torchrun (WORLD_SIZE set) it trains with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import sys

from attnorm.training.loop import NonFiniteLossError
from attnorm.training.config import config_from_args
from attnorm.training.distributed import close_process_group


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON config file (keys of attnorm.training.gan.DEFAULT_CONFIG)")
    p.add_argument("--data", help="image folder with one subfolder per class (default: procedural shapes)")
    p.add_argument("--out", help="run folder (default: runs/gan-<time>)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--resolution", type=int, choices=[16, 32, 64, 128])
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (values parsed as JSON)")
    # key=value items may come before, between or after the options
    p.parse_args = p.parse_intermixed_args


def collect_overrides(args) -> dict:
    from attnorm.training.gan import parse_overrides
    ov = {}
    for key, val in (("data", args.data), ("steps", args.steps), ("batch_size", args.batch_size),
                     ("resolution", args.resolution), ("seed", args.seed), ("device", args.device)):
        if val is not None:
            ov[key] = val
    ov.update(parse_overrides(args.overrides))
    return ov


def _run_quiet(trainer, resume: bool) -> bool:
    try:
        trainer.run(resume=resume)
        return True
    except NonFiniteLossError:
        return False


def main_from_args(args) -> int:
    from attnorm.training.gan import GANTraining, resolve_config
    try:
        cfg, out = config_from_args(args, resolve_config, collect_overrides(args), "train-gan", "gan")
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        trainer = GANTraining(cfg, out)
    except ValueError as exc:  # bad data folder, bad config value: a message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if trainer.rank != 0:  # DDP: only rank 0 talks
        trainer.loop.print_fn = None
        ok = _run_quiet(trainer, args.resume)
        close_process_group(ok)
        return 0 if ok else 1
    print(f"run folder: {out}  ({trainer.num_classes} classes, {len(trainer.dataset)} images, "
          f"G {sum(p.numel() for p in trainer.G.parameters()) / 1e6:.2f} M params, "
          f"D {sum(p.numel() for p in trainer.D.parameters()) / 1e6:.2f} M)")
    skipped = getattr(trainer.dataset, "num_skipped", 0)
    if skipped:
        print(f"warning: {skipped} unreadable image file(s) skipped")
    try:
        loop = trainer.run(resume=args.resume)
    except NonFiniteLossError as exc:
        close_process_group(False)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    close_process_group(True)
    print(f"stopped at step {loop.step} ({loop.stop_reason}); checkpoint {loop.checkpoint_path}")
    return 0
