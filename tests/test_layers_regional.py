"""Regional normalisation: the fast path against the literal Algorithm 1."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from attnorm.layers import regional_norm, regional_norm_literal

VARIANCES = ["algorithm1", "weighted"]


def _inputs(b, c, n, h, w, dtype=torch.float64, layout="soft", seed=0, offset=0.0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, c, h, w, generator=g, dtype=dtype) * scale + offset
    logits = torch.randn(b, n, h, w, generator=g, dtype=dtype)
    if layout == "soft":
        s = torch.softmax(logits * 3, dim=1)
    elif layout == "onehot":
        s = torch.nn.functional.one_hot(logits.argmax(1), n).permute(0, 3, 1, 2).to(dtype)
    elif layout == "empty":  # entity 0 owns nothing, entity 1 almost nothing
        logits[:, 0] = -float("inf")
        logits[:, 1] = -60.0
        s = torch.softmax(logits, dim=1)
    else:
        raise ValueError(layout)
    beta = torch.randn(c, generator=g, dtype=dtype)
    alpha = torch.randn(c, generator=g, dtype=dtype)
    return v, s, beta, alpha


def _rel_err(a, ref):
    return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("shape", [(2, 8, 4, 6, 5), (1, 3, 16, 9, 9), (3, 5, 2, 1, 7), (2, 4, 3, 2, 2)])
@pytest.mark.parametrize("layout", ["soft", "onehot", "empty"])
def test_fast_matches_literal_float64(variance, shape, layout):
    v, s, beta, alpha = _inputs(*shape, layout=layout)
    out = regional_norm(v, s, beta, alpha, variance=variance)
    ref = regional_norm_literal(v, s, beta, alpha, variance=variance)
    assert out.shape == v.shape and out.dtype == v.dtype
    assert torch.isfinite(out).all()
    assert _rel_err(out, ref) <= 1e-10


@pytest.mark.parametrize("variance", VARIANCES)
def test_fast_matches_literal_offset_and_scaled_inputs(variance):
    # Features far from zero mean stress the expanded variance (cancellation).
    v, s, beta, alpha = _inputs(2, 6, 5, 7, 7, offset=20.0, scale=0.5)
    out = regional_norm(v, s, beta, alpha, variance=variance)
    ref = regional_norm_literal(v, s, beta, alpha, variance=variance)
    assert _rel_err(out, ref) <= 1e-10


@pytest.mark.parametrize("variance", VARIANCES)
def test_degenerate_1x1_maps_with_near_empty_entities(variance):
    v, s, beta, alpha = _inputs(4, 6, 8, 1, 1, layout="empty")
    out = regional_norm(v, s, beta, alpha, variance=variance)
    ref = regional_norm_literal(v, s, beta, alpha, variance=variance)
    assert torch.isfinite(out).all()
    assert _rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("layout", ["soft", "onehot", "empty"])
def test_float32_close_to_float64_literal(variance, layout):
    v, s, beta, alpha = _inputs(2, 16, 8, 12, 10, layout=layout, seed=3)
    out = regional_norm(v.float(), s.float(), beta.float(), alpha.float(), variance=variance)
    ref = regional_norm_literal(v, s, beta, alpha, variance=variance)
    assert out.dtype == torch.float32
    assert _rel_err(out.double(), ref) <= 1e-4


@pytest.mark.parametrize("variance", VARIANCES)
def test_constant_inputs_are_finite_with_finite_gradients(variance):
    v = torch.full((2, 4, 5, 5), 3.0, requires_grad=True)
    s = torch.softmax(torch.randn(2, 3, 5, 5), 1).requires_grad_()
    out = regional_norm(v, s, variance=variance)
    ref = regional_norm_literal(v.detach().double(), s.detach().double(), variance=variance)
    assert _rel_err(out.detach().double(), ref) <= 1e-4
    out.square().sum().backward()
    assert torch.isfinite(v.grad).all() and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("layout", ["onehot", "empty"])
def test_extreme_layouts_give_finite_gradients(layout):
    v, s, beta, alpha = _inputs(2, 4, 3, 4, 4, dtype=torch.float32, layout=layout)
    v.requires_grad_()
    s.requires_grad_()
    regional_norm(v, s, beta, alpha).sum().backward()
    assert torch.isfinite(v.grad).all() and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("variance", VARIANCES)
def test_gradcheck(variance):
    v, s, beta, alpha = _inputs(2, 3, 3, 3, 2)
    logits = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    v.requires_grad_()
    beta.requires_grad_()
    alpha.requires_grad_()

    def fn(v, logits, beta, alpha):
        return regional_norm(v, torch.softmax(logits, 1), beta, alpha, variance=variance)

    assert torch.autograd.gradcheck(fn, (v, logits, beta, alpha))


@pytest.mark.parametrize("variance", VARIANCES)
def test_gradients_match_literal(variance):
    v, s, beta, alpha = _inputs(2, 5, 4, 6, 3)
    logits = torch.randn(2, 4, 6, 3, dtype=torch.float64)
    grads = []
    for fn in (regional_norm, regional_norm_literal):
        leaves = [t.clone().requires_grad_() for t in (v, logits, beta, alpha)]
        out = fn(leaves[0], torch.softmax(leaves[1], 1), leaves[2], leaves[3], variance=variance)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([t.grad for t in leaves])
    for fast, ref in zip(*grads):
        assert _rel_err(fast, ref) <= 1e-9


def test_defaults_are_unit_scale_zero_shift():
    v, s, _, _ = _inputs(2, 4, 3, 5, 5)
    c = v.shape[1]
    a = regional_norm(v, s)
    b = regional_norm(v, s, torch.ones(c, dtype=v.dtype), torch.zeros(c, dtype=v.dtype))
    assert torch.equal(a, b)


def test_bf16_autocast_computes_moments_in_float32():
    v, s, beta, alpha = _inputs(2, 8, 4, 6, 6, dtype=torch.float32)
    v16 = v.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = regional_norm(v16, s, beta, alpha)
    assert out.dtype == torch.bfloat16
    expected = regional_norm(v16.float(), s, beta, alpha).to(torch.bfloat16)
    assert torch.equal(out, expected)


class _MaxNumel(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def test_no_tensor_holds_channel_and_entity_axes_at_full_resolution():
    b, c, n, h, w = 2, 16, 8, 12, 12
    v, s, beta, alpha = _inputs(b, c, n, h, w, dtype=torch.float32)
    v.requires_grad_()
    s.requires_grad_()
    bound = b * c * h * w  # the largest tensor the fast path may create (same size as v)
    with _MaxNumel() as fast:
        regional_norm(v, s, beta, alpha).sum().backward()
    with _MaxNumel() as literal:
        regional_norm_literal(v, s, beta, alpha).sum().backward()
    assert fast.max_numel <= bound
    assert literal.max_numel >= b * c * n * h * w  # the probe does see the 5-D tensors


def test_errors_name_the_problem():
    v, s, _, _ = _inputs(2, 4, 3, 5, 5)
    with pytest.raises(ValueError, match="variance"):
        regional_norm(v, s, variance="std")
    with pytest.raises(ValueError, match="spatial"):
        regional_norm(v, s[:, :, :4])
    with pytest.raises(ValueError, match=r"\(b, c, h, w\)"):
        regional_norm(v[0], s)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_bf16_autocast():
    v, s, beta, alpha = _inputs(2, 32, 16, 16, 16, dtype=torch.float32)
    ref = regional_norm_literal(v.double(), s.double(), beta.double(), alpha.double())
    out = regional_norm(v.cuda(), s.cuda(), beta.cuda(), alpha.cuda())
    assert _rel_err(out.cpu().double(), ref) <= 1e-4
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out16 = regional_norm(v.cuda().bfloat16(), s.cuda(), beta.cuda(), alpha.cuda())
    assert torch.isfinite(out16).all()
    assert _rel_err(out16.float().cpu().double(), ref) <= 5e-2


@pytest.mark.parametrize("algorithm1", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("scaled", [True, False])
def test_analytic_coefficient_backward_matches_autograd(algorithm1, affine, scaled):
    from attnorm.layers.regional import _Coefficients, coefficients_autograd

    g = torch.Generator().manual_seed(7)
    b, c, n, hw = 2, 5, 4, 9
    r64 = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    s = torch.softmax(r64(b, n, hw) * 2, dim=1)
    vc = r64(b, c, hw)
    vc = vc - vc.mean(-1, keepdim=True)
    inputs = {
        "u": vc @ s.transpose(1, 2),
        "r": (vc @ (s * s).transpose(1, 2)) if algorithm1 else None,
        "a": (vc * vc) @ ((s * s) if algorithm1 else s).transpose(1, 2),
        "k": r64(b, c, 1),
        "total": s.sum(-1).unsqueeze(1),
        "s2_sum": (s * s).sum(-1).unsqueeze(1) if algorithm1 else None,
        "beta": r64(c) if affine else None,
        "alpha": r64(c) if affine else None,
        "scale": r64(()) if scaled else None,
    }
    names = [k for k, v in inputs.items() if v is not None]
    weights = (r64(b, c, n), r64(b, c, n))
    grads = []
    for fn in (lambda *a: _Coefficients.apply(*a, 1e-5, hw), lambda *a: coefficients_autograd(*a, 1e-5, hw)):
        leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
        p, q = fn(*leaves.values())
        ((p * weights[0]).sum() + (q * weights[1]).sum()).backward()
        grads.append([leaves[k].grad for k in names])
    for name, fast, ref in zip(names, *grads):
        assert torch.allclose(fast, ref, rtol=1e-9, atol=1e-12), name


def _clone_on_unpack():
    """Saved-tensor hooks whose unpacked tensors are new objects (as under checkpointing or
    ``save_on_cpu``): a backward must not tell its saved tensors apart by object identity."""
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t.clone())


@pytest.mark.parametrize("variance", VARIANCES)
@pytest.mark.parametrize("n", [1, 4])
def test_gradients_under_saved_tensor_hooks(variance, n):
    v, s, beta, alpha = _inputs(2, 5, n, 4, 3)
    g_out = torch.randn(v.shape, generator=torch.Generator().manual_seed(1), dtype=v.dtype)

    def grads(fn, hooks):
        leaves = [t.clone().requires_grad_() for t in (v, s, beta, alpha)]
        if hooks:
            with _clone_on_unpack():
                out = fn(*leaves, variance=variance)
        else:
            out = fn(*leaves, variance=variance)
        return torch.autograd.grad(out, leaves, g_out)

    reference = grads(regional_norm_literal, hooks=False)  # the literal algorithm, plain autograd
    for got, plain, ref in zip(grads(regional_norm, hooks=True), grads(regional_norm, hooks=False), reference):
        assert torch.equal(got, plain)  # the hooks change nothing
        assert _rel_err(got, ref) <= 1e-9


def test_pixel_sums_fall_back_to_bmm_with_one_warning_when_the_kernel_fails(monkeypatch):
    """``triton_pixel_sums`` on, the kernel applicable but failing (as a GPU without a working Triton
    would): one RuntimeWarning naming the error, ``torch.bmm``'s numbers, and no further attempts."""
    import warnings

    from attnorm.layers import regional, triton_pixel_sums_enabled, triton_sums
    calls = []

    def broken(a, b):
        calls.append(1)
        raise RuntimeError("no kernel image for this device\nmore detail")
    monkeypatch.setattr(triton_sums, "applicable", lambda a, b: True)
    monkeypatch.setattr(triton_sums, "pixel_sum", broken)
    monkeypatch.setitem(regional._TRITON_SUMS, "failed", None)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    with triton_pixel_sums_enabled(True), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = regional.pixel_sum(a, b)
        second = regional.pixel_sum(a, b)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "Triton AN pixel sums failed (RuntimeError: no kernel image" in messages[0]
    assert calls == [1]  # the second call went straight to bmm
    want = torch.bmm(a, b.transpose(1, 2))
    assert torch.equal(first, want) and torch.equal(second, want)
