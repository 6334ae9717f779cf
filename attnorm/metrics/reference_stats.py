"""Reference (real-data) feature statistics, cached on disk.

    src = data_source(None, resolution=32, num_classes=10, seed=0)     # procedural shapes
    src = data_source("data/flowers", resolution=64)                   # image folder
    ref = reference_statistics(src, get_extractor("classifier"), n=10000)
    ref["mu"], ref["sigma"], ref["features"], ref["labels"], ref["cached"], ref["path"]

The cache is one ``.npz`` per key ``(dataset id, resolution, extractor name, weights
sha256, resize method, sample count, reference split)``; the key is stored in the
file and checked on load, so a changed dataset, network or count recomputes. The
cache folder is ``cache_dir``, else ``$ATTNORM_STATS_CACHE``, else
``~/.cache/attnorm/reference_stats``.

Features are stored as float32 (the networks compute in float32, so this is
lossless for them) and ``mu``/``sigma`` are computed from those stored values, so
a fresh and a cached result are identical. Features are kept when
``n * dim <= max_feature_values`` (KID, precision/recall and intra-FID need them);
otherwise only ``mu``/``sigma`` and the labels are stored.

Reference splits: procedural data uses images ``[0, n)`` of
``ProceduralShapes(resolution, num_classes, seed)`` (the training set of a GAN
trained with that seed); an image folder uses all its images when ``n`` is None
or at least the folder size, else ``n`` images drawn without replacement by
``numpy.random.default_rng(seed)`` (no flips).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from attnorm.io import atomic_write

from .maths import feature_statistics

log = logging.getLogger(__name__)

CACHE_ENV = "ATTNORM_STATS_CACHE"
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "attnorm" / "reference_stats"


@dataclass
class DataSource:
    """Real images for reference statistics. ``load(indices)`` -> (images (b, 3, R, R) in [-1, 1], labels (b,))."""

    kind: str                      # "procedural" | "folder"
    id: str                        # identifies the data (part of the cache key)
    resolution: int
    class_names: list[str]
    size: int | None               # number of images (None: unbounded)
    load: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]] = field(repr=False)
    seed: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def indices(self, n: int | None) -> tuple[list[int], str]:
        """The reference split: indices and a description of it."""
        if self.kind == "procedural":
            if n is None:
                raise ValueError("procedural data is unbounded: give the number of reference images n")
            return list(range(n)), f"{self.id}, images [0, {n})"
        assert self.size is not None
        if n is None or n >= self.size:
            return list(range(self.size)), f"{self.id}, all {self.size} images"
        idx = np.sort(np.random.default_rng(self.seed).choice(self.size, n, replace=False))
        return idx.tolist(), f"{self.id}, {n} of {self.size} images drawn with default_rng({self.seed})"

    def floor_indices(self, n: int, n_ref: int | None) -> tuple[list[int], str]:
        """A second real set of (up to) ``n`` images, disjoint from the reference split of ``n_ref``
        images: the real-vs-real floor of a metric scores it as if it were the generator's output."""
        if self.kind == "procedural":
            start = int(n_ref or 0)
            return list(range(start, start + n)), f"{self.id}, images [{start}, {start + n})"
        assert self.size is not None
        ref = set(self.indices(n_ref)[0])
        rest = [i for i in range(self.size) if i not in ref]
        if len(rest) > n:
            rest = np.sort(np.random.default_rng(self.seed + 1).choice(rest, n, replace=False)).tolist()
        return rest, f"{self.id}, {len(rest)} images outside the reference split"

    def batches(self, indices: list[int], batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(indices), batch_size):
            yield self.load(indices[i:i + batch_size])


