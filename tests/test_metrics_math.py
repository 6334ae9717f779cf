"""Tests of attnorm.metrics against independent (scipy / numpy / skimage) references."""

import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.special
import scipy.stats
import torch

from attnorm.metrics import (
    feature_statistics,
    frechet_distance,
    inception_score,
    intra_fid,
    kernel_inception_distance,
    l1,
    precision_recall,
    psnr,
    ssim,
)


def rng(seed=0):
    return np.random.default_rng(seed)


def random_spd(r, d, cond=10.0):
    q, _ = np.linalg.qr(r.standard_normal((d, d)))
    w = np.geomspace(1.0, cond, d)
    return (q * w) @ q.T


def fid_scipy(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# --------------------------------------------------------------------------- FID


def test_feature_statistics_matches_numpy():
    x = rng(1).standard_normal((50, 6))
    mu, sigma = feature_statistics(torch.from_numpy(x).float())
    assert mu.dtype == np.float64 and sigma.shape == (6, 6)
    np.testing.assert_allclose(mu, x.mean(0), atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), atol=1e-6)


def test_fid_matches_scipy_sqrtm_well_conditioned():
    r = rng(2)
    for d in (3, 16, 40):
        mu1, mu2 = r.standard_normal(d), r.standard_normal(d)
        s1, s2 = random_spd(r, d), random_spd(r, d)
        ref = fid_scipy(mu1, s1, mu2, s2)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)


def test_fid_closed_form_diagonal():
    r = rng(3)
    d = 10
    mu1, mu2 = r.standard_normal(d), r.standard_normal(d)
    a, b = r.uniform(0.1, 3, d), r.uniform(0.1, 3, d)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_fid_self_zero_and_symmetric():
    r = rng(4)
    x = r.standard_normal((200, 32)) @ r.standard_normal((32, 32))
    y = r.standard_normal((150, 32)) + 0.5
    sx, sy = feature_statistics(x), feature_statistics(y)
    assert abs(frechet_distance(*sx, *sx)) <= 1e-6 * np.trace(sx[1])
    f_xy, f_yx = frechet_distance(*sx, *sy), frechet_distance(*sy, *sx)
    assert f_xy > 0
    assert f_xy == pytest.approx(f_yx, rel=1e-9)
    # torch inputs accepted
    tx = [torch.from_numpy(v) for v in sx]
    assert frechet_distance(*tx, *sy) == pytest.approx(f_xy, rel=1e-12)


def test_fid_singular_covariance():
    r = rng(5)
    d, n1, n2 = 64, 20, 30  # fewer samples than dims -> rank-deficient covariances
    x = r.standard_normal((n1, d))
    y = r.standard_normal((n2, d)) * 1.5 + 0.2
    (m1, s1), (m2, s2) = feature_statistics(x), feature_statistics(y)
    got = frechet_distance(m1, s1, m2, s2)
    assert np.isfinite(got) and got >= 0
    # Exact reference: with S_i = Xc_i^T Xc_i / (n_i - 1), Tr((S1 S2)^{1/2}) equals the
    # nuclear norm of Xc1 Xc2^T / sqrt((n1-1)(n2-1)).
    xc, yc = x - x.mean(0), y - y.mean(0)
    nuc = scipy.linalg.svdvals(xc @ yc.T).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    exact = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * nuc
    assert got == pytest.approx(exact, rel=1e-8)
    # sqrtm on a singular product is ill-conditioned: loose tolerance
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fid_scipy(m1, s1, m2, s2)
    assert got == pytest.approx(ref, rel=1e-3)
    # self distance of a singular covariance is ~0
    assert frechet_distance(m1, s1, m1, s1) <= 1e-6 * np.trace(s1)


def test_fid_bad_inputs():
    mu, s = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="dimension mismatch"):
        frechet_distance(mu, s, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="square"):
        frechet_distance(mu, s, mu, np.eye(4))
    with pytest.raises(ValueError, match="1-D"):
        frechet_distance(s, s, s, s)
    with pytest.raises(ValueError, match="symmetric"):
        frechet_distance(mu, s, mu, np.triu(np.ones((3, 3))))
    with pytest.raises(ValueError, match="positive semi-definite"):
        frechet_distance(mu, s, mu, -np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(mu, s, mu * np.nan, s)
    with pytest.raises(ValueError, match="2-D"):
        feature_statistics(np.zeros(5))
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.zeros((1, 5)))


