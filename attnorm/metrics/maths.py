"""Pure maths of feature-based image-generation metrics.

Everything here works on already-extracted features (e.g. Inception pool
features or logits); no network is involved. Inputs may be numpy arrays or
torch tensors and are converted to float64 numpy arrays. Rows are samples,
columns are feature dimensions.

Implemented metrics:

* :func:`frechet_distance` / :func:`feature_statistics` -- FID (Heusel et al. 2017)
* :func:`kernel_inception_distance` -- KID (Binkowski et al. 2018)
* :func:`inception_score` -- IS (Salimans et al. 2016)
* :func:`precision_recall` -- improved precision/recall (Kynkaanniemi et al. 2019)
* :func:`intra_fid` -- class-conditional FID (Miyato & Koyama 2018)
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, Mapping, Tuple

import numpy as np

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "kernel_inception_distance",
    "inception_score",
    "precision_recall",
    "intra_fid",
]


# ---------------------------------------------------------------------------
# input handling
# ---------------------------------------------------------------------------


def _as_float64(x: Any, name: str) -> np.ndarray:
    """Convert a numpy array / torch tensor / array-like to a float64 ndarray."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            x = x.detach().to("cpu", torch.float64).numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be a numeric numpy array or torch tensor; got {type(x).__name__}"
        ) from exc
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or Inf values; clean the input before computing metrics")
    return arr


def _features(x: Any, name: str, min_rows: int = 1) -> np.ndarray:
    """Validate a 2-D (num_samples, dim) feature matrix."""
    arr = _as_float64(x, name)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (num_samples, feature_dim); got shape {arr.shape}. "
            "Flatten or reshape features to one row per sample."
        )
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has feature_dim 0; provide at least one feature column")
    if arr.shape[0] < min_rows:
        raise ValueError(
            f"{name} has {arr.shape[0]} samples but at least {min_rows} are required; provide more samples"
        )
    return arr


def _same_dim(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feature dimension mismatch: {name_a} has dim {a.shape[1]} but {name_b} has dim "
            f"{b.shape[1]}; extract both with the same feature network/layer"
        )


# ---------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------


