"""Layer benchmark: regional norm fast vs literal; AN vs self-attention vs conv1x1+IN.

Forward+backward median time (after warm-up, all variants measured in this one
process, interleaved per size) and peak memory:
  * CUDA: ``torch.cuda.max_memory_allocated`` around one forward+backward;
  * CPU: a fresh subprocess per (variant, size) runs one forward+backward and
    reports its peak resident set (``ru_maxrss``) minus its resident set just
    before, i.e. the memory the computation itself needed.
A variant whose estimated footprint exceeds ``--max-mem-gb`` is reported as
skipped, and so is one that runs out of memory.

    attnorm bench                     # built-in sizes 16, 32, 64, 128; b=8, c=128, n=16
    attnorm bench --sizes 32 --json out.json

(the command is :mod:`attnorm.cli.bench`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Callable, NamedTuple

import torch
from torch import nn

from .layers import (AttentiveNorm, SelfAttention2d, compiled_statistics, cpu_kernels_enabled, regional_norm,
                     regional_norm_literal, small_products_as_sums_enabled, triton_pixel_sums_enabled,
                     triton_statistics_enabled)
from .layers import cpu_fused
from .provenance import git_commit

log = logging.getLogger(__name__)

VARIANTS = ("rn_fast", "rn_literal", "an", "sa", "conv_in", "an_cstats", "an_triton", "an_tsums", "an_tall", "an_torch",
            "an_msum", "an_tall_msum")
# an_cstats compiles (seconds per size), the Triton variants need Triton, an_torch is a comparison: asked for by name
DEFAULT_VARIANTS = VARIANTS[:5]
TRITON_VARIANTS = ("an_triton", "an_tsums", "an_tall", "an_tall_msum")
DESCRIPTIONS = {
    "rn_fast": "regional norm, fast path (attnorm.layers.regional_norm)",
    "rn_literal": "regional norm, literal Algorithm 1 (5-D tensors)",
    "an": "whole AttentiveNorm layer, training mode (SSR on)",
    "sa": "SAGAN self-attention (explicit hw x hw/4 attention)",
    "conv_in": "conv1x1 + InstanceNorm2d (the floor AN cannot beat)",
    "an_cstats": "AttentiveNorm with its per-entity statistics compiled (attnorm.layers.compile_statistics)",
    "an_triton": "AttentiveNorm with its per-entity statistics as two Triton kernels (attnorm.layers.triton_statistics)",
    "an_tsums": "AttentiveNorm with its pixel sums as a split-K Triton kernel (attnorm.layers.triton_pixel_sums)",
    "an_tall": "AttentiveNorm with both Triton paths (statistics and pixel sums)",
    "an_torch": "AttentiveNorm on its PyTorch path: the fused CPU kernels (attnorm.layers.cpu_fused) off",
    "an_msum": "AttentiveNorm with its three small products as multiply-and-sum (attnorm.layers.small_products_as_sums)",
    "an_tall_msum": "an_tall with the three small products as multiply-and-sum",
}


def estimate_bytes(variant: str, b: int, c: int, n: int, hw: int, elt: int = 4) -> int:
    """Rough forward+backward footprint, used only to skip what cannot fit."""
    base = b * c * hw * elt
    if variant == "rn_literal":
        return 8 * b * c * n * hw * elt + 8 * base
    if variant == "sa":
        return 4 * b * hw * max(hw // 4, 1) * elt + 8 * base
    return 12 * base + 4 * b * n * hw * elt


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def build(variant: str, b: int, c: int, n: int, size: int, device: str,
          compile_mode: str | None = None, autocast: str | None = None,
          cuda_graphs: bool = False, channels_last: bool = False) -> Callable[[], None]:
    """Return a closure running one forward+backward of ``variant``.

    ``compile_mode``: wrap the function/module in ``torch.compile(mode=...)`` (all
    variants alike); None runs eagerly. ``autocast``: ``"bf16"`` or ``"fp16"`` runs the
    forward under ``torch.autocast`` with that dtype (parameters and inputs stay float32).
    ``cuda_graphs``: capture the module's forward and backward as two CUDA graphs with
    ``torch.cuda.make_graphed_callables`` (layer variants, CUDA only): each step replays them,
    so the time is the kernels' and not their launches'. ``channels_last``: the inputs, the output's
    gradient and the module's 4-D weights in channels-last memory (as the GAN and inpainting presets
    train), instead of NCHW.
    """
    if autocast and autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown autocast dtype {autocast!r}; choose from {sorted(AUTOCAST_DTYPES)}")
    step = _build(variant, b, c, n, size, device, compile_mode, autocast if cuda_graphs else None, cuda_graphs,
                  channels_last)
    if not autocast or cuda_graphs:  # a graph captured under autocast replays its casts by itself
        return step
    dtype, device_type = AUTOCAST_DTYPES[autocast], torch.device(device).type

    def autocast_step() -> None:
        with torch.autocast(device_type=device_type, dtype=dtype):
            step()
    return autocast_step


def layer_module(variant: str, c: int, n: int) -> nn.Module:
    """The module a layer variant times (``an`` and its ``an_*`` paths, ``sa``, ``conv_in``), on
    the CPU, freshly initialised from torch's global RNG. AN's sigma and SA's gamma are 0.5: at their
    initial 0 each layer would be the identity plus a branch whose gradient is still computed."""
    if variant in ("an", "an_cstats", "an_torch", "an_msum") + TRITON_VARIANTS:
        module: nn.Module = AttentiveNorm(c, num_entities=n)
        with torch.no_grad():
            module.sigma.fill_(0.5)
    elif variant == "sa":
        module = SelfAttention2d(c)
        with torch.no_grad():
            module.gamma.fill_(0.5)
    elif variant == "conv_in":
        module = nn.Sequential(nn.Conv2d(c, c, 1), nn.InstanceNorm2d(c, affine=True))
    else:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    return module


def _build(variant: str, b: int, c: int, n: int, size: int, device: str,
           compile_mode: str | None, capture_autocast: str | None = None,
           cuda_graphs: bool = False, channels_last: bool = False) -> Callable[[], None]:
    if cuda_graphs and (torch.device(device).type != "cuda" or variant in ("rn_fast", "rn_literal")):
        raise ValueError(f"CUDA graphs need a CUDA device and a layer variant (an, an_*, sa, conv_in), "
                         f"got {variant!r} on {device!r}")
    maybe_compile = (lambda f: torch.compile(f, mode=compile_mode, dynamic=False)) if compile_mode else (lambda f: f)
    # CUDA graphs (mode "reduce-overhead") replay into the same output memory: each step is marked
    # as new, and the gradients start from None as after a training step's zero_grad(set_to_none=True)
    # (accumulating into the last replay's gradient is what failed on the H200: "accessing tensor
    # output of CUDAGraphs that has been overwritten by a subsequent run").
    graphs = compile_mode == "reduce-overhead"

    def begin(*tensors) -> None:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
            for t in tensors:
                t.grad = None
    g = torch.Generator().manual_seed(0)
    shape = (b, c, size, size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def randn(*dims: int) -> torch.Tensor:  # a standard-normal map on the device, in the asked memory format
        return torch.randn(dims, generator=g).to(device).contiguous(memory_format=fmt)
    grad = randn(*shape)
    if variant in ("rn_fast", "rn_literal"):
        v = randn(*shape).requires_grad_()
        logits = randn(b, n, size, size).requires_grad_()
        beta = torch.ones(c, device=device, requires_grad=True)
        alpha = torch.zeros(c, device=device, requires_grad=True)
        fn = maybe_compile(regional_norm if variant == "rn_fast" else regional_norm_literal)

        def step() -> None:
            begin(v, logits, beta, alpha)
            layout = torch.softmax(logits, dim=1)
            fn(v, layout, beta, alpha).backward(grad)
        return step
    module = maybe_compile(layer_module(variant, c, n).to(device, memory_format=fmt).train())
    x = randn(*shape).requires_grad_()
    if variant in TRITON_VARIANTS:
        from .layers import triton_stats
        if not triton_stats.applicable(torch.empty(b, c, n, device=x.device)):  # the (b, c, n) sums it takes
            raise RuntimeError(f"{variant} needs the triton package and a CUDA device (or TRITON_INTERPRET=1)")
    # the variant's paths, switched on around every forward+backward (or the capture)
    switches = {"an_cstats": (compiled_statistics,), "an_triton": (triton_statistics_enabled,),
                "an_tsums": (triton_pixel_sums_enabled,),
                "an_tall": (triton_statistics_enabled, triton_pixel_sums_enabled),
                "an_msum": (small_products_as_sums_enabled,),
                "an_tall_msum": (triton_statistics_enabled, triton_pixel_sums_enabled, small_products_as_sums_enabled),
                "an_torch": (lambda on: cpu_kernels_enabled(not on),)}.get(variant, ())

    def variant_paths():
        stack = contextlib.ExitStack()
        for switch in switches:
            stack.enter_context(switch(True))
        return stack
    if cuda_graphs:
        with contextlib.ExitStack() as stack:
            stack.enter_context(variant_paths())
            if capture_autocast:  # autocast's weight cache must be off while capturing
                stack.enter_context(torch.autocast("cuda", dtype=AUTOCAST_DTYPES[capture_autocast],
                                                   cache_enabled=False))
            graphed = torch.cuda.make_graphed_callables(module, (x,))

        def graph_step() -> None:
            graphed(x).backward(grad)
        return graph_step

    def step() -> None:
        begin(x, *module.parameters())
        with variant_paths():
            module(x).backward(grad)
    return step


# Ops that only make a new view of a tensor: no kernel runs for them.
_VIEW_OPS = frozenset({"view", "_unsafe_view", "_reshape_alias", "reshape", "view_as", "transpose", "t", "permute",
                       "expand", "slice", "select", "unsqueeze", "squeeze", "as_strided", "alias", "detach",
                       "split", "unbind"})


def count_dispatches(step: Callable[[], None]) -> int:
    """The aten ops one call of ``step`` dispatches, views left out: on a GPU each is (at least)
    one kernel launch, which is what a small layer's eager time is made of. Eager steps only
    (a compiled step runs fused kernels that no dispatcher sees)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ not in _VIEW_OPS:
                _Count.n += 1
            return func(*args, **(kwargs or {}))

    with _Count():
        step()
    return _Count.n


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_variant(step: Callable[[], None], device: str, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _peak_child(variant: str, b: int, c: int, n: int, size: int, compile_mode=None, autocast=None,
                channels_last: bool = False) -> None:
    """Entry point of the memory subprocess: prints the peak bytes of one step."""
    step = build(variant, b, c, n, size, "cpu", compile_mode, autocast, channels_last=channels_last)
    step()  # warm-up: pages in library code and one-time buffers, which are not the step's memory
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (VmHWM) to the current one
    before = status_bytes("VmRSS")
    step()
    print(json.dumps({"peak_bytes": max(status_bytes("VmHWM") - before, 0)}))


def peak_memory(variant: str, b: int, c: int, n: int, size: int, device: str,
                compile_mode: str | None = None, autocast: str | None = None,
                cuda_graphs: bool = False, channels_last: bool = False) -> int | None:
    if device.startswith("cuda"):
        step = build(variant, b, c, n, size, device, compile_mode, autocast, cuda_graphs, channels_last)
        step()  # warm-up (and compilation)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    code = ("import sys; from attnorm.bench import _peak_child; "
            f"_peak_child({variant!r}, {b}, {c}, {n}, {size}, {compile_mode!r}, {autocast!r}, {channels_last!r})")
    # A fixed mmap threshold makes glibc return every large block to the OS on free,
    # so the warm-up's memory is not silently reused by the measured step.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return None
    return int(json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"])


def default_memory_budget_gb() -> float:
    """60% of the memory available now (Linux), else 8 GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return round(0.6 * int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 8.0


def run(sizes=(16, 32, 64, 128), batch=8, channels=128, entities=16, repeats=7, warmup=2,
        device="cpu", max_mem_gb=8.0, memory=True, variants=DEFAULT_VARIANTS, compile_mode=None,
        autocast: str | None = None, cuda_graphs: bool = False, channels_last: bool = False) -> dict:
    """Measure every variant at every size; timed runs are interleaved round-robin
    across the variants of a size, so machine noise hits all of them alike. One line
    per measured case goes to this module's logger."""
    results = []
    for size in sizes:
        rows, steps = {}, {}
        for variant in variants:
            row = {"variant": variant, "size": size, "batch": batch, "channels": channels,
                   "entities": entities}
            rows[variant] = row
            est = estimate_bytes(variant, batch, channels, entities, size * size)
            if est > max_mem_gb * 2**30:
                row.update(status="skipped",
                           reason=f"estimated {est / 2**30:.1f} GiB > --max-mem-gb {max_mem_gb}")
                continue
            try:
                steps[variant] = build(variant, batch, channels, entities, size, device, compile_mode, autocast,
                                       cuda_graphs, channels_last)
                time_variant(steps[variant], device, warmup, 0)
            except (RuntimeError, MemoryError) as exc:  # out of memory
                steps.pop(variant, None)
                row.update(status="skipped", reason=f"failed: {str(exc).splitlines()[0][:120]}")
        times: dict[str, list[float]] = {v: [] for v in steps}
        order = list(steps)
        for _ in range(repeats):  # one round: every variant once; the order alternates between rounds
            for variant in order:
                times[variant] += time_variant(steps[variant], device, 0, 1)
            order.reverse()
        ops = {v: count_dispatches(step) for v, step in steps.items()
               if compile_mode is None and not cuda_graphs and v not in ("an_cstats",) + TRITON_VARIANTS}
        steps.clear()
        for variant in variants:
            row = rows[variant]
            if variant in times:
                row["dispatched_ops"] = ops.get(variant)
                mem = None
                if memory:
                    try:
                        mem = peak_memory(variant, batch, channels, entities, size, device,
                                          compile_mode, autocast, cuda_graphs, channels_last)
                    except (RuntimeError, MemoryError):
                        mem = None
                row.update(status="ok", median_ms=1e3 * statistics.median(times[variant]),
                           times_ms=[1e3 * t for t in times[variant]],
                           peak_mib=None if mem is None else mem / 2**20)
                log.info(f"  {variant:>10} {size:>4}: {row['median_ms']:9.2f} ms"
                         + ("" if mem is None else f"  {mem / 2**20:9.1f} MiB"))
            else:
                log.info(f"  {variant:>10} {size:>4}: skipped ({row['reason']})")
            results.append(row)
    return {
        "config": {"sizes": list(sizes), "batch": batch, "channels": channels, "entities": entities,
                   "repeats": repeats, "warmup": warmup, "device": device,
                   "compile": compile_mode, "autocast": autocast, "cuda_graphs": cuda_graphs,
                   "channels_last": channels_last, "cpu_kernels": cpu_fused.summary(),
                   "threads": torch.get_num_threads(), "torch": torch.__version__, "code": git_commit(),
                   "machine": platform.processor() or platform.machine(),
                   "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                   "memory_method": ("torch.cuda.max_memory_allocated" if device.startswith("cuda")
                                     else "subprocess VmHWM - VmRSS after warm-up")},
        "results": results,
        "targets": targets(results),
    }


