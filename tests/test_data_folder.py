"""Class-subfolder image dataset (attnorm.data.folder)."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from attnorm.data.folder import ImageFolderDataset, load_rgb


def _save(path, mode, size, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    arr = np.full((size[1], size[0]) + ((channels,) if channels else ()), value, np.uint8)
    Image.fromarray(arr, mode=mode).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    _save(root / "apple" / "a.png", "RGB", (40, 20), 200)
    _save(root / "apple" / "b.png", "L", (20, 20), 100)  # grayscale -> RGB
    _save(root / "banana" / "c.png", "RGBA", (16, 32), 50)  # RGBA -> RGB
    (root / "banana" / "broken.png").write_bytes(b"not an image at all")
    (root / "banana" / "notes.txt").write_text("ignored: not an image extension")
    # a JPEG that passes the header check but is truncated: fails at decode time
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        root / "banana" / "z_trunc.jpg", quality=95)
    data = (root / "banana" / "z_trunc.jpg").read_bytes()
    (root / "banana" / "z_trunc.jpg").write_bytes(data[: len(data) // 3])
    return root


def test_classes_labels_and_corrupt_files_counted(folder, caplog):
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(folder, resolution=16, hflip=False)
    assert ds.classes == ["apple", "banana"] and ds.num_classes == 2
    assert ds.num_skipped == 1 and ds.skipped[0][0].endswith("broken.png")
    assert "skipped 1 unreadable" in caplog.text
    assert [lbl for _, lbl in ds.samples] == [0, 0, 1, 1]
    x, y = ds.get_batch(range(3))
    assert x.shape == (3, 3, 16, 16) and y.tolist() == [0, 0, 1]
    # exact pixel values: constant images map v -> v / 127.5 - 1 in every channel
    torch.testing.assert_close(x[0], torch.full((3, 16, 16), 200 / 127.5 - 1))
    torch.testing.assert_close(x[1], torch.full((3, 16, 16), 100 / 127.5 - 1))
    torch.testing.assert_close(x[2], torch.full((3, 16, 16), 50 / 127.5 - 1))
    # the truncated JPEG fails on load: counted and replaced by the next image
    with caplog.at_level(logging.WARNING):
        x3, y3 = ds[3]
    assert ds.num_skipped == 2 and ds.skipped[1][0].endswith("z_trunc.jpg")
    assert torch.equal(x3, ds[0][0]) and y3 == 0


def test_resize_centre_crop_and_flip(tmp_path):
    root = tmp_path / "d"
    arr = np.zeros((20, 40, 3), np.uint8)  # h=20, w=40: left half black, right half white
    arr[:, 20:] = 255
    (root / "c").mkdir(parents=True)
    Image.fromarray(arr).save(root / "c" / "x.png")
    out = load_rgb(root / "c" / "x.png", 10)
    assert out.shape == (10, 10, 3)  # 20x40 -> 10x20 -> centre crop of columns 5..15
    assert out[:, :4].max() < 30 and out[:, 6:].min() > 225
    ds = ImageFolderDataset(root, resolution=10, hflip=True)
    torch.manual_seed(0)
    flips = []
    for _ in range(20):
        x, _ = ds[0]
        flips.append(bool(x[0, 0, 0] > 0))  # left column white -> flipped
    assert 3 <= sum(flips) <= 17
    torch.manual_seed(0)
    again = [bool(ds[0][0][0, 0, 0] > 0) for _ in range(20)]
    assert again == flips  # flips follow torch's global RNG: reproducible (and resumable)


def test_errors_name_the_path_and_fix(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist.*one subfolder per class"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match=r"flat.*no class subfolders"):
        ImageFolderDataset(tmp_path / "flat")
    (tmp_path / "emptycls" / "a").mkdir(parents=True)
    (tmp_path / "emptycls" / "a" / "bad.png").write_bytes(b"xx")
    with pytest.raises(ValueError, match=r"\['a'\].*no readable images"):
        ImageFolderDataset(tmp_path / "emptycls")
