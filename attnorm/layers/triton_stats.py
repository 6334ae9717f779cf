"""AN's per-entity statistics and their backward as two Triton kernels (optional, opt-in).

The eager statistics (:func:`attnorm.layers.regional.coefficients_forward` and
:func:`attnorm.layers.regional._coefficients_backward`) are 73 small ops on (b, c, n) tensors:
on a GPU each is a kernel launch, and at small maps the layer's time is its launches. Here the
forward is one kernel and the backward one kernel (plus three sums over the batch): one program
per sample holds its whole (c, n) tile, computes the same expressions as the eager code, and the
backward recomputes the forward's intermediates from the pixel sums instead of saving them.

Opt-in with :func:`attnorm.layers.triton_statistics` (needs the ``triton`` package: it comes with
PyTorch's CUDA builds). It is used for float32 CUDA tensors (and for CPU tensors when Triton runs
in its interpreter, ``TRITON_INTERPRET=1``, which is how the tests check it without a GPU);
anything else, 1x1 maps (whose sums cancel exactly) and tiles larger than :data:`MAX_TILE` take
the eager path. Same numbers as the eager path up to float32 rounding (``tests/test_triton_stats.py``;
the eager path is held to the literal reference by the layer's tests).
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

MAX_TILE = 16384  # c x n (padded to powers of two) held by one program


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether ``triton`` imports."""
    import importlib
    try:
        importlib.import_module("triton.language")
    except Exception:  # ImportError, or a broken install
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def applicable(*tensors: Tensor | None) -> bool:
    """Triton can run these (float32, on CUDA or in the interpreter) and the tile fits one program."""
    u = tensors[0]
    if not available() or u.dtype != torch.float32:
        return False
    if not all(t is None or t.device == u.device for t in tensors):
        return False
    if u.device.type != "cuda" and not (u.device.type == "cpu" and _interpreting()):
        return False
    _, c, n = u.shape
    return _pow2(c) * _pow2(n) <= MAX_TILE


def _pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _kernels():
    from . import _triton_kernels as k  # imports triton
    return k.forward_kernel, k.backward_kernel


def _launch_args(u, r, a, k, total, s2_sum):
    su, sa = u.stride(), a.stride()
    sr = r.stride() if r is not None else (0, 0, 0)
    sk = k.stride()
    st = total.stride()
    ss2 = s2_sum.stride() if s2_sum is not None else (0, 0, 0)
    return (su[0], su[1], su[2], sr[0], sr[1], sr[2], sa[0], sa[1], sa[2], sk[0], sk[1], st[0], st[2],
            ss2[0], ss2[2])


def statistics_forward(u, r, a, k, total, s2_sum, beta, alpha, scale, eps: float, hw: int):
    """``(P, Q, state)`` as :func:`attnorm.layers.regional.coefficients_forward` computes them;
    ``state`` holds only the inputs (the backward kernel recomputes the rest)."""
    forward_kernel, _ = _kernels()
    b, c, n = u.shape
    p = torch.empty(b, c, n, dtype=u.dtype, device=u.device)
    q = torch.empty_like(p)
    alg1 = r is not None
    dummy = u
    forward_kernel[(b,)](
        u, r if alg1 else dummy, a, k, total, s2_sum if alg1 else dummy,
        beta if beta is not None else dummy, alpha if alpha is not None else dummy,
        scale if scale is not None else dummy, p, q,
        *_launch_args(u, r, a, k, total, s2_sum), c, n, float(eps), float(hw),
        float(torch.finfo(u.dtype).tiny),
        ALG1=alg1, HAS_BETA=beta is not None, HAS_ALPHA=alpha is not None, HAS_SCALE=scale is not None,
        BC=_pow2(c), BN=_pow2(n))
    return p, q, (u, r, k, total, s2_sum, beta, alpha, scale, a)


STATE_LENGTH = 9  # len(state) of statistics_forward: tells its state apart from the eager one


def statistics_backward(saved, eps: float, hw: int, algorithm1: bool, g_p, g_q):
    """The gradients of ``(u, r, a, k, total, s2_sum, beta, alpha, scale)`` as
    :func:`attnorm.layers.regional._coefficients_backward` returns them."""
    _, backward_kernel = _kernels()
    u, r, k, total, s2_sum, beta, alpha, scale, a = saved
    b, c, n = u.shape
    g_p = torch.zeros_like(u) if g_p is None else g_p
    g_q = torch.zeros_like(u) if g_q is None else g_q
    new = lambda *shape: torch.empty(*shape, dtype=u.dtype, device=u.device)
    g_u, g_a = new(b, c, n), new(b, c, n)
    g_r = new(b, c, n) if algorithm1 else None
    g_k, g_total = new(b, c, 1), new(b, 1, n)
    g_s2 = new(b, 1, n) if algorithm1 else None
    g_beta_b, g_alpha_b, g_scale_b = new(b, c), new(b, c), new(b)
    dummy = u
    backward_kernel[(b,)](
        u, r if algorithm1 else dummy, a, k, total, s2_sum if algorithm1 else dummy,
        beta if beta is not None else dummy, alpha if alpha is not None else dummy,
        scale if scale is not None else dummy, g_p, g_q,
        g_u, g_r if algorithm1 else dummy, g_a, g_k, g_total, g_s2 if algorithm1 else dummy,
        g_beta_b, g_alpha_b, g_scale_b,
        *_launch_args(u, r, a, k, total, s2_sum), *g_p.stride(), *g_q.stride(),
        c, n, float(eps), float(hw), float(torch.finfo(u.dtype).tiny),
        ALG1=algorithm1, HAS_BETA=beta is not None, HAS_ALPHA=alpha is not None, HAS_SCALE=scale is not None,
        BC=_pow2(c), BN=_pow2(n))
    g_beta = g_beta_b.sum(0) if beta is not None else None
    g_alpha = g_alpha_b.sum(0) if alpha is not None else None
    g_scale = g_scale_b.sum().reshape(scale.shape) if scale is not None else None
    return g_u, g_r, g_a, g_k, g_total, g_s2, g_beta, g_alpha, g_scale
