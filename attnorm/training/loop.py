"""Generic training loop: phases run by a loss object; knows nothing about GANs.

One training *step* runs every :class:`Phase` in order, each ``phase.repeats``
times. A phase run is::

    optimizer.zero_grad(); only phase.module requires grad
    stats = loss.run_phase(phase.name, batch)    # forward + backward, returns scalars
    check every stat and the gradient norm is finite, else NonFiniteLossError
    optimizer.step()

After the phases the EMA (if any) is updated. The loop also writes:

* ``run_dir/stats.jsonl``: one JSON object per ``log_every`` steps (means over the
  interval, plus ``it_s`` and ``time``); a resumed run first drops records past the
  checkpoint, so the file reads as one uninterrupted run;
* ``run_dir/checkpoints/latest.pt``: every ``ckpt_every`` steps and at the end,
  written to a temporary file then ``os.replace``-d (a crash never leaves a torn
  file). It holds only tensors and plain Python types, for
  ``torch.load(weights_only=True)``: module, optimizer, EMA and data-stream states,
  the torch/numpy/python RNG states and ``extra_state`` (e.g. model configs).
  With ``keep_every`` the checkpoint of every ``keep_every``-th step is also kept as
  ``checkpoints/step_XXXXXXX.pt`` (a hard link where the file system has them): a long
  GAN run's quality moves from checkpoint to checkpoint, and these are the candidates
  to score and choose from;
* a progress line per log interval (losses, it/s) to this module's logger (INFO);
* ``sample_fn(step)`` every ``sample_every`` steps and at the end.

Resuming restores all of it, so a resumed run computes exactly what the
uninterrupted run would have (same device and thread count); optimizer settings
(learning rate, betas) that the caller changed since are applied to the restored
optimizers and reported (``resume_changes``). A non-finite loss or gradient stops
the run before the optimizer step with a message naming the last good checkpoint,
which is left untouched.

Ctrl-C (SIGINT) or SIGTERM during :meth:`TrainingLoop.run` in a single process: the
current step is finished, a checkpoint is written and the run stops with
``stop_reason == "interrupted"`` (a second Ctrl-C stops at once, keeping the last
checkpoint). Temporary files of checkpoints whose writer was killed are removed when
the run starts.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from torch import nn

from attnorm.checkpoints import CHECKPOINT_FORMAT, atomic_torch_save, load_checkpoint
from attnorm.errors import CheckpointError
from attnorm.io import atomic_write, remove_stale_temps

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """A loss or gradient became NaN/inf; the run stopped before applying it."""


class PhaseLoss(Protocol):
    def run_phase(self, name: str, batch: Any) -> dict[str, torch.Tensor | float]:
        """Forward + backward for phase ``name``; return scalar stats (detached or not)."""


@dataclass
class Phase:
    """One optimisation phase.

    Args:
        name: passed to ``loss.run_phase``; prefixes nothing (the loss names its stats).
        module: the module whose parameters this phase trains (others are frozen meanwhile).
        optimizer: optimizer over ``module``'s parameters.
        repeats: runs per training step (e.g. D steps per G step).
        needs_data: draw a batch from the data stream for each run (else ``batch=None``).
        start_step: the phase sits out the steps before this one (e.g. a new discriminator learns
            against a fixed generator first); a resumed run counts from its saved step.
    """

    name: str
    module: nn.Module
    optimizer: torch.optim.Optimizer
    repeats: int = 1
    needs_data: bool = True
    start_step: int = 0


class EMA:
    """Exponential moving average of a module's parameters; buffers are copied.

    Args:
        module: the trained module.
        decay: ``shadow = decay * shadow + (1 - decay) * param`` per update.
        start_step: before this many updates the shadow simply copies the module.
    """

    def __init__(self, module: nn.Module, decay: float = 0.999, start_step: int = 0) -> None:
        self.module, self.decay, self.start_step = module, decay, start_step
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self) -> None:
        decay = 0.0 if self.num_updates < self.start_step else self.decay
        # multi-tensor ops: one launch for all parameters (and one for all buffers) on a GPU
        torch._foreach_lerp_(list(self.shadow.parameters()), [p.detach() for p in self.module.parameters()],
                             1.0 - decay)
        shadow_buffers, buffers = list(self.shadow.buffers()), list(self.module.buffers())
        if shadow_buffers and hasattr(torch, "_foreach_copy_"):  # newer than the oldest torch we accept
            torch._foreach_copy_(shadow_buffers, buffers)
        else:
            for bs, b in zip(shadow_buffers, buffers):
                bs.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"shadow": self.shadow.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.num_updates = int(state["num_updates"])


class BatchStream:
    """Endless shuffled batches over an indexable dataset; resumable.

    Args:
        dataset: ``len()`` and ``ds[i] -> (tensor, label)``; ``ds.get_batch(indices)`` is
            used when present (vectorised datasets).
        batch_size: items per batch (incomplete batches at epoch ends are dropped).
        seed: the permutation of epoch ``e`` is ``numpy.random.default_rng([seed, e])``'s.
        rank, world_size: each rank takes every ``world_size``-th batch of the same stream.
    """

    def __init__(self, dataset, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if len(dataset) < batch_size * world_size:
            raise ValueError(f"dataset has {len(dataset)} items, fewer than one global batch "
                             f"({batch_size} x {world_size})")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.pos = 0, 0
        self._perm = None

    def _permutation(self) -> np.ndarray:
        if self._perm is None or self._perm[0] != self.epoch:
            self._perm = (self.epoch, np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset)))
        return self._perm[1]

    def next(self):
        gb = self.batch_size * self.world_size
        if self.pos + gb > len(self.dataset):
            self.epoch, self.pos = self.epoch + 1, 0
        perm = self._permutation()
        start = self.pos + self.rank * self.batch_size
        idx = perm[start:start + self.batch_size].tolist()
        self.pos += gb
        if hasattr(self.dataset, "get_batch"):
            return self.dataset.get_batch(idx)
        items = [self.dataset[i] for i in idx]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


# ------------------------------------------------------------------ RNG state as tensors/plain types
def get_rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, pystate, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(pystate), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`get_rng_state`'s output, also from a checkpoint loaded onto a GPU
    (``map_location="cuda"`` moves the state tensors there; torch wants CPU byte tensors)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])


def _rank() -> int:
    import torch.distributed as dist
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _gather_rng_states() -> list | None:
    """Every rank's RNG state (DDP ranks draw different z), or None when not distributed."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, get_rng_state())
    return out


