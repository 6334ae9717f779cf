"""Real photos for inpainting: scikit-image's bundled photos (the default data) and image folders.

Default data: the real photographs that ship inside scikit-image (``skimage.data``) and
load offline (checked with scikit-image 0.26; images that need ``pooch`` to download,
such as ``eagle``, ``lily`` or ``skin``, are not used). Synthetic images (checkerboard,
binary_blobs, horse, logo, colorwheel, shepp_logan_phantom), tiny ones (lfw_subset,
microaneurysms) and the duplicate ``cat`` (= ``chelsea``) are left out. Grey photos
are repeated to RGB.

Fixed split (by name; the stereo pair stays together in train):

* held-out (4): ``coffee``, ``rocket``, ``camera``, ``gravel``
* train (15): astronaut, chelsea, hubble_deep_field, immunohistochemistry, retina,
  motorcycle_left, motorcycle_right, moon, coins, clock, brick, grass, cell, page, text

Extra colour photos (``EXTRA_PHOTOS``), used only when their package is installed
(``pip install scikit-learn matplotlib``; nothing is downloaded at run time): ``china``
and ``flower`` (scikit-learn's sample images) and ``grace_hopper`` (matplotlib's sample
data). They are read from the installed package's files without importing it. The
``train+extra`` split is the train split plus these.

Training augmentation (``augment``, a dict; see :func:`augment_image`): small rotations,
vertical flips and colour jitter (hue rotation, saturation, brightness, contrast), on top
of the random rescale, crop and horizontal flip.

Samples are (3, R, R) float tensors in [-1, 1]. Random crops are a pure function of
``(seed, epoch, index)`` (call ``set_epoch`` to get new crops each epoch).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from attnorm.io import IMAGE_EXTENSIONS, image_error, list_images, read_rgb, to_rgb_uint8

log = logging.getLogger(__name__)

__all__ = [
    "COLOR_PHOTOS", "EXTRA_PHOTOS", "GRAY_PHOTOS", "HELDOUT_PHOTOS", "IMAGE_EXTENSIONS", "ImageFolderFlat", "SkimagePhotos",
    "TRAIN_PHOTOS", "augment_image", "available_photos", "center_crop", "load_photo", "random_crop", "to_rgb_uint8", "to_tensor",
]

COLOR_PHOTOS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "immunohistochemistry", "retina",
                "rocket", "motorcycle_left", "motorcycle_right")
GRAY_PHOTOS = ("camera", "moon", "coins", "clock", "brick", "grass", "gravel", "cell", "page", "text")
HELDOUT_PHOTOS = ("coffee", "rocket", "camera", "gravel")
# name -> (package, file inside the installed package)
EXTRA_PHOTOS: dict[str, tuple[str, str]] = {
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}
TRAIN_PHOTOS = tuple(n for n in COLOR_PHOTOS + GRAY_PHOTOS if n not in HELDOUT_PHOTOS)

# ---------------------------------------------------------------------------- conversions
def to_tensor(img: Image.Image | np.ndarray) -> Tensor:
    """RGB uint8 image -> (3, H, W) float32 in [-1, 1] (0 -> -1, 255 -> 1)."""
    arr = to_rgb_uint8(np.array(img))  # np.array: a writable copy
    return torch.from_numpy(arr).permute(2, 0, 1).float().div(127.5).sub(1.0)


def _resize(img: Image.Image, w: int, h: int) -> Image.Image:
    return img if img.size == (w, h) else img.resize((w, h), Image.BICUBIC, reducing_gap=None)


def center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Resize so the short side is ``resolution`` (bicubic, antialiased), then centre crop square."""
    w, h = img.size
    s = resolution / min(w, h)
    nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
    img = _resize(img, nw, nh)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def random_crop(img: Image.Image, resolution: int, rng: np.random.Generator,
                scale: tuple[float, float] = (1.0, 2.0), flip: bool = True) -> Image.Image:
    """Random rescale, random square crop, random horizontal flip.

    The image is resized so its short side is ``resolution * s``, ``s ~ U(scale)`` but at
    most the original short side (no upsampling beyond it unless the photo is smaller
    than ``resolution``), then a ``resolution`` square is cropped at a uniform position.
    """
    w, h = img.size
    short = min(w, h)
    hi = min(scale[1], short / resolution)  # never upsample past the original size ...
    lo = min(scale[0], hi)
    if hi < 1.0:  # ... unless the photo is smaller than the crop: then short side = resolution
        lo = hi = 1.0
    s = rng.uniform(lo, hi) * resolution / short
    nw, nh = max(resolution, round(w * s)), max(resolution, round(h * s))
    img = _resize(img, nw, nh)
    left = int(rng.integers(0, nw - resolution + 1))
    top = int(rng.integers(0, nh - resolution + 1))
    img = img.crop((left, top, left + resolution, top + resolution))
    if flip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def augment_image(img: Image.Image, resolution: int, rng: np.random.Generator, scale: tuple[float, float],
                  rotate: float = 0.0, vflip: bool = False, hue: float = 0.0,
                  saturation: tuple[float, float] = (1.0, 1.0), brightness: float = 0.0,
                  contrast: tuple[float, float] = (1.0, 1.0)) -> Tensor:
    """Random crop (:func:`random_crop`) plus the optional training augmentations -> (3, R, R) in [-1, 1].

    Args:
        rotate: rotation by an angle uniform in [-rotate, rotate] degrees (bicubic), taken
            from a crop ~1.5x larger so that no corner is empty.
        vflip: vertical flip with probability 1/2.
        hue: rotate the hue by an angle uniform in [-hue, hue] degrees (chroma rotation in
            YIQ space; keeps luma).
        saturation, brightness, contrast: chroma scale ``U(saturation)``, luma offset
            ``U(-brightness, brightness)`` (units of the [0, 1] range), contrast about the
            image mean ``U(contrast)``.
    """
    if rotate:
        big = int(math.ceil(resolution * 1.5))
        crop = random_crop(img, big, rng, scale)
        angle = float(rng.uniform(-rotate, rotate))
        crop = crop.rotate(angle, resample=Image.BICUBIC)
        off = (big - resolution) // 2
        crop = crop.crop((off, off, off + resolution, off + resolution))
    else:
        crop = random_crop(img, resolution, rng, scale)
    if vflip and rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_TOP_BOTTOM)
    x = to_tensor(crop)
    if not (hue or saturation != (1.0, 1.0) or brightness or contrast != (1.0, 1.0)):
        return x
    rgb = (x + 1) / 2  # (3, R, R) in [0, 1]
    yiq = torch.einsum("ij,jhw->ihw", _RGB2YIQ, rgb)
    theta = math.radians(float(rng.uniform(-hue, hue))) if hue else 0.0
    sat = float(rng.uniform(*saturation))
    c, s_ = math.cos(theta) * sat, math.sin(theta) * sat
    i, q = yiq[1], yiq[2]
    yiq = torch.stack([yiq[0], c * i - s_ * q, s_ * i + c * q])
    if contrast != (1.0, 1.0):
        k = float(rng.uniform(*contrast))
        yiq[0] = (yiq[0] - yiq[0].mean()) * k + yiq[0].mean()
    if brightness:
        yiq[0] = yiq[0] + float(rng.uniform(-brightness, brightness))
    rgb = torch.einsum("ij,jhw->ihw", _YIQ2RGB, yiq).clamp(0, 1)
    return rgb * 2 - 1


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


