"""Compiled AN statistics (opt-in): the same forward and gradients as the eager path, against the
literal reference; and a failing compile falls back to eager with one warning."""

import shutil

import pytest
import torch

from attnorm.layers import AttentiveNorm, attentive_norm_literal, compile_statistics, regional_norm, statistics_compiled
from attnorm.layers import regional

needs_cxx = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                               reason="torch.compile on the CPU needs a C++ compiler")


@pytest.fixture
def compiled():
    """Compiled statistics on, and the fused CPU kernels off: they would run these float32 CPU layers,
    statistics included, and the compiled path would never be reached."""
    from attnorm.layers import cpu_fused
    saved = dict(regional._COMPILED)
    compile_statistics(True)
    with cpu_fused.cpu_kernels_enabled(False):
        yield
    regional._COMPILED.update(saved)


def _layer():
    torch.manual_seed(0)
    layer = AttentiveNorm(16, num_entities=6)
    with torch.no_grad():
        layer.sigma.fill_(0.8)
        layer.rn_weight.normal_()
        layer.rn_bias.normal_()
    return layer


def _grads(layer, x, pos, weight):
    layer.zero_grad()
    xr = x.clone().requires_grad_()
    (layer(xr, positions=pos) * weight).sum().backward()
    return [xr.grad] + [p.grad.clone() for p in layer.parameters()]


@needs_cxx
def test_compiled_statistics_match_eager_and_the_literal_reference(compiled):
    layer = _layer()
    x = torch.randn(2, 16, 5, 7, generator=torch.Generator().manual_seed(1)) * 2 + 0.5
    pos = torch.tensor([0, 3, 7, 7, 20, 34])
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    got = _grads(layer, x, pos, weight)
    assert statistics_compiled()  # it ran compiled, no fallback
    compile_statistics(False)
    want = _grads(layer, x, pos, weight)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    ref, _ = attentive_norm_literal(layer.double(), x.double(), pos)
    compile_statistics(True)
    y = layer.float()(x, positions=pos)
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5
    # regional_norm's coefficients go through the same compiled functions
    v, s = torch.randn(2, 8, 6, 6), torch.softmax(torch.randn(2, 4, 6, 6), 1)
    out_c = regional_norm(v, s)
    compile_statistics(False)
    assert torch.allclose(out_c, regional_norm(v, s), rtol=1e-5, atol=1e-6)


def test_a_failing_compile_warns_once_and_falls_back_to_eager(compiled):
    def broken(*args):
        raise RuntimeError("simulated inductor failure\nsecond line")

    regional._COMPILED.update(forward=broken, backward=broken, failed=None)
    layer = _layer().eval()  # no SSR draw: two calls compute the same thing
    x = torch.randn(2, 16, 4, 4)
    with pytest.warns(RuntimeWarning, match="simulated inductor failure"):
        y = layer(x)
    assert not statistics_compiled() and "second line" not in regional._COMPILED["failed"]
    compile_statistics(False)
    assert torch.equal(y, layer(x))  # the fallback computed the eager numbers
