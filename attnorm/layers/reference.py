"""Literal, readable references of Algorithm 1 and of the whole AN layer.

These follow the supplement step by step (TensorFlow layout, 5-D tensors) and
use ordinary convolutions. They are slow and memory-hungry on purpose: the tests
compare the fast path of :mod:`attnorm.layers.regional` and
:class:`attnorm.layers.AttentiveNorm` against them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .regional import _check_variance


def regional_norm_literal(
    v: Tensor,
    layout: Tensor,
    beta: Tensor | None = None,
    alpha: Tensor | None = None,
    eps: float = 1e-5,
    variance: str = "algorithm1",
) -> Tensor:
    """Algorithm 1, line by line. ``v`` (b, c, h, w), ``layout`` (b, n, h, w) -> (b, c, h, w)."""
    _check_variance(variance)
    c = v.shape[1]
    x = v.permute(0, 2, 3, 1)  # b, h, w, c
    s = layout.permute(0, 2, 3, 1)  # b, h, w, n
    beta = torch.ones(c, dtype=v.dtype, device=v.device) if beta is None else beta.to(v.dtype)
    alpha = torch.zeros(c, dtype=v.dtype, device=v.device) if alpha is None else alpha.to(v.dtype)
    beta = beta.view(1, 1, 1, c, 1)
    alpha = alpha.view(1, 1, 1, c, 1)

    s = s.unsqueeze(-2)  # 1: b, h, w, 1, n
    count = s.sum(dim=(1, 2), keepdim=True) + eps  # 2: b, 1, 1, 1, n
    x = x.unsqueeze(-1)  # 3: b, h, w, c, 1
    x_act = x * s  # 4: b, h, w, c, n
    mean = x_act.sum(dim=(1, 2), keepdim=True) / count  # 5: b, 1, 1, c, n
    if variance == "algorithm1":  # 6, literally
        var = ((x_act - mean) ** 2).sum(dim=(1, 2), keepdim=True) / count
    else:  # the usual soft-weighted variance
        var = (s * (x - mean) ** 2).sum(dim=(1, 2), keepdim=True) / count
    std = torch.sqrt(var)
    x = (x - mean) / (std + eps) * beta + alpha  # 7: b, h, w, c, n
    out = (x * s).sum(dim=-1)  # 8: b, h, w, c
    return out.permute(0, 3, 1, 2)


def attentive_norm_literal(layer, x: Tensor, positions: Tensor | None = None):
    """The AN layer computed from ``layer``'s parameters with plain convolutions.

    ``positions`` (n,) are the SSR positions (flat indices into h*w); None means
    SSR off, as in eval mode. Returns ``(y, layout)``.
    """
    b, c, h, w = x.shape
    n = layer.num_entities
    conv = lambda t, wgt, bias=None: F.conv2d(t, wgt[:, :, None, None], bias)  # 1x1 conv
    s_raw = conv(x, layer.entities)  # b, n, h, w
    if positions is not None:
        query = conv(x, layer.query, layer.query_bias)  # b, c/8, h, w
        key = conv(x, layer.key, layer.key_bias)  # b, c/8, h, w
        key_sampled = key.flatten(2)[:, :, positions]  # b, c/8, n
        s_ss = torch.einsum("bkhw,bkn->bnhw", query, key_sampled)  # b, n, h, w
        alpha = layer.ssr_alpha.clamp(0, 1).view(1, n, 1, 1)
        raw = alpha * s_ss + s_raw
    else:
        raw = s_raw
    layout = torch.softmax(raw / layer.temperature, dim=1)  # b, n, h, w
    value = conv(x, layer.value, layer.value_bias)  # b, c, h, w
    rn = regional_norm_literal(value, layout, layer.rn_weight, layer.rn_bias, layer.eps, layer.variance)
    return x + layer.sigma * rn, layout
