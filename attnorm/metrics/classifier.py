"""A small CNN classifier of the procedural shapes: features for FID/KID/PR and class accuracy.

The procedural dataset (:mod:`attnorm.data.procedural`) is far from ImageNet, so
Inception features say little about it. This classifier is trained on the
procedural shapes themselves (32x32, all 12 classes, a fresh rendered batch every
step, dataset seed ``--seed``) and serves as the feature network of the
``classifier`` extractor (:mod:`attnorm.metrics.extractors`):

* features: the 128-d penultimate layer (global average pool of the last conv
  block, after ReLU);
* logits: the 12 class logits (a linear layer on the features), also used by the
  Inception Score analogue and by :func:`classifier_accuracy`.

Images are float tensors (b, 3, H, W) in [-1, 1]; sizes other than 32 are resized
to 32x32 by antialiased bilinear interpolation (``F.interpolate(..., antialias=True)``).

The shipped weights ``attnorm/weights/procedural_classifier.safetensors`` were made by::

    attnorm train-classifier --out attnorm/weights/procedural_classifier.safetensors --steps 2000 --seed 0

(``python -m attnorm.metrics.classifier ARGS`` runs the same command), which prints the
held-out accuracy (procedural images of dataset seed ``seed + 1``) and stores it, with
the training settings, in the file's metadata. ``.safetensors``
files are written and read with the ``safetensors`` package (:mod:`attnorm.io`); a
``.pt`` output is a plain ``torch.save`` of tensors and strings, loaded with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnorm.io import atomic_write, read_safetensors, sha256_file, write_safetensors

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "procedural_classifier.safetensors"
INPUT_SIZE = 32

DEFAULT_CONFIG: dict[str, Any] = {"num_classes": 12, "widths": [32, 64, 128], "input_size": INPUT_SIZE}


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ProceduralClassifier(nn.Module):
    """conv(w0) | pool | conv(w1) conv(w1) | pool | conv(w2) conv(w2) | global avg pool -> features | linear -> logits."""

    def __init__(self, num_classes: int = 12, widths: list[int] | tuple[int, ...] = (32, 64, 128),
                 input_size: int = INPUT_SIZE) -> None:
        super().__init__()
        w0, w1, w2 = widths
        self.config = {"num_classes": int(num_classes), "widths": [int(w) for w in widths],
                       "input_size": int(input_size)}
        self.num_classes, self.input_size, self.feature_dim = int(num_classes), int(input_size), int(w2)
        self.body = nn.Sequential(
            _conv(3, w0), nn.MaxPool2d(2),
            _conv(w0, w1), _conv(w1, w1), nn.MaxPool2d(2),
            _conv(w1, w2), _conv(w2, w2))
        self.head = nn.Linear(w2, num_classes)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(b, 3, H, W) in [-1, 1] -> (b, 3, 32, 32) float32 (antialiased bilinear if H, W != 32)."""
        x = x.float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return x

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(self.prepare(x)).mean(dim=(2, 3))  # (b, w2) penultimate layer
        return f, self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]


# ---------------------------------------------------------------------------------------------- files
def save_classifier(model: ProceduralClassifier, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write the state dict + config (+ ``meta``) as ``.safetensors`` or ``.pt`` (by extension)."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    info = {"config": json.dumps(model.config), "meta": json.dumps(meta or {})}
    if path.suffix == ".safetensors":
        return atomic_write(path, lambda tmp: write_safetensors(tmp, state, metadata=info), mode=0o644)
    return atomic_write(path, lambda tmp: torch.save({"state_dict": state, **info}, tmp), mode=0o644)


def load_classifier(path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
                    ) -> tuple[ProceduralClassifier, dict]:
    """Load a classifier file; returns (model in eval mode, info) with info keys
    ``path``, ``sha256``, ``config``, ``meta`` (training settings and held-out accuracy)."""
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"classifier weights {str(path)!r} not found; train them with `attnorm train-classifier "
            f"--out {path} --steps 2000 --seed 0` or pass an existing file")
    if path.suffix == ".safetensors":
        state, info = read_safetensors(path)
    else:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        state, info = blob["state_dict"], {k: blob[k] for k in ("config", "meta") if k in blob}
    config = json.loads(info.get("config", "{}")) or dict(DEFAULT_CONFIG)
    model = ProceduralClassifier(**config)
    model.load_state_dict(state)
    model.to(device).eval()
    return model, {"path": str(path), "sha256": sha256_file(path), "config": config,
                   "meta": json.loads(info.get("meta", "{}"))}