def feature_statistics(feats: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of features.

    Args:
        feats: (n, d) array, rows are samples, n >= 2.

    Returns:
        ``(mu, sigma)``: float64 arrays of shape (d,) and (d, d), where
        ``sigma = (X - mu)^T (X - mu) / (n - 1)``.
    """
    x = _features(feats, "feats", min_rows=2)
    mu = x.mean(axis=0)
    xc = x - mu
    sigma = xc.T @ xc / (x.shape[0] - 1)
    sigma = 0.5 * (sigma + sigma.T)  # exact symmetry
    return mu, sigma


def _psd_sqrt(sigma: np.ndarray, tol: float, name: str) -> np.ndarray:
    """Symmetric PSD square root via eigh; eigenvalues >= -tol*scale are clipped to 0."""
    w, v = np.linalg.eigh(sigma)
    scale = max(float(np.abs(w).max()), np.finfo(np.float64).tiny)
    if w.min() < -tol * scale:
        raise ValueError(
            f"{name} is not positive semi-definite (smallest eigenvalue {w.min():.3e}, "
            f"largest magnitude {scale:.3e}); pass a covariance matrix, e.g. from feature_statistics"
        )
    w = _zero_roundoff(w)
    return (v * np.sqrt(w)) @ v.T


def _zero_roundoff(w: np.ndarray) -> np.ndarray:
    """Set eigenvalues at float64 round-off level (<= d * machine_eps * max) to 0.

    Their true value is indistinguishable from 0, yet ``sqrt`` would amplify the
    noise (1e-16 -> 1e-8 per direction), biasing rank-deficient cases.
    """
    thresh = w.shape[0] * np.finfo(np.float64).eps * max(float(w.max()), 0.0)
    return np.where(w > thresh, w, 0.0)


def _check_cov(sigma: Any, d: int, name: str, tol: float) -> np.ndarray:
    s = _as_float64(sigma, name)
    if s.ndim != 2 or s.shape != (d, d):
        raise ValueError(
            f"{name} must be a square (d, d) covariance matching the mean's dim d={d}; got shape {s.shape}"
        )
    scale = max(float(np.abs(s).max()), np.finfo(np.float64).tiny)
    if np.abs(s - s.T).max() > tol * scale:
        raise ValueError(f"{name} is not symmetric; pass a covariance matrix, e.g. from feature_statistics")
    return 0.5 * (s + s.T)


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6) -> float:
    """Frechet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``FD = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^{1/2})``

    The trace of the matrix square root is computed without a general
    (non-symmetric) ``sqrtm``: ``S1 S2`` is similar to the symmetric PSD matrix
    ``M = S1^{1/2} S2 S1^{1/2}``, so ``Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(M))``.
    Both ``S1^{1/2}`` and the eigenvalues of ``M`` come from ``eigh`` in float64,
    with round-off-level eigenvalues (negative or ``<= d * machine_eps * max``)
    set to zero. This is exact for singular
    covariances (e.g. fewer samples than dimensions), where ``sqrtm`` is
    ill-conditioned.

    Args:
        mu1, mu2: (d,) means.
        sigma1, sigma2: (d, d) symmetric PSD covariances.
        eps: relative tolerance (w.r.t. the largest eigenvalue/entry) for the
            symmetry and PSD checks; eigenvalues in ``[-eps*scale, 0)`` are
            treated as round-off and clipped to 0.

    Returns:
        The distance as a non-negative Python float.
    """
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0; got {eps}")
    m1 = _as_float64(mu1, "mu1")
    m2 = _as_float64(mu2, "mu2")
    if m1.ndim != 1 or m2.ndim != 1:
        raise ValueError(f"mu1 and mu2 must be 1-D mean vectors; got shapes {m1.shape} and {m2.shape}")
    if m1.shape != m2.shape:
        raise ValueError(
            f"mean dimension mismatch: mu1 has dim {m1.shape[0]} but mu2 has dim {m2.shape[0]}; "
            "compute both statistics from the same feature layer"
        )
    d = m1.shape[0]
    s1 = _check_cov(sigma1, d, "sigma1", eps)
    s2 = _check_cov(sigma2, d, "sigma2", eps)

    sqrt_s1 = _psd_sqrt(s1, eps, "sigma1")
    _psd_sqrt(s2, eps, "sigma2")  # validation only
    m = sqrt_s1 @ s2 @ sqrt_s1
    m = 0.5 * (m + m.T)
    lam = _zero_roundoff(np.linalg.eigvalsh(m))
    tr_covmean = float(np.sqrt(lam).sum())

    diff = m1 - m2
    fd = float(diff @ diff) + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * tr_covmean
    return max(fd, 0.0)


# ---------------------------------------------------------------------------
# KID
# ---------------------------------------------------------------------------


def _poly_kernel(a: np.ndarray, b: np.ndarray, degree: int, gamma: float, coef0: float) -> np.ndarray:
    return (gamma * (a @ b.T) + coef0) ** degree


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> float:
    """Unbiased MMD^2 for equal-size samples x, y (m rows each).

    ``sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(m(m-1)) - 2 mean_{i,j} k(x_i,y_j)``
    """
    m = x.shape[0]
    kxx = _poly_kernel(x, x, degree, gamma, coef0)
    kyy = _poly_kernel(y, y, degree, gamma, coef0)
    kxy = _poly_kernel(x, y, degree, gamma, coef0)
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kernel_inception_distance(
    feats1: Any,
    feats2: Any,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1,
    seed: int = 0,
) -> Tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with a polynomial kernel.

    ``k(x, y) = (gamma * x.y + coef0) ** degree`` with ``gamma = 1/d`` by default
    (d = feature dim), i.e. the cubic kernel of Binkowski et al. 2018.

    Protocol: ``num_subsets`` times, draw ``m = min(subset_size, n1, n2)`` rows
    without replacement from each feature set (``numpy.random.default_rng(seed)``)
    and compute the unbiased MMD^2 (see :func:`_mmd2_unbiased`). Returns the mean
    and (population) standard deviation over subsets. Individual estimates can
    be slightly negative since the estimator is unbiased.
    """
    x = _features(feats1, "feats1")
    y = _features(feats2, "feats2")
    _same_dim(x, y, "feats1", "feats2")
    n1, n2, d = x.shape[0], y.shape[0], x.shape[1]
    if int(num_subsets) != num_subsets or num_subsets < 1:
        raise ValueError(f"num_subsets must be a positive integer; got {num_subsets}")
    if int(subset_size) != subset_size or subset_size < 2:
        raise ValueError(f"subset_size must be an integer >= 2; got {subset_size}")
    if int(degree) != degree or degree < 1:
        raise ValueError(f"degree must be a positive integer; got {degree}")
    m = min(int(subset_size), n1, n2)
    if m < 2:
        raise ValueError(
            f"KID needs at least 2 samples in each set for the unbiased estimator; got "
            f"{n1} and {n2}; provide more samples"
        )
    if gamma is None:
        gamma = 1.0 / d
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0 (or None for 1/dim); got {gamma}")

    rng = np.random.default_rng(seed)
    vals = np.empty(int(num_subsets), dtype=np.float64)
    for i in range(int(num_subsets)):
        xs = x[rng.choice(n1, m, replace=False)]
        ys = y[rng.choice(n2, m, replace=False)]
        vals[i] = _mmd2_unbiased(xs, ys, int(degree), float(gamma), float(coef0))
    return float(vals.mean()), float(vals.std())


