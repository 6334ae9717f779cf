"""How AN's fused CPU kernels split samples over threads: in torch's OpenMP team or in a pool of Python threads.

    OMP_NUM_THREADS=2 python benchmarks/bench_kernel_threading.py --config configs/gan_demo.json \\
        --threads 2 --out benchmarks/results/an_cpu_s30/threading_demo

Where the kernels are built with OpenMP (``attnorm.layers.cpu_fused.status()["threading"] == "openmp"``)
they split a layer's samples in the team torch's own parallel loops use; otherwise in a pool of Python
threads, beside torch's OpenMP threads (which spin for a while after each of torch's loops). One process
times both ways on the same objects, alternating in every round (who goes first alternates too): a
training step of a GAN config (``--config``; the step as ``attnorm train-gan`` runs it) and the layer
alone, forward+backward (``--batch``, ``--channels``, ``--size``, channels-last). Writes
``OUT/results.json`` (every round, the machine, torch and code state) and ``OUT/results.md``; each
figure is the median time and the median over rounds of the OpenMP time over the pool's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import cpu_model, git_commit  # noqa: E402

from attnorm.bench import paired_ratio  # noqa: E402
from attnorm.cli.common import parse_overrides  # noqa: E402  (the CLI's own key=value parser)
from attnorm.layers import AttentiveNorm, cpu_fused  # noqa: E402
from attnorm.training import gan  # noqa: E402


def alternate(fn, rounds: int, repeats: int) -> dict[bool, list[float]]:
    """ms per call of ``fn`` with the samples split in OpenMP's team (True) and in the Python pool
    (False), ``repeats`` calls per round and way."""
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds):
        for openmp in ((True, False) if r % 2 == 0 else (False, True)):
            with cpu_fused.kernel_openmp_enabled(openmp):
                t0 = time.perf_counter()
                for _ in range(repeats):
                    fn()
                times[openmp].append((time.perf_counter() - t0) / repeats * 1000)
    return times


def summarise(times: dict[bool, list[float]]) -> dict:
    ratio, spread = paired_ratio(times[True], times[False])
    return {"openmp_ms": statistics.median(times[True]), "pool_ms": statistics.median(times[False]),
            "openmp_over_pool": ratio, "range": spread, "rounds_ms": {"openmp": times[True], "pool": times[False]}}


def main(argv=None) -> int:
    # this compares the kernels' two ways, also where they are off by default (built for 128-bit vectors)
    with cpu_fused.cpu_kernels_enabled(True):
        return _main(argv)


def _main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/gan_demo.json", help="a train-gan config file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=15, help="training steps per round and way")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (as train-gan's)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if cpu_fused._load() is None or cpu_fused.status()["threading"] != "openmp":
        raise SystemExit(f"error: the kernels do not split samples in OpenMP here ({cpu_fused.summary()}); "
                         "nothing to compare")
    layer = AttentiveNorm(args.channels, num_entities=16)
    x = torch.randn(args.batch, args.channels, args.size, args.size).to(
        memory_format=torch.channels_last).requires_grad_()

    def layer_step():
        y = layer(x)
        y.backward(torch.ones_like(y))

    for _ in range(5):
        layer_step()
    report = {"args": vars(args), "env": {"torch": torch.__version__, "code": git_commit(), "cpu": cpu_model(),
                                          "cpu_count": os.cpu_count(), "an_cpu_kernels": cpu_fused.summary()},
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    report["layer"] = summarise(alternate(layer_step, args.rounds, 10))
    cfg = gan.resolve_config(args.config, {**parse_overrides(args.set), "log_every": 0, "ckpt_every": 0,
                                           "sample_every": 0, "max_seconds": None, "threads": args.threads})
    with tempfile.TemporaryDirectory() as tmp:
        run = gan.GANTraining(cfg, Path(tmp) / "run")
        for _ in range(min(10, args.steps + 1)):
            run.loop.train_step()
        report["step"] = summarise(alternate(run.loop.train_step, args.rounds, args.steps))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    env = report["env"]
    lines = ["# AN's CPU kernels: samples split in torch's OpenMP team vs a pool of Python threads", "",
             f"{env['cpu']}, {args.threads} thread(s), torch {env['torch']}, code {env['code']}, {report['started']}; "
             f"median of {args.rounds} rounds, the two ways alternating; OpenMP / pool as the median of the rounds' "
             "ratios (their range)", "",
             "| what | OpenMP ms | pool ms | OpenMP / pool | range |", "| --- | --- | --- | --- | --- |"]
    for key, what in (("layer", f"AN fwd+bwd, b {args.batch}, c {args.channels}, {args.size}x{args.size}, "
                                "channels-last"), ("step", f"training step, {args.config}")):
        r = report[key]
        lines.append(f"| {what} | {r['openmp_ms']:.2f} | {r['pool_ms']:.2f} | {r['openmp_over_pool']:.3f} | "
                     f"{r['range'][0]:.3f}-{r['range'][1]:.3f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