# ---------------------------------------------------------------------------- skimage photos
def _loader(name: str) -> Callable[[], np.ndarray]:
    import skimage.data as skd  # scikit-image: a core dependency of the default data

    if name in ("motorcycle_left", "motorcycle_right"):
        return lambda: skd.stereo_motorcycle()[0 if name.endswith("left") else 1]
    return getattr(skd, name)


def _extra_photo_path(name: str) -> Path:
    """File of an :data:`EXTRA_PHOTOS` entry inside its installed package (FileNotFoundError if absent)."""
    import importlib.util

    package, rel = EXTRA_PHOTOS[name]
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"photo {name!r} needs the {package!r} package (pip install {package})")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise FileNotFoundError(f"photo {name!r}: {path} not found")
    return path


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """One bundled photo as an (H, W, 3) uint8 array (cached; treat it as read-only)."""
    if name in EXTRA_PHOTOS:
        with Image.open(_extra_photo_path(name)) as im:
            arr = to_rgb_uint8(np.asarray(im.convert("RGB")))
        arr.setflags(write=False)
        return arr
    if name not in COLOR_PHOTOS + GRAY_PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose from {COLOR_PHOTOS + GRAY_PHOTOS + tuple(EXTRA_PHOTOS)}")
    arr = to_rgb_uint8(_loader(name)())
    arr.setflags(write=False)
    return arr


@functools.lru_cache(maxsize=None)
def available_photos() -> tuple[str, ...]:
    """The bundled photos that load on this machine (without downloading)."""
    ok = []
    for name in COLOR_PHOTOS + GRAY_PHOTOS + tuple(EXTRA_PHOTOS):
        try:
            load_photo(name)
            ok.append(name)
        except Exception:  # missing file / needs pooch: skip quietly
            pass
    return tuple(ok)


