"""Evaluate an inpainting method on a fixed mask set: :func:`evaluate_inpaint` (``attnorm evaluate inpaint``).

    attnorm masks --out masks/ --n 100 --kind free --seed 0
    attnorm evaluate inpaint --ckpt g.pt --masks masks/ --out eval_g/              # held-out skimage photos
    attnorm evaluate inpaint --method biharmonic --masks masks/ --out eval_bh/
    attnorm evaluate inpaint --method telea --data photos/ --masks masks/ --out eval_telea/ --size 256

Protocol (written into ``summary.json`` under ``"protocol"``):

* **Images**: by default the held-out scikit-image photos (coffee, rocket, camera,
  gravel; see :mod:`attnorm.data.photos`), short side resized to ``--size``
  (bicubic, antialiased) and centre-cropped square; ``--data DIR`` uses every
  image under DIR the same way.
* **Masks**: a folder written by ``attnorm masks`` (order from its ``masks.json``;
  without one, the sorted image files). 1 = hole. A mask whose size differs from
  the images is an error unless ``--resize-masks`` is given (nearest neighbour).
* **Pairing**: pair ``k`` is image ``k % n_images`` with mask ``k % n_masks``, for
  ``k < max(n_images, n_masks)`` (``--pairs`` overrides the count): 4 photos and
  100 masks give 100 pairs, each photo seen with 25 masks.
* **Composite**: the method's output is pasted into the hole and the known pixels
  are the input's own (``where(hole, output, image)``; a no-op for methods that
  already composite, such as :func:`attnorm.inference.inpaint_image`).
* **Quantisation**: the composite and the ground truth are quantised to 8 bits
  exactly like a saved PNG (:func:`attnorm.io.to_uint8`), then
  divided by 255; every metric is computed on these [0, 1] arrays with
  ``data_range = 1``, on the whole image (hole and known pixels).
* **Metrics** (per pair): ``psnr`` = 10 log10(1 / MSE) in dB, MSE over all pixels
  and channels; ``ssim`` = mean SSIM, scikit-image defaults (7x7 uniform window,
  K1 0.01, K2 0.03, sample covariances, border of 3 px cropped, channels averaged;
  same as ``skimage.metrics.structural_similarity(gt, out, channel_axis=-1,
  data_range=255)`` on the uint8 arrays); ``l1`` = mean absolute error over all
  pixels and channels (in [0, 1]; x100 for the "L1 %" of papers); ``l1_hole`` =
  the same over hole pixels only (NaN for an empty mask, ignored by the means);
  ``color_shift`` = the mean colour of the fill vs the ground truth's over the hole,
  ``mean_c |mean_hole(out_c) - mean_hole(gt_c)|``, in levels of 255 (NaN for an empty mask);
  ``bias_r``/``bias_g``/``bias_b`` = the signed ``mean_hole(out_c) - mean_hole(gt_c)`` per channel
  (their means over pairs are the method's systematic colour shift); ``mse``; ``seconds`` = wall time of the method's call.
* **PSNR of a perfect result**: MSE = 0 gives an infinite PSNR. By default the
  per-pair PSNR is capped at :data:`PSNR_CAP` = 100 dB before averaging (finite
  and well above anything a real fill reaches: one 8-bit level of error on one
  channel of one pixel already gives ~101 dB at 256x256, so the cap only ever
  touches results exact to within a handful of quantisation steps). With
  ``psnr_cap=None`` (``--psnr-cap inf``) nothing is capped: such pairs are ``inf``
  in the CSV, the means that include them are ``inf`` and JSON stores ``"inf"``.
* **Aggregates**: means over all pairs, and per LaMa-style hole-area bin
  (:data:`attnorm.data.masks.AREA_BIN_LABELS`, the area measured on the mask as
  evaluated) with their counts.

Outputs in ``--out``: ``per_image.csv`` (one row per pair), ``summary.json``
(totals, per-bin means and counts, protocol) and ``sheet.png`` (the 4 worst and
4 best pairs by PSNR, each row input | output | ground truth, hole shown white in
the input); ``--save-outputs`` also writes each quantised composite as
``outputs/<pair>.png``.
"""

from __future__ import annotations

