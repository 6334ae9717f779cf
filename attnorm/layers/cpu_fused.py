"""AN's passes over the map as fused CPU kernels (``_cpu_kernels.cpp``), compiled at first use.

On the CPU the layer's products pair a small matrix (``c`` or ``n`` wide, 16 in the CPU presets)
with a whole map; as batched BLAS calls they run at a fifth of the core's sgemm rate, each is its
own pass over memory, and a narrow channels-last input is copied to NCHW and back. The kernels walk
each sample's map in chunks of pixels that stay in cache, do every product of a chunk with
register-blocked micro-kernels and read and write a channels-last map in its own layout. They
compute what :class:`attnorm.layers.attentive._AttentiveNormFn` computes (variance
``"algorithm1"``, float32), with sums over the pixels accumulated in double; the tests check them
against the PyTorch path and the literal reference.

The source is compiled once per machine by the system's C++ compiler (``$CXX`` or ``c++``, with
``-O3 -march=native``) into ``$ATTNORM_CACHE_DIR`` (default ``~/.cache/attnorm``) and loaded with
ctypes. Without a compiler, or if building fails, the layer keeps its PyTorch path (the reason is in
:func:`status`). ``ATTNORM_CPU_KERNELS=0`` or :func:`cpu_kernels` (``False``) switches them off.
Samples are split across ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_cpu_kernels.cpp")
ABI_VERSION = 2
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=gnu++17")

_STATE = {"enabled": os.environ.get("ATTNORM_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "off", "no"),
          "lib": None, "failed": None, "path": None}
_LOCK = threading.Lock()
_POOL: dict = {}


def cpu_kernels(enabled: bool = True) -> None:
    """Use the fused CPU kernels where they apply (the default) or not (``enabled=False``)."""
    _STATE["enabled"] = bool(enabled)


def cpu_kernels_enabled(enabled: bool = True):
    """Context manager: :func:`cpu_kernels` (``enabled``) inside, the previous setting after."""
    from .regional import _switched
    return _switched(_STATE, cpu_kernels, enabled)


def status() -> dict:
    """``{"enabled", "loaded", "failed", "path"}``: whether the kernels are switched on, built and
    loaded, why not (``failed``), and the shared library's path."""
    return {"enabled": _STATE["enabled"], "loaded": _STATE["lib"] is not None, "failed": _STATE["failed"],
            "path": _STATE["path"]}


def _forget() -> None:
    """Forget the loaded library and any failure, so that the next use builds or loads again (tests)."""
    with _LOCK:
        _STATE["lib"] = _STATE["failed"] = _STATE["path"] = None


def _cache_dir() -> Path:
    root = os.environ.get("ATTNORM_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "attnorm"


def _machine_id() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return platform.machine() + "\n" + "\n".join(sorted(set(keep)))
    except OSError:
        return platform.machine() + platform.processor()


def _build(compiler: str) -> Path:
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(FLAGS).encode(), version.encode(),
                                     _machine_id().encode()])).hexdigest()[:16]
    directory = _cache_dir() / "kernels"
    target = directory / f"an_cpu_{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {(done.stderr.strip().splitlines() or [''])[0][:200]}")
        os.replace(tmp, target)  # atomic: a concurrent build writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


_LONG, _PTR = ctypes.c_long, ctypes.c_void_p
_SIGNATURES = {
    "an_fwd1": [_LONG] * 5 + [_PTR, _LONG, _LONG, _LONG] + [_PTR] * 7,
    "an_fwd2": [_LONG] * 5 + [_PTR, _LONG, _LONG, _LONG] + [_PTR] * 5 + [_LONG] * 3,
    "an_bwd1": [_LONG] * 5 + [_PTR, _LONG, _LONG, _LONG] + [_PTR] * 7,
    "an_bwd2": ([_LONG] * 5 + [_PTR, _LONG, _LONG, _LONG] * 2 + [_PTR] * 13 + [_PTR, _LONG, _LONG, _LONG]
                + [_LONG, _PTR, _PTR]),
}


