"""AttentiveNorm: the fused layer against the literal, unfused computation."""

import copy
import shutil

import numpy as np
import pytest
import torch

from attnorm.layers import AttentiveNorm, attentive, attentive_norm_literal, orthogonality_loss
from attnorm.viz.grid import entity_usage

from _an import an_layer as _layer


def _x(b=2, c=16, h=5, w=7, dtype=torch.float64, seed=1):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 + 0.5


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_fresh_layer_is_identity():
    layer = AttentiveNorm(32)
    x = torch.randn(3, 32, 6, 6)
    assert torch.equal(layer(x), x)
    layer.eval()
    assert torch.equal(layer(x), x)


@pytest.mark.parametrize("variance", ["algorithm1", "weighted"])
@pytest.mark.parametrize("shape", [(2, 5, 7), (1, 1, 1), (3, 4, 4), (2, 9, 2)])
def test_matches_literal_with_ssr(variance, shape):
    b, h, w = shape
    layer = _layer(variance=variance)
    x = _x(b, 16, h, w)
    positions = torch.randint(h * w, (layer.num_entities,), generator=torch.Generator().manual_seed(5))
    y, layout = layer(x, return_layout=True, positions=positions)
    y_ref, layout_ref = attentive_norm_literal(layer, x, positions)
    assert _rel(y, y_ref) <= 1e-10
    assert (layout - layout_ref).abs().max() <= 1e-12
    assert torch.allclose(layout.sum(1), torch.ones(b, h, w, dtype=x.dtype))


def test_eval_mode_is_deterministic_and_ssr_free():
    layer = _layer().eval()
    x = _x()
    y1, y2 = layer(x), layer(x)
    assert torch.equal(y1, y2)
    y_ref, _ = attentive_norm_literal(layer, x, None)
    assert _rel(y1, y_ref) <= 1e-10


def test_training_draws_positions_from_torch_rng():
    layer = _layer().train()
    x = _x()
    hw = x.shape[2] * x.shape[3]
    torch.manual_seed(123)
    y1 = layer(x)
    torch.manual_seed(123)
    y2 = layer(x)
    assert torch.equal(y1, y2)  # seeded runs reproduce
    torch.manual_seed(123)
    positions = torch.randint(hw, (layer.num_entities,))  # the very draw the layer made
    y_ref, _ = attentive_norm_literal(layer, x, positions)
    assert _rel(y1, y_ref) <= 1e-10
    y3 = layer(x)  # a fresh draw changes the output
    assert not torch.equal(y1, y3)


def test_ssr_alpha_is_clipped_to_unit_interval():
    layer = _layer()
    x = _x()
    pos = torch.arange(layer.num_entities) % (x.shape[2] * x.shape[3])
    outs = []
    for value in (5.0, 1.0, -3.0, 0.0):
        with torch.no_grad():
            layer.ssr_alpha.fill_(value)
        outs.append(layer(x, positions=pos))
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[2], outs[3])
    assert not torch.equal(outs[1], outs[3])


def test_ssr_alpha_starts_at_point_one_and_sigma_at_zero():
    layer = AttentiveNorm(16, num_entities=5)
    assert torch.equal(layer.ssr_alpha.detach(), torch.full((5,), 0.1))
    assert layer.sigma.item() == 0.0


def test_gradients_match_literal():
    layer = _layer()
    x = _x(2, 16, 4, 3)
    pos = torch.tensor([0, 5, 5, 11, 2, 7])
    weight = torch.linspace(-1, 1, x.numel(), dtype=x.dtype).view_as(x)
    grads = []
    for fn in (lambda x: layer(x, positions=pos), lambda x: attentive_norm_literal(layer, x, pos)[0]):
        layer.zero_grad()
        xr = x.clone().requires_grad_()
        (fn(xr) * weight).sum().backward()
        grads.append([xr.grad] + [p.grad.clone() for p in layer.parameters()])
    for fast, ref in zip(*grads):
        assert _rel(fast, ref) <= 1e-9


