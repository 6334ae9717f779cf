"""Run a 2-process gloo worker from a test: ``spawn_two(worker, tmp)`` -> the ranks' dumps.

``worker(rank, port, tmp)`` must write ``tmp/rank{r}.pt`` (and ``tmp/error{r}.txt`` on failure);
``with rank_process(rank, port, tmp) as out:`` does that for the dict ``out`` it fills.
"""

import contextlib
import os
import socket
import time
import traceback
from datetime import timedelta

import pytest
import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_two(worker, tmp, timeout: float = 180) -> list[dict]:
    import torch.multiprocessing as mp
    ctx = mp.spawn(worker, args=(free_port(), str(tmp)), nprocs=2, join=False)
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"DDP workers did not finish within {timeout:.0f} s (a hang between ranks?)")
    except Exception as exc:  # a worker raised: show its traceback
        errs = "\n".join(p.read_text() for p in sorted(tmp.glob("error*.txt")))
        pytest.fail(f"DDP worker failed: {exc}\n{errs}")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@contextlib.contextmanager
def rank_process(rank: int, port: int, tmp: str, timeout_s: float = 60):
    """Inside a spawned worker: torchrun's environment, one thread, the gloo group (a short
    timeout, so a collective mismatch fails instead of hanging); yields the dict to dump, which is
    saved as ``tmp/rank{rank}.pt`` at the end (a traceback goes to ``tmp/error{rank}.txt``)."""
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=timeout_s))
    out: dict = {}
    try:
        yield out
    except BaseException:
        with open(os.path.join(tmp, f"error{rank}.txt"), "w") as f:
            f.write(traceback.format_exc())
        raise
    finally:
        torch.save(out, os.path.join(tmp, f"rank{rank}.pt"))
        dist.destroy_process_group()
