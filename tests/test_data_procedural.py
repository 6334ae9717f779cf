"""Procedural class-conditional dataset (attnorm.data.procedural)."""

import numpy as np
import pytest
import torch

from attnorm.data.procedural import CLASS_NAMES, ProceduralShapes, shape_alpha


def test_deterministic_per_seed_and_index():
    a = ProceduralShapes(resolution=32, seed=3)
    b = ProceduralShapes(resolution=32, seed=3)
    xa, ya = a.get_batch([5, 17, 5000])
    xb, yb = b.get_batch([5000, 17, 5])  # order does not matter: each image depends on (seed, index) only
    assert torch.equal(xa, xb.flip(0)) and torch.equal(ya, yb.flip(0))
    x1, y1 = a[17]
    assert torch.equal(x1, xa[1]) and y1 == int(ya[1])
    c = ProceduralShapes(resolution=32, seed=4)
    assert not torch.equal(c[17][0], x1)
    assert not torch.equal(a[17][0], a[17 + a.num_classes][0])  # same class, different image


def test_classes_range_and_dtype():
    ds = ProceduralShapes(resolution=24, num_classes=12)
    assert len(CLASS_NAMES) >= 10 and ds.classes == list(CLASS_NAMES)
    x, y = ds.get_batch(range(48))
    assert x.shape == (48, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.long
    assert x.min() >= -1 and x.max() <= 1
    assert sorted(set(y.tolist())) == list(range(12))
    assert torch.bincount(y).tolist() == [4] * 12  # balanced
    small = ProceduralShapes(resolution=16, num_classes=5)
    assert set(small.get_batch(range(20))[1].tolist()) == set(range(5))
    with pytest.raises(ValueError):
        ProceduralShapes(num_classes=13)


def test_any_resolution():
    for r in (8, 33, 128):
        x, _ = ProceduralShapes(resolution=r)[3]
        assert x.shape == (3, r, r)


def _grid(n=201):
    c = np.linspace(-1.1, 1.1, n)
    y, x = np.meshgrid(c, c, indexing="ij")
    return x, y


@pytest.mark.parametrize("name,k", [("ring", 7), ("triangle", 3), ("hexagon_outline", 6), ("star", 5),
                                    ("cross", 4), ("concentric", 7), ("flower", 6)])
def test_shapes_have_their_rotational_symmetry(name, k):
    # independent check: the shape rotated by 2 pi / k (by resampling the canonical frame) is itself
    x, y = _grid()
    i = CLASS_NAMES.index(name)
    a = 2 * np.pi / k
    xr, yr = np.cos(a) * x - np.sin(a) * y, np.sin(a) * x + np.cos(a) * y
    px = 2.2 / 200
    if name == "triangle":  # the triangle is centred at (0, -0.15): rotate about that point
        x0, y0 = x, y + 0.15
        xr, yr = np.cos(a) * x0 - np.sin(a) * y0, np.sin(a) * x0 + np.cos(a) * y0 - 0.15
    assert np.abs(shape_alpha(i, x, y, px) - shape_alpha(i, xr, yr, px)).mean() < 0.01


@pytest.mark.parametrize("name", ["butterfly", "cross", "star", "chevrons", "dot_grid", "checker"])
def test_shapes_are_mirror_symmetric(name):
    x, y = _grid()
    i = CLASS_NAMES.index(name)
    if name == "checker":  # a 4x4 checkerboard maps to itself under a 180 degree turn
        assert np.abs(shape_alpha(i, x, y, 0.01) - shape_alpha(i, -x, -y, 0.01)).max() < 1e-6
        alpha = shape_alpha(i, x, y, 0.01)
        assert 0.4 < alpha[np.abs(x).__lt__(0.8) & (np.abs(y) < 0.8)].mean() < 0.6
        return
    assert np.abs(shape_alpha(i, x, y, 0.01) - shape_alpha(i, -x, y, 0.01)).max() < 1e-6


def test_every_class_draws_a_visible_object():
    x, y = _grid()
    for i, name in enumerate(CLASS_NAMES):
        cover = shape_alpha(i, x, y, 0.01).mean()
        assert 0.03 < cover < 0.6, name
    # the crescent is not mirror symmetric about the vertical axis (sanity of the symmetry test)
    i = CLASS_NAMES.index("crescent")
    assert np.abs(shape_alpha(i, x, y, 0.01) - shape_alpha(i, -x, y, 0.01)).mean() > 0.05


def test_the_class_alone_changes_the_object():
    # Image i draws background, pose and colour from (seed, i) whatever its label (i % num_classes), so
    # datasets with 12 and 11 classes give image pairs that differ only in the class: each pair must
    # differ clearly (the object's shape stands out from the background by >= 0.2 on the [-1, 1] scale)
    # and pairs of the same class must be identical.
    a, b = ProceduralShapes(32, 12, seed=0), ProceduralShapes(32, 11, seed=0)
    changed = []
    for i in range(24, 84):
        (xa, ya), (xb, yb) = a[i], b[i]
        if ya == yb:
            assert torch.equal(xa, xb)
            continue
        changed.append(float(((xa - xb).abs().amax(0) > 0.2).float().mean()))
    assert len(changed) > 40 and min(changed) > 0.05 and np.mean(changed) > 0.15


def test_no_class_is_a_rotated_copy_of_another():
    # in the canonical frame, every pair of classes differs on >= 4% of the area under every rotation
    c = np.linspace(-1.1, 1.1, 81)
    y, x = np.meshgrid(c, c, indexing="ij")
    angles = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    rotated = {i: [shape_alpha(i, np.cos(t) * x - np.sin(t) * y, np.sin(t) * x + np.cos(t) * y, 2.2 / 80)
                   for t in angles] for i in range(len(CLASS_NAMES))}
    for i in range(len(CLASS_NAMES)):
        for j in range(i + 1, len(CLASS_NAMES)):
            gap = min(np.abs(rotated[i][0] - r).mean() for r in rotated[j])
            assert gap > 0.04, (CLASS_NAMES[i], CLASS_NAMES[j], gap)


def _masks(monkeypatch, pose, indices, resolution=32):
    """Object masks: with a black background the image is fg * alpha, and a light fg is >= 0.55."""
    from attnorm.data import procedural
    monkeypatch.setattr(procedural, "_background", lambda rng, u, v: (rng.uniform(0, 1, 6), np.zeros(u.shape + (3,)))[1])
    ds = ProceduralShapes(resolution=resolution, num_classes=10, seed=2, pose=pose)
    return np.stack([ds.render(i).max(-1) > 0.05 for i in indices])


def test_centred_pose_draws_every_object_of_a_class_in_the_same_place(monkeypatch):
    cross = CLASS_NAMES.index("cross")
    m = _masks(monkeypatch, "centred", [cross + 10 * k for k in range(6)])
    assert m[0].sum() > 50 and all(np.array_equal(m[0], mk) for mk in m[1:])
    rows, cols = np.nonzero(m[0])
    assert abs(rows.mean() - 15.5) < 0.2 and abs(cols.mean() - 15.5) < 0.2  # centred
    # an upright cross: its arms are along the image axes, so the centre row is covered end to end
    assert m[0][15, 7:25].all() and m[0][7:25, 15].all() and not m[0][7, 7] and not m[0][24, 24]
    # the random pose moves and turns it
    r = _masks(monkeypatch, "random", [cross + 10 * k for k in range(6)])
    assert not all(np.array_equal(r[0], rk) for rk in r[1:])


def test_upright_pose_moves_and_scales_but_never_turns(monkeypatch):
    tri = CLASS_NAMES.index("triangle")  # a vertex up: mirror symmetric about a vertical line
    idx = [tri + 10 * k for k in range(12)]
    for pose, symmetric in (("upright", True), ("random", False)):
        m = _masks(monkeypatch, pose, idx, resolution=64)
        sym = []
        for mk in m:
            rows, cols = np.nonzero(mk)
            c = int(round(2 * cols.mean()))  # mirror column index pairs (j, c - j)
            j = np.arange(max(0, c - 63), min(63, c) + 1)
            sym.append((mk[:, j] == mk[:, c - j]).mean())
        assert (min(sym) > 0.99) == symmetric, (pose, sym)
        if pose == "upright":
            centres = {tuple(np.round(np.argwhere(mk).mean(0))) for mk in m}
            assert len(centres) > 6  # it does move


def test_poses_share_colours_and_background():
    a = ProceduralShapes(resolution=32, num_classes=10, seed=1)
    c = ProceduralShapes(resolution=32, num_classes=10, seed=1, pose="centred")
    xa, xc = a.render(3), c.render(3)
    assert np.allclose(xa[0, 0], xc[0, 0]) and np.allclose(xa[-1, -1], xc[-1, -1])  # corners: background
    assert not np.allclose(xa, xc)
    with pytest.raises(ValueError, match="pose must be one of"):
        ProceduralShapes(pose="tilted")


def test_background_names_the_kind_the_image_was_drawn_with():
    """Checked on the rendered pixels: a gradient ground is a plane in (u, v) plus the 0.03 grain, stripes are not."""
    from attnorm.data.procedural import BACKGROUNDS
    ds = ProceduralShapes(resolution=64, num_classes=10, seed=5, pose="centred")
    c = (np.arange(64) + 0.5) / 64 * 2 - 1
    v, u = np.meshgrid(c, c, indexing="ij")
    ground = (np.abs(u) > 0.85) | (np.abs(v) > 0.85)  # the border, outside every centred shape
    plane = np.stack([np.ones(ground.sum()), u[ground], v[ground]], 1)
    residual = {k: [] for k in BACKGROUNDS}
    for i in range(90):
        px = ds.render(i)[ground]  # (m, 3)
        coef, *_ = np.linalg.lstsq(plane, px, rcond=None)
        residual[ds.background(i)].append((px - plane @ coef).std())
    assert all(len(r) >= 20 for r in residual.values())  # about a third each
    assert max(residual["gradient"]) < 0.035  # the grain alone
    assert np.mean(np.array(residual["stripes"]) > 0.05) >= 0.75
    assert np.median(residual["stripes"]) > 3 * np.median(residual["gradient"])
    assert ds.background(7) == ProceduralShapes(resolution=16, num_classes=3, seed=5, pose="random").background(7)
