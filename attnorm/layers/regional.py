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

so this module never holds a tensor with both the channel and the entity axis at
full resolution: memory is O(b c hw + b n hw + b c n). The literal form lives in
:mod:`attnorm.layers.reference` and the tests check the two agree.
"""

from __future__ import annotations

import torch
from torch import Tensor

VARIANCES = ("algorithm1", "weighted")


def _check_variance(variance: str) -> None:
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")


def regional_coefficients(
    v: Tensor,
    s: Tensor,
    beta: Tensor | None = None,
    alpha: Tensor | None = None,
    eps: float = 1e-5,
    variance: str = "algorithm1",
) -> tuple[Tensor, Tensor]:
    """Per-entity coefficients ``(P, Q)``, each (b, c, n), with RN = V * (P S) - Q S.

    ``v`` is (b, c, hw) and ``s`` is (b, n, hw), both in the compute dtype.
    """
    _check_variance(variance)
    hw = v.shape[-1]
    count = s.sum(-1) + eps  # (b, n)
    sv = torch.bmm(v, s.transpose(1, 2))  # (b, c, n): sum_p V S
    mean = sv / count.unsqueeze(1)  # (b, c, n)
    vv = v * v  # (b, c, hw)
    if variance == "algorithm1":
        # sum_p (V S - mu)^2 = sum V^2 S^2 - 2 mu sum V S + hw mu^2
        a = torch.bmm(vv, (s * s).transpose(1, 2))  # (b, c, n)
        sum_sq = a - 2.0 * mean * sv + hw * mean * mean
    else:
        # sum_p S (V - mu)^2 = sum S V^2 - 2 mu sum S V + mu^2 sum S
        a = torch.bmm(vv, s.transpose(1, 2))  # (b, c, n)
        sum_sq = a - 2.0 * mean * sv + mean * mean * (count - eps).unsqueeze(1)
    var = sum_sq / count.unsqueeze(1)
    # clamp: rounding can push an (analytically >= 0) variance below zero; the
    # tiny floor also keeps sqrt's gradient finite for constant inputs.
    std = var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
    inv = 1.0 / (std + eps)  # (b, c, n)
    if beta is not None:
        inv_b = inv * beta.to(inv.dtype).view(1, -1, 1)
    else:
        inv_b = inv
    p = inv_b
    q = mean * inv_b
    if alpha is not None:
        q = q - alpha.to(q.dtype).view(1, -1, 1)
    return p, q


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
        p, q = regional_coefficients(v3, s3, beta, alpha, eps, variance)  # (b, c, n) each
        ps = torch.bmm(p, s3)  # (b, c, hw)
        out = torch.addcmul(torch.bmm(q, s3).neg_(), v3, ps)  # V * (P S) - Q S
    return out.view(b, c, h, w).to(v.dtype)
