"""Probe suite, part 1: bad and unusual image / mask files and unwritable image outputs (issue 12).

Cases X1 (16-bit / float images), X6 (inpaint output on a full disk), X7 (EXIF orientation),
M1 (corrupt inputs; folders skip and count), M2 (decompression bombs), M3 (output path of
inpaint), M4 (unwritable output), M18 (broken mask in an evaluation set), and the cases that
already behaved: P01/P02 (missing image / mask), P06-P08 (broken files in data folders are
skipped and counted), P14 (mask of another size).
"""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from _probe import digest, file_size_limit, probe, run_ok, snapshot
from attnorm.data.folder import ImageFolderDataset
from attnorm.data.masks import load_mask
from attnorm.data.photos import ImageFolderFlat
from attnorm.io import read_rgb


def _rgb(h=32, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(h=32, w=48, box=(8, 16, 10, 20)):
    m = np.zeros((h, w), np.uint8)
    m[box[0]:box[1], box[2]:box[3]] = 255
    return m


@pytest.fixture
def pair(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "img.png")
    Image.fromarray(_mask()).save(tmp_path / "mask.png")
    return tmp_path / "img.png", tmp_path / "mask.png"


def _inpaint(gen, image, mask, out, *extra):
    return ["inpaint", "--ckpt", gen, "--image", image, "--mask", mask, "--out", out, *extra]


def _known_equal(out_path, expected_rgb, mask_u8):
    out = np.asarray(Image.open(out_path))
    known = mask_u8 < 128
    np.testing.assert_array_equal(out[known], expected_rgb[known])
    return out


# ---------------------------------------------------------------------------- X1
def test_x1_16bit_and_float_images_keep_their_range(tmp_path, capsys, inpaint_gen):
    grey16 = (np.arange(32 * 48, dtype=np.float64).reshape(32, 48) / (32 * 48 - 1) * 65535).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    f01 = (np.arange(32 * 48, dtype=np.float32).reshape(32, 48) / (32 * 48 - 1))
    Image.fromarray(f01, mode="F").save(tmp_path / "f.tiff")
    Image.fromarray(_mask()).save(tmp_path / "mask.png")
    expected16 = np.repeat(np.round(grey16 / 257.0).astype(np.uint8)[..., None], 3, 2)
    expectedf = np.repeat(np.round(f01 * 255.0).astype(np.uint8)[..., None], 3, 2)
    for name, expected in (("g16.png", expected16), ("f.tiff", expectedf)):
        np.testing.assert_array_equal(np.asarray(read_rgb(tmp_path / name)), expected)
        run_ok(capsys, _inpaint(inpaint_gen, tmp_path / name, tmp_path / "mask.png", tmp_path / f"o_{name}.png"))
        out = _known_equal(tmp_path / f"o_{name}.png", expected, _mask())
        assert (out == 255).mean() < 0.05 and (out == 0).mean() < 0.05  # neither white nor black
    # the data loaders of train-gan, train-inpaint and evaluate read it the same way
    Image.fromarray(expected16).save(tmp_path / "g8.png")
    for sub in ("a", "b"):
        (tmp_path / "cls" / sub).mkdir(parents=True)
        (tmp_path / "flat" / sub).mkdir(parents=True)
    for name in ("g16.png", "g8.png"):
        for root in ("cls", "flat"):
            dst = tmp_path / root / ("a" if name == "g16.png" else "b") / "x.png"
            dst.write_bytes((tmp_path / name).read_bytes())
    ds = ImageFolderDataset(tmp_path / "cls", resolution=16, hflip=False)
    torch.testing.assert_close(ds[0][0], ds[1][0], rtol=0, atol=0)
    flat = ImageFolderFlat(tmp_path / "flat", resolution=16, crop="center")
    torch.testing.assert_close(flat[0], flat[1], rtol=0, atol=0)
    # a float mask in [0, 1] is a mask, not an empty one
    Image.fromarray((_mask() / 255.0).astype(np.float32), mode="F").save(tmp_path / "mf.tiff")
    assert torch.equal(load_mask(tmp_path / "mf.tiff"), load_mask(tmp_path / "mask.png"))
    assert load_mask(tmp_path / "mf.tiff").sum() == 80


# ---------------------------------------------------------------------------- X6
def test_x6_inpaint_output_on_a_full_disk_keeps_the_old_file(tmp_path, capsys, inpaint_gen):
    Image.fromarray(_rgb(128, 128)).save(tmp_path / "img.png")
    Image.fromarray(_mask(128, 128)).save(tmp_path / "mask.png")
    out = tmp_path / "out" / "result.png"
    out.parent.mkdir()
    out.write_bytes(b"precious old result")
    with file_size_limit(4096):
        line = probe(capsys, _inpaint(inpaint_gen, tmp_path / "img.png", tmp_path / "mask.png", out),
                     f"cannot write {out}", "write elsewhere", "the previous file is unchanged")
    assert "File too large" in line
    assert out.read_bytes() == b"precious old result"
    assert sorted(p.name for p in out.parent.iterdir()) == ["result.png"]  # no temporary file left


# ---------------------------------------------------------------------------- X7
def test_x7_exif_orientation_is_applied_to_image_and_mask(tmp_path, capsys, inpaint_gen):
    stored = _rgb(32, 48)  # stored 48 wide, 32 high; Orientation 6: displayed 32 wide, 48 high
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "photo.png", exif=exif)
    upright = np.asarray(read_rgb(tmp_path / "photo.png"))
    assert upright.shape == (48, 32, 3)
    np.testing.assert_array_equal(upright, np.rot90(stored, k=-1))  # 6: rotate 90 degrees clockwise to display
    mask = _mask(48, 32, box=(30, 40, 4, 12))  # drawn on the photo as displayed
    Image.fromarray(mask).save(tmp_path / "mask.png")
    run_ok(capsys, _inpaint(inpaint_gen, tmp_path / "photo.png", tmp_path / "mask.png", tmp_path / "out.png"))
    out = _known_equal(tmp_path / "out.png", upright, mask)
    assert out.shape == (48, 32, 3)  # displays like the input
    # --resize-mask of a half-size mask puts the hole at the same displayed place
    Image.fromarray(mask[::2, ::2]).save(tmp_path / "half.png")
    run_ok(capsys, _inpaint(inpaint_gen, tmp_path / "photo.png", tmp_path / "half.png", tmp_path / "out2.png",
                            "--resize-mask"))
    _known_equal(tmp_path / "out2.png", upright, mask)
    # the mask's own orientation counts too
    mim = Image.fromarray(np.ascontiguousarray(np.rot90(mask, k=1)))  # stored rotated back, tagged 6
    mexif = mim.getexif()
    mexif[0x0112] = 6
    mim.save(tmp_path / "mask6.png", exif=mexif)
    assert torch.equal(load_mask(tmp_path / "mask6.png"), load_mask(tmp_path / "mask.png"))