import bisect
import csv
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from attnorm.data.masks import AREA_BIN_LABELS, area_bin, load_mask, mask_area
from attnorm.inference import inpaint_image
from attnorm.errors import ImageReadError
from attnorm.io import atomic_write, json_safe, list_images, save_image_file, to_uint8, write_text
from attnorm.metrics import l1 as l1_metric
from attnorm.metrics import psnr as psnr_metric
from attnorm.metrics import ssim as ssim_metric

__all__ = [
    "METHODS", "PSNR_CAP", "Method", "biharmonic_method", "evaluate_inpaint", "format_summary",
    "generator_method", "image_metrics", "load_eval_images", "load_mask_set", "make_method", "telea_method",
]

log = logging.getLogger(__name__)

#: A method maps (image (3, H, W) in [-1, 1], mask (1, H, W), 1 = hole) to the inpainted (3, H, W) in [-1, 1].
Method = Callable[[Tensor, Tensor], Tensor]

#: Default cap of the per-pair PSNR in dB (an exact reconstruction has MSE 0, i.e. infinite PSNR).
PSNR_CAP = 100.0

CSV_FIELDS = ("index", "image", "mask", "area", "bin", "bin_label", "psnr", "ssim", "l1", "l1_hole", "color_shift",
              "bias_r", "bias_g", "bias_b", "mse", "seconds")
METRICS = ("psnr", "ssim", "l1", "l1_hole", "color_shift", "bias_r", "bias_g", "bias_b", "mse", "seconds")


# ---------------------------------------------------------------------------- methods
def generator_method(generator: torch.nn.Module) -> Method:
    """Wrap a trained :class:`~attnorm.models.inpaint.InpaintGenerator` (via :func:`inpaint_image`)."""

    def method(image: Tensor, mask: Tensor) -> Tensor:
        return inpaint_image(generator, image, mask)

    return method


def biharmonic_method() -> Method:
    """Classical baseline: ``skimage.restoration.inpaint_biharmonic`` (per channel, ``channel_axis=-1``)."""
    from skimage.restoration import inpaint_biharmonic

    def method(image: Tensor, mask: Tensor) -> Tensor:
        hole = (mask[0] >= 0.5).cpu().numpy()
        if not hole.any():
            return image.clone()
        rgb = ((image.detach().cpu().double() + 1) / 2).permute(1, 2, 0).numpy()  # (H, W, 3) in [0, 1]
        out = inpaint_biharmonic(rgb, hole, channel_axis=-1)
        pred = torch.from_numpy(np.clip(out, 0, 1)).permute(2, 0, 1).to(image.dtype) * 2 - 1
        return torch.where(torch.from_numpy(hole).expand_as(pred), pred, image.cpu())  # known pixels bit-exact

    return method


def telea_method(radius: float = 3.0) -> Method:
    """Classical baseline: OpenCV's Telea fast marching (``cv2.inpaint``, INPAINT_TELEA) on the 8-bit image.

    Needs OpenCV (``pip install opencv-python-headless``), an optional dependency:
    raises ImportError when ``cv2`` cannot be imported.
    """
    try:
        import cv2
    except ImportError as e:  # optional dependency
        raise ImportError("the 'telea' method needs OpenCV: pip install opencv-python-headless") from e

    def method(image: Tensor, mask: Tensor) -> Tensor:
        hole = ((mask[0] >= 0.5).cpu().numpy() * 255).astype(np.uint8)
        out = cv2.inpaint(np.ascontiguousarray(to_uint8(image)), hole, float(radius), cv2.INPAINT_TELEA)
        pred = torch.from_numpy(out).permute(2, 0, 1).to(image.dtype) / 127.5 - 1
        return torch.where(torch.from_numpy(hole > 0).expand_as(pred), pred, image.cpu())  # known pixels bit-exact

    return method


def pushpull_method(smooth: int = 0) -> Method:
    """Classical baseline: the pull-push fill (:func:`attnorm.models.inpaint.pushpull_fill`), which the
    learned generator also starts from; ``smooth`` Jacobi sweeps per level (``harmonic``: 64)."""
    from attnorm.models.inpaint import pushpull_fill

    def method(image: Tensor, mask: Tensor) -> Tensor:
        hole = (mask >= 0.5).to(image.dtype)
        return pushpull_fill(image[None], hole[None], smooth)[0]

    return method


