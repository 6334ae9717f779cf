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
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from attnorm.errors import CheckpointError, UnsafeCheckpointError, check_device
from attnorm.io import atomic_write, read_safetensors, write_safetensors
from attnorm.models.gan import ConvDiscriminator, Discriminator, Generator, standing_statistics
from attnorm.models.inpaint import InpaintGenerator

__all__ = [
    "CHECKPOINT_FORMAT", "DEFAULT_GAN_WEIGHTS", "DEFAULT_INPAINT_WEIGHTS", "GAN_SAFETENSORS_FORMAT",
    "export_gan_generator", "INPAINT_SAFETENSORS_FORMAT", "atomic_torch_save", "check_task",
    "export_inpaint_generator", "generator_weights", "inpaint_generator_from_training_checkpoint",
    "gan_discriminator_from_state", "load_checkpoint", "load_gan_discriminator", "load_gan_generator", "load_inpaint_generator",
    "read_inpaint_generator_metadata", "save_inpaint_generator", "save_inpaint_generator_safetensors",
]

CHECKPOINT_FORMAT = "attnorm-train-v1"
INPAINT_SAFETENSORS_FORMAT = "attnorm-inpaint-generator-v1"
DEFAULT_INPAINT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "inpaint_photos.safetensors"
GAN_SAFETENSORS_FORMAT = "attnorm-gan-generator-v1"
DEFAULT_GAN_WEIGHTS = Path(__file__).resolve().parent / "weights" / "gan_centred16.safetensors"


# ---------------------------------------------------------------------------- training checkpoints
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file, then ``os.replace``: readers see the old or the new file.
    A failed write (full disk...) raises :class:`attnorm.errors.OutputError` and keeps the old file."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: torch's write errors keep the OSError as context
            torch.save(obj, f)
    atomic_write(path, write)


# modules a checkpoint pickle may name: torch's own rebuild functions and storages, and the
# containers torch.save writes; anything else (os.system, builtins.eval, ...) is code
_SAFE_PICKLE_MODULES = ("torch", "collections", "_codecs", "numpy.core.multiarray", "numpy._core.multiarray",
                        "numpy", "builtins.set", "builtins.frozenset", "builtins.bytearray", "builtins.slice",
                        "builtins.complex", "builtins.range")


def _pickle_globals(path: Path) -> list[str] | None:
    """The ``module.name`` globals that the pickle in ``path`` (torch zip or plain pickle) would
    import, read with :mod:`pickletools` (nothing is executed); None if it is not a parsable pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.endswith("data.pkl")]
                if not names:
                    return None
                data = z.read(names[0])
        else:
            data = path.read_bytes()
        found, strings = [], []
        for op, arg, _pos in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            if isinstance(arg, str):
                strings.append(arg)
        return found
    except Exception:  # not a pickle, or a truncated one
        return None


def _unsafe_globals(path: Path) -> list[str]:
    names = _pickle_globals(path) or []
    return sorted({g for g in names if not g.startswith(_SAFE_PICKLE_MODULES)})


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """What ``torch.save`` wrote to ``path``, loaded with ``weights_only=True`` (tensors and plain
    Python types only). Errors, each one line: FileNotFoundError for a missing file;
    :class:`attnorm.errors.UnsafeCheckpointError` for a pickle that would import code (refused,
    never executed); :class:`attnorm.errors.CheckpointError` (a ValueError) for an empty,
    truncated, corrupt or non-checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found" + (" (it is a folder)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); pass a checkpoint written by attnorm")
    if _is_safetensors(path):
        raise CheckpointError(f"{path} is a .safetensors weights file, not a training checkpoint; pass the run's "
                              "checkpoints/latest.pt")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing a file
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch/pickle raise many types, with multi-line messages
        unsafe = _unsafe_globals(path)
        if unsafe:
            raise UnsafeCheckpointError(
                f"refused to load {path}: it is a pickle that would import {', '.join(unsafe[:3])} "
                "(code that runs when loaded); attnorm loads only checkpoints holding tensors and plain data. "
                "Use a checkpoint written by attnorm or a .safetensors file") from None
        text = str(exc)
        if "Unsupported global" in text:  # allowed module names but a class torch does not allow
            name = text.split("Unsupported global:", 1)[1].split()[1] if "GLOBAL" in text else "an object"
            raise UnsafeCheckpointError(
                f"refused to load {path}: it holds {name}, which is not plain data; attnorm loads only "
                "checkpoints holding tensors and plain data. Use a checkpoint written by attnorm or a "
                ".safetensors file") from None
        kind = ("truncated or corrupt" if zipfile.is_zipfile(path) or "zip archive" in text or isinstance(exc, EOFError)
                else "not a PyTorch checkpoint (unrecognised content)")
        first = text.strip().splitlines()[0].split(". ")[0][:160] if text.strip() else type(exc).__name__
        detail = "" if "Weights only load failed" in first else f" ({type(exc).__name__}: {first})"
        raise CheckpointError(f"{path} is {kind}{detail}; pass a checkpoint written by attnorm") from None


