"""Regional normalisation (Algorithm 1 of the AN supplement), fast path.

Algorithm 1 normalises the value features ``V`` once per semantic entity ``i``
with statistics weighted by that entity's soft layout ``S_i`` and recombines the
``n`` normalised copies with the same weights:

    count_i = sum_p S_ip + eps
    mu_ci   = sum_p V_cp S_ip / count_i
    var_ci  = sum_p (V_cp S_ip - mu_ci)^2 / count_i      ("algorithm1", literal)
            | sum_p S_ip (V_cp - mu_ci)^2 / count_i      ("weighted")
    out_cp  = sum_i S_ip * ((V_cp - mu_ci) / (sqrt(var_ci) + eps) * beta_c + alpha_c)

Read literally this builds (b, h, w, c, n) tensors. Every sum above is a matrix
product over the pixel axis, and the output expands to

    out_cp = V_cp * (P S)_cp - (Q S)_cp,
    P_ci = beta_c / (std_ci + eps),   Q_ci = beta_c mu_ci / (std_ci + eps) - alpha_c,

(computed on V centred by its per-channel spatial mean, which keeps the
expanded variances accurate; the shift is added back exactly),

so this module never holds a tensor with both the channel and the entity axis at
full resolution: memory is O(b c hw + b n hw + b c n). The literal form lives in
:mod:`attnorm.layers.reference` and the tests check the two agree.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
from torch import Tensor

VARIANCES = ("algorithm1", "weighted")


def _full_precision_backward(backward):
    """Run a custom backward with autocast off: its inputs are float32/64 already,
    and a backward called inside ``torch.autocast`` would otherwise downcast them."""
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        device = next((g.device.type for g in grads if g is not None), "cpu")
        with torch.autocast(device_type=device, enabled=False):
            return backward(ctx, *grads)
    return wrapper


def _check_variance(variance: str) -> None:
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")


class _Moments(torch.autograd.Function):
    """The pixel sums of Algorithm 1 as matrix products, with a hand-written backward.

    forward(vc (b, c, hw), s (b, n, hw), algorithm1) ->
        algorithm1: m (b, c, 2n) = [sum_p Vc S | sum_p Vc S^2], a (b, c, n) = sum_p Vc^2 S^2
        weighted:   m (b, c, n)  =  sum_p Vc S,                 a (b, c, n) = sum_p Vc^2 S
    The backward reads each (b, c, hw) tensor once per product and writes the
    gradient of Vc in two passes, where autograd would add several temporaries.
    """

    @staticmethod
    def forward(ctx, vc: Tensor, s: Tensor, algorithm1: bool):
        vv = vc * vc  # (b, c, hw)
        # The branch is a flag on ctx, never told apart by the saved tensors' identity: under
        # saved-tensor hooks (checkpointing, save_on_cpu) every unpacked tensor is a new object.
        ctx.algorithm1 = algorithm1
        if algorithm1:
            s2 = s * s  # (b, n, hw)
            ss = torch.cat([s, s2], dim=1)  # (b, 2n, hw)
            m = torch.bmm(vc, ss.transpose(1, 2))  # (b, c, 2n)
            a = torch.bmm(vv, s2.transpose(1, 2))  # (b, c, n)
            ctx.save_for_backward(vc, vv, s, ss, s2)
        else:
            m = torch.bmm(vc, s.transpose(1, 2))  # (b, c, n)
            a = torch.bmm(vv, s.transpose(1, 2))  # (b, c, n)
            ctx.save_for_backward(vc, vv, s)
        return m, a

    @staticmethod
    @torch.autograd.function.once_differentiable
    @_full_precision_backward
    def backward(ctx, g_m: Tensor | None, g_a: Tensor | None):
        if ctx.algorithm1:
            vc, vv, s, ss, s2 = ctx.saved_tensors
        else:
            vc, vv, s = ctx.saved_tensors
            ss = s2 = s
        if g_m is None:
            g_m = torch.zeros(vc.shape[0], vc.shape[1], ss.shape[1], dtype=vc.dtype, device=vc.device)
        if g_a is None:
            g_a = torch.zeros(vc.shape[0], vc.shape[1], s.shape[1], dtype=vc.dtype, device=vc.device)
        g_vc = g_s = None
        if ctx.needs_input_grad[0]:
            g_vc = torch.bmm(g_m, ss)  # (b, c, hw)
            g_vc.addcmul_(vc, torch.bmm(g_a, s2), value=2.0)
        if ctx.needs_input_grad[1]:
            w = torch.bmm(g_m.transpose(1, 2), vc)  # (b, 2n or n, hw)
            u = torch.bmm(g_a.transpose(1, 2), vv)  # (b, n, hw)
            n = s.shape[1]
            if ctx.algorithm1:  # d/dS of the S^2 terms is 2 S (...)
                g_s = torch.addcmul(w[:, :n], s, w[:, n:] + u, value=2.0)
            else:
                g_s = w + u
        return g_vc, g_s, None


class _Combine(torch.autograd.Function):
    """``y = x - Q S + Vc * (P S)`` (x optional), with a hand-written backward.

    Shapes: x, vc (b, c, hw); s (b, n, hw); p, q (b, c, n).
    """

    @staticmethod
    def forward(ctx, x: Tensor | None, vc: Tensor, s: Tensor, p: Tensor, q: Tensor):
        t = torch.bmm(p, s)  # (b, c, hw): P S
        if x is None:
            y = torch.bmm(q, s).neg_()
        else:
            y = torch.baddbmm(x, q, s, alpha=-1.0)  # x - Q S
        y.addcmul_(vc, t)
        ctx.save_for_backward(vc, s, p, q, t)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    @_full_precision_backward
    def backward(ctx, g_y: Tensor):
        vc, s, p, q, t = ctx.saved_tensors
        need_x, need_vc, need_s, need_p, need_q = ctx.needs_input_grad
        g_yv = g_y * vc if (need_s or need_p) else None  # (b, c, hw)
        g_x = g_y if need_x else None
        g_vc = g_y * t if need_vc else None
        g_p = torch.bmm(g_yv, s.transpose(1, 2)) if need_p else None  # (b, c, n)
        g_q = torch.bmm(g_y, s.transpose(1, 2)).neg_() if need_q else None  # (b, c, n)
        g_s = None
        if need_s:
            g_s = torch.bmm(p.transpose(1, 2), g_yv)  # (b, n, hw)
            g_s.baddbmm_(q.transpose(1, 2), g_y, alpha=-1.0)
        return g_x, g_vc, g_s, g_p, g_q


def combine(x: Tensor | None, vc: Tensor, s: Tensor, p: Tensor, q: Tensor) -> Tensor:
    """``x - Q S + Vc * (P S)``: the output of regional normalisation (plus a residual)."""
    return _Combine.apply(x, vc, s, p, q)


def _statistics(u: Tensor, r: Tensor | None, a: Tensor, k: Tensor, total: Tensor,
                s2_sum: Tensor | None, eps: float, hw: int) -> dict[str, Tensor]:
    """Algorithm 1's per-entity mean and std from the pixel sums (all (b, c, n) or broadcastable).

    u = sum_p Vc S, r = sum_p Vc S^2 (algorithm1 only), a = sum_p Vc^2 S^2 (algorithm1)
    or sum_p Vc^2 S (weighted), k (b, c, 1) the shift of V, total (b, 1, n) = sum_p S,
    s2_sum (b, 1, n) = sum_p S^2 (algorithm1 only).

    Each sum of squares is split into a spread about the plain mean m0 of the summed
    terms (computed from the centred values) plus the offset of m0 from the eps-biased
    mean: both parts are non-negative and free of large cancellations.
    """
    tiny = torch.finfo(u.dtype).tiny
    count = total + eps  # (b, 1, n)
    sv = u + k * total  # (b, c, n): sum_p V S
    # Algorithm 1's (eps-biased) mean relative to the shift, without cancellation:
    # mu - k = (sum Vc S + k T) / (T + eps) - k = (sum Vc S - k eps) / (T + eps)
    mean_c = (u - k * eps) / count  # (b, c, n)
    out = {"count": count, "sv": sv, "mean_c": mean_c}
    if r is not None:
        # sum_p (V S - mu)^2 = sum_p (V S - m0)^2 + hw (m0 - mu)^2,  m0 = sum_p V S / hw,
        # and with V = Vc + k:  sum_p (V S - m0)^2 = [sum Vc^2 S^2 - (sum Vc S)^2 / hw]
        #     + 2 k [sum Vc S^2 - (T / hw) sum Vc S] + k^2 [sum S^2 - T^2 / hw]
        spread = ((a - u * u / hw) + 2 * k * (r - total / hw * u)
                  + k * k * (s2_sum - total * total / hw))
        d = (count - hw) / (hw * count)  # (b, 1, n): (m0 - mu) / sum_p V S
        offset = sv * d
        sum_sq = spread.clamp_min(0) + hw * offset * offset
        out["d"] = d
    else:
        # sum_p S (V - mu)^2 = [sum S Vc^2 - (sum S Vc)^2 / T] + T (sum S V / T - mu)^2, T = sum S
        safe_total = total.clamp_min(tiny)
        spread = a - u * u / safe_total
        offset = (sv / safe_total) * (eps / count)  # (b, c, n): weighted mean - mu
        sum_sq = spread.clamp_min(0) + total * offset * offset
        out["safe_total"] = safe_total
    var = sum_sq / count
    # The tiny floor keeps sqrt's gradient finite where the variance is exactly 0.
    std = var.clamp_min(tiny).sqrt()
    out.update(spread=spread, offset=offset, var=var, std=std, inv=1.0 / (std + eps))
    return out


def _coefficients_from_statistics(st: dict, beta, alpha, scale):
    """P = scale * beta * inv, Q = scale * (mean_c * beta * inv - alpha)."""
    ib = st["inv"] if beta is None else st["inv"] * beta.view(1, -1, 1)
    q = st["mean_c"] * ib
    if alpha is not None:
        q = q - alpha.view(1, -1, 1)
    if scale is not None:
        return ib * scale, q * scale
    return ib, q


def coefficients_autograd(u, r, a, k, total, s2_sum, beta, alpha, scale, eps, hw):
    """The coefficient maths left to autograd: the reference for :class:`_Coefficients`."""
    st = _statistics(u, r, a, k, total, s2_sum, eps, hw)
    return _coefficients_from_statistics(st, beta, alpha, scale)


class _Coefficients(torch.autograd.Function):
    """``(P, Q)`` from the pixel sums, with an analytic backward.

    The same numbers as :func:`coefficients_autograd`; the hand-derived backward
    replaces some hundred small autograd nodes (launch overhead on GPU, dispatch
    overhead on CPU) by a few dozen fused expressions.
    """

    @staticmethod
    def forward(ctx, u, r, a, k, total, s2_sum, beta, alpha, scale, eps: float, hw: int):
        p, q, state = statistics_forward(u, r, a, k, total, s2_sum, beta, alpha, scale, eps, hw)
        ctx.eps, ctx.hw, ctx.algorithm1 = eps, hw, r is not None
        ctx.save_for_backward(*state)
        return p, q

    @staticmethod
    @torch.autograd.function.once_differentiable
    @_full_precision_backward
    def backward(ctx, g_p, g_q):
        return (*statistics_backward(ctx.saved_tensors, ctx.eps, ctx.hw, ctx.algorithm1, g_p, g_q),
                None, None)


def coefficients_forward(u, r, a, k, total, s2_sum, beta, alpha, scale, eps: float, hw: int):
    """``(P, Q, state)``: :func:`coefficients_autograd`'s numbers without autograd, plus what
    :func:`_coefficients_backward` needs (``state``).

    The same expressions as :func:`_statistics` and :func:`_coefficients_from_statistics`,
    written with fused ops (``addcmul``, in-place updates of fresh tensors): each op is a kernel
    launch on a GPU, where these (b, c, n) sums cost launches, not arithmetic."""
    tiny = torch.finfo(u.dtype).tiny
    count = total + eps  # (b, 1, n)
    sv = torch.addcmul(u, k, total)  # (b, c, n): sum_p V S
    mean_c = torch.sub(u, k, alpha=eps).div_(count)  # (u - k eps) / count: mu - k
    t_r = t_s = d = safe_total = None
    if r is not None:
        # spread = [a - u^2/hw] + 2k [r - T u/hw] + k^2 [S2 - T^2/hw]  (see _statistics)
        t_r = torch.addcmul(r, total, u, value=-1.0 / hw)
        t_s = torch.addcmul(s2_sum, total, total, value=-1.0 / hw)  # (b, 1, n)
        spread = torch.addcmul(a, u, u, value=-1.0 / hw)
        spread.addcmul_(k, t_r, value=2.0).addcmul_(k * k, t_s)
        d = (count - hw) / (count * hw)  # (b, 1, n)
        offset = sv * d
        sum_sq = spread.clamp_min(0).addcmul_(offset, offset, value=float(hw))
    else:
        safe_total = total.clamp_min(tiny)
        spread = torch.addcdiv(a, u * u, safe_total, value=-1.0)  # a - u^2 / T
        offset = (sv / safe_total).mul_(eps / count)  # weighted mean - mu
        sum_sq = spread.clamp_min(0).addcmul_(total, offset * offset)
    var = sum_sq.div_(count)
    std = var.clamp_min(tiny).sqrt_()
    inv = (std + eps).reciprocal_()
    ib = inv if beta is None else inv * beta.view(1, -1, 1)
    qu = mean_c * ib  # Q before the scale
    if alpha is not None:
        qu.sub_(alpha.view(1, -1, 1))
    p, q = (ib, qu) if scale is None else (ib * scale, qu * scale)
    state = (u, r, k, total, s2_sum, beta, alpha, scale, count, sv, mean_c, spread, offset, var, std,
             inv, ib, qu, t_r, t_s, d, safe_total)
    return p, q, state


# --------------------------------------------------------------- compiled statistics (opt-in)
# The statistics and their backward are 73 small elementwise ops and reductions on (b, c, n)
# tensors (124 before they were written with fused ops): cheap arithmetic, but one kernel launch
# each on a GPU and one dispatch each on the CPU. torch.compile fuses them into a few kernels
# (measured on the CPU, b 8, c 128, n 16, with the 124-op version: 0.83 ms -> 0.13 ms for
# forward + backward). It is opt-in: the first call of each new shape
# compiles (seconds; on the CPU it needs a C++ compiler). If compiling or running the compiled
# code fails, a warning names the error and these functions stay eager for the process.
_COMPILED = {"enabled": False, "failed": None, "forward": None, "backward": None}


def compile_statistics(enabled: bool = True) -> None:
    """Run AN's (and regional_norm's) per-entity statistics and their backward through
    ``torch.compile`` (``enabled=False``: back to eager, the default). Same numbers either way."""
    _COMPILED["enabled"] = bool(enabled)
    if enabled and _COMPILED["forward"] is None:
        _COMPILED["forward"] = torch.compile(coefficients_forward, dynamic=False)
        _COMPILED["backward"] = torch.compile(_coefficients_backward, dynamic=False)


@contextlib.contextmanager
def _switched(flags: dict, switch, enabled: bool, key: str = "enabled"):
    """``switch(enabled)`` inside, ``switch`` back to the previous ``flags[key]`` after."""
    previous = flags[key]
    switch(enabled)
    try:
        yield
    finally:
        switch(previous)


def _fall_back(flags: dict, what: str, exc: Exception, stacklevel: int) -> None:
    """Record why ``what`` failed in ``flags["failed"]`` (the eager path runs from then on) and warn."""
    first_line = (str(exc).strip().splitlines() or [""])[0][:200]
    flags["failed"] = f"{type(exc).__name__}: {first_line}"
    warnings.warn(f"attnorm: {what} failed ({flags['failed']}); using the eager path for the rest of this "
                  "process", RuntimeWarning, stacklevel=stacklevel + 1)


def compiled_statistics(enabled: bool = True):
    """Context manager: :func:`compile_statistics` (``enabled``) inside, the previous setting after."""
    return _switched(_COMPILED, compile_statistics, enabled)


def statistics_compiled() -> bool:
    """Whether the compiled statistics are in use (enabled and not disabled by a failure)."""
    return _COMPILED["enabled"] and _COMPILED["failed"] is None


def _run_statistics(which: str, eager, *args):
    if statistics_compiled() and not torch.compiler.is_compiling():
        try:
            return _COMPILED[which](*args)
        except Exception as exc:  # inductor/triton/C++ toolchain errors come in many types
            _fall_back(_COMPILED, "compiled AN statistics", exc, stacklevel=3)
    return eager(*args)


# ------------------------------------------------------------------ Triton statistics (opt-in)
_TRITON = {"enabled": False, "failed": None}


def triton_statistics(enabled: bool = True) -> None:
    """Run the statistics and their backward as two Triton kernels
    (:mod:`attnorm.layers.triton_stats`) where they apply: float32 CUDA tensors, maps larger
    than one pixel, ``c x n`` tiles up to its ``MAX_TILE``; elsewhere, and without the ``triton``
    package, the eager path runs. ``enabled=False``: back to eager (the default)."""
    _TRITON["enabled"] = bool(enabled)


def triton_statistics_enabled(enabled: bool = True):
    """Context manager: :func:`triton_statistics` (``enabled``) inside, the previous setting after."""
    return _switched(_TRITON, triton_statistics, enabled)


# ------------------------------------------------------------------ Triton pixel sums (opt-in)
_TRITON_SUMS = {"enabled": False, "failed": None}


def triton_pixel_sums(enabled: bool = True) -> None:
    """Run AN's pixel sums (the products that contract over the map, e.g. ``Vc @ S^T``) as a
    split-K Triton kernel (:mod:`attnorm.layers.triton_sums`) where it applies: float32 CUDA
    tensors contiguous along the map; elsewhere, and without the ``triton`` package, ``torch.bmm``
    runs. ``enabled=False``: back to ``torch.bmm`` (the default)."""
    _TRITON_SUMS["enabled"] = bool(enabled)


def triton_pixel_sums_enabled(enabled: bool = True):
    """Context manager: :func:`triton_pixel_sums` (``enabled``) inside, the previous setting after."""
    return _switched(_TRITON_SUMS, triton_pixel_sums, enabled)


def pixel_sum(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b^T`` for (batch, m, hw) and (batch, n, hw): the (batch, m, n) sums over the pixels;
    by the Triton kernel when :func:`triton_pixel_sums` is on and applies, else ``torch.bmm``."""
    if _TRITON_SUMS["enabled"] and _TRITON_SUMS["failed"] is None and not torch.compiler.is_compiling():
        from . import triton_sums
        if triton_sums.applicable(a, b):
            try:
                return triton_sums.pixel_sum(a, b)
            except Exception as exc:  # a kernel that does not build or run on this machine
                _fall_back(_TRITON_SUMS, "Triton AN pixel sums", exc, stacklevel=2)
    return torch.bmm(a, b.transpose(1, 2))


