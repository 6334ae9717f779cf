"""Run configuration (defaults <- JSON file <- ``key=value`` overrides, every value checked for
its type and bounds) and :class:`TaskRun`, the skeleton both tasks' runners (:mod:`.gan`,
:mod:`.inpaint`) are built on, with the run-folder rules (:func:`check_run_folder`)."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attnorm.errors import RunFolderError, check_device
from attnorm.io import write_text

from .allocator import retain_freed_memory_on
from .distributed import DistributedTrainingLoop, init_distributed, world
from .loop import EMA, BatchStream, Phase, TrainingLoop

log = logging.getLogger(__name__)

_NUMBER = "number"
#: Allowed types of the keys whose default does not show them (default None, or several types);
#: other keys must have the type of their default (a float default also takes an int).
KEY_TYPES: dict[str, tuple] = {
    "d_ch": (int, None), "data": (str, None), "threads": (int, None), "max_seconds": (_NUMBER, None),
    "sync_bn": (bool, None), "mask_kind": (str, None), "augment": (dict, None), "photos": (str, list),
    "amp": (bool, None), "channels_last": (bool, None), "ema_decay": (_NUMBER, None), "gamma": (_NUMBER, None),
    "hole_fill": (str, None), "compile": (str, None), "g_upsample": (str, list),
    "init_g": (str, None),
}
#: torch.compile modes a run's ``compile`` key may name.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def native_bf16_cpu(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (the ``avx512_bf16`` or ``amx_bf16`` flag
    of Linux's ``/proc/cpuinfo``), where oneDNN's bf16 convolutions run faster than float32
    (measured: the demo's GAN step 1.47x on an AMD EPYC with AVX512-BF16). Without it bf16 is
    emulated and slower; False where the flags cannot be read."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", text) is not None


def use_triton(enabled: bool, device: torch.device) -> bool:
    """A run's ``triton`` key: on a CUDA device, switch on AN's Triton statistics and pixel sums
    (:func:`attnorm.layers.triton_statistics`, :func:`attnorm.layers.triton_pixel_sums`) for this
    process; elsewhere they would not apply, and the run says so and goes on with the PyTorch path.
    Returns whether they are on. (Off by default: on an H200 they made the layer 1.4x faster at
    64x64 and 1.65x at 128x128, batch 8, session 19, but no training run has used them on a GPU yet.)"""
    from attnorm.layers import triton_pixel_sums, triton_statistics
    on = bool(enabled) and device.type == "cuda"
    if enabled and not on:
        log.warning("triton=true applies to CUDA devices only; this run on %s uses the PyTorch path", device)
    triton_statistics(on)
    triton_pixel_sums(on)
    return on


class FinalLearningRate:
    """A run's learning-rate schedule from its ``lr_final_fraction`` / ``lr_final_mult`` keys: the
    base rates until the last ``fraction`` of the budget (steps or ``max_seconds``, whichever runs
    out first), ``mult`` times them after: the two phases of the shipped GAN recipe (its second at a
    quarter of the rate) inside one run of any length, e.g. a time-limited demo."""

    def __init__(self, fraction: float, mult: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"lr_final_fraction must be in [0, 1], got {fraction}")
        self.fraction, self.mult = float(fraction), float(mult)

    def __call__(self, progress: float) -> float:
        return self.mult if progress >= 1.0 - self.fraction else 1.0

    @classmethod
    def from_config(cls, cfg: dict) -> "FinalLearningRate | None":
        """None where the config has no final phase (fraction 0 or the keys absent, as in configs
        saved before they existed)."""
        fraction = float(cfg.get("lr_final_fraction") or 0.0)
        if fraction <= 0.0:
            return None
        return cls(fraction, float(cfg.get("lr_final_mult", 1.0)))


def check_compile_mode(mode: str | None) -> None:
    """A one-line ValueError for a ``compile`` value torch.compile does not know."""
    if mode is not None and mode not in COMPILE_MODES:
        raise ValueError(f"compile={mode!r} is not a torch.compile mode; choose from {', '.join(COMPILE_MODES)} "
                         "or leave it out (eager)")
#: Lower bounds of numeric keys (a key missing from a task's defaults is ignored).
MIN_VALUES: dict[str, float] = {
    "batch_size": 1, "steps": 1, "resolution": 1, "ch": 1, "d_ch": 1, "z_dim": 1, "num_entities": 1, "d_steps": 1,
    "procedural_classes": 1, "procedural_length": 1, "data_length": 1, "samples_per_class": 1, "sample_count": 1,
    "threads": 1, "seed": 0, "log_every": 0, "ckpt_every": 0, "keep_every": 0, "sample_every": 0, "ema_start": 0, "warmup_steps": 0, "d_warmup_steps": 0,
    "g_class_embed": 0, "g_fourier": 0, "lr_g": 0, "lr_d": 0, "class_lr_mult": 0, "ortho_weight": 0, "max_seconds": 0,
    "ema_decay": 0, "width": 0, "critic_width": 0, "gan_weight": 0, "hole_weight": 0, "known_weight": 0,
    "coarse_weight": 0, "gp_weight": 0, "gamma": 0, "lr_final_fraction": 0, "lr_final_mult": 0,
    "mode_seeking_pool": 1, "mode_seeking_features": 0, "instance_noise": 0, "g_grain": 0, "cr": 0,
    "spectrum_matching": 0,
}
MAX_VALUES: dict[str, float] = {"seed": 2 ** 32 - 1, "ema_decay": 1, "gamma": 1, "lr_final_fraction": 1}
_TYPE_NAMES = {int: "an integer", float: "a number", _NUMBER: "a number", bool: "true or false", str: "a string",
               list: "a list", dict: "a JSON object", None: "null"}


def _is(value, kind) -> bool:
    if kind is None:
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in (float, _NUMBER):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_config_value(key: str, value, default, where: str) -> None:
    """ValueError (one line, naming ``where`` the value came from) unless ``value`` has the type
    of ``default`` (or :data:`KEY_TYPES`) and is finite and within :data:`MIN_VALUES` / :data:`MAX_VALUES`."""
    kinds = KEY_TYPES.get(key)
    if kinds is None:
        if default is None:
            return
        kinds = (type(default),)
    if not any(_is(value, k) for k in kinds):
        want = " or ".join(dict.fromkeys(_TYPE_NAMES.get(k, getattr(k, "__name__", str(k))) for k in kinds))
        raise ValueError(f"config key {key!r} must be {want}, got {json.dumps(value)} "
                         f"({type(value).__name__}) in {where}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"config key {key!r} must be finite, got {value} in {where}")
        lo, hi = MIN_VALUES.get(key), MAX_VALUES.get(key)
        if lo is not None and value < lo:
            raise ValueError(f"config key {key!r} must be >= {lo}, got {value} in {where}")
        if hi is not None and value > hi:
            raise ValueError(f"config key {key!r} must be <= {hi}, got {value} in {where}")
    if key == "betas" and isinstance(value, list):
        if len(value) != 2 or not all(_is(b, _NUMBER) and 0 <= b < 1 for b in value):
            raise ValueError(f"config key 'betas' must be two numbers in [0, 1), got {json.dumps(value)} in {where}")


def read_config_file(path: str | os.PathLike) -> dict:
    """A JSON config file as a dict; ValueError / FileNotFoundError in one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"config file {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a JSON object {{\"key\": value, ...}}, "
                         f"got {type(data).__name__}")
    return data