def _get(results, variant, size, key):
    for r in results:
        if r["variant"] == variant and r["size"] == size and r.get("status") == "ok":
            return r.get(key)
    return None


class Target(NamedTuple):
    """A goal on the ratio ``numerator[key] / denominator[key]`` of two variants at one size."""

    name: str
    numerator: str
    denominator: str
    size: int
    key: str      # "median_ms" or "peak_mib"
    goal: float
    op: str       # ">=" or "<="


TARGETS = (
    Target("rn fast vs literal: speed-up at 32", "rn_literal", "rn_fast", 32, "median_ms", 20, ">="),
    Target("rn fast vs literal: memory ratio at 32", "rn_literal", "rn_fast", 32, "peak_mib", 8, ">="),
    Target("AN vs SA: speed-up at 64", "sa", "an", 64, "median_ms", 4, ">="),
    Target("AN vs SA: speed-up at 128", "sa", "an", 128, "median_ms", 10, ">="),
    Target("AN vs SA: memory ratio at 128", "sa", "an", 128, "peak_mib", 10, ">="),
    Target("AN / conv1x1+IN time at 32", "an", "conv_in", 32, "median_ms", 2.0, "<="),  # issue 13
    Target("AN / conv1x1+IN time at 64", "an", "conv_in", 64, "median_ms", 2.0, "<="),  # issue 13
)


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> tuple[float, list[float]]:
    """The median of the per-round ratios ``numerator[i] / denominator[i]`` of two series timed in
    the same rounds, and ``[smallest, largest]`` of those ratios. A slow stretch of the machine
    slows both sides of a round alike, so it moves this far less than the ratio of the two medians
    (which can take its numerator from a slow round and its denominator from a fast one). Used by
    :func:`targets` and by ``benchmarks/bench_train_step.py``."""
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError(f"paired_ratio needs two equally long, non-empty series (got {len(numerator)} "
                         f"and {len(denominator)} rounds)")
    per_round = [a / b for a, b in zip(numerator, denominator)]
    return statistics.median(per_round), [min(per_round), max(per_round)]


