"""Run a 2-process gloo worker from a test: ``spawn_two(worker, tmp)`` -> the ranks' dumps.

``worker(rank, port, tmp)`` must write ``tmp/rank{r}.pt`` (and ``tmp/error{r}.txt`` on failure).
"""

import socket
import time

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
