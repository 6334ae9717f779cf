"""Inpainting generator vs the AN supplement's layer list; critics; hole patch cropping."""

import pytest
import torch
from torch import nn

from attnorm.layers import AttentiveNorm, SelfAttention2d
from attnorm.models.inpaint import (
    Clip, GlobalCritic, InpaintGenerator, LocalCritic, PatchCritic, crop_hole_patches,
)

# The supplement's listing, typed out independently: (kernel, filters, stride, dilation).
ENCODER = [(5, 32, 1, 1), (3, 64, 2, 1), (3, 64, 1, 1), (3, 128, 2, 1), (3, 128, 1, 1)]
BOTTLENECK = [(3, 128, 1, 2), (3, 128, 1, 4), (3, 128, 1, 8), (3, 128, 1, 16)]
DECODER1 = [(3, 64, 1, 1), (3, 64, 1, 1), (3, 32, 1, 1), (3, 16, 1, 1), (3, 3, 1, 1)]
DECODER2 = [(3, 128, 1, 1), (3, 128, 1, 1)] + DECODER1
ATTENTIVE = [(3, 128, 1, 1), (3, 128, 1, 1), (3, 128, 1, 1)]

UP, CONV, ELU, CLIP = nn.Upsample, nn.Conv2d, nn.ELU, Clip
DEC1_TYPES = [UP, CONV, ELU, CONV, ELU, UP, CONV, ELU, CONV, ELU, CONV, CLIP]


def convs(seq):
    return [m for m in seq.modules() if isinstance(m, nn.Conv2d)]


def spec(seq):
    return [(c.kernel_size[0], c.out_channels, c.stride[0], c.dilation[0]) for c in convs(seq)]


