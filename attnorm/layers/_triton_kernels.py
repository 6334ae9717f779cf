"""Triton kernels of :mod:`attnorm.layers.triton_stats` and :mod:`attnorm.layers.triton_sums`
(imported only when Triton is used)."""

import triton
import triton.language as tl


@triton.jit
def _stats(u, r, a, k, T, S2, beta, alpha, eps, hw, tiny,
           ALG1: tl.constexpr, HAS_BETA: tl.constexpr, HAS_ALPHA: tl.constexpr):
    """The forward's intermediates for one (c, n) tile (all (BC, BN) or broadcastable)."""
    count = T + eps
    sv = u + k * T
    mean_c = (u - k * eps) / count
    if ALG1:
        t_r = r - T * u / hw
        t_s = S2 - T * T / hw
        spread = (a - u * u / hw) + 2.0 * k * t_r + k * k * t_s
        d = (count - hw) / (count * hw)
        offset = sv * d
        sum_sq = tl.maximum(spread, 0.0) + hw * offset * offset
        ts = T  # unused in this branch
    else:
        t_r = u
        t_s = T
        ts = tl.maximum(T, tiny)
        spread = a - u * u / ts
        offset = (sv / ts) * (eps / count)
        sum_sq = tl.maximum(spread, 0.0) + T * offset * offset
        d = T
    var = sum_sq / count
    std = tl.sqrt(tl.maximum(var, tiny))
    inv = 1.0 / (std + eps)
    if HAS_BETA:
        ib = inv * beta
    else:
        ib = inv
    qu = mean_c * ib
    if HAS_ALPHA:
        qu = qu - alpha
    return count, sv, mean_c, t_r, t_s, ts, spread, d, offset, var, std, inv, ib, qu


@triton.jit
def _load_tile(u_ptr, r_ptr, a_ptr, k_ptr, t_ptr, s2_ptr, beta_ptr, alpha_ptr, pid,
               su0, su1, su2, sr0, sr1, sr2, sa0, sa1, sa2, sk0, sk1, st0, st2, ss20, ss22, C, N,
               ALG1: tl.constexpr, HAS_BETA: tl.constexpr, HAS_ALPHA: tl.constexpr,
               BC: tl.constexpr, BN: tl.constexpr):
    """Sample ``pid``'s (c, n) tile (padded to (BC, BN)) of every input, with its offsets and mask."""
    offs_c = tl.arange(0, BC)[:, None]
    offs_n = tl.arange(0, BN)[None, :]
    cmask = offs_c < C
    nmask = offs_n < N
    mask = cmask & nmask
    u = tl.load(u_ptr + pid * su0 + offs_c * su1 + offs_n * su2, mask=mask, other=0.0)
    a = tl.load(a_ptr + pid * sa0 + offs_c * sa1 + offs_n * sa2, mask=mask, other=0.0)
    k = tl.load(k_ptr + pid * sk0 + offs_c * sk1, mask=cmask, other=0.0)
    T = tl.load(t_ptr + pid * st0 + offs_n * st2, mask=nmask, other=0.0)
    if ALG1:
        r = tl.load(r_ptr + pid * sr0 + offs_c * sr1 + offs_n * sr2, mask=mask, other=0.0)
        S2 = tl.load(s2_ptr + pid * ss20 + offs_n * ss22, mask=nmask, other=0.0)
    else:
        r = u
        S2 = T
    if HAS_BETA:
        beta = tl.load(beta_ptr + offs_c, mask=cmask, other=0.0)
    else:
        beta = k
    if HAS_ALPHA:
        alpha = tl.load(alpha_ptr + offs_c, mask=cmask, other=0.0)
    else:
        alpha = k
    return offs_c, offs_n, mask, u, r, a, k, T, S2, beta, alpha


@triton.jit
def _tile_statistics(u_ptr, r_ptr, a_ptr, k_ptr, t_ptr, s2_ptr, beta_ptr, alpha_ptr,
                     su0, su1, su2, sr0, sr1, sr2, sa0, sa1, sa2, sk0, sk1, st0, st2, ss20, ss22,
                     C, N, eps, hw, tiny,
                     ALG1: tl.constexpr, HAS_BETA: tl.constexpr, HAS_ALPHA: tl.constexpr,
                     BC: tl.constexpr, BN: tl.constexpr):
    """This program's sample: its tile of the inputs (:func:`_load_tile`) and the forward's
    intermediates (:func:`_stats`), the prologue of both kernels."""
    pid = tl.program_id(0)
    offs_c, offs_n, mask, u, r, a, k, T, S2, beta, alpha = _load_tile(
        u_ptr, r_ptr, a_ptr, k_ptr, t_ptr, s2_ptr, beta_ptr, alpha_ptr, pid,
        su0, su1, su2, sr0, sr1, sr2, sa0, sa1, sa2, sk0, sk1, st0, st2, ss20, ss22, C, N,
        ALG1, HAS_BETA, HAS_ALPHA, BC, BN)
    stats = _stats(u, r, a, k, T, S2, beta, alpha, eps, hw, tiny, ALG1, HAS_BETA, HAS_ALPHA)
    return pid, offs_c, offs_n, mask, u, k, T, beta, stats


