"""Training-step time of a GAN or inpainting config with one config key set two ways: by default
``channels_last`` off and on (the networks in channels-last vs the usual NCHW layout); any boolean
key by name, or any key with two values as ``KEY=A,B`` (``attention=none,an``: AN's cost in a step).

    python benchmarks/bench_train_step.py --config configs/gan_demo.json --amp both --threads 1 \\
        --out benchmarks/results/gan_memory_format_s13/demo
    python benchmarks/bench_train_step.py --task inpaint --config configs/inpaint_cpu_small.json \\
        --amp both --threads 1 --out benchmarks/results/inpaint_memory_format_s13
    python benchmarks/bench_train_step.py --config configs/gan_demo.json --compare reuse_fakes --amp on \\
        --threads 1 --out benchmarks/results/gan_reuse_fakes_s14
    python benchmarks/bench_train_step.py --config configs/gan_demo.json --compare attention=none,an \\
        --amp both --threads 1 --out benchmarks/results/gan_step_preset_s16/res32

(Until session 14 this script was ``bench_memory_format.py`` and compared layouts only; until
session 16 it compared boolean keys only, with the columns ``off_ms`` / ``on_ms`` / ``speedup``.)
For every (amp, value) setting it builds the run ``attnorm train-gan`` (or
``train-inpaint``) would (``attnorm.training.gan.GANTraining`` / ``attnorm.training.inpaint.InpaintTraining``:
data, EMA, loss, optimisers; nothing written but a config file in a temporary folder) and times
``loop.train_step()`` (one D phase and one G phase per step of the demo preset). The two settings of
one ``amp`` value are timed in alternating rounds in the same process, so a load change on the
machine hits both; each time is the median of ``--rounds`` rounds of ``--steps`` steps, after
``--warmup`` untimed steps each. The ratio reported is B's time over A's as the median of the
per-round ratios (``attnorm.bench.paired_ratio``, as ``attnorm bench`` judges its targets; since
session 22), with the smallest and largest round's ratio; the ratio of the two medians is kept beside
it (``b_over_a``, the only ratio until then). Unless ``--no-flops``, each setting's matrix-product and
convolution FLOPs of one step are counted too (``flop_ratio``: what the arithmetic alone would make the
time ratio; a time ratio far above it is overhead or memory traffic, not work). With ``--profile N``,
each setting's N steps after the timing are run under ``torch.profiler`` and the per-op self CPU time per step
is written beside the times, with the ops that make up the difference between the two settings (session 25:
where AN's share of a step goes). Writes ``OUT/results.json`` (every round, the machine, torch and code state)
and ``OUT/results.md``.

    python benchmarks/bench_train_step.py --config configs/gan_cpu_small.json --compare attention=none,an \
        --amp off --threads 1 --set resolution=64 --profile 5 --out benchmarks/results/an_cpu_s25/small_res64_profile
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
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import cpu_model, git_commit  # noqa: E402

from attnorm.bench import paired_ratio  # noqa: E402
from attnorm.cli.common import parse_overrides  # noqa: E402  (the CLI's own key=value parser)
from attnorm.errors import UserError  # noqa: E402
from attnorm.layers import cpu_fused  # noqa: E402
from attnorm.training import gan, inpaint  # noqa: E402

TASKS = {"gan": (gan.GANTraining, gan.resolve_config), "inpaint": (inpaint.InpaintTraining, inpaint.resolve_config)}


def step_flops(run) -> int:
    """Floating-point operations of one training step of ``run`` (it trains one step): what
    ``torch.utils.flop_counter.FlopCounterMode`` counts, i.e. the matrix products and convolutions
    of the forwards and backwards (elementwise work, normalisations and softmax are not counted)."""
    with FlopCounterMode(display=False) as counter:
        run.loop.train_step()
    return int(counter.get_total_flops())


def step_op_profile(run, steps: int) -> dict[str, dict[str, float]]:
    """``{op: {"ms": self CPU ms per step, "calls": calls per step}}`` over ``steps`` training steps of
    ``run`` under ``torch.profiler`` (CPU activity; an op's self time leaves out the ops it calls, so the
    values add up to the profiled time)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            run.loop.train_step()
    return {e.key: {"ms": e.self_cpu_time_total / 1000 / steps, "calls": e.count / steps}
            for e in prof.key_averages()}


