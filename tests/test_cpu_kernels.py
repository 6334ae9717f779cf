"""The fused CPU kernels of AN (attnorm.layers.cpu_fused) against the PyTorch path and the literal layer."""

import os

import pytest
import torch

from attnorm.layers import attentive_norm_literal, cpu_fused

from _an import an_layer

needs_kernels = pytest.mark.skipif(cpu_fused._load() is None,
                                   reason=f"fused CPU kernels unavailable: {cpu_fused.status()['failed']}")


@pytest.fixture(autouse=True)
def _kernels_on_wherever_they_build(monkeypatch):
    """These tests check what the kernels compute and how they split work, also on a machine where the
    automatic choice leaves them off (built for 128-bit vectors: slower than the PyTorch path there)."""
    monkeypatch.setitem(cpu_fused._STATE, "enabled", True)


def _layer(c=16, n=6, seed=0, **kw):
    """The layer of the other layer tests in float32, its scale in [0.5, 1.5]: the two float32 paths' gradients
    are compared to 5e-5, and with a standard-normal scale query_bias's differed by more (c 8, 32x32)."""
    return an_layer(c, n, torch.float32, seed, rn_weight_range=(0.5, 1.5), **kw)


def _inputs(b, c, h, w, channels_last, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g) * 2 + 0.5
    gy = torch.randn(b, c, h, w, generator=g)
    if channels_last:
        x, gy = x.to(memory_format=torch.channels_last), gy.to(memory_format=torch.channels_last)
    return x, gy


def _run(layer, x, gy, kernels, positions=None, layout_grad=None, x_grad=True, threads=None):
    """Forward and backward of ``layer`` (in training mode SSR at fixed positions); returns y, the
    layout, x's gradient and the parameters'."""
    if positions is None and layer.ssr_active():
        hw = x.shape[2] * x.shape[3]
        positions = torch.randint(hw, (layer.num_entities,), generator=torch.Generator().manual_seed(7))
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with cpu_fused.cpu_kernels_enabled(kernels):
            layer.zero_grad(set_to_none=True)
            xx = x.detach().clone(memory_format=torch.preserve_format).requires_grad_(x_grad)
            y, s = layer(xx, return_layout=True, positions=positions)
            loss = (y * gy).sum()
            if layout_grad is not None:
                loss = loss + (s * layout_grad).sum()
            loss.backward()
    finally:
        torch.set_num_threads(previous)
    grads = {k: v.grad.clone() for k, v in layer.named_parameters() if v.grad is not None}
    return y.detach(), s.detach(), (xx.grad if x_grad else None), grads


def _close(a, b, tol):
    scale = b.abs().max().clamp_min(1e-30)
    return ((a - b).abs().max() / scale).item() <= tol


def _count_calls(monkeypatch):
    calls = []
    for name in ("forward", "backward"):
        fn = getattr(cpu_fused, name)
        monkeypatch.setattr(cpu_fused, name, lambda *a, _fn=fn, _n=name, **k: (calls.append(_n), _fn(*a, **k))[1])
    return calls


@needs_kernels
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 16, 5, 7), (2, 16, 23, 23), (2, 8, 32, 32), (1, 24, 2, 3), (4, 16, 4, 4)])
@pytest.mark.parametrize("ssr, affine", [(True, True), (False, False)])
def test_kernels_match_the_pytorch_path_and_the_literal_layer(channels_last, shape, ssr, affine, monkeypatch):
    """Outputs and every gradient: against the PyTorch path (float32) and the literal layer (float64).
    23x23 and 32x32 maps span several chunks with a tail that is not a whole vector."""
    b, c, h, w = shape
    layer = _layer(c=c, self_sampling=ssr and c >= 8, affine=affine)
    x, gy = _inputs(b, c, h, w, channels_last)
    layout_grad = torch.randn(b, layer.num_entities, h, w, generator=torch.Generator().manual_seed(3))
    positions = torch.randint(h * w, (layer.num_entities,), generator=torch.Generator().manual_seed(4)) if ssr else None
    calls = _count_calls(monkeypatch)
    fused = _run(layer, x, gy, True, positions, layout_grad)
    assert calls == ["forward", "backward"]  # the kernels ran ...
    if channels_last and h * w > 1:  # ... in the input's layout, and gave y and x's gradient in it
        assert fused[0].is_contiguous(memory_format=torch.channels_last)
        assert fused[2].is_contiguous(memory_format=torch.channels_last)
    torch_path = _run(layer, x, gy, False, positions, layout_grad)
    assert len(calls) == 2
    for a, ref in zip(fused[:3], torch_path[:3]):
        assert _close(a, ref, 2e-5)
    assert fused[3].keys() == torch_path[3].keys()
    for k in fused[3]:
        assert _close(fused[3][k], torch_path[3][k], 5e-5), k
    # against the literal layer in float64: the forward, and the gradients by autograd through it
    ref_layer = _layer(c=c, self_sampling=ssr and c >= 8, affine=affine).double()
    xd = x.double().requires_grad_()
    y_ref, s_ref = attentive_norm_literal(ref_layer, xd, positions)
    ((y_ref * gy.double()).sum() + (s_ref * layout_grad.double()).sum()).backward()
    assert _close(fused[0].double(), y_ref, 1e-5)
    assert (fused[1].double() - s_ref).abs().max() <= 1e-6
    assert _close(fused[2].double(), xd.grad, 1e-4)
    for k, v in ref_layer.named_parameters():
        if v.grad is not None:
            assert _close(fused[3][k].double(), v.grad, 2e-4), k


