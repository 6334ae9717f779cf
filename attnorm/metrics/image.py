"""Per-image reconstruction metrics for inpainting.

All functions take two tensors of shape (b, c, h, w) with values in
``[0, data_range]`` and return a tensor of shape (b,), one value per image.
Computation is done in float64; the result is cast back to the inputs' floating
dtype (at least float32). SSIM is scikit-image's.
"""

from __future__ import annotations

import math

import torch

__all__ = ["psnr", "l1", "ssim"]


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise ValueError(
            f"expected two torch tensors; got {type(a).__name__} and {type(b).__name__}. "
            "Convert with torch.as_tensor first."
        )
    if a.dim() != 4:
        raise ValueError(f"expected images of shape (b, c, h, w); got shape {tuple(a.shape)}. Add missing dims.")
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}; pass aligned image pairs")
    if a.numel() == 0:
        raise ValueError(f"empty images of shape {tuple(a.shape)}")
    out = torch.promote_types(a.dtype, b.dtype)
    if not out.is_floating_point:
        out = torch.float32
    return torch.promote_types(out, torch.float32)


def _check_range(data_range: float) -> float:
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a positive finite number (e.g. 1.0 or 255); got {data_range!r}")
    return float(data_range)


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image: ``mean_{c,h,w} |a - b|``."""
    out = _check_pair(a, b)
    return (a.double() - b.double()).abs().flatten(1).mean(1).to(out)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB.

    ``PSNR = 10 * log10(data_range^2 / MSE)`` with ``MSE = mean_{c,h,w} (a - b)^2``;
    identical images give ``+inf``.
    """
    out = _check_pair(a, b)
    r = _check_range(data_range)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return (10.0 * torch.log10(r * r / mse)).to(out)


def ssim(
    a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, win_size: int = 7
) -> torch.Tensor:
    """Mean structural similarity per image: ``skimage.metrics.structural_similarity(x, y,
    data_range=data_range, win_size=win_size, channel_axis=0)`` on each (c, h, w) pair.

    scikit-image's defaults: uniform ``win_size x win_size`` window, ``K1 = 0.01``,
    ``K2 = 0.03``, ``C1 = (K1 R)^2``, ``C2 = (K2 R)^2``, sample (co)variances scaled by
    ``N / (N - 1)`` with ``N = win_size^2``::

        S = (2 mu_a mu_b + C1)(2 cov_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))

    The SSIM map is averaged over the valid region only (windows fully inside
    the image, i.e. a ``(win_size - 1) // 2`` border is cropped), then over
    channels.
    """
    from skimage.metrics import structural_similarity
    out = _check_pair(a, b)
    r = _check_range(data_range)
    if not isinstance(win_size, int) or win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd integer >= 3; got {win_size!r}")
    h, w = a.shape[-2:]
    if h < win_size or w < win_size:
        raise ValueError(
            f"images of size {h}x{w} are smaller than win_size={win_size}; use larger images or a smaller odd win_size"
        )
    x = a.detach().double().cpu().numpy()
    y = b.detach().double().cpu().numpy()
    vals = [structural_similarity(x[i], y[i], data_range=r, win_size=win_size, channel_axis=0)
            for i in range(x.shape[0])]
    return torch.tensor(vals, dtype=out, device=a.device)
