"""`attnorm masks`: files + index written, deterministic, bins consistent with the PNGs' own areas."""

import csv
import json
import logging

import numpy as np
import pytest
from PIL import Image

from _cli import cli_error
from attnorm.cli import main

LABELS = ["0-10%", "10-20%", "20-30%", "30-40%", "40-50%", "50-60%", ">=60%"]


def _run(out, *extra):
    return main(["masks", "--out", str(out), *extra])


def _png_area(path):
    arr = np.asarray(Image.open(path))
    assert arr.ndim == 2 and set(np.unique(arr)) <= {0, 255}
    return int((arr == 255).sum()), arr.size


def _bin_of(holes, pixels):
    return min((10 * holes) // pixels, 6)  # independent integer binning


def test_writes_files_and_index_and_prints_counts(tmp_path, capsys):
    out = tmp_path / "m"
    assert _run(out, "--n", "7", "--size", "48", "--kind", "free", "--seed", "1") == 0
    printed = capsys.readouterr().out
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"mask_{i:05d}.png" for i in range(7)]
    meta = json.loads((out / "masks.json").read_text())
    assert meta["kind"] == "free_form" and meta["seed"] == 1 and meta["n"] == 7 and meta["size"] == [48, 48]
    with open(out / "masks.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == pngs
    counts = dict.fromkeys(LABELS, 0)
    for rec, row in zip(meta["masks"], rows):
        holes, pixels = _png_area(out / rec["file"])
        assert rec["area"] == pytest.approx(holes / pixels, abs=1e-7)
        assert float(row["area"]) == pytest.approx(holes / pixels, abs=1e-7)
        b = _bin_of(holes, pixels)
        assert rec["bin"] == b == int(row["bin"]) and rec["bin_label"] == LABELS[b] == row["bin_label"]
        counts[LABELS[b]] += 1
    assert meta["bin_counts"] == counts
    # the printed table: one line per bin with its count, and the total
    lines = {ln.split()[0]: int(ln.split()[1]) for ln in printed.splitlines()
             if ln.split() and ln.split()[0] in LABELS + ["total"]}
    assert lines == {**counts, "total": 7}


def test_deterministic_and_seed_dependent(tmp_path):
    args = ("--n", "5", "--size", "40", "--kind", "mixed", "--seed", "9")
    _run(tmp_path / "a", *args)
    _run(tmp_path / "b", *args)
    _run(tmp_path / "c", "--n", "5", "--size", "40", "--kind", "mixed", "--seed", "10")
    for name in ["masks.json", "masks.csv"] + [f"mask_{i:05d}.png" for i in range(5)]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    a = [np.asarray(Image.open(tmp_path / "a" / f"mask_{i:05d}.png")) for i in range(5)]
    c = [np.asarray(Image.open(tmp_path / "c" / f"mask_{i:05d}.png")) for i in range(5)]
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))


def test_center_box_and_rectangular_size(tmp_path):
    _run(tmp_path / "c", "--n", "2", "--size", "40", "--kind", "center")
    arr = np.asarray(Image.open(tmp_path / "c" / "mask_00000.png"))
    expected = np.zeros((40, 40), np.uint8)
    expected[10:30, 10:30] = 255
    assert np.array_equal(arr, expected)
    meta = json.loads((tmp_path / "c" / "masks.json").read_text())
    assert [r["bin_label"] for r in meta["masks"]] == ["20-30%", "20-30%"]  # exactly 25%

    _run(tmp_path / "r", "--n", "3", "--size", "32", "64", "--kind", "box", "--seed", "2")
    for i in range(3):
        holes, pixels = _png_area(tmp_path / "r" / f"mask_{i:05d}.png")
        assert np.asarray(Image.open(tmp_path / "r" / f"mask_{i:05d}.png")).shape == (32, 64)
        assert 0.14 < holes / pixels <= 0.25  # box sides in [3/8, 1/2] of each image side


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):  # not a choice: argparse's usage error
        _run(tmp_path / "x", "--kind", "stars")
    assert "--n must be >= 1" in cli_error(capsys, ["masks", "--out", str(tmp_path / "x"), "--n", "0"])
    line = cli_error(capsys, ["masks", "--out", str(tmp_path / "x"), "--size", "8", "8", "8"])
    assert "--size takes one int" in line


def test_large_masks_are_reported(tmp_path, caplog):
    from attnorm.data.masks import write_eval_masks
    with caplog.at_level(logging.WARNING, logger="attnorm.data.masks"):
        records = write_eval_masks(tmp_path / "thick", 3, 32, "free_form", seed=0, width_range=(300.0, 400.0))
    big = sum(r["bin"] == 6 for r in records)
    assert big > 0
    assert [r.getMessage() for r in caplog.records] == [
        f"{big} of 3 masks cover >= 60% of the image (LaMa-style evaluation usually drops them)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="attnorm.data.masks"):
        write_eval_masks(tmp_path / "thin", 3, 32, "center")
    assert not caplog.records