METHODS: dict[str, Callable[[], Method]] = {"biharmonic": biharmonic_method, "telea": telea_method,
                                            "pushpull": pushpull_method,
                                            "harmonic": lambda: pushpull_method(smooth=64)}


def make_method(name: str) -> Method:
    """A classical method by name (:data:`METHODS`)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)} or give a checkpoint")
    return METHODS[name]()


# ---------------------------------------------------------------------------- masks
def load_mask_set(folder: str | os.PathLike) -> tuple[list[Tensor], list[str], dict]:
    """Masks of a folder written by ``attnorm masks``: (masks (1, H, W), file names, masks.json settings).

    The order is that of ``masks.json`` when present, else the sorted image files
    (then the settings dict is empty). Unreadable mask files (empty, corrupt, over the pixel
    limit) are skipped, counted in the settings (``skipped``: file names and reasons) and
    reported with a warning; ValueError if none is readable.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"mask folder {folder} does not exist (write one with `attnorm masks`)")
    meta: dict = {}
    index = folder / "masks.json"
    if index.is_file():
        meta = json.loads(index.read_text())
        files = [folder / r["file"] for r in meta.get("masks", [])]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists {len(missing)} missing mask file(s), e.g. {missing[0]}")
        meta = {k: v for k, v in meta.items() if k != "masks"}
    else:
        files = list_images(folder)
    if not files:
        raise ValueError(f"no masks in {folder}")
    masks, names, skipped = [], [], []
    for f in files:
        try:
            masks.append(load_mask(f))
            names.append(f.name)
        except ImageReadError as exc:
            skipped.append({"file": f.name, "reason": exc.reason})
    if skipped:
        log.warning("skipped %d unreadable mask file(s) in %s, e.g. %s (%s)", len(skipped), folder,
                    skipped[0]["file"], skipped[0]["reason"])
        meta["skipped"] = skipped
    if not masks:
        raise ValueError(f"none of the {len(files)} mask files in {folder} is readable, e.g. {skipped[0]['file']} "
                         f"({skipped[0]['reason']}); "
                         "write the set again with `attnorm masks`")
    return masks, names, meta


def _fit_mask(mask: Tensor, size: tuple[int, int], resize: bool, what: str) -> Tensor:
    mask = mask.reshape(1, *mask.shape[-2:]).float()
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    if not resize:
        raise ValueError(f"mask {what} is {tuple(mask.shape[-2:])} but the image is {tuple(size)}; "
                         "write masks of the image size, or resize them (nearest) with --resize-masks "
                         "(resize_masks=True)")
    return F.interpolate((mask >= 0.5).float()[None], size=tuple(size), mode="nearest-exact")[0]


# ---------------------------------------------------------------------------- metrics
def image_metrics(output_u8: np.ndarray, target_u8: np.ndarray, hole: np.ndarray | None = None,
                  psnr_cap: float | None = PSNR_CAP) -> dict[str, float]:
    """PSNR / SSIM / L1 / MSE of two (H, W, 3) uint8 images, in [0, 1] with data_range 1.

    ``hole`` (H, W) bool adds ``l1_hole``, ``color_shift`` and ``bias_r/g/b`` (NaN when the hole
    is empty): the mean colour of the fill against the ground truth's over the hole, as
    ``mean_c |mean_hole(out_c) - mean_hole(gt_c)|`` and as the signed per-channel differences, in
    levels of 255 (averaged over pairs, the biases measure a systematic shift). PSNR is capped at
    ``psnr_cap`` (None: not capped, MSE 0 gives inf).
    """
    a = torch.from_numpy(np.asarray(output_u8, dtype=np.float64) / 255.0).permute(2, 0, 1)[None]
    b = torch.from_numpy(np.asarray(target_u8, dtype=np.float64) / 255.0).permute(2, 0, 1)[None]
    p = float(psnr_metric(a, b, data_range=1.0)[0])
    if psnr_cap is not None:
        p = min(p, float(psnr_cap))
    res = {"psnr": p, "ssim": float(ssim_metric(a, b, data_range=1.0)[0]), "l1": float(l1_metric(a, b)[0]),
           "mse": float((a - b).pow(2).mean())}
    if hole is not None:
        h = torch.from_numpy(np.asarray(hole, dtype=bool))
        res["l1_hole"] = float((a - b).abs()[0][:, h].mean()) if bool(h.any()) else math.nan
        d = (a[0][:, h].mean(1) - b[0][:, h].mean(1)) * 255.0 if bool(h.any()) else None  # (3,) levels
        res["color_shift"] = float(d.abs().mean()) if d is not None else math.nan
        for c, name in enumerate(("bias_r", "bias_g", "bias_b")):
            res[name] = float(d[c]) if d is not None else math.nan
    return res