def _load():
    """The loaded library, building it first if needed; None (reason in ``_STATE["failed"]``) if it
    cannot be had."""
    if _STATE["lib"] is not None or _STATE["failed"] is not None:
        return _STATE["lib"]
    with _LOCK:
        if _STATE["lib"] is not None or _STATE["failed"] is not None:
            return _STATE["lib"]
        compiler = shutil.which(os.environ.get("CXX", "c++"))
        if compiler is None:
            _STATE["failed"] = f"no C++ compiler ({os.environ.get('CXX', 'c++')!r} not found)"
            log.info("attnorm: fused CPU kernels off: %s", _STATE["failed"])
            return None
        try:
            path = _build(compiler)
            lib = ctypes.CDLL(str(path))
            if lib.an_abi_version() != ABI_VERSION:
                raise RuntimeError(f"{path} has ABI {lib.an_abi_version()}, expected {ABI_VERSION}")
            for name, args in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, ctypes.c_int
        except Exception as exc:  # compiler errors, unwritable cache, a broken library
            _STATE["failed"] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
            log.warning("attnorm: fused CPU kernels off: %s", _STATE["failed"])
            return None
        _STATE["lib"], _STATE["path"] = lib, str(path)
        return lib


# The kernels run layers up to this width; from about 96 channels on the PyTorch path's BLAS calls are
# as fast. One thread, fwd + bwd, channels-last float32, the kernels' time over the PyTorch path's
# (session 29, benchmarks/results/an_cpu_s29): c 16 0.56-0.63 (b 32, 64x64 and 32x32), c 32 0.82 (b 16
# and 32, 32x32), c 48 0.89, c 64 0.93 (b 8, 32x32; 0.80 NCHW 64x64), c 96 0.99, c 128 0.99 (1.04 NCHW).
MAX_CHANNELS = 64


def usable(device: torch.device, dtype: torch.dtype, algorithm1: bool, channels: int) -> bool:
    """Whether the kernels run a layer of ``channels`` channels computing in ``dtype`` on ``device``
    (building them on first use)."""
    return (_STATE["enabled"] and device.type == "cpu" and dtype == torch.float32 and algorithm1
            and channels <= MAX_CHANNELS and not torch.compiler.is_compiling() and _load() is not None)


def map_strides(t: Tensor) -> tuple[int, int, int] | None:
    """(sample, row, pixel) strides of a (b, k, hw) map the kernels read in place: NCHW (pixels
    contiguous) or pixel-major (a channels-last map's view); None for any other layout."""
    b, k, hw = t.shape
    s = t.stride()
    if (s[2] == 1 or hw == 1) and (s[1] == hw or k == 1) and (s[0] == k * hw or b == 1):
        return k * hw, hw, 1
    if (s[1] == 1 or k == 1) and (s[2] == k or hw == 1) and (s[0] == k * hw or b == 1):
        return k * hw, 1, k
    return None


def _ptr(t: Tensor | None):
    return None if t is None else t.data_ptr()


def _run(fn, b: int, *args) -> None:
    """``fn(b0, b1, *args)`` over [0, b), split across ``torch.get_num_threads()`` threads (ctypes
    releases the GIL during each call)."""
    with torch.profiler.record_function(f"attnorm::{fn.__name__}"):  # named in a profile
        _split(fn, b, *args)