# --------------------------------------------------------------------------- KID


def mmd2_naive(x, y, degree=3, gamma=None, coef0=1.0):
    d = x.shape[1]
    gamma = 1.0 / d if gamma is None else gamma

    def k(a, b):
        return (gamma * float(np.dot(a, b)) + coef0) ** degree

    m = x.shape[0]
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return sxx + syy - 2 * sxy


def test_kid_single_full_subset_equals_naive():
    r = rng(6)
    x, y = r.standard_normal((12, 5)), r.standard_normal((12, 5)) + 0.3
    mean, std = kernel_inception_distance(x, y, num_subsets=1, subset_size=12)
    assert mean == pytest.approx(mmd2_naive(x, y), abs=1e-10)
    assert std == 0.0
    mean2, _ = kernel_inception_distance(x, y, num_subsets=1, subset_size=12, degree=2, gamma=0.5, coef0=0.7)
    assert mean2 == pytest.approx(mmd2_naive(x, y, degree=2, gamma=0.5, coef0=0.7), abs=1e-10)
    # subset_size larger than n is clipped to n
    mean3, _ = kernel_inception_distance(torch.from_numpy(x), y, num_subsets=1, subset_size=1000)
    assert mean3 == pytest.approx(mmd2_naive(x, y), abs=1e-10)


def test_kid_subsets_average_naive():
    r = rng(7)
    x, y = r.standard_normal((15, 4)), r.standard_normal((20, 4))
    mean, std = kernel_inception_distance(x, y, num_subsets=4, subset_size=6, seed=3)
    g = np.random.default_rng(3)
    vals = []
    for _ in range(4):
        xs = x[g.choice(15, 6, replace=False)]
        ys = y[g.choice(20, 6, replace=False)]
        vals.append(mmd2_naive(xs, ys))
    assert mean == pytest.approx(np.mean(vals), abs=1e-10)
    assert std == pytest.approx(np.std(vals), abs=1e-10)


def test_kid_same_vs_shifted_distribution():
    r = rng(8)
    x, y = r.standard_normal((400, 16)), r.standard_normal((400, 16))
    same, _ = kernel_inception_distance(x, y, num_subsets=10, subset_size=200)
    shifted, _ = kernel_inception_distance(x, y + 1.0, num_subsets=10, subset_size=200)
    assert abs(same) < 0.02
    assert shifted > 0.5
    assert shifted > 20 * abs(same)


