"""Masks: recipes' bounds, per-sample determinism, file round trip, area bins, eval sets."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from attnorm.data.masks import (
    AREA_BIN_LABELS, MaskGenerator, area_bin, area_bin_label, box_mask, center_mask, draw_strokes,
    free_form_strokes, hole_bbox, load_mask, mask_area, random_box, save_mask, write_eval_masks,
)


@pytest.mark.parametrize("kind", ["box", "free_form", "mixed"])
def test_deterministic_per_seed_and_index(kind):
    a, b = MaskGenerator(kind, 64, seed=3), MaskGenerator(kind, 64, seed=3)
    for i in (0, 1, 17):
        assert torch.equal(a(i), b(i))
    # call order does not matter: index 17 then 0 gives the same masks
    assert torch.equal(a.batch([17, 0])[1], b(0))
    other = MaskGenerator(kind, 64, seed=4)
    assert any(not torch.equal(a(i), other(i)) for i in range(4))


@pytest.mark.parametrize("kind", ["box", "free_form"])
def test_each_sample_gets_its_own_mask(kind):
    batch = MaskGenerator(kind, 64, seed=0).batch(range(8))
    assert batch.shape == (8, 1, 64, 64)
    assert batch.dtype == torch.float32
    assert set(batch.unique().tolist()) <= {0.0, 1.0}
    flat = batch.flatten(1)
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.equal(flat[i], flat[j]), (i, j)


@pytest.mark.parametrize("size,side,shrink", [(256, 128, 16), (512, 256, 32), ((128, 64), (64, 32), (8, 4))])
def test_box_sizes_within_recipe(size, side, shrink):
    h, w = (size, size) if isinstance(size, int) else size
    sh, sw = (side, side) if isinstance(side, int) else side
    dh, dw = (shrink, shrink) if isinstance(shrink, int) else shrink
    rng = np.random.default_rng(0)
    heights, widths, tops = [], [], []
    for _ in range(300):
        top, left, bh, bw = random_box(size, rng)
        assert sh - 2 * dh <= bh <= sh and sw - 2 * dw <= bw <= sw
        assert 0 <= top and top + bh <= h and 0 <= left and left + bw <= w
        heights.append(bh), widths.append(bw), tops.append(top)
    # the extremes of the shrink range are reached, and positions spread over the image
    assert min(heights) <= sh - 2 * dh + 4 and max(heights) >= sh - 4
    assert min(tops) < 0.1 * (h - sh) + 1 and max(tops) > 0.8 * (h - sh)


def test_box_mask_is_the_box():
    gen = MaskGenerator("box", 256, seed=1)
    for i in range(5):
        m = gen(i)
        top, left, bh, bw = hole_bbox(m)
        assert m.sum().item() == bh * bw  # a full rectangle
        assert 96 <= bh <= 128 and 96 <= bw <= 128
    c = center_mask((256, 200))
    assert hole_bbox(c) == (64, 50, 128, 100)


def _segment_lengths(points):
    return [math.dist(p, q) for p, q in zip(points[:-1], points[1:])]


def test_stroke_parameters_within_recipe():
    rng = np.random.default_rng(0)
    h, w = 256, 256
    r = math.hypot(h, w) / 8
    counts, steps = [], []
    for _ in range(200):
        strokes = free_form_strokes((h, w), rng)
        counts.append(len(strokes))
        for s in strokes:
            steps.append(len(s.points) - 1)
            assert 12 <= s.width <= 40
            for x, y in s.points:
                assert 0 <= x <= w - 1 and 0 <= y <= h - 1
            assert max(_segment_lengths(s.points)) <= 2 * r + 1e-9
    assert set(counts) == {1, 2, 3}
    assert set(steps) == set(range(4, 12))
    # widths scale with the image: at 128 they lie in [6, 20]
    for s in free_form_strokes(128, np.random.default_rng(1)):
        assert 6 <= s.width <= 20


def test_stroke_area_is_plausible():
    rng = np.random.default_rng(5)
    for _ in range(40):
        strokes = free_form_strokes(128, rng)
        arr = draw_strokes(128, strokes)
        area = int(arr.sum())
        # upper bound: a w-wide band along every segment plus a disc per vertex (+ raster slack)
        upper = sum(sum(_segment_lengths(s.points)) * (s.width + 2) + len(s.points) * math.pi * (s.width / 2 + 1) ** 2
                    for s in strokes)
        # lower bound: the start vertex's disc, at worst cut to a quarter by an image corner
        lower = max(math.pi * (s.width / 2 - 1) ** 2 / 4 for s in strokes)
        assert lower <= area <= upper
        for s in strokes:  # every vertex lies under the brush
            for x, y in s.points:
                assert arr[int(round(y)), int(round(x))] == 1
    areas = [float(mask_area(m)) for m in MaskGenerator("free_form", 128, 0).batch(range(60))]
    assert 0.05 < float(np.mean(areas)) < 0.35


def test_file_round_trip_threshold_and_resize(tmp_path):
    m = MaskGenerator("free_form", (40, 56), seed=2)(0)
    save_mask(tmp_path / "m.png", m)
    assert torch.equal(load_mask(tmp_path / "m.png"), m)
    # threshold at 0.5 after scaling to [0, 1]: 127 -> known, 128 -> hole; RGB works too
    grey = np.array([[0, 127, 128, 255]], dtype=np.uint8).repeat(2, 0)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "g.png")
    assert load_mask(tmp_path / "g.png").tolist() == [[[0, 0, 1, 1], [0, 0, 1, 1]]]
    # nearest resize: a 2x upscale repeats each pixel (np.kron reference); a 2x downscale keeps binary
    small = (np.random.default_rng(0).random((5, 7)) > 0.5).astype(np.float32)
    save_mask(tmp_path / "s.png", small)
    up = load_mask(tmp_path / "s.png", size=(10, 14))[0].numpy()
    np.testing.assert_array_equal(up, np.kron(small, np.ones((2, 2))))
    down = load_mask(tmp_path / "m.png", size=(20, 28))
    assert down.shape == (1, 20, 28) and set(down.unique().tolist()) <= {0.0, 1.0}


def test_files_generator(tmp_path):
    for i in range(3):
        save_mask(tmp_path / f"{i}.png", box_mask(16, (i, i, 4, 4)))
    gen = MaskGenerator("files", 32, files=tmp_path)
    assert hole_bbox(gen(1)) == (2, 2, 8, 8) and torch.equal(gen(4), gen(1))
    with pytest.raises(FileNotFoundError):
        MaskGenerator("files", 32, files=tmp_path / "missing")


def test_area_bins_on_known_areas():
    def with_holes(k):  # 20 x 50 = 1000 pixels, k holes
        m = torch.zeros(1, 20, 50)
        m.view(-1)[:k] = 1
        return m

    cases = {0: 0, 1: 0, 99: 0, 100: 1, 150: 1, 199: 1, 200: 2, 333: 3, 499: 4, 500: 5, 599: 5, 600: 6, 1000: 6}
    for k, expected in cases.items():
        assert area_bin(with_holes(k)) == expected, k
        assert area_bin(k / 1000) == expected, k
    assert area_bin_label(with_holes(250)) == "20-30%"
    assert len(AREA_BIN_LABELS) == 7
    assert mask_area(torch.stack([with_holes(100), with_holes(250)])).tolist() == pytest.approx([0.1, 0.25])


def test_write_eval_masks(tmp_path):
    recs = write_eval_masks(tmp_path / "a", n=6, size=48, kind="free_form", seed=7)
    write_eval_masks(tmp_path / "b", n=6, size=48, kind="free_form", seed=7)
    meta = json.loads((tmp_path / "a" / "masks.json").read_text())
    assert meta["n"] == 6 and meta["masks"] == recs
    rows = list(csv.DictReader(open(tmp_path / "a" / "masks.csv")))
    assert len(rows) == 6
    for rec, row in zip(recs, rows):
        m = load_mask(tmp_path / "a" / rec["file"])
        assert torch.equal(m, MaskGenerator("free_form", 48, 7)(rec["index"]))
        assert rec["area"] == pytest.approx(m.mean().item())
        assert rec["bin"] == int(rec["area"] * 10 + 1e-9) and row["bin_label"] == rec["bin_label"]
        assert (tmp_path / "a" / rec["file"]).read_bytes() == (tmp_path / "b" / rec["file"]).read_bytes()
    assert sum(meta["bin_counts"].values()) == 6
