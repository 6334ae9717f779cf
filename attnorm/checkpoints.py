"""Checkpoint files: training checkpoints and the two generators' weights.

* **Training checkpoints** (``RUN/checkpoints/latest.pt``, written by
  :class:`attnorm.training.loop.TrainingLoop`): format :data:`CHECKPOINT_FORMAT`, written
  atomically (:func:`atomic_torch_save`), read with ``torch.load(weights_only=True)``
  (:func:`load_checkpoint`). Their ``extra`` entry holds the generator's constructor
  arguments, so a generator is rebuilt from the file alone, with its EMA weights when the
  run kept an EMA (:func:`generator_weights` is the one place that picks).
* **Class-conditional GAN**: :func:`load_gan_generator` rebuilds G from a ``train-gan`` checkpoint
  or from a ``.safetensors`` file written by :func:`export_gan_generator` (format
  :data:`GAN_SAFETENSORS_FORMAT`; generator config, class names and provenance in its
  metadata), e.g. the shipped :data:`DEFAULT_GAN_WEIGHTS`, which ``path=None`` loads.
* **Inpainting generator**: :func:`load_inpaint_generator` reads any of

  - ``{"config": generator.config, "state_dict": ...}`` written by :func:`save_inpaint_generator`
    (or a file holding that dict under ``generator``);
  - a ``train-inpaint`` training checkpoint;
  - a ``.safetensors`` file written by :func:`save_inpaint_generator_safetensors` (format,
    config and provenance in its metadata), e.g. the shipped :data:`DEFAULT_INPAINT_WEIGHTS`,
    which ``path=None`` loads. :func:`export_inpaint_generator` writes one from a training
    checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from attnorm.io import atomic_write, read_safetensors, write_safetensors
from attnorm.models.gan import Generator
from attnorm.models.inpaint import InpaintGenerator

__all__ = [
    "CHECKPOINT_FORMAT", "DEFAULT_GAN_WEIGHTS", "DEFAULT_INPAINT_WEIGHTS", "GAN_SAFETENSORS_FORMAT",
    "export_gan_generator", "INPAINT_SAFETENSORS_FORMAT", "atomic_torch_save",
    "export_inpaint_generator", "generator_weights", "inpaint_generator_from_training_checkpoint",
    "load_checkpoint", "load_gan_generator", "load_inpaint_generator", "read_inpaint_generator_metadata",
    "save_inpaint_generator", "save_inpaint_generator_safetensors",
]

CHECKPOINT_FORMAT = "attnorm-train-v1"
INPAINT_SAFETENSORS_FORMAT = "attnorm-inpaint-generator-v1"
DEFAULT_INPAINT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "inpaint_skimage.safetensors"
GAN_SAFETENSORS_FORMAT = "attnorm-gan-generator-v1"
DEFAULT_GAN_WEIGHTS = Path(__file__).resolve().parent / "weights" / "gan_procedural32.safetensors"


# ---------------------------------------------------------------------------- training checkpoints
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file, then ``os.replace``: readers see the old or the new file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """What ``torch.save`` wrote to ``path``, loaded with ``weights_only=True`` (tensors and plain
    Python types only); ValueError, in one line, for a file that is not such a checkpoint."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch/pickle raise many types, with multi-line messages
        raise ValueError(f"{path} is not a checkpoint attnorm can read ({type(exc).__name__} in torch.load)") from exc


def generator_weights(state: dict, use_ema: bool = True) -> tuple[dict, str]:
    """``(state_dict, "ema" | "G")``: the EMA weights of a training checkpoint when ``use_ema``
    and the run kept an EMA, else the trained generator's."""
    if use_ema and state.get("ema") is not None:
        return state["ema"]["shadow"], "ema"
    return state["modules"]["G"], "G"


def _generator_from_state(state: dict, cls: type, task: str, use_ema: bool) -> torch.nn.Module:
    extra = state.get("extra") or {}
    if "generator" not in extra:
        raise ValueError(f"the checkpoint has no generator config; is it a {task} checkpoint?")
    g = cls(**extra["generator"])
    g.load_state_dict(generator_weights(state, use_ema)[0])
    return g.eval()


# ---------------------------------------------------------------------------- GAN
def load_gan_generator(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                       use_ema: bool = True) -> tuple[Generator, dict]:
    """Rebuild G from a ``train-gan`` checkpoint or an exported ``.safetensors`` file alone; returns
    (G in eval mode, ``extra``: ``generator`` config, ``classes``, and for a checkpoint its training
    ``config``). ``path=None`` loads the shipped :data:`DEFAULT_GAN_WEIGHTS`."""
    path = Path(path) if path is not None else DEFAULT_GAN_WEIGHTS
    if not path.is_file():
        hint = (" (the shipped GAN weights are missing from this install; pass --ckpt)"
                if path == DEFAULT_GAN_WEIGHTS else "")
        raise FileNotFoundError(f"generator checkpoint {path} not found{hint}")
    if _is_safetensors(path):
        state, info = read_safetensors(path)
        if info.get("format") != GAN_SAFETENSORS_FORMAT or "config" not in info:
            raise ValueError(f"{path} is not a GAN generator .safetensors file (metadata format {info.get('format')!r})")
        config = json.loads(info["config"])
        g = Generator(**config)
        g.load_state_dict(state)
        meta = json.loads(info.get("meta", "{}"))
        extra = {"generator": config, "classes": json.loads(info.get("classes", "null")),
                 "config": meta.get("train_config", {}), "meta": meta}
        return g.to(device).eval(), extra
    state = load_checkpoint(path, map_location=device)
    try:
        g = _generator_from_state(state, Generator, "train-gan", use_ema)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return g.to(device), state.get("extra") or {}


