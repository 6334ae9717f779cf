"""Image-generation and inpainting metrics: pure maths on features / image tensors, feature
extractors (``get_extractor``), reference statistics and the procedural classifier."""

from .image import l1, psnr, ssim
from .maths import (
    feature_statistics,
    frechet_distance,
    inception_score,
    intra_fid,
    kernel_inception_distance,
    precision_recall,
)
from .extractors import (
    FeatureExtractor,
    LogitsUnavailableError,
    available_extractors,
    get_extractor,
    register_extractor,
)
from .reference_stats import data_source, reference_statistics

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
    "classifier_accuracy",
    "FeatureExtractor",
    "LogitsUnavailableError",
    "available_extractors",
    "get_extractor",
    "register_extractor",
    "data_source",
    "reference_statistics",
]


def __getattr__(name: str):
    # lazy, so that `python -m attnorm.metrics.classifier` does not find its module pre-imported
    if name == "classifier_accuracy":
        from .classifier import classifier_accuracy
        return classifier_accuracy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