def test_gradcheck_small():
    layer = _layer(c=8, n=3)
    x = _x(1, 8, 3, 2).requires_grad_()
    pos = torch.tensor([0, 4, 4])
    assert torch.autograd.gradcheck(lambda x: layer(x, positions=pos), (x,))


def test_float32_close_to_float64():
    layer = _layer()
    x = _x()
    pos = torch.tensor([1, 2, 3, 30, 9, 9])
    ref, _ = attentive_norm_literal(layer, x, pos)
    y = layer.float()(x.float(), positions=pos)
    assert _rel(y.double(), ref) <= 1e-4


def test_orthogonality_loss_is_frobenius_norm():
    layer = AttentiveNorm(16, num_entities=6)
    k = layer.entities.detach().numpy().astype(np.float64)
    expected = np.sum((k @ k.T - np.eye(6)) ** 2)
    assert layer.orthogonality_loss().item() == pytest.approx(expected, rel=1e-5)
    assert layer.orthogonality_loss().item() > 0
    with torch.no_grad():  # orthonormal rows: zero penalty
        q, _ = torch.linalg.qr(torch.randn(16, 6))
        layer.entities.copy_(q.t())
    assert layer.orthogonality_loss().item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():  # the authors' signed sum could go negative; a norm cannot
        layer.entities.mul_(0.1)
    assert layer.orthogonality_loss().item() > 0


def test_orthogonality_loss_sums_over_a_model():
    model = torch.nn.Sequential(AttentiveNorm(8, 4), torch.nn.ReLU(), AttentiveNorm(16, 3))
    total = model[0].orthogonality_loss() + model[2].orthogonality_loss()
    assert orthogonality_loss(model).item() == pytest.approx(total.item())
    assert orthogonality_loss(torch.nn.Linear(2, 2)).item() == 0.0


