"""Cases of ``tests/test_triton_stats.py``, which runs this file with pytest in a fresh process
(on the CPU with ``TRITON_INTERPRET=1`` set before Triton is imported); not collected on its own."""

import contextlib
import itertools
import os
import warnings

import pytest
import torch

from attnorm.layers import AttentiveNorm, regional, triton_statistics_enabled
from attnorm.layers import triton_stats as ts

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _fresh_fallback_state():
    regional._TRITON["failed"] = None
    yield
    regional._TRITON["failed"] = None


def _sums(b, c, n, hw, algorithm1, affine, scaled, seed=0):
    """Pixel sums of a random centred V under a random soft layout, as the layer forms them."""
    g = torch.Generator().manual_seed(seed)
    s = torch.softmax(torch.randn(b, n, hw, generator=g) * 2, 1)
    vc = torch.randn(b, c, hw, generator=g)
    vc = vc - vc.mean(-1, keepdim=True)
    m = torch.cat([vc @ s.transpose(1, 2), vc @ (s * s).transpose(1, 2)], -1)  # u and r as views, like the layer
    ssum = torch.cat([s.sum(-1), (s * s).sum(-1)], -1).unsqueeze(1)
    out = {"u": m[..., :n], "r": m[..., n:] if algorithm1 else None,
           "a": (vc * vc) @ ((s * s) if algorithm1 else s).transpose(1, 2),
           "k": torch.randn(b, c, 1, generator=g), "total": ssum[..., :n],
           "s2_sum": ssum[..., n:] if algorithm1 else None,
           "beta": torch.randn(c, generator=g) if affine else None,
           "alpha": torch.randn(c, generator=g) if affine else None,
           "scale": torch.randn((), generator=g) if scaled else None}
    return {k: (v.to(DEVICE) if v is not None else None) for k, v in out.items()}


def _close(fast, ref, name, rtol=2e-5, floor=1e-6):
    """Largest difference relative to the largest reference value (at least ``floor``: gradients
    that are zero in exact arithmetic, like the query bias's under the entity softmax, are rounding)."""
    scale = ref.abs().max().clamp_min(floor)
    assert float((fast - ref).abs().max() / scale) <= rtol, name


@pytest.mark.parametrize("algorithm1,affine,scaled", list(itertools.product([True, False], repeat=3)))
@pytest.mark.parametrize("shape", [(2, 5, 4, 9), (3, 16, 16, 64)])
def test_kernels_match_the_eager_statistics(algorithm1, affine, scaled, shape):
    b, c, n, hw = shape
    x = _sums(b, c, n, hw, algorithm1, affine, scaled)
    args = list(x.values())
    assert ts.applicable(*args)
    p0, q0, state0 = regional.coefficients_forward(*args, 1e-5, hw)
    p1, q1, state1 = ts.statistics_forward(*args, 1e-5, hw)
    assert len(state1) == ts.STATE_LENGTH
    _close(p1, p0, "P")
    _close(q1, q0, "Q")
    g = torch.Generator().manual_seed(1)
    g_p, g_q = (torch.randn(b, c, n, generator=g).to(DEVICE) for _ in range(2))
    want = regional._coefficients_backward(state0, 1e-5, hw, algorithm1, g_p, g_q)
    got = ts.statistics_backward(state1, 1e-5, hw, algorithm1, g_p, g_q)
    for name, w, v in zip(("u", "r", "a", "k", "total", "s2_sum", "beta", "alpha", "scale"), want, got):
        assert (w is None) == (v is None), name
        if w is not None:
            assert v.shape == w.shape, name
            _close(v, w, name)


def _layer_against_its_eager_path(variance, size, switches, module, name, floor=1e-3):
    """An SSR layer's output and every gradient with ``switches`` on against off; returns how many
    times ``module.name`` (the Triton entry point under test) ran in the switched-on pass."""
    torch.manual_seed(0)
    layer = AttentiveNorm(16, num_entities=4, variance=variance).to(DEVICE)
    with torch.no_grad():
        layer.sigma.fill_(0.5)
        layer.rn_weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 16, size, size, device=DEVICE)
    g_out = torch.randn_like(x)
    positions = torch.tensor([1, 5, 7, 30], device=DEVICE)  # SSR on, fixed draws

    def run(enabled):
        xi = x.clone().requires_grad_()
        layer.zero_grad()
        with contextlib.ExitStack() as stack:
            for switch in switches:
                stack.enter_context(switch(enabled))
            y = layer(xi, positions=positions)
            y.backward(g_out)
        return [y.detach(), xi.grad] + [p.grad.clone() for p in layer.parameters()]

    calls = []
    real = getattr(module, name)
    setattr(module, name, lambda *a: calls.append(1) or real(*a))
    try:
        fast = run(True)
    finally:
        setattr(module, name, real)
    for i, (v, w) in enumerate(zip(fast, run(False))):
        _close(v, w, f"{variance} output {i}", rtol=5e-5, floor=floor)
    return len(calls)