@triton.jit
def forward_kernel(u_ptr, r_ptr, a_ptr, k_ptr, t_ptr, s2_ptr, beta_ptr, alpha_ptr, scale_ptr,
                   p_ptr, q_ptr,
                   su0, su1, su2, sr0, sr1, sr2, sa0, sa1, sa2, sk0, sk1, st0, st2, ss20, ss22,
                   C, N, eps, hw, tiny,
                   ALG1: tl.constexpr, HAS_BETA: tl.constexpr, HAS_ALPHA: tl.constexpr,
                   HAS_SCALE: tl.constexpr, BC: tl.constexpr, BN: tl.constexpr):
    pid, offs_c, offs_n, mask, u, k, T, beta, stats = _tile_statistics(
        u_ptr, r_ptr, a_ptr, k_ptr, t_ptr, s2_ptr, beta_ptr, alpha_ptr,
        su0, su1, su2, sr0, sr1, sr2, sa0, sa1, sa2, sk0, sk1, st0, st2, ss20, ss22,
        C, N, eps, hw, tiny, ALG1, HAS_BETA, HAS_ALPHA, BC, BN)
    (count, sv, mean_c, t_r, t_s, ts, spread, d, offset, var, std, inv, ib, qu) = stats
    p = ib
    q = qu
    if HAS_SCALE:
        s = tl.load(scale_ptr)
        p = p * s
        q = q * s
    out = pid * C * N + offs_c * N + offs_n
    tl.store(p_ptr + out, p, mask=mask)
    tl.store(q_ptr + out, q, mask=mask)