def test_channels_last_input():
    layer = _layer(dtype=torch.float32).eval()
    x = _x(dtype=torch.float32)
    y = layer(x)
    y_cl = layer(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(y, y_cl, atol=1e-6)
    assert y_cl.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("min_channels", [1, 10 ** 6])  # pixel-major, or copied to NCHW maps
def test_channels_last_training_step_matches_the_nchw_one(dtype, min_channels, monkeypatch):
    monkeypatch.setattr(attentive, "PIXEL_MAJOR_MIN_CHANNELS", min_channels)
    # a channels-last input (and its output's gradient), in its own layout or copied: the
    # forward and every gradient are those of the same input in NCHW, to rounding; a bf16 map is
    # what it gets inside the GAN presets' training (channels-last, bf16 autocast)
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        layer = _layer(dtype=torch.float64 if dtype == torch.float64 else torch.float32).train()
        x = _x(dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
        g = _x(seed=3, dtype=dtype).contiguous(memory_format=fmt)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = layer(x, positions=torch.tensor([0, 3, 9, 34, 12, 3]))
        y.backward(g)
        assert y.dtype == dtype and y.is_contiguous(memory_format=fmt)
        results.append((y.detach().double(), x.grad.double(), {k: p.grad.double() for k, p in layer.named_parameters()}))
    (y1, gx1, gp1), (y2, gx2, gp2) = results
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert _rel(y2, y1) < max(tol, 1e-2 if dtype == torch.bfloat16 else 0)  # bf16 output: rounding of the cast
    assert _rel(gx2, gx1) < max(tol, 1e-2 if dtype == torch.bfloat16 else 0)
    for k in gp1:
        assert _rel(gp2[k], gp1[k]) < (1e-10 if dtype == torch.float64 else 1e-4), k


@pytest.mark.parametrize("variance", ["algorithm1", "weighted"])
@pytest.mark.parametrize("ssr", [True, False])
@pytest.mark.parametrize("min_channels", [1, 10 ** 6])
def test_channels_last_path_against_the_literal_layer(variance, ssr, min_channels, monkeypatch):
    # a channels-last input runs every product in its own (pixel-major) layout (min_channels 1), or
    # is copied to NCHW maps (a huge minimum): either way the output, the layout and every gradient
    # are the literal computation's (autograd through plain convolutions)
    monkeypatch.setattr(attentive, "PIXEL_MAJOR_MIN_CHANNELS", min_channels)
    layer = _layer(variance=variance, self_sampling=ssr, affine=variance == "algorithm1").train()
    pos = torch.tensor([0, 3, 9, 34, 12, 3]) if ssr else None
    x = _x(b=3).contiguous(memory_format=torch.channels_last)
    weight = _x(b=3, seed=5)
    grads = []
    for fast in (True, False):
        layer.zero_grad()
        xr = x.clone().requires_grad_()
        if fast:
            y, layout = layer(xr, return_layout=True, positions=pos)
            assert y.is_contiguous(memory_format=torch.channels_last)
            y_fast, layout_fast = y.detach(), layout.detach()
        else:
            y, layout = attentive_norm_literal(layer, xr, pos)
            assert _rel(y_fast, y.detach()) <= 1e-10
            assert (layout_fast - layout.detach()).abs().max() <= 1e-12
        ((y * weight).sum() + (layout * weight[:, :6]).sum()).backward()
        grads.append([xr.grad] + [p.grad.clone() for p in layer.parameters()])
    assert grads[0][0].is_contiguous(memory_format=torch.channels_last)
    for fast, ref in zip(*grads):
        assert _rel(fast, ref) <= 1e-9


@pytest.mark.parametrize("c", [32, 48])
def test_a_channels_last_float32_map_is_never_copied_to_another_layout(c):
    # in the layout the GAN presets train in (channels-last float32), from PIXEL_MAJOR_MIN_CHANNELS
    # channels up, neither the forward nor the backward copies a map between layouts: no clone /
    # to-copy / copy_ of an input-sized map
    from torch.utils._python_dispatch import TorchDispatchMode

    class Copies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in ("clone", "_to_copy", "copy_", "contiguous") and isinstance(args[0], torch.Tensor):
                self.seen.append((name, tuple(args[0].shape)))
            return func(*args, **(kwargs or {}))

    assert c >= attentive.PIXEL_MAJOR_MIN_CHANNELS
    layer = _layer(c=c, n=6, dtype=torch.float32).train()
    x = _x(b=4, c=c, h=8, w=8, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    g = _x(b=4, c=c, h=8, w=8, dtype=torch.float32, seed=4).contiguous(memory_format=torch.channels_last)
    with Copies() as mode:
        layer(x, positions=torch.tensor([0, 3, 9, 34, 12, 3])).backward(g)
    maps = [op for op in mode.seen if op[1] in ((4, c, 8, 8), (4, c, 64), (4, 64, c))]
    assert maps == []
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_no_state_mutated_in_forward():
    layer = _layer(dtype=torch.float32).train()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer(_x(dtype=torch.float32)).sum().backward()
    assert list(layer.buffers()) == []  # nothing for DDP to broadcast or SyncBN to sync
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_layout_is_the_entity_softmax_and_its_argmax_follows_the_entities():
    layer = _layer(n=5).eval()  # eval: no self-sampling, S = softmax_n(K X / tau)
    x = _x(3, 16, 6, 4)
    _, layout = layer(x, return_layout=True)
    assert layout.shape == (3, 5, 6, 4)
    logits = torch.einsum("nc,bchw->bnhw", layer.entities.detach(), x) / layer.temperature
    torch.testing.assert_close(layout, torch.softmax(logits, dim=1), rtol=1e-12, atol=1e-12)
    # entity k looks at channel k: the argmax entity of a pixel is its strongest of channels 0..4,
    # and entity_usage counts how many pixels each entity wins
    with torch.no_grad():
        layer.entities.zero_()
        layer.entities[torch.arange(5), torch.arange(5)] = 40.0
    owner = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 3], [3, 3, 3, 3], [1, 0, 0, 0], [0, 0, 4, 4], [4, 4, 0, 0]])
    x = 0.1 * torch.randn(1, 16, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x[0].scatter_add_(0, owner[None], torch.ones(1, 6, 4, dtype=torch.float64))
    _, layout = layer(x, return_layout=True)
    assert torch.equal(layout[0].argmax(0), owner)
    used, frac = entity_usage(layout, threshold=4 / 24)
    counts = torch.bincount(owner.flatten(), minlength=5).tolist()  # [10, 3, 3, 5, 4]
    assert frac == pytest.approx([k / 24 for k in counts]) and used == sum(k >= 4 for k in counts)


def test_variants_without_ssr_or_affine():
    layer = _layer(c=4, self_sampling=False, affine=False)
    x = _x(2, 4, 3, 3)
    y_ref, _ = attentive_norm_literal(layer, x, None)
    assert _rel(layer(x), y_ref) <= 1e-10  # training mode, but no SSR
    with pytest.raises(ValueError, match="self_sampling=False"):
        layer(x, positions=torch.tensor([0]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(channels=16, num_entities=0), "num_entities"),
    (dict(channels=16, temperature=0.0), "temperature"),
    (dict(channels=16, temperature=-1.0), "temperature"),
    (dict(channels=4), "channels >= 8"),
    (dict(channels=16, variance="usual"), "variance"),
])
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AttentiveNorm(**kwargs)


