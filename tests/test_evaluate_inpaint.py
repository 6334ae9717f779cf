"""evaluate_inpaint: metrics vs scikit-image on the saved 8-bit outputs, per-bin means, perfect
results, CSV/JSON/sheet contents, baselines, errors and the command."""

import csv
import json
import math
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from _cli import cli_error
from attnorm.checkpoints import save_inpaint_generator
from attnorm.cli import main
from attnorm.data.masks import write_eval_masks
from attnorm.data.photos import to_tensor
from attnorm.evaluation.inpaint import (
    PSNR_CAP, SheetPicker, biharmonic_method, evaluate_inpaint, generator_method, telea_method,
)
from attnorm.inference import inpaint_image
from attnorm.io import to_uint8
from attnorm.models.inpaint import InpaintGenerator

LABELS = ["0-10%", "10-20%", "20-30%", "30-40%", "40-50%", "50-60%", ">=60%"]


def _u8_images(n, h=40, w=40, seed=0):
    """Smooth-ish random uint8 photos (H, W, 3): the independent ground truths."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        f = rng.uniform(0.05, 0.3, size=(3, 2))
        img = 127.5 + 100 * np.sin(f[:, :1, None] * xx + f[:, 1:, None] * yy + rng.uniform(0, 6, (3, 1, 1)))
        img = img + rng.normal(0, 8, img.shape)
        out.append(np.clip(np.round(img), 0, 255).astype(np.uint8).transpose(1, 2, 0))
    return out


def _bar_mask(h, w, cols):
    m = torch.zeros(1, h, w)
    m[:, :, :cols] = 1
    return m


def _wobble(image, mask):
    """A deterministic 'method': a pattern of non-integer 8-bit offsets everywhere (the evaluator composites)."""
    h, w = image.shape[-2:]
    pat = torch.sin(torch.arange(h * w, dtype=torch.float32).reshape(1, h, w) * 0.37) * 0.2
    return (image + pat).clamp(-1, 1)


def test_per_image_metrics_match_skimage_on_saved_pngs(tmp_path):
    gts = _u8_images(3, 40, 48)
    masks = [_bar_mask(40, 48, c) for c in (5, 17, 30)]
    masks[1][:, 30:, 40:] = 1  # not just bars
    res = evaluate_inpaint(_wobble, [to_tensor(g) for g in gts], masks, tmp_path, save_outputs=True,
                           image_names=["a", "b", "c"])
    outs = sorted((tmp_path / "outputs").glob("*.png"))
    assert [p.name for p in outs] == ["00000_a_mask_00000.png", "00001_b_mask_00001.png", "00002_c_mask_00002.png"]
    for row, gt, m, p in zip(res["rows"], gts, masks, outs):
        out = np.asarray(Image.open(p))
        hole = m[0].numpy() >= 0.5
        assert np.array_equal(out[~hole], gt[~hole])  # composite: known pixels untouched
        assert not np.array_equal(out[hole], gt[hole])
        assert row["psnr"] == pytest.approx(peak_signal_noise_ratio(gt, out, data_range=255), abs=1e-9)
        assert row["ssim"] == pytest.approx(structural_similarity(gt, out, channel_axis=-1, data_range=255),
                                            abs=1e-9)
        diff = np.abs(out.astype(np.float64) - gt.astype(np.float64)) / 255
        assert row["l1"] == pytest.approx(diff.mean(), abs=1e-12)
        assert row["l1_hole"] == pytest.approx(diff[hole].mean(), abs=1e-12)
        shift = np.abs(out[hole].astype(np.float64).mean(0) - gt[hole].astype(np.float64).mean(0)).mean()
        assert row["color_shift"] == pytest.approx(shift, abs=1e-9)  # levels of 255
        bias = out[hole].astype(np.float64).mean(0) - gt[hole].astype(np.float64).mean(0)
        assert [row["bias_r"], row["bias_g"], row["bias_b"]] == pytest.approx(bias.tolist(), abs=1e-9)
        assert row["mse"] == pytest.approx((diff ** 2).mean(), abs=1e-12)
        assert row["area"] == pytest.approx(hole.mean())
    # CSV holds the same numbers, one row per pair
    with open(tmp_path / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "image", "mask", "area", "bin", "bin_label", "psnr", "ssim", "l1",
                             "l1_hole", "color_shift", "bias_r", "bias_g", "bias_b", "mse", "seconds"]
    assert [r["image"] for r in rows] == ["a", "b", "c"]
    for r, row in zip(rows, res["rows"]):
        for k in ("psnr", "ssim", "l1", "area"):
            assert float(r[k]) == row[k]


def test_metrics_are_on_8bit_quantised_outputs(tmp_path):
    gt = _u8_images(1, 24, 24)[0]
    m = _bar_mask(24, 24, 12)
    # less than half an 8-bit level off: rounds back to the ground truth
    res = evaluate_inpaint(lambda x, _m: x + 0.4 / 127.5, [to_tensor(gt)], [m], sheet=False)
    assert res["rows"][0]["l1"] == 0 and res["rows"][0]["psnr"] == PSNR_CAP
    # 0.6 of a level off: one level everywhere in the hole (where not clipped at 255)
    res = evaluate_inpaint(lambda x, _m: x + 0.6 / 127.5, [to_tensor(gt)], [m], sheet=False)
    hole = m[0].numpy() >= 0.5
    expected = np.minimum(gt.astype(int) + 1, 255) - gt
    assert res["rows"][0]["l1"] == pytest.approx(expected[hole].sum() / 255 / gt.size, abs=1e-12)


def test_per_bin_aggregation_hand_made_areas(tmp_path):
    h = w = 40  # 1600 pixels; bars of 40 x cols -> area cols / 40
    cols_and_bins = [(3, "0-10%"), (4, "10-20%"), (6, "10-20%"), (8, "20-30%"), (14, "30-40%"), (24, ">=60%")]
    masks = [_bar_mask(h, w, c) for c, _ in cols_and_bins]
    gts = _u8_images(2, h, w, seed=3)

    def grey(x, m):  # 0.0 -> 127.5 -> 128 in 8 bits (round half to even)
        return torch.zeros_like(x)

    res = evaluate_inpaint(grey, [to_tensor(g) for g in gts], masks, tmp_path, method_name="grey")
    s = res["summary"]
    assert s["num_pairs"] == 6  # max(2 images, 6 masks), paired modulo
    assert [r["image"] for r in res["rows"]] == ["00000", "00001"] * 3
    assert [r["bin_label"] for r in res["rows"]] == [b for _, b in cols_and_bins]
    # independent per-pair references, grouped by the hand-computed bins
    ref = {}
    for k, (c, b) in enumerate(cols_and_bins):
        gt = gts[k % 2]
        out = gt.copy()
        out[:, :c] = 128
        ref.setdefault(b, []).append((peak_signal_noise_ratio(gt, out, data_range=255),
                                      structural_similarity(gt, out, channel_axis=-1, data_range=255),
                                      np.abs(out.astype(float) - gt).mean() / 255))
    for label in LABELS:
        agg = s["per_bin"][label]
        if label not in ref:
            assert agg["count"] == 0 and agg["psnr"] is None
            continue
        vals = np.array(ref[label])
        assert agg["count"] == len(vals)
        assert agg["psnr"] == pytest.approx(vals[:, 0].mean(), abs=1e-9)
        assert agg["ssim"] == pytest.approx(vals[:, 1].mean(), abs=1e-9)
        assert agg["l1"] == pytest.approx(vals[:, 2].mean(), abs=1e-12)
    allv = np.concatenate([np.array(v) for v in ref.values()])
    assert s["total"]["count"] == 6
    assert s["total"]["psnr"] == pytest.approx(allv[:, 0].mean(), abs=1e-9)
    assert s["total"]["l1"] == pytest.approx(allv[:, 2].mean(), abs=1e-12)
    # JSON on disk: the same numbers, the protocol and the files
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["per_bin"]["10-20%"]["count"] == 2
    assert on_disk["per_bin"]["10-20%"]["psnr"] == pytest.approx(s["per_bin"]["10-20%"]["psnr"])
    p = on_disk["protocol"]
    assert p["resolution"] == ["40x40"] and p["num_images"] == 2 and p["num_masks"] == 6
    assert {"psnr", "ssim", "l1"} <= set(p["metrics"]) and "uint8" in p["quantisation"]
    assert on_disk["files"] == {"csv": "per_image.csv", "json": "summary.json", "sheet": "sheet.png"}
    # sheet: 4 worst + 2 remaining best of 6 pairs, each row = 3 tiles of 40 px + 2 gaps
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.size == (3 * 40 + 2 * 4, 14 + 6 * (40 + 14 + 4))


def test_identity_method_perfect_scores_capped_or_inf(tmp_path):
    gts = [to_tensor(g) for g in _u8_images(2, 32, 32)]
    masks = [_bar_mask(32, 32, 10)]  # 31.25% of the image
    res = evaluate_inpaint(lambda x, m: x.clone(), gts, masks, tmp_path / "cap")
    for r in res["rows"]:
        assert r["l1"] == 0 and r["l1_hole"] == 0 and r["mse"] == 0 and r["ssim"] == pytest.approx(1.0)
        assert r["psnr"] == PSNR_CAP == 100.0
    assert res["summary"]["total"]["psnr"] == 100.0
    res = evaluate_inpaint(lambda x, m: x.clone(), gts, masks, tmp_path / "inf", psnr_cap=None)
    assert all(math.isinf(r["psnr"]) for r in res["rows"]) and math.isinf(res["summary"]["total"]["psnr"])
    text = (tmp_path / "inf" / "summary.json").read_text()
    on_disk = json.loads(text)  # strict JSON: no Infinity literal
    assert "Infinity" not in text and on_disk["total"]["psnr"] == "inf"
    assert on_disk["per_bin"]["30-40%"]["psnr"] == "inf" and on_disk["protocol"]["psnr_cap"] is None
    with open(tmp_path / "inf" / "per_image.csv") as f:
        assert [r["psnr"] for r in csv.DictReader(f)] == ["inf", "inf"]


def test_mask_folder_and_size_errors(tmp_path):
    write_eval_masks(tmp_path / "m", 3, 32, "box", seed=4)
    gts = [to_tensor(g) for g in _u8_images(1, 32, 32)]
    res = evaluate_inpaint(_wobble, gts, tmp_path / "m", sheet=False)
    assert [r["mask"] for r in res["rows"]] == ["mask_00000.png", "mask_00001.png", "mask_00002.png"]
    ms = res["summary"]["protocol"]["mask_set"]
    assert ms["kind"] == "box" and ms["seed"] == 4 and ms["n"] == 3
    index = json.loads((tmp_path / "m" / "masks.json").read_text())["masks"]
    assert [r["area"] for r in res["rows"]] == pytest.approx([r["area"] for r in index])

    big = [to_tensor(g) for g in _u8_images(1, 64, 64)]
    with pytest.raises(ValueError, match="resize-masks"):
        evaluate_inpaint(_wobble, big, tmp_path / "m")
    res = evaluate_inpaint(_wobble, big, tmp_path / "m", resize_masks=True, sheet=False)
    assert [r["area"] for r in res["rows"]] == pytest.approx([r["area"] for r in index])  # nearest x2
    with pytest.raises(ValueError, match="empty data"):
        evaluate_inpaint(_wobble, [], tmp_path / "m")
    with pytest.raises(ValueError, match="empty mask set"):
        evaluate_inpaint(_wobble, gts, [])
    with pytest.raises(ValueError, match="returned shape"):
        evaluate_inpaint(lambda x, m: x[:, :-1], gts, tmp_path / "m")
    with pytest.raises(FileNotFoundError):
        evaluate_inpaint(_wobble, gts, tmp_path / "nope")


def _ramp(h=48, w=48):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1)  # linear in x, y: biharmonic reproduces it
    x = torch.from_numpy(ramp / 127.5 - 1).permute(2, 0, 1).float()
    m = torch.zeros(1, h, w)
    m[:, 15:30, 12:33] = 1
    return x, m


def test_biharmonic_baseline_reproduces_a_linear_ramp():
    x, m = _ramp()
    y = biharmonic_method()(x, m)
    hole = m[0] >= 0.5
    assert (y - x)[:, hole].abs().max() < 1e-4
    assert torch.equal(y[:, ~hole], x[:, ~hole])  # the baseline composites on its own


def test_telea_baseline_fills_constant_and_ramp():
    import cv2  # noqa: F401  (opencv-python-headless: optional for users, in the test extra)
    x, m = _ramp()
    h, w = x.shape[-2:]
    hole = m[0] >= 0.5
    const = torch.full((3, h, w), 0.2)
    const[1] = -0.4
    y = telea_method()(to_tensor(np.round((const.permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)), m)
    ref = torch.from_numpy(np.round((const.numpy() + 1) * 127.5) / 127.5 - 1).float()
    # a constant image is filled with (nearly: OpenCV's Telea is off by up to 3 levels) the constant
    assert (y - ref).abs().max() <= 4 / 127.5 and (y - ref).abs().mean() < 1 / 127.5
    assert torch.equal(y[:, ~hole], ref[:, ~hole])
    z = telea_method()(x, m)
    assert torch.equal(z[:, ~hole], x[:, ~hole]) and (z - x)[:, hole].abs().mean() < 0.1  # near the ramp


def test_telea_without_opencv_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # `import cv2` raises ImportError
    with pytest.raises(ImportError, match="pip install opencv-python-headless"):
        telea_method()


class _Counted:
    """A score that counts the comparisons made on it."""

    calls = 0

    def __init__(self, v):
        self.v = v

    def _cmp(self, other, op):
        type(self).calls += 1
        return op(self.v, other.v)

    def __lt__(self, other):
        return self._cmp(other, lambda a, b: a < b)

    def __eq__(self, other):
        return self._cmp(other, lambda a, b: a == b)


def test_sheet_picker_matches_a_full_sort_in_linear_time():
    rng = np.random.default_rng(0)
    for n in (1, 3, 6, 8, 9, 50):
        scores = rng.integers(0, 5, n).astype(float)  # ties: broken by position
        picker = SheetPicker(k=4)
        for pos, v in enumerate(scores):
            picker.add(pos, v, ("images", pos))
        order = sorted(range(n), key=lambda i: (scores[i], i))  # the reference: sort once, at the end
        worst = order[:4]
        best = [i for i in reversed(order) if i not in worst][:4]
        assert picker.cases() == [(f"worst {j + 1}", p) for j, p in enumerate(worst)] + \
            [(f"best {j + 1}", p) for j, p in enumerate(best)]
        assert set(picker.arrays) == set(worst + best)  # images kept only for the sheet's pairs
        assert all(picker.arrays[p] == ("images", p) for p in picker.arrays)
    # O(k) comparisons per pair: re-sorting every row at every pair would be O(n^2 log n)
    n = 3000
    _Counted.calls = 0
    picker = SheetPicker(k=4)
    for pos, v in enumerate(rng.normal(size=n)):
        picker.add(pos, _Counted(v), None)
    assert _Counted.calls < 20 * n


def _write_pngs(folder, arrays):
    folder.mkdir(parents=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"img_{i}.png")


def test_command_generator_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    g = InpaintGenerator(width=0.125).eval()
    save_inpaint_generator(tmp_path / "g.pt", g)
    gts = _u8_images(2, 32, 32, seed=5)
    _write_pngs(tmp_path / "data", gts)
    write_eval_masks(tmp_path / "m", 2, 32, "box", seed=1)
    assert main(["evaluate", "inpaint", "--ckpt", str(tmp_path / "g.pt"), "--data", str(tmp_path / "data"),
                 "--masks", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--size", "32",
                 "--save-outputs", "--quiet"]) == 0
    assert "all" in capsys.readouterr().out
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["num_pairs"] == 2 and s["method"].startswith("generator:")
    out = np.asarray(Image.open(tmp_path / "o" / "outputs" / "00000_img_0_mask_00000.png"))
    m = torch.from_numpy(np.asarray(Image.open(tmp_path / "m" / "mask_00000.png")) >= 128).float()[None]
    expected = inpaint_image(g, to_tensor(gts[0]), m)
    expected_u8 = ((expected + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    assert np.array_equal(out, expected_u8)
    r = evaluate_inpaint(generator_method(g), [to_tensor(gts[0])], [m], sheet=False)["rows"][0]
    with open(tmp_path / "o" / "per_image.csv") as f:
        assert float(next(csv.DictReader(f))["psnr"]) == pytest.approx(r["psnr"])


def test_command_errors_and_heldout_default(tmp_path, capsys):
    write_eval_masks(tmp_path / "m", 2, 32, "center")
    base = ["evaluate", "inpaint", "--masks", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--size", "32"]
    assert re.search("checkpoint .* not found", cli_error(capsys, base + ["--ckpt", str(tmp_path / "missing.pt")]))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "junk.pt is not a PyTorch checkpoint" in cli_error(capsys, base + ["--ckpt", str(tmp_path / "junk.pt")])
    (tmp_path / "empty").mkdir()
    assert "empty data" in cli_error(capsys, base + ["--method", "biharmonic", "--data", str(tmp_path / "empty")])
    line = cli_error(capsys, base[:-1] + ["48", "--method", "biharmonic", "--data", str(tmp_path / "m")])
    assert "image is (48, 48)" in line
    line = cli_error(capsys, base + ["--method", "biharmonic", "--ckpt", "x.pt"])  # exclusive: a usage error
    assert "not allowed with argument" in line
    # default data: the held-out skimage photos, centre-cropped to --size
    assert main(base + ["--method", "biharmonic", "--heldout", "--pairs", "4", "--quiet"]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    with open(tmp_path / "o" / "per_image.csv") as f:
        assert [r["image"] for r in csv.DictReader(f)] == ["coffee", "rocket", "camera", "gravel"]
    assert s["protocol"]["resolution"] == ["32x32"] and s["per_bin"]["20-30%"]["count"] == 4


def test_command_progress_lines_and_quiet(tmp_path, capsys):
    write_eval_masks(tmp_path / "m", 2, 32, "center")
    base = ["evaluate", "inpaint", "--method", "biharmonic", "--masks", str(tmp_path / "m"), "--size", "32"]
    assert main(base + ["--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "[1/4] 00000_coffee_mask_00000: PSNR" in out and "[4/4] 00003_gravel_mask_00001: PSNR" in out
    assert main(base + ["--out", str(tmp_path / "b"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "[1/4]" not in out  # the summary table, no progress lines


def test_fid_over_composites_equals_the_maths(tmp_path):
    from attnorm.metrics import feature_statistics, frechet_distance, get_extractor

    images = [to_tensor(a) for a in _u8_images(5)]
    masks = [_bar_mask(40, 40, cols) for cols in (4, 9, 15, 22, 30)]
    res = evaluate_inpaint(_wobble, images, masks, tmp_path, fid="classifier", sheet=False)
    ext = get_extractor("classifier")
    as_input = lambda u8: torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    fake, real = [], []
    for x, m in zip(images, masks):
        hole = m[0] >= 0.5
        comp = torch.where(hole.expand_as(x), _wobble(x, m), x)
        fake.append(ext.features(as_input(to_uint8(comp))))
        real.append(ext.features(as_input(to_uint8(x))))
    expected = frechet_distance(*feature_statistics(np.concatenate(fake)),
                                *feature_statistics(np.concatenate(real)))
    assert res["summary"]["total"]["fid"] == pytest.approx(expected, rel=1e-9)
    assert expected > 0
    assert "fid" in json.loads((tmp_path / "summary.json").read_text())["total"]
    identity = evaluate_inpaint(lambda x, m: x, images, masks, None, fid="classifier", sheet=False)
    assert identity["summary"]["total"]["fid"] == pytest.approx(0.0, abs=1e-6)
