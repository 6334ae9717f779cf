"""Export a train-inpaint checkpoint's generator (EMA weights if present) as ``.safetensors``.

    attnorm export-inpaint runs/inpaint_shipped/checkpoints/latest.pt attnorm/weights/inpaint_skimage.safetensors

The file holds the generator's state dict (float32) and, in its metadata, ``format``,
``config`` (the generator's constructor arguments) and ``meta`` (source checkpoint,
step, EMA or not, the run's training config); ``attnorm inpaint --ckpt FILE`` reads it.
Written with attnorm's own safetensors writer (no ``safetensors`` package).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="train-inpaint checkpoint (RUN/checkpoints/latest.pt)")
    p.add_argument("out", help="output .safetensors file")
    p.add_argument("--no-ema", action="store_true", help="export the trained G instead of its EMA")


def export(checkpoint: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    from attnorm.inpaint_commands import save_generator_safetensors
    from attnorm.training.inpaint import generator_from_training_checkpoint
    from attnorm.training.loop import CHECKPOINT_FORMAT, load_checkpoint
    state = load_checkpoint(checkpoint)
    if state.get("format") != CHECKPOINT_FORMAT or (state.get("extra") or {}).get("task") != "inpaint":
        raise ValueError(f"{checkpoint} is not a train-inpaint checkpoint")
    g = generator_from_training_checkpoint(state, use_ema=use_ema)
    ema = use_ema and state.get("ema") is not None
    meta = {"source": Path(checkpoint).name, "step": int(state["step"]),
            "train_seconds": round(float(state["elapsed"]), 1), "weights": "ema" if ema else "G",
            "train_config": state["extra"].get("config", {})}
    return save_generator_safetensors(out, g, meta)


def main_from_args(args) -> int:
    try:
        path = export(args.checkpoint, args.out, use_ema=not args.no_ema)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    sys.exit(main_from_args(p.parse_args()))