def test_input_errors():
    layer = AttentiveNorm(16)
    with pytest.raises(ValueError, match="4-D"):
        layer(torch.randn(16, 4, 4))
    with pytest.raises(ValueError, match="built for 16 channels"):
        layer(torch.randn(1, 8, 4, 4))


def test_torch_compile_fullgraph_matches_eager():
    layer = _layer(dtype=torch.float32).eval()
    x = _x(dtype=torch.float32)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x), layer(x), atol=1e-6)


def test_torch_export_matches_eager():
    layer = _layer(dtype=torch.float32).eval()
    x = _x(dtype=torch.float32)
    exported = torch.export.export(layer, (x,))
    assert torch.allclose(exported.module()(x), layer(x), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_and_bf16_autocast():
    layer = _layer()
    x = _x(4, 16, 16, 16)
    pos = torch.randint(256, (layer.num_entities,))
    ref, _ = attentive_norm_literal(layer, x, pos)
    layer32 = layer.float().cuda()
    y = layer32(x.float().cuda(), positions=pos.cuda())
    assert _rel(y.double().cpu(), ref) <= 1e-4
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y16 = layer32(x.float().cuda().bfloat16(), positions=pos.cuda())
        y16.float().sum().backward()
    assert y16.dtype == torch.bfloat16 and torch.isfinite(y16).all()
    assert _rel(y16.double().cpu(), ref) <= 5e-2
    assert all(torch.isfinite(p.grad).all() for p in layer32.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_channels_last_pixel_major_matches_the_literal_layer():
    # the pixel-major path (a channels-last input of >= PIXEL_MAJOR_MIN_CHANNELS channels) on a GPU, in
    # float64 there: output and every gradient against the literal layer on the CPU
    c = max(32, attentive.PIXEL_MAJOR_MIN_CHANNELS)
    layer = _layer(c=c)
    x = _x(3, c, 9, 7)
    pos = torch.tensor([0, 3, 9, 34, 12, 3])
    weight = _x(3, c, 9, 7, seed=6)
    ref = _grads(lambda t: attentive_norm_literal(layer, t, pos), layer, x, weight)
    y_ref, _ = attentive_norm_literal(layer, x, pos)
    gpu = copy.deepcopy(layer).cuda()
    xg = x.cuda().contiguous(memory_format=torch.channels_last)
    got = _grads(lambda t: (gpu(t, positions=pos.cuda()), None), gpu, xg, weight.cuda())
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    assert _rel(gpu(xg, positions=pos.cuda()).detach().cpu(), y_ref.detach()) <= 1e-10
    for a, b in zip(got, ref):
        assert _rel(a.cpu(), b) <= 1e-9


def test_bf16_autocast_forward_and_backward_on_cpu():
    layer = _layer(dtype=torch.float32)
    x = _x(2, 16, 6, 6, dtype=torch.float32)
    pos = torch.tensor([0, 3, 7, 7, 20, 35])
    ref, _ = attentive_norm_literal(layer.double(), x.double(), pos)
    layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16(), positions=pos)
        y.float().sum().backward()  # backward inside autocast, as training loops often do
    assert y.dtype == torch.bfloat16
    assert _rel(y.double(), ref) <= 5e-2
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def _grads(fn, layer, x, weight, layout_weight=None):
    layer.zero_grad()
    xr = x.clone().requires_grad_()
    y, layout = fn(xr)
    loss = (y * weight).sum()
    if layout_weight is not None:
        loss = loss + (layout * layout_weight).sum()
    loss.backward()
    return [xr.grad] + [p.grad.clone() for p in layer.parameters()]


def _layout_case(layer, seed):
    """``(run, reference)``: the gradients (input's, then every parameter's) of a weighted sum of the
    layer's output and layout on a fixed input and SSR positions, from the layer and from the literal one."""
    x = _x(3, 16, 5, 4)
    pos = torch.tensor([0, 19, 19, 7, 2, 11])
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(x.shape, generator=g, dtype=x.dtype)
    layout_weight = torch.randn(3, 6, 5, 4, generator=g, dtype=x.dtype)
    run = lambda: _grads(lambda x: layer(x, return_layout=True, positions=pos), layer, x, weight, layout_weight)
    reference = lambda: _grads(lambda x: attentive_norm_literal(layer, x, pos), layer, x, weight, layout_weight)
    return run, reference


@pytest.mark.parametrize("variance", ["algorithm1", "weighted"])
@pytest.mark.parametrize("ssr, affine", [(True, True), (False, True), (True, False), (False, False)])
def test_gradients_match_literal_in_every_configuration(variance, ssr, affine):
    """The hand-written backward of the whole layer (one autograd node) against autograd
    through the literal reference, with the layout also in the loss."""
    layer = _layer(variance=variance, self_sampling=ssr, affine=affine)
    x = _x(3, 16, 5, 4)
    pos = torch.tensor([0, 19, 19, 7, 2, 11]) if ssr else None
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(x.shape, generator=g, dtype=x.dtype)
    layout_weight = torch.randn(3, 6, 5, 4, generator=g, dtype=x.dtype)
    fast = _grads(lambda x: layer(x, return_layout=True, positions=pos), layer, x, weight, layout_weight)
    ref = _grads(lambda x: attentive_norm_literal(layer, x, pos), layer, x, weight, layout_weight)
    for a, b in zip(fast, ref):
        assert _rel(a, b) <= 1e-9


@pytest.mark.parametrize("frozen", ["all", "value", "entities_and_value", "ssr"])
@pytest.mark.parametrize("ssr", [True, False])
def test_gradients_with_frozen_parameters_match_literal(frozen, ssr):
    """The backward skips the weight gradients nobody asked for (D's layer in G's phase has all of
    them frozen): the input gradient and the remaining parameters' gradients are the literal's,
    SSR's share of the input gradient (through the sampled positions) included."""
    layer = _layer(self_sampling=ssr)
    names = {"all": [n for n, _ in layer.named_parameters()], "value": ["value", "value_bias"],
             "entities_and_value": ["entities", "value"],
             "ssr": ["query", "query_bias", "key", "key_bias", "ssr_alpha"]}[frozen]
    for name, p in layer.named_parameters():
        p.requires_grad_(name not in names)
    x = _x(3, 16, 5, 4)
    pos = torch.tensor([0, 19, 19, 7, 2, 11]) if ssr else None
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)

    def grads(fn):
        layer.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_()
        (fn(xr)[0] * weight).sum().backward()
        return [xr.grad] + [p.grad for p in layer.parameters()]

    fast = grads(lambda x: layer(x, return_layout=True, positions=pos))
    ref = grads(lambda x: attentive_norm_literal(layer, x, pos))
    for (name, p), a, b in zip([("x", None)] + list(layer.named_parameters()), fast, ref):
        if b is None:
            assert a is None, name
        else:
            assert _rel(a, b) <= 1e-9, name
    assert fast[0].abs().max() > 0


