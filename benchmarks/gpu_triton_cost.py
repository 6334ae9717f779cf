"""What AN's Triton paths cost before they pay: the first calls of a fresh process (issue 13).

    python benchmarks/gpu_triton_cost.py --device cuda --sizes 32,64 --json OUT.json

The Triton statistics and pixel sums (``attnorm.layers.triton_statistics``, ``triton_pixel_sums``)
were faster than the eager layer in every case measured on an H200 (sessions 19 and 24), but they
stay opt-in until their one-off cost is known: Triton compiles each kernel the first time a process
needs it (kept on disk in ``TRITON_CACHE_DIR`` for the next process), and the pixel sums' tuner
times its candidate tiles against ``torch.bmm`` the first time a product shape is seen. For each
case this starts a fresh Python process that builds the layer (b, c 128, n 16, training mode) and
times its forward+backward call by call, for: the eager layer; the Triton paths with an empty
kernel cache (a first run on a machine); the same again with the cache the previous process filled
(every later run). Reported: the first call, the second, the median of calls 3-12, and the seconds
until the Triton run has caught up with the eager one (its extra first-call time over its saving per
call). Writes a JSON with the device, torch version and code state.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import git_commit  # noqa: E402

from attnorm.bench import time_variant  # noqa: E402
from attnorm.io import write_json  # noqa: E402

CALLS = 12


def child(device: str, batch: int, size: int, use_triton: bool) -> dict:
    """Seconds of each of the first CALLS forward+backward calls of a fresh AN layer in this process."""
    from attnorm.layers import AttentiveNorm, triton_pixel_sums, triton_statistics
    triton_statistics(use_triton)
    triton_pixel_sums(use_triton)
    torch.manual_seed(0)
    layer = AttentiveNorm(128, 16).to(device).train()
    x = torch.randn(batch, 128, size, size, device=device, requires_grad=True)
    g = torch.randn_like(x)
    return {"times_s": time_variant(lambda: layer(x).backward(g), device, 0, CALLS)}


def summarise(times: list[float]) -> dict:
    return {"first_s": times[0], "second_s": times[1], "steady_s": statistics.median(times[2:])}


def break_even_s(eager: dict, triton: dict) -> float | None:
    """Seconds of eager-speed work after which the Triton run is ahead: its extra first-call time over
    what it saves per call (None where it saves nothing once warm)."""
    saving = eager["steady_s"] - triton["steady_s"]
    extra = (triton["first_s"] + triton["second_s"]) - (eager["first_s"] + eager["second_s"])
    if saving <= 0:
        return None
    return max(0.0, extra) / saving * eager["steady_s"]


def run_child(args, size: int, use_triton: bool, cache: str) -> dict:
    env = dict(os.environ, TRITON_CACHE_DIR=cache)
    cmd = [sys.executable, __file__, "--child", "--device", args.device, "--batch", str(args.batch),
           "--sizes", str(size)] + (["--triton"] if use_triton else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t0
    out.update(summarise(out["times_s"]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sizes", default="32,64")
    ap.add_argument("--triton", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.child:
        print(json.dumps(child(args.device, args.batch, sizes[0], args.triton)))
        return 0
    if not (args.device.startswith("cuda") and torch.cuda.is_available()):
        print(f"gpu_triton_cost: needs a CUDA device (the Triton paths apply to CUDA tensors only), got "
              f"--device {args.device}{'' if torch.cuda.is_available() else ' and no CUDA here'}", file=sys.stderr)
        return 2
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "code": git_commit(),
              "batch": args.batch, "channels": 128, "entities": 16, "calls": CALLS, "cases": {}}
    for size in sizes:
        with tempfile.TemporaryDirectory() as cache:
            case = {"eager": run_child(args, size, False, cache),
                    "triton_cold_cache": run_child(args, size, True, cache),
                    "triton_warm_cache": run_child(args, size, True, cache)}
        for name in ("triton_cold_cache", "triton_warm_cache"):
            if "error" not in case[name] and "error" not in case["eager"]:
                case[name]["break_even_s"] = break_even_s(case["eager"], case[name])
        report["cases"][str(size)] = case
        for name, r in case.items():
            if "error" in r:
                print(f"{size}x{size} {name}: failed: {r['error']}")
            else:
                be = r.get("break_even_s")
                print(f"{size}x{size} {name}: first {r['first_s'] * 1e3:.0f} ms, second {r['second_s'] * 1e3:.1f} ms, "
                      f"steady {r['steady_s'] * 1e3:.2f} ms, process {r['process_s']:.1f} s"
                      + ("" if name == "eager" else f", ahead of eager after {be:.1f} s" if be is not None
                         else ", never ahead of eager"))
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