def _mean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return None
    if any(math.isinf(v) for v in vals):  # uncapped perfect PSNRs: the mean is inf
        return sum(vals) / len(vals)
    return math.fsum(vals) / len(vals)


def _aggregate(rows: list[dict]) -> dict:
    return {"count": len(rows), **{m: (_mean([r[m] for r in rows]) if rows else None) for m in METRICS}}


# ---------------------------------------------------------------------------- sheet
def _label(text: str, width: int, height: int = 14) -> Image.Image:
    img = Image.new("RGB", (width, height), (255, 255, 255))
    ImageDraw.Draw(img).text((2, 1), text, fill=(0, 0, 0))
    return img


def write_sheet(path: str | os.PathLike, cases: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
                tile: int = 256) -> None:
    """One row per case: a caption, then input | output | ground truth (uint8 (H, W, 3) each).

    Tiles larger than ``tile`` pixels a side are downscaled (bicubic) to keep the sheet small.
    """
    rows = []
    for caption, inp, out, gt in cases:
        tiles = [Image.fromarray(a) for a in (inp, out, gt)]
        w, h = tiles[0].size
        s = min(1.0, tile / max(w, h))
        if s < 1.0:
            tiles = [t.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC) for t in tiles]
        tw, th = tiles[0].size
        gap = 4
        row = Image.new("RGB", (3 * tw + 2 * gap, th + 14), (255, 255, 255))
        row.paste(_label(caption, row.width), (0, 0))
        for j, t in enumerate(tiles):
            row.paste(t, (j * (tw + gap), 14))
        rows.append(row)
    head = _label("input (hole white) | output | ground truth", max(r.width for r in rows))
    sheet = Image.new("RGB", (head.width, head.height + sum(r.height + 4 for r in rows)), (255, 255, 255))
    sheet.paste(head, (0, 0))
    y = head.height
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 4
    save_image_file(sheet, path)


class SheetPicker:
    """The ``k`` worst and ``k`` best pairs by score (PSNR) seen so far, and the images of those
    pairs only: ``add`` costs O(k) whatever the number of pairs, and memory stays O(k).

    ``cases()`` gives ``(caption prefix, pair position)``: the k worst in ascending order, then
    the k best in descending order, no pair twice (ties broken by position).
    """

    def __init__(self, k: int = 4) -> None:
        self.k = k
        self.worst: list[tuple] = []  # the k smallest (score, position), ascending
        self.best: list[tuple] = []   # the k largest, ascending
        self.arrays: dict[int, tuple] = {}

    def add(self, position: int, score, arrays: tuple) -> None:
        key = (score, position)
        bisect.insort(self.worst, key)
        del self.worst[self.k:]
        bisect.insort(self.best, key)
        del self.best[:-self.k]
        keep = {p for _, p in self.worst} | {p for _, p in self.best}
        if position in keep:
            self.arrays[position] = arrays
        self.arrays = {p: a for p, a in self.arrays.items() if p in keep}

    def cases(self) -> list[tuple[str, int]]:
        worst = [p for _, p in self.worst]
        best = [p for _, p in reversed(self.best) if p not in worst][:self.k]
        return [(f"worst {j + 1}", p) for j, p in enumerate(worst)] + [(f"best {j + 1}", p) for j, p in enumerate(best)]


