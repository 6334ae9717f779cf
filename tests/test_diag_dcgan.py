"""benchmarks/diag_dcgan.py: the data variants are what the README's diagnosis says, and a run writes its files."""

import json

import numpy as np
import pytest

from _scripts import load_benchmark


pytestmark = pytest.mark.benchmarks  # a benchmark script's test: `python -m pytest -m benchmarks` (pyproject.toml)


def test_variants_flat_background_and_canonical_pose():
    diag = load_benchmark("diag_dcgan")
    cross = 4  # CLASS_NAMES[4] == "cross"
    canon = diag.VariantShapes("canon", resolution=32, num_classes=10, seed=0)
    flat = diag.VariantShapes("flat", resolution=32, num_classes=10, seed=0)
    for ds in (canon, flat):
        img = ds.render(cross)
        corners = np.stack([img[0, 0], img[0, -1], img[-1, 0], img[-1, -1]])
        assert np.allclose(corners, corners[0])  # one flat background colour
    # canonical: every cross covers the same pixels (differs from its background there)
    masks = [np.abs(canon.render(i) - canon.render(i)[0, 0]).max(-1) > 0.05 for i in (cross, cross + 10, cross + 20)]
    assert masks[0].sum() > 50 and all(np.array_equal(masks[0], m) for m in masks[1:])
    fm = [np.abs(flat.render(i) - flat.render(i)[0, 0]).max(-1) > 0.05 for i in (cross, cross + 10, cross + 20)]
    assert not all(np.array_equal(fm[0], m) for m in fm[1:])  # the random pose moves it
    assert np.array_equal(diag.VariantShapes("random", resolution=32, num_classes=10).render(3),
                          diag.procedural.ProceduralShapes(resolution=32, num_classes=10).render(3))


def test_a_short_run_writes_results_and_samples(tmp_path):
    diag = load_benchmark("diag_dcgan")
    assert diag.main(["--seconds", "1", "--n", "20", "--n-train", "64", "--data", "canon",
                      "--out", str(tmp_path / "r")]) == 0
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["steps"] >= 1 and set(res["ema"]) == {"acc", "precision", "recall", "fid"}
    assert 0 <= res["raw"]["acc"] <= 1 and (tmp_path / "r.png").stat().st_size > 1000
