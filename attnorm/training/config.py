"""Run configuration (defaults <- JSON file <- ``key=value`` overrides) and :class:`TaskRun`,
the skeleton both tasks' runners (:mod:`.gan`, :mod:`.inpaint`) are built on."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .distributed import DistributedTrainingLoop, init_distributed, world
from .loop import EMA, BatchStream, Phase, TrainingLoop


def layered_config(defaults: dict, config_file: str | os.PathLike | None = None,
                   overrides: dict | None = None, base: dict | None = None,
                   ignore_underscore: bool = False) -> dict:
    """``base`` (default ``defaults``) <- JSON file <- ``overrides``; keys not in ``defaults`` raise.

    ``ignore_underscore`` drops keys starting with ``_`` (``"_comment"``) from the file and
    the overrides instead of rejecting them.
    """
    cfg = copy.deepcopy(base if base is not None else defaults)
    layers = []
    if config_file is not None:
        layers.append((str(config_file), json.loads(Path(config_file).read_text())))
    if overrides:
        layers.append(("overrides", overrides))
    for where, layer in layers:
        if ignore_underscore:
            layer = {k: v for k, v in layer.items() if not k.startswith("_")}
        unknown = sorted(set(layer) - set(defaults))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown} in {where}; known keys: {sorted(defaults)}")
        cfg.update(layer)
    return cfg


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
        count, and the seed every rank shares (so all start from the same weights)."""
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.rank, self.world_size = world()
        self.device = init_distributed(torch.device(cfg["device"]))
        if cfg["threads"]:
            torch.set_num_threads(int(cfg["threads"]))
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
        self.opt_g = torch.optim.Adam(self.G.parameters() if g_params is None else g_params,
                                      lr=self.cfg["lr_g"], betas=betas)
        d_params = list(self.D.parameters())
        self.opt_d = torch.optim.Adam(d_params, lr=self.cfg["lr_d"], betas=betas) if d_params else None

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
            is_main=self.rank == 0)
        if isinstance(self.loop, DistributedTrainingLoop):
            self.loop.flag_device = self.device
        return self.loop

    def write_config(self) -> None:
        """The resolved config, written by rank 0 only."""
        if self.rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(self.cfg, indent=2) + "\n")

    def run(self, resume: bool = False):
        """Train (after restoring the last checkpoint when ``resume``); returns the loop."""
        if resume:
            self.loop.resume(map_location=self.device)
        self.write_config()
        return self.loop.run()