def profile_difference(a: dict, b: dict, top: int = 15) -> list[dict]:
    """The ops whose self time per step differs most between two :func:`step_op_profile` results, largest
    difference first: ``top`` ops where B takes longer, then up to ``top`` where A does."""
    rows = []
    for op in set(a) | set(b):
        pa, pb = a.get(op, {"ms": 0.0, "calls": 0.0}), b.get(op, {"ms": 0.0, "calls": 0.0})
        rows.append({"op": op, "a_ms": pa["ms"], "b_ms": pb["ms"], "diff_ms": pb["ms"] - pa["ms"],
                     "a_calls": pa["calls"], "b_calls": pb["calls"]})
    rows.sort(key=lambda r: -r["diff_ms"])
    more = [r for r in rows if r["diff_ms"] > 0][:top]
    less = [r for r in reversed(rows) if r["diff_ms"] < 0][:top]
    return more + less


def time_settings(config: str | None, overrides: dict, amp: bool, rounds: int, steps: int, warmup: int,
                  task: str = "gan", key: str = "channels_last", values: tuple = (False, True),
                  flops: list | None = None, profile_steps: int = 0,
                  profiles: list | None = None) -> list[list[float]]:
    """Seconds per training step, one entry per round, for config ``key`` = each of the two ``values``.
    With a list as ``flops``, each setting's :func:`step_flops` is appended to it (one untimed step
    each, after the warm-up); with ``profile_steps`` and a list as ``profiles``, each setting's
    :func:`step_op_profile` of that many steps after the timing."""
    training, resolve_config = TASKS[task]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, value in enumerate(values):
            cfg = resolve_config(config, {**overrides, "amp": amp, key: value, "log_every": 0,
                                          "ckpt_every": 0, "sample_every": 0, "max_seconds": None})
            runs.append(training(cfg, Path(tmp) / f"setting{i}"))
        for run in runs:
            for _ in range(warmup):
                run.loop.train_step()
            if flops is not None:
                flops.append(step_flops(run))
        times: list[list[float]] = [[], []]
        for r in range(rounds):
            for i in ((0, 1) if r % 2 == 0 else (1, 0)):  # alternate who goes first
                t0 = time.perf_counter()
                for _ in range(steps):
                    runs[i].loop.train_step()
                times[i].append((time.perf_counter() - t0) / steps)
        if profile_steps and profiles is not None:
            profiles.extend(step_op_profile(run, profile_steps) for run in runs)
    return times


def parse_compare(spec: str, defaults: dict, task: str) -> tuple[str, tuple]:
    """``KEY`` (a boolean key: false, true) or ``KEY=A,B`` (two values, parsed as the CLI parses
    ``key=value``) -> (key, (A, B)); SystemExit with one line when the key or the values do not fit."""
    key, sep, rest = spec.partition("=")
    if key not in defaults:
        raise SystemExit(f"error: --compare {spec}: {key!r} is not a config key of {task} training")
    if not sep:
        if not isinstance(defaults[key], bool) and defaults[key] is not None:
            raise SystemExit(f"error: --compare {spec}: not a boolean config key of {task} training; name one "
                             f"such as channels_last, or give two values as {key}=A,B")
        return key, (False, True)
    parts = rest.split(",")
    if len(parts) != 2 or not all(parts):
        raise SystemExit(f"error: --compare {spec}: give exactly two values, as {key}=A,B (e.g. attention=none,an)")
    return key, tuple(parse_overrides([f"{key}={v}"])[key] for v in parts)


def _label(key: str, value) -> str:
    return f"{key}={json.dumps(value) if not isinstance(value, str) else value}"