@pytest.mark.parametrize("variance", ["algorithm1", "weighted"])
def test_the_layer_with_triton_statistics_matches_its_eager_path(variance):
    assert _layer_against_its_eager_path(variance, 6, [triton_statistics_enabled], ts, "statistics_forward"), \
        "the Triton kernels did not run"


def test_what_the_kernels_do_not_take_runs_eagerly():
    x = _sums(2, 5, 4, 9, True, True, True)
    args = list(x.values())
    assert not ts.applicable(*[a.double() if a is not None else None for a in args])  # float64
    big = _sums(1, 2048, 16, 4, True, False, False)
    assert not ts.applicable(*big.values())  # a c x n tile over MAX_TILE
    calls = []
    real = ts.statistics_forward
    ts.statistics_forward = lambda *a: calls.append(1) or real(*a)
    try:
        with triton_statistics_enabled(True):
            regional.statistics_forward(*args, 1e-5, 1)  # a 1x1 map: the sums cancel exactly
            p, q, state = regional.statistics_forward(*args, 1e-5, 9)
    finally:
        ts.statistics_forward = real
    assert len(calls) == 1 and len(state) == ts.STATE_LENGTH


def test_a_failing_kernel_warns_once_and_the_eager_path_takes_over(monkeypatch):
    x = _sums(2, 5, 4, 9, True, True, True)
    args = list(x.values())

    def broken(*a):
        raise RuntimeError("no kernel for this machine\nmore detail")
    monkeypatch.setattr(ts, "statistics_forward", broken)
    with triton_statistics_enabled(True), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p, q, state = regional.statistics_forward(*args, 1e-5, 9)
        regional.statistics_forward(*args, 1e-5, 9)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "RuntimeError: no kernel for this machine" in messages[0]
    p0, q0, _ = regional.coefficients_forward(*args, 1e-5, 9)
    assert torch.equal(p, p0) and torch.equal(q, q0) and len(state) != ts.STATE_LENGTH


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter does not compile")
@pytest.mark.parametrize("flags", [True, False])
@pytest.mark.parametrize("algorithm1", [True, False])
def test_kernels_compile_for_a_hopper_gpu(algorithm1, flags):
    """Triton's own compiler (with the ptxas its wheel ships) builds both kernels for sm_90, also
    where no GPU is present: the interpreter above does not type-check what a GPU build needs."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    import attnorm.layers._triton_kernels as kernels
    for fn in (kernels.forward_kernel, kernels.backward_kernel):
        consts = {"ALG1": algorithm1, "HAS_BETA": flags, "HAS_ALPHA": flags, "HAS_SCALE": flags,
                  "BC": 128, "BN": 16}
        signature = {name: ("constexpr" if name in consts else "*fp32" if name.endswith("_ptr")
                            else "fp32" if name in ("eps", "hw", "tiny") else "i32") for name in fn.arg_names}
        src = ASTSource(fn=fn, signature=signature,
                        constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
        compiled = triton_compile(src, target=GPUTarget("cuda", 90, 32))
        assert compiled.asm.get("cubin"), fn


# ------------------------------------------------------------------ the pixel sums (split-K kernel)
from attnorm.layers import triton_pixel_sums_enabled  # noqa: E402
from attnorm.layers import triton_sums  # noqa: E402

# Triton 3.6's interpreter turns a loop bound that is a kernel argument into int(1-element array),
# which NumPy 2.3+ refuses: the interpreted pixel-sum cases need an older NumPy (compiled: any)
_OLD_NUMPY = tuple(int(v) for v in __import__("numpy").__version__.split(".")[:2]) < (2, 3)
pytestmark_pixel = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1" and not _OLD_NUMPY,
                                      reason="Triton's interpreter needs NumPy < 2.3 for the kernel's loop")


def _pixel_operands(batch, m, n, k, seed=0, strided=False):
    """(a, b) as the layer passes them; ``strided``: views into larger buffers (batch and row
    strides that are not the shape's), as ``Vc`` (a slice of the (n + c, hw) buffer) and ``S^2``."""
    g = torch.Generator().manual_seed(seed)
    if strided:
        a = torch.randn(batch, m + 3, k, generator=g)[:, 3:]
        b = torch.randn(batch, 2 * n, k, generator=g)[:, n:]
    else:
        a, b = torch.randn(batch, m, k, generator=g), torch.randn(batch, n, k, generator=g)
    return a.to(DEVICE), b.to(DEVICE)


@pytestmark_pixel
@pytest.mark.parametrize("shape", [(2, 5, 4, 9), (3, 16, 16, 300), (2, 144, 128, 257), (1, 128, 32, 1024)])
@pytest.mark.parametrize("strided", [False, True])
def test_pixel_sum_matches_float64_products(shape, strided):
    batch, m, n, k = shape
    a, b = _pixel_operands(batch, m, n, k, strided=strided)
    assert triton_sums.applicable(a, b)
    got = triton_sums.pixel_sum(a, b)
    want = torch.bmm(a.double(), b.double().transpose(1, 2))
    assert got.dtype == torch.float32 and got.shape == (batch, m, n) and got.is_contiguous()
    _close(got.double(), want, "a @ b^T", rtol=1e-5)


@pytestmark_pixel
@pytest.mark.parametrize("config", triton_sums.CANDIDATES + triton_sums.TF32X3_CANDIDATES)
def test_every_candidate_launch_gives_the_same_sums(config):
    """Each tile shape / chunk count the tuner may pick (chunks > 1 here: k = 700 > 2 * MIN_CHUNK),
    with output tiles that overhang m and n."""
    a, b = _pixel_operands(2, 40, 20, 700, seed=3, strided=True)
    splits, chunk = triton_sums._splits(config, 2, 40, 20, 700)
    assert splits * chunk >= 700 and (splits - 1) * chunk < 700
    got = triton_sums._launch(a, b, config)
    _close(got.double(), torch.bmm(a.double(), b.double().transpose(1, 2)), str(config), rtol=1e-5)


def test_pixel_sum_chunks_split_the_map():
    """The chunk arithmetic: enough programs, chunks of at least MIN_CHUNK pixels in whole steps."""
    c = triton_sums.Config(64, 32, 32, 4, 3, 1024)
    assert triton_sums._splits(c, 8, 128, 16, 16384) == (64, 256)  # 2 tiles x 8 samples x 64 chunks
    assert triton_sums._splits(c, 8, 128, 16, 1024) == (8, 128)  # capped by MIN_CHUNK
    assert triton_sums._splits(c, 64, 144, 128, 4096) == (2, 2048)  # 12 tiles x 64 samples x 2 chunks
    assert triton_sums._splits(c, 128, 144, 128, 4096) == (1, 4096)  # enough programs without chunks
    assert triton_sums._splits(c, 1, 128, 16, 100) == (1, 128)


@pytestmark_pixel
@pytest.mark.parametrize("variance", ["algorithm1", "weighted"])
def test_the_layer_with_triton_pixel_sums_matches_its_bmm_path(variance):
    # 400 pixels: more than one chunk. 5 products: 2 in the forward (algorithm1: [S; S^2] and S^2;
    # weighted: S twice), 3 in the backward. The floor: the query bias's gradient is zero in exact
    # arithmetic (+-5e-8 from either path on an H200)
    calls = _layer_against_its_eager_path(variance, 20, [triton_pixel_sums_enabled, triton_statistics_enabled],
                                          triton_sums, "pixel_sum", floor=1e-2)
    assert calls == 5, calls


def test_the_tuner_tries_three_tf32_products_only_where_allowed():
    try:
        # the default: float32-FMA and three-TF32 tiles
        assert triton_sums.candidates() == triton_sums.CANDIDATES + triton_sums.TF32X3_CANDIDATES
        triton_sums.set_precision("ieee")
        assert triton_sums.candidates() == triton_sums.CANDIDATES
        assert not any(c.tf32x3 for c in triton_sums.candidates())
        with pytest.raises(ValueError, match="choose 'ieee' or 'tf32x3'"):
            triton_sums.set_precision("fp16")
    finally:
        triton_sums.set_precision("tf32x3")
    assert triton_sums.candidates() == triton_sums.CANDIDATES + triton_sums.TF32X3_CANDIDATES


def test_what_the_pixel_sum_kernel_does_not_take_goes_to_bmm():
    a, b = _pixel_operands(2, 8, 4, 64)
    assert not triton_sums.applicable(a.double(), b.double())
    assert not triton_sums.applicable(a.transpose(1, 2).contiguous().transpose(1, 2), b)  # pixels not contiguous
    calls = []
    real = triton_sums.pixel_sum
    triton_sums.pixel_sum = lambda *x: calls.append(1) or real(*x)
    try:
        with triton_pixel_sums_enabled(True):
            out = regional.pixel_sum(a.double(), b.double())
        assert not calls and torch.allclose(out, torch.bmm(a.double(), b.double().transpose(1, 2)))
        with triton_pixel_sums_enabled(False):
            regional.pixel_sum(a, b)
        assert not calls
    finally:
        triton_sums.pixel_sum = real


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter does not compile")
@pytest.mark.parametrize("prec", [0, 1, 2])
def test_pixel_sum_kernel_compiles_for_a_hopper_gpu(prec):
    """Every candidate launch builds for sm_90 and fits a Hopper block's shared memory (227 KiB)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler import compile as triton_compile

    import attnorm.layers._triton_kernels as kernels
    fn = kernels.pixel_sum_kernel
    for config in triton_sums.CANDIDATES + triton_sums.TF32X3_CANDIDATES:
        consts = {"BM": config.bm, "BN": config.bn, "BK": config.bk, "PREC": prec}
        signature = {name: ("constexpr" if name in consts else "*fp32" if name.endswith("_ptr") else "i32")
                     for name in fn.arg_names}
        src = ASTSource(fn=fn, signature=signature,
                        constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
        compiled = triton_compile(src, target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": config.warps, "num_stages": config.stages})
        assert compiled.asm.get("cubin"), config
        assert compiled.metadata.shared <= 227 * 1024, (config, compiled.metadata.shared)