def _state_task(state: Any) -> str | None:
    """``"gan"`` / ``"inpaint"`` for an attnorm training checkpoint, else None."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        return None
    extra = state.get("extra") or {}
    if extra.get("task"):
        return str(extra["task"])
    return "gan" if "classes" in extra or "discriminator" in extra else None


_TASK_COMMANDS = {"gan": "train-gan (use it with attnorm sample / interpolate / layouts / evaluate gan)",
                  "inpaint": "train-inpaint (use it with attnorm inpaint / export-inpaint / evaluate inpaint)"}


def check_task(state: Any, path: str | os.PathLike, task: str) -> None:
    """:class:`attnorm.errors.CheckpointError` unless ``state`` is a training checkpoint of ``task``."""
    found = _state_task(state)
    if found == task:
        return
    if found is not None:
        raise CheckpointError(f"{path} is a checkpoint of {_TASK_COMMANDS.get(found, found)}, not of train-{task}")
    if isinstance(state, dict) and ("config" in state and "state_dict" in state or "generator" in state):
        raise CheckpointError(f"{path} is an inpainting generator file, not a train-{task} checkpoint; use it with "
                              "attnorm inpaint --ckpt")
    raise CheckpointError(f"{path} is not a train-{task} checkpoint (format "
                          f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r})")


def generator_weights(state: dict, use_ema: bool = True) -> tuple[dict, str]:
    """``(state_dict, "ema" | "G")``: the EMA weights of a training checkpoint when ``use_ema``
    and the run kept an EMA, else the trained generator's."""
    if use_ema and state.get("ema") is not None:
        return state["ema"]["shadow"], "ema"
    return state["modules"]["G"], "G"


def _build(cls: type, config: dict, weights: dict, what: str) -> torch.nn.Module:
    """``cls(**config)`` with ``weights``; CheckpointError (one line) if they do not fit."""
    kind = "discriminator" if cls in (Discriminator, ConvDiscriminator) else "generator"
    try:
        g = cls(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{what}: its {kind} config does not build a {cls.__name__} ({exc})") from None
    try:
        g.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:200]
        raise CheckpointError(f"{what}: its weights do not match its {kind} config ({detail})") from None
    return g.eval()


def _generator_from_state(state: dict, cls: type, task: str, use_ema: bool, path="the checkpoint") -> torch.nn.Module:
    extra = state.get("extra") or {}
    if "generator" not in extra:
        raise CheckpointError(f"{path} has no generator config; is it a {task} checkpoint?")
    try:
        weights = generator_weights(state, use_ema)[0]
    except (KeyError, TypeError):
        raise CheckpointError(f"{path} has no generator weights; is it a {task} checkpoint?") from None
    return _build(cls, extra["generator"], weights, str(path))


# ---------------------------------------------------------------------------- GAN
def _weights_file(path: str | os.PathLike | None, default: Path, what: str) -> Path:
    """``path`` (None: the shipped ``default``) if it is a non-empty file, else a one-line error."""
    path = Path(path) if path is not None else default
    if not path.is_file():
        hint = f" (the shipped {what} are missing from this install; pass --ckpt)" if path == default else ""
        raise FileNotFoundError(f"generator checkpoint {path} not found{hint}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); pass a checkpoint written by attnorm")
    return path


