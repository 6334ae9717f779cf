"""Normalisation layers by name: ``create_norm("an" | "sa" | "bn" | "in" | "cbn" | "none", c)``."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .attention import SelfAttention2d
from .attentive import AttentiveNorm


class ConditionalBatchNorm2d(nn.Module):
    """Class-conditional batch norm: BN without affine, then per-class gain and bias.

    Args:
        num_features: channels ``c``.
        num_classes: number of classes; gains start at 1 and biases at 0.
        eps, momentum: as in ``nn.BatchNorm2d``.
        latent_dim: > 0 adds BigGAN's hierarchical-latent path: a linear map (no bias, zero
            initialised, so it starts as the class-only norm) of a latent chunk ``z`` (b, latent_dim)
            added to the gain and to the bias.

    ``forward(x, y, z=None)``: ``y`` is a (b,) long tensor of labels, or a (b, num_classes)
    float tensor of class weights (one-hot or a mixture, for class interpolation).
    """

    def __init__(self, num_features: int, num_classes: int, eps: float = 1e-5,
                 momentum: float = 0.1, latent_dim: int = 0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if latent_dim < 0:
            raise ValueError(f"latent_dim must be >= 0, got {latent_dim}")
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)
        self.latent = nn.Linear(latent_dim, 2 * num_features, bias=False) if latent_dim else None
        if self.latent is not None:
            nn.init.zeros_(self.latent.weight)

    def class_params(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Gain and bias (b, c) for labels or class-weight vectors ``y``."""
        if y.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
            if y.dim() != 1:
                raise ValueError(f"labels must be a (b,) tensor, got shape {tuple(y.shape)}")
            # one host sync for both bounds; a compiled graph leaves the range to its caller (a
            # sync there would split the graph at every conditional BN)
            if y.numel() and not torch.compiler.is_compiling():
                lo, hi = torch.stack(torch.aminmax(y)).tolist()
                if lo < 0 or hi >= self.num_classes:
                    raise ValueError(f"labels must lie in [0, {self.num_classes}), got {y.tolist()}")
            return self.gain(y), self.bias(y)
        if y.dim() != 2 or y.shape[1] != self.num_classes:
            raise ValueError(
                f"class weights must be (b, {self.num_classes}), got shape {tuple(y.shape)}")
        y = y.to(self.gain.weight.dtype)
        return y @ self.gain.weight, y @ self.bias.weight

    def forward(self, x: Tensor, y: Tensor, z: Tensor | None = None) -> Tensor:
        gain, bias = self.class_params(y)
        if self.latent is not None:
            if z is None:
                raise ValueError("this conditional batch norm has a latent path: pass its latent chunk z")
            dg, db = self.latent(z.to(self.latent.weight.dtype)).chunk(2, dim=1)  # (b, c) each
            gain, bias = gain + dg, bias + db
        out = self.bn(x)
        return out * gain[:, :, None, None].to(out.dtype) + bias[:, :, None, None].to(out.dtype)


_NORMS: dict[str, Callable[..., nn.Module]] = {}


def register_norm(name: str):
    """Decorator/registrar: ``register_norm("mine")(factory)`` makes ``create_norm("mine", c)`` work."""
    def deco(factory: Callable[..., nn.Module]):
        _NORMS[name] = factory
        return factory
    return deco


register_norm("an")(AttentiveNorm)
register_norm("sa")(SelfAttention2d)
register_norm("bn")(nn.BatchNorm2d)
register_norm("in")(lambda c, affine=True, **kw: nn.InstanceNorm2d(c, affine=affine, **kw))
register_norm("cbn")(ConditionalBatchNorm2d)
register_norm("none")(lambda c, **kw: nn.Identity())


def norm_kinds() -> list[str]:
    return sorted(_NORMS)


def create_norm(kind: str, channels: int, **kwargs) -> nn.Module:
    """Build a normalisation / attention layer by name.

    ``kind``: ``"an"`` (:class:`AttentiveNorm`), ``"sa"`` (:class:`SelfAttention2d`),
    ``"bn"``, ``"in"`` (affine instance norm), ``"cbn"``
    (:class:`ConditionalBatchNorm2d`, needs ``num_classes``), ``"none"`` (identity).
    Extra keyword arguments go to the layer's constructor.
    """
    key = (kind or "none").lower()
    if key not in _NORMS:
        raise ValueError(f"unknown norm kind {kind!r}; choose one of {norm_kinds()}")
    return _NORMS[key](channels, **kwargs)
