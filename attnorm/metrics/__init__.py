"""Image-generation and inpainting metrics (pure maths on features / image tensors)."""

from .image import l1, psnr, ssim
from .maths import (
    feature_statistics,
    frechet_distance,
    inception_score,
    intra_fid,
    kernel_inception_distance,
    precision_recall,
)

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "kernel_inception_distance",
    "inception_score",
    "precision_recall",
    "intra_fid",
    "psnr",
    "l1",
    "ssim",
]
