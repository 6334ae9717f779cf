"""AN's passes over the map as fused CPU kernels (``_cpu_kernels.cpp``), compiled at first use.

On the CPU the layer's products pair a small matrix (``c`` or ``n`` wide, 16 in the CPU presets)
with a whole map; as batched BLAS calls they ran at a sixth to a half of the core's sgemm rate, each
its own pass over memory, and a narrow channels-last input was copied to NCHW and back. The kernels walk
each sample's map in chunks of pixels that stay in cache, do every product of a chunk with
register-blocked micro-kernels and read and write a channels-last map in its own layout. They
compute what :class:`attnorm.layers.attentive._AttentiveNormFn` computes (variance
``"algorithm1"``, float32; each chunk's sums over the pixels are added up in double); the tests check
them against the PyTorch path and the literal reference.

The source is compiled once per machine by the system's C++ compiler (``$CXX`` or ``c++``, with
``-O3 -march=native``, or without ``-march=native`` where the compiler refuses it) into
``$ATTNORM_CACHE_DIR/kernels`` (default ``~/.cache/attnorm/kernels``) and loaded with ctypes.
Without a compiler, or if building fails, the layer keeps its PyTorch path (the reason is in
:func:`status`). Their vectors are as wide as the registers the compiler targets: 16 floats for AVX-512,
8 elsewhere, with register blocks sized for 32 or 16 registers. By default they run where the compiler
targeted 256-bit vectors or wider (AVX2, AVX-512): with 128-bit ones only (a build for plain x86-64's SSE2;
NEON) they took 6-12x the PyTorch path's time (session 41). On a 2-core AVX2 host the 8-float build takes
0.66-0.77x the PyTorch path's time for the layer's forward + backward (b 32, c 32, 16x16 and 32x32; its
16-float build, before session 41, took 4.2-4.5x). ``ATTNORM_CPU_KERNELS=0`` or :func:`cpu_kernels`
(``False``) switches them off everywhere, ``ATTNORM_CPU_KERNELS=1`` or :func:`cpu_kernels` (``True``) on
everywhere they build.
Samples are split across ``torch.get_num_threads()`` threads: in OpenMP's team where the library is
built with ``-fopenmp`` and shares torch's OpenMP runtime (GCC's libgomp, which the Linux CPU wheels of
torch bring), else in a pool of Python threads (slower at two threads or more: torch's idle OpenMP
threads spin beside them after every parallel loop of torch's).
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
ABI_VERSION = 5
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=gnu++17")
PORTABLE_FLAGS = tuple(f for f in FLAGS if f != "-march=native")  # where -march=native is refused
OPENMP_FLAG = "-fopenmp"


def _env_on(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() not in ("0", "false", "off", "no")


def _env_switch(name: str) -> bool | None:
    """An environment switch: None where unset (the default), else on or off as :func:`_env_on` reads it."""
    return _env_on(name) if os.environ.get(name, "").strip() else None


# "enabled": None (auto: where the library was built for 256-bit vectors or wider), True or False; "wide": the
# library was built for them (known once loaded); "openmp": the loaded library can split samples in torch's OpenMP team;
# "openmp_wanted": the user's switch (kernel_openmp); "threading": how the loaded library splits them, as reports
# say it when the switch is on
_STATE = {"enabled": _env_switch("ATTNORM_CPU_KERNELS"), "lib": None, "failed": None, "path": None, "openmp": False,
          "openmp_wanted": _env_on("ATTNORM_CPU_KERNELS_OPENMP"), "threading": None, "wide": None}
WIDE_BITS = 256  # the automatic setting runs the kernels where the library's vectors are at least this wide
NARROW_REASON = ("built for 128-bit vectors (no AVX2 or AVX-512), where the kernels ran 6-12x slower than the "
                 "PyTorch path; ATTNORM_CPU_KERNELS=1 uses them anyway")
_LOCK = threading.Lock()
_POOL: dict = {}


def cpu_kernels(enabled: bool | None = True) -> None:
    """Use the fused CPU kernels wherever they build (``True``), nowhere (``False``), or where the
    library was built for 256-bit vectors or wider, AVX2's or AVX-512's (``None``, the default)."""
    _STATE["enabled"] = None if enabled is None else bool(enabled)


def cpu_kernels_enabled(enabled: bool | None = True):
    """Context manager: :func:`cpu_kernels` (``enabled``) inside, the previous setting after."""
    from .regional import _switched
    return _switched(_STATE, cpu_kernels, enabled)


def kernel_openmp(enabled: bool = True) -> None:
    """Split the kernels' samples in torch's OpenMP team where the loaded library can (the default), or always
    in a pool of Python threads (``enabled=False``; also ``ATTNORM_CPU_KERNELS_OPENMP=0``). The numbers are the
    same bits either way (each sample is computed by one thread); for timing one way against the other."""
    _STATE["openmp_wanted"] = bool(enabled)


def kernel_openmp_enabled(enabled: bool = True):
    """Context manager: :func:`kernel_openmp` (``enabled``) inside, the previous setting after."""
    from .regional import _switched
    return _switched(_STATE, kernel_openmp, enabled, key="openmp_wanted")


def _uses_openmp() -> bool:
    return _STATE["openmp"] and _STATE["openmp_wanted"]


def _threading() -> str | None:
    if _STATE["openmp"] and not _STATE["openmp_wanted"]:
        return "python threads (OpenMP switched off: kernel_openmp(False))"
    return _STATE["threading"]


def status() -> dict:
    """``{"enabled", "loaded", "failed", "path", "threading", "wide"}``: whether the kernels are switched
    on (None: automatic), built and loaded, why not (``failed``), the shared library's path, how they
    split the samples over threads (``"openmp"``: in torch's OpenMP team; ``"python threads (reason)"``),
    and whether the library was built for vectors of ``WIDE_BITS`` (256) bits or more (None until loaded)."""
    return {"enabled": _STATE["enabled"], "loaded": _STATE["lib"] is not None, "failed": _STATE["failed"],
            "path": _STATE["path"], "threading": _threading(), "wide": _STATE["wide"]}


def active() -> bool:
    """Whether the layer uses the kernels now (where they apply), building them on first call."""
    if _STATE["enabled"] is False or _load() is None:
        return False
    return _STATE["enabled"] is True or bool(_STATE["wide"])


def summary() -> str:
    """A few words for reports: ``on (openmp)`` / ``on (python threads (reason))`` (built and loaded,
    building them if need be, and how samples are split over threads), ``off`` (switched off),
    ``off here (reason)`` (automatic, on a machine where they are slower) or ``unavailable (reason)``."""
    if _STATE["enabled"] is False:
        return "off"
    if _load() is None:
        return f"unavailable ({_STATE['failed']})"
    return f"on ({_threading()})" if active() else f"off here ({NARROW_REASON})"


def _forget() -> None:
    """Forget the loaded library and any failure, so that the next use builds or loads again (tests)."""
    with _LOCK:
        _STATE["lib"] = _STATE["failed"] = _STATE["path"] = _STATE["threading"] = _STATE["wide"] = None
        _STATE["openmp"] = False


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


def _flag_sets(openmp: bool) -> list[tuple[str, ...]]:
    """The flags to try, best first: with ``-march=native``, then without; each with OpenMP first
    when ``openmp``."""
    sets = []
    for flags in (FLAGS, PORTABLE_FLAGS):
        sets += [(*flags, OPENMP_FLAG), flags] if openmp else [flags]
    return sets


def _torch_uses_libgomp(runtimes: set[str]) -> bool:
    """Whether torch's parallel loops run on GCC's OpenMP runtime (libgomp) in this process, given the
    mapped ``runtimes`` (:func:`_openmp_runtimes`): only then does a library built with ``-fopenmp``
    (which names ``libgomp.so.1``) join torch's team instead of bringing a second runtime."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return False
    # a vendored copy (scikit-learn's libgomp-HASH.so) has another soname and does not take the binding
    return any(os.path.basename(f).startswith("libgomp.so") for f in runtimes)


_OPENMP_RUNTIMES = ("libgomp", "libomp", "libiomp")  # GCC's, LLVM's, Intel's


def _openmp_runtimes() -> set[str]:
    """The OpenMP runtime libraries mapped into this process (read from ``/proc/self/maps``: Linux;
    empty elsewhere)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return set()
    files = set()
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and os.path.basename(fields[5]).startswith(_OPENMP_RUNTIMES):
            files.add(os.path.realpath(fields[5]))
    return files


def _build(compiler: str, openmp: bool = False) -> Path:
    """The shared library for this source, compiler and machine: from the cache, else built (with
    ``FLAGS``, or ``PORTABLE_FLAGS`` if the compiler refuses those; each with ``-fopenmp`` first when
    ``openmp``) and put there atomically."""
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    directory = _cache_dir() / "kernels"
    errors = []
    for flags in _flag_sets(openmp):
        key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(),
                                         _machine_id().encode()])).hexdigest()[:16]
        target = directory / f"an_cpu_{key}.so"
        if target.exists():
            return target
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(fd)
        try:
            done = subprocess.run([compiler, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                                  timeout=300)
            if done.returncode == 0:
                os.replace(tmp, target)  # atomic: a concurrent build writes the same bytes
                return target
            errors.append((done.stderr.strip().splitlines() or [""])[0][:200])
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"{compiler} failed: {errors[0]}")


_LONG, _PTR = ctypes.c_long, ctypes.c_void_p
_FLOAT = ctypes.c_float
_MAP = [_PTR, _LONG, _LONG, _LONG]  # a map's pointer and its (sample, row, pixel) strides
_SIGNATURES = {  # (threads, b0, b1, c, n, hw, ...)
    "an_forward": [_LONG] * 6 + _MAP + [_PTR] * 6 + [_FLOAT] + [_PTR] * 10 + [_LONG] * 3,
    "an_backward": ([_LONG] * 6 + _MAP * 2 + [_PTR] * 12 + [_FLOAT] + [_PTR] * 18 + _MAP
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
            runtimes = _openmp_runtimes()  # before loading: a runtime that appears after came with the library
            shared_runtime = _torch_uses_libgomp(runtimes)
            path = _build(compiler, openmp=shared_runtime)
            lib = ctypes.CDLL(str(path))
            if lib.an_abi_version() != ABI_VERSION:
                raise RuntimeError(f"{path} has ABI {lib.an_abi_version()}, expected {ABI_VERSION}")
            for name, args in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, ctypes.c_int
            wide = lib.an_vector_bits() >= WIDE_BITS
            openmp = bool(lib.an_openmp())
            if openmp and _openmp_runtimes() != runtimes:  # it brought a runtime of its own after all
                openmp = False
                _STATE["threading"] = "python threads (the kernels' OpenMP runtime is not torch's)"
            elif openmp:
                _STATE["threading"] = "openmp"
            else:
                _STATE["threading"] = ("python threads (" + ("torch does not use libgomp here" if not shared_runtime
                                                              else "the compiler has no OpenMP") + ")")
        except Exception as exc:  # compiler errors, unwritable cache, a broken library
            _STATE["failed"] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
            log.warning("attnorm: fused CPU kernels off: %s", _STATE["failed"])
            return None
        _STATE["lib"], _STATE["path"], _STATE["openmp"], _STATE["wide"] = lib, str(path), openmp, wide
        if not wide and _STATE["enabled"] is None:
            log.info("attnorm: fused CPU kernels off here: %s", NARROW_REASON)
        return lib


# The kernels run layers up to this width; at 512 channels the PyTorch path's BLAS calls are faster.
# One thread, fwd + bwd, channels-last float32, the kernels' time over the PyTorch path's (session 29,
# benchmarks/results/an_cpu_s29, at 32x32 / 64x64): b 32, c 16 0.63 / 0.52; b 16, c 32 0.76 / 0.60;
# b 8, c 64 0.84 / 0.71; ad hoc (the same loop in one process, after the last chunk-size change): b 8,
# c 128 0.82 / 0.71 (0.78 NCHW at 32x32), b 8, c 256 0.98 at 16x16 and 0.84 at 32x32, b 4, c 512
# 1.18 at 16x16.
MAX_CHANNELS = 256


def usable(device: torch.device, dtype: torch.dtype, algorithm1: bool, channels: int) -> bool:
    """Whether the kernels run a layer of ``channels`` channels computing in ``dtype`` on ``device``
    (building them on first use)."""
    return (device.type == "cpu" and dtype == torch.float32 and algorithm1 and channels <= MAX_CHANNELS
            and not torch.compiler.is_compiling() and active())


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
    """``fn(threads, b0, b1, *args)`` over [0, b) on ``torch.get_num_threads()`` threads: one call that
    splits the samples in OpenMP's team, or (without OpenMP) one call per thread of a Python pool
    (ctypes releases the GIL during each)."""
    with torch.profiler.record_function(f"attnorm::{fn.__name__}"):  # named in a profile
        _split(fn, b, *args)


def _split(fn, b: int, *args) -> None:
    threads = max(1, min(torch.get_num_threads(), b))
    if threads == 1 or _uses_openmp():
        fn(threads, 0, b, *args)
        return
    key = (threads, os.getpid())  # a forked child cannot use its parent's worker threads
    pool = _POOL.get(key)
    if pool is None:
        pool = _POOL[key] = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="attnorm-an")
    bounds = [b * i // threads for i in range(threads + 1)]
    futures = [pool.submit(fn, 1, bounds[i], bounds[i + 1], *args) for i in range(threads)]
    for f in futures:
        f.result()


def in_kernel_layout(t: Tensor) -> tuple[Tensor, tuple[int, int, int]]:
    """``t`` and its strides, copied to NCHW first if its layout is neither form the kernels read."""
    strides = map_strides(t)
    if strides is None:
        t = t.contiguous()
        strides = map_strides(t)
    return t, strides


def forward(x3: Tensor, weight: Tensor, layout_bias: Tensor, value_bias: Tensor, beta: Tensor | None,
            alpha: Tensor | None, scale: Tensor | None, eps: float):
    """The layer's forward on x3 (b, c, hw) float32 (NCHW or pixel-major) with the rows
    [E_b / tau; W_v] (b, n + c, c) and the layout rows' bias (b, n). Returns y (in x3's layout) and
    what the backward needs: vc (b, c, hw), the layout s (b, n, hw), m (b, c, 2n) = Vc [S; S^2]^T,
    a (b, c, n) = Vc^2 (S^2)^T, ssum (b, 2n) (the pixel sums of [S; S^2]), the shift k (b, c) and
    the coefficients p, q (b, c, n)."""
    lib = _load()
    b, c, hw = x3.shape
    n = weight.shape[1] - c
    x3, xs = in_kernel_layout(x3)
    weight = weight.contiguous()
    bias = x3.new_empty((b, n + c))
    bias[:, :n] = layout_bias
    new = x3.new_empty
    vc, s, m, a, ssum = new((b, c, hw)), new((b, n, hw)), new((b, c, 2 * n)), new((b, c, n)), new((b, 2 * n))
    shift, p, q, qneg = new((b, c)), new((b, c, n)), new((b, c, n)), new((b, c, n))
    y = torch.empty_like(x3)  # same strides as a dense x3
    # every tensor whose pointer the kernel gets is held by a name until it returns
    value_bias, beta, alpha, scale = (_contiguous(t) for t in (value_bias, beta, alpha, scale))
    _run(lib.an_forward, b, c, n, hw, x3.data_ptr(), *xs, weight.data_ptr(), bias.data_ptr(),
         value_bias.data_ptr(), _ptr(beta), _ptr(alpha), _ptr(scale), eps,
         *(t.data_ptr() for t in (vc, s, m, a, ssum, shift, p, q, qneg, y)), *map_strides(y))
    return y, (vc, s, m, a, ssum, shift, p, q)


def backward(g_y: Tensor, x3: Tensor, saved: tuple, weight: Tensor, beta: Tensor | None, alpha: Tensor | None,
             scale: Tensor | None, eps: float, g_layout: Tensor | None, need_x: bool, weight_rows: int):
    """The layer's backward from what :func:`forward` returned (``saved``). Returns g_x (in x3's
    layout, or None unless ``need_x``), g_w (b, weight_rows, c) = the first ``weight_rows`` rows of
    [E_b / tau; W_v]'s gradient (None when 0), the pixel sums of the layout logits' gradient
    (b, n), the shift's gradient g_k (b, c), and the gradients of beta, alpha (c) and scale (where
    given)."""
    lib = _load()
    vc, s, m, a, ssum, shift, p, q = saved
    b, c, hw = vc.shape
    n = s.shape[1]
    g_y, gys = in_kernel_layout(g_y)
    x3, xs = in_kernel_layout(x3)
    # every tensor whose pointer the kernel gets is held by a name until it returns
    g_layout, weight, beta, alpha, scale = (_contiguous(t) for t in (g_layout, weight, beta, alpha, scale))
    new = vc.new_empty
    work = [new((b, n, hw)), new((b, n, c)), new((b, n, c)), new((b, c, n)), new((b, c, n)), new((b, c, 2 * n)),
            new((b, c, n)), new((b, 2 * n, c)), new((b, n, c)), new((b, n)), new((b, n)), new((b, c)),
            new((b, c, n + c))]
    g_k = new((b, c))
    g_beta = new((b, c)) if beta is not None else None
    g_alpha = new((b, c)) if alpha is not None else None
    g_scale = new((b,)) if scale is not None else None
    g_x = torch.empty_like(x3) if need_x else None
    gxs = map_strides(g_x) if need_x else (0, 0, 0)
    g_w = new((b, weight_rows, c)) if weight_rows else None
    g_lsum = new((b, n))
    _run(lib.an_backward, b, c, n, hw, g_y.data_ptr(), *gys, x3.data_ptr(), *xs,
         *(t.data_ptr() for t in (vc, s, m, a, ssum, shift, p, q, weight)), _ptr(beta), _ptr(alpha), _ptr(scale), eps,
         _ptr(g_layout), *(t.data_ptr() for t in work), g_k.data_ptr(), _ptr(g_beta), _ptr(g_alpha), _ptr(g_scale),
         _ptr(g_x), *gxs, weight_rows, _ptr(g_w), g_lsum.data_ptr())
    sums = lambda t: None if t is None else t.sum(0)
    g_scale = None if scale is None else g_scale.sum().reshape(scale.shape)
    return g_x, g_w, g_lsum, g_k, sums(g_beta), sums(g_alpha), g_scale


def _contiguous(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()