def _folder_fingerprint(samples: list[tuple[str, int]], root: Path) -> str:
    h = hashlib.sha1()
    for path, label in samples:
        st = os.stat(path)
        h.update(f"{os.path.relpath(path, root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def data_source(data: str | os.PathLike | None, resolution: int, num_classes: int | None = None,
                seed: int = 0, pose: str = "random") -> DataSource:
    """``data`` None: procedural shapes (``num_classes`` classes, dataset ``seed``, ``pose``);
    else an image folder with one subfolder per class (``seed`` draws subsets)."""
    if data is None:
        from attnorm.data.procedural import CLASS_NAMES, ProceduralShapes
        k = len(CLASS_NAMES) if num_classes is None else int(num_classes)
        ds = ProceduralShapes(resolution=resolution, num_classes=k, seed=seed, pose=pose)
        posed = "" if pose == "random" else f", pose={pose}"  # the default keeps its old cache key
        return DataSource("procedural", f"procedural(classes={k}, seed={seed}{posed})", resolution,
                          list(ds.classes), None, ds.get_batch, seed)
    from attnorm.data.folder import ImageFolderDataset
    root = Path(data).resolve()
    ds = ImageFolderDataset(root, resolution=resolution, hflip=False, cache=False)
    if num_classes is not None and num_classes != len(ds.classes):
        raise ValueError(f"data folder {str(root)!r} has {len(ds.classes)} classes but {num_classes} were expected")
    fid = f"folder({root}, files={len(ds)}, fingerprint={_folder_fingerprint(ds.samples, root)})"
    return DataSource("folder", fid, resolution, list(ds.classes), len(ds), ds.get_batch, seed)


def cache_key(source: DataSource, extractor, n: int, split: str) -> dict:
    p = extractor.protocol
    return {"version": CACHE_VERSION, "dataset": source.id, "resolution": source.resolution,
            "extractor": p.get("name", extractor.name), "weights_sha256": p.get("weights_sha256"),
            "resize_method": p.get("resize_method"), "n": n, "split": split}


def cache_path(key: dict, cache_dir: str | os.PathLike | None = None) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = f"{key['extractor']}_{key['resolution']}px_n{key['n']}_{digest}.npz"
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / name


def _load(path: Path, key: dict) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["key"])) != key:
                return None
            out = {k: z[k] for k in z.files if k != "key"}
    except (OSError, ValueError, KeyError):
        return None
    if "features" in out:
        out["features"] = out["features"].astype(np.float64)
    return out


def reference_statistics(source: DataSource, extractor, n: int | None, batch_size: int = 100,
                         cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                         max_feature_values: int = 1 << 25) -> dict:
    """mu/sigma (+ float32-exact features and labels) of ``n`` real images of ``source``.

    Returns a dict with ``mu`` (d,), ``sigma`` (d, d), ``labels`` (n,), ``features``
    (n, d) float64 or absent, ``n``, ``split`` (description), ``key``, ``path``
    (cache file or None) and ``cached`` (True when loaded from the cache).
    """
    indices, split = source.indices(n)
    n = len(indices)
    if n < 2:
        raise ValueError(f"reference statistics need at least 2 real images; got {n}")
    key = cache_key(source, extractor, n, split)
    path = cache_path(key, cache_dir) if use_cache else None
    if path is not None and path.is_file():
        out = _load(path, key)
        if out is not None:
            log.info("reference statistics: loaded %s", path)
            return {**out, "n": n, "split": split, "key": key, "path": str(path), "cached": True}
    feats, labels, done = [], [], 0
    for x, y in source.batches(indices, batch_size):
        feats.append(extractor.features(x).astype(np.float32))
        labels.append(np.asarray(y, dtype=np.int64))
        done += len(y)
        log.info("reference features [%s]: %d/%d", extractor.name, done, n)
    f32 = np.concatenate(feats)
    f64 = f32.astype(np.float64)
    mu, sigma = feature_statistics(f64)
    out: dict[str, Any] = {"mu": mu, "sigma": sigma, "labels": np.concatenate(labels)}
    if f32.size <= max_feature_values:
        out["features"] = f64
    if path is not None:
        save = {k: v for k, v in out.items() if k != "features"}
        if "features" in out:
            save["features"] = f32
        atomic_write(path, lambda tmp: np.savez(tmp, key=np.array(json.dumps(key, sort_keys=True)), **save),
                     suffix=".npz")
        log.info("reference statistics: wrote %s", path)
    return {**out, "n": n, "split": split, "key": key, "path": str(path) if path else None, "cached": False}
