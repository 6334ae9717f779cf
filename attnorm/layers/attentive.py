"""Attentive Normalization (Wang et al., CVPR 2020): the drop-in layer.

AN = semantic layout learning + regional normalisation (Algorithm 1):

    S_raw = K X                       (b, n, hw)  n learned entities, 1x1 conv, no bias
    S_ss  = Q(X)^T Key(X)[:, :, idx]  (b, n, hw)  self-sampling regularisation (training only)
    S     = softmax_n((S_raw + a * S_ss) / tau)   soft layout, a in [0, 1] per entity
    V     = W_v X + b_v               (b, c, hw)  value features
    Y     = X + sigma * RN(V, S)      residual, sigma starts at 0 (identity at init)

This implementation never builds the query map or the key map: with ``idx`` the
``n`` sampled positions, ``Q^T Key_s = X^T (W_q^T Key_s) + b_q^T Key_s``, so the
sampled keys fold into a per-sample entity matrix ``E_b = K + diag(a) Key_s^T W_q``
and the whole layout is one batched matrix product, fused with the value
projection. The regional norm output is folded with sigma into the residual
(``Y = X - (sigma Q) S + Vc * ((sigma P) S)``, see :mod:`attnorm.layers.regional`).
The whole layer is one autograd node (:class:`_AttentiveNormFn`) with a hand-written
backward, so that gradients touch each full-resolution map as few times as possible.
The literal, unfused computation lives in :mod:`attnorm.layers.reference`.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor, nn

from . import cpu_fused
from .regional import (_check_variance, _compute_dtype, _full_precision_backward, _switched, pixel_sum,
                       statistics_backward, statistics_forward)


# ------------------------------------------------------------------ the three small products (opt-in form)
_SMALL_SUMS = {"enabled": False}


def small_products_as_sums(enabled: bool = True) -> None:
    """Compute the layer's three small matrix products, ``W_v mean_p(X)`` ((b, c) x (c, c)) and SSR's
    query and key gradients ((c/8, b n) x (b n, c + 1) and (c/8, b n) x (b n, c)), as one broadcast
    multiply and one sum each instead of a matrix product. On an H200 the three took 160 of the layer's
    570 us of device time at b 8, 32x32 (session 31), about a microsecond of arithmetic each: the
    library's choice of kernel for a product with 8-16 rows, not the work. The same values (the sum's
    order differs); off by default until a GPU run (``gpu_issue13.sh``'s ``forms`` part) shows it faster."""
    _SMALL_SUMS["enabled"] = bool(enabled)


def small_products_as_sums_enabled(enabled: bool = True):
    """Context manager: :func:`small_products_as_sums` (``enabled``) inside, the previous setting after."""
    return _switched(_SMALL_SUMS, small_products_as_sums, enabled)


def _small_mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for a small (m, k) x (k, n) product, as a broadcast multiply and a sum over k when
    :func:`small_products_as_sums` is on."""
    if _SMALL_SUMS["enabled"]:
        return (a.unsqueeze(-1) * b.unsqueeze(0)).sum(1)
    return a @ b


_WORKSPACE = threading.local()
_USE_WORKSPACE = True


def _workspace(shape: tuple, like: Tensor, slot: int) -> Tensor:
    """An uninitialised tensor that lives only inside one backward call.

    On the CPU every fresh map-sized allocation is served by the C allocator, which hands
    big blocks back to the operating system between steps; the next step pays a page fault
    per 4 KiB touched (measured: a fifth of the layer's backward at 64x64). Each thread
    keeps one flat buffer per slot, dtype and device, grown to the largest request; what
    is returned from a backward never aliases it. Elsewhere (CUDA has a caching allocator)
    this is a plain ``torch.empty``.
    """
    if like.device.type != "cpu" or not _USE_WORKSPACE:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    cache = getattr(_WORKSPACE, "buffers", None)
    if cache is None:
        cache = _WORKSPACE.buffers = {}
    numel = math.prod(shape)
    key = (slot, like.dtype)
    buf = cache.get(key)
    if buf is None or buf.numel() < numel:
        cache[key] = None  # free the old block before allocating the larger one
        buf = cache[key] = torch.empty(numel, dtype=like.dtype)
    return buf[:numel].view(shape)


def _bmm_add(addend: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``addend + a @ b`` (batched; ``addend`` broadcastable to the product) as a new tensor.

    On the CPU as ``bmm`` then ``add_``: ``baddbmm`` first copies the addend into the output and then
    has the BLAS call read it back (beta = 1), which measured 13.6 against 10.6 ms for the layer's
    (8, 144, 128) x (8, 128, 4096) projection on one thread (2.33 against 2.26 ms at 1024 pixels).
    Elsewhere one ``baddbmm`` kernel (a GPU pays per launch).
    """
    if a.device.type == "cpu":
        return torch.bmm(a, b).add_(addend)
    return torch.baddbmm(addend, a, b)


# ------------------------------------------------------------------ map layouts
# The layer's maps are (b, k, hw) tensors. From an NCHW input they are stored that way (pixels
# contiguous); from a channels-last input they are stored pixel-major, as (b, hw, k) memory seen
# through a transposed view (``t.mT``), so that the input and the output need no layout copy and
# every product below writes its result straight into that layout. Elementwise ops keep their
# operands' layout by themselves; the products and the fresh maps go through these helpers.

def _map_empty(shape: tuple, like: Tensor, pixel_major: bool, slot: int | None = None) -> Tensor:
    """An uninitialised (b, k, hw) map in the given layout (``slot``: from the backward workspace)."""
    b, k, hw = shape
    if not pixel_major:
        return _workspace(shape, like, slot) if slot is not None else like.new_empty(shape)
    flat = (b, hw, k)
    return (_workspace(flat, like, slot) if slot is not None else like.new_empty(flat)).mT


def _map_mm(a: Tensor, m: Tensor, pixel_major: bool, out: Tensor | None = None) -> Tensor:
    """``a @ m`` for a small (b, r, k) matrix and a (b, k, hw) map: a (b, r, hw) map in the layout
    (written into ``out``, a map of that layout, when given)."""
    if pixel_major:
        if out is None:
            return torch.bmm(m.mT, a.mT).mT
        torch.bmm(m.mT, a.mT, out=out.mT)
        return out
    return torch.bmm(a, m) if out is None else torch.bmm(a, m, out=out)


def _map_addmm_(y: Tensor, a: Tensor, m: Tensor, pixel_major: bool, alpha: float = 1.0) -> Tensor:
    """``y += alpha * a @ m`` in place, for a (b, r, hw) map ``y`` of the layout."""
    if pixel_major:
        y.mT.baddbmm_(m.mT, a.mT, alpha=alpha)
    else:
        y.baddbmm_(a, m, alpha=alpha)
    return y


def _map_mm_add(addend: Tensor, a: Tensor, m: Tensor, pixel_major: bool) -> Tensor:
    """``addend + a @ m`` as a new (b, r, hw) map of the layout (``addend`` broadcastable to it), by
    :func:`_bmm_add` (its per-device form) on the transposed operands where the layout is pixel-major."""
    return _bmm_add(addend.mT, m.mT, a.mT).mT if pixel_major else _bmm_add(addend, a, m)


def _softmax_entities(logits: Tensor, pixel_major: bool) -> Tensor:
    """Softmax over the entity axis (dim 1) of (b, n, hw) logits, returned in the layout."""
    if pixel_major:
        return torch.softmax(logits.mT, dim=-1).mT  # the entities are the last axis of the memory
    return torch.softmax(logits, dim=1)


def _in_layout(t: Tensor, pixel_major: bool) -> Tensor:
    """``t`` (b, k, hw) stored in the layout (a copy only when it is not)."""
    return t.mT.contiguous().mT if pixel_major else t.contiguous()


def _is_pixel_major(t: Tensor) -> bool:
    """Whether a (b, k, hw) map is stored as (b, hw, k) with dense rows (a channels-last map's view)."""
    b, k, hw = t.shape
    return k > 1 and hw > 1 and t.stride(1) == 1 and t.stride(2) == k and t.stride(0) == k * hw


# Devices on which a forward with autograd on keeps Vc^2 for the backward (see _AttentiveNormFn.forward).
KEEP_VC_SQUARED_ON = frozenset({"cpu"})

# A channels-last input of at least this many channels runs in its own (pixel-major) layout; a
# narrower one is copied to NCHW maps. In pixel-major memory every map's row is one pixel's c (or n)
# values, and with c = 16 the elementwise passes and sums over the map run 16-float inner loops
# (and the [S; S^2] halves 16-float strided rows): one thread, fwd + bwd, against the copy to NCHW,
# b 32 c 16 64x64 1.05-1.10x the time, b 16 c 32 32x32 0.79x, b 8 c 128 0.80-0.81x (session 27,
# benchmarks/results/an_cpu_s27).
PIXEL_MAJOR_MIN_CHANNELS = 32


def clear_workspace() -> None:
    """Free this thread's backward workspace (it is re-created by the next backward)."""
    _WORKSPACE.buffers = {}


class _AttentiveNormFn(torch.autograd.Function):
    """The whole AN layer on (b, c, hw) maps as one autograd node with a hand-written backward.

    forward(x3, entities, value, value_bias, key, key_bias, query, query_bias, ssr_a, beta,
            alpha, sigma, positions, temperature, eps, algorithm1, keep_vc_squared) -> (y, layout)

    ``key`` .. ``ssr_a`` and ``positions`` are None without SSR; ``beta``/``alpha`` None
    without affine; ``keep_vc_squared``: save Vc^2 for the backward instead of recomputing it.
    The forward is the computation described in the module docstring; the backward works on
    whole maps as few times as it can:

    * the gradients of the layout logits and of the centred values are written into one
      (b, n + c, hw) buffer, so the input gradient and the weight gradients are one batched
      matrix product each, and the residual's gradient rides in as the product's addend;
    * the centring (``Vc = V - mean_p V``) and the shift's path (``k = mean_p V``) are folded
      into that buffer as a per-channel constant ``(g_k - sum_p g_Vc) / hw``, whose pixel sum
      is computed from (b, c, n) quantities instead of another pass over the map;
    * SSR's gather (the features at the sampled positions) gets its gradient by ``index_add_``
      into the input gradient instead of a zero-filled map.
    """

    @staticmethod
    def forward(ctx, x3, entities, value, value_bias, key, key_bias, query, query_bias, ssr_a,
                beta, alpha, sigma, positions, temperature: float, eps: float, algorithm1: bool,
                keep_vc_squared: bool = False):
        b, c, hw = x3.shape
        n = entities.shape[0]
        pm = _is_pixel_major(x3)  # a channels-last input: every map in that layout
        ssr = positions is not None
        xs_t = keys_t = kqb = q_aug = None
        if ssr:
            # the features at the sampled positions, (b, n, c), and their keys W_k x + b_k, (b, n, c/8):
            # sample-major, so that each product below is one matrix product over all b * n rows
            xs_t = x3.transpose(1, 2)[:, positions]
            keys_t = torch.addmm(key_bias, xs_t.reshape(b * n, c), key.t()).view(b, n, -1)
            # S_ss = (W_q X + b_q)^T keys = (keys^T W_q) X + keys^T b_q: [keys^T W_q | keys^T b_q] in one
            # product with [W_q | b_q]
            q_aug = torch.cat([query, query_bias.unsqueeze(1)], dim=1)  # (c/8, c + 1)
            kqb = (keys_t.view(b * n, -1) @ q_aug).view(b, n, c + 1)  # [kq | kb]
            ent = torch.addcmul(entities, ssr_a.view(1, n, 1), kqb[..., :c])  # (b, n, c)
            ent_bias = ssr_a.view(1, n) * kqb[..., c]  # (b, n)
        else:
            ent = entities.expand(b, n, c)
            ent_bias = torch.zeros(1, n, device=x3.device, dtype=x3.dtype).expand(b, n)
        # [E_b / tau; W_v] X + [e_b / tau; -W_v mean_p X]: the layout logits over the
        # temperature (1/tau folded into the (n, c) rows, not applied to the map) and the
        # values centred by their spatial mean
        inv_tau = 1.0 / temperature
        weight = torch.cat([ent * inv_tau, value.expand(b, c, c)], dim=1)  # (b, n + c, c)
        ctx.set_materialize_grads(False)
        ctx.dims = (b, c, n, hw)
        ctx.pixel_major = pm
        ctx.temperature, ctx.eps, ctx.algorithm1, ctx.ssr = temperature, eps, algorithm1, ssr
        ctx.fused = cpu_fused.usable(x3.device, x3.dtype, algorithm1, c)
        if ctx.fused:  # the same maths as below in fused CPU kernels (attnorm.layers.cpu_fused)
            y, state = cpu_fused.forward(x3, weight, ent_bias * inv_tau, value_bias, beta, alpha, sigma, eps)
            ctx.save_for_backward(x3, weight, beta, alpha, sigma, *state, xs_t, keys_t, kqb, q_aug, ssr_a, key,
                                  positions, None)
            return y, state[1]
        xbar = x3.mean(-1)  # (b, c)
        value_of_mean = _small_mm(xbar, value.t())  # (b, c): W_v mean_p(X)
        bias = torch.cat([ent_bias * inv_tau, -value_of_mean], dim=1)  # (b, n + c)
        shift = (value_of_mean + value_bias).unsqueeze(-1)  # (b, c, 1)
        out = _map_mm_add(bias.unsqueeze(-1), weight, x3, pm)  # (b, n + c, hw)
        logits, vc = out[:, :n], out[:, n:]
        s = _softmax_entities(logits, pm)  # (b, n, hw)
        eager = not torch.compiler.is_compiling()  # compilers refuse some out= forms used here

        # The pixel sums of Algorithm 1 (see regional._Moments).
        vv = vc * vc  # (b, c, hw)
        if algorithm1:
            if eager:  # [S; S^2] in one buffer, S and S^2 views of it (one map less to keep)
                ss = _map_empty((b, 2 * n, hw), s, pm)
                s = ss[:, :n].copy_(s)
                s2 = torch.mul(s, s, out=ss[:, n:])  # (b, n, hw)
            else:
                s2 = s * s
                ss = _in_layout(torch.cat([s, s2], dim=1), pm)  # (b, 2n, hw)
            m = pixel_sum(vc, ss)  # (b, c, 2n): [sum_p Vc S | sum_p Vc S^2]
            a = pixel_sum(vv, s2)  # (b, c, n): sum_p Vc^2 S^2
            u, r = m[..., :n], m[..., n:]
            ssum = ss.sum(-1).unsqueeze(1)  # (b, 1, 2n): [sum_p S | sum_p S^2]
            total, s2_sum = ssum[..., :n], ssum[..., n:]
        else:
            s2 = ss = s
            ssum = total = s.sum(-1).unsqueeze(1)  # (b, 1, n): sum_p S
            u = pixel_sum(vc, s)  # (b, c, n): sum_p Vc S
            a = pixel_sum(vv, s)  # (b, c, n): sum_p Vc^2 S
            r = s2_sum = None
        # sigma folded in: (b, c, n) each; coeff: what the statistics' backward needs
        p, q, coeff = statistics_forward(u, r, a, shift, total, s2_sum, beta, alpha, sigma, eps, hw)

        # Y = X - Q S + Vc * (P S). With keep_vc_squared (training on the CPU) Vc^2 is kept for the
        # backward: recomputing it there reads and writes a (b, c, hw) map, 3-3.5% of the layer's time
        # (bench_layer_versions, session 20). Otherwise (a GPU, where that is one elementwise kernel and
        # memory is what is short, or no backward to come) P S goes into Vc^2's memory and a backward
        # recomputes Vc^2.
        t = _map_mm(p, s, pm) if keep_vc_squared or not eager else _map_mm(p, s, pm, out=vv)  # (b, c, hw): P S
        if not keep_vc_squared:
            vv = None
        y = torch.addcmul(x3, vc, t)
        _map_addmm_(y, q, s, pm, alpha=-1.0)

        ctx.n_coeff = len(coeff)
        ctx.save_for_backward(*coeff, x3, weight, vc, vv, s if ss is s else None, ss, t, p, q, xs_t, keys_t, kqb,
                              q_aug, ssr_a, key, positions, ssum)
        return y, s

    @staticmethod
    @torch.autograd.function.once_differentiable
    @_full_precision_backward
    def backward(ctx, g_y, g_layout):
        saved = ctx.saved_tensors
        if ctx.fused:
            return _AttentiveNormFn._fused_backward(ctx, saved, g_y, g_layout)
        coeff = saved[:ctx.n_coeff]
        x3, weight, vc, vv, s, ss, t, p, q, xs_t, keys_t, kqb, q_aug, ssr_a, key, positions, ssum = saved[ctx.n_coeff:]
        b, c, n, hw = ctx.dims
        pm = ctx.pixel_major
        if s is None:  # algorithm1: S is the first half of [S; S^2]
            s = ss[:, :n]
        u, r = coeff[0], coeff[1]
        algorithm1 = ctx.algorithm1
        needs = ctx.needs_input_grad
        eager = not torch.compiler.is_compiling()  # compilers refuse some out= forms used here
        # copies only a gradient not in the maps' layout (e.g. NCHW maps, channels-last gradient), as the forward its input
        g_y = torch.zeros_like(t) if g_y is None else _in_layout(g_y, pm)

        # Y = X - Q S + Vc * (P S)
        gv = torch.mul(g_y, vc, out=_map_empty((b, c, hw), x3, pm, 1)) if eager else g_y * vc
        g_p = pixel_sum(gv, s)  # (b, c, n)
        gs_t = pixel_sum(g_y, s)  # (b, c, n): sum_p g_Y S
        g_s = _map_mm(p.mT, gv, pm, out=_map_empty((b, n, hw), x3, pm, 3) if eager else None)  # (b, n, hw)
        _map_addmm_(g_s, q.mT, g_y, pm, alpha=-1.0)

        g_u, g_r, g_a, g_k, g_total, g_s2, g_beta, g_alpha, g_sigma = statistics_backward(
            coeff, ctx.eps, hw, algorithm1, g_p, -gs_t)
        if algorithm1:
            g_m = torch.cat([g_u, g_r], dim=-1)  # (b, c, 2n)
            vs2 = r  # sum_p Vc S^2
        else:
            g_m, vs2 = g_u, u

        # g_Vc = g_Y * (P S) + g_m ss + 2 Vc * (g_a S2). With V = Vc + k, k = mean_p V:
        # g_V = g_Vc + (g_k - sum_p g_Vc) / hw, where
        # sum_p g_Vc = sum_n [P * (g_Y S^T) + g_m * sum_p ss + 2 g_a * (Vc S2^T)].
        sum_gvc = torch.baddbmm(torch.mul(p, gs_t).addcmul_(g_a, vs2, value=2.0).sum(-1, keepdim=True),
                                g_m, ssum.transpose(1, 2))  # (b, c, 1)
        delta = torch.sub(g_k, sum_gvc).div_(hw)  # (b, c, 1)
        # Eagerly both gradients are written in place into one buffer; a compiler (which
        # refuses strided ``out=``) gets the plain form and fuses the concatenation itself.
        if eager:
            g_out = _map_empty((b, n + c, hw), x3, pm, 0)
            g_logits, g_v = g_out[:, :n], g_out[:, n:]
            torch.addcmul(delta, g_y, t, out=g_v)
        else:
            g_v = torch.addcmul(delta, g_y, t)
        _map_addmm_(g_v, g_m, ss, pm)

        # The layout's gradient (from the output, the moments, and sum_p S and S^2), summed in
        # place: g_S = P^T (g_Y Vc) - Q^T g_Y + g_u^T Vc + 2 S (g_r^T Vc + g_a^T Vc^2 + g_s2)
        # + g_total (algorithm1); g_S = ... + g_u^T Vc + g_a^T Vc^2 + g_total (weighted).
        # P^T (g_Y Vc) - Q^T g_Y (terms that nearly cancel) are summed first, g_u^T Vc after.
        if vv is None:  # Vc^2 (not kept by the forward), in gv's memory
            vv = torch.mul(vc, vc, out=gv) if eager else vc * vc
        if algorithm1:  # d/dS of the S^2 terms is 2 S (...)
            # [g_u^T Vc; g_r^T Vc] in one product (one pass over Vc)
            w_uv = _map_mm(g_m.mT, vc, pm, out=_map_empty((b, 2 * n, hw), x3, pm, 2) if eager else None)  # (b, 2n, hw)
            g_s.add_(w_uv[:, :n])
            inner = w_uv[:, n:]  # (b, n, hw)
            _map_addmm_(inner, g_a.mT, vv, pm)
            inner.add_(g_s2.transpose(1, 2))
            g_s.add_(g_total.transpose(1, 2)).addcmul_(s, inner, value=2.0)
            s2 = ss[:, n:]
        else:
            _map_addmm_(g_s, g_u.mT, vc, pm)
            _map_addmm_(g_s, g_a.mT, vv, pm)
            g_s.add_(g_total.transpose(1, 2))
            s2 = s
        g_a_s2 = _map_mm(g_a, s2, pm, out=gv if eager else None)  # (b, c, hw), in gv's memory
        g_v.addcmul_(vc, g_a_s2, value=2.0)
        if g_layout is not None:
            g_s.add_(g_layout)
        # softmax over entities: g_Z = S g_S - S sum_n (S g_S), Z = logits / tau
        if eager:
            torch.mul(s, g_s, out=g_logits)
        else:
            g_logits = s * g_s
        g_logits.addcmul_(s, g_logits.sum(1, keepdim=True), value=-1.0)
        if not eager:
            g_out = _in_layout(torch.cat([g_logits, g_v], dim=1), pm)

        g_x3 = None
        if needs[0]:
            g_x3 = _map_mm_add(g_y, weight.mT, g_out, pm)  # (b, c, hw)
        # The rows' weight gradients, one pass over the map; only the entity rows where the value
        # projection's are not wanted (e.g. D's layer in the generator's phase, parameters frozen)
        rows = _AttentiveNormFn._weight_rows(ctx)
        g_weight = pixel_sum(g_out if rows > n else g_logits, x3) if rows else None  # (b, rows, c)
        return _AttentiveNormFn._parameter_grads(ctx, saved, g_x3, g_weight, lambda: g_logits.sum(-1, keepdim=True),
                                                 g_k, g_beta, g_alpha, g_sigma)

    @staticmethod
    def _weight_rows(ctx) -> int:
        """How many rows of [E_b / tau; W_v]'s gradient the backward needs: all n + c where the value
        projection's weight wants a gradient, the n entity rows where only the entities (or SSR's
        parameters, or the input through SSR's gather) do, else none."""
        b, c, n, hw = ctx.dims
        needs = ctx.needs_input_grad
        need_ssr = ctx.ssr and (needs[0] or any(needs[4:9]))
        return n + c if needs[2] else n if needs[1] or need_ssr else 0

    @staticmethod
    def _fused_backward(ctx, saved, g_y, g_layout):
        """The backward of the fused CPU forward (:mod:`attnorm.layers.cpu_fused`): the same
        gradients as the PyTorch path below, computed by one kernel call."""
        x3, weight, beta, alpha, sigma = saved[:5]
        state = saved[5:13]
        if g_y is None:
            g_y = torch.zeros_like(state[0])
        g_x3, g_weight, g_lsum, g_k, g_beta, g_alpha, g_sigma = cpu_fused.backward(
            g_y, x3, state, weight, beta, alpha, sigma, ctx.eps, g_layout, ctx.needs_input_grad[0],
            _AttentiveNormFn._weight_rows(ctx))
        return _AttentiveNormFn._parameter_grads(ctx, saved, g_x3, g_weight, lambda: g_lsum.unsqueeze(-1),
                                                 g_k.unsqueeze(-1), g_beta, g_alpha, g_sigma)

    @staticmethod
    def _parameter_grads(ctx, saved, g_x3, g_weight, logits_sum, g_k, g_beta, g_alpha, g_sigma):
        """The parameters' gradients (and SSR's share of the input's) from the rows' weight
        gradient ``g_weight`` (b, rows, c) and ``logits_sum()``, the pixel sums of the layout logits'
        gradient (b, n, 1); returns backward's whole tuple."""
        xs_t, keys_t, kqb, q_aug, ssr_a, key, positions = saved[-8:-1]
        b, c, n, hw = ctx.dims
        needs = ctx.needs_input_grad
        g_entities = g_value = g_key = g_key_bias = g_query = g_query_bias = g_ssr_a = None
        # SSR's rows need the entity rows' gradient for their parameters and for the gather's share
        # of the input gradient
        need_ssr = ctx.ssr and (needs[0] or any(needs[4:9]))
        inv_tau = 1.0 / ctx.temperature
        if g_weight is not None:
            g_ent = g_weight[:, :n] * inv_tau  # (b, n, c): the rows were E_b / tau
            g_entities = g_ent.sum(0) if needs[1] else None
            g_value = g_weight[:, n:].sum(0) if needs[2] else None
        g_value_bias = g_k.sum(0).view(c) if needs[3] else None
        if need_ssr:
            # the rows [ent | ent_bias] = [E | 0] + ssr_a * [kq | kb] (before 1/tau): their gradient
            g_aug = torch.cat([g_ent, logits_sum().mul(inv_tau)], dim=-1)  # (b, n, c + 1)
            if needs[8]:
                g_ssr_a = (g_aug * kqb).sum((0, 2))
            g_aug.mul_(ssr_a.view(1, n, 1))  # [g_kq | g_kb]
            flat = g_aug.view(b * n, c + 1)
            keys_flat = keys_t.view(b * n, -1)  # (b n, c/8)
            if needs[6] or needs[7]:  # [g_query | g_query_bias] = keys^T [g_kq | g_kb], summed over b and n
                g_q_aug = _small_mm(keys_flat.t(), flat)  # (c/8, c + 1)
                g_query = g_q_aug[:, :c] if needs[6] else None
                g_query_bias = g_q_aug[:, c] if needs[7] else None
            g_keys = flat @ q_aug.t()  # (b n, c/8): g_kq W_q^T + g_kb b_q^T
            if needs[4]:
                g_key = _small_mm(g_keys.t(), xs_t.reshape(b * n, c))  # (c/8, c)
            if needs[5]:
                g_key_bias = g_keys.sum(0)
            if g_x3 is not None:  # the gather's gradient
                g_x3.index_add_(2, positions, (g_keys @ key).view(b, n, c).transpose(1, 2))
        return (g_x3, g_entities, g_value, g_value_bias, g_key, g_key_bias, g_query, g_query_bias,
                g_ssr_a, g_beta, g_alpha, g_sigma, None, None, None, None, None)


class AttentiveNorm(nn.Module):
    """Attentive Normalization layer; ``forward(x)`` returns a tensor of x's shape.

    Args:
        channels: number of input (and output) channels ``c``.
        num_entities: number of learned semantic entities ``n`` (paper: 16 or 8).
        temperature: softmax temperature ``tau`` of the layout (paper: 10).
        self_sampling: enable self-sampling regularisation (SSR) in training.
            Needs ``channels >= 8`` for the c/8 key/query projections.
        affine: learn the per-channel scale/shift (``beta``/``alpha`` of
            Algorithm 1, here ``rn_weight``/``rn_bias``); otherwise 1 and 0.
        variance: ``"algorithm1"`` (literal, default) or ``"weighted"``.
        eps: Algorithm 1's epsilon (pixel counts and std).

    Parameters: ``entities`` (n, c), ``query``/``key`` (c/8, c) + biases,
    ``ssr_alpha`` (n,) initialised 0.1 and clipped to [0, 1] in forward,
    ``value`` (c, c) + bias, ``rn_weight``/``rn_bias`` (c,), ``sigma`` scalar 0.

    In eval mode SSR is off and the output is a deterministic function of x.
    In training mode SSR draws ``n`` positions uniformly with replacement from
    torch's global RNG at every forward (seed with ``torch.manual_seed``).
    """

    def __init__(
        self,
        channels: int,
        num_entities: int = 16,
        temperature: float = 10.0,
        self_sampling: bool = True,
        affine: bool = True,
        variance: str = "algorithm1",
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if num_entities < 1:
            raise ValueError(f"num_entities must be >= 1, got {num_entities}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if self_sampling and channels < 8:
            raise ValueError(
                f"self_sampling needs channels >= 8 for the c/8 key/query projections, got "
                f"channels={channels}; use more channels or self_sampling=False"
            )
        _check_variance(variance)
        self.channels = channels
        self.num_entities = num_entities
        self.temperature = float(temperature)
        self.self_sampling = self_sampling
        self.affine = affine
        self.variance = variance
        self.eps = eps

        # Weights of the 1x1 convolutions, kept as (out, in) matrices.
        self.entities = nn.Parameter(torch.empty(num_entities, channels))
        self.value = nn.Parameter(torch.empty(channels, channels))
        self.value_bias = nn.Parameter(torch.empty(channels))
        if self_sampling:
            ck = channels // 8
            self.query = nn.Parameter(torch.empty(ck, channels))
            self.query_bias = nn.Parameter(torch.empty(ck))
            self.key = nn.Parameter(torch.empty(ck, channels))
            self.key_bias = nn.Parameter(torch.empty(ck))
            self.ssr_alpha = nn.Parameter(torch.full((num_entities,), 0.1))
        else:
            self.register_parameter("query", None)
            self.register_parameter("query_bias", None)
            self.register_parameter("key", None)
            self.register_parameter("key_bias", None)
            self.register_parameter("ssr_alpha", None)
        if affine:
            self.rn_weight = nn.Parameter(torch.ones(channels))
            self.rn_bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("rn_weight", None)
            self.register_parameter("rn_bias", None)
        self.sigma = nn.Parameter(torch.zeros(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default init of a 1x1 ``nn.Conv2d`` for every projection."""
        for wname, bname in (("entities", None), ("value", "value_bias"),
                             ("query", "query_bias"), ("key", "key_bias")):
            weight = getattr(self, wname)
            if weight is None:
                continue
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            if bname is not None:
                bound = 1.0 / math.sqrt(weight.shape[1])
                nn.init.uniform_(getattr(self, bname), -bound, bound)

    def extra_repr(self) -> str:
        return (f"{self.channels}, num_entities={self.num_entities}, temperature={self.temperature}, "
                f"self_sampling={self.self_sampling}, affine={self.affine}, "
                f"variance={self.variance!r}, eps={self.eps}")

    # ------------------------------------------------------------------ helpers
    def ssr_active(self) -> bool:
        return self.self_sampling and self.training

    def sample_positions(self, hw: int, device: torch.device) -> Tensor:
        """n positions in [0, hw), uniform with replacement (the authors' multinomial draw)."""
        return torch.randint(hw, (self.num_entities,), device=device)

    def orthogonality_loss(self) -> Tensor:
        """||K K^T - I||_F^2 of the entity filters K (n, c): >= 0, zero iff K's rows are orthonormal."""
        k = self.entities
        gram = k @ k.t()  # (n, n)
        eye = torch.eye(self.num_entities, device=k.device, dtype=k.dtype)
        return (gram - eye).pow(2).sum()

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"AttentiveNorm expects a 4-D (b, c, h, w) input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            raise ValueError(
                f"AttentiveNorm was built for {self.channels} channels but got an input with "
                f"{x.shape[1]} (shape {tuple(x.shape)})"
            )

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, return_layout: bool = False, positions: Tensor | None = None):
        """Args:
            x: (b, c, h, w) features.
            return_layout: also return the soft layout (b, n, h, w).
            positions: optional (n,) long tensor of flat positions for SSR; forces
                SSR on (also in eval) with these positions instead of random ones.
        """
        self._check_input(x)
        if positions is not None and not self.self_sampling:
            raise ValueError("positions were given but this layer has self_sampling=False")
        b, c, h, w = x.shape
        n = self.num_entities
        dt = _compute_dtype(x)
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        with torch.autocast(device_type=x.device.type, enabled=False):
            # (b, c, hw) maps: an NCHW input's pixels contiguous; a channels-last input with at least
            # PIXEL_MAJOR_MIN_CHANNELS channels kept in its own layout (pixel-major, see _map_mm), so
            # neither the input nor the output nor their gradients are copied to another layout (a
            # dtype cast, where there is one, keeps it); a narrower one copied to NCHW maps once, unless
            # the fused CPU kernels run the layer (they read and write either layout)
            pixel_major = channels_last and (c >= PIXEL_MAJOR_MIN_CHANNELS or cpu_fused.usable(
                x.device, dt, self.variance == "algorithm1", c))
            fmt = torch.channels_last if pixel_major else torch.contiguous_format
            x3 = x.to(dtype=dt, memory_format=fmt).view(b, c, h * w)
            cast = lambda t: None if t is None else t.to(dt)
            ssr = self.ssr_active() or positions is not None
            if ssr:
                if positions is None:
                    positions = self.sample_positions(h * w, x3.device)
                ssr_params = (self.key, self.key_bias, self.query, self.query_bias,
                              self.ssr_alpha.clamp(0.0, 1.0))
            else:
                positions = None
                ssr_params = (None,) * 5
            y, s = _AttentiveNormFn.apply(
                x3, cast(self.entities), cast(self.value), cast(self.value_bias),
                *(cast(t) for t in ssr_params), cast(self.rn_weight), cast(self.rn_bias),
                cast(self.sigma), positions, self.temperature, self.eps,
                self.variance == "algorithm1",
                torch.is_grad_enabled() and x3.device.type in KEEP_VC_SQUARED_ON)
        # back to the input's dtype and memory format in one pass
        y = y.view(b, c, h, w).to(dtype=x.dtype,
                                  memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        if return_layout:
            return y, s.view(b, n, h, w).to(x.dtype)
        return y


def orthogonality_loss(module: nn.Module) -> Tensor:
    """Sum of :meth:`AttentiveNorm.orthogonality_loss` over every AN layer in ``module`` (0 if none)."""
    losses = [m.orthogonality_loss() for m in module.modules() if isinstance(m, AttentiveNorm)]
    if not losses:
        p = next(module.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return torch.stack(losses).sum()
