"""Train the two-stage AN inpainting generator (DeepFill-style critics, WGAN-GP).

    attnorm train-inpaint                                   # small CPU preset: skimage train photos, 64 px
    attnorm train-inpaint --config configs/inpaint_256.json --data /data/places --out runs/inp256 --device cuda
    attnorm train-inpaint --out runs/x --resume steps=4000  # continue a run (its saved config, + overrides)
    attnorm train-inpaint --steps 200 critic=patch width=0.5 # key=value overrides any config key

Keys: see attnorm.training.inpaint.DEFAULT_CONFIG (critic=global_local|patch|none,
mask_kind=box|free_form|mixed, warmup_steps, d_steps, lr_g, lr_d, ema_decay, amp, ...).
The run folder gets config.json, stats.jsonl, samples/ (input | coarse | refined |
composite | ground truth) and checkpoints/latest.pt, which `attnorm inpaint --ckpt`
reads directly (EMA weights if present).
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="JSON config file (keys of attnorm.training.inpaint.DEFAULT_CONFIG)")
    p.add_argument("--data", help="folder of images, searched recursively (default: scikit-image train photos)")
    p.add_argument("--out", help="run folder (default: runs/inpaint-<time>)")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--resolution", type=int, help="training crop side (multiple of 4)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (values parsed as JSON)")
    p.parse_args = p.parse_intermixed_args  # key=value items may come anywhere


def main_from_args(args) -> int:
    from attnorm.gan_cli.train import collect_overrides
    from attnorm.training.config import config_from_args
    from attnorm.training.inpaint import InpaintTraining, resolve_config
    from attnorm.training.loop import NonFiniteLossError
    try:
        cfg, out = config_from_args(args, resolve_config, collect_overrides(args), "train-inpaint", "inpaint")
        trainer = InpaintTraining(cfg, out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from attnorm.training.distributed import close_process_group
    main_rank = trainer.rank == 0
    say = print if main_rank else (lambda *a, **k: None)
    n_g = sum(p.numel() for p in trainer.G.parameters()) / 1e6
    n_d = sum(p.numel() for p in trainer.D.parameters()) / 1e6
    say(f"run folder: {out}  ({len(trainer.images)} images, {trainer.cfg['mask_kind']} masks, "
          f"critic {trainer.cfg['critic']}, G {n_g:.2f} M params, D {n_d:.2f} M)")
    skipped = getattr(trainer.images, "num_skipped", 0)
    if skipped:
        say(f"warning: {skipped} unreadable image file(s) skipped")
    try:
        loop = trainer.run(resume=args.resume)
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        close_process_group(False)
        return 1
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        close_process_group(False)
        return 2
    close_process_group(True)
    say(f"stopped at step {loop.step} ({loop.stop_reason}); checkpoint {loop.checkpoint_path}")
    return 0