# ---------------------------------------------------------------------------- evaluation
def _run_method(method: Method, method_name: str, x: Tensor, m: Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """The 8-bit composite ``where(hole, method(x, m), x)``, the 8-bit ground truth, the call's seconds."""
    t0 = time.perf_counter()
    y = method(x, m)
    seconds = time.perf_counter() - t0
    if tuple(y.shape) != tuple(x.shape):
        raise ValueError(f"{method_name} returned shape {tuple(y.shape)} for an image of shape {tuple(x.shape)}")
    composite = torch.where((m[0] >= 0.5).expand_as(x), y.to(x.dtype).cpu(), x.cpu())
    return to_uint8(composite), to_uint8(x), seconds


def _load_masks(masks, mask_names) -> tuple[Sequence, list[str] | None, str, dict]:
    """(masks, names, source, masks.json settings) from a sequence or a mask folder."""
    if isinstance(masks, (str, os.PathLike)):
        loaded, names_from_files, meta = load_mask_set(masks)
        return loaded, mask_names or names_from_files, str(masks), meta
    return masks, mask_names, "in-memory masks", {}


def _protocol(sizes: set, n_img: int, n_mask: int, mask_source: str, mask_meta: dict, resize_masks: bool,
              psnr_cap: float | None, extra: dict | None) -> dict:
    """The ``protocol`` entry of the summary: how every number was made."""
    return {
        "resolution": sorted(f"{h}x{w}" for h, w in sizes),
        "num_images": n_img,
        "num_masks": n_mask,
        "pairing": "pair k = image k % num_images with mask k % num_masks, k < num_pairs",
        "mask_set": {"source": mask_source, **mask_meta},
        "resize_masks": bool(resize_masks),
        "composite": "where(hole, output, ground truth): known pixels are the input's own",
        "quantisation": "composite and ground truth rounded to uint8 like a saved PNG, then / 255",
        "metrics": {
            "psnr": "10 log10(1 / MSE) dB, data_range 1, MSE over all pixels and channels; "
                    + (f"capped at {psnr_cap:g} dB (MSE 0 -> {psnr_cap:g})" if psnr_cap is not None
                       else "not capped (MSE 0 -> inf)"),
            "ssim": "mean SSIM, skimage defaults (7x7 uniform window, K1 0.01, K2 0.03, sample covariance, "
                    "3 px border cropped, channels averaged), data_range 1",
            "l1": "mean |output - gt| over all pixels and channels, in [0, 1]",
            "l1_hole": "mean |output - gt| over hole pixels only (empty holes ignored)",
            "color_shift": "mean over channels of |mean over the hole of output - of gt|, in levels of 255",
            "bias_r/g/b": "signed mean over the hole of output - gt per channel, levels of 255 (systematic shift)",
            "mse": "mean squared error in [0, 1] units",
            "seconds": "wall time of one method call",
        },
        "area_bins": "hole fraction of the evaluated mask, bins [0,10%), [10,20%), ... [50,60%), >=60%",
        "psnr_cap": psnr_cap,
        **(extra or {}),
    }


def _add_fid(summary: dict, extractor, name: str, feats_fake: list[np.ndarray], feats_real: list[np.ndarray]) -> None:
    from attnorm.metrics import feature_statistics, frechet_distance
    n = len(feats_fake)
    if n < 2:
        raise ValueError(f"FID needs at least 2 pairs, got {n}")
    fake, real = np.concatenate(feats_fake), np.concatenate(feats_real)
    summary["total"]["fid"] = frechet_distance(*feature_statistics(fake), *feature_statistics(real))
    summary["protocol"]["metrics"]["fid"] = (
        f"Frechet distance between the features of the {n} 8-bit composites and of their {n} "
        f"ground truths (one per pair), whole set only; features {fake.shape[1]}-d"
        + ("; fewer samples than dimensions: covariances are singular, the figure is coarse"
           if n <= fake.shape[1] else ""))
    summary["protocol"]["fid_extractor"] = getattr(extractor, "protocol", {"name": name})


def _write_outputs(out: Path, rows: list[dict], summary: dict, picker: SheetPicker | None, save_outputs: bool) -> None:
    """``per_image.csv``, ``sheet.png`` and ``summary.json`` (which lists the files)."""
    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(CSV_FIELDS))
            writer.writeheader()
            for r in rows:
                writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})

    atomic_write(out / "per_image.csv", write_csv)
    files = {"csv": "per_image.csv", "json": "summary.json"}
    if picker is not None:
        cases = [(f"{tag}: {rows[p]['image']} + {rows[p]['mask']}  PSNR {rows[p]['psnr']:.2f} dB", *picker.arrays[p])
                 for tag, p in picker.cases()]
        write_sheet(out / "sheet.png", cases)
        files["sheet"] = "sheet.png"
    if save_outputs:
        files["outputs"] = "outputs/"
    summary["files"] = files
    write_text(out / "summary.json", json.dumps(json_safe(summary), indent=1))