def to_markdown(report: dict) -> str:
    env, args = report["env"], report["args"]
    a, b = report["labels"]
    lines = [f"# {args['task']} training step: {a} vs {b} ({args['config'] or 'DEFAULT_CONFIG'})", "",
             f"{env['cpu']}, {args['threads']} thread(s), torch {env['torch']}, code {env['code']}, "
             f"AN's CPU kernels {env.get('an_cpu_kernels', 'not recorded')}, "
             f"{report['started']}; median of {args['rounds']} rounds of {args['steps']} steps; {b} / {a} as the "
             "median of the rounds' ratios (their range), and as the ratio of the two medians", "",
             f"| amp | {a} ms/step | {b} ms/step | {b} / {a} | rounds | ratio of medians | FLOP ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["rows"]:
        lo, hi = row["paired_range"]
        fr = f"{row['flop_ratio']:.3f}" if "flop_ratio" in row else "-"
        lines.append(f"| {row['amp']} | {row['a_ms']:.1f} | {row['b_ms']:.1f} | {row['paired_b_over_a']:.3f} | "
                     f"{lo:.3f}-{hi:.3f} | {row['b_over_a']:.3f} | {fr} |")
    for row in report["rows"]:
        if "op_difference" not in row:
            continue
        pa, pb = (sum(v["ms"] for v in row["op_profile"][k].values()) for k in ("a", "b"))
        lines += ["", f"Profile, amp {row['amp']} ({report['args']['profile']} steps of each under torch.profiler; "
                  f"self CPU ms per step, all ops: {a} {pa:.1f}, {b} {pb:.1f}, difference {pb - pa:.1f}): the ops "
                  "that differ most", "",
                  f"| op | {a} ms | {b} ms | difference | calls per step ({a} / {b}) |", "| --- | --- | --- | --- | --- |"]
        for r in row["op_difference"]:
            lines.append(f"| `{r['op']}` | {r['a_ms']:.2f} | {r['b_ms']:.2f} | {r['diff_ms']:+.2f} | "
                         f"{r['a_calls']:.0f} / {r['b_calls']:.0f} |")
    if any("flop_ratio" in row for row in report["rows"]):
        lines += ["", "FLOP ratio: the two settings' matrix-product and convolution FLOPs per step (one step counted "
                  "by torch.utils.flop_counter.FlopCounterMode; elementwise work not counted): what the time ratio "
                  "would be if time followed that arithmetic alone."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="gan")
    ap.add_argument("--config", default=None, help="a train-gan / train-inpaint config file (default: the task's defaults)")
    ap.add_argument("--compare", default="channels_last", metavar="KEY[=A,B]",
                    help="the config key timed two ways: a boolean key off and on (default: channels_last), "
                         "or KEY=A,B for two values (attention=none,an)")
    ap.add_argument("--amp", choices=["on", "off", "both"], default="both", help="bf16 autocast settings to time")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10, help="training steps per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides (as train-gan's)")
    ap.add_argument("--no-flops", action="store_true",
                    help="skip counting each setting's matrix-product and convolution FLOPs per step (one untimed "
                         "step each; the FLOP ratio is what the time ratio would be if time followed that arithmetic alone)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile N steps of each setting (torch.profiler, after the timing) and report the ops "
                         "whose self CPU time differs most between the two")
    ap.add_argument("--out", default="bench_results/train_step")
    args = ap.parse_args(argv)
    overrides = {**parse_overrides(args.set), "threads": args.threads}
    key, values = parse_compare(args.compare, TASKS[args.task][1](args.config, overrides), args.task)
    labels = [_label(key, v) for v in values]
    torch.set_num_threads(args.threads)
    report = {"args": vars(args), "key": key, "values": list(values), "labels": labels,
              "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "env": {"torch": torch.__version__, "code": git_commit(), "python": platform.python_version(),
                      "cpu": cpu_model(), "cpu_count": os.cpu_count(), "an_cpu_kernels": cpu_fused.summary()},
              "rows": []}
    for amp in {"on": [True], "off": [False], "both": [False, True]}[args.amp]:
        try:  # both runs are built before any timing: a value the models refuse stops it here
            flops = None if args.no_flops else []
            profiles: list = []
            times = time_settings(args.config, overrides, amp, args.rounds, args.steps, args.warmup, args.task,
                                  key, values, flops, args.profile, profiles)
        except (ValueError, UserError) as exc:
            raise SystemExit(f"error: --compare {args.compare} (with --set {' '.join(args.set) or '-'}): "
                             f"{str(exc).strip().splitlines()[0]}") from None
        a, b = statistics.median(times[0]), statistics.median(times[1])
        paired, paired_range = paired_ratio(times[1], times[0])
        row = {"amp": amp, "a_ms": 1000 * a, "b_ms": 1000 * b, "paired_b_over_a": paired,
               "paired_range": paired_range, "b_over_a": b / a, "rounds_s": {"a": times[0], "b": times[1]}}
        if flops:
            row.update(flops={"a": flops[0], "b": flops[1]}, flop_ratio=flops[1] / flops[0])
        if profiles:
            row.update(op_profile={"a": profiles[0], "b": profiles[1]},
                       op_difference=profile_difference(profiles[0], profiles[1]))
        report["rows"].append(row)
        print(f"amp={amp}: {labels[0]} {row['a_ms']:.1f} ms/step, {labels[1]} {row['b_ms']:.1f} ms/step "
              f"(ratio {paired:.3f}, rounds {paired_range[0]:.3f}-{paired_range[1]:.3f}; "
              f"ratio of medians {row['b_over_a']:.3f})", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(to_markdown(report))
    print(f"wrote {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
