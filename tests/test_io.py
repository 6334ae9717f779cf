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


def test_atomic_write_turns_write_errors_into_one_line_output_errors(tmp_path):
    """Issue 12 (X6, M16): an OSError, also one wrapped by the writer (torch.save raises a RuntimeError
    with the OSError as context), becomes OutputError naming the file, the reason and the fix."""
    import errno

    from attnorm.errors import OutputError
    path = tmp_path / "f.bin"
    path.write_text("old")

    def torch_like(tmp):
        tmp.write_text("half")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    with pytest.raises(OutputError, match=r"cannot write .*f.bin: No space left on device \(the disk is full; "
                                          r"free some space or write elsewhere\); the previous file is unchanged"):
        atomic_write(path, torch_like)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
    with pytest.raises(RuntimeError, match="a bug"):  # not a write error: passed on unchanged
        atomic_write(path, lambda tmp: (_ for _ in ()).throw(RuntimeError("a bug")))
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match="it is a folder"):
        atomic_write(tmp_path / "d", lambda tmp: tmp.write_text("x"))


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    import os

    from _probe import dead_pid
    from attnorm.io import remove_stale_temps
    dead, alive = dead_pid(), os.getppid()
    names = [f".a.pt.tmp{dead}", f"a.pt.tmp{dead}", f".a.pt.tmp{alive}", f".b.pt.tmp{dead}", f".c.npz.tmp{dead}.npz",
             "a.pt", "a.pt.tmp", "notes.tmp12x"]
    for n in names:
        (tmp_path / n).write_text("x")
    assert sorted(p.name for p in remove_stale_temps(tmp_path / "a.pt")) == sorted(names[:2])
    remove_stale_temps(tmp_path)  # a folder: every target in it
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".a.pt.tmp{alive}", "a.pt", "a.pt.tmp",
                                                                  "notes.tmp12x"])


def test_check_output_path(tmp_path):
    from attnorm.errors import OutputError
    from attnorm.io import check_output_path
    assert check_output_path(tmp_path / "x" / "y" / "o.PNG", "--out", IMAGE_EXTENSIONS) == tmp_path / "x" / "y" / "o.PNG"
    assert not (tmp_path / "x").exists()  # checked, not created
    with pytest.raises(OutputError, match=r"--out .*o has no extension; it must end with one of .png, .jpg"):
        check_output_path(tmp_path / "o", "--out", IMAGE_EXTENSIONS)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file is a file, not a folder"):
        check_output_path(tmp_path / "file" / "sub" / "o.png", "--out")
    with pytest.raises(OutputError, match="is a file; give a folder"):
        check_output_path(tmp_path / "file", "--out", folder=True)


def test_read_grey01_and_read_rgb_scale_16_bit_and_float(tmp_path):
    from attnorm.io import read_grey01
    a16 = np.array([[0, 257, 32768, 65535]], np.uint16)
    Image.fromarray(a16).save(tmp_path / "g.png")
    np.testing.assert_allclose(read_grey01(tmp_path / "g.png"), a16 / 65535.0)
    np.testing.assert_array_equal(np.asarray(read_rgb(tmp_path / "g.png"))[0, :, 0], [0, 1, 128, 255])
    f = np.array([[0.0, 0.25, 1.0, np.nan]], np.float32)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tiff")
    np.testing.assert_allclose(read_grey01(tmp_path / "f.tiff"), [[0.0, 0.25, 1.0, 0.0]])
    Image.fromarray(np.array([[0.0, 127.5, 255.0]], np.float32), mode="F").save(tmp_path / "f255.tiff")
    np.testing.assert_allclose(read_grey01(tmp_path / "f255.tiff"), [[0.0, 0.5, 1.0]])
    pal = Image.new("P", (4, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putdata([0, 1, 1, 0])
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(np.asarray(read_rgb(tmp_path / "p.png"))[0], [[10, 20, 30], [200, 100, 50],
                                                                               [200, 100, 50], [10, 20, 30]])