def targets(results) -> list[dict]:
    """The :data:`TARGETS` as measured ratios (None where a variant did not run at that size).

    ``ratio`` is the ratio of the two medians. For times measured in the same rounds (``times_ms``
    of equal length, as :func:`run` interleaves them) ``paired_ratio`` is the median of the
    per-round ratios and ``paired_range`` their smallest and largest: a slow stretch of the machine
    (another process, a frequency change) slows both variants of a round alike, so it moves the
    paired ratio far less than the ratio of medians, which can take its numerator from a slow
    round and its denominator from a fast one. ``met`` judges the paired ratio where there is one.
    """
    out = []
    for t in TARGETS:
        a, b = _get(results, t.numerator, t.size, t.key), _get(results, t.denominator, t.size, t.key)
        ratio = a / b if a is not None and b else None
        paired = paired_range = None
        if t.key == "median_ms" and ratio is not None:
            ta, tb = _get(results, t.numerator, t.size, "times_ms"), _get(results, t.denominator, t.size, "times_ms")
            if ta and tb and len(ta) == len(tb):
                paired, paired_range = paired_ratio(ta, tb)
        judged = paired if paired is not None else ratio
        met = None if judged is None else (judged >= t.goal if t.op == ">=" else judged <= t.goal)
        out.append({"target": t.name, "ratio": ratio, "paired_ratio": paired, "paired_range": paired_range,
                    "goal": f"{t.op} {t.goal}", "met": met})
    return out