def test_every_conv_matches_the_supplement():
    g = InpaintGenerator()
    parts = {
        "coarse_encoder": ENCODER, "coarse_bottleneck": BOTTLENECK, "coarse_decoder": DECODER1,
        "attn_encoder": ENCODER, "attn_branch": ATTENTIVE,
        "refine_encoder": ENCODER, "refine_bottleneck": BOTTLENECK, "refine_decoder": DECODER2,
    }
    for name, expected in parts.items():
        part = getattr(g, name)
        assert spec(part) == expected, name
        for c in convs(part):  # square kernels, 'same' padding
            assert c.kernel_size[0] == c.kernel_size[1] and c.stride[0] == c.stride[1]
            assert c.padding == (c.dilation[0] * (c.kernel_size[0] - 1) // 2,) * 2
    # input channels: 5 into every encoder, 2 x 128 into Decoder2, chained elsewhere
    for enc in (g.coarse_encoder, g.attn_encoder, g.refine_encoder):
        assert convs(enc)[0].in_channels == 5
    assert convs(g.refine_decoder)[0].in_channels == 256
    assert convs(g.coarse_decoder)[0].in_channels == 128
    # layer order, activations and the AN position (seed: Conv-AN-Conv-ELU-Conv-ELU, no ELU after AN)
    assert [type(m) for m in g.coarse_encoder] == [CONV, ELU] * 5
    assert [type(m) for m in g.coarse_bottleneck] == [CONV, ELU] * 4
    assert [type(m) for m in g.coarse_decoder] == DEC1_TYPES
    assert [type(m) for m in g.refine_decoder] == [CONV, ELU, CONV, ELU] + DEC1_TYPES
    assert [type(m) for m in g.attn_branch] == [CONV, AttentiveNorm, CONV, ELU, CONV, ELU]
    ups = [m for m in g.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 4 and all(u.scale_factor == 2 and u.mode == "nearest" for u in ups)
    an = g.attention_layer
    assert an.channels == 128 and an.num_entities == 16
    # three distinct encoders (no weight sharing)
    ids = {id(convs(e)[0].weight) for e in (g.coarse_encoder, g.attn_encoder, g.refine_encoder)}
    assert len(ids) == 3


def expected_param_count(n=16):
    def count(layers, cin):
        total = 0
        for k, cout, _s, _d in layers:
            total += k * k * cin * cout + cout
            cin = cout
        return total

    enc = count(ENCODER, 5)
    bott = count(BOTTLENECK, 128)
    stage1 = enc + bott + count(DECODER1, 128)
    c = 128  # AN: entities n x c, value c x c + c, query/key (c/8 x c + c/8) each, ssr alpha n, affine 2c, sigma
    an = n * c + c * c + c + 2 * (c // 8 * c + c // 8) + n + 2 * c + 1
    stage2 = enc + count(ATTENTIVE, 128) + an + enc + bott + count(DECODER2, 256)
    return stage1 + stage2


def test_parameter_count_matches_formula():
    g = InpaintGenerator()
    got = sum(p.numel() for p in g.parameters())
    print(f"\nInpaintGenerator(width=1) parameters: {got:,} (formula {expected_param_count():,})")
    assert got == expected_param_count()
    assert sum(p.numel() for p in InpaintGenerator(num_entities=8).parameters()) == expected_param_count(8)


def _batch(b=2, h=37, w=53, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h, w, generator=gen) * 2 - 1
    m = torch.zeros(b, 1, h, w)
    m[0, :, 5:20, 7:30] = 1
    m[-1, :, h // 2:, w // 3:] = 1
    return x, m


@pytest.mark.parametrize("size", [(37, 53), (32, 32), (1, 6), (64, 17)])
def test_any_size_and_range(size):
    g = InpaintGenerator(width=0.125).eval()
    x, m = _batch(2, *size)
    coarse, refined = g(x, m)
    assert coarse.shape == refined.shape == x.shape
    assert coarse.abs().max() <= 1 and refined.abs().max() <= 1
    assert torch.isfinite(refined).all()


def test_outputs_are_clipped():
    g = InpaintGenerator(width=0.125).eval()
    with torch.no_grad():
        convs(g.coarse_decoder)[-1].bias.fill_(5.0)
        convs(g.refine_decoder)[-1].bias.fill_(-5.0)
    coarse, refined = g(*_batch())
    assert torch.equal(coarse, torch.ones_like(coarse)) and torch.equal(refined, -torch.ones_like(refined))


@pytest.mark.parametrize("size", [(32, 48), (37, 53)])
def test_stage_two_sees_coarse_pasted_into_hole(size):
    g = InpaintGenerator(width=0.125).eval()
    x, m = _batch(2, *size)
    seen = {}
    g.coarse_decoder.register_forward_hook(lambda mod, inp, out: seen.__setitem__("coarse", out))
    g.coarse_encoder[0].register_forward_pre_hook(lambda mod, inp: seen.__setitem__("in1", inp[0]))
    g.attn_encoder[0].register_forward_pre_hook(lambda mod, inp: seen.__setitem__("a", inp[0]))
    g.refine_encoder[0].register_forward_pre_hook(lambda mod, inp: seen.__setitem__("b", inp[0]))
    coarse, _ = g(x, m)
    h, w = size
    full = seen["coarse"]
    assert torch.equal(full[..., :h, :w], coarse)
    for key in ("a", "b"):
        inp = seen[key][..., :h, :w]
        assert inp.shape[1] == 5
        expected = x * (1 - m) + coarse * m
        torch.testing.assert_close(inp[:, :3], expected, rtol=0, atol=0)
        assert torch.equal(inp[:, 3:4], torch.ones_like(m)) and torch.equal(inp[:, 4:5], m)
    # stage 1 sees the masked image: hole pixels zeroed
    torch.testing.assert_close(seen["in1"][:, :3, :h, :w], x * (1 - m), rtol=0, atol=0)


def test_hole_content_is_ignored():
    g = InpaintGenerator(width=0.125).eval()
    x, m = _batch()
    x2 = torch.where(m.bool(), torch.rand_like(x), x)
    for a, b in zip(g(x, m), g(x2, m)):
        assert torch.equal(a, b)


def test_layout_and_determinism_in_eval():
    g = InpaintGenerator(width=0.125, num_entities=8).eval()
    x, m = _batch(2, 37, 53)
    coarse, refined, layout = g(x, m, return_layout=True)
    assert layout.shape == (2, 8, 10, 14)  # ceil(37/4), ceil(53/4)
    torch.testing.assert_close(layout.sum(1), torch.ones(2, 10, 14))
    assert torch.equal(g(x, m)[1], refined)  # SSR off in eval -> deterministic


@pytest.mark.parametrize("attention,cls", [("an", AttentiveNorm), ("sa", SelfAttention2d), ("none", nn.Identity)])
def test_attention_variants_and_rebuild_from_config(attention, cls):
    g = InpaintGenerator(width=0.125, attention=attention, num_entities=4)
    assert isinstance(g.attention_layer, cls)
    g2 = InpaintGenerator(**g.config)
    g2.load_state_dict(g.state_dict())
    x, m = _batch(1, 16, 20)
    g.eval(), g2.eval()
    assert torch.equal(g(x, m)[1], g2(x, m)[1])
    if attention != "an":
        with pytest.raises(ValueError, match="return_layout"):
            g(x, m, return_layout=True)


def test_backward_reaches_every_parameter():
    g = InpaintGenerator(width=0.125)
    x, m = _batch(2, 16, 16)
    with torch.no_grad():  # AN's sigma starts at 0, which blocks its own inner gradients
        g.attention_layer.sigma.fill_(0.5)
    coarse, refined = g(x, m)
    (coarse.sum() + refined.sum()).backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_bad_inputs():
    g = InpaintGenerator(width=0.125)
    with pytest.raises(ValueError):
        g(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError):
        InpaintGenerator(pad_mode="circular")


def test_critics():
    gc = GlobalCritic(64)
    assert spec(gc.features) == [(5, 64, 2, 1), (5, 128, 2, 1), (5, 256, 2, 1), (5, 256, 2, 1)]
    assert gc.linear.in_features == 256 * 4 * 4 and gc.linear.out_features == 1
    lc = LocalCritic(32)
    assert spec(lc.features) == [(5, 64, 2, 1), (5, 128, 2, 1), (5, 256, 2, 1), (5, 512, 2, 1)]
    assert lc.linear.in_features == 512 * 2 * 2
    assert all(isinstance(a, nn.LeakyReLU) and a.negative_slope == 0.2 for a in list(gc.features)[1::2])
    assert gc(torch.zeros(3, 3, 64, 64)).shape == (3, 1)
    with pytest.raises(ValueError):
        gc(torch.zeros(1, 3, 32, 32))
    pc = PatchCritic(width=0.25)
    assert convs(pc.features)[0].in_channels == 4 and len(convs(pc.features)) == 6
    assert all(nn.utils.parametrize.is_parametrized(c, "weight") for c in convs(pc.features))
    assert not any(nn.utils.parametrize.is_parametrized(c) for c in convs(PatchCritic(width=0.25, spectral_norm=False).features))
    out = pc(torch.zeros(2, 3, 128, 96), torch.ones(1, 1, 128, 96))
    assert out.shape == (2, 64, 2, 2)


def test_crop_hole_patches():
    x = torch.arange(2 * 64 * 64, dtype=torch.float32).view(2, 1, 64, 64)
    m = torch.zeros(2, 1, 64, 64)
    m[0, :, 40:60, 50:62] = 1  # near the corner: window shifted inside the image
    m[1, :, 2:50, 3:10] = 1  # taller than the window: cropped to the box and resized
    px, pm = crop_hole_patches([x, m], m, 32)
    assert px.shape == pm.shape == (2, 1, 32, 32)
    # sample 0: the window is the 32x32 crop at (32, 32), unresampled, containing the whole hole
    assert torch.equal(px[0], x[0, :, 32:64, 32:64]) and pm[0].sum() == m[0].sum()
    # sample 1: the 48 x 32 window around the box, resized; the mask stays binary
    assert set(pm[1].unique().tolist()) == {0.0, 1.0}
    # empty mask -> centre window
    e = torch.zeros(1, 1, 64, 64)
    (pe,) = crop_hole_patches([x[:1]], e, 32)
    assert torch.equal(pe[0], x[0, :, 16:48, 16:48])