def evaluate_inpaint(method: Method, images: Sequence[Tensor], masks: Sequence[Tensor] | str | os.PathLike,
                     out_dir: str | os.PathLike | None = None, *, image_names: Sequence[str] | None = None,
                     mask_names: Sequence[str] | None = None, num_pairs: int | None = None,
                     resize_masks: bool = False, psnr_cap: float | None = PSNR_CAP, save_outputs: bool = False,
                     sheet: bool = True, method_name: str = "method", protocol: dict | None = None,
                     fid: str | None = None) -> dict:
    """Run ``method`` on every (image, mask) pair and score the 8-bit composites (see the module docstring).

    Args:
        method: ``method(image (3, H, W) in [-1, 1], mask (1, H, W)) -> (3, H, W)`` in [-1, 1].
        images: a sequence (or map-style dataset) of (3, H, W) tensors in [-1, 1], the ground truths.
        masks: a sequence of (1, H, W) / (H, W) masks (1 = hole), or a folder written by ``attnorm masks``.
        out_dir: where to write ``per_image.csv``, ``summary.json``, ``sheet.png`` (None: write nothing).
        image_names, mask_names: names for the CSV (default: indices / mask file names).
        num_pairs: number of pairs; default ``max(len(images), len(masks))``; pair ``k`` uses
            image ``k % len(images)`` and mask ``k % len(masks)``.
        resize_masks: resize masks of another size to the image (nearest); otherwise a mismatch raises.
        psnr_cap: cap of the per-pair PSNR in dB (None: no cap, perfect pairs are inf).
        save_outputs: also write each quantised composite to ``out_dir/outputs/``.
        sheet: write the worst/best image sheet.
        method_name: recorded in the summary.
        protocol: extra protocol entries for the summary (e.g. the data source).
        fid: name of a feature extractor (``attnorm.metrics.get_extractor``, e.g. ``"inception"``)
            to also report the FID between the 8-bit composites and their ground truths over all
            pairs (None: no FID). With few pairs it is a coarse, biased figure: the JSON says how
            many samples it used.
    Returns: ``{"rows": [per-pair dicts], "summary": {...}}`` (the summary is what ``summary.json`` holds).
    One progress line per pair goes to this module's logger (level INFO).
    Raises: ValueError for empty data, an empty mask set, a mask/image size mismatch, or a
    method output of the wrong shape.
    """
    masks, mask_names, mask_source, mask_meta = _load_masks(masks, mask_names)
    n_img, n_mask = len(images), len(masks)
    if n_img == 0:
        raise ValueError("no images to evaluate (empty data)")
    if n_mask == 0:
        raise ValueError("no masks to evaluate with (empty mask set)")
    image_names = list(image_names) if image_names is not None else [f"{i:05d}" for i in range(n_img)]
    mask_names = list(mask_names) if mask_names is not None else [f"mask_{i:05d}" for i in range(n_mask)]
    n = max(n_img, n_mask) if num_pairs is None else int(num_pairs)
    if n < 1:
        raise ValueError(f"num_pairs must be >= 1, got {n}")

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if save_outputs:
            (out / "outputs").mkdir(exist_ok=True)

    extractor = None
    if fid:
        from attnorm.metrics import get_extractor
        extractor = get_extractor(fid)
    feats_fake: list[np.ndarray] = []
    feats_real: list[np.ndarray] = []
    rows: list[dict] = []
    picker = SheetPicker() if out is not None and sheet else None  # keeps only the sheet's candidates
    sizes = set()
    for k in range(n):
        i, j = k % n_img, k % n_mask
        x = images[i]
        if x.dim() != 3 or x.shape[0] != 3:
            raise ValueError(f"image {image_names[i]} must be (3, H, W), got {tuple(x.shape)}")
        size = tuple(x.shape[-2:])
        sizes.add(size)
        m = _fit_mask(torch.as_tensor(masks[j]), size, resize_masks, mask_names[j])
        hole = m[0] >= 0.5
        out_u8, gt_u8, seconds = _run_method(method, method_name, x, m)
        metrics = image_metrics(out_u8, gt_u8, hole.numpy(), psnr_cap)
        if extractor is not None:  # features of the quantised composite and ground truth, (1, d) each
            as_input = lambda u8: torch.from_numpy(u8).permute(2, 0, 1)[None].float() / 127.5 - 1.0
            feats_fake.append(extractor.features(as_input(out_u8)))
            feats_real.append(extractor.features(as_input(gt_u8)))
        b = area_bin(m)
        pair_name = f"{k:05d}_{Path(image_names[i]).stem}_{Path(mask_names[j]).stem}"
        rows.append({"index": k, "image": image_names[i], "mask": mask_names[j], "area": float(mask_area(m)),
                     "bin": b, "bin_label": AREA_BIN_LABELS[b], **metrics, "seconds": seconds})
        if out is not None and save_outputs:
            save_image_file(out_u8, out / "outputs" / f"{pair_name}.png")
        if picker is not None:
            inp = gt_u8.copy()
            inp[hole.numpy()] = 255
            picker.add(k, metrics["psnr"], (inp, out_u8, gt_u8))
        log.info("[%d/%d] %s: PSNR %.2f SSIM %.4f L1 %.4f (%.2f s)", k + 1, n, pair_name, metrics["psnr"],
                 metrics["ssim"], metrics["l1"], seconds)

    summary = {
        "method": method_name,
        "num_pairs": n,
        "total": _aggregate(rows),
        "per_bin": {label: _aggregate([r for r in rows if r["bin"] == b]) for b, label in enumerate(AREA_BIN_LABELS)},
        "protocol": _protocol(sizes, n_img, n_mask, mask_source, mask_meta, resize_masks, psnr_cap, protocol),
    }
    if extractor is not None:
        _add_fid(summary, extractor, fid, feats_fake, feats_real)
    if out is not None:
        _write_outputs(out, rows, summary, picker, save_outputs)
    return {"rows": rows, "summary": summary}