def _split(fn, b: int, *args) -> None:
    threads = max(1, min(torch.get_num_threads(), b))
    if threads == 1:
        fn(0, b, *args)
        return
    pool = _POOL.get(threads)
    if pool is None:
        pool = _POOL[threads] = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="attnorm-an")
    bounds = [b * i // threads for i in range(threads + 1)]
    futures = [pool.submit(fn, bounds[i], bounds[i + 1], *args) for i in range(threads)]
    for f in futures:
        f.result()


def in_kernel_layout(t: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """``t`` and its strides, copied to NCHW first if its layout is neither form the kernels read."""
    strides = map_strides(t)
    if strides is None:
        t = t.contiguous()
        strides = map_strides(t)
    return t, strides


def forward_sums(x3: Tensor, weight: Tensor, bias: Tensor):
    """First forward pass. x3 (b, c, hw) float32 (NCHW or pixel-major); weight (b, n + c, c), the
    layout rows first; bias (b, n + c). Returns vc (b, c, hw), the layout s (b, n, hw),
    m (b, c, 2n) = Vc [S; S^2]^T, a (b, c, n) = Vc^2 (S^2)^T and ssum (b, 2n), the pixel sums of
    [S; S^2]."""
    lib = _load()
    b, c, hw = x3.shape
    n = weight.shape[1] - c
    x3, xs = in_kernel_layout(x3)
    weight, bias = weight.contiguous(), bias.contiguous()
    vc, s = x3.new_empty((b, c, hw)), x3.new_empty((b, n, hw))
    m, a, ssum = x3.new_empty((b, c, 2 * n)), x3.new_empty((b, c, n)), x3.new_empty((b, 2 * n))
    _run(lib.an_fwd1, b, c, n, hw, x3.data_ptr(), *xs, weight.data_ptr(), bias.data_ptr(), vc.data_ptr(),
         s.data_ptr(), m.data_ptr(), a.data_ptr(), ssum.data_ptr())
    return vc, s, m, a, ssum


def forward_output(x3: Tensor, vc: Tensor, s: Tensor, p: Tensor, q: Tensor) -> Tensor:
    """Second forward pass: ``y = x - Q S + Vc * (P S)`` in x3's layout. p, q (b, c, n)."""
    lib = _load()
    b, c, hw = x3.shape
    n = p.shape[-1]
    x3, xs = in_kernel_layout(x3)
    y = torch.empty_like(x3)  # same strides as a dense x3
    p, qneg = p.contiguous(), q.neg().contiguous()
    _run(lib.an_fwd2, b, c, n, hw, x3.data_ptr(), *xs, vc.data_ptr(), s.data_ptr(), p.data_ptr(), qneg.data_ptr(),
         y.data_ptr(), *map_strides(y))
    return y


def backward_sums(g_y: Tensor, vc: Tensor, s: Tensor, p: Tensor, q: Tensor):
    """First backward pass: ``gs = P^T (gY Vc) - Q^T gY`` (b, n, hw), ``g_p = (gY Vc) S^T`` and
    ``gs_t = gY S^T`` (b, c, n)."""
    lib = _load()
    b, c, hw = vc.shape
    n = p.shape[-1]
    g_y, gys = in_kernel_layout(g_y)
    pt, qnt = p.mT.contiguous(), q.neg().mT.contiguous()
    gs = vc.new_empty((b, n, hw))
    g_p, gs_t = vc.new_empty((b, c, n)), vc.new_empty((b, c, n))
    _run(lib.an_bwd1, b, c, n, hw, g_y.data_ptr(), *gys, vc.data_ptr(), s.data_ptr(), pt.data_ptr(), qnt.data_ptr(),
         gs.data_ptr(), g_p.data_ptr(), gs_t.data_ptr())
    return gs, g_p, gs_t


def backward_maps(g_y: Tensor, x3: Tensor, vc: Tensor, s: Tensor, p: Tensor, gs: Tensor, g_layout: Tensor | None,
                  g_m: Tensor, g_a: Tensor, g_s2: Tensor, g_total: Tensor, delta: Tensor, weight: Tensor,
                  need_x: bool, weight_rows: int):
    """Second backward pass, from ``gs`` of :func:`backward_sums`. g_m (b, c, 2n), g_a (b, c, n),
    g_s2 and g_total (b, n), delta (b, c). Returns g_x (in x3's layout, or None unless
    ``need_x``), g_w (b, weight_rows, c) = [gZ; gV][:weight_rows] X^T (None when 0) and the pixel
    sums of the layout logits' gradient gZ (b, n)."""
    lib = _load()
    b, c, hw = vc.shape
    n = g_a.shape[-1]
    g_y, gys = in_kernel_layout(g_y)
    x3, xs = in_kernel_layout(x3)
    p, g_m, g_a = p.contiguous(), g_m.contiguous(), g_a.contiguous()
    g_mt, g_at = g_m.mT.contiguous(), g_a.mT.contiguous()
    g_s2, g_total, delta = (t_.reshape(b, -1).contiguous() for t_ in (g_s2, g_total, delta))
    wt = weight.mT.contiguous()  # (b, c, n + c)
    if g_layout is not None:
        g_layout = g_layout.contiguous()
    g_x = torch.empty_like(x3) if need_x else None
    gxs = map_strides(g_x) if need_x else (0, 0, 0)
    g_w = vc.new_empty((b, weight_rows, c)) if weight_rows else None
    g_lsum = vc.new_empty((b, n))
    _run(lib.an_bwd2, b, c, n, hw, g_y.data_ptr(), *gys, x3.data_ptr(), *xs, vc.data_ptr(), s.data_ptr(),
         p.data_ptr(), gs.data_ptr(), _ptr(g_layout), g_m.data_ptr(), g_a.data_ptr(), g_mt.data_ptr(),
         g_at.data_ptr(), g_s2.data_ptr(), g_total.data_ptr(), delta.data_ptr(), wt.data_ptr(), _ptr(g_x), *gxs,
         weight_rows, _ptr(g_w), g_lsum.data_ptr())
    return g_x, g_w, g_lsum