def layered_config(defaults: dict, config_file: str | os.PathLike | None = None,
                   overrides: dict | None = None, base: dict | None = None,
                   ignore_underscore: bool = False, base_name: str = "the saved config") -> dict:
    """``defaults`` <- ``base`` <- JSON file <- ``overrides``; keys not in ``defaults`` raise, and
    every given value is checked (:func:`check_config_value`), all as one-line ValueErrors.

    ``ignore_underscore`` drops keys starting with ``_`` (``"_comment"``) from the file and
    the overrides instead of rejecting them. ``base`` (a resumed run's saved config) may lack
    keys added since; they take their defaults.
    """
    cfg = copy.deepcopy(defaults)
    layers = []
    if base is not None:
        layers.append((base_name, base))
    if config_file is not None:
        layers.append((str(config_file), read_config_file(config_file)))
    if overrides:
        layers.append(("overrides", overrides))
    for where, layer in layers:
        if ignore_underscore:
            layer = {k: v for k, v in layer.items() if not str(k).startswith("_")}
        unknown = sorted(map(str, set(layer) - set(defaults)))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown} in {where}; known keys: {sorted(defaults)}")
        for k, v in layer.items():
            check_config_value(k, v, defaults[k], where)
        cfg.update(copy.deepcopy(layer))
    return cfg