@pytest.mark.parametrize("variance", ["algorithm1", "weighted"])
def test_vc_squared_kept_or_recomputed_gives_the_same_gradients(monkeypatch, variance):
    """The forward keeps Vc^2 for the backward on the CPU and recomputes it elsewhere (GPU memory):
    both branches, run here on the CPU, give bit-identical gradients, equal to the literal's."""
    from attnorm.layers import attentive

    run, reference = _layout_case(_layer(variance=variance), seed=5)
    assert "cpu" in attentive.KEEP_VC_SQUARED_ON
    kept = run()
    monkeypatch.setattr(attentive, "KEEP_VC_SQUARED_ON", frozenset())
    recomputed = run()
    ref = reference()
    for a, b, r in zip(kept, recomputed, ref):
        assert torch.equal(a, b)
        assert _rel(a, r) <= 1e-9


def test_vc_squared_is_kept_only_where_a_backward_can_follow(monkeypatch):
    """Kept on the CPU with autograd on (training, or eval with gradients); not under no_grad, where
    no backward comes and P S reuses its memory (inference peak as before)."""
    from attnorm.layers import attentive

    calls = []
    apply = attentive._AttentiveNormFn.apply
    monkeypatch.setattr(attentive._AttentiveNormFn, "apply", lambda *args: calls.append(args[-1]) or apply(*args))
    layer = _layer(dtype=torch.float32)
    x = _x(dtype=torch.float32)
    with torch.no_grad():
        y_inference = layer.eval()(x)
    y_eval = layer(x)
    layer.train()(x, positions=torch.tensor([0, 3, 7, 7, 20, 34]))
    assert calls == [False, True, True]
    assert torch.equal(y_inference, y_eval.detach())