@triton.jit
def backward_kernel(u_ptr, r_ptr, a_ptr, k_ptr, t_ptr, s2_ptr, beta_ptr, alpha_ptr, scale_ptr,
                    gp_ptr, gq_ptr,
                    gu_ptr, gr_ptr, ga_ptr, gk_ptr, gt_ptr, gs2_ptr, gbeta_ptr, galpha_ptr, gscale_ptr,
                    su0, su1, su2, sr0, sr1, sr2, sa0, sa1, sa2, sk0, sk1, st0, st2, ss20, ss22,
                    sgp0, sgp1, sgp2, sgq0, sgq1, sgq2,
                    C, N, eps, hw, tiny,
                    ALG1: tl.constexpr, HAS_BETA: tl.constexpr, HAS_ALPHA: tl.constexpr,
                    HAS_SCALE: tl.constexpr, BC: tl.constexpr, BN: tl.constexpr):
    pid, offs_c, offs_n, mask, u, k, T, beta, stats = _tile_statistics(
        u_ptr, r_ptr, a_ptr, k_ptr, t_ptr, s2_ptr, beta_ptr, alpha_ptr,
        su0, su1, su2, sr0, sr1, sr2, sa0, sa1, sa2, sk0, sk1, st0, st2, ss20, ss22,
        C, N, eps, hw, tiny, ALG1, HAS_BETA, HAS_ALPHA, BC, BN)
    (count, sv, mean_c, t_r, t_s, ts, spread, d, offset, var, std, inv, ib, qu) = stats
    gp = tl.load(gp_ptr + pid * sgp0 + offs_c * sgp1 + offs_n * sgp2, mask=mask, other=0.0)
    gq = tl.load(gq_ptr + pid * sgq0 + offs_c * sgq1 + offs_n * sgq2, mask=mask, other=0.0)
    if HAS_SCALE:
        s = tl.load(scale_ptr)
        g_scale = tl.sum(tl.sum(tl.where(mask, gp * ib + gq * qu, 0.0), axis=1), axis=0)
        tl.store(gscale_ptr + pid, g_scale)
        gp = gp * s
        gq = gq * s
    g_alpha = -tl.sum(tl.where(mask, gq, 0.0), axis=1)  # (BC,)
    g_ib = gp + gq * mean_c
    g_beta = tl.sum(tl.where(mask, g_ib * inv, 0.0), axis=1)
    if HAS_BETA:
        g_inv = g_ib * beta
    else:
        g_inv = g_ib
    g_var = tl.where(var > tiny, g_inv * inv * inv / std * -0.5, 0.0)
    g_sum_sq = g_var / count
    g_spread = tl.where(spread > 0.0, g_sum_sq, 0.0)
    g_u = gq * ib / count
    g_count_neg = g_sum_sq * var + g_u * mean_c
    g_k_terms = g_u * (-eps)
    if ALG1:
        g_off = g_sum_sq * offset * (2.0 * hw)
        g_count_neg = g_count_neg - g_off * sv / (count * count)
        g_sv = g_off * d
        g_u = g_u - (2.0 / hw) * g_spread * sv
        g_r = g_spread * k * 2.0
        g_k_terms = g_k_terms + 2.0 * g_spread * (t_r + k * t_s)
        g_total_terms = g_sv * k - g_r * sv / hw
        g_s2 = 0.5 * tl.sum(tl.where(mask, g_r * k, 0.0), axis=0)  # (BN,)
        g_ts = g_s2 * 0.0
    else:
        g_off = g_sum_sq * offset * 2.0 * T
        g_u = g_u - 2.0 * g_spread * u / ts
        g_ts = tl.sum(tl.where(mask, g_spread * u * u / ts - g_off * offset, 0.0), axis=0)
        g_ts = tl.where(tl.reshape(T, (BN,)) > tiny, g_ts / tl.reshape(ts, (BN,)), 0.0)
        g_count_neg = g_count_neg + g_off * offset / count
        g_sv = g_off * (eps / (ts * count))
        g_total_terms = g_sum_sq * offset * offset + g_sv * k
        g_r = g_u * 0.0
        g_s2 = g_ts * 0.0
    g_u = g_u + g_sv
    g_k = tl.sum(tl.where(mask, g_k_terms + g_sv * T, 0.0), axis=1)  # (BC,)
    g_total = tl.sum(tl.where(mask, g_total_terms - g_count_neg, 0.0), axis=0) + g_ts  # (BN,)
    out = pid * C * N + offs_c * N + offs_n
    tl.store(gu_ptr + out, g_u, mask=mask)
    tl.store(ga_ptr + out, g_spread, mask=mask)
    c1 = tl.arange(0, BC)
    n1 = tl.arange(0, BN)
    tl.store(gk_ptr + pid * C + c1, g_k, mask=c1 < C)
    tl.store(gt_ptr + pid * N + n1, g_total, mask=n1 < N)
    tl.store(galpha_ptr + pid * C + c1, g_alpha, mask=c1 < C)
    tl.store(gbeta_ptr + pid * C + c1, g_beta, mask=c1 < C)
    if ALG1:
        tl.store(gr_ptr + out, g_r, mask=mask)
        tl.store(gs2_ptr + pid * N + n1, g_s2, mask=n1 < N)


@triton.jit
def pixel_sum_kernel(a_ptr, b_ptr, out_ptr, M, N, K, chunk,
                     s_ab, s_am, s_ak, s_bb, s_bn, s_bk, s_ob, s_os, s_om,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """One (BM, BN) tile of ``a[b] @ b[b]^T`` over the pixels ``[split * chunk, (split + 1) * chunk)``,
    written to ``out[b, split]`` (the splits are summed afterwards: split-K over the map). ``PREC``: 0
    float32 FMA ("ieee"), 1 three TF32 tensor-core products ("tf32x3", float32 accuracy), 2 TF32."""
    pid_mn = tl.program_id(0)
    split = tl.program_id(1)
    batch = tl.program_id(2).to(tl.int64)
    num_n = tl.cdiv(N, BN)
    rm = (pid_mn // num_n) * BM + tl.arange(0, BM)
    rn = (pid_mn % num_n) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    k_start = split * chunk
    k_end = tl.minimum(k_start + chunk, K)
    a_rows = a_ptr + batch * s_ab + rm[:, None] * s_am
    b_rows = b_ptr + batch * s_bb + rn[:, None] * s_bn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in tl.range(0, chunk, BK):
        kk = k_start + k + rk
        a = tl.load(a_rows + kk[None, :] * s_ak, mask=(rm[:, None] < M) & (kk[None, :] < k_end), other=0.0)
        b = tl.load(b_rows + kk[None, :] * s_bk, mask=(rn[:, None] < N) & (kk[None, :] < k_end), other=0.0)
        if PREC == 2:
            acc += tl.dot(a, tl.trans(b), input_precision="tf32")
        elif PREC == 1:
            acc += tl.dot(a, tl.trans(b), input_precision="tf32x3")
        else:
            acc += tl.dot(a, tl.trans(b), input_precision="ieee")
    out = out_ptr + batch * s_ob + split * s_os + rm[:, None] * s_om + rn[None, :]
    tl.store(out, acc, mask=(rm[:, None] < M) & (rn[None, :] < N))