# ---------------------------------------------------------------------------- M1
def test_m1_corrupt_empty_or_non_image_input_is_one_line(tmp_path, capsys, inpaint_gen, pair):
    img, mask = pair
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "trunc.png").write_bytes(img.read_bytes()[:200])
    out = tmp_path / "o.png"
    probe(capsys, _inpaint(inpaint_gen, tmp_path / "empty.png", mask, out), "empty.png: empty file (0 bytes)",
          "pass an image file")
    probe(capsys, _inpaint(inpaint_gen, tmp_path / "text.png", mask, out), "text.png: not an image file")
    probe(capsys, _inpaint(inpaint_gen, tmp_path / "trunc.png", mask, out), "trunc.png: truncated or corrupt")
    probe(capsys, _inpaint(inpaint_gen, img, tmp_path / "empty.png", out), "empty.png: empty file")
    probe(capsys, _inpaint(inpaint_gen, img, tmp_path / "text.png", out), "text.png: not an image file")
    assert not out.exists()


def test_m1_folder_mode_skips_and_counts_bad_pairs(tmp_path, capsys, inpaint_gen):
    for d in ("imgs", "masks"):
        (tmp_path / d).mkdir()
    for stem in ("a", "b", "c", "d"):
        Image.fromarray(_rgb(seed=ord(stem))).save(tmp_path / "imgs" / f"{stem}.png")
        Image.fromarray(_mask()).save(tmp_path / "masks" / f"{stem}.png")
    (tmp_path / "imgs" / "b.png").write_bytes(b"")                      # empty image
    (tmp_path / "masks" / "c.png").write_text("junk")                   # non-image mask
    Image.fromarray(_mask(10, 10)).save(tmp_path / "masks" / "d.png")   # mask of another size
    out = run_ok(capsys, ["inpaint", "--ckpt", inpaint_gen, "--image", tmp_path / "imgs", "--mask",
                          tmp_path / "masks", "--out", tmp_path / "out"])
    assert "inpainted 1 of 4 pairs; skipped 3" in out
    assert "b.png: empty file" in out and "c.png: not an image file" in out and "--resize-mask" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png"]
    # nothing readable: an error line
    for stem in ("a",):
        (tmp_path / "imgs" / f"{stem}.png").write_bytes(b"")
    probe(capsys, ["inpaint", "--ckpt", inpaint_gen, "--image", tmp_path / "imgs", "--mask", tmp_path / "masks",
                   "--out", tmp_path / "out2"], "none of the 4 pairs", "empty file")