class SkimagePhotos(Dataset):
    """scikit-image's bundled photos as an inpainting dataset of (3, R, R) tensors in [-1, 1].

    Args:
        split: ``"train"`` (15 photos), ``"heldout"`` (4) or ``"all"``; see the module docstring.
        resolution: output side ``R``.
        crop: ``"random"`` (random rescale + crop + flip, for training) or ``"center"``
            (short side resized to R, centre crop: deterministic, for evaluation).
        length: dataset length; sample ``i`` uses photo ``i % num_photos``. Default: the
            number of photos (use e.g. 1000 for many random crops per epoch).
        seed: base seed of the random crops.
        scale: random-rescale range, in units of R for the short side (default 1-2).
        names: explicit photo names instead of a split (a name may repeat: it is then
            drawn that many times more often).
        augment: training augmentations for ``crop="random"`` (keyword arguments of
            :func:`augment_image`: ``rotate``, ``vflip``, ``hue``, ``saturation``,
            ``brightness``, ``contrast``); None: crop and horizontal flip only.
    """

    def __init__(self, split: str = "train", resolution: int = 256, crop: str = "random",
                 length: int | None = None, seed: int = 0, scale: tuple[float, float] = (1.0, 2.0),
                 names: Sequence[str] | None = None, augment: dict | None = None) -> None:
        if crop not in ("random", "center"):
            raise ValueError(f"crop must be 'random' or 'center', got {crop!r}")
        if names is None:
            splits = {"train": TRAIN_PHOTOS, "heldout": HELDOUT_PHOTOS, "all": COLOR_PHOTOS + GRAY_PHOTOS,
                      "train+extra": TRAIN_PHOTOS + tuple(EXTRA_PHOTOS)}
            if split not in splits:
                raise ValueError(f"split must be one of {list(splits)}, got {split!r}")
            names = splits[split]
        avail = set(available_photos())
        self.names = [n for n in names if n in avail]
        missing = [n for n in names if n not in avail]
        if missing:
            log.warning("skimage photos not available offline, skipped: %s", missing)
        if not self.names:
            raise RuntimeError("no scikit-image photo could be loaded; is scikit-image installed?")
        self.resolution, self.crop, self.seed, self.scale = int(resolution), crop, int(seed), scale
        self.length = len(self.names) if length is None else int(length)
        self.augment = dict(augment or {})
        unknown = set(self.augment) - {"rotate", "vflip", "hue", "saturation", "brightness", "contrast"}
        if unknown:
            raise ValueError(f"unknown augment keys {sorted(unknown)}; use rotate, vflip, hue, saturation, "
                             "brightness, contrast")
        for k in ("saturation", "contrast"):
            if k in self.augment:
                self.augment[k] = tuple(float(v) for v in self.augment[k])
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """New random crops for a new epoch (crops depend on (seed, epoch, index))."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def name_of(self, index: int) -> str:
        return self.names[index % len(self.names)]

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < self.length:
            raise IndexError(index)
        img = Image.fromarray(load_photo(self.name_of(index)))
        if self.crop == "center":
            return to_tensor(center_crop(img, self.resolution))
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, int(index)]))
        if self.augment:
            return augment_image(img, self.resolution, rng, self.scale, **self.augment)
        return to_tensor(random_crop(img, self.resolution, rng, self.scale))


# ---------------------------------------------------------------------------- folders
class ImageFolderFlat(Dataset):
    """Every image under ``root`` (recursively, sorted), as (3, R, R) tensors in [-1, 1]; no labels.

    Args:
        root: the folder.
        resolution: output side ``R``.
        crop: ``"random"`` or ``"center"``, as in :class:`SkimagePhotos`.
        seed: base seed of the random crops.
        extensions: file name endings that count as images (case-insensitive).
        verify: open every file once at construction (Pillow's ``verify``) and drop
            unreadable ones. Files that still fail when loaded are skipped too (the next
            readable file is returned instead). Both are counted in ``num_skipped`` and
            reported with a warning.

    Raises FileNotFoundError if ``root`` is missing, ValueError if it holds no image.
    """

    def __init__(self, root: str | os.PathLike, resolution: int = 256, crop: str = "random", seed: int = 0,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, verify: bool = True,
                 scale: tuple[float, float] = (1.0, 2.0)) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist or is not a folder")
        if crop not in ("random", "center"):
            raise ValueError(f"crop must be 'random' or 'center', got {crop!r}")
        files = list_images(self.root, tuple(extensions))
        if not files:
            raise ValueError(f"no images ({', '.join(extensions)}) found under {self.root}")
        self.skipped: list[Path] = []
        if verify:
            self.skipped = [p for p in files if image_error(p)]
            bad = set(self.skipped)
            files = [p for p in files if p not in bad]
            self._warn_skipped()
            if not files:
                raise ValueError(f"all {len(self.skipped)} image files under {self.root} are unreadable")
        self.files = files
        self.resolution, self.crop, self.seed, self.scale = int(resolution), crop, int(seed), scale
        self.epoch = 0

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def _warn_skipped(self) -> None:
        if self.skipped:
            shown = ", ".join(str(p.relative_to(self.root)) for p in self.skipped[:5])
            more = "" if len(self.skipped) <= 5 else f" and {len(self.skipped) - 5} more"
            log.warning("ImageFolderFlat: skipped %d unreadable file(s) under %s: %s%s", len(self.skipped),
                        self.root, shown, more)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < len(self.files):
            raise IndexError(index)
        for k in range(len(self.files)):
            path = self.files[(index + k) % len(self.files)]
            try:
                img = read_rgb(path)
                break
            except Exception:
                if path not in self.skipped:
                    self.skipped.append(path)
                    log.warning("ImageFolderFlat: cannot read %s, skipped (%d skipped so far)", path,
                                len(self.skipped))
        else:
            raise RuntimeError(f"no readable image under {self.root}")
        if self.crop == "center":
            return to_tensor(center_crop(img, self.resolution))
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, int(index)]))
        return to_tensor(random_crop(img, self.resolution, rng, self.scale))
