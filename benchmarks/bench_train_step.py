"""Training-step time of a GAN or inpainting config with one boolean config key off and on: by
default ``channels_last`` (the networks in channels-last vs the usual NCHW layout).

    python benchmarks/bench_train_step.py --config configs/gan_demo.json --amp both --threads 1 \\
        --out benchmarks/results/gan_memory_format_s13/demo
    python benchmarks/bench_train_step.py --task inpaint --config configs/inpaint_cpu_small.json \\
        --amp both --threads 1 --out benchmarks/results/inpaint_memory_format_s13
    python benchmarks/bench_train_step.py --config configs/gan_demo.json --compare reuse_fakes --amp on \\
        --threads 1 --out benchmarks/results/gan_reuse_fakes_s14

(Until session 14 this script was ``bench_memory_format.py`` and compared layouts only.)
For every (amp, key off / on) setting it builds the run ``attnorm train-gan`` (or
``train-inpaint``) would (``attnorm.training.gan.GANTraining`` / ``attnorm.training.inpaint.InpaintTraining``:
data, EMA, loss, optimisers; nothing written but a config file in a temporary folder) and times
``loop.train_step()`` (one D phase and one G phase per step of the demo preset). The settings of
one ``amp`` value are timed in alternating rounds in the same process, so a load change on the
machine hits both; the figure is the median of ``--rounds`` rounds of ``--steps`` steps, after
``--warmup`` untimed steps each. Writes ``OUT/results.json``
(every round, the machine, torch and code state) and ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import git_commit  # noqa: E402

from attnorm.training import gan, inpaint  # noqa: E402

TASKS = {"gan": (gan.GANTraining, gan.resolve_config), "inpaint": (inpaint.InpaintTraining, inpaint.resolve_config)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_settings(config: str | None, overrides: dict, amp: bool, rounds: int, steps: int,
                  warmup: int, task: str = "gan", key: str = "channels_last") -> dict[bool, list[float]]:
    """Seconds per training step, one entry per round, for config ``key`` False and True."""
    training, resolve_config = TASKS[task]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for on in (False, True):
            cfg = resolve_config(config, {**overrides, "amp": amp, key: on, "log_every": 0,
                                          "ckpt_every": 0, "sample_every": 0, "max_seconds": None})
            runs[on] = training(cfg, Path(tmp) / f"{key}{int(on)}")
        for run in runs.values():
            for _ in range(warmup):
                run.loop.train_step()
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(rounds):
            for on in ((False, True) if r % 2 == 0 else (True, False)):  # alternate who goes first
                t0 = time.perf_counter()
                for _ in range(steps):
                    runs[on].loop.train_step()
                times[on].append((time.perf_counter() - t0) / steps)
    return times


def to_markdown(report: dict) -> str:
    env, args = report["env"], report["args"]
    key = args["compare"]
    lines = [f"# {args['task']} training step: {key} off vs on ({args['config'] or 'DEFAULT_CONFIG'})", "",
             f"{env['cpu']}, {args['threads']} thread(s), torch {env['torch']}, code {env['code']}, "
             f"{report['started']}; median of {args['rounds']} rounds of {args['steps']} steps", "",
             f"| amp | {key}=false ms/step | {key}=true ms/step | speed-up |", "| --- | --- | --- | --- |"]
    for row in report["rows"]:
        lines.append(f"| {row['amp']} | {row['off_ms']:.1f} | {row['on_ms']:.1f} | {row['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="gan")
    ap.add_argument("--config", default=None, help="a train-gan / train-inpaint config file (default: the task's defaults)")
    ap.add_argument("--compare", default="channels_last", metavar="KEY",
                    help="the boolean config key timed off and on (default: channels_last)")
    ap.add_argument("--amp", choices=["on", "off", "both"], default="both", help="bf16 autocast settings to time")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10, help="training steps per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (as train-gan's)")
    ap.add_argument("--out", default="bench_results/train_step")
    args = ap.parse_args(argv)
    from attnorm.cli.common import parse_overrides  # the CLI's own key=value parser
    overrides = {**parse_overrides(args.set), "threads": args.threads}
    default = TASKS[args.task][1](args.config, overrides).get(args.compare, "missing")
    if not isinstance(default, bool) and default is not None:
        raise SystemExit(f"error: --compare {args.compare}: not a boolean config key of {args.task} training; "
                         f"name one such as channels_last")
    torch.set_num_threads(args.threads)
    report = {"args": vars(args), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "env": {"torch": torch.__version__, "code": git_commit(), "python": platform.python_version(),
                      "cpu": cpu_model(), "cpu_count": os.cpu_count()}, "rows": []}
    for amp in {"on": [True], "off": [False], "both": [False, True]}[args.amp]:
        times = time_settings(args.config, overrides, amp, args.rounds, args.steps, args.warmup, args.task,
                              args.compare)
        off, on = statistics.median(times[False]), statistics.median(times[True])
        row = {"amp": amp, "off_ms": 1000 * off, "on_ms": 1000 * on, "speedup": off / on,
               "rounds_s": {"off": times[False], "on": times[True]}}
        report["rows"].append(row)
        print(f"amp={amp}: {args.compare}=false {row['off_ms']:.1f} ms/step, {args.compare}=true {row['on_ms']:.1f} "
              f"ms/step ({row['speedup']:.2f}x)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(to_markdown(report))
    print(f"wrote {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
