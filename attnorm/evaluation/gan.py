"""Evaluate a class-conditional GAN: FID, KID, IS, intra-FID, precision/recall, class accuracy.

    from attnorm.evaluation.gan import evaluate_gan
    res = evaluate_gan(checkpoint="runs/x/checkpoints/latest.pt", n=10000, out="results.json")
    res["metrics"]["fid"]["value"], res["metrics"]["fid"]["protocol"]

Protocol
--------
* Fake images: the EMA generator of a ``train-gan`` checkpoint (``use_ema=False``:
  the trained G) in eval mode, or any ``generator(z, y)`` callable. Sample ``i``
  has label ``i % num_classes`` (balanced); z ~ N(0, I) (optionally truncated)
  drawn batch after batch from ``torch.Generator().manual_seed(seed)``.
* Features: one extractor (:mod:`attnorm.metrics.extractors`, ``classifier`` by
  default, or ``inception``) for fake and real images; real images are at the
  generator's resolution and go through the same resizing.
* Real reference: :func:`attnorm.metrics.reference_stats.reference_statistics`
  (cached ``.npz``) of ``n_real`` (default ``n``) images of the checkpoint's data:
  its image folder, or the procedural shapes of its ``procedural_classes`` and
  ``seed`` (images ``[0, n_real)``, the start of its training stream).
* Metrics (:mod:`attnorm.metrics.maths`): ``fid`` (Frechet distance of the
  Gaussians), ``kid`` (unbiased cubic-kernel MMD^2, ``kid_subsets`` subsets of
  ``min(kid_subset_size, n, n_real)``), ``is`` (from the extractor's logits,
  ``is_splits`` splits; the pool3-only Inception file has no logits and raises),
  ``ifid`` (mean over classes of per-class FID), ``pr`` (improved precision/recall,
  k = ``pr_k``), ``acc`` (fraction of fakes the procedural classifier assigns to
  their conditioning class; procedural data only).

Every metric in the returned / written JSON carries its own ``protocol`` (extractor,
weights sha256, resize method, sample counts fake/real, reference split, seed).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from attnorm.io import sha256_file
from attnorm.metrics import maths
from attnorm.metrics.extractors import FeatureExtractor, LogitsUnavailableError, get_extractor
from attnorm.metrics.reference_stats import data_source, reference_statistics

log = logging.getLogger(__name__)

METRICS = ("fid", "kid", "is", "ifid", "pr", "acc")


class EvaluationError(ValueError):
    """A request that cannot be evaluated (bad checkpoint, too few samples, missing logits...)."""


def parse_metrics(spec: str | Sequence[str]) -> list[str]:
    items = [m.strip().lower() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    unknown = [m for m in items if m not in METRICS]
    if unknown or not items:
        raise EvaluationError(f"unknown metric(s) {unknown}; choose from {','.join(METRICS)}")
    return list(dict.fromkeys(items))


def _load_checkpoint(checkpoint: str | os.PathLike, device, use_ema: bool):
    from attnorm.checkpoints import load_gan_generator
    path = Path(checkpoint)
    if not path.is_file():
        raise EvaluationError(f"checkpoint {str(path)!r} not found (train-gan writes RUN_DIR/checkpoints/latest.pt)")
    try:
        return load_gan_generator(path, device=device, use_ema=use_ema)
    except Exception as exc:
        raise EvaluationError(f"could not load a train-gan generator from {path}: {exc}") from exc


def _check_counts(metrics: list[str], n: int, n_real: int | None, dim: int, num_classes: int, is_splits: int,
                  pr_k: int, warn: Callable[[str], None]) -> None:
    if n < 1:
        raise EvaluationError(f"n must be >= 1; got {n}")
    counts = [("fake", n)] + ([("real", n_real)] if n_real is not None else [])
    for what, m in counts:
        if any(x in metrics for x in ("fid", "kid")) and m < 2:
            raise EvaluationError(f"FID/KID need at least 2 {what} samples; got {m}")
        if "pr" in metrics and m < pr_k + 1:
            raise EvaluationError(f"precision/recall with k={pr_k} needs at least {pr_k + 1} {what} samples; got {m}")
        if "ifid" in metrics and m < 2 * num_classes:
            raise EvaluationError(f"intra-FID needs at least 2 {what} samples per class, i.e. "
                                  f"{2 * num_classes} for {num_classes} classes; got {m}")
        if "fid" in metrics and m < dim:
            warn(f"FID with {m} {what} samples < feature dim {dim}: the covariance is singular and FID is "
                 "strongly biased; use n >> dim for reportable numbers")
    if "is" in metrics and n < is_splits:
        raise EvaluationError(f"IS with {is_splits} splits needs at least {is_splits} fake samples; got {n} "
                              "(lower --is-splits or raise --n)")


def _procedural_classes_ok(class_names: Sequence[str]) -> bool:
    from attnorm.data.procedural import CLASS_NAMES
    return 0 < len(class_names) <= len(CLASS_NAMES) and list(class_names) == list(CLASS_NAMES[:len(class_names)])


@dataclass
class _Subject:
    """The generator under evaluation and what is known about it."""

    g: Callable
    info: dict                     # how it was obtained (checkpoint + sha256, or the callable's name)
    cfg: dict                      # its training config ({} for a callable)
    num_classes: int
    z_dim: int
    class_names: list[str] | None
    resolution: int


def _subject(generator, checkpoint, num_classes, z_dim, class_names, device, use_ema) -> _Subject:
    """The generator (a callable, or G of a train-gan checkpoint) in eval mode, with its class count,
    latent size, class names and output resolution."""
    if (generator is None) == (checkpoint is None):
        raise EvaluationError("give exactly one of generator or checkpoint")
    cfg: dict = {}
    if checkpoint is not None:
        g, extra = _load_checkpoint(checkpoint, device, use_ema)
        cfg = extra.get("config") or {}
        class_names = class_names or extra.get("classes")
        info = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
                "weights": "ema" if use_ema else "G"}
    else:
        g = generator
        info = {"callable": getattr(g, "__qualname__", type(g).__name__)}
    if isinstance(g, torch.nn.Module):
        g.eval()
    num_classes = int(num_classes or getattr(g, "num_classes", 0) or (len(class_names) if class_names else 0))
    z_dim = int(z_dim or getattr(g, "z_dim", 0))
    if num_classes < 1 or z_dim < 1:
        raise EvaluationError("num_classes and z_dim are needed for a generator callable without those attributes")
    if class_names is not None and len(class_names) != num_classes:
        raise EvaluationError(f"{len(class_names)} class names for {num_classes} classes")
    resolution = getattr(g, "resolution", None) or cfg.get("resolution")
    if resolution is None:  # a plain callable: look at one image
        with torch.no_grad():
            resolution = g(torch.zeros(1, z_dim, device=device), torch.zeros(1, dtype=torch.long, device=device)
                           ).shape[-1]
    return _Subject(g, info, cfg, num_classes, z_dim, class_names, int(resolution))


def _reference_source(subject: _Subject, data, ref_seed: int | None, pose: str | None,
                      warn: Callable[[str], None]):
    """The real data (default: the checkpoint's training data) and the class names to report."""
    if data is None:
        data = subject.cfg.get("data") or "procedural"
    if ref_seed is None:
        ref_seed = int(subject.cfg.get("seed", 0))
    if pose is None:
        pose = subject.cfg.get("procedural_pose") or "random"
    source = data_source(None if str(data) == "procedural" else data, subject.resolution, subject.num_classes,
                         ref_seed, pose=pose)
    names = subject.class_names
    if names is None:
        names = source.class_names
    elif list(names) != source.class_names:
        if source.kind == "procedural":
            raise EvaluationError(f"generator classes {list(names)} differ from the procedural classes "
                                  f"{source.class_names}")
        warn(f"generator classes {list(names)} differ from the data folder's classes "
             f"{source.class_names}; intra-FID pairs them by index")
    return source, list(names)


@dataclass
class _Fakes:
    """Features (and logits, and the classifier's hits for ``acc``) of the generated images."""

    features: np.ndarray
    labels: np.ndarray
    logits: np.ndarray | None
    correct: int = 0


def _generate(subject: _Subject, n: int, ext: FeatureExtractor, acc_ext: FeatureExtractor | None,
              need_logits: bool, batch_size: int, seed: int, truncation: float | None, device) -> _Fakes:
    """The samples of :func:`attnorm.inference.evaluation_samples` (label ``i % num_classes``, z drawn
    batch after batch from ``manual_seed(seed)``), through the extractor(s)."""
    from attnorm.inference import evaluation_samples
    t0 = time.time()
    feats, logits, labels, correct = [], [], [], 0
    for y, x in evaluation_samples(subject.g, n, subject.num_classes, subject.z_dim, seed, batch_size,
                                   truncation, device):
        f, lg = ext.features_and_logits(x, need_logits=need_logits)
        feats.append(f)
        if lg is not None:
            logits.append(lg)
        if acc_ext is not None:
            lg_acc = lg if acc_ext is ext else acc_ext.logits(x)
            correct += int((lg_acc.argmax(1) == y.numpy()).sum())
        labels.append(y.numpy())
        log.info("generated + extracted %d/%d (%.0fs)", sum(map(len, labels)), n, time.time() - t0)
    return _Fakes(np.concatenate(feats), np.concatenate(labels), np.concatenate(logits) if logits else None, correct)


def _real_as_fakes(source, n: int, n_ref: int, ext: FeatureExtractor, acc_ext: FeatureExtractor | None,
                   need_logits: bool, batch_size: int) -> tuple[_Fakes, str]:
    """A second real set, disjoint from the reference, in the place of the generated images."""
    indices, split = source.floor_indices(n, n_ref)
    feats, logits, labels, correct = [], [], [], 0
    for x, y in source.batches(indices, batch_size):
        f, lg = ext.features_and_logits(x, need_logits=need_logits)
        feats.append(f)
        if lg is not None:
            logits.append(lg)
        y = np.asarray(y, dtype=np.int64)
        labels.append(y)
        if acc_ext is not None:
            lg_acc = lg if (acc_ext is ext and lg is not None) else acc_ext.logits(x)
            correct += int((lg_acc.argmax(1) == y).sum())
        log.info("real-vs-real floor: %d/%d", sum(len(a) for a in labels), len(indices))
    return _Fakes(np.concatenate(feats), np.concatenate(labels), np.concatenate(logits) if logits else None,
                  correct), split


def _floor_numbers(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in ("protocol", "per_class")}


def _protocols(ext: FeatureExtractor, acc_ext: FeatureExtractor | None, ref: dict | None, subject: _Subject,
               n: int, seed: int, truncation: float | None) -> tuple[dict, dict | None]:
    """The protocol every feature metric shares, and that of ``acc`` (None when not requested)."""
    ep = ext.protocol
    common = {"extractor": ep.get("name", ext.name), "weights_file": ep.get("weights_file"),
              "weights_sha256": ep.get("weights_sha256"), "resize_method": ep.get("resize_method"),
              "feature_layer": ep.get("feature_layer"), "dim": ext.dim, "n_fake": n,
              "n_real": ref["n"] if ref is not None else None,
              "reference_split": ref["split"] if ref is not None else None, "seed": seed,
              "truncation": truncation, "resolution": subject.resolution}
    if acc_ext is None:
        return common, None
    ap = acc_ext.protocol
    return common, {"classifier": ap["name"], "weights_file": ap["weights_file"],
                    "weights_sha256": ap["weights_sha256"], "resize_method": ap["resize_method"], "n_fake": n,
                    "labels": "i % num_classes", "seed": seed, "truncation": truncation,
                    "resolution": subject.resolution}


def _metric_values(metrics: list[str], fakes: _Fakes, ref: dict | None, common: dict, class_names: list[str],
                   acc_protocol: dict | None, *, kid_subsets: int, kid_subset_size: int, is_splits: int, pr_k: int,
                   seed: int) -> dict[str, Any]:
    """Each requested metric's numbers next to its protocol (``common`` plus what is its own)."""
    fake, n = fakes.features, len(fakes.features)
    results: dict[str, Any] = {}
    if "fid" in metrics:
        mu, sigma = maths.feature_statistics(fake)
        results["fid"] = {"value": maths.frechet_distance(ref["mu"], ref["sigma"], mu, sigma),
                          "protocol": dict(common)}
    if "kid" in metrics:
        m, s = maths.kernel_inception_distance(ref["features"], fake, num_subsets=kid_subsets,
                                               subset_size=kid_subset_size, seed=seed)
        results["kid"] = {"mean": m, "std": s, "protocol": dict(
            common, num_subsets=kid_subsets, subset_size=min(kid_subset_size, n, ref["n"]),
            kernel="(x.y/dim + 1)^3", subset_seed=seed)}
    if "is" in metrics:
        m, s = maths.inception_score(fakes.logits, splits=is_splits)
        results["is"] = {"mean": m, "std": s, "protocol": dict(
            common, n_real=None, reference_split=None, splits=is_splits,
            logits=f"{common['extractor']} logits ({fakes.logits.shape[1]} classes)")}
    if "ifid" in metrics:
        results["ifid"] = _intra_fid(fake, fakes.labels, ref, common, class_names)
    if "pr" in metrics:
        r = maths.precision_recall(ref["features"], fake, k=pr_k)
        results["pr"] = {"precision": r["precision"], "recall": r["recall"], "protocol": dict(common, k=pr_k)}
    if "acc" in metrics:
        results["acc"] = {"value": fakes.correct / n, "protocol": acc_protocol}
    return results


def _intra_fid(fake: np.ndarray, y_fake: np.ndarray, ref: dict, common: dict, class_names: list[str]) -> dict:
    k = len(class_names)
    real_by = {c: ref["features"][ref["labels"] == c] for c in range(k)}
    fake_by = {c: fake[y_fake == c] for c in range(k)}
    short = [class_names[c] for c in range(k) if len(real_by[c]) < 2 or len(fake_by[c]) < 2]
    if short:
        raise EvaluationError(f"intra-FID needs >= 2 real and fake samples of every class; too few for {short}")
    r = maths.intra_fid(real_by, fake_by)
    return {"value": r["mean"], "per_class": {class_names[c]: v for c, v in r["per_class"].items()},
            "protocol": dict(common, per_class_n_fake={class_names[c]: int(len(fake_by[c])) for c in range(k)},
                             per_class_n_real={class_names[c]: int(len(real_by[c])) for c in range(k)})}


def evaluate_gan(generator: Callable | torch.nn.Module | None = None, *, checkpoint: str | os.PathLike | None = None,
                 num_classes: int | None = None, n: int = 10000, metrics: str | Sequence[str] = METRICS,
                 extractor: str | FeatureExtractor = "classifier", extractor_kwargs: dict | None = None,
                 data: str | os.PathLike | None = None, n_real: int | None = None, ref_seed: int | None = None,
                 pose: str | None = None,
                 batch_size: int = 100, seed: int = 0, truncation: float | None = None, use_ema: bool = True,
                 z_dim: int | None = None, class_names: list[str] | None = None, device: str = "cpu",
                 cache_dir: str | os.PathLike | None = None, use_cache: bool = True,
                 out: str | os.PathLike | None = None, kid_subsets: int = 100, kid_subset_size: int = 1000,
                 is_splits: int = 10, pr_k: int = 3, floor: bool = False, draws: int = 1) -> dict:
    """Score a generator; see the module doc for the protocol. Progress lines and warnings go to
    this module's logger (warnings are also listed in the result).

    Args:
        generator: a ``Generator`` or a callable ``(z, y) -> images in [-1, 1]`` (needs ``num_classes``
            and ``z_dim`` unless it has such attributes). Exclusive with ``checkpoint``.
        checkpoint: a ``train-gan`` checkpoint; its EMA generator is used (``use_ema``).
        data: real data: None = the checkpoint's data (procedural shapes for a callable),
            ``"procedural"``, or an image folder.
        n, n_real: fake / real sample counts (``n_real`` default: ``n``; a folder: at most all its images).
        ref_seed: procedural dataset seed of the reference (default: the checkpoint's training seed, else 0).
        pose: procedural pose variant of the reference (default: the checkpoint's ``procedural_pose``,
            else ``"random"``; see :mod:`attnorm.data.procedural`).
        out: write the result as JSON there.
        floor: also score a second real set of ``n`` images (disjoint from the reference) the
            same way, and put its numbers under ``"floor"`` beside each metric's: the best a
            generator can expect at this sample size (accuracy: the classifier on real images).
        draws: score ``draws`` independent draws and report their mean: draw ``k`` takes the latents
            of seed ``seed + k`` and, on procedural data, the reference (and floor) of dataset seed
            ``ref_seed + k`` (an image folder has one reference: only the latents change). Each
            metric's numbers are then the means over the draws, with ``over_draws`` beside them
            (each number's per-draw values and standard deviation); draw 0 is the single-draw result.
            One draw's precision / recall at n = 2000 moves by about 0.02 from draw to draw
            (session 35, demo checkpoints), so a single draw cannot tell apart runs closer than that.
    Returns: ``{"metrics": {name: {..numbers.., "protocol": {...}}}, "protocol": {...}, "warnings": [...]}``.
    """
    t0 = time.time()
    metrics = parse_metrics(metrics)
    warn_list: list[str] = []

    def warn(msg: str) -> None:
        warn_list.append(msg)
        log.warning(msg)

    if not isinstance(draws, int) or isinstance(draws, bool) or draws < 1:
        raise EvaluationError(f"draws must be an integer >= 1; got {draws!r}")
    subject = _subject(generator, checkpoint, num_classes, z_dim, class_names, device, use_ema)
    if ref_seed is None:
        ref_seed = int(subject.cfg.get("seed", 0))
    source, class_names = _reference_source(subject, data, ref_seed, pose, warn)
    if n_real is None:
        n_real = n if source.size is None else min(n, source.size)

    # extractors and the checks that need no sample
    ext = extractor if isinstance(extractor, FeatureExtractor) else get_extractor(
        extractor, device=device, **(extractor_kwargs or {}))
    if "is" in metrics and not ext.has_logits:
        raise LogitsUnavailableError(ext.logits_unavailable_message() + " (drop 'is' from the metrics)")
    if "acc" in metrics and not _procedural_classes_ok(class_names):
        raise EvaluationError("'acc' uses the procedural-shapes classifier; the generator's classes "
                              f"{list(class_names)} are not procedural shapes (drop 'acc' from the metrics)")
    _check_counts(metrics, n, n_real, ext.dim, subject.num_classes, is_splits, pr_k, warn)
    acc_ext = None
    if "acc" in metrics:
        acc_ext = ext if ext.name == "classifier" else get_extractor("classifier", device=device)

    def one_draw(k: int) -> tuple[dict, dict | None]:
        src = source
        if k and source.kind == "procedural":
            src, _ = _reference_source(subject, data, ref_seed + k, pose, warn)
        ref = None
        if any(m in metrics for m in ("fid", "kid", "ifid", "pr")):
            ref = reference_statistics(src, ext, n_real, batch_size=batch_size, cache_dir=cache_dir,
                                       use_cache=use_cache)
            if any(m in metrics for m in ("kid", "ifid", "pr")) and "features" not in ref:
                raise EvaluationError(f"KID / intra-FID / PR need the real features, which are not kept for "
                                      f"n_real={ref['n']} x dim={ext.dim}; lower n_real")
        fakes = _generate(subject, n, ext, acc_ext, "is" in metrics, batch_size, seed + k, truncation, device)
        common, acc_protocol = _protocols(ext, acc_ext, ref, subject, n, seed + k, truncation)
        res = _metric_values(metrics, fakes, ref, common, class_names, acc_protocol, kid_subsets=kid_subsets,
                             kid_subset_size=kid_subset_size, is_splits=is_splits, pr_k=pr_k, seed=seed + k)
        if floor:
            real, floor_split = _real_as_fakes(src, n, ref["n"] if ref is not None else 0, ext, acc_ext,
                                               "is" in metrics, batch_size)
            if len(real.features) < 2:
                if k == 0:
                    warn("no real images outside the reference split: no real-vs-real floor")
            else:
                fl = _metric_values(metrics, real, ref, common, class_names, acc_protocol, kid_subsets=kid_subsets,
                                    kid_subset_size=kid_subset_size, is_splits=is_splits, pr_k=pr_k, seed=seed + k)
                for name, r in fl.items():
                    res[name]["floor"] = _floor_numbers(r)
                    res[name]["protocol"] = dict(res[name]["protocol"] or {}, floor_split=floor_split,
                                                 floor_n=len(real.features))
        return res, ref

    per_draw = []
    for k in range(draws):
        if draws > 1:
            log.info("draw %d/%d: latents seed %d, reference seed %s", k + 1, draws, seed + k,
                     ref_seed + k if source.kind == "procedural" else "- (image folder)")
        per_draw.append(one_draw(k))
    results, ref = per_draw[0]
    if draws > 1:
        results = _combine_draws([r for r, _ in per_draw], seed, ref_seed if source.kind == "procedural" else None)
    result = {
        "metrics": results,
        "protocol": {
            "generator": dict(subject.info, z="N(0, I) from torch.Generator().manual_seed(seed), batch after batch",
                              labels="sample i has class i % num_classes", truncation=truncation,
                              batch_size=batch_size),
            "extractor": ext.protocol, "num_classes": subject.num_classes, "class_names": list(class_names),
            "resolution": subject.resolution, "n_fake": n, "seed": seed,
            "reference": None if ref is None else {"data": source.id, "split": ref["split"], "n_real": ref["n"],
                                                   "cache": ref["path"], "cached": bool(ref["cached"])},
            "draws": draws,
            "seconds": round(time.time() - t0, 2),
        },
        "warnings": warn_list,
    }
    if out is not None:
        from attnorm.io import write_text
        path = write_text(Path(out), json.dumps(result, indent=2) + "\n")  # atomic
        log.info("wrote %s", path)
    return result


def _combine_draws(draws: list[dict], seed: int, ref_seed: int | None) -> dict:
    """The metrics of several draws as one: every number the mean over the draws (nested dicts such
    as intra-FID's ``per_class`` and the floors alike), and under ``over_draws`` each top-level number's
    per-draw values and sample standard deviation (the floor's under ``over_draws["floor"]``)."""
    def mean_of(items: list):
        first = items[0]
        if isinstance(first, dict):
            return {key: mean_of([it[key] for it in items]) for key in first}
        if isinstance(first, (int, float)) and not isinstance(first, bool):
            return float(np.mean(items))
        return first

    def spread(items: list[dict]) -> dict:
        return {key: {"values": [float(it[key]) for it in items],
                      "std": float(np.std([it[key] for it in items], ddof=1))}
                for key, v in items[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    out = {}
    for name in draws[0]:
        rs = [d[name] for d in draws]
        numbers = [{key: v for key, v in r.items() if key != "protocol"} for r in rs]
        combined = mean_of(numbers)
        combined["over_draws"] = spread(numbers)
        if all("floor" in r for r in rs):
            combined["over_draws"]["floor"] = spread([r["floor"] for r in rs])
        combined["protocol"] = dict(rs[0]["protocol"] or {}, draws=len(draws),
                                    seeds=[seed + k for k in range(len(draws))],
                                    reference_seeds=None if ref_seed is None else
                                    [ref_seed + k for k in range(len(draws))],
                                    aggregate="mean over the draws; over_draws: per-draw values, sample std")
        out[name] = combined
    return out


def format_summary(result: dict) -> str:
    lines = []
    for name, r in result["metrics"].items():
        fl = r.get("floor")
        od = r.get("over_draws") or {}

        def sd(key: str) -> str:  # the spread over draws, when there are several
            return f" (sd {od[key]['std']:.4f})" if key in od else ""
        if "value" in r:
            lines.append(f"{name:5s} {r['value']:.4f}{sd('value')}"
                         + (f"   (real-vs-real floor {fl['value']:.4f})" if fl else ""))
        elif name == "pr":
            lines.append(f"pr    precision {r['precision']:.4f}{sd('precision')} recall {r['recall']:.4f}{sd('recall')}"
                         + (f"   (floor: precision {fl['precision']:.4f} recall {fl['recall']:.4f})" if fl else ""))
        else:
            lines.append(f"{name:5s} {r['mean']:.6g} +- {r['std']:.3g}{sd('mean')}"
                         + (f"   (floor {fl['mean']:.6g} +- {fl['std']:.3g})" if fl else ""))
    p = result["protocol"]
    ex = p["extractor"]
    draws = p.get("draws", 1)
    lines.append(f"({ex['name']} {ex.get('weights_sha256', '')[:12]}, n_fake {p['n_fake']}, "
                 f"n_real {p['reference']['n_real'] if p['reference'] else '-'}, seed {p['seed']}"
                 + (f"; means over {draws} draws, seeds {p['seed']}-{p['seed'] + draws - 1}, sd = their spread"
                    if draws > 1 else "") + ")")
    return "\n".join(lines)


def discriminator_class_probe(D: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                              num_classes: int, batch_size: int = 128) -> dict[str, Any]:
    """How well a conditional discriminator knows the classes: its logits for every label of real images.

    For each image and each shift ``c`` in ``[0, num_classes)`` the logit ``D(x, (y + c) % C)`` is
    computed, D in eval mode, the images of a batch keeping their mixed labels as in training (a
    minibatch-stddev channel sees the same kind of batch). From that (N, C) logit matrix ``L``:

    * ``label_accuracy``: fraction of images whose highest logit is at their own label (D used as
      a classifier; chance ``1 / C``);
    * ``pairwise``: fraction of (image, wrong label) pairs with ``L[i, y_i] > L[i, c]`` (chance 0.5);
    * ``margin``: mean of ``L[i, y_i] - mean_{c != y_i} L[i, c]``.
    A G can only learn the classes through D's label-dependent logit, so a D near chance here gives
    G no class signal.
    """
    if images.shape[0] != labels.shape[0] or images.shape[0] == 0:
        raise EvaluationError(f"need as many labels as images (> 0), got {images.shape[0]} and {labels.shape[0]}")
    if num_classes < 2:
        raise EvaluationError(f"the probe needs at least 2 classes, got {num_classes}")
    was_training = D.training
    D.eval()
    device = next(D.parameters()).device
    rows = []
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                x = images[start:start + batch_size].to(device)
                y = labels[start:start + batch_size].to(device)
                logits = torch.stack([D(x, (y + c) % num_classes) for c in range(num_classes)], 1)  # (b, C) by shift
                # column j of the shifted matrix holds label (y + j) % C; put it back at column label
                cols = (y.unsqueeze(1) + torch.arange(num_classes, device=device)) % num_classes
                rows.append(torch.empty_like(logits).scatter_(1, cols, logits).double().cpu())
    finally:
        D.train(was_training)
    L = torch.cat(rows)  # (N, C): L[i, c] = D(x_i, c)
    y = labels.long().cpu()
    own = L.gather(1, y[:, None])  # (N, 1)
    wrong = torch.ones_like(L, dtype=torch.bool).scatter_(1, y[:, None], False)
    return {
        "label_accuracy": float((L.argmax(1) == y).double().mean()),
        "pairwise": float((own > L)[wrong].double().mean()),
        "margin": float((own.squeeze(1) - (L * wrong).sum(1) / (num_classes - 1)).mean()),
        "n": int(L.shape[0]), "num_classes": int(num_classes), "chance_accuracy": 1.0 / num_classes,
    }