# ---------------------------------------------------------------------------- M2
def test_m2_decompression_bomb_is_refused_or_skipped(tmp_path, capsys, inpaint_gen, pair, monkeypatch):
    img, mask = pair
    Image.new("1", (14000, 14000)).save(tmp_path / "bomb.png")  # 196 M pixels in 24 kB
    probe(capsys, _inpaint(inpaint_gen, tmp_path / "bomb.png", mask, tmp_path / "o.png"),
          "bomb.png: more than", "decompression bomb", "downscale it")
    monkeypatch.setenv("ATTNORM_MAX_IMAGE_PIXELS", str(40 * 40))  # attnorm's own limit, below Pillow's
    Image.fromarray(_rgb(48, 48)).save(tmp_path / "big.png")
    probe(capsys, _inpaint(inpaint_gen, tmp_path / "big.png", mask, tmp_path / "o.png"),
          "big.png: 48x48 = 2,304 pixels is over the limit of 1,600", "ATTNORM_MAX_IMAGE_PIXELS")
    assert not (tmp_path / "o.png").exists()
    # in data folders they are skipped and counted: train-gan and train-inpaint
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(_rgb(24, 24, seed=i)).save(tmp_path / "data" / c / f"{i}.png")
    Image.fromarray(_rgb(48, 48)).save(tmp_path / "data" / "b" / "huge.png")
    (tmp_path / "data" / "b" / "bomb.png").write_bytes((tmp_path / "bomb.png").read_bytes())
    out = run_ok(capsys, ["train-gan", "--data", tmp_path / "data", "--out", tmp_path / "run", "--steps", "1",
                          "--batch-size", "2", "--resolution", "16", "ch=8", "samples_per_class=1"])
    assert f"skipped 2 unreadable image file(s) under {tmp_path / 'data'}" in out
    assert "(4 images" in out.replace("2 classes, ", "(")
    out = run_ok(capsys, ["train-inpaint", "--data", tmp_path / "data", "--out", tmp_path / "irun", "--steps", "1",
                          "--batch-size", "2", "--resolution", "16", "width=0.125", "critic=none",
                          "num_entities=4", "sample_count=1"])
    assert "skipped 2 unreadable file(s)" in out and "(4 images" in out


# ---------------------------------------------------------------------------- M3 (inpaint) / M4
def test_m3_inpaint_output_path_missing_folder_or_extension(tmp_path, capsys, inpaint_gen, pair):
    img, mask = pair
    probe(capsys, _inpaint(inpaint_gen, img, mask, tmp_path / "result"), "--out", "has no extension",
          "e.g. " + str(tmp_path / "result.png"))
    probe(capsys, _inpaint(inpaint_gen, img, mask, tmp_path / "r.xyz"), "ends with '.xyz'")
    assert not list(tmp_path.glob("result*")) and not (tmp_path / "r.xyz").exists()
    run_ok(capsys, _inpaint(inpaint_gen, img, mask, tmp_path / "new" / "deeper" / "r.png"))  # folders created
    assert (tmp_path / "new" / "deeper" / "r.png").is_file()


def test_m4_unwritable_output_location(tmp_path, capsys, inpaint_gen, pair, monkeypatch):
    img, mask = pair
    (tmp_path / "afile").write_text("x")
    probe(capsys, _inpaint(inpaint_gen, img, mask, tmp_path / "afile" / "o.png"), "is a file, not a folder")
    (tmp_path / "adir.png").mkdir()
    probe(capsys, _inpaint(inpaint_gen, img, mask, tmp_path / "adir.png"), "is a folder; give a file name")
    # a permission error at the final rename (what a read-only folder gives): old file kept
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "o.png").write_bytes(b"old")

    def denied(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))
    monkeypatch.setattr(os, "replace", denied)
    probe(capsys, _inpaint(inpaint_gen, img, mask, tmp_path / "ro" / "o.png"), "Permission denied",
          "no permission to write there; choose another path", "the previous file is unchanged")
    monkeypatch.undo()
    assert snapshot(tmp_path / "ro") == {"o.png": digest(tmp_path / "ro" / "o.png")}
    assert (tmp_path / "ro" / "o.png").read_bytes() == b"old"
    if os.geteuid() != 0:  # root writes anywhere; a real read-only folder for everybody else
        (tmp_path / "ro").chmod(0o555)
        try:
            probe(capsys, _inpaint(inpaint_gen, img, mask, tmp_path / "ro" / "o.png"), "no permission to write")
        finally:
            (tmp_path / "ro").chmod(0o755)