# ---------------------------------------------------------------------------- run folders
def checkpoint_file(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints" / "latest.pt"


def check_run_folder(run_dir: str | os.PathLike, resume: bool, overwrite: bool = False) -> None:
    """The run-folder rules: a folder holding a checkpoint is continued only with ``resume`` and
    started over only with ``overwrite``; ``resume`` needs a checkpoint. RunFolderError otherwise."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} is a file; choose another --out")
    ckpt = checkpoint_file(run_dir)
    if resume:
        if overwrite:
            raise RunFolderError("--resume continues the run and --overwrite starts it over; give one of them")
        if not ckpt.is_file():
            raise RunFolderError(f"no checkpoint to resume from at {ckpt}; train without --resume to start the run")
        return
    if ckpt.exists() and not overwrite:
        raise RunFolderError(f"run folder {run_dir} already holds a run (checkpoint {ckpt}); continue it with "
                             "--resume, start it over with --overwrite, or choose another --out")


def clear_run_folder(run_dir: str | os.PathLike) -> None:
    """What a fresh run writes (checkpoints, stats.jsonl, events.jsonl, samples/step_*.png), removed
    so that a run started over (``--overwrite``) does not mix with the old one."""
    run_dir = Path(run_dir)
    for name in ("stats.jsonl", "events.jsonl"):
        (run_dir / name).unlink(missing_ok=True)
    checkpoint_file(run_dir).unlink(missing_ok=True)
    for kept in (run_dir / "checkpoints").glob("step_*.pt"):  # keep_every's
        kept.unlink(missing_ok=True)
    for png in (run_dir / "samples").glob("step_*.png"):
        png.unlink(missing_ok=True)
    if (run_dir / "samples").is_dir() and not any((run_dir / "samples").iterdir()):
        shutil.rmtree(run_dir / "samples", ignore_errors=True)


_STAT_BUSY = (0, 1, 2, 5, 6, 7)  # /proc/stat cpuN fields: user nice system [idle iowait] irq softirq steal


def read_cpu_times(cpus, stat_path: str | os.PathLike = "/proc/stat") -> tuple[int, int] | None:
    """(busy, total) clock ticks since boot, summed over the CPUs numbered in ``cpus``, from Linux's
    ``/proc/stat`` (busy: user, nice, system, irq, softirq, steal; total adds idle and iowait; guest
    time is inside user already); None where the file or one of those CPUs' lines is missing or unreadable."""
    try:
        lines = Path(stat_path).read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    found = set()
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit() or int(name[3:]) not in cpus:
            continue
        try:
            ticks = [int(v) for v in rest.split()[:8]]
        except ValueError:  # not the format this reads: let the caller fall back
            return None
        busy += sum(ticks[i] for i in _STAT_BUSY if i < len(ticks))
        total += sum(ticks)
        found.add(int(name[3:]))
    return (busy, total) if found == set(cpus) else None


def idle_cpu_threads(window: float = 0.5, stat_path: str | os.PathLike = "/proc/stat") -> int:
    """CPU threads worth giving a run now: the cores this process may use minus the cores other
    processes keep busy, at least 1. On an idle 2-core machine that is 2 (the GAN step runs about
    1.5x faster than on one thread); beside another busy process it is 1, because two threads
    competing with a busy core make a step several times slower.

    "Busy" is measured, not remembered: the share of those cores' time spent busy over the next
    ``window`` seconds (``/proc/stat``, read twice), in cores, rounded. The one-minute load average,
    what this used before session 38, decays slowly (2 when a 2-core job such as the test suite ends,
    about 0.7 a minute later), which sent the demo run right after the tests to one thread on an idle
    machine; it remains the fallback where ``/proc/stat`` is not there (not Linux)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = list(range(os.cpu_count() or 1))
    before = read_cpu_times(cpus, stat_path)
    if before is not None:
        time.sleep(window)
        after = read_cpu_times(cpus, stat_path)
        if after is not None and after[1] > before[1]:
            busy = len(cpus) * (after[0] - before[0]) / (after[1] - before[1])
            return max(1, len(cpus) - int(busy + 0.5))
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform: assume a busy machine
        return 1
    return max(1, len(cpus) - int(round(load)))


class TaskRun:
    """What both tasks' runners share: process setup, seeds, the Adam pair, the loop, ``config.json``
    and ``run()``.

    A subclass's constructor calls, in this order, :meth:`setup` (then builds its data and
    ``self.G``, ``self.D`` with the shared seed), :meth:`seed_rank` (per-rank RNG streams),
    :meth:`make_optimizers` and, last, :meth:`make_loop`; it implements ``save_samples(step)``.
    """

    cfg: dict
    run_dir: Path
    rank: int
    world_size: int
    device: torch.device
    G: nn.Module
    D: nn.Module
    loop: TrainingLoop

    def setup(self, cfg: dict, run_dir: str | os.PathLike) -> torch.device:
        """Config, run folder, rank, device (starts the process group under torchrun), thread
        count, and the seed every rank shares (so all start from the same weights). On the CPU
        the process keeps freed heap memory between steps (:mod:`attnorm.training.allocator`)."""
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.rank, self.world_size = world()
        self.device = init_distributed(check_device(cfg["device"]))
        retain_freed_memory_on(self.device)
        if cfg["threads"]:
            torch.set_num_threads(int(cfg["threads"]))
        use_triton(bool(cfg.get("triton")), self.device)  # .get: configs saved before the key existed
        if cfg.get("amp") and self.device.type == "cpu" and not native_bf16_cpu():
            log.warning("amp=true on a CPU without native bf16 (no avx512_bf16 / amx_bf16 in /proc/cpuinfo): "
                        "emulated bf16 runs about 10x slower than float32 here; pass amp=false, or amp=null "
                        "to use bf16 only where the CPU has it")
        torch.manual_seed(cfg["seed"])
        np.random.seed(cfg["seed"])
        return self.device

    def seed_rank(self) -> None:
        """Per-rank torch RNG streams (z, SSR positions) once the shared initial weights exist."""
        if self.world_size > 1:
            torch.manual_seed(self.cfg["seed"] + 1000 * self.rank)

    def make_optimizers(self, g_params=None) -> None:
        """Adam for G (``lr_g``; ``g_params``: parameter groups instead of all of G's parameters)
        and D (``lr_d``) with the config's ``betas``. A D without parameters (no critic) gets no
        optimizer (``opt_d = None``)."""
        betas = tuple(float(b) for b in self.cfg["betas"])
        # foreach: multi-tensor updates, the same numbers as the per-parameter loop (torch's default
        # on GPUs; on the CPU it also halves a small G's Adam step: 2.9 -> 1.3 ms measured)
        self.opt_g = torch.optim.Adam(self.G.parameters() if g_params is None else g_params,
                                      lr=self.cfg["lr_g"], betas=betas, foreach=True)
        d_params = list(self.D.parameters())
        self.opt_d = (torch.optim.Adam(d_params, lr=self.cfg["lr_d"], betas=betas, foreach=True)
                      if d_params else None)

    def make_loop(self, phases: list[Phase], loss, dataset, ema: EMA | None, extra_state: dict) -> TrainingLoop:
        """The batch stream over ``dataset`` (this rank's slice) and the (distributed) training loop
        that checkpoints G and D, runs ``save_samples`` and stops at ``steps`` or ``max_seconds``."""
        cfg = self.cfg
        self.data = BatchStream(dataset, cfg["batch_size"], seed=cfg["seed"], rank=self.rank,
                                world_size=self.world_size)
        loop_cls = DistributedTrainingLoop if self.world_size > 1 else TrainingLoop
        self.loop = loop_cls(
            phases, loss, self.data, self.run_dir, total_steps=cfg["steps"], modules={"G": self.G, "D": self.D},
            ema=ema, ckpt_every=cfg["ckpt_every"], log_every=cfg["log_every"], sample_every=cfg["sample_every"],
            sample_fn=self.save_samples, extra_state=extra_state, max_seconds=cfg["max_seconds"],
            is_main=self.rank == 0, keep_every=cfg["keep_every"], lr_schedule=FinalLearningRate.from_config(cfg))
        if isinstance(self.loop, DistributedTrainingLoop):
            self.loop.flag_device = self.device
        return self.loop

    def write_config(self) -> None:
        """The resolved config, written by rank 0 only."""
        if self.rank != 0:
            return
        write_text(self.run_dir / "config.json", json.dumps(self.cfg, indent=2) + "\n")

    def run(self, resume: bool = False, overwrite: bool = False):
        """Train (after restoring the last checkpoint when ``resume``); returns the loop.

        The folder rules of :func:`check_run_folder` apply: a folder that holds a checkpoint is
        started over only with ``overwrite`` (its checkpoint, statistics and sample grids are
        removed first). A resumed run applies the config's optimizer settings (learning
        rates, betas) to the restored optimizers and logs what changed
        (:meth:`TrainingLoop.resume`); a fresh run starts a new ``stats.jsonl``. Calling ``run``
        again on the same object (with a larger ``loop.total_steps``) continues in memory.
        """
        if getattr(self, "_started", False) and not resume:
            pass  # a later call on the same object continues the run it started (the folder is this run's)
        else:
            check_run_folder(self.run_dir, resume, overwrite)
            if resume:
                self.loop.resume(map_location=self.device)
                if self.loop.total_steps < self.loop.step:
                    raise RunFolderError(f"steps={self.loop.total_steps} is before the checkpoint's step "
                                         f"{self.loop.step}; pass --steps N (steps=N) with N > {self.loop.step} "
                                         "to train further")
            elif self.rank == 0:
                clear_run_folder(self.run_dir)
        self._started = True
        self.write_config()
        return self.loop.run()