@needs_kernels
@pytest.mark.parametrize("frozen", ["all", "value", "entities_and_value", "ssr"])
def test_kernels_with_frozen_parameters_or_an_input_without_gradient(frozen):
    """Only the gradients that are asked for, each equal to the PyTorch path's (the kernels skip the
    weight sums, or the input's gradient, that nothing needs)."""
    layer = _layer(c=16)
    names = {"all": [n for n, _ in layer.named_parameters()], "value": ["value", "value_bias"],
             "entities_and_value": ["entities", "value", "value_bias"],
             "ssr": ["query", "query_bias", "key", "key_bias", "ssr_alpha"]}[frozen]
    for name in names:
        getattr(layer, name).requires_grad_(False)
    x, gy = _inputs(2, 16, 9, 11, True)
    positions = torch.randint(99, (layer.num_entities,), generator=torch.Generator().manual_seed(4))
    for x_grad in (True, False):
        if frozen == "all" and not x_grad:
            continue  # nothing to differentiate
        fused = _run(layer, x, gy, True, positions, x_grad=x_grad)
        torch_path = _run(layer, x, gy, False, positions, x_grad=x_grad)
        assert fused[3].keys() == torch_path[3].keys()
        assert not set(names) & set(fused[3])
        if x_grad:
            assert _close(fused[2], torch_path[2], 2e-5)
        for k in fused[3]:
            assert _close(fused[3][k], torch_path[3][k], 5e-5), k


@needs_kernels
@pytest.mark.parametrize("openmp", [True, False])
def test_kernels_give_the_same_bits_on_one_or_two_threads(openmp, monkeypatch):
    """Samples are split across threads (in OpenMP's team, or in a pool of Python threads) and each
    sample's sums run in one fixed order."""
    if openmp and not cpu_fused._STATE["openmp"]:
        pytest.skip(f"the kernels split samples in {cpu_fused.status()['threading']}")
    layer = _layer(c=16, n=16)
    x, gy = _inputs(5, 16, 17, 19, True)
    monkeypatch.setattr(cpu_fused, "_POOL", {})
    with cpu_fused.kernel_openmp_enabled(openmp):
        one = _run(layer, x, gy, True, threads=1)
        two = _run(layer, x, gy, True, threads=2)
    assert bool(cpu_fused._POOL) == (not openmp)  # the Python pool ran the two-thread call, or OpenMP did
    for a, b in zip(one[:3], two[:3]):
        assert torch.equal(a, b)
    for k in one[3]:
        assert torch.equal(one[3][k], two[3][k])


@needs_kernels
def test_the_openmp_switch_sends_the_samples_to_the_python_pool_and_says_so(monkeypatch):
    """kernel_openmp(False) (or ATTNORM_CPU_KERNELS_OPENMP=0 at import) splits samples in the Python pool even
    where the library could use OpenMP; status() and summary() say so; the context manager restores it."""
    monkeypatch.setitem(cpu_fused._STATE, "openmp", True)  # as where the library was built with OpenMP
    monkeypatch.setitem(cpu_fused._STATE, "threading", "openmp")
    calls = []

    def fn(threads, b0, b1):
        calls.append((threads, b0, b1))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert cpu_fused._STATE["openmp_wanted"]
    cpu_fused._split(fn, 5)
    assert calls == [(2, 0, 5)] and cpu_fused.summary() == "on (openmp)"
    calls.clear()
    with cpu_fused.kernel_openmp_enabled(False):
        cpu_fused._split(fn, 5)
        assert sorted(calls) == [(1, 0, 2), (1, 2, 5)]
        want = "python threads (OpenMP switched off: kernel_openmp(False))"
        assert cpu_fused.status()["threading"] == want and cpu_fused.summary() == f"on ({want})"
    assert cpu_fused._STATE["openmp_wanted"] and cpu_fused.status()["threading"] == "openmp"
    # where the library cannot use OpenMP the switch changes nothing in the report
    monkeypatch.setitem(cpu_fused._STATE, "openmp", False)
    monkeypatch.setitem(cpu_fused._STATE, "threading", "python threads (the compiler has no OpenMP)")
    with cpu_fused.kernel_openmp_enabled(False):
        assert cpu_fused.status()["threading"] == "python threads (the compiler has no OpenMP)"
    for value, want in (("0", False), ("off", False), ("1", True), ("", True)):
        monkeypatch.setenv("ATTNORM_CPU_KERNELS_OPENMP", value)
        assert cpu_fused._env_on("ATTNORM_CPU_KERNELS_OPENMP") is want


