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
The literal, unfused computation lives in :mod:`attnorm.layers.reference`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .regional import _check_variance, _compute_dtype, combine, regional_coefficients


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

    def _layout_and_value(self, x3: Tensor, positions: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Layout logits (b, n, hw), centred values Vc (b, c, hw) and their shift (b, c).

        One batched matmul: ``[E_b; W_v] X + [e_b; -W_v mean_p(X)]``, so the value
        features come out already centred by their spatial mean ``W_v mean_p(X) + b_v``.
        """
        b, c, hw = x3.shape
        n = self.num_entities
        dt = x3.dtype
        entities = self.entities.to(dt)
        value = self.value.to(dt)
        value_bias = self.value_bias.to(dt)
        if self.ssr_active() or positions is not None:
            if positions is None:
                positions = self.sample_positions(hw, x3.device)
            a = self.ssr_alpha.clamp(0.0, 1.0).to(dt)  # (n,)
            xs = x3[:, :, positions]  # (b, c, n): features at the sampled positions
            keys = torch.baddbmm(self.key_bias.to(dt).view(1, -1, 1),
                                 self.key.to(dt).expand(b, -1, -1), xs)  # (b, c/8, n)
            keys_t = keys.transpose(1, 2)  # (b, n, c/8)
            # S_ss = (W_q X + b_q)^T keys = (keys^T W_q) X + keys^T b_q
            ent = torch.addcmul(entities, a.view(1, n, 1), keys_t @ self.query.to(dt))  # (b, n, c)
            ent_bias = a.view(1, n) * (keys_t @ self.query_bias.to(dt))  # (b, n)
        else:
            ent = entities.expand(b, n, c)  # (b, n, c)
            ent_bias = torch.zeros(1, n, device=x3.device, dtype=dt).expand(b, n)
        value_of_mean = x3.mean(-1) @ value.t()  # (b, c): W_v mean_p(X)
        weight = torch.cat([ent, value.expand(b, c, c)], dim=1)  # (b, n + c, c)
        bias = torch.cat([ent_bias, -value_of_mean], dim=1)  # (b, n + c)
        out = torch.baddbmm(bias.unsqueeze(-1), weight, x3)  # (b, n + c, hw)
        logits, vc = torch.split(out, [n, c], dim=1)  # one SplitBackward, not two zero-filled slices
        return logits, vc, value_of_mean + value_bias

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
            x3 = x.reshape(b, c, h * w).to(dt)  # (b, c, hw)
            logits, vc, shift = self._layout_and_value(x3, positions)  # (b,n,hw) (b,c,hw) (b,c)
            s = torch.softmax(logits / self.temperature, dim=1)  # (b, n, hw)
            # Y = X + sigma * (Vc * (P S) - Q S), sigma folded into P and Q
            p, q = regional_coefficients(vc, s, shift, self.rn_weight, self.rn_bias, self.eps,
                                         self.variance, scale=self.sigma)  # (b, c, n) each
            y = combine(x3, vc, s, p, q)  # (b, c, hw)
        y = y.view(b, c, h, w).to(x.dtype)
        if channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
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