# ---------------------------------------------------------------------------
# Inception Score
# ---------------------------------------------------------------------------


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def inception_score(logits: Any, splits: int = 10) -> Tuple[float, float]:
    """Inception Score from classifier logits.

    ``IS = exp( E_x KL(p(y|x) || p(y)) )`` with ``p(y|x) = softmax(logits)``
    (log-softmax in float64) and ``p(y)`` the mean of ``p(y|x)`` over the split.
    The n samples are partitioned into ``splits`` contiguous, near-equal chunks
    (``numpy.array_split``); returns mean and (population) std of the per-split
    scores. Pass *logits*, not probabilities.
    """
    z = _features(logits, "logits")
    n = z.shape[0]
    if int(splits) != splits or splits < 1:
        raise ValueError(f"splits must be a positive integer; got {splits}")
    if n < splits:
        raise ValueError(f"inception_score got {n} samples but splits={splits}; use splits <= number of samples")
    logp = _log_softmax(z)
    scores = []
    for chunk in np.array_split(logp, int(splits), axis=0):
        k = chunk.shape[0]
        cmax = chunk.max(axis=0, keepdims=True)
        log_py = cmax + np.log(np.exp(chunk - cmax).sum(axis=0, keepdims=True)) - np.log(k)
        kl = (np.exp(chunk) * (chunk - log_py)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    scores = np.asarray(scores)
    return float(scores.mean()), float(scores.std())


# ---------------------------------------------------------------------------
# Improved precision / recall
# ---------------------------------------------------------------------------


def _sq_dists(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    d = (a * a).sum(axis=1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _knn_sq_radii(x: np.ndarray, k: int, batch_size: int) -> np.ndarray:
    """Squared distance from each row of x to its k-th nearest other row of x."""
    x_sq = (x * x).sum(axis=1)
    radii = np.empty(x.shape[0], dtype=np.float64)
    for s in range(0, x.shape[0], batch_size):
        d = _sq_dists(x[s : s + batch_size], x, x_sq)
        # index 0 of the sorted row is the point itself (distance 0), so the
        # k-th neighbour excluding itself is at sorted position k.
        radii[s : s + batch_size] = np.partition(d, k, axis=1)[:, k]
    return radii


def _inside(query: np.ndarray, ref: np.ndarray, ref_sq_radii: np.ndarray, batch_size: int) -> np.ndarray:
    """Per query row: whether it lies within the k-NN hypersphere of at least one ref row."""
    ref_sq = (ref * ref).sum(axis=1)
    inside = np.empty(query.shape[0], dtype=bool)
    for s in range(0, query.shape[0], batch_size):
        d = _sq_dists(query[s : s + batch_size], ref, ref_sq)
        inside[s : s + batch_size] = (d <= ref_sq_radii[None, :]).any(axis=1)
    return inside


def precision_recall(real_feats: Any, fake_feats: Any, k: int = 3, batch_size: int = 256,
                     per_sample: bool = False) -> Dict[str, Any]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    The real manifold is the union of hyperspheres centred at each real sample
    with radius = Euclidean distance to its k-th nearest *other* real sample;
    likewise for fakes.

    * precision = fraction of fake samples inside the real manifold
    * recall    = fraction of real samples inside the fake manifold

    A point is inside a sphere if its distance is ``<=`` the radius. Distances
    are computed in blocks of ``batch_size`` query rows, so peak memory is
    ``O(batch_size * max(n_real, n_fake))``. ``per_sample=True`` also returns the
    boolean arrays behind the two fractions: ``"fake_inside"`` (n_fake,) and
    ``"real_inside"`` (n_real,), e.g. to see which real samples a generator misses.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer; got {k}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size}")
    k, batch_size = int(k), int(batch_size)
    real = _features(real_feats, "real_feats", min_rows=k + 1)
    fake = _features(fake_feats, "fake_feats", min_rows=k + 1)
    _same_dim(real, fake, "real_feats", "fake_feats")
    real_r = _knn_sq_radii(real, k, batch_size)
    fake_r = _knn_sq_radii(fake, k, batch_size)
    fake_inside = _inside(fake, real, real_r, batch_size)
    real_inside = _inside(real, fake, fake_r, batch_size)
    out: Dict[str, Any] = {"precision": float(fake_inside.mean()), "recall": float(real_inside.mean())}
    if per_sample:
        out.update(fake_inside=fake_inside, real_inside=real_inside)
    return out


# ---------------------------------------------------------------------------
# Intra-FID
# ---------------------------------------------------------------------------


def intra_fid(
    real_feats_by_class: Mapping[Hashable, Any], fake_feats_by_class: Mapping[Hashable, Any]
) -> Dict[str, Any]:
    """Intra-FID: mean over classes of the per-class FID.

    For every class key present in *both* mappings, FID is computed between
    the real and fake features of that class (each needs >= 2 samples).

    Returns:
        ``{"mean": float, "per_class": {class: fid}}``.
    """
    if not isinstance(real_feats_by_class, Mapping) or not isinstance(fake_feats_by_class, Mapping):
        raise ValueError("intra_fid expects two dicts mapping class label -> (n, d) features")
    classes = [c for c in real_feats_by_class if c in fake_feats_by_class]
    if not classes:
        raise ValueError(
            "intra_fid: no class label is present in both real and fake dicts; use the same class keys"
        )
    per_class: Dict[Hashable, float] = {}
    dim = None
    for c in classes:
        try:
            r = _features(real_feats_by_class[c], f"real_feats_by_class[{c!r}]", min_rows=2)
            f = _features(fake_feats_by_class[c], f"fake_feats_by_class[{c!r}]", min_rows=2)
            _same_dim(r, f, f"real_feats_by_class[{c!r}]", f"fake_feats_by_class[{c!r}]")
        except ValueError as exc:
            raise ValueError(f"intra_fid, class {c!r}: {exc}") from exc
        if dim is not None and r.shape[1] != dim:
            raise ValueError(f"intra_fid: class {c!r} has feature dim {r.shape[1]}, other classes have {dim}")
        dim = r.shape[1]
        per_class[c] = frechet_distance(*feature_statistics(r), *feature_statistics(f))
    return {"mean": float(np.mean(list(per_class.values()))), "per_class": per_class}