class StatsWriter:
    """Appends one JSON object per line to ``path``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step > step`` (left over from a run killed after its checkpoint),
        and lines that are not JSON objects (a line torn by a kill)."""
        if not self.path.exists():
            return
        keep = []
        for ln in self.path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(ln)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                keep.append(ln)
        atomic_write(self.path, lambda tmp: tmp.write_text("".join(ln + "\n" for ln in keep)))

    def write(self, record: dict) -> None:
        from attnorm.io import _output_error
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:  # a torn last line is dropped by truncate_after on resume
            raise _output_error(self.path, exc, kept=False) from exc


def read_stats(path: str | os.PathLike) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


#: optimizer hyperparameters that a resumed run takes from its (new) config, not from the checkpoint
OPTIMIZER_SETTINGS = ("lr", "betas", "eps", "weight_decay")


def _optimizer_settings(opt: torch.optim.Optimizer) -> list[dict]:
    return [{k: copy.deepcopy(g[k]) for k in OPTIMIZER_SETTINGS if k in g} for g in opt.param_groups]


class _GracefulInterrupt:
    """While active (main thread only): the first SIGINT/SIGTERM sets ``requested`` (the loop
    finishes its step and checkpoints); a second SIGINT raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.requested = False
        self._saved: dict = {}

    def _handler(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupted: finishing this step and saving a checkpoint (Ctrl-C again to stop at once)")

    def __enter__(self) -> "_GracefulInterrupt":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._saved[sig] = signal.signal(sig, self._handler)
                except (ValueError, OSError):  # not settable here
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved = {}


def _to_float(v) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def _grad_norm(module: nn.Module) -> float:
    """The L2 norm of all of ``module``'s gradients together (one host sync; the per-tensor norms
    are one multi-tensor op, not two small ops per parameter, which on a GPU are launches)."""
    grads = [p.grad.detach() for p in module.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))


class TrainingLoop:
    """Args:
        phases: the phases of one step, in order.
        loss: object with ``run_phase(name, batch) -> dict of scalars``; if it also has
            ``state_dict()`` / ``load_state_dict()`` (plain data), that state is checkpointed.
        data: a :class:`BatchStream` (or any object with ``next()``, ``state_dict()``, ``load_state_dict()``).
        run_dir: output folder (``stats.jsonl``, ``checkpoints/``).
        total_steps: train until this step.
        modules: named modules to checkpoint (default: each phase's module by phase name).
        ema: optional :class:`EMA`, updated after every step.
        ckpt_every, log_every, sample_every: intervals in steps (0: never; checkpoints
            and samples are also written at the end).
        keep_every: also keep the checkpoint of every this-many steps as
            ``checkpoints/step_XXXXXXX.pt`` (0: never).
        sample_fn: ``sample_fn(step)`` hook.
        extra_state: plain data stored in every checkpoint (e.g. model configs).
        max_seconds: stop (with a checkpoint) once a step ends past this wall time.
        is_main: this process writes files and logs progress (False on DDP ranks > 0).
        lr_schedule: optional ``lr_schedule(progress) -> multiplier`` of every optimizer's learning
            rates, ``progress`` in [0, 1] being how far the run is through its budget
            (:meth:`progress`: steps or ``max_seconds``, whichever is further along). The
            optimizers keep their base rates (what checkpoints hold and a resumed run's config sets);
            the multiplier applies to each update only.
    """

    def __init__(self, phases: list[Phase], loss: PhaseLoss, data, run_dir: str | os.PathLike,
                 total_steps: int, modules: dict[str, nn.Module] | None = None, ema: EMA | None = None,
                 ckpt_every: int = 1000, log_every: int = 10, sample_every: int = 0,
                 sample_fn: Callable[[int], Any] | None = None, extra_state: dict | None = None,
                 max_seconds: float | None = None, is_main: bool = True, keep_every: int = 0,
                 lr_schedule: Callable[[float], float] | None = None) -> None:
        self.phases, self.loss, self.data = phases, loss, data
        self.run_dir = Path(run_dir)
        self.total_steps, self.ema = total_steps, ema
        self.modules = modules if modules is not None else {p.name: p.module for p in phases}
        self.ckpt_every, self.log_every, self.sample_every = ckpt_every, log_every, sample_every
        self.keep_every = keep_every
        self.sample_fn, self.extra_state, self.max_seconds = sample_fn, extra_state or {}, max_seconds
        self.is_main = is_main
        self.lr_schedule = lr_schedule
        self.step = 0
        self.elapsed = 0.0  # training seconds over all sessions of this run
        self.stats = StatsWriter(self.run_dir / "stats.jsonl")
        self.last_checkpoint: Path | None = None
        self.last_checkpoint_step: int | None = None
        self.stop_reason = ""
        self.resume_changes: dict[str, dict] = {}
        #: finish the step, checkpoint and stop on SIGINT/SIGTERM (single process, main thread)
        self.graceful_interrupt = True
        #: mark each phase as a new step for torch.compile's CUDA-graph trees (mode "reduce-overhead")
        self.mark_graph_steps = False

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "latest.pt"

    def kept_checkpoint_path(self, step: int) -> Path:
        return self.run_dir / "checkpoints" / f"step_{step:07d}.pt"

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "elapsed": self.elapsed,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {p.name: p.optimizer.state_dict() for p in self.phases},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "data": self.data.state_dict(),
            "loss": self.loss.state_dict() if hasattr(self.loss, "state_dict") else None,
            "rng": get_rng_state(),
            "rng_per_rank": _gather_rng_states(),
            "extra": self.extra_state,
        }

    def save_checkpoint(self) -> Path:
        state = self.state_dict()  # every rank: gathering the per-rank RNG states is a collective
        if self.is_main:
            atomic_torch_save(state, self.checkpoint_path)
        self.last_checkpoint, self.last_checkpoint_step = self.checkpoint_path, self.step
        return self.checkpoint_path

    def keep_checkpoint(self) -> Path:
        """``latest.pt`` (just written) also as ``step_XXXXXXX.pt``: a hard link, or a copy where
        links are refused, put in place atomically (:func:`attnorm.io.atomic_write`)."""
        def link_or_copy(tmp: Path) -> None:
            try:
                os.link(self.checkpoint_path, tmp)
            except OSError:
                shutil.copyfile(self.checkpoint_path, tmp)
        return atomic_write(self.kept_checkpoint_path(self.step), link_or_copy)

    def _check_resumable(self, state, path: Path) -> None:
        """CheckpointError (one line) unless ``state`` is a checkpoint of this loop's task and modules."""
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"{path} is not a training checkpoint of this loop (format {found!r})")
        mine, theirs = self.extra_state.get("task"), (state.get("extra") or {}).get("task")
        if mine and theirs and mine != theirs:
            raise CheckpointError(f"{path} is a checkpoint of train-{theirs}, not of train-{mine}; "
                                  f"resume it with attnorm train-{theirs}")
        missing = [k for k in self.modules if k not in (state.get("modules") or {})]
        missing += [p.name for p in self.phases if p.name not in (state.get("optimizers") or {})]
        if missing:
            raise CheckpointError(f"{path} lacks the state of {missing}; it was written by another kind of run")

    def resume(self, path: str | os.PathLike | None = None, map_location="cpu",
               apply_optimizer_settings: bool = True) -> int:
        """Restore everything from ``path`` (default ``latest.pt``); returns the step.

        With ``apply_optimizer_settings`` the optimizers keep the settings they were built with
        (:data:`OPTIMIZER_SETTINGS`, e.g. a lower learning rate given on the resumed command
        line) instead of the checkpoint's; ``resume_changes`` maps ``"<phase>[/group]"`` to
        ``{setting: [old, new]}`` for each one that differs (also logged)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint to resume from at {path}")
        state = load_checkpoint(path, map_location)
        self._check_resumable(state, path)
        try:
            for k, m in self.modules.items():
                m.load_state_dict(state["modules"][k])
        except RuntimeError as exc:
            first = " ".join(str(exc).strip().splitlines()[:2])[:200]
            raise CheckpointError(f"{path} does not fit this run's models ({first}); was the run's config "
                                  "(e.g. ch, resolution, attention) changed since it was written?") from None
        self.resume_changes = {}
        for p in self.phases:
            wanted = _optimizer_settings(p.optimizer)
            try:
                p.optimizer.load_state_dict(state["optimizers"][p.name])
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"{path}: the {p.name} optimizer state does not fit this run ({exc})") from None
            if not apply_optimizer_settings:
                continue
            for i, (group, want) in enumerate(zip(p.optimizer.param_groups, wanted)):
                changed = {k: [group[k], v] for k, v in want.items() if k in group and group[k] != v}
                if changed:
                    group.update(want)
                    key = p.name if len(wanted) == 1 else f"{p.name}/{i}"
                    self.resume_changes[key] = {k: [list(o) if isinstance(o, tuple) else o,
                                                    list(n) if isinstance(n, tuple) else n]
                                                for k, (o, n) in changed.items()}
        if self.resume_changes and self.is_main:
            log.info("resume: applied changed optimizer settings: %s", "; ".join(
                f"{k} " + ", ".join(f"{s} {o} -> {n}" for s, (o, n) in v.items())
                for k, v in self.resume_changes.items()))
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.data.load_state_dict(state["data"])
        if state.get("loss") is not None and hasattr(self.loss, "load_state_dict"):
            self.loss.load_state_dict(state["loss"])  # e.g. a loss's running averages
        per_rank = state.get("rng_per_rank")
        rank = _rank()
        set_rng_state(per_rank[rank] if per_rank and rank < len(per_rank) else state["rng"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.last_checkpoint, self.last_checkpoint_step = path, self.step
        if self.is_main:
            self.stats.truncate_after(self.step)
            if self.resume_changes:
                StatsWriter(self.run_dir / "events.jsonl").write(
                    {"event": "resume", "step": self.step, "time": time.time(), "changed": self.resume_changes})
        return self.step

    # ---------------------------------------------------------------- one step
    def _set_trainable(self, active: nn.Module) -> None:
        for p in self.phases:
            p.module.requires_grad_(p.module is active)

    def _nonfinite(self, what: str) -> NonFiniteLossError:
        where = (f"the last good checkpoint is {self.last_checkpoint} (step {self.last_checkpoint_step}); "
                 "resume from it with --resume, e.g. with lower learning rates (lr_g=... lr_d=...: a resumed "
                 "run applies them)"
                 if self.last_checkpoint is not None else "no checkpoint was written yet")
        return NonFiniteLossError(f"training stopped at step {self.step + 1}: {what} is not finite; {where}")

    def progress(self) -> float:
        """How far the run is through its budget, in [0, 1]: the larger of the steps done over
        ``total_steps`` and the training time over ``max_seconds`` (when set)."""
        return min(max(self.step / max(self.total_steps, 1), self._time_fraction(), 0.0), 1.0)

    def _time_fraction(self) -> float:
        """The training time over ``max_seconds`` (0 without a time limit)."""
        return self.elapsed / self.max_seconds if self.max_seconds else 0.0

    @staticmethod
    def _optimizer_step(optimizer: torch.optim.Optimizer, lr_mult: float) -> None:
        """``optimizer.step()`` with its learning rates scaled by ``lr_mult`` for this update only."""
        if lr_mult == 1.0:
            optimizer.step()
            return
        base = [g["lr"] for g in optimizer.param_groups]
        for g in optimizer.param_groups:
            g["lr"] = g["lr"] * lr_mult
        try:
            optimizer.step()
        finally:
            for g, lr in zip(optimizer.param_groups, base):
                g["lr"] = lr

    def train_step(self) -> dict[str, float]:
        stats: dict[str, list[float]] = {}
        lr_mult = 1.0 if self.lr_schedule is None else float(self.lr_schedule(self.progress()))
        for phase in self.phases:
            if self.step < phase.start_step:
                continue
            self._set_trainable(phase.module)
            for _ in range(phase.repeats):
                batch = self.data.next() if phase.needs_data else None
                phase.optimizer.zero_grad(set_to_none=True)
                if self.mark_graph_steps:  # CUDA-graph trees: this phase's replays may reuse the last one's memory
                    torch.compiler.cudagraph_mark_step_begin()
                out = {k: _to_float(v) for k, v in self.loss.run_phase(phase.name, batch).items()}
                out[f"{phase.name}/grad_norm"] = _grad_norm(phase.module)
                for k, v in out.items():
                    if not math.isfinite(v):
                        raise self._nonfinite(f"{k} = {v} (phase {phase.name!r})")
                self._optimizer_step(phase.optimizer, lr_mult)
                for k, v in out.items():
                    stats.setdefault(k, []).append(v)
        for p in self.phases:
            p.module.requires_grad_(True)
        if self.ema is not None:
            self.ema.update()
        out = {k: sum(v) / len(v) for k, v in stats.items()}
        if self.lr_schedule is not None:
            out["lr_mult"] = lr_mult
        return out

    # ---------------------------------------------------------------- run
    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def _interrupt_guard(self):
        import contextlib

        import torch.distributed as dist
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not self.graceful_interrupt or distributed:  # ranks would see the signal at different steps
            return contextlib.nullcontext(None)
        return _GracefulInterrupt()

    def run(self) -> "TrainingLoop":
        """Train until ``total_steps`` (or ``max_seconds``, or an interrupt); returns self
        (``stop_reason`` says why: ``"done"``, a time limit, or ``"interrupted"``)."""
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(self.checkpoint_path)  # left by a writer killed mid-save
        with self._interrupt_guard() as interrupt:
            return self._run(interrupt)

    def _run(self, interrupt: "_GracefulInterrupt | None") -> "TrainingLoop":
        window: dict[str, list[float]] = {}
        t_window, n_window = time.perf_counter(), 0
        t_session = time.perf_counter()
        elapsed0 = self.elapsed
        self.stop_reason = "done"
        while self.step < self.total_steps:
            step_stats = self.train_step()
            self.step += 1
            self.elapsed = elapsed0 + time.perf_counter() - t_session
            n_window += 1
            for k, v in step_stats.items():
                window.setdefault(k, []).append(v)
            out_of_time = self.max_seconds is not None and self.elapsed >= self.max_seconds
            interrupted = interrupt is not None and interrupt.requested
            last = self.step >= self.total_steps or out_of_time or interrupted
            if self._due(self.log_every) or last:
                now = time.perf_counter()
                rate = n_window / max(now - t_window, 1e-9)
                record = {"step": self.step, "time": round(self.elapsed, 3), "it_s": round(rate, 3)}
                record.update({k: sum(v) / len(v) for k, v in window.items()})
                if self.is_main:
                    self.stats.write(record)
                    losses = " ".join(f"{k} {v:.4f}" for k, v in record.items()
                                      if k not in ("step", "time", "it_s") and not k.endswith("grad_norm"))
                    log.info("step %d/%d | %s | %.2f it/s", self.step, self.total_steps, losses, rate)
                window, t_window, n_window = {}, now, 0
            keep = self._due(self.keep_every)
            if self._due(self.ckpt_every) or last or keep:
                self.save_checkpoint()
            if keep and self.is_main:
                self.keep_checkpoint()
            if interrupted:
                self.stop_reason = "interrupted"
                break
            if self.sample_fn is not None and self.is_main and (self._due(self.sample_every) or last):
                self.sample_fn(self.step)
            if out_of_time and self.step < self.total_steps:
                self.stop_reason = f"time limit of {self.max_seconds:.0f} s reached"
                break
        return self