# ---------------------------------------------------------------------------------------------- use
@torch.no_grad()
def predict_logits(model: ProceduralClassifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    device = next(model.parameters()).device
    out = [model(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, model.num_classes)


def classifier_accuracy(images: torch.Tensor, labels: Any, weights: str | os.PathLike | None = None,
                        model: ProceduralClassifier | None = None, batch_size: int = 256) -> float:
    """Fraction of ``images`` ((b, 3, H, W) in [-1, 1]) whose argmax class equals ``labels``.

    Uses the shipped procedural classifier (or ``weights``/``model``). Labels index
    :data:`attnorm.data.procedural.CLASS_NAMES`; a dataset with its first ``k``
    classes uses labels ``0..k-1``, which is consistent.
    """
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels).long().reshape(-1)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (b, 3, H, W); got shape {tuple(images.shape)}")
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images (>= 1); got {len(images)} images, {len(labels)} labels")
    if model is None:
        model, _ = load_classifier(weights)
    if int(labels.max()) >= model.num_classes or int(labels.min()) < 0:
        raise ValueError(f"labels must be in [0, {model.num_classes}); got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    pred = predict_logits(model, images, batch_size).argmax(1)
    return float((pred == labels).double().mean())


# ---------------------------------------------------------------------------------------------- training
def heldout_accuracy(model: ProceduralClassifier, n: int, seed: int, resolution: int = INPUT_SIZE) -> float:
    from attnorm.data.procedural import ProceduralShapes
    x, y = ProceduralShapes(resolution, model.num_classes, seed=seed).get_batch(range(n))
    model.eval()
    return classifier_accuracy(x, y, model=model)


def train_classifier(steps: int = 2000, seed: int = 0, batch_size: int = 64, lr: float = 2e-3,
                     weight_decay: float = 1e-4, config: dict | None = None, eval_n: int = 2400,
                     ) -> tuple[ProceduralClassifier, dict]:
    """Train on procedural shapes of dataset seed ``seed`` (images ``[s*B, (s+1)*B)`` at step ``s``,
    never repeated), AdamW + cosine schedule; evaluate on ``eval_n`` images of dataset seed ``seed + 1``."""
    from attnorm.data.procedural import ProceduralShapes
    cfg = dict(DEFAULT_CONFIG, **(config or {}))
    torch.manual_seed(seed)
    model = ProceduralClassifier(**cfg)
    data = ProceduralShapes(cfg["input_size"], cfg["num_classes"], seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    t0 = time.time()
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        x, y = data.get_batch(range(step * batch_size, (step + 1) * batch_size))
        x = torch.where(torch.rand(x.shape[0], 1, 1, 1) < 0.5, x, x.flip(3))  # left-right flips
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("step %d/%d loss %.4f (%.0fs)", step + 1, steps, loss.item(), time.time() - t0)
    model.eval()
    acc = heldout_accuracy(model, eval_n, seed + 1, cfg["input_size"])
    meta = {"steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
            "train_data": f"ProceduralShapes(resolution={cfg['input_size']}, num_classes={cfg['num_classes']}, "
                          f"seed={seed}), images [0, {steps * batch_size})",
            "heldout": f"ProceduralShapes(seed={seed + 1}), images [0, {eval_n})",
            "heldout_accuracy": acc, "torch": torch.__version__}
    log.info("held-out accuracy %.4f on %d images of dataset seed %d", acc, eval_n, seed + 1)
    return model, meta


if __name__ == "__main__":  # `python -m attnorm.metrics.classifier ARGS` is `attnorm train-classifier ARGS`
    import sys

    from attnorm.cli import main
    raise SystemExit(main(["train-classifier", *sys.argv[1:]]))
