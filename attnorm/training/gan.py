"""Class-conditional GAN training setup: config -> models, optimizers, data, loop.

Config (flat JSON dict, see :data:`DEFAULT_CONFIG`; files in ``configs/gan_*.json``):
models (``resolution``, ``ch``, ``d_ch``, ``z_dim``, ``attention``, ``num_entities``,
``an_kwargs``), data (``data``: an image folder with one subfolder per class, or
null for the procedural shapes with ``procedural_classes`` classes), optimisation
(Adam ``lr_g`` 1e-4 / ``lr_d`` 4e-4, ``betas`` (0, 0.999), ``d_steps`` per G step,
``ortho_weight``, ``ema_decay``, ``ema_start``, ``diffaugment``: a DiffAugment policy such as
"color,translation,cutout" for every image D sees, ``mode_seeking``: MSGAN's term, ``wrong_label``: D's class margin), run control (``steps``,
``batch_size``, ``seed``, ``device``, ``threads``, ``log_every``, ``ckpt_every``, ``keep_every``
(also keep every this-many steps' checkpoint as ``checkpoints/step_XXXXXXX.pt``),
``sample_every``, ``samples_per_class``, ``max_seconds``, ``amp``: bf16 autocast for G's and D's
forward passes), distributed (``sync_bn``).

A run folder holds ``config.json`` (the resolved config), ``stats.jsonl``,
``samples/step_XXXXXXX.png`` (rows: classes, columns: one fixed z each) and
``checkpoints/latest.pt``. The checkpoint's ``extra`` entry stores the model
constructor configs, so :func:`attnorm.checkpoints.load_gan_generator` rebuilds G from the file alone.

Distributed: when ``WORLD_SIZE`` > 1 (``torchrun``), the process group is set up
(gloo on CPU, nccl on CUDA), G and D are wrapped in DistributedDataParallel, every
rank draws its own slice of each global batch, and rank 0 writes the files (the
logged losses are rank 0's). ``sync_bn`` (null: on CUDA only, true, false) makes G's
batch norms (the final BN and the one inside every CBN) use the statistics of the
global batch: ``nn.SyncBatchNorm`` on CUDA, :class:`attnorm.models.gan.DistributedBatchNorm2d`
on CPU (torch's SyncBatchNorm refuses CPU tensors). Without it each rank normalises
with its own batch and keeps its own running statistics (rank 0's are saved).
``max_seconds`` is decided by rank 0's clock for all ranks, so they stop at the same step.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from attnorm.inference import class_samples
from attnorm.io import to_uint8
from attnorm.losses.augment import parse_policy
from attnorm.losses.gan import HingeGANLoss, check_g_adversarial, check_relativistic
from attnorm.models.gan import D_ARCHS, Generator, build_gan, convert_distributed_batchnorm
from attnorm.training.config import TaskRun, check_compile_mode, layered_config, native_bf16_cpu
from attnorm.training.loop import EMA, Phase
from attnorm.viz.grid import make_grid, save_image

log = logging.getLogger(__name__)

# The small CPU preset: 32 px, ch 16. It keeps the supplement's ResBlock G/D with AN and adds
# what learning within CPU minutes needs (issue 8; each is a config key, and the paper presets
# configs/gan_64.json / gan_128.json switch them off): the SN-GAN projection term in D, a class
# embedding concatenated to z in G (the listing's G sees the class only through CBN tables that
# start class-independent and barely move in a short run), 3 D steps per G step at equal learning
# rates (with 1 step D stayed near chance), and ProGAN's minibatch-stddev channel in D (against
# within-class collapse).
DEFAULT_CONFIG: dict[str, Any] = {
    "resolution": 32,
    "ch": 16,
    "d_ch": None,            # None: same as ch
    "d_arch": "resblock",    # "resblock": the listing's D; "conv": a light DCGAN-style D (models.gan.ConvDiscriminator)
    "d_channel_mults": None, # D's width per block in units of d_ch (None: the listing's 1, 2, 4, ...)
    "g_channel_mults": None, # G's width per stage in units of ch, 4x4 first (None: the listing's last entries, 8, 4, 2, 1 at 32 px)
    "d_projection": True,    # add SN-GAN's projection term to D (not in the paper's listing)
    "z_dim": 128,
    "g_class_embed": 32,     # >0: class embedding concatenated to z in G (not in the listing)
    "class_lr_mult": 1.0,    # learning-rate multiplier of G's class-conditional parameters
    "g_spectral_norm": True, # spectral norm on G's layers (the listing); False: plain layers
    "g_hierarchical_z": False,  # BigGAN's hierarchical latent: z split into chunks, one per G block's norms (not in the listing)
    "g_coords": False,       # CoordConv: x/y channels into each G block's first conv (not in the listing)
    "g_upsample": "nearest",  # how G's blocks double the map: "nearest" (the listing), "bilinear", "shuffle" (learned sub-pixel), or one per block ("bilinear,bilinear,nearest")
    "g_skip": False,         # StyleGAN2's skip generator: every block adds an RGB image, bilinearly doubled (not in the listing)
    "g_grain": 0.0,          # > 0: G adds per-pixel Gaussian noise of a learned std per channel, starting here, to its image
    "g_fourier": 0,          # >0: this many per-sample plane waves (from z and the class) into each G block's first conv
    "d_mbstd": 4,            # >0: minibatch-stddev channel in D over groups of this size (not in the listing)
    "d_mbstd_by_class": False,  # group that channel by class label (the spread within a class) instead of by position
    "d_mbstd_channels": 1,   # that many minibatch-stddev channels, one per group of D's feature channels (StyleGAN's num_channels)
    "d_mbstd_spatial": False,  # keep the minibatch stddev per position instead of its mean over the map
    "attention": "an",       # "an" | "sa" | "none"
    "num_entities": 16,
    "an_kwargs": {},         # extra AttentiveNorm arguments, e.g. {"self_sampling": false}
    "data": None,            # image folder (one subfolder per class) or None: procedural shapes
    "procedural_classes": 10,
    "procedural_length": 50000,
    "procedural_pose": "random",  # "random" | "upright" | "centred" (attnorm.data.procedural)
    "cache_images": True,    # folder data: keep decoded images in memory
    "batch_size": 16,
    "steps": 2000,
    "lr_g": 2e-4,
    "lr_d": 2e-4,
    "betas": [0.0, 0.9],
    "lr_final_fraction": 0.0,  # the last this fraction of the budget (steps or max_seconds) at lr_final_mult x the rates
    "lr_final_mult": 0.25,
    "d_steps": 3,
    "diffaugment": "",       # DiffAugment policy on every image D sees, e.g. "color,translation,cutout"
    "cr": 0.0,               # weight of balanced consistency regularisation of D (bCR: mirror + shift; 0: off)
    "g_adv": "hinge",        # G's adversarial loss: "hinge" (-logit) or "ns" (non-saturating softplus(-logit))
    "g_topk": 1.0,           # G learns from this fraction of its fakes, those D scores highest (top-k training; 1: all)
    "spectrum_matching": 0.0,  # weight of a G term matching the batch's radial power spectrum to the real images' (0: off)
    "relativistic": False,   # true: the relativistic pairing loss (RpGAN) for D and G instead of the hinge, fakes paired with reals of their class
    "instance_noise": 0.0,   # std of Gaussian noise on every image D sees, real and fake ([-1, 1] pixel units; 0: off)
    "mode_seeking": 0.0,     # weight of MSGAN's mode-seeking term in G's loss (0: off)
    "feature_matching": 0.0,  # >0: G also matches the batch mean of D's pooled features on real images (Salimans et al.)
    "mode_seeking_norm": "",  # "image": that term's image distance over the images' own contrast; "batch": over the batch's spread (not MSGAN's)
    "mode_seeking_pairs": False,  # true: the term per pair, mean of 1 / ratio_i (a collapsed pair pushed hardest)
    "mode_seeking_cap": 0.0, # >0: pairs whose ratio reaches this are not pushed further apart (0: no cap)
    "mode_seeking_pool": 1,  # >1: that term's image distance on the images average-pooled by this factor
    "mode_seeking_features": 0.0,  # weight of the per-pair term in D's pooled features instead of pixels (0: off)
    "reuse_fakes": False,    # G phase first; the D phase then scores its fakes (one G forward per step fewer)
    "share_fakes": False,    # the D phase's fakes, made with G's graph, are what the G phase after it trains on (likewise)
    "wrong_label": 0.0,      # weight of D's class margin: a real image scores >= 1 higher with its label than a wrong one
    "r1": 0.0,               # gamma of the R1 penalty on D's gradient at real images (0: off)
    "r1_every": 1,           # lazy R1: every this-many D phases, scaled by it
    "lecam": 0.0,            # weight of the LeCam regulariser on D's logits (0: off)
    "lecam_steps": 0,        # LeCam in the first this-many D phases only (0: throughout)
    "ortho_weight": 1e-3,
    "init_g": None,          # start G (and its EMA) from this generator: an exported .safetensors or a train-gan checkpoint (its EMA)
    "d_warmup_steps": 0,     # the first this-many steps train D alone (G fixed): a new D catches up with a trained G
    "ema_decay": 0.995,      # short CPU runs; the GPU configs use 0.9999 from step 20k
    "ema_start": 100,        # the EMA copies G for the first ema_start steps
    "seed": 0,
    "device": "cpu",
    "threads": None,         # torch.set_num_threads (None: torch's default)
    "log_every": 10,
    "ckpt_every": 250,
    "keep_every": 0,         # also keep the checkpoint of every this-many steps (checkpoints/step_XXXXXXX.pt); 0: none
    "sample_every": 250,
    "samples_per_class": 8,
    "max_seconds": None,     # stop (with a checkpoint) after this much training time
    "sync_bn": None,         # DDP: G's BN statistics over the global batch (None: only on CUDA)
    "compile": None,         # train G and D through torch.compile with this mode ("default", "reduce-overhead", ...)
    "amp": False,            # G's and D's forward passes under bf16 autocast; None: on for a CPU with native bf16
    "channels_last": None,   # G and D (and their maps) in channels_last memory format; None: on (CPU step ~1.2x faster)
    "triton": False,         # CUDA: AN's statistics and pixel sums as Triton kernels (attnorm.training.config.use_triton)
}


# What ``attnorm demo`` trains (issue 8): the CPU preset's G with AN (plus a hierarchical latent), on the procedural shapes
# drawn upright in the centre ("centred" pose: colours and backgrounds still vary), against the
# light DCGAN-style D (``d_arch="conv"``, 32 wide), one D step per G step, batch 32, Adam betas
# (0.5, 0.999). Measured cause of the old demo's failure: with the shapes' random position, scale
# and rotation no GAN tried (this one, a plain DCGAN) learned the classes in ~1000 steps, and the
# thin ResBlock D (16-64 channels) gave G almost no class signal even on centred shapes; wider
# ResBlock Ds cost more time than they gave (README, "The demo").
# Session 11 added BigGAN's hierarchical latent to G (over three seeds at 1400 steps its samples lay
# closer to the real images and varied more within a class) and bf16 autocast where the CPU has it
# natively (``amp=None``: about 1.4x the steps in five minutes, the same quality per step).
# Session 12 added the minibatch stddev grouped by class (``d_mbstd_by_class``, as in the shipped
# configs/gan_centred32.json): over three seeds of five minutes the samples varied more inside a class
# (within-class spread 0.87 against 0.66 of the data's) and recall rose from 0.017 to 0.114, at a lower
# class accuracy (0.79 against 0.89); without it the rows had one or two colour schemes each. (In session
# 9, without the hierarchical latent, it had scored lower in five minutes.)
# Session 13 added MSGAN's mode-seeking term (``mode_seeking=0.3``): over three seeds of five minutes on one
# thread recall rose from 0.13 to 0.17 (higher in every seed), at an accuracy of 0.81 against 0.84
# (benchmarks/results/gan_demo_levers_s13/); the demo as shipped (two threads, three seeds) 0.14 -> 0.19.
# Session 14 raised its weight to 1.0 (MSGAN's own default): over three seeds of five minutes on one thread
# recall 0.17 -> 0.27 (higher in every seed), accuracy 0.81 -> 0.85, FID 11.0 -> 6.9
# (benchmarks/results/gan_demo_levers_s14/); the demo as shipped (two threads, five seeds) recall 0.32 (0.23-0.40).
# Session 15 found that MSGAN's pixel distance also rewards contrast: at weight 1.0 the images came out over-bright
# and over-saturated (pixel std and chroma 1.17x the data's, k-NN radius 1.47 against the data's 0.96), which also
# inflates recall's k-NN balls. The term now measures the distance relative to the images' own contrast
# (``mode_seeking_norm="image"``, weight 2.0): over three seeds of five minutes on one thread, against session 14's
# weight 1.0, accuracy 0.85 -> 0.94, precision 0.35 -> 0.47, FID 6.9 -> 2.8, contrast and chroma 1.00-1.07x the
# data's, recall 0.27 -> 0.25 (within the seed spread) (benchmarks/results/gan_demo_levers_s15/).
# Session 23 slowed the EMA from 0.995 to 0.998 (a horizon of ~500 steps instead of ~200): at the 2000 steps a
# slower host makes in five minutes, the same four training runs (the EMA does not change them) averaged at 0.998
# scored higher precision and lower FID in every seed, recall level or higher (benchmarks/results/gan_demo_levers_s23/).
# Session 31 takes the mode-seeking term per pair (``mode_seeking_pairs``: the closest pairs pushed hardest): the demo
# as shipped, eight seeds on the 2-core AMD EPYC, each beside the previous preset in turn, raised recall in seven of
# eight (0.323 against 0.264), accuracy and precision level, FID higher in six of eight but within its seed spread
# (benchmarks/results/gan_demo_s31/).
# Session 33 tried Adam's betas (0, 0.99) (StyleGAN2's): at 2000 steps on one thread recall rose in four seeds of four
# (0.345 against 0.276), but the demo as shipped with them, eight seeds, scored 0.293 +- 0.025 (FID 4.95) where session
# 31's eight runs of this preset scored 0.323 +- 0.051 (FID 4.19): not adopted (benchmarks/results/gan_demo_s33/).
# Session 37 doubles G's residual paths by a learned sub-pixel convolution (``g_upsample="shuffle"``, starting as the
# nearest-neighbour copies): four one-thread screens and four full demos beside the same day's preset, class accuracy
# higher and FID lower in all eight runs, recall higher in three of four full demos (benchmarks/results/gan_demo_levers_s37/).
# Session 39 splits D's class-grouped minibatch stddev into four channels, one per quarter of D's features
# (``d_mbstd_channels=4``, StyleGAN's num_channels): four one-thread screens at 2000 steps raised recall in all four
# (0.361 against 0.314) at a lower precision; eight full demos on both cores scored recall 0.437 +- 0.035, all eight
# at or above 0.30, against 0.364 +- 0.054 for the eight runs of sessions 37-38 (higher in six seeds), accuracy,
# precision and FID level (benchmarks/results/gan_demo_s39/).
DEMO_CONFIG: dict[str, Any] = {
    **DEFAULT_CONFIG,
    "procedural_pose": "centred",
    "d_arch": "conv",
    "d_ch": 32,
    "batch_size": 32,
    "d_steps": 1,
    "betas": [0.5, 0.999],
    "g_hierarchical_z": True,
    "d_mbstd_by_class": True,
    "d_mbstd_channels": 4,
    "mode_seeking": 2.0,
    "mode_seeking_norm": "image",
    "mode_seeking_pairs": True,
    "g_upsample": "shuffle",
    "ema_decay": 0.998,
    "amp": None,
}

def resolve_config(config_file: str | os.PathLike | None = None, overrides: dict | None = None,
                   base: dict | None = None) -> dict:
    """``base`` (default :data:`DEFAULT_CONFIG`) <- JSON file <- ``overrides``; unknown keys raise."""
    cfg = layered_config(DEFAULT_CONFIG, config_file, overrides, base, ignore_underscore=True)
    parse_policy(cfg["diffaugment"])  # a one-line ValueError naming the known policies
    check_g_adversarial(cfg["g_adv"], float(cfg["g_topk"]))  # likewise for G's loss kind and top-k fraction
    check_relativistic(bool(cfg["relativistic"]), cfg["g_adv"], float(cfg["g_topk"]), bool(cfg.get("reuse_fakes")),
                       bool(cfg.get("share_fakes")))
    from attnorm.data.procedural import POSES
    if cfg["procedural_pose"] not in POSES:
        raise ValueError(f"procedural_pose must be one of {', '.join(POSES)}, got {cfg['procedural_pose']!r}")
    if cfg["d_arch"] not in D_ARCHS:
        raise ValueError(f"d_arch must be one of {', '.join(D_ARCHS)}, got {cfg['d_arch']!r}")
    check_compile_mode(cfg.get("compile"))
    if cfg.get("amp") is None:  # auto: where bf16 was measured faster (not measured for this GAN on CUDA)
        cfg["amp"] = not str(cfg["device"]).startswith("cuda") and native_bf16_cpu()
    if cfg.get("channels_last") is None:  # auto: on (measured on the CPU, session 13; the usual choice on CUDA)
        cfg["channels_last"] = True
    return cfg


def make_dataset(cfg: dict):
    """The training dataset: procedural shapes, or an image folder if ``cfg['data']`` is set."""
    if cfg["data"]:
        from attnorm.data.folder import ImageFolderDataset
        return ImageFolderDataset(cfg["data"], resolution=cfg["resolution"], hflip=True,
                                  cache=bool(cfg["cache_images"]))
    from attnorm.data.procedural import ProceduralShapes
    return ProceduralShapes(resolution=cfg["resolution"], num_classes=cfg["procedural_classes"],
                            length=cfg["procedural_length"], seed=cfg["seed"], pose=cfg["procedural_pose"])


def init_generator(G: Generator, path: str | os.PathLike) -> None:
    """Load the generator saved in ``path`` (an exported ``.safetensors`` file or a ``train-gan``
    checkpoint's EMA generator, batch-norm statistics included) into the run's new ``G``. A file
    whose generator is built differently is a one-line ValueError naming the keys that differ."""
    from attnorm.checkpoints import load_gan_generator
    from attnorm.errors import UserError
    try:
        src, _ = load_gan_generator(path)
    except (UserError, FileNotFoundError) as exc:
        raise ValueError(f"init_g: {exc}") from None
    mine, theirs = G.get_config(), src.get_config()
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        shown = ", ".join(f"{k}: run {mine.get(k)!r}, file {theirs.get(k)!r}" for k in diff[:4])
        raise ValueError(f"init_g={path}: that generator is built differently from this run's ({shown}); "
                         "give the run the same generator keys or another file")
    G.load_state_dict(src.state_dict())
    log.info("G starts from %s", path)


def generator_param_groups(G: nn.Module, lr: float, class_lr_mult: float = 1.0) -> list[dict]:
    """Adam parameter groups: G's class-conditional tables (CBN gains/biases, class embedding)
    at ``lr * class_lr_mult``, everything else at ``lr``."""
    cls, rest = [], []
    for name, p in G.named_parameters():
        (cls if (".gain." in name or ".bias.weight" in name and "cbn" in name or name.startswith("class_embed"))
         else rest).append(p)
    if class_lr_mult == 1.0:
        return [{"params": cls + rest}]
    return [{"params": rest}, {"params": cls, "lr": lr * float(class_lr_mult)}]


def fixed_latents(cfg: dict, z_dim: int) -> torch.Tensor:
    """The fixed z of the sample grids: one per column, shared by all class rows."""
    gen = torch.Generator().manual_seed(int(cfg["seed"]) + 12345)
    return torch.randn(cfg["samples_per_class"], z_dim, generator=gen)


def class_grid(G: Generator, z: torch.Tensor, classes: list[int], device="cpu") -> np.ndarray:
    """Rows = classes, columns = the given z; G in eval mode (no SSR, running BN stats)."""
    return make_grid(to_uint8(class_samples(G, z, classes, device)[0]), ncol=z.shape[0])


class GANTraining(TaskRun):
    """Everything one GAN run needs, built from a resolved config (:func:`resolve_config`) for
    the run folder ``run_dir``. Progress goes to :mod:`attnorm.training.loop`'s logger."""

    def __init__(self, cfg: dict, run_dir: str | os.PathLike):
        device = self.setup(cfg, run_dir)  # same initial weights on every rank
        compile_mode = cfg.get("compile")
        if compile_mode and self.world_size > 1:
            raise ValueError(f"compile={compile_mode} is not supported with distributed training yet; "
                             "drop compile= or train on one process")
        self.dataset = make_dataset(cfg)
        self.num_classes = len(self.dataset.classes)
        self.G, self.D = build_gan(resolution=cfg["resolution"], ch=cfg["ch"], num_classes=self.num_classes,
                                   z_dim=cfg["z_dim"], attention=cfg["attention"], num_entities=cfg["num_entities"],
                                   an_kwargs=cfg["an_kwargs"], d_ch=cfg["d_ch"], projection=bool(cfg["d_projection"]),
                                   class_embed_dim=int(cfg.get("g_class_embed") or 0),
                                   g_spectral_norm=bool(cfg.get("g_spectral_norm", True)),
                                   mbstd_group=int(cfg.get("d_mbstd") or 0),
                                   d_channel_mults=cfg.get("d_channel_mults"), d_arch=cfg.get("d_arch") or "resblock",
                                   mbstd_by_class=bool(cfg.get("d_mbstd_by_class")),
                                   mbstd_channels=int(cfg.get("d_mbstd_channels") or 1),
                                   mbstd_spatial=bool(cfg.get("d_mbstd_spatial")),
                                   hierarchical_z=bool(cfg.get("g_hierarchical_z")),
                                   g_coords=bool(cfg.get("g_coords")), g_fourier=int(cfg.get("g_fourier") or 0),
                                   g_upsample=cfg.get("g_upsample") or "nearest", g_skip=bool(cfg.get("g_skip")),
                                   g_grain=float(cfg.get("g_grain") or 0.0),
                                   g_channel_mults=cfg.get("g_channel_mults"))
        if cfg.get("init_g"):
            init_generator(self.G, cfg["init_g"])
        sync_bn = cfg.get("sync_bn")  # .get: configs saved before the key existed
        if sync_bn is None:
            sync_bn = device.type == "cuda"
        if self.world_size > 1 and sync_bn:  # BN statistics over the global batch
            if device.type == "cuda":
                self.G = nn.SyncBatchNorm.convert_sync_batchnorm(self.G)
            else:  # nn.SyncBatchNorm refuses CPU tensors
                self.G = convert_distributed_batchnorm(self.G)
        mf = torch.channels_last if cfg.get("channels_last") else torch.contiguous_format
        self.G.to(device, memory_format=mf), self.D.to(device, memory_format=mf)
        self.ema = EMA(self.G, decay=cfg["ema_decay"], start_step=cfg["ema_start"])
        self.seed_rank()  # per-rank RNG streams for z and SSR
        g_train, d_train = self.G, self.D
        if self.world_size > 1:
            ddp = nn.parallel.DistributedDataParallel
            kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
            g_train, d_train = ddp(self.G, **kw), ddp(self.D, broadcast_buffers=False, **kw)
        if compile_mode:
            # the loss runs the compiled modules; the optimisers, EMA and checkpoints see the originals.
            # Static shapes: a new batch shape compiles anew (a dynamic-shape recompile of SA failed)
            g_train, d_train = (torch.compile(m, mode=compile_mode, dynamic=False) for m in (self.G, self.D))
        self.make_optimizers(g_params=generator_param_groups(self.G, cfg["lr_g"], cfg.get("class_lr_mult", 1.0)))
        self.loss = HingeGANLoss(g_train, d_train, cfg["z_dim"], self.num_classes, cfg["batch_size"],
                                 ortho_weight=cfg["ortho_weight"], device=device,
                                 augment=cfg["diffaugment"], mode_seeking=cfg["mode_seeking"],
                                 wrong_label=cfg["wrong_label"], amp=bool(cfg.get("amp")),
                                 r1=cfg.get("r1", 0.0), r1_every=cfg.get("r1_every", 1),
                                 lecam=cfg.get("lecam", 0.0), lecam_steps=cfg.get("lecam_steps") or 0,
                                 reuse_fakes=bool(cfg.get("reuse_fakes")),
                                 mode_seeking_norm=cfg.get("mode_seeking_norm", ""),
                                 feature_matching=float(cfg.get("feature_matching") or 0.0),
                                 mode_seeking_pairs=bool(cfg.get("mode_seeking_pairs")),
                                 mode_seeking_features=float(cfg.get("mode_seeking_features") or 0.0),
                                 mode_seeking_pool=int(cfg.get("mode_seeking_pool") or 1),
                                 mode_seeking_cap=float(cfg.get("mode_seeking_cap") or 0.0),
                                 instance_noise=float(cfg.get("instance_noise") or 0.0),
                                 g_adv=cfg.get("g_adv") or "hinge", g_topk=float(cfg.get("g_topk") or 1.0),
                                 cr=float(cfg.get("cr") or 0.0), share_fakes=bool(cfg.get("share_fakes")),
                                 relativistic=bool(cfg.get("relativistic")),
                                 spectrum_matching=float(cfg.get("spectrum_matching") or 0.0))
        self.z_fixed = fixed_latents(cfg, cfg["z_dim"])
        self.sample_classes = list(range(min(self.num_classes, 16)))
        phases = [Phase("D", self.D, self.opt_d, repeats=cfg["d_steps"]),
                  Phase("G", self.G, self.opt_g, needs_data=False, start_step=int(cfg.get("d_warmup_steps") or 0))]
        if cfg.get("reuse_fakes"):  # the D phase scores the fakes of the G phase before it
            phases.reverse()
        self.make_loop(phases, self.loss, self.dataset, self.ema,
                       extra_state={"task": "gan", "config": cfg, "generator": self.G.get_config(),
                                    "discriminator": self.D.get_config(), "classes": list(self.dataset.classes)})
        self.loop.mark_graph_steps = compile_mode == "reduce-overhead"

    def save_samples(self, step: int) -> Path:
        grid = class_grid(self.ema.shadow, self.z_fixed, self.sample_classes, self.device)
        return save_image(grid, self.run_dir / "samples" / f"step_{step:07d}.png")