@needs_kernels
def test_the_kernels_share_torchs_openmp_runtime_where_torch_uses_libgomp():
    """Built with OpenMP, the kernels must find torch's libgomp already loaded, not bring a second
    runtime whose threads would compete with torch's."""
    if not cpu_fused._torch_uses_libgomp(cpu_fused._openmp_runtimes()):
        pytest.skip("torch does not run on libgomp here")
    assert [f for f in cpu_fused._openmp_runtimes() if os.path.basename(f).startswith("libgomp.so")]
    if cpu_fused.status()["threading"] != "python threads (the compiler has no OpenMP)":
        assert cpu_fused.status()["threading"] == "openmp" and cpu_fused._STATE["openmp"]


@needs_kernels
def test_kernels_under_bf16_autocast_and_in_eval_mode():
    layer = _layer(c=16, n=16)
    x, gy = _inputs(2, 16, 12, 12, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _run(layer, x.bfloat16(), gy, True)
        torch_path = _run(layer, x.bfloat16(), gy, False)
    assert fused[0].dtype == torch.bfloat16
    assert (fused[0].float() - torch_path[0].float()).abs().max() <= 0.02 * torch_path[0].abs().max()
    layer.eval()
    with torch.no_grad(), cpu_fused.cpu_kernels_enabled(True):
        y = layer(x)
    with torch.no_grad(), cpu_fused.cpu_kernels_enabled(False):
        y_ref = layer(x)
    assert _close(y, y_ref, 2e-5)


def test_kernels_apply_to_narrow_float32_cpu_layers_with_algorithm1_only():
    if cpu_fused._load() is None:
        pytest.skip("no kernels")
    cpu = torch.device("cpu")
    assert cpu_fused.usable(cpu, torch.float32, True, 16)
    assert cpu_fused.usable(cpu, torch.float32, True, cpu_fused.MAX_CHANNELS)
    assert not cpu_fused.usable(cpu, torch.float32, True, cpu_fused.MAX_CHANNELS + 1)
    assert not cpu_fused.usable(cpu, torch.float64, True, 16)
    assert not cpu_fused.usable(cpu, torch.float32, False, 16)  # the "weighted" variance
    with cpu_fused.cpu_kernels_enabled(False):
        assert not cpu_fused.usable(cpu, torch.float32, True, 16)
    assert cpu_fused.usable(cpu, torch.float32, True, 16)


SHIPPED_FLAGS = cpu_fused.FLAGS


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """A process state in which the kernels are built (or not) again, into ``tmp_path``; at -O1, which compiles in
    a third of -O3's time (1.5 s against 4.3 s on a 2-core EPYC): these tests are about how the library is built,
    found and loaded, and what it computes, which -O3 only makes faster."""
    saved = dict(cpu_fused._STATE)
    monkeypatch.setenv("ATTNORM_CACHE_DIR", str(tmp_path))
    for name in ("FLAGS", "PORTABLE_FLAGS"):
        monkeypatch.setattr(cpu_fused, name, tuple("-O1" if f == "-O3" else f for f in getattr(cpu_fused, name)))
    cpu_fused._forget()
    yield tmp_path
    cpu_fused._STATE.update(saved)


def test_without_a_compiler_the_layer_runs_its_pytorch_path(fresh_build, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-attnorm")
    layer = _layer(c=16)
    x, gy = _inputs(2, 16, 6, 6, True)
    assert not cpu_fused.usable(torch.device("cpu"), torch.float32, True, 16)
    assert "no C++ compiler" in cpu_fused.status()["failed"]
    assert not cpu_fused.status()["loaded"]
    got = _run(layer, x, gy, True)
    cpu_fused._STATE["enabled"] = False
    ref = _run(layer, x, gy, False)
    for a, b in zip(got[:3], ref[:3]):
        assert torch.equal(a, b)  # the very same path
    assert not list(fresh_build.rglob("*.so"))


def test_a_failing_build_is_reported_and_leaves_nothing_behind(fresh_build, monkeypatch):
    if shutil_which("c++") is None:
        pytest.skip("no compiler")
    monkeypatch.setattr(cpu_fused, "FLAGS", cpu_fused.FLAGS + ("-fno-such-option-attnorm",))
    monkeypatch.setattr(cpu_fused, "PORTABLE_FLAGS", cpu_fused.PORTABLE_FLAGS + ("-fno-such-option-attnorm",))
    assert cpu_fused._load() is None
    assert cpu_fused.status()["failed"].startswith("RuntimeError")
    assert not [p for p in fresh_build.rglob("*") if p.is_file()]  # no half-written library


def test_a_compiler_that_refuses_the_native_flags_gets_a_portable_build(fresh_build, monkeypatch):
    """-march=native is refused by some compilers (Apple's clang on arm64): the kernels are then built
    without it, and run."""
    if shutil_which("c++") is None:
        pytest.skip("no compiler")
    monkeypatch.setattr(cpu_fused, "FLAGS", cpu_fused.FLAGS + ("-fno-such-option-attnorm",))
    assert cpu_fused._load() is not None and cpu_fused.status()["failed"] is None
    layer = _layer(c=16)
    x, gy = _inputs(2, 16, 6, 6, True)
    fused, torch_path = _run(layer, x, gy, True), _run(layer, x, gy, False)
    assert _close(fused[2], torch_path[2], 2e-5)
    assert len(list((fresh_build / "kernels").glob("an_cpu_*.so"))) == 1


@pytest.mark.parametrize("why", ["no libgomp", "no OpenMP", "another runtime"])
def test_without_torchs_openmp_the_kernels_split_samples_in_python_threads(fresh_build, monkeypatch, why):
    """Where torch does not run on libgomp, the compiler has no OpenMP, or the built library brings an
    OpenMP runtime that is not torch's, the samples are split in a pool of Python threads, with the
    same results."""
    if shutil_which("c++") is None:
        pytest.skip("no compiler")
    if why == "no libgomp":
        monkeypatch.setattr(cpu_fused, "_torch_uses_libgomp", lambda runtimes: False)
        reason = "torch does not use libgomp here"
    elif why == "no OpenMP":
        monkeypatch.setattr(cpu_fused, "OPENMP_FLAG", "-fno-such-option-attnorm")
        monkeypatch.setattr(cpu_fused, "_torch_uses_libgomp", lambda runtimes: True)
        reason = "the compiler has no OpenMP"
    else:  # the runtimes mapped before loading the library, then one more after
        monkeypatch.setattr(cpu_fused, "_torch_uses_libgomp", lambda runtimes: True)
        calls = []
        monkeypatch.setattr(cpu_fused, "_openmp_runtimes", lambda: (calls.append(1), {"/t/libgomp.so.1"} if
                                                                    len(calls) == 1 else {"/t/libgomp.so.1",
                                                                                          "/u/libomp.so"})[1])
        reason = "the kernels' OpenMP runtime is not torch's"
    assert cpu_fused._load() is not None
    assert cpu_fused.status()["threading"] == f"python threads ({reason})" and not cpu_fused._STATE["openmp"]
    assert cpu_fused.summary() == f"on (python threads ({reason}))"
    assert cpu_fused._load().an_openmp() == (1 if why == "another runtime" else 0)
    layer = _layer(c=16)
    x, gy = _inputs(3, 16, 6, 6, True)
    one, two = _run(layer, x, gy, True, threads=1), _run(layer, x, gy, True, threads=2)
    for a, b in zip(one[:3], two[:3]):
        assert torch.equal(a, b)
    assert _close(two[2], _run(layer, x, gy, False)[2], 2e-5)


def test_the_build_is_cached_per_machine_and_source(fresh_build):
    if shutil_which("c++") is None:
        pytest.skip("no compiler")
    assert cpu_fused._load() is not None
    built = list((fresh_build / "kernels").glob("an_cpu_*.so"))
    assert len(built) == 1 and cpu_fused.status()["path"] == str(built[0])
    stamp = os.stat(built[0]).st_mtime_ns
    cpu_fused._forget()
    assert cpu_fused._load() is not None  # loaded from the cache, not built again
    assert os.stat(built[0]).st_mtime_ns == stamp
    assert list((fresh_build / "kernels").glob("an_cpu_*.so")) == built


def shutil_which(name):
    import shutil
    return shutil.which(os.environ.get("CXX", name))


def _cpu_flags() -> str:
    from pathlib import Path
    return Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""


def _has_flag(name: str) -> bool:
    import re
    return re.search(rf"\b{name}\b", _cpu_flags()) is not None


@needs_kernels
def test_the_library_reports_the_vectors_this_cpu_has_and_auto_uses_them_from_avx2(monkeypatch):
    import platform
    lib, bits = cpu_fused._load(), None
    if platform.machine() in ("x86_64", "AMD64") and _cpu_flags() and "-march=native" in cpu_fused.FLAGS:
        # what -march=native targets on this CPU, read from /proc/cpuinfo
        bits = 512 if _has_flag("avx512f") else 256 if _has_flag("avx") else 128
        if cpu_fused.status()["path"] and lib.an_vector_bits() != 128:  # (128: a portable build)
            assert lib.an_vector_bits() == bits
            assert cpu_fused.status()["wide"] is (bits >= 256)
    x = torch.zeros(1)
    for enabled, wide, want in ((None, True, True), (None, False, False), (True, False, True), (False, True, False)):
        monkeypatch.setitem(cpu_fused._STATE, "enabled", enabled)
        monkeypatch.setitem(cpu_fused._STATE, "wide", wide)
        assert cpu_fused.active() is want
        assert cpu_fused.usable(x.device, torch.float32, True, 16) is want
        assert cpu_fused.summary() == (f"on ({cpu_fused.status()['threading']})" if want else
                                       "off" if enabled is False else f"off here ({cpu_fused.NARROW_REASON})")


def test_the_environment_switch_is_automatic_when_unset(monkeypatch):
    monkeypatch.delenv("ATTNORM_CPU_KERNELS", raising=False)
    assert cpu_fused._env_switch("ATTNORM_CPU_KERNELS") is None
    for value, want in (("1", True), ("on", True), ("0", False), ("off", False)):
        monkeypatch.setenv("ATTNORM_CPU_KERNELS", value)
        assert cpu_fused._env_switch("ATTNORM_CPU_KERNELS") is want


@pytest.mark.parametrize("extra, bits", [(("-mno-avx512f",), 256), (("-march=x86-64", "-mtune=generic"), 128)])
def test_the_8_float_and_128_bit_builds_match_the_pytorch_path(fresh_build, monkeypatch, extra, bits):
    """The kernels' 8-float vectors (AVX2: 8x8 transposes of a channels-last map, smaller register blocks) and a
    build for plain x86-64 (SSE2) compute what the PyTorch path computes wherever the suite runs on an x86 CPU
    with AVX2; the automatic setting uses the first and leaves the second off."""
    import platform
    if shutil_which("c++") is None or platform.machine() not in ("x86_64", "AMD64") or not _has_flag("avx2"):
        pytest.skip("needs an x86 CPU with AVX2 and a compiler")
    if bits == 256 and not _has_flag("avx512f"):
        pytest.skip("the native build is the 8-float one here, which every other test in this file runs")
    monkeypatch.setattr(cpu_fused, "FLAGS", SHIPPED_FLAGS + extra)  # -O3, as shipped: what the compiler vectorises
    monkeypatch.setitem(cpu_fused._STATE, "enabled", None)
    lib = cpu_fused._load()
    assert lib is not None and cpu_fused.status()["failed"] is None
    assert lib.an_vector_bits() == bits and cpu_fused.status()["wide"] is (bits >= 256)
    assert cpu_fused.active() is (bits >= 256)
    cpu_fused._STATE["enabled"] = True
    calls = _count_calls(monkeypatch)
    for shape, channels_last in (((2, 16, 23, 23), True), ((2, 24, 5, 7), True), ((3, 8, 9, 9), False)):
        b, c, h, w = shape
        layer = _layer(c=c, self_sampling=True)
        x, gy = _inputs(b, c, h, w, channels_last)
        layout_grad = torch.randn(b, layer.num_entities, h, w, generator=torch.Generator().manual_seed(3))
        calls.clear()
        fused = _run(layer, x, gy, True, layout_grad=layout_grad)
        assert calls == ["forward", "backward"]
        torch_path = _run(layer, x, gy, False, layout_grad=layout_grad)
        for a, ref in zip(fused[:3], torch_path[:3]):
            assert _close(a, ref, 2e-5)
        for k in torch_path[3]:
            assert _close(fused[3][k], torch_path[3][k], 5e-5), k