def statistics_forward(u, r, a, k, total, s2_sum, beta, alpha, scale, eps: float, hw: int):
    """:func:`coefficients_forward`; as Triton kernels when :func:`triton_statistics` is on and
    applies, else compiled when :func:`compile_statistics` is on."""
    if _TRITON["enabled"] and _TRITON["failed"] is None and hw > 1 and not torch.compiler.is_compiling():
        from . import triton_stats as ts
        if ts.applicable(u, r, a, k, total, s2_sum, beta, alpha, scale):
            try:
                return ts.statistics_forward(u, r, a, k, total, s2_sum, beta, alpha, scale, eps, hw)
            except Exception as exc:  # a kernel that does not build or run on this machine
                _fall_back(_TRITON, "Triton AN statistics", exc, stacklevel=2)
    return _run_statistics("forward", coefficients_forward, u, r, a, k, total, s2_sum, beta, alpha, scale, eps, hw)


def statistics_backward(saved, eps: float, hw: int, algorithm1: bool, g_p, g_q):
    """:func:`_coefficients_backward` for the state :func:`statistics_forward` returned (the Triton
    kernels' state holds the inputs only), compiled when :func:`compile_statistics` is on."""
    from . import triton_stats as ts
    if len(saved) == ts.STATE_LENGTH:
        if _TRITON["failed"] is None:
            try:
                return ts.statistics_backward(saved, eps, hw, algorithm1, g_p, g_q)
            except Exception as exc:
                _fall_back(_TRITON, "Triton AN statistics", exc, stacklevel=2)
        u, r, k, total, s2_sum, beta, alpha, scale, a = saved  # rebuild the eager state
        saved = coefficients_forward(u, r, a, k, total, s2_sum, beta, alpha, scale, eps, hw)[2]
    return _run_statistics("backward", _coefficients_backward, saved, eps, hw, algorithm1, g_p, g_q)