@pytest.mark.parametrize("variance", ["algorithm1", "weighted"])
def test_gradcheck_with_layout_output_and_all_parameters(variance):
    layer = _layer(c=8, n=3, variance=variance)
    x = _x(2, 8, 3, 2).requires_grad_()
    pos = torch.tensor([0, 5, 5])
    params = dict(layer.named_parameters())

    def fn(x, *values):
        out = torch.func.functional_call(layer, dict(zip(params, values)), (x,),
                                         dict(return_layout=True, positions=pos))
        return out

    assert torch.autograd.gradcheck(fn, (x, *params.values()))


def test_backward_twice_with_retain_graph_and_interleaved_layers():
    """Backward workspaces are reused across calls and layers: gradients stay exact when
    two layers of different sizes run backward alternately and a graph is reused."""
    g = torch.Generator().manual_seed(4)
    cases = []
    for layer, x, pos in ((_layer(c=16, n=6, seed=0), _x(2, 16, 6, 5), torch.tensor([1, 2, 3, 4, 5, 29])),
                          (_layer(c=8, n=3, seed=1), _x(3, 8, 4, 4), torch.tensor([0, 1, 15]))):
        weight = torch.randn(x.shape, generator=g, dtype=x.dtype)
        ref = _grads(lambda x: attentive_norm_literal(layer, x, pos), layer, x, weight)
        xr = x.clone().requires_grad_()
        loss = (layer(xr, positions=pos) * weight).sum()
        cases.append((layer, xr, loss, ref))
    for _ in range(2):
        for layer, xr, loss, ref in cases:
            layer.zero_grad()
            xr.grad = None
            loss.backward(retain_graph=True)
            for fast, r in zip([xr.grad] + [p.grad for p in layer.parameters()], ref):
                assert _rel(fast, r) <= 1e-9


