"""AN's pixel sums (batched products that contract over the map) as a split-K Triton kernel.

The layer's largest kernels on a GPU are products like ``Vc @ S^T``: (b, c, hw) by (b, hw, n) with
a small (c, n) output per sample and a long contraction over the pixels. A batched GEMM library
gives each sample's output one or two thread blocks that walk the whole map: on an H200 (session
19, ``benchmarks/results/gpu_h200_s19``) the three (8, 128, 16384) x (8, 16384, 16) products of a
step took 1.5 ms of the layer's 4.2 ms at b 8, 128x128, about 30x what reading their operands
needs. Here the pixels are cut into chunks, one program per (sample, chunk, output tile) reads its
chunk once, and the chunks' partial products are summed after (deterministic: no atomics).

Opt-in with :func:`attnorm.layers.triton_pixel_sums` (needs the ``triton`` package: it comes with
PyTorch's CUDA builds). Used for float32 CUDA tensors whose pixel axis is contiguous (and for CPU
tensors when Triton runs in its interpreter, ``TRITON_INTERPRET=1``, which is how the tests check
it without a GPU); anything else takes ``torch.bmm``. With ``torch.backends.cuda.matmul.allow_tf32``
on, the kernel uses TF32, as ``torch.bmm`` would.

On CUDA the tile shape and the number of chunks are chosen per product shape by timing the
candidates and ``torch.bmm`` itself the first time a shape is seen outside graph capture
(:func:`_tuned`): where ``torch.bmm`` is faster (large batches give it enough parallel work) it
runs. The tuner picks among float32-FMA tiles, three-TF32 tensor-core tiles (float32 accuracy: on
an H200, session 24, their error against float64 was 1.6e-7 to 2.3e-7 of the largest sum, FMA's
2.3e-7 to 6.2e-7, ``torch.bmm``'s 1.3e-6 to 5.5e-6; 3.5x faster than FMA at b 8 128x128, and faster
than ``torch.bmm`` at b 32 where the FMA tiles were not) and
``torch.bmm``; :func:`set_precision` ("ieee") leaves the TF32 tiles out. In the
interpreter and while capturing, :data:`DEFAULT` is used until a tuned choice exists. The choice
is made per process, so two runs may sum in different orders (float32 rounding apart);
``ATTNORM_NO_TUNE=1`` pins every product to :data:`DEFAULT`.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import Tensor

from .triton_stats import _interpreting, available


class Config(NamedTuple):
    """A launch of the kernel: output tile (bm, bn), pixels per step bk, warps, pipeline stages,
    ``programs``: how many programs to aim for (sets the number of chunks), and ``tf32x3``: the
    products as three TF32 tensor-core products (meant to keep float32 accuracy; not yet measured
    against float64 on a GPU) instead of float32 FMA."""
    bm: int
    bn: int
    bk: int
    warps: int
    stages: int
    programs: int
    tf32x3: bool = False


DEFAULT = Config(64, 32, 32, 4, 3, 1024)
CANDIDATES = (DEFAULT, Config(128, 32, 32, 8, 3, 1024), Config(64, 64, 32, 4, 3, 1024),
              Config(64, 32, 64, 4, 2, 512), Config(32, 32, 64, 4, 3, 2048), Config(64, 32, 32, 4, 3, 4096),
              Config(128, 64, 32, 8, 3, 512), Config(64, 16, 64, 4, 3, 1024))
# three TF32 products per step: up to 3.5x faster than float32 FMA on the H200 and as accurate (session 24,
# benchmarks/results/gpu_h200_s24/pixel_sum_probe_*.json); left out under set_precision("ieee")
TF32X3_CANDIDATES = (Config(64, 32, 32, 4, 3, 1024, True), Config(128, 32, 32, 4, 3, 1024, True),
                     Config(64, 64, 32, 4, 3, 1024, True), Config(128, 64, 32, 4, 3, 512, True),
                     Config(64, 16, 32, 4, 3, 2048, True))
_PRECISION = {"mode": "tf32x3"}
BMM = None  # the tuner's choice where torch.bmm was fastest
MIN_CHUNK = 128  # pixels a program sums at least
_TUNED: dict[tuple, Config | None] = {}


def applicable(a: Tensor, b: Tensor) -> bool:
    """Triton can run ``a @ b^T`` for these: float32 (b, m, k) and (b, n, k), k contiguous, same device."""
    if not available() or a.dtype != torch.float32 or b.dtype != torch.float32:
        return False
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[2]:
        return False
    if a.device != b.device or a.stride(2) != 1 or b.stride(2) != 1:
        return False
    return a.device.type == "cuda" or (a.device.type == "cpu" and _interpreting())


def set_precision(mode: str) -> None:
    """``"tf32x3"`` (the default): the tuner may pick three-TF32 tensor-core products as well as
    float32-FMA tiles (both float32 accuracy; the TF32 ones faster); ``"ieee"``: FMA tiles and
    ``torch.bmm`` only. With ``torch.backends.cuda.matmul.allow_tf32`` on,
    every launch uses TF32, as ``torch.bmm`` then does."""
    if mode not in ("ieee", "tf32x3"):
        raise ValueError(f"precision {mode!r}: choose 'ieee' or 'tf32x3'")
    _PRECISION["mode"] = mode
    _TUNED.clear()


def candidates() -> tuple[Config, ...]:
    """The launches the tuner times (besides ``torch.bmm``) under the current precision."""
    return CANDIDATES + (TF32X3_CANDIDATES if _PRECISION["mode"] == "tf32x3" else ())


def _splits(config: Config, batch: int, m: int, n: int, k: int) -> tuple[int, int]:
    """(number of chunks, pixels per chunk) for ``config.programs`` programs in all."""
    tiles = -(-m // config.bm) * -(-n // config.bn)
    want = max(1, -(-config.programs // (tiles * batch)))
    splits = max(1, min(want, k // MIN_CHUNK))
    chunk = -(-k // splits)
    chunk = -(-chunk // config.bk) * config.bk  # whole steps of bk pixels
    return -(-k // chunk), chunk


def _launch(a: Tensor, b: Tensor, config: Config) -> Tensor:
    from ._triton_kernels import pixel_sum_kernel
    batch, m, k = a.shape
    n = b.shape[1]
    splits, chunk = _splits(config, batch, m, n, k)
    part = torch.empty(batch, splits, m, n, dtype=torch.float32, device=a.device)
    # TF32 where torch.bmm would use it too; else float32 accuracy (FMA, or three TF32 products)
    prec = 2 if a.device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32 else int(config.tf32x3)
    grid = (-(-m // config.bm) * -(-n // config.bn), splits, batch)
    pixel_sum_kernel[grid](a, b, part, m, n, k, chunk, a.stride(0), a.stride(1), a.stride(2),
                           b.stride(0), b.stride(1), b.stride(2), part.stride(0), part.stride(1), part.stride(2),
                           BM=config.bm, BN=config.bn, BK=config.bk, PREC=prec,
                           num_warps=config.warps, num_stages=config.stages)
    return part[:, 0] if splits == 1 else part.sum(1)


def _tuned(a: Tensor, b: Tensor) -> Config | None:
    """The fastest of :func:`candidates` and ``torch.bmm`` (:data:`BMM`) for this shape, timed once
    per shape (CUDA, not while a graph is being captured); :data:`DEFAULT` before that and in the
    interpreter. Where the samples alone give a GEMM library enough parallel work (large batches)
    its product can win, and then it is used."""
    key = (tuple(a.shape), b.shape[1], a.stride(0) == a.shape[1] * a.shape[2], str(a.device))
    if key in _TUNED:
        return _TUNED[key]
    if a.device.type != "cuda" or torch.cuda.is_current_stream_capturing() or os.environ.get("ATTNORM_NO_TUNE"):
        return DEFAULT
    times = {}
    for config in (BMM,) + candidates():
        try:
            times[config] = _time(lambda: _product(a, b, config))
        except Exception:  # a tile that does not fit this GPU's shared memory, say
            continue
    _TUNED[key] = min(times, key=times.get) if times else DEFAULT
    return _TUNED[key]


def _time(fn, warmup: int = 2, repeats: int = 5) -> float:
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def _product(a: Tensor, b: Tensor, config: Config | None) -> Tensor:
    return torch.bmm(a, b.transpose(1, 2)) if config is BMM else _launch(a, b, config)


def pixel_sum(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b^T`` for ``a`` (batch, m, k) and ``b`` (batch, n, k) (both contiguous along k, any
    other strides): a (batch, m, n) float32 tensor, by the kernel or (where the tuner found it
    faster) ``torch.bmm``. The caller checks :func:`applicable`."""
    return _product(a, b, _tuned(a, b))