def _coefficients_backward(saved, eps: float, hw: int, algorithm1: bool, g_p, g_q):
    """Analytic backward of :func:`coefficients_autograd`: the gradients of
    ``(u, r, a, k, total, s2_sum, beta, alpha, scale)`` given those of ``(P, Q)``.

    Written, like :func:`coefficients_forward`, with as few ops as the algebra allows: per-entity
    or per-channel sums of several terms are summed as one (b, c, n) tensor, and gradients
    that are not returned (count, sv, offset) are folded into those that are."""
    (u, r, k, total, s2_sum, beta, alpha, scale, count, sv, mean_c, spread, offset, var, std,
     inv, ib, qu, t_r, t_s, d, safe_total) = saved
    tiny = torch.finfo(u.dtype).tiny
    g_p = torch.zeros_like(inv) if g_p is None else g_p
    g_q = torch.zeros_like(inv) if g_q is None else g_q
    # P = scale ib, Q = scale qu, qu = mean_c ib - alpha, ib = inv beta
    g_scale = None
    if scale is not None:
        g_scale = torch.addcmul(g_p * ib, g_q, qu).sum().reshape(scale.shape)
        g_p, g_q = g_p * scale, g_q * scale
    g_alpha = None if alpha is None else g_q.sum(dim=(0, 2)).neg_()
    g_ib = torch.addcmul(g_p, g_q, mean_c)
    g_beta = None if beta is None else (g_ib * inv).sum(dim=(0, 2))
    g_inv = g_ib if beta is None else g_ib * beta.view(1, -1, 1)
    # inv = 1/(std + eps), std = sqrt(max(var, tiny)): d inv / d var = -inv^2 / (2 std) where var > tiny
    g_var = (g_inv * inv).mul_(inv).div_(std).mul_(-0.5).masked_fill_(var <= tiny, 0.0)
    g_sum_sq = g_var.div_(count)  # var = sum_sq / count
    g_spread = g_sum_sq.masked_fill(spread <= 0, 0.0)  # sum_sq = relu(spread) + ...
    g_u = (g_q * ib).div_(count)  # mean_c = (u - k eps) / count
    # -g_count, summed over channels at the end: var = sum_sq / count and mean_c's 1/count ...
    g_count_neg = torch.mul(g_sum_sq, var).addcmul_(g_u, mean_c)
    # ... g_k's terms summed over entities at the end: mean_c's -k eps ...
    g_k_terms = g_u * (-eps)
    if algorithm1:
        # sum_sq = ... + hw offset^2, offset = sv d, d = 1/hw - 1/count
        g_sv = (g_sum_sq * offset).mul_(2.0 * hw)  # the gradient of offset, for now
        g_count_neg.addcdiv_(g_sv * sv, count * count, value=-1.0)  # ... and d's 1/count
        g_sv.mul_(d)
        # spread = a - u^2/hw + 2k (r - T u/hw) + k^2 (S2 - T^2/hw)
        g_a = g_spread
        g_u.addcmul_(g_spread, sv, value=-2.0 / hw)  # u's terms in spread: -2 u/hw - 2 k T/hw
        g_r = g_spread * k * 2.0
        g_k_terms.addcmul_(g_spread, torch.addcmul(t_r, k, t_s), value=2.0)
        g_total_terms = torch.mul(g_sv, k).addcmul_(g_r, sv, value=-1.0 / hw)
        g_s2 = (g_r * k).sum(1, keepdim=True).mul_(0.5)
    else:
        # sum_sq = relu(spread) + T off^2, spread = a - u^2 / Ts, off = (sv / Ts) (eps / count)
        g_a = g_spread
        g_r = g_s2 = None
        g_off = (g_sum_sq * offset).mul_(2.0) * total
        g_u.addcmul_(g_spread, u / safe_total, value=-2.0)
        g_ts = (torch.mul(g_spread, u * u).div_(safe_total) - g_off * offset).sum(1, keepdim=True) / safe_total
        g_count_neg.addcdiv_(g_off * offset, count)
        g_sv = g_off * (eps / (safe_total * count))
        g_total_terms = torch.mul(g_sum_sq, offset * offset).addcmul_(g_sv, k)
        g_ts = g_ts * (total > tiny)
    # sv = u + k T
    g_u.add_(g_sv)
    g_k = g_k_terms.addcmul_(g_sv, total).sum(2, keepdim=True)  # (b, c, 1)
    g_total = g_total_terms.sum(1, keepdim=True).sub_(g_count_neg.sum(1, keepdim=True))  # count = T + eps
    if not algorithm1:
        g_total.add_(g_ts)
    return g_u, g_r, g_a, g_k, g_total, g_s2, g_beta, g_alpha, g_scale