@pytest.mark.parametrize("backend", [
    "aot_eager",
    pytest.param("inductor", marks=pytest.mark.skipif(
        shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor on CPU needs a C++ compiler")),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_compiled_backward_matches_eager(backend, channels_last, monkeypatch):
    """Under a compiler the backward takes its out=-free branch; it must give the same gradients,
    also when inductor generates the kernels (C++ on the CPU), and in the pixel-major layout."""
    torch._dynamo.reset()
    monkeypatch.setattr(attentive, "PIXEL_MAJOR_MIN_CHANNELS", 1)
    layer = _layer(dtype=torch.float32)
    x = _x(dtype=torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pos = torch.tensor([0, 3, 7, 7, 20, 34])
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    compiled = torch.compile(layer, fullgraph=True, backend=backend)
    from attnorm.layers import cpu_fused
    with cpu_fused.cpu_kernels_enabled(False):  # the eager PyTorch path (with kernels the CPU would run those)
        eager = _grads(lambda x: (layer(x, positions=pos), None), layer, x, weight)
    comp = _grads(lambda x: (compiled(x, positions=pos), None), layer, x, weight)
    for a, b in zip(comp, eager):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_backward_workspace_is_one_buffer_per_slot_sized_by_the_largest_layer():
    from attnorm.layers import attentive, cpu_fused

    attentive.clear_workspace()
    with cpu_fused.cpu_kernels_enabled(False):  # the PyTorch path's workspace (the kernels keep their own)
        for c, n, h in ((16, 6, 9), (8, 3, 4)):  # larger first, then smaller: the buffer is reused
            layer = _layer(c=c, n=n, dtype=torch.float32)
            layer(_x(2, c, h, h, dtype=torch.float32).requires_grad_()).sum().backward()
    buffers = attentive._WORKSPACE.buffers
    assert sorted(buffers) == [(k, torch.float32) for k in range(4)]
    assert buffers[(0, torch.float32)].numel() == 2 * (6 + 16) * 81
    assert buffers[(1, torch.float32)].numel() == 2 * 16 * 81
    attentive.clear_workspace()
    assert attentive._WORKSPACE.buffers == {}


def test_float32_gradients_stay_close_to_float64():
    """The backward sums terms that nearly cancel (P^T (g_Y Vc) against Q^T g_Y in the layout's gradient),
    so the order of its sums matters in float32. Each gradient of the float32 layer against the same layer
    run in float64, relative to its largest entry (measured: at most 7e-6)."""
    torch.manual_seed(0)
    layer = AttentiveNorm(64, 16).train()
    with torch.no_grad():
        layer.sigma.fill_(0.5)
    ref = copy.deepcopy(layer).double()
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(4, 64, 16, 16, generator=g), torch.randn(4, 64, 16, 16, generator=g)
    pos = torch.tensor([0, 5, 17, 17, 40, 99, 100, 128, 200, 201, 255, 3, 64, 77, 150, 160])
    grads = []
    for module, dt in ((layer, torch.float32), (ref, torch.float64)):
        xi = x.to(dt).detach().clone().requires_grad_()
        module(xi, positions=pos).backward(w.to(dt))
        grads.append({"x": xi.grad.double(),
                      **{k: p.grad.double() for k, p in module.named_parameters() if p.grad is not None}})
    assert set(grads[0]) == set(grads[1]) and len(grads[1]) >= 10
    for name, exact in grads[1].items():
        scale = exact.abs().max().item()
        if scale < 1e-4:  # mathematically zero (the key bias moves every entity's logit alike): rounding only
            continue
        err = (grads[0][name] - exact).abs().max().item() / scale
        assert err < 2e-5, (name, err)


def test_small_products_as_sums_match_the_literal_layer_and_replace_three_matrix_products():
    """``small_products_as_sums``: W_v mean_p(X) and SSR's query and key gradients as a broadcast
    multiply and a sum; the output and every gradient still match the literal layer, and three
    ``mm`` calls of the forward+backward are gone."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from attnorm.layers import small_products_as_sums_enabled

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    run, reference = _layout_case(_layer(), seed=6)
    ref = reference()
    with Ops() as plain_ops:
        plain = run()
    with small_products_as_sums_enabled(True), Ops() as sum_ops:
        summed = run()
    assert attentive._SMALL_SUMS["enabled"] is False  # restored
    for a, b, r in zip(summed, plain, ref):
        assert _rel(a, r) <= 1e-9 and _rel(a, b) <= 1e-12
    assert plain_ops.names.count("mm") - sum_ops.names.count("mm") == 3
