"""Multi-process training helpers shared by the tasks (torchrun sets WORLD_SIZE/RANK).

* :func:`init_distributed` starts the process group (gloo on CPU, nccl on CUDA) and
  picks the local GPU;
* :class:`DistributedTrainingLoop` lets rank 0's clock decide ``max_seconds`` for all;
* :func:`average_gradients` all-reduces the gradients of a module, for losses that
  cannot run through ``DistributedDataParallel`` (a gradient penalty needs a double
  backward, which DDP does not support);
* :func:`close_process_group` waits for every rank and tears the group down.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from .loop import TrainingLoop


def world() -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment (``(0, 1)`` outside it)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> torch.device:
    """Start the process group when ``WORLD_SIZE > 1``; returns the device this rank uses."""
    _, world_size = world()
    if world_size > 1:
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    return device


def average_gradients(module: nn.Module, world_size: int) -> None:
    """Replace every gradient of ``module`` by its mean over the ranks (one all-reduce per tensor)."""
    if world_size <= 1:
        return
    import torch.distributed as dist
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world_size)


def close_process_group(ok: bool) -> None:
    """Wait for every rank (rank 0 may still be writing files), then tear the group down.

    A rank that exits with its gloo group still open can abort (SIGABRT) at interpreter
    shutdown when its peer closes the connection first; torchrun then reports a failure."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


class DistributedTrainingLoop(TrainingLoop):
    """:class:`TrainingLoop` whose time limit is decided by rank 0's clock for every rank.

    Each rank measures its own elapsed time, so near ``max_seconds`` one rank could stop
    (and enter the checkpoint's collective) while another starts the next step's
    all-reduce: a hang. Here rank 0 decides after every step and broadcasts the decision, with
    its share of the time budget, which :meth:`progress` (a learning-rate schedule's clock) uses on
    every rank, so that all ranks apply the same learning rates.
    """

    def __init__(self, *args, max_seconds: float | None = None, **kwargs) -> None:
        super().__init__(*args, max_seconds=None, **kwargs)
        self.time_limit = max_seconds
        self.flag_device = torch.device("cpu")
        self._clock0 = (0.0, 0.0)
        self._time_progress = 0.0  # rank 0's training time over time_limit, as of the last step

    def _time_fraction(self) -> float:
        return self._time_progress  # rank 0's, broadcast after each step: the same on every rank

    def run(self) -> TrainingLoop:
        self._clock0 = (self.elapsed, time.perf_counter())
        if self.time_limit:
            self._time_progress = self.elapsed / self.time_limit
        try:
            super().run()
        finally:
            self.max_seconds = None
        if self.stop_reason.startswith("time limit"):
            self.stop_reason = f"time limit of {self.time_limit:.0f} s reached"
        return self

    def train_step(self) -> dict[str, float]:
        stats = super().train_step()
        if self.time_limit is not None:
            import torch.distributed as dist
            elapsed0, t0 = self._clock0
            elapsed = elapsed0 + time.perf_counter() - t0
            out = float(elapsed >= self.time_limit)
            flag = torch.tensor([out, elapsed / max(self.time_limit, 1e-9)], device=self.flag_device)  # nccl: CUDA
            dist.broadcast(flag, src=0)
            # the base loop stops when elapsed >= max_seconds: 0 stops now, None never
            self.max_seconds = 0.0 if flag[0].item() > 0 else None
            self._time_progress = float(flag[1].item())
        return stats
