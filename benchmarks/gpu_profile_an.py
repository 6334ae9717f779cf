"""Where AN's forward+backward spends its device time, kernel by kernel (issue 13).

Under CUDA graphs on an H200 (session 7) AN's time grows with the map (b 8: 0.72 / 1.52 /
4.51 ms at 32 / 64 / 128) while conv1x1+IN stays at 0.29-0.69 ms: the launches are gone and
some kernels are slow. This runs the same step as ``attnorm bench`` (variant ``an`` or
``an_triton``) under ``torch.profiler`` and lists the ops/kernels by their own device time
(CUDA) or CPU time, with the share of the total and, for each aten op, its input shapes.

    python benchmarks/gpu_profile_an.py --device cuda --sizes 64,128 --json benchmarks/results/an_profile.json
    python benchmarks/gpu_profile_an.py --device cpu --sizes 32           # the same on the CPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _provenance import git_commit  # noqa: E402
from attnorm.bench import build  # noqa: E402


def profile_step(variant: str, batch: int, size: int, device: str, steps: int = 5, top: int = 15,
                 autocast: str | None = None) -> dict:
    step = build(variant, batch, 128, 16, size, device, autocast=autocast)
    for _ in range(3):  # warm-up: cuBLAS handles, Triton builds, allocator
        step()
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    # the ops as the host dispatched them (with their shapes), each with the device time of the
    # kernels it launched itself; the kernels' own rows would count that time twice
    events = [e for e in prof.key_averages(group_by_input_shape=True)
              if e.device_type == DeviceType.CPU and getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in events)
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    rows = [{"name": e.key, "shapes": str(e.input_shapes)[:160], "calls_per_step": e.count / steps,
             "us_per_step": getattr(e, key) / steps, "share": getattr(e, key) / total} for e in events[:top]]
    return {"variant": variant, "batch": batch, "size": size, "autocast": autocast,
            "time_kind": "device (self)" if cuda else "cpu (self)",
            "total_us_per_step": total / steps, "top": rows}


def split_pixel_sum(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """``bmm(a, b)`` for a (B, m, hw) and b (B, hw, n), with the hw reduction cut into ``k`` chunks
    that become batch entries (one copy of each operand), then summed: B * k small products
    instead of B long ones. The candidate fix if the profile blames AN's pixel sums."""
    B, m, hw = a.shape
    n = b.shape[2]
    a4 = a.reshape(B, m, k, hw // k).transpose(1, 2).reshape(B * k, m, hw // k)
    b4 = b.reshape(B * k, hw // k, n)
    return torch.bmm(a4, b4).view(B, k, m, n).sum(1)


def _time_us(fn, device: str, repeats: int, warmup: int = 3) -> float:
    """Mean wall time of ``fn`` in microseconds over ``repeats`` calls (synchronised on CUDA)."""
    import time
    for _ in range(warmup):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - t0) / repeats


PROBE_SHAPES = ((8, 32), (8, 64), (8, 128), (32, 64), (32, 128))  # (batch, side)


def pixel_sum_probe(device: str, repeats: int = 50, shapes=PROBE_SHAPES) -> list[dict]:
    """Time AN's forward pixel sum (b, c, hw) x (b, hw, 2n) as one bmm and split into chunks."""
    rows = []
    for batch, size in shapes:
        hw = size * size
        a = torch.randn(batch, 128, hw, device=device)
        s = torch.randn(batch, 32, hw, device=device)
        b = s.transpose(1, 2)  # S^T, as torch.bmm takes it
        row = {"batch": batch, "size": size}
        cases = [("bmm", lambda: torch.bmm(a, b))] + [
            (f"split{k}", (lambda k=k: split_pixel_sum(a, b, k))) for k in (4, 16, 64) if hw % k == 0]
        from attnorm.layers import triton_sums
        if triton_sums.applicable(a, s):  # the split-K kernel the layer uses with triton_pixel_sums
            cases.append(("triton", lambda: triton_sums.pixel_sum(a, s)))
        for name, fn in cases:
            row[name + "_us"] = _time_us(fn, device, repeats)
        if "triton_us" in row:
            # against float64, relative to the largest sum (a near-zero sum of 16384 terms carries
            # float32 rounding of ~1e-3 in any order: an element-wise tolerance would flag it)
            want = torch.bmm(a.double(), b.double())

            def error(got: torch.Tensor) -> float:
                return float((got.double() - want).abs().max() / want.abs().max())
            row["triton_err"] = error(triton_sums.pixel_sum(a, s))
            row["bmm_err"] = error(torch.bmm(a, b))
            for label, launch in (("fma", triton_sums.DEFAULT), ("tf32x3", triton_sums.TF32X3_CANDIDATES[0])):
                row[f"{label}_err"] = error(triton_sums._launch(a, s, launch))  # each arithmetic, whatever the tuner picked
            config = triton_sums._tuned(a, s)
            row["triton_config"] = config._asdict() if config is not None else "torch.bmm"
        rows.append(row)
        print("  pixel sum b %d %dx%d: " % (batch, size, size)
              + ", ".join(f"{k[:-3]} {v:.1f} us" for k, v in row.items() if k.endswith("_us"))
              + (f" (tuned: {row['triton_config']}; error / max: tuned {row['triton_err']:.1e}, bmm {row['bmm_err']:.1e}, "
                    f"fma {row['fma_err']:.1e}, tf32x3 {row['tf32x3_err']:.1e})"
                 if "triton_config" in row else ""))
    return rows


def _product_cases(batch: int, device: str) -> dict[str, dict]:
    """The layer's small products that the H200 profile shows at 50-56 us of device time each (session 31,
    b 8, 32x32: 160 of AN's 570 us), each with the forms the layer could use instead. ``(M x K) @ (K x N)``:

    * ``wv_mean``: ``W_v mean_p(X)``, (b, c) x (c, c)^T (forward; 53 us at b 8, 10 us at b 32);
    * ``ssr_gq``: SSR's query gradient ``keys^T [g_kq | g_kb]``, (c/8, b n) x (b n, c + 1), the left operand a
      transposed view (backward; 56 us at b 8, 56 at b 32);
    * ``ssr_gk``: SSR's key gradient ``g_keys^T xs``, (c/8, b n) x (b n, c) (backward; 51 / 52 us).
    """
    c, n = 128, 16
    xbar, w = torch.randn(batch, c, device=device), torch.randn(c, c, device=device)
    keys, flat = torch.randn(batch * n, c // 8, device=device), torch.randn(batch * n, c + 1, device=device)
    g_keys, xs = torch.randn(batch * n, c // 8, device=device), torch.randn(batch * n, c, device=device)

    def forms(a_t, b):  # a_t: the (M, K) left operand as the layer has it (a transposed view)
        return {"mm": lambda: a_t @ b, "mm_lhs_contig": lambda: a_t.contiguous() @ b,
                "transposed": lambda: (b.t() @ a_t.t()).t(), "mul_sum": lambda: (a_t.unsqueeze(-1) * b).sum(1),
                "bmm_b1": lambda: torch.bmm(a_t[None], b[None])[0],
                "f64": lambda: a_t.double() @ b.double()}
    return {"wv_mean": {"mm": lambda: xbar @ w.t(), "mm_wt_contig": lambda: xbar @ w.t().contiguous(),
                        "transposed": lambda: (w @ xbar.t()).t(), "linear": lambda: torch.nn.functional.linear(xbar, w),
                        "mul_sum": lambda: (xbar.unsqueeze(1) * w).sum(-1),
                        "bmm_b1": lambda: torch.bmm(xbar[None], w.t()[None])[0],
                        "f64": lambda: xbar.double() @ w.t().double()},
            "ssr_gq": forms(keys.t(), flat), "ssr_gk": forms(g_keys.t(), xs)}


def small_mm_probe(device: str, repeats: int = 200) -> list[dict]:
    """Wall time of each form of the layer's small products (``_product_cases``), b 8 and 32; on CUDA also
    each form's device time and the kernels it ran (from the profiler), with TF32 off (the layer's float32)
    and, for the plain form, on: whether cuBLAS's choice of kernel for these shapes is what costs."""
    rows = []
    for batch in (8, 32):
        for product, cases in _product_cases(batch, device).items():
            row = {"batch": batch, "product": product}
            for name, fn in cases.items():
                row[name + "_us"] = _time_us(fn, device, repeats)
            if device.startswith("cuda"):
                runs = [(name, fn, False) for name, fn in cases.items()] + [("mm_tf32", cases["mm"], True)]
                for name, fn, tf32 in runs:
                    before = torch.backends.cuda.matmul.allow_tf32
                    torch.backends.cuda.matmul.allow_tf32 = tf32
                    try:
                        fn()
                        torch.cuda.synchronize()
                        with profile(activities=[ProfilerActivity.CUDA]) as prof:
                            for _ in range(20):
                                fn()
                            torch.cuda.synchronize()
                    finally:
                        torch.backends.cuda.matmul.allow_tf32 = before
                    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
                    row[name + "_device_us"] = sum(e.self_device_time_total for e in events) / 20
                    row[name + "_kernels"] = sorted({e.key[:90] for e in events})
            rows.append(row)
            print(f"  {product} b {batch}: " + ", ".join(f"{k[:-3]} {v:.1f} us" for k, v in row.items()
                                                         if k.endswith("_us")))
            for k, v in row.items():
                if k.endswith("_kernels"):
                    print(f"      {k[:-8]}: {'; '.join(v)}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="64,128")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--variants", default="an")
    p.add_argument("--autocast", default=None)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--pixel-sum-probe", action="store_true",
                   help="also time the forward pixel sum as one bmm and split into chunks")
    p.add_argument("--glibc-default-malloc", action="store_true",
                   help="CPU: keep glibc's default of returning freed blocks to the kernel (by default freed "
                        "memory is kept, as `attnorm bench` and training on the CPU do)")
    p.add_argument("--small-mm-probe", action="store_true",
                   help="also time the forms of the layer's small products (W_v mean(X), SSR's query and key gradients)")
    p.add_argument("--probe-shapes", default=",".join(f"{b}x{s}" for b, s in PROBE_SHAPES),
                   help="the probe's BATCHxSIDE cases, comma-separated")
    p.add_argument("--pixel-sum-precision", choices=("ieee", "tf32x3"), default="tf32x3",
                   help="the Triton pixel sums' precision (attnorm.layers.triton_sums.set_precision; default "
                        "tf32x3, the library's)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_profile_an: --device cuda but no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    from attnorm.layers import triton_sums
    triton_sums.set_precision(args.pixel_sum_precision)
    from attnorm.training.allocator import retain_freed_memory_on
    # on the CPU: what `attnorm bench` times
    retained = not args.glibc_default_malloc and retain_freed_memory_on(args.device)
    report = {"torch": torch.__version__, "device": args.device, "retain_freed_memory": retained,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "machine": platform.machine(), "threads": torch.get_num_threads(),
              "commit": git_commit(), "profiles": []}
    for variant in (v for v in args.variants.split(",") if v):  # --variants "": the probe alone
        for size in (int(s) for s in args.sizes.split(",")):
            r = profile_step(variant, args.batch, size, args.device, top=args.top, autocast=args.autocast)
            report["profiles"].append(r)
            print(f"== {variant} b {args.batch} {size}x{size}: {r['total_us_per_step'] / 1e3:.2f} ms "
                  f"{r['time_kind']} per step")
            for row in r["top"]:
                print(f"  {row['us_per_step']:9.1f} us {100 * row['share']:5.1f}%  x{row['calls_per_step']:<4g} "
                      f"{row['name'][:60]:<60} {row['shapes']}")
    if args.pixel_sum_probe:
        shapes = [tuple(int(v) for v in case.split("x")) for case in args.probe_shapes.split(",") if case]
        report["pixel_sum_probe"] = pixel_sum_probe(args.device, shapes=shapes)
    if args.small_mm_probe:
        report["small_mm_probe"] = small_mm_probe(args.device)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json + ".tmp", "w") as f:
            json.dump(report, f, indent=2)
        os.replace(args.json + ".tmp", args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
