"""Inpainting GAN training setup: config -> generator, critics, optimizers, data, the generic loop.

Runs on the same :class:`attnorm.training.loop.TrainingLoop` as the GAN task: one step
is phase ``D`` (``d_steps`` critic updates, each on a fresh batch) then phase ``G``
(one generator update on a fresh batch), then the EMA update.

Config (flat JSON dict, see :data:`DEFAULT_CONFIG`; files in ``configs/inpaint_*.json``):

* model: ``resolution`` (training crop side, a multiple of 4), ``width`` (generator
  channel multiplier, 1.0 = the supplement), ``attention`` (``an`` | ``sa`` | ``none``),
  ``num_entities``, ``an_kwargs``;
* critics: ``critic`` = ``global_local`` (DeepFill v1 global + local WGAN-GP critics,
  box holes by default) | ``patch`` (SN-PatchGAN hinge critic, free-form/mixed holes
  by default) | ``none`` (reconstruction only); ``critic_width``;
* masks: ``mask_kind`` (``box`` | ``free_form`` | ``mixed`` | ``center``; null = box for
  ``global_local``, mixed for ``patch``); every sample gets its own mask
  (:class:`attnorm.data.masks.MaskGenerator`, a pure function of the sample index);
* data: ``data`` = an image folder (any layout, every image file under it) or null for
  the scikit-image *train* photos (:class:`attnorm.data.photos.SkimagePhotos`); random
  rescale (``crop_scale``) + crop + flip. Sample ``i`` of the endless virtual dataset
  (``data_length`` samples per epoch) is image ``i % n`` with crop and mask seeded by ``i``;
* losses (REFERENCE section 3, the authors' weights): ``gan_weight`` 1e-3,
  ``hole_weight`` 1.4, ``known_weight`` 1.2, ``coarse_weight`` 1.2, ``ortho_weight`` 0.2,
  ``gp_weight`` 10, ``gamma`` 0.9 (spatial discount; null = off);
* optimisation: Adam ``lr_g`` = ``lr_d`` = 1e-4, ``betas`` (0.5, 0.9), ``d_steps`` 5,
  ``warmup_steps`` (the first steps train G with the L1 terms only: the G phase has
  adversarial weight 0 and the D phase makes no update), ``ema_decay`` (null = no EMA),
  ``ema_start``;
* run control: ``steps``, ``batch_size``, ``seed``, ``device``, ``threads``, ``amp``
  (bf16 autocast; null = on for CUDA), ``channels_last`` (null = on: the CPU step too runs 1.15-1.18x faster),
  ``log_every``, ``ckpt_every``, ``keep_every`` (also keep every this-many steps' checkpoint as
  ``checkpoints/step_XXXXXXX.pt``), ``sample_every``, ``sample_count``, ``max_seconds``.

A run folder holds ``config.json`` (the resolved config), ``stats.jsonl``,
``samples/step_XXXXXXX.png`` (rows: fixed held-out images; columns: input | coarse |
refined | composite | ground truth) and ``checkpoints/latest.pt``, whose ``extra``
entry stores the generator config: ``attnorm inpaint --ckpt RUN/checkpoints/latest.pt``
(:func:`attnorm.checkpoints.load_inpaint_generator`) rebuilds G (EMA weights if present)
from the file alone.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) every rank trains on its own slice
of each global batch and the gradients of G and of the critics are averaged over the
ranks after each backward (:func:`attnorm.training.distributed.average_gradients`; not
``DistributedDataParallel``, which cannot double-backward the gradient penalty); rank 0
writes the files.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from attnorm.data.masks import MaskGenerator
from attnorm.inference import eval_mode
from attnorm.io import to_uint8
from attnorm.losses.inpaint import InpaintLoss
from attnorm.models.inpaint import GlobalCritic, InpaintGenerator, LocalCritic, PatchCritic
from attnorm.training.config import TaskRun, layered_config
from attnorm.training.distributed import average_gradients
from attnorm.training.loop import EMA, Phase
from attnorm.viz.grid import make_grid, save_image

CRITICS = ("global_local", "patch", "none")

# The small CPU preset (64 px, width 0.25); configs/inpaint_256.json has the paper's settings.
DEFAULT_CONFIG: dict[str, Any] = {
    "resolution": 64,
    "width": 0.25,
    "attention": "an",
    "num_entities": 16,
    "an_kwargs": {},
    "hole_fill": "zero",      # "zero" (paper) | "pushpull" / "harmonic" (smooth fill + residual stages)
    "critic": "global_local",
    "critic_width": 0.25,
    "mask_kind": None,        # None: "box" for global_local, "mixed" for patch/none
    "data": None,             # image folder, or None: scikit-image photos (``photos``)
    "photos": "train",        # without data: a split ("train", "train+extra") or a list of photo names
    "augment": None,          # dict of attnorm.data.photos.augment_image options (rotate, vflip, hue, ...)
    "data_length": 1000000,   # virtual samples per epoch (crops/masks seeded per sample)
    "crop_scale": [1.0, 2.0],
    "batch_size": 8,
    "steps": 2000,
    "warmup_steps": 200,      # L1-only generator steps (no critic update, adversarial weight 0)
    "lr_g": 1e-4,
    "lr_d": 1e-4,
    "betas": [0.5, 0.9],
    "lr_final_fraction": 0.0,  # the last this fraction of the budget (steps or max_seconds) at lr_final_mult x the rates
    "lr_final_mult": 0.25,
    "d_steps": 5,
    "gan_weight": 1e-3,
    "hole_weight": 1.4,
    "known_weight": 1.2,
    "coarse_weight": 1.2,
    "ortho_weight": 0.2,
    "gp_weight": 10.0,
    "gamma": 0.9,
    "ssim_weight": 0.0,       # 1 - SSIM of the refined composite over the hole's windows (not in the paper)
    "ema_decay": 0.999,       # None: no EMA
    "ema_start": 200,
    "seed": 0,
    "device": "cpu",
    "threads": None,
    "amp": None,              # bf16 autocast; None: on for CUDA
    "channels_last": None,    # None: on (CUDA; the CPU preset's step 1.15-1.18x faster, session 13)
    "triton": False,          # CUDA: AN's statistics and pixel sums as Triton kernels (attnorm.training.config.use_triton)
    "log_every": 10,
    "ckpt_every": 250,
    "keep_every": 0,          # also keep the checkpoint of every this-many steps; 0: none
    "sample_every": 250,
    "sample_count": 4,
    "max_seconds": None,
}


def resolve_config(config_file: str | os.PathLike | None = None, overrides: dict | None = None,
                   base: dict | None = None) -> dict:
    """``base`` (default :data:`DEFAULT_CONFIG`) <- JSON file <- ``overrides``; unknown keys raise,
    ``_comment``-style keys are ignored."""
    return layered_config(DEFAULT_CONFIG, config_file, overrides, base, ignore_underscore=True)


def check_config(cfg: dict) -> dict:
    """Validate and fill the ``None`` = automatic entries; returns a new dict."""
    cfg = dict(cfg)
    if cfg["critic"] not in CRITICS:
        raise ValueError(f"critic must be one of {CRITICS}, got {cfg['critic']!r}")
    if cfg["mask_kind"] is None:
        cfg["mask_kind"] = "box" if cfg["critic"] == "global_local" else "mixed"
    if cfg["mask_kind"] not in ("box", "center", "free_form", "mixed", "binned"):
        raise ValueError(f"mask_kind must be box, center, free_form, mixed or binned, got {cfg['mask_kind']!r}")
    r = int(cfg["resolution"])
    if r < 16 or r % 4:
        raise ValueError(f"resolution must be a multiple of 4 and >= 16, got {r}")
    if int(cfg["d_steps"]) < 1:
        raise ValueError(f"d_steps must be >= 1, got {cfg['d_steps']}")
    cuda = str(cfg["device"]).startswith("cuda")
    if cfg["amp"] is None:
        cfg["amp"] = cuda
    if cfg["channels_last"] is None:
        cfg["channels_last"] = True
    return cfg


# ---------------------------------------------------------------------------- data
class InpaintData:
    """Endless virtual dataset of (image, mask) pairs for :class:`BatchStream`.

    Sample ``i`` is base image ``i % n`` (its random crop seeded by ``i``, through the
    base dataset's epoch ``i // n``) with mask ``masks(i)``. ``get_batch`` returns
    a :class:`LazyBatch` whose ``load()`` gives ``(images (b, 3, R, R), masks (b, 1, R, R))``.
    """

    def __init__(self, base, masks: MaskGenerator, length: int) -> None:
        self.base, self.masks, self.length = base, masks, int(length)

    def __len__(self) -> int:
        return self.length

    def _image(self, i: int) -> Tensor:
        n = len(self.base)
        self.base.set_epoch(i // n)
        return self.base[i % n]

    def load(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        return torch.stack([self._image(i) for i in indices]), self.masks.batch(indices)

    def get_batch(self, indices: list[int]) -> "LazyBatch":
        return LazyBatch(self, list(indices))


class LazyBatch:
    """A batch that is decoded only when used (``load()``): the skipped critic phases of the
    warm-up draw batches from the stream (keeping its order) without paying for crops/masks."""

    def __init__(self, data: InpaintData, indices: list[int]) -> None:
        self.data, self.indices = data, indices

    def load(self) -> tuple[Tensor, Tensor]:
        return self.data.load(self.indices)


def make_image_dataset(cfg: dict, split: str = "train", crop: str = "random"):
    scale = tuple(float(s) for s in cfg["crop_scale"])
    if cfg["data"]:
        from attnorm.data.photos import ImageFolderFlat
        return ImageFolderFlat(cfg["data"], resolution=cfg["resolution"], crop=crop, seed=cfg["seed"], scale=scale)
    from attnorm.data.photos import SkimagePhotos
    if split == "train":
        photos = cfg.get("photos") or "train"
        names = None if isinstance(photos, str) else list(photos)
        split = photos if isinstance(photos, str) else split
        return SkimagePhotos(split, resolution=cfg["resolution"], crop=crop, seed=cfg["seed"], scale=scale,
                             names=names, augment=cfg.get("augment"))
    return SkimagePhotos(split, resolution=cfg["resolution"], crop=crop, seed=cfg["seed"], scale=scale)


def sample_batch(cfg: dict) -> tuple[Tensor, Tensor]:
    """The fixed images + masks of the sample sheets: held-out skimage photos (or the first
    images of ``data``), centre crops, masks ``MaskGenerator(mask_kind, R, seed + 777)``."""
    ds = make_image_dataset(cfg, split="heldout", crop="center")
    n = min(int(cfg["sample_count"]), len(ds))
    x = torch.stack([ds[i] for i in range(n)])
    m = MaskGenerator(cfg["mask_kind"], cfg["resolution"], seed=int(cfg["seed"]) + 777).batch(range(n))
    return x, m


# ---------------------------------------------------------------------------- phases
class InpaintPhaseLoss:
    """The loop's loss object: ``run_phase("D" | "G", (images, masks))``.

    During warm-up (``step() < warmup_steps``, ``step`` read from the loop) the ``D``
    phase returns without computing anything (no gradient, so Adam leaves the critics
    untouched) and the ``G`` phase uses ``InpaintLoss(l1_only=True)``; both report
    ``adv_weight`` (0 in warm-up, ``gan_weight`` after).
    """

    def __init__(self, G: nn.Module, criterion: InpaintLoss, warmup_steps: int, device: torch.device,
                 amp: bool = False, channels_last: bool = False,
                 step_fn: Callable[[], int] = lambda: 0, critics: nn.Module | None = None,
                 world_size: int = 1) -> None:
        self.G, self.criterion, self.warmup_steps = G, criterion, int(warmup_steps)
        # multi-process: gradients are averaged over the ranks after each backward
        # (not through DistributedDataParallel, which cannot double-backward the penalty)
        self.critics, self.world_size = critics, int(world_size)
        self.device, self.amp, self.channels_last = device, bool(amp), bool(channels_last)
        self.step_fn = step_fn
        self.gan_weight = criterion.gan_weight

    def in_warmup(self) -> bool:
        return self.step_fn() < self.warmup_steps or not self.criterion.has_critic

    def _autocast(self):
        if self.amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _inputs(self, batch) -> tuple[Tensor, Tensor]:
        x, m = batch.load() if isinstance(batch, LazyBatch) else batch
        x, m = x.to(self.device, non_blocking=True), m.to(self.device, non_blocking=True)
        if self.channels_last:
            x, m = x.contiguous(memory_format=torch.channels_last), m.contiguous(memory_format=torch.channels_last)
        return x, m

    def run_phase(self, name: str, batch) -> dict[str, Tensor | float]:
        warm = self.in_warmup()
        adv_weight = 0.0 if warm else self.gan_weight
        if name == "D":
            if warm:  # no forward, no gradient: the optimizer step changes nothing
                return {"D/adv_weight": adv_weight}
            x, m = self._inputs(batch)
            with torch.no_grad(), self._autocast():
                refined = self.G(x, m)[1]
            with self._autocast():
                out = self.criterion.discriminator_step(x, refined.float(), m)
            out["loss"].float().backward()
            if self.critics is not None:
                average_gradients(self.critics, self.world_size)
            stats = {f"D/{k}": v for k, v in out.items()}
            stats["D/adv_weight"] = adv_weight
            return stats
        if name == "G":
            x, m = self._inputs(batch)
            self.criterion.l1_only = warm
            with self._autocast():
                coarse, refined = self.G(x, m)
                out = self.criterion.generator_step(x, m, coarse.float(), refined.float(),
                                                    generator=_unwrap(self.G))
            out["loss"].float().backward()
            average_gradients(self.G, self.world_size)
            stats = {f"G/{k}": v for k, v in out.items()}
            stats["G/adv_weight"] = adv_weight
            return stats
        raise ValueError(f"unknown phase {name!r}")


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if hasattr(m, "module") and isinstance(m.module, nn.Module) else m


def build_models(cfg: dict) -> tuple[InpaintGenerator, dict[str, nn.Module]]:
    """The generator and the critics of ``cfg['critic']`` (dict name -> module, maybe empty)."""
    g = InpaintGenerator(width=cfg["width"], attention=cfg["attention"], num_entities=cfg["num_entities"],
                         hole_fill=cfg.get("hole_fill") or "zero", **cfg["an_kwargs"])
    r, cw = int(cfg["resolution"]), cfg["critic_width"]
    if cfg["critic"] == "global_local":
        critics = {"global": GlobalCritic(r, width=cw), "local": LocalCritic(r // 2, width=cw)}
    elif cfg["critic"] == "patch":
        critics = {"patch": PatchCritic(width=cw)}
    else:
        critics = {}
    return g, critics


class _Critics(nn.Module):
    """The critics as one module (one phase, one optimizer)."""

    def __init__(self, critics: dict[str, nn.Module]) -> None:
        super().__init__()
        self.critics = nn.ModuleDict(critics)


@torch.no_grad()
def inpaint_sheet(G: nn.Module, x: Tensor, m: Tensor) -> np.ndarray:
    """Rows: samples; columns: input (hole white) | coarse | refined | composite | ground truth."""
    param = next(G.parameters())
    xd, md = x.to(param.device, param.dtype), m.to(param.device, param.dtype)
    with eval_mode(G):
        coarse, refined = G(xd, md)[:2]
    coarse, refined = coarse.float().cpu(), refined.float().cpu()
    hole = (m >= 0.5).expand_as(x)
    masked = torch.where(hole, torch.ones_like(x), x)
    composite = torch.where(hole, refined, x)
    tiles = torch.stack([masked, coarse, refined, composite, x], dim=1).flatten(0, 1)  # (5n, 3, R, R)
    return make_grid(to_uint8(tiles), ncol=5)


class InpaintTraining(TaskRun):
    """Everything one inpainting run needs, built from a resolved config (:func:`resolve_config`;
    its ``None`` entries are filled by :func:`check_config`, and the filled config is what
    ``config.json`` stores) for the run folder ``run_dir``. Progress goes to
    :mod:`attnorm.training.loop`'s logger."""

    def __init__(self, cfg: dict, run_dir: str | os.PathLike):
        cfg = check_config(cfg)
        device = self.setup(cfg, run_dir)  # the same initial weights on every rank
        self.images = make_image_dataset(cfg)
        masks = MaskGenerator(cfg["mask_kind"], cfg["resolution"], seed=int(cfg["seed"]) + 1)
        self.dataset = InpaintData(self.images, masks, cfg["data_length"])
        self.G, critics = build_models(cfg)
        self.D = _Critics(critics)
        mf = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
        self.G.to(device, memory_format=mf)
        self.D.to(device, memory_format=mf)
        self.ema = EMA(self.G, decay=cfg["ema_decay"], start_step=cfg["ema_start"]) \
            if cfg["ema_decay"] is not None else None
        self.seed_rank()  # per-rank RNG streams (SSR positions); data comes per rank from the stream
        self.make_optimizers()
        self.criterion = InpaintLoss(
            critics.get("global"), critics.get("local"), critics.get("patch"),
            gan_weight=cfg["gan_weight"], hole_weight=cfg["hole_weight"], known_weight=cfg["known_weight"],
            coarse_weight=cfg["coarse_weight"], ortho_weight=cfg["ortho_weight"], gp_weight=cfg["gp_weight"],
            gamma=cfg["gamma"], ssim_weight=float(cfg.get("ssim_weight") or 0.0))
        self.loss = InpaintPhaseLoss(self.G, self.criterion, cfg["warmup_steps"], device, amp=cfg["amp"],
                                     channels_last=cfg["channels_last"], critics=self.D,
                                     world_size=self.world_size)
        self.sample_x, self.sample_m = sample_batch(cfg)
        phases = [Phase("G", self.G, self.opt_g)]
        if critics:
            phases.insert(0, Phase("D", self.D, self.opt_d, repeats=int(cfg["d_steps"])))
        self.make_loop(phases, self.loss, self.dataset, self.ema,
                       extra_state={"task": "inpaint", "config": cfg, "generator": dict(self.G.config)})
        self.loss.step_fn = lambda: self.loop.step

    @property
    def sample_generator(self) -> nn.Module:
        return self.ema.shadow if self.ema is not None else self.G

    def save_samples(self, step: int) -> Path:
        sheet = inpaint_sheet(self.sample_generator, self.sample_x, self.sample_m)
        return save_image(sheet, self.run_dir / "samples" / f"step_{step:07d}.png")
