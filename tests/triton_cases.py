"""Cases of ``tests/test_triton_stats.py``, which runs this file with pytest in a fresh process
(on the CPU with ``TRITON_INTERPRET=1`` set before Triton is imported); not collected on its own."""

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


@pytest.mark.parametrize("variance", ["algorithm1", "weighted"])
def test_the_layer_with_triton_statistics_matches_its_eager_path(variance):
    torch.manual_seed(0)
    layer = AttentiveNorm(16, num_entities=4, variance=variance).to(DEVICE)
    with torch.no_grad():
        layer.sigma.fill_(0.5)
        layer.rn_weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 16, 6, 6, device=DEVICE)
    g_out = torch.randn_like(x)
    positions = torch.tensor([1, 5, 7, 30], device=DEVICE)  # SSR on, fixed draws

    def run(enabled):
        xi = x.clone().requires_grad_()
        layer.zero_grad()
        with triton_statistics_enabled(enabled):
            y = layer(xi, positions=positions)
        y.backward(g_out)
        return [y.detach(), xi.grad] + [p.grad.clone() for p in layer.parameters()]

    calls = []
    real = ts.statistics_forward
    ts.statistics_forward = lambda *a: calls.append(1) or real(*a)
    try:
        fast = run(True)
    finally:
        ts.statistics_forward = real
    assert calls, "the Triton kernels did not run"
    for i, (v, w) in enumerate(zip(fast, run(False))):
        _close(v, w, f"output {i}", rtol=5e-5, floor=1e-3)


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