def export_gan_generator(checkpoint: str | os.PathLike, out: str | os.PathLike, use_ema: bool = True,
                         meta: dict | None = None) -> Path:
    """Write the (EMA) generator of a ``train-gan`` checkpoint as ``.safetensors`` (atomically), with the
    generator config, the class names and provenance (``meta`` + the training config and step) in its metadata."""
    g, extra = load_gan_generator(checkpoint, use_ema=use_ema)
    state = {k: v.detach().cpu().contiguous() for k, v in g.state_dict().items()}
    ck = load_checkpoint(checkpoint)
    info_meta = {"source_step": ck.get("step"), "ema": bool(use_ema and ck.get("ema") is not None),
                 "train_config": extra.get("config", {}), **(meta or {})}
    info = {"format": GAN_SAFETENSORS_FORMAT, "config": json.dumps(g.get_config()),
            "classes": json.dumps(extra.get("classes")), "meta": json.dumps(info_meta)}
    return atomic_write(out, lambda tmp: write_safetensors(tmp, state, metadata=info), mode=0o644)


# ---------------------------------------------------------------------------- inpainting
def inpaint_generator_from_training_checkpoint(state: dict, use_ema: bool = True) -> InpaintGenerator:
    """Rebuild the generator (eval mode) from a ``train-inpaint`` checkpoint dict."""
    if (not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT
            or (state.get("extra") or {}).get("task") != "inpaint"):
        raise ValueError("not a train-inpaint checkpoint")
    return _generator_from_state(state, InpaintGenerator, "train-inpaint", use_ema)


def save_inpaint_generator(path: str | os.PathLike, generator: InpaintGenerator) -> None:
    """Save ``{"config", "state_dict"}``: enough to rebuild with :func:`load_inpaint_generator`."""
    torch.save({"config": dict(generator.config), "state_dict": generator.state_dict()}, path)


def save_inpaint_generator_safetensors(path: str | os.PathLike, generator: InpaintGenerator,
                                       meta: dict | None = None) -> Path:
    """Write the generator's weights as ``.safetensors`` (atomically) with ``format``, ``config``
    (JSON) and ``meta`` (JSON: provenance, training settings) in the metadata."""
    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    info = {"format": INPAINT_SAFETENSORS_FORMAT, "config": json.dumps(dict(generator.config)),
            "meta": json.dumps(meta or {})}
    return atomic_write(path, lambda tmp: write_safetensors(tmp, state, metadata=info), mode=0o644)


def read_inpaint_generator_metadata(path: str | os.PathLike) -> dict:
    """``{"config": ..., "meta": ...}`` of a generator ``.safetensors`` file."""
    _state, info = read_safetensors(path)
    return {"config": json.loads(info.get("config", "{}")), "meta": json.loads(info.get("meta", "{}"))}


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")


def load_inpaint_generator(path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu",
                           use_ema: bool = True) -> InpaintGenerator:
    """Rebuild an :class:`InpaintGenerator` (eval mode) from any format of the module docstring;
    ``path=None`` loads the shipped :data:`DEFAULT_INPAINT_WEIGHTS`. ``use_ema`` picks the EMA
    weights of a training checkpoint (when it has them) over the trained ones."""
    path = Path(path) if path is not None else DEFAULT_INPAINT_WEIGHTS
    if not path.is_file():
        hint = (" (the shipped weights are missing from this install; pass --ckpt)"
                if path == DEFAULT_INPAINT_WEIGHTS else "")
        raise FileNotFoundError(f"generator checkpoint {path} not found{hint}")
    if _is_safetensors(path):
        state, info = read_safetensors(path)
        if info.get("format") != INPAINT_SAFETENSORS_FORMAT or "config" not in info:
            raise ValueError(f"{path} is not an inpainting generator .safetensors file "
                             f"(metadata format {info.get('format')!r})")
        g = InpaintGenerator(**json.loads(info["config"]))
        g.load_state_dict(state)
        return g.to(map_location).eval()
    ckpt = load_checkpoint(path, map_location)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not an inpainting generator checkpoint")
    if ckpt.get("format") == CHECKPOINT_FORMAT:
        try:
            return inpaint_generator_from_training_checkpoint(ckpt, use_ema=use_ema).to(map_location)
        except ValueError as exc:
            raise ValueError(f"{path} is a training checkpoint but not of train-inpaint") from exc
    if "config" not in ckpt and isinstance(ckpt.get("generator"), dict):
        ckpt = ckpt["generator"]
    if "config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path} is not an inpainting generator checkpoint (needs 'config' and 'state_dict'; "
                         f"found keys {sorted(ckpt)})")
    g = InpaintGenerator(**ckpt["config"])
    g.load_state_dict(ckpt["state_dict"])
    return g.eval()


def export_inpaint_generator(checkpoint: str | os.PathLike, out: str | os.PathLike, use_ema: bool = True) -> Path:
    """Write a ``train-inpaint`` checkpoint's generator (EMA weights if present and ``use_ema``) as
    ``.safetensors``, with the source file, step, training time, weights and training config as ``meta``."""
    state = load_checkpoint(checkpoint)
    try:
        g = inpaint_generator_from_training_checkpoint(state, use_ema=use_ema)
    except ValueError as exc:
        raise ValueError(f"{checkpoint} is not a train-inpaint checkpoint") from exc
    meta = {"source": Path(checkpoint).name, "step": int(state["step"]),
            "train_seconds": round(float(state["elapsed"]), 1), "weights": generator_weights(state, use_ema)[1],
            "train_config": state["extra"].get("config", {})}
    return save_inpaint_generator_safetensors(out, g, meta)
