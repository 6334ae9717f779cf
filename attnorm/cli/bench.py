"""The ``bench`` command: the layer benchmark of :mod:`attnorm.bench`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import CommandError, int_list, nonnegative_int, output_file, positive_float, positive_int


def bench_arguments(p: argparse.ArgumentParser) -> None:
    import torch

    from attnorm.bench import AUTOCAST_DTYPES, DEFAULT_VARIANTS, VARIANTS
    p.add_argument("--sizes", type=int_list(1, 4096), default=(16, 32, 64, 128),
                   help="feature-map sides, comma-separated (1 to 4096)")
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--channels", type=positive_int, default=128)
    p.add_argument("--entities", type=positive_int, default=16)
    p.add_argument("--repeats", type=positive_int, default=7, help="timed runs per variant (median reported)")
    p.add_argument("--warmup", type=nonnegative_int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"subset of {','.join(VARIANTS)} (default: all but an_cstats, which compiles for seconds, the Triton paths an_triton, an_tsums, an_tall, an_tall_msum, and an_torch, the layer with its fused CPU kernels off, and an_msum, its three small products as multiply-and-sum)")
    p.add_argument("--max-mem-gb", type=positive_float, default=None,
                   help="skip variants whose estimated footprint exceeds this "
                        "(default: 60%% of the memory available now)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--glibc-default-malloc", action="store_true",
                   help="CPU: keep glibc's default trimming instead of keeping freed memory as training "
                        "does (attnorm.training.allocator)")
    p.add_argument("--compile", default=None, metavar="MODE",
                   help="torch.compile every variant with this mode (default, reduce-overhead, ...)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="CUDA only: capture each layer's forward and backward as CUDA graphs "
                        "(torch.cuda.make_graphed_callables) and time their replay")
    p.add_argument("--autocast", choices=tuple(AUTOCAST_DTYPES), default=None,
                   help="run every forward under torch.autocast with this dtype (default: float32)")
    p.add_argument("--channels-last", action="store_true",
                   help="the inputs, their gradients and the layers' weights in channels-last memory (the layout "
                        "the GAN and inpainting presets train in) instead of NCHW")
    p.add_argument("--json", default="bench_results/layers.json", help="where to write the JSON report")


def bench(args: argparse.Namespace) -> int:
    """Layer benchmark: regional norm fast vs literal; AN vs self-attention vs conv1x1+IN.

        attnorm bench                     # built-in sizes 16, 32, 64, 128; b=8, c=128, n=16
        attnorm bench --sizes 32,64 --variants an,sa,conv_in --json bench_results/small.json

    Forward+backward median time (runs interleaved across variants in one process) and peak
    memory (CPU: a subprocess per case, peak resident set of one step after a warm-up; CUDA:
    torch.cuda.max_memory_allocated). Variants whose estimated footprint exceeds --max-mem-gb
    are reported as skipped. The table ends with the targets as measured ratios.
    """
    from attnorm.bench import VARIANTS, default_memory_budget_gb, format_table, run
    from attnorm.errors import check_device
    from attnorm.io import write_text
    sizes = tuple(args.sizes)
    check_device(args.device)
    if args.cuda_graphs and args.compile:
        raise CommandError("--cuda-graphs and --compile each time their own way of running the layer; give one of them "
                           "(--compile reduce-overhead is compiling plus CUDA graphs)")
    if args.cuda_graphs and not str(args.device).startswith("cuda"):
        raise CommandError(f"--cuda-graphs needs a CUDA device, got --device {args.device}; drop --cuda-graphs or use --device cuda")
    if args.json:
        output_file(args.json, "--json")
    variants = tuple(v for v in args.variants.split(",") if v)
    for v in variants:
        if v not in VARIANTS:
            raise CommandError(f"unknown variant {v!r}; choose from {','.join(VARIANTS)}")
    if args.cuda_graphs and {"rn_fast", "rn_literal"} & set(variants):
        raise CommandError("--cuda-graphs times layer variants only; pass --variants from an,an_cstats,an_triton,an_tsums,an_tall,an_torch,an_msum,an_tall_msum,sa,conv_in")
    from attnorm.training.allocator import retain_freed_memory_on
    retained = not args.glibc_default_malloc and retain_freed_memory_on(args.device)
    report = run(sizes=sizes, batch=args.batch, channels=args.channels, entities=args.entities,
                 repeats=max(args.repeats, 1), warmup=args.warmup, device=args.device,
                 max_mem_gb=args.max_mem_gb or default_memory_budget_gb(), memory=not args.no_memory,
                 variants=variants, compile_mode=args.compile, autocast=args.autocast,
                 cuda_graphs=args.cuda_graphs, channels_last=args.channels_last)
    report["config"]["retain_freed_memory"] = retained
    print(format_table(report))
    if args.json:
        write_text(Path(args.json), json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0