def regional_coefficients(
    vc: Tensor,
    s: Tensor,
    shift: Tensor,
    beta: Tensor | None = None,
    alpha: Tensor | None = None,
    eps: float = 1e-5,
    variance: str = "algorithm1",
    scale: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-entity coefficients ``(P, Q)``, each (b, c, n), with RN = Vc * (P S) - Q S.

    Args:
        vc: centred values (b, c, hw), ``V - shift``; any per-(b, c) shift is
            exact, the spatial mean of V makes the moments well conditioned.
        s: soft layout (b, n, hw).
        shift: (b, c) shift that was subtracted from V.
        beta, alpha: per-channel scale and shift (None: 1 and 0).
        scale: optional scalar multiplying both P and Q (the layer's sigma).
    """
    _check_variance(variance)
    algorithm1 = variance == "algorithm1"
    n = s.shape[1]
    m, a = _Moments.apply(vc, s, algorithm1)  # (b, c, 2n | n), (b, c, n)
    total = s.sum(-1).unsqueeze(1)  # (b, 1, n): sum_p S
    u = m[..., :n]  # (b, c, n): sum_p Vc S
    r = m[..., n:] if algorithm1 else None  # (b, c, n): sum_p Vc S^2
    s2_sum = s.square().sum(-1).unsqueeze(1) if algorithm1 else None  # (b, 1, n): sum_p S^2
    dt = vc.dtype
    cast = lambda t: None if t is None else t.to(dt)
    return _Coefficients.apply(u, r, a, shift.unsqueeze(-1), total, s2_sum, cast(beta), cast(alpha),
                               cast(scale), eps, vc.shape[-1])


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def regional_norm(
    v: Tensor,
    layout: Tensor,
    beta: Tensor | None = None,
    alpha: Tensor | None = None,
    eps: float = 1e-5,
    variance: str = "algorithm1",
) -> Tensor:
    """Regional normalisation of ``v`` (b, c, h, w) under a soft ``layout`` (b, n, h, w).

    Args:
        v: value features (b, c, h, w).
        layout: soft semantic layout (b, n, h, w); usually a softmax over ``n``.
        beta: per-channel scale (c,) applied after normalisation (None: 1).
        alpha: per-channel shift (c,) (None: 0).
        eps: added to each entity's pixel count and to its std, as in Algorithm 1.
        variance: ``"algorithm1"`` (the supplement's literal formula) or
            ``"weighted"`` (the usual soft-weighted variance).

    Returns:
        (b, c, h, w) tensor in ``v``'s dtype. Moments are computed in float32
        (float64 for float64 inputs), also under autocast.
    """
    if v.dim() != 4 or layout.dim() != 4:
        raise ValueError(
            f"regional_norm expects v (b, c, h, w) and layout (b, n, h, w); got shapes "
            f"{tuple(v.shape)} and {tuple(layout.shape)}"
        )
    b, c, h, w = v.shape
    if layout.shape[0] != b or layout.shape[2:] != v.shape[2:]:
        raise ValueError(
            f"layout {tuple(layout.shape)} must share batch and spatial size with v {tuple(v.shape)}"
        )
    _check_variance(variance)
    n = layout.shape[1]
    dt = _compute_dtype(v)
    with torch.autocast(device_type=v.device.type, enabled=False):
        v3 = v.reshape(b, c, h * w).to(dt)  # (b, c, hw)
        s3 = layout.reshape(b, n, h * w).to(dt)  # (b, n, hw)
        shift = v3.mean(-1)  # (b, c)
        vc = v3 - shift.unsqueeze(-1)  # (b, c, hw)
        p, q = regional_coefficients(vc, s3, shift, beta, alpha, eps, variance)  # (b, c, n) each
        out = combine(None, vc, s3, p, q)  # Vc (P S) - Q S
    return out.view(b, c, h, w).to(v.dtype)
