"""Layers: Attentive Normalization (fast + literal reference), self-attention, norms."""

from .attention import SelfAttention2d
from .attentive import AttentiveNorm, orthogonality_loss
from .norms import ConditionalBatchNorm2d, create_norm, norm_kinds, register_norm
from .reference import attentive_norm_literal, regional_norm_literal
from .regional import regional_norm

__all__ = [
    "AttentiveNorm", "ConditionalBatchNorm2d", "SelfAttention2d", "attentive_norm_literal",
    "create_norm", "norm_kinds", "orthogonality_loss", "register_norm", "regional_norm",
    "regional_norm_literal",
]