def load_gan_generator(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                       use_ema: bool = True) -> tuple[Generator, dict]:
    """Rebuild G from a ``train-gan`` checkpoint or an exported ``.safetensors`` file alone; returns
    (G in eval mode, ``extra``: ``generator`` config, ``classes``, and for a checkpoint its training
    ``config``). ``path=None`` loads the shipped :data:`DEFAULT_GAN_WEIGHTS`. Problems with the
    file or the device are one-line :class:`attnorm.errors.UserError` subclasses."""
    device = check_device(device)
    path = _weights_file(path, DEFAULT_GAN_WEIGHTS, "GAN weights")
    if _is_safetensors(path):
        state, info = read_safetensors(path)
        if info.get("format") != GAN_SAFETENSORS_FORMAT or "config" not in info:
            hint = ("; it is an inpainting generator (use it with attnorm inpaint --ckpt)"
                    if info.get("format") == INPAINT_SAFETENSORS_FORMAT else "")
            raise CheckpointError(f"{path} is not a GAN generator .safetensors file "
                                  f"(metadata format {info.get('format')!r}){hint}")
        try:
            config = json.loads(info["config"])
            meta = json.loads(info.get("meta", "{}"))
            classes = json.loads(info.get("classes", "null"))
        except json.JSONDecodeError:
            raise CheckpointError(f"{path}: the metadata of this .safetensors file is not valid JSON") from None
        if not isinstance(config, dict) or not isinstance(meta, dict):
            raise CheckpointError(f"{path}: the generator config in its metadata is not a JSON object")
        g = _build(Generator, config, state, str(path))
        extra = {"generator": config, "classes": classes, "config": meta.get("train_config", {}), "meta": meta}
        return g.to(device).eval(), extra
    state = load_checkpoint(path, map_location=device)
    check_task(state, path, "gan")
    g = _generator_from_state(state, Generator, "train-gan", use_ema, path)
    return g.to(device), state.get("extra") or {}


def gan_discriminator_from_state(state: Any, path: str | os.PathLike = "the checkpoint") -> Discriminator | ConvDiscriminator:
    """The trained D (eval mode) of a loaded ``train-gan`` checkpoint, of the class it was trained
    as (the run's ``d_arch``: the listing's :class:`Discriminator` or :class:`ConvDiscriminator`);
    one-line CheckpointError if it is not one."""
    check_task(state, path, "gan")
    try:
        config, weights = state["extra"]["discriminator"], state["modules"]["D"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{path} has no discriminator; is it a train-gan checkpoint?") from None
    arch = ((state["extra"].get("config") or {}).get("d_arch") or "resblock")
    return _build(ConvDiscriminator if arch == "conv" else Discriminator, config, weights, str(path))


def load_gan_discriminator(path: str | os.PathLike, device: str | torch.device = "cpu"
                           ) -> tuple[Discriminator | ConvDiscriminator, dict]:
    """Rebuild the trained D of a ``train-gan`` checkpoint (exported ``.safetensors`` files hold G
    only, and :func:`load_checkpoint` refuses them); returns (D in eval mode, the checkpoint's
    ``extra``). One-line errors as :func:`load_gan_generator`."""
    device = check_device(device)
    state = load_checkpoint(path, map_location=device)
    return gan_discriminator_from_state(state, path).to(device), state.get("extra") or {}


def export_gan_generator(checkpoint: str | os.PathLike, out: str | os.PathLike, use_ema: bool = True,
                         meta: dict | None = None, standing_stats: int = 0, standing_batch_size: int | None = None,
                         standing_seed: int = 0) -> Path:
    """Write the (EMA) generator of a ``train-gan`` checkpoint as ``.safetensors`` (atomically), with the
    generator config, the class names and provenance (``meta`` + the training config and step) in its metadata.
    ``standing_stats`` > 0 first recomputes G's batch-norm statistics over that many batches
    (:func:`attnorm.models.gan.standing_statistics`) of ``standing_batch_size`` samples each (None: the
    run's training batch size, the batches whose statistics G's batch norms were trained with; 16 if
    the checkpoint does not record it); the metadata records it."""
    ck = load_checkpoint(checkpoint)  # read once: weights, config and provenance
    check_task(ck, checkpoint, "gan")
    g = _generator_from_state(ck, Generator, "train-gan", use_ema, checkpoint)
    extra = ck.get("extra") or {}
    standing = None
    if standing_stats:
        if standing_batch_size is None:
            standing_batch_size = max(2, int((extra.get("config") or {}).get("batch_size") or 16))
        standing_statistics(g, batches=standing_stats, batch_size=standing_batch_size, seed=standing_seed)
        standing = {"batches": int(standing_stats), "batch_size": int(standing_batch_size), "seed": int(standing_seed)}
    state = {k: v.detach().cpu().contiguous() for k, v in g.state_dict().items()}
    info_meta = {"source_step": ck.get("step"), "ema": generator_weights(ck, use_ema)[1] == "ema",
                 "standing_stats": standing, "train_config": extra.get("config", {}), **(meta or {})}
    info = {"format": GAN_SAFETENSORS_FORMAT, "config": json.dumps(g.get_config()),
            "classes": json.dumps(extra.get("classes")), "meta": json.dumps(info_meta)}
    return atomic_write(out, lambda tmp: write_safetensors(tmp, state, metadata=info), mode=0o644)


# ---------------------------------------------------------------------------- inpainting
def inpaint_generator_from_training_checkpoint(state: dict, use_ema: bool = True) -> InpaintGenerator:
    """Rebuild the generator (eval mode) from a ``train-inpaint`` checkpoint dict."""
    if (not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT
            or (state.get("extra") or {}).get("task") != "inpaint"):
        raise CheckpointError("not a train-inpaint checkpoint")
    return _generator_from_state(state, InpaintGenerator, "train-inpaint", use_ema)


def save_inpaint_generator(path: str | os.PathLike, generator: InpaintGenerator) -> None:
    """Save ``{"config", "state_dict"}`` (atomically): enough to rebuild with :func:`load_inpaint_generator`."""
    atomic_torch_save({"config": dict(generator.config), "state_dict": generator.state_dict()}, path)


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


def _safetensors_generator(path: Path) -> InpaintGenerator:
    state, info = read_safetensors(path)
    if info.get("format") != INPAINT_SAFETENSORS_FORMAT or "config" not in info:
        raise CheckpointError(f"{path} is not an inpainting generator .safetensors file "
                              f"(metadata format {info.get('format')!r})")
    try:
        config = json.loads(info["config"])
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: the generator config in its metadata is not valid JSON") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: the generator config in its metadata is not a JSON object")
    return _build(InpaintGenerator, config, state, str(path))


