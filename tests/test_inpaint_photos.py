"""Default photo data (scikit-image's bundled photos) and ImageFolderFlat."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from attnorm.data.photos import (
    COLOR_PHOTOS, GRAY_PHOTOS, HELDOUT_PHOTOS, TRAIN_PHOTOS, ImageFolderFlat, SkimagePhotos,
    available_photos, load_photo, to_tensor,
)


def test_split_and_availability():
    assert set(TRAIN_PHOTOS).isdisjoint(HELDOUT_PHOTOS)
    assert set(TRAIN_PHOTOS) | set(HELDOUT_PHOTOS) == set(COLOR_PHOTOS) | set(GRAY_PHOTOS)
    avail = available_photos()
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera"):  # bundled since long ago
        assert name in avail
    assert len(SkimagePhotos("heldout", 32, crop="center")) == len(set(HELDOUT_PHOTOS) & set(avail))
    with pytest.raises(ValueError):
        SkimagePhotos("valid")


def test_value_mapping_and_grey_to_rgb():
    t = to_tensor(np.array([[0, 255], [51, 204]], dtype=np.uint8))
    assert t.shape == (3, 2, 2)
    torch.testing.assert_close(t[0], torch.tensor([[-1.0, 1.0], [-0.6, 0.6]]))
    cam = load_photo("camera")
    assert cam.shape[2] == 3 and (cam[..., 0] == cam[..., 2]).all()
    x = SkimagePhotos(names=["camera"], resolution=48, crop="center")[0]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_photo_samples_in_range_and_deterministic():
    ds = SkimagePhotos("train", 40, length=6, seed=3)
    a = torch.stack([ds[i] for i in range(6)])
    assert a.shape == (6, 3, 40, 40) and a.min() >= -1 and a.max() <= 1 and a.std() > 0.05
    b = SkimagePhotos("train", 40, length=6, seed=3)[4]
    assert torch.equal(a[4], b)
    ds.set_epoch(1)
    assert not torch.equal(ds[4], a[4])


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_folder_crops_are_exact_windows(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    _write(tmp_path / "sub" / "deeper" / "a.png", arr)
    ref = to_tensor(arr)
    # centre crop of a photo whose short side is the resolution: the middle window, unresampled
    c = ImageFolderFlat(tmp_path, 32, crop="center")[0]
    assert torch.equal(c, ref[:, :, 8:40])
    # random crop without rescale: some exact 32x32 window (possibly mirrored)
    ds = ImageFolderFlat(tmp_path, 32, crop="random", scale=(1.0, 1.0), seed=1)
    for epoch in range(3):
        ds.set_epoch(epoch)
        x = ds[0]
        windows = [ref[:, :, o:o + 32] for o in range(17)]
        assert any(torch.equal(x, wdw) or torch.equal(x, wdw.flip(-1)) for wdw in windows)


def test_folder_skips_corrupt_and_errors(tmp_path, caplog):
    rng = np.random.default_rng(1)
    for i in range(3):
        _write(tmp_path / f"d{i % 2}" / f"{i}.jpg", rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    _write(tmp_path / "grey.png", rng.integers(0, 256, (20, 24), dtype=np.uint8))
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    (tmp_path / "notes.txt").write_text("ignored")
    with caplog.at_level(logging.WARNING, logger="attnorm.data.photos"):
        ds = ImageFolderFlat(tmp_path, 16, crop="center")
    assert len(ds) == 4 and ds.num_skipped == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"ImageFolderFlat: skipped 1 unreadable file(s) under {tmp_path}: bad.png"]
    assert all(ds[i].shape == (3, 16, 16) for i in range(4))
    # a file that breaks after construction is skipped at load time
    ds2 = ImageFolderFlat(tmp_path, 16, crop="center", verify=False)
    assert len(ds2) == 5
    bad_index = [p.name for p in ds2.files].index("bad.png")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="attnorm.data.photos"):
        x = ds2[bad_index]
    assert [r.getMessage() for r in caplog.records] == [
        f"ImageFolderFlat: cannot read {tmp_path / 'bad.png'}, skipped (1 skipped so far)"]
    assert x.shape == (3, 16, 16) and ds2.num_skipped == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFolderFlat(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        ImageFolderFlat(tmp_path / "missing")
