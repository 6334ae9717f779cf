"""attnorm.io: the one image-extension list (every reader of image folders uses it), atomic writes,
to_uint8 and read_rgb against direct Pillow / numpy references."""

import numpy as np
import pytest
import torch
from PIL import Image

from attnorm.data.folder import ImageFolderDataset
from attnorm.data.masks import MaskGenerator
from attnorm.data.photos import ImageFolderFlat
from attnorm.evaluation.inpaint import load_mask_set
from attnorm.io import IMAGE_EXTENSIONS, atomic_write, list_images, read_rgb, to_uint8

# what Pillow writes for each ending (the .tif/.tiff/.jpeg pairs are the same format)
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP",
            ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM", ".pgm": "PPM"}


def _one_file_per_extension(folder, mode="RGB"):
    folder.mkdir(parents=True)
    for i, ext in enumerate(IMAGE_EXTENSIONS):
        img = Image.fromarray(np.full((12, 12, 3), 40 + 10 * i, np.uint8))
        img = img.convert("L") if ext == ".pgm" or mode == "L" else img
        img.save(folder / f"f{i:02d}{ext.upper() if i % 2 else ext}", format=_FORMATS[ext])  # any case
    (folder / "notes.txt").write_text("not an image")
    return sorted(folder.glob("f*"))


def test_every_folder_reader_takes_every_listed_extension(tmp_path):
    assert set(_FORMATS) == set(IMAGE_EXTENSIONS)
    files = _one_file_per_extension(tmp_path / "flat")
    assert list_images(tmp_path / "flat") == files
    flat = ImageFolderFlat(tmp_path / "flat", 8, crop="center")
    assert flat.files == files and flat.num_skipped == 0
    assert [x.shape for x in (flat[i] for i in range(len(flat)))] == [(3, 8, 8)] * len(files)
    _one_file_per_extension(tmp_path / "classes" / "a")
    ds = ImageFolderDataset(tmp_path / "classes", resolution=8, hflip=False)
    assert len(ds) == len(IMAGE_EXTENSIONS) and ds.num_skipped == 0
    masks = _one_file_per_extension(tmp_path / "masks", mode="L")
    assert MaskGenerator("files", 12, files=tmp_path / "masks").files == masks
    loaded, names, _ = load_mask_set(tmp_path / "masks")
    assert names == [p.name for p in masks] and len(loaded) == len(masks)


def test_to_uint8_and_read_rgb():
    x = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.5, 1.0, 2.0]).view(1, 1, 7).expand(3, 1, 7)
    expected = np.clip(np.round((np.array([-1.5, -1.0, -0.999, 0.0, 0.5, 1.0, 2.0]) + 1) * 127.5), 0, 255)
    u8 = to_uint8(x)
    assert u8.dtype == np.uint8 and u8.shape == (1, 7, 3)
    np.testing.assert_array_equal(u8[0, :, 0], expected.astype(np.uint8))
    assert to_uint8(torch.stack([x, -x])).shape == (2, 1, 7, 3)


def test_read_rgb_modes(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    np.testing.assert_array_equal(np.asarray(read_rgb(tmp_path / "g.png")), np.repeat(grey[..., None], 3, 2))
    rgba = np.dstack([np.full((6, 8, 3), 90, np.uint8), np.zeros((6, 8), np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(read_rgb(tmp_path / "a.png")), rgba[..., :3])  # alpha dropped


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write(path, lambda tmp: tmp.write_text("old"))
    assert path.read_text() == "old"

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old" and sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]