def format_summary(summary: dict) -> str:
    """Per-bin table (count, PSNR, SSIM, L1, colour shift of the fill) plus the total."""
    lines = [f"{summary['method']}: {summary['num_pairs']} pairs",
             f"{'hole area':>10} {'n':>5} {'PSNR':>8} {'SSIM':>7} {'L1':>7} {'colour':>7}"]

    def fmt(v, spec):
        return f"{v:{spec}}" if isinstance(v, (int, float)) and v is not None else "-"

    for label, agg in [*summary["per_bin"].items(), ("all", summary["total"])]:
        if agg["count"] == 0:
            continue
        lines.append(f"{label:>10} {agg['count']:>5} {fmt(agg['psnr'], '8.2f')} {fmt(agg['ssim'], '7.4f')} "
                     f"{fmt(agg['l1'], '7.4f')} {fmt(agg.get('color_shift'), '7.2f')}")
    if "fid" in summary["total"]:
        lines.append(f"FID (all pairs, {summary['protocol']['fid_extractor'].get('name', '?')} features): "
                     f"{summary['total']['fid']:.4f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- data
def load_eval_images(data: str | os.PathLike | None, size: int) -> tuple[list[Tensor], list[str], str]:
    """(images, names, description): ``data`` is a folder, or None for the held-out skimage photos.

    Images are resized (short side ``size``, bicubic) and centre-cropped to ``size`` x ``size``.
    """
    from attnorm.data.photos import ImageFolderFlat, SkimagePhotos

    if data is None:
        ds = SkimagePhotos("heldout", resolution=size, crop="center")
        return [ds[i] for i in range(len(ds))], [ds.name_of(i) for i in range(len(ds))], \
            f"scikit-image held-out photos {list(ds.names)}, centre crop {size}"
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    try:
        ds = ImageFolderFlat(root, resolution=size, crop="center")
    except ValueError as e:
        raise ValueError(f"empty data: {e}") from e
    return [ds[i] for i in range(len(ds))], [str(p.relative_to(root)) for p in ds.files], \
        f"images under {root}, centre crop {size}"