# ---------------------------------------------------------------------------- M18
def test_m18_zero_byte_mask_in_an_evaluation_set_is_skipped_and_counted(tmp_path, capsys):
    run_ok(capsys, ["masks", "--out", tmp_path / "m", "--n", "3", "--size", "32", "--kind", "center"])
    (tmp_path / "m" / "mask_00001.png").write_bytes(b"")
    out = run_ok(capsys, ["evaluate", "inpaint", "--method", "pushpull", "--masks", tmp_path / "m", "--out",
                          tmp_path / "e", "--size", "32", "--pairs", "4"])
    assert "skipped 1 unreadable mask file(s)" in out and "mask_00001.png (empty file (0 bytes))" in out
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["protocol"]["mask_set"]["skipped"] == [{"file": "mask_00001.png", "reason": "empty file (0 bytes)"}]
    assert summary["protocol"]["num_masks"] == 2 and summary["total"]["count"] == 4
    for f in ("mask_00000.png", "mask_00002.png"):
        (tmp_path / "m" / f).write_bytes(b"junk")
    probe(capsys, ["evaluate", "inpaint", "--method", "pushpull", "--masks", tmp_path / "m", "--out", tmp_path / "e2",
                   "--size", "32"], "none of the 3 mask files", "attnorm masks")


# ---------------------------------------------------------------------------- already handled
def test_p01_p02_missing_image_or_mask(tmp_path, capsys, inpaint_gen, pair):
    img, mask = pair
    probe(capsys, _inpaint(inpaint_gen, tmp_path / "nope.png", mask, tmp_path / "o.png"), "nope.png not found")
    probe(capsys, _inpaint(inpaint_gen, img, tmp_path / "nope.png", tmp_path / "o.png"),
          "mask file", "nope.png not found")


def test_p06_p07_p08_broken_files_in_data_folders_are_skipped_and_counted(tmp_path, capsys):
    for c in ("a", "b"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(_rgb(24, 24, seed=i)).save(tmp_path / "data" / c / f"{i}.png")
    (tmp_path / "data" / "a" / "zero.png").write_bytes(b"")
    (tmp_path / "data" / "b" / "text.jpg").write_text("hello")
    out = run_ok(capsys, ["train-gan", "--data", tmp_path / "data", "--out", tmp_path / "g", "--steps", "1",
                          "--batch-size", "2", "--resolution", "16", "ch=8", "samples_per_class=1"])  # P06
    assert "skipped 2 unreadable image file(s)" in out and "(2 classes, 4 images" in out
    out = run_ok(capsys, ["train-inpaint", "--data", tmp_path / "data", "--out", tmp_path / "i", "--steps", "1",
                          "--batch-size", "2", "--resolution", "16", "width=0.125", "critic=none",
                          "num_entities=4", "sample_count=1"])  # P07
    assert "skipped 2 unreadable file(s)" in out
    write = run_ok(capsys, ["masks", "--out", tmp_path / "m", "--n", "2", "--size", "16", "--kind", "center"])
    assert "wrote 2 center masks" in write
    out = run_ok(capsys, ["evaluate", "inpaint", "--method", "pushpull", "--data", tmp_path / "data" / "a",
                          "--masks", tmp_path / "m", "--out", tmp_path / "e", "--size", "16"])  # P08
    assert "skipped 1 unreadable file(s)" in out
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["protocol"]["num_images"] == 2


def test_p14_mask_of_another_size_needs_resize_mask(tmp_path, capsys, inpaint_gen, pair):
    img, _ = pair
    Image.fromarray(_mask(16, 24, box=(4, 8, 5, 10))).save(tmp_path / "small.png")
    probe(capsys, _inpaint(inpaint_gen, img, tmp_path / "small.png", tmp_path / "o.png"),
          "is (16, 24) (H, W) but image", "pass --resize-mask")
    run_ok(capsys, _inpaint(inpaint_gen, img, tmp_path / "small.png", tmp_path / "o.png", "--resize-mask"))
    _known_equal(tmp_path / "o.png", _rgb(), _mask())


def test_p04_p05_missing_data_folder_or_one_without_classes(tmp_path, capsys):
    probe(capsys, ["train-gan", "--data", tmp_path / "nope", "--out", tmp_path / "g"], "does not exist",
          "pass --data pointing to an image folder")
    probe(capsys, ["train-inpaint", "--data", tmp_path / "nope", "--out", tmp_path / "i"], "nope does not exist")
    (tmp_path / "flat").mkdir()
    Image.fromarray(_rgb()).save(tmp_path / "flat" / "a.png")
    probe(capsys, ["train-gan", "--data", tmp_path / "flat", "--out", tmp_path / "g"], "has no class subfolders",
          "one subfolder per class")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flat"]