def test_kid_bad_inputs():
    x = np.zeros((10, 4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        kernel_inception_distance(np.zeros((1, 4)), x)
    with pytest.raises(ValueError, match="dimension mismatch"):
        kernel_inception_distance(x, np.zeros((10, 5)))
    with pytest.raises(ValueError, match="2-D"):
        kernel_inception_distance(np.zeros(10), x)
    with pytest.raises(ValueError, match="num_subsets"):
        kernel_inception_distance(x, x, num_subsets=0)


# --------------------------------------------------------------------------- IS


def is_scipy(logits, splits):
    p = scipy.special.softmax(logits.astype(np.float64), axis=1)
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(0)
        scores.append(np.exp(np.mean([scipy.stats.entropy(pi, py) for pi in part])))
    return np.mean(scores), np.std(scores)


def test_is_uniform_confident_equals_num_classes():
    k = 10
    logits = 100.0 * np.eye(k)[np.tile(np.arange(k), 20)]
    mean, std = inception_score(logits, splits=4)
    assert mean == pytest.approx(k, rel=1e-6)
    assert std < 1e-6


def test_is_single_class_is_one():
    logits = np.zeros((50, 7))
    logits[:, 3] = 30.0
    mean, _ = inception_score(torch.from_numpy(logits).float(), splits=5)
    assert mean == pytest.approx(1.0, abs=1e-9)


def test_is_matches_scipy_reference():
    logits = rng(9).standard_normal((103, 12)) * 3
    for splits in (1, 5):
        mean, std = inception_score(logits, splits=splits)
        ref_mean, ref_std = is_scipy(logits, splits)
        assert mean == pytest.approx(ref_mean, rel=1e-10)
        assert std == pytest.approx(ref_std, rel=1e-8, abs=1e-12)


def test_is_large_logits_stable():
    logits = rng(10).standard_normal((40, 5)) * 1000  # naive softmax would overflow
    mean, std = inception_score(logits, splits=2)
    assert np.isfinite(mean) and np.isfinite(std) and 1.0 <= mean <= 5.0


def test_is_bad_inputs():
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.zeros((5, 3)), splits=10)
    with pytest.raises(ValueError, match="2-D"):
        inception_score(np.zeros(5))


# --------------------------------------------------------------------------- precision / recall


def pr_bruteforce(real, fake, k):
    def radii(x):
        d = scipy.spatial.distance.cdist(x, x)
        return np.sort(d, axis=1)[:, k]

    rr, fr = radii(real), radii(fake)
    d_fr = scipy.spatial.distance.cdist(fake, real)
    precision = np.mean([(d_fr[i] <= rr).any() for i in range(len(fake))])
    recall = np.mean([(d_fr[:, j] <= fr).any() for j in range(len(real))])
    return precision, recall


@pytest.mark.parametrize("k,batch_size", [(1, 7), (3, 16), (5, 1000)])
def test_precision_recall_matches_bruteforce(k, batch_size):
    r = rng(11)
    real = r.standard_normal((60, 8))
    fake = r.standard_normal((45, 8)) * 1.3 + 0.4
    out = precision_recall(real, torch.from_numpy(fake), k=k, batch_size=batch_size)
    p, rc = pr_bruteforce(real, fake, k)
    assert out["precision"] == pytest.approx(p, abs=1e-12)
    assert out["recall"] == pytest.approx(rc, abs=1e-12)
    assert 0 < out["precision"] < 1 or 0 < out["recall"] < 1
    # the per-sample arrays behind the fractions, against the brute force row by row
    rr = np.sort(scipy.spatial.distance.cdist(real, real), axis=1)[:, k]
    fr = np.sort(scipy.spatial.distance.cdist(fake, fake), axis=1)[:, k]
    d_fr = scipy.spatial.distance.cdist(fake, real)
    masks = precision_recall(real, fake, k=k, batch_size=batch_size, per_sample=True)
    np.testing.assert_array_equal(masks["fake_inside"], (d_fr <= rr[None, :]).any(1))
    np.testing.assert_array_equal(masks["real_inside"], (d_fr <= fr[:, None]).any(0))
    assert masks["recall"] == out["recall"] and masks["precision"] == out["precision"]


def test_precision_recall_identical_and_disjoint():
    x = rng(12).standard_normal((40, 6))
    assert precision_recall(x, x.copy(), k=3) == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(x, x + 1e3, k=3)
    assert far == {"precision": 0.0, "recall": 0.0}


def test_precision_recall_bad_inputs():
    x = np.zeros((10, 4))
    with pytest.raises(ValueError, match="dimension mismatch"):
        precision_recall(x, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="at least 4"):
        precision_recall(np.zeros((3, 4)), x, k=3)
    with pytest.raises(ValueError, match="k must"):
        precision_recall(x, x, k=0)


# --------------------------------------------------------------------------- intra-FID


def test_intra_fid_is_mean_of_class_fids():
    r = rng(13)
    real = {c: r.standard_normal((30, 5)) + c for c in range(3)}
    fake = {c: r.standard_normal((25, 5)) * 1.2 + c + 0.1 for c in (0, 1, 2, 9)}
    out = intra_fid(real, fake)
    per = {c: frechet_distance(*feature_statistics(real[c]), *feature_statistics(fake[c])) for c in range(3)}
    assert set(out["per_class"]) == {0, 1, 2}
    for c in range(3):
        assert out["per_class"][c] == pytest.approx(per[c], rel=1e-12)
    assert out["mean"] == pytest.approx(np.mean(list(per.values())), rel=1e-12)


def test_intra_fid_bad_inputs():
    with pytest.raises(ValueError, match="no class label"):
        intra_fid({0: np.zeros((3, 2))}, {1: np.zeros((3, 2))})
    with pytest.raises(ValueError, match="class 0"):
        intra_fid({0: np.zeros((3, 2))}, {0: np.zeros((3, 4))})


# --------------------------------------------------------------------------- image metrics


def test_psnr_l1_match_numpy():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 16, 20, generator=g, dtype=torch.float64)
    b = (a + 0.1 * torch.randn(3, 3, 16, 20, generator=g, dtype=torch.float64)).clamp(0, 1)
    an, bn = a.numpy(), b.numpy()
    mse = ((an - bn) ** 2).reshape(3, -1).mean(1)
    np.testing.assert_allclose(psnr(a, b).numpy(), 10 * np.log10(1.0 / mse), rtol=1e-12)
    np.testing.assert_allclose(psnr(a * 255, b * 255, data_range=255).numpy(), 10 * np.log10(1.0 / mse), rtol=1e-10)
    np.testing.assert_allclose(l1(a, b).numpy(), np.abs(an - bn).reshape(3, -1).mean(1), rtol=1e-12)
    assert torch.isinf(psnr(a, a)).all()
    assert psnr(a.float(), b.float()).dtype == torch.float32