def format_table(report: dict) -> str:
    cfg = report["config"]
    lines = [f"device={cfg['device']} compile={cfg.get('compile')} autocast={cfg.get('autocast')} "
             f"cuda_graphs={cfg.get('cuda_graphs', False)} channels_last={cfg.get('channels_last', False)} "
             f"cpu_kernels={cfg.get('cpu_kernels')} code={cfg.get('code')} threads={cfg['threads']} torch={cfg['torch']} "
             f"b={cfg['batch']} c={cfg['channels']} n={cfg['entities']} repeats={cfg['repeats']}",
             f"{'variant':<11}" + "".join(f"{s:>22}" for s in cfg["sizes"]),
             f"{'':<11}" + "".join(f"{'ms':>11}{'MiB':>11}" for _ in cfg["sizes"])]
    for variant in dict.fromkeys(r["variant"] for r in report["results"]):
        cells = []
        for s in cfg["sizes"]:
            t, m = _get(report["results"], variant, s, "median_ms"), _get(report["results"], variant, s, "peak_mib")
            if t is None:
                cells.append(f"{'skipped':>22}")
            else:
                cells.append(f"{t:>11.2f}" + (f"{m:>11.1f}" if m is not None else f"{'-':>11}"))
        lines.append(f"{variant:<11}" + "".join(cells))
    counted = {r["variant"]: r["dispatched_ops"] for r in report["results"] if r.get("dispatched_ops") is not None}
    if counted:
        lines.append("aten ops per forward+backward (views left out; each a kernel launch on a GPU): "
                     + ", ".join(f"{v} {k}" for v, k in counted.items()))
    lines.append("")
    lines.append("targets:")
    for t in report["targets"]:
        r = "n/a" if t["ratio"] is None else f"{t['ratio']:.2f}"
        if t.get("paired_ratio") is not None:
            lo, hi = t["paired_range"]
            r = f"{t['paired_ratio']:.2f}  (rounds {lo:.2f}-{hi:.2f}; medians {r})"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        lines.append(f"  {t['target']:<40} {r:>8}  (goal {t['goal']}): {verdict}")
    return "\n".join(lines)
