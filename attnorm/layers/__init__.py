"""Layers: Attentive Normalization (fast + literal reference), self-attention, norms."""

from .attention import SelfAttention2d
from .attentive import AttentiveNorm, orthogonality_loss, small_products_as_sums, small_products_as_sums_enabled
from .cpu_fused import cpu_kernels, cpu_kernels_enabled
from .norms import ConditionalBatchNorm2d, create_norm, norm_kinds, register_norm
from .reference import attentive_norm_literal, regional_norm_literal
from .regional import (compile_statistics, compiled_statistics, regional_norm, statistics_compiled, triton_pixel_sums,
                       triton_pixel_sums_enabled, triton_statistics, triton_statistics_enabled)

__all__ = [
    "AttentiveNorm", "ConditionalBatchNorm2d", "SelfAttention2d", "attentive_norm_literal",
    "compile_statistics", "compiled_statistics", "cpu_kernels", "cpu_kernels_enabled", "create_norm", "norm_kinds", "orthogonality_loss", "register_norm", "regional_norm",
    "regional_norm_literal", "small_products_as_sums", "small_products_as_sums_enabled", "statistics_compiled", "triton_pixel_sums", "triton_pixel_sums_enabled",
    "triton_statistics", "triton_statistics_enabled",
]