def _smooth_images(n, c, h, w, seed):
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    r = rng(seed)
    out = np.empty((n, c, h, w))
    for i in range(n):
        for j in range(c):
            fx, fy, ph = r.uniform(1, 4, 3)
            out[i, j] = 0.5 + 0.4 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
    return out


def _ssim_reference(a, b, data_range=1.0, win=7):
    """SSIM (Wang et al. 2004) from its definition, one channel (h, w) at a time, in numpy: uniform
    win x win window over every fully inside position, sample (co)variances (N / (N - 1)),
    C1 = (0.01 R)^2, C2 = (0.03 R)^2; the map's mean."""
    h, w = a.shape
    n = win * win
    vals = []
    for i in range(h - win + 1):
        for j in range(w - win + 1):
            pa, pb = a[i:i + win, j:j + win].ravel(), b[i:i + win, j:j + win].ravel()
            ma, mb = pa.mean(), pb.mean()
            va, vb = pa.var() * n / (n - 1), pb.var() * n / (n - 1)
            cov = ((pa - ma) * (pb - mb)).sum() / (n - 1)
            c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_matches_its_definition():
    r = rng(14)
    rand_a = r.uniform(0, 1, (2, 3, 14, 12))
    rand_b = np.clip(rand_a + 0.2 * r.standard_normal(rand_a.shape), 0, 1)
    smooth_a = _smooth_images(2, 3, 16, 13, seed=15)
    smooth_b = np.clip(smooth_a + 0.05 * r.standard_normal(smooth_a.shape), 0, 1)
    for a, b in ((rand_a, rand_b), (smooth_a, smooth_b)):
        got = ssim(torch.from_numpy(a), torch.from_numpy(b), data_range=1.0)
        assert got.shape == (2,) and got.dtype == torch.float64
        ref = [np.mean([_ssim_reference(a[i, c], b[i, c]) for c in range(3)]) for i in range(2)]
        np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-9)
        assert np.all(got.numpy() < 0.999)
    # scale-free: the same images in [0, 255] with data_range 255
    np.testing.assert_allclose(ssim(torch.from_numpy(smooth_a * 255), torch.from_numpy(smooth_b * 255),
                                    data_range=255.0).numpy(),
                               ssim(torch.from_numpy(smooth_a), torch.from_numpy(smooth_b)).numpy(), atol=1e-9)
    # a 5x5 window on one grey image
    one = ssim(torch.from_numpy(smooth_a[:1, :1]), torch.from_numpy(smooth_b[:1, :1]), win_size=5)
    assert float(one) == pytest.approx(_ssim_reference(smooth_a[0, 0], smooth_b[0, 0], win=5), abs=1e-9)
    same = ssim(torch.from_numpy(smooth_a).float(), torch.from_numpy(smooth_a).float())
    assert same.dtype == torch.float32
    np.testing.assert_allclose(same.numpy(), 1.0, atol=1e-6)


def test_image_metrics_bad_inputs():
    a = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match=r"\(b, c, h, w\)"):
        l1(a[0], a[0])
    with pytest.raises(ValueError, match="data_range"):
        psnr(a, a, data_range=0)
    with pytest.raises(ValueError, match="smaller than win_size"):
        ssim(torch.rand(1, 1, 5, 5), torch.rand(1, 1, 5, 5))
    with pytest.raises(ValueError, match="odd"):
        ssim(a, a, win_size=4)
    with pytest.raises(ValueError, match="torch tensors"):
        ssim(a.numpy(), a.numpy())
