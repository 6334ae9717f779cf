"""SAGAN self-attention (Zhang et al., 2019), the baseline AN is measured against."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttention2d(nn.Module):
    """Self-attention block of SAGAN / BigGAN: ``y = x + gamma * o(attention)``.

    Args:
        channels: input/output channels ``c``.
        key_ratio: query and key have ``c // key_ratio`` channels (SAGAN: 8).
        value_ratio: value has ``c // value_ratio`` channels (SAGAN/BigGAN: 2).
        pool: 2x2 max-pool on key and value (SAGAN/BigGAN), quartering the keys.
        spectral_norm: wrap the four 1x1 convolutions in spectral normalisation.

    ``gamma`` starts at 0, so a fresh block is the identity. The attention matrix
    is formed explicitly, (b, hw, hw/4), as in the reference implementations: this
    is the quadratic cost AN avoids.
    """

    def __init__(self, channels: int, key_ratio: int = 8, value_ratio: int = 2,
                 pool: bool = True, spectral_norm: bool = False) -> None:
        super().__init__()
        if channels < key_ratio or channels < value_ratio:
            raise ValueError(
                f"SelfAttention2d needs channels >= {max(key_ratio, value_ratio)} for its "
                f"c/{key_ratio} query/key and c/{value_ratio} value, got {channels}")
        ck, cv = channels // key_ratio, channels // value_ratio
        sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        self.query = sn(nn.Conv2d(channels, ck, 1, bias=False))
        self.key = sn(nn.Conv2d(channels, ck, 1, bias=False))
        self.value = sn(nn.Conv2d(channels, cv, 1, bias=False))
        self.out = sn(nn.Conv2d(cv, channels, 1, bias=False))
        self.pool = pool
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"SelfAttention2d expects (b, c, h, w), got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        q = self.query(x).flatten(2)  # (b, ck, hw)
        k = self.key(x)
        v = self.value(x)
        if self.pool and h >= 2 and w >= 2:
            k = F.max_pool2d(k, 2, ceil_mode=True)
            v = F.max_pool2d(v, 2, ceil_mode=True)
        k = k.flatten(2)  # (b, ck, hw')
        v = v.flatten(2)  # (b, cv, hw')
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k), dim=-1)  # (b, hw, hw')
        o = torch.bmm(v, attn.transpose(1, 2)).view(b, -1, h, w)  # (b, cv, h, w)
        return x + self.gamma * self.out(o)