def load_inpaint_generator(path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu",
                           use_ema: bool = True) -> InpaintGenerator:
    """Rebuild an :class:`InpaintGenerator` (eval mode) from any format of the module docstring;
    ``path=None`` loads the shipped :data:`DEFAULT_INPAINT_WEIGHTS`. ``use_ema`` picks the EMA
    weights of a training checkpoint (when it has them) over the trained ones."""
    map_location = check_device(map_location)
    path = _weights_file(path, DEFAULT_INPAINT_WEIGHTS, "weights")
    if _is_safetensors(path):
        return _safetensors_generator(path).to(map_location)
    ckpt = load_checkpoint(path, map_location)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not an inpainting generator checkpoint")
    if ckpt.get("format") == CHECKPOINT_FORMAT:
        check_task(ckpt, path, "inpaint")
        return _generator_from_state(ckpt, InpaintGenerator, "train-inpaint", use_ema, path).to(map_location)
    if "config" not in ckpt and isinstance(ckpt.get("generator"), dict):
        ckpt = ckpt["generator"]
    if "config" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not an inpainting generator checkpoint (needs 'config' and 'state_dict'; "
                              f"found keys {sorted(map(str, ckpt))[:8]})")
    if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"{path} is not an inpainting generator checkpoint ('config' and 'state_dict' "
                              "must be dicts)")
    return _build(InpaintGenerator, ckpt["config"], ckpt["state_dict"], str(path)).to(map_location)


def export_inpaint_generator(checkpoint: str | os.PathLike, out: str | os.PathLike, use_ema: bool = True) -> Path:
    """Write a ``train-inpaint`` checkpoint's generator (EMA weights if present and ``use_ema``) as
    ``.safetensors``, with the source file, step, training time, weights and training config as ``meta``."""
    state = load_checkpoint(checkpoint)
    check_task(state, checkpoint, "inpaint")
    g = _generator_from_state(state, InpaintGenerator, "train-inpaint", use_ema, checkpoint)
    meta = {"source": Path(checkpoint).name, "step": int(state["step"]),
            "train_seconds": round(float(state["elapsed"]), 1), "weights": generator_weights(state, use_ema)[1],
            "train_config": state["extra"].get("config", {})}
    return save_inpaint_generator_safetensors(out, g, meta)
