"""Class-conditional GAN models (attnorm.models.gan) against the supplement listing."""

import math

import pytest
import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from attnorm.layers import AttentiveNorm, ConditionalBatchNorm2d, SelfAttention2d, orthogonality_loss
from attnorm.models.gan import (Discriminator, GBlock, Generator, build_gan, coordinate_channels, fourier_channels,
                               truncated_normal)



def _record_shapes(model, blocks):
    shapes = []
    hooks = [b.register_forward_hook(lambda m, i, o: shapes.append((tuple(i[0].shape), tuple(o.shape))))
             for b in blocks]
    return shapes, hooks


@pytest.fixture(scope="module")
def nets128():
    torch.manual_seed(0)
    return (Generator(resolution=128, ch=64, num_classes=10).eval(),
            Discriminator(resolution=128, ch=64, num_classes=10).eval())


def test_generator_128_matches_supplement_listing(nets128):
    g, _ = nets128
    # z -> FC(4x4x1024) -> up 1024 -> up 512 -> up 256 (AN) -> up 128 -> up 64 -> BN -> ReLU -> conv -> tanh
    assert g.fc.in_features == 128 and g.fc.out_features == 4 * 4 * 1024
    expected = [(1024, 1024), (1024, 512), (512, 256), (256, 128), (128, 64)]
    assert [(b.conv1.in_channels, b.conv2.out_channels) for b in g.blocks] == expected
    assert [(b.shortcut.in_channels, b.shortcut.out_channels, b.shortcut.kernel_size) for b in g.blocks] == \
        [(i, o, (1, 1)) for i, o in expected]
    kinds = [type(b.attn).__name__ if b.attn is not None else None for b in g.blocks]
    assert kinds == [None, None, "AttentiveNorm", None, None]
    assert g.blocks[2].attn.channels == 256 and g.blocks[2].attn.num_entities == 16
    assert isinstance(g.bn, nn.BatchNorm2d) and g.bn.num_features == 64
    assert (g.conv_out.in_channels, g.conv_out.out_channels, g.conv_out.kernel_size) == (64, 3, (3, 3))
    # every block uses conditional BN, twice
    assert all(isinstance(b.cbn1, ConditionalBatchNorm2d) and isinstance(b.cbn2, ConditionalBatchNorm2d)
               for b in g.blocks)

    shapes, hooks = _record_shapes(g, g.blocks)
    an_in = []
    hooks.append(g.blocks[2].attn.register_forward_hook(lambda m, i, o: an_in.append(tuple(i[0].shape))))
    with torch.no_grad():
        x = g(torch.randn(1, 128), torch.tensor([3]))
    for h in hooks:
        h.remove()
    assert x.shape == (1, 3, 128, 128)
    assert [s[1] for s in shapes] == [(1, 1024, 8, 8), (1, 512, 16, 16), (1, 256, 32, 32),
                                      (1, 128, 64, 64), (1, 64, 128, 128)]
    assert shapes[0][0] == (1, 1024, 4, 4)
    assert an_in == [(1, 256, 32, 32)]  # AN runs on the 32x32 map, between conv1 and CBN2


def test_discriminator_128_matches_supplement_listing(nets128):
    _, d = nets128
    # x -> down 64 -> down 128 (AN) -> down 256 -> concat(Embed(y), h) -> down 512 -> down 1024 -> ReLU -> sum -> FC
    outs = [b.conv2.out_channels for b in d.blocks]
    assert outs == [64, 128, 256, 512, 1024]
    ins = [b.conv1.in_channels for b in d.blocks]
    assert ins == [3, 64, 128, 256 + 64, 512]  # embedding (dim ch=64) joins before the 4th block
    assert d.embed.num_embeddings == 10 and d.embed.embedding_dim == 64
    kinds = [type(b.attn).__name__ if b.attn is not None else None for b in d.blocks]
    assert kinds == [None, "AttentiveNorm", None, None, None]
    assert d.blocks[0].optimized and not any(b.optimized for b in d.blocks[1:])
    assert (d.linear.in_features, d.linear.out_features) == (1024, 1)

    shapes, hooks = _record_shapes(d, d.blocks)
    with torch.no_grad():
        out = d(torch.randn(2, 3, 128, 128), torch.tensor([1, 2]))
    for h in hooks:
        h.remove()
    assert out.shape == (2,)
    assert [s[1][2] for s in shapes] == [64, 32, 16, 8, 4]
    assert shapes[3][0] == (2, 256 + 64, 16, 16)


@pytest.mark.parametrize("res,g_attn,d_attn,g_res,d_res", [
    (32, 2, 1, 32, 16),  # G: the 32x32 (last) block; D: middle block, AN at 16x16
    (64, 2, 0, 32, 64),  # D: the block that outputs 32x32 (its AN runs on its 64x64 input)
])
def test_presets_place_attention(res, g_attn, d_attn, g_res, d_res):
    g, d = build_gan(resolution=res, ch=8, num_classes=5)
    assert len(g.blocks) == len(d.blocks) == {32: 3, 64: 4}[res]
    assert [i for i, b in enumerate(g.blocks) if b.attn is not None] == [g_attn]
    assert [i for i, b in enumerate(d.blocks) if b.attn is not None] == [d_attn]
    assert g.blocks[-1].conv2.out_channels == 8 and d.blocks[0].conv2.out_channels == 8
    g.eval(), d.eval()
    with torch.no_grad():
        x, lay = g(torch.randn(2, 128), torch.tensor([0, 4]), return_layouts=True)
        o, dlay = d(x, torch.tensor([0, 4]), return_layouts=True)
    assert x.shape == (2, 3, res, res) and o.shape == (2,)
    assert [t.shape for t in lay] == [(2, 16, g_res, g_res)]
    assert [t.shape for t in dlay] == [(2, 16, d_res, d_res)]
    # layouts are softmaxes over entities
    torch.testing.assert_close(lay[0].sum(1), torch.ones(2, g_res, g_res))


@pytest.mark.parametrize("kind,cls,count", [("an", AttentiveNorm, 1), ("sa", SelfAttention2d, 1),
                                            ("none", AttentiveNorm, 0)])
def test_attention_variants_from_string(kind, cls, count):
    g, d = build_gan(resolution=32, ch=8, num_classes=3, attention=kind)
    for net in (g, d):
        assert sum(isinstance(m, cls) for m in net.modules()) == count
        assert sum(isinstance(m, (AttentiveNorm, SelfAttention2d)) for m in net.modules()) == count
    with torch.no_grad():
        assert g.eval()(torch.randn(1, 128), torch.tensor([1])).shape == (1, 3, 32, 32)
    ortho = orthogonality_loss(g).detach()
    assert (float(ortho) > 0) == (kind == "an")


def test_unknown_attention_kind_raises():
    with pytest.raises(ValueError, match="attention kind"):
        Generator(resolution=32, ch=8, attention="bogus")
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(resolution=48, ch=8)


def _randomise_cbn(g):
    gen = torch.Generator().manual_seed(1)
    for m in g.modules():
        if isinstance(m, ConditionalBatchNorm2d):
            with torch.no_grad():
                m.gain.weight.copy_(1 + 0.5 * torch.randn(m.gain.weight.shape, generator=gen))
                m.bias.weight.copy_(0.5 * torch.randn(m.bias.weight.shape, generator=gen))


def test_conditioning_labels_and_soft_class_path():
    torch.manual_seed(0)
    g, d = build_gan(resolution=32, ch=8, num_classes=6)
    _randomise_cbn(g)
    g.eval(), d.eval()
    z = torch.randn(3, 128)
    z = torch.cat([z, z])
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    with torch.no_grad():
        x = g(z, y)
        x_soft = g(z, nn.functional.one_hot(y, 6).float())
        o = d(x, y)
        o_soft = d(x, nn.functional.one_hot(y, 6).float())
        o_same_img = d(x[:1].expand(6, -1, -1, -1), y)
    # same z, different labels -> different images
    assert (x[:3] - x[3:]).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    # one-hot class weights give exactly the label path
    assert torch.equal(x, x_soft) and torch.equal(o, o_soft)
    # D depends on the label: the same image scored under 6 labels gives 6 different logits
    assert torch.unique(o_same_img).numel() == 6
    assert x.min() >= -1 and x.max() <= 1
    # a 50/50 class mixture reaches every CBN: it differs from both endpoints
    with torch.no_grad():
        mix = g(z[:1], torch.tensor([[0.5, 0.5, 0, 0, 0, 0]]))
    assert (mix - x[0:1]).abs().max() > 1e-4 and (mix - x[1:2]).abs().max() > 1e-4


def test_generator_head_is_bn_relu_conv_tanh():
    """The listing's head, ``BN -> ReLU -> Conv3x3 -> tanh``, recomputed by hand from the last block's
    output with plain functional ops and the layers' own (spectrally normalised) weights."""
    torch.manual_seed(0)
    g = Generator(resolution=32, ch=8, num_classes=2, attention="none").eval()
    with torch.no_grad():
        g.bn.running_mean.normal_(0, 0.5), g.bn.running_var.uniform_(0.5, 2.0)
        g.bn.weight.normal_(1, 0.3), g.bn.bias.normal_(0, 0.3)
        g.conv_out.bias.fill_(3.0)  # push part of the output into tanh's saturation
        seen = []
        hook = g.blocks[-1].register_forward_hook(lambda m, i, o: seen.append(o))
        x = g(torch.randn(4, 128), torch.tensor([0, 1, 0, 1]))
        hook.remove()
        h = seen[0].double()
        bn = g.bn
        h = (h - bn.running_mean.double().view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.double().view(1, -1, 1, 1)
                                                                         + bn.eps)
        h = h * bn.weight.double().view(1, -1, 1, 1) + bn.bias.double().view(1, -1, 1, 1)
        w = g.conv_out.weight.double()  # the spectrally normalised weight
        expected = torch.tanh(nn.functional.conv2d(h.clamp_min(0), w, g.conv_out.bias.double(), padding=1))
    torch.testing.assert_close(x.double(), expected, atol=1e-5, rtol=1e-5)
    assert x.shape == (4, 3, 32, 32) and (x > 0.99).float().mean() > 0.1 and x.max() <= 1


def test_spectral_norm_on_the_right_layers():
    torch.manual_seed(0)  # the power iteration's convergence depends on the initial weights: fix them
    g, d = build_gan(resolution=32, ch=8, num_classes=4, attention="sa")
    for net, types in ((g, (nn.Conv2d, nn.Linear)), (d, (nn.Conv2d, nn.Linear, nn.Embedding))):
        layers = [m for m in net.modules() if isinstance(m, types)
                  and not isinstance(m, nn.Embedding) or (net is d and isinstance(m, nn.Embedding))]
        assert layers
        for m in layers:
            assert parametrize.is_parametrized(m, "weight"), m
    # CBN tables and AN's internal weights are not normalised
    g_an, _ = build_gan(resolution=32, ch=8, num_classes=4, attention="an")
    for m in g_an.modules():
        if isinstance(m, ConditionalBatchNorm2d):
            assert not parametrize.is_parametrized(m.gain) and not parametrize.is_parametrized(m.bias)
        if isinstance(m, AttentiveNorm):
            assert not parametrize.is_parametrized(m)
    # SN really normalises: after power iterations the top singular value is 1
    fc = g_an.fc
    for _ in range(200):
        fc(torch.randn(1, 128))
    fc.eval()
    sigma = torch.linalg.svdvals(fc.weight.detach())[0]
    assert abs(float(sigma) - 1.0) < 2e-3
    assert torch.linalg.svdvals(fc.parametrizations.weight.original.detach())[0] > 2  # it did normalise


def test_config_rebuilds_identical_model():
    torch.manual_seed(0)
    g, d = build_gan(resolution=32, ch=8, num_classes=4, attention="an", an_kwargs={"temperature": 5.0})
    g2 = Generator(**g.get_config())
    d2 = Discriminator(**d.get_config())
    g2.load_state_dict(g.state_dict())
    d2.load_state_dict(d.state_dict())
    assert g2.blocks[2].attn.temperature == 5.0
    g.eval(), g2.eval(), d.eval(), d2.eval()
    z, y = torch.randn(2, 128), torch.tensor([1, 3])
    with torch.no_grad():
        assert torch.equal(g(z, y), g2(z, y))
        assert torch.equal(d(g(z, y), y), d2(g(z, y), y))


def test_truncated_normal():
    z = truncated_normal((2000, 16), truncation=0.5, generator=torch.Generator().manual_seed(0))
    assert z.abs().max() <= 0.5
    # redrawn, not clipped: no mass piles up at the bound
    assert (z.abs() > 0.499).float().mean() < 0.01
    assert z.std() < 0.35


def test_projection_option_adds_inner_product_term():
    torch.manual_seed(0)
    d = Discriminator(resolution=32, ch=8, num_classes=4, projection=True).eval()
    cfg = d.get_config()
    assert cfg["projection"] is True
    plain = Discriminator(**dict(cfg, projection=False)).eval()
    missing = plain.load_state_dict(d.state_dict(), strict=False)
    assert all(k.startswith("proj.") for k in missing.unexpected_keys) and not missing.missing_keys
    feats = []
    d.blocks[-1].register_forward_hook(lambda m, i, o: feats.append(o))
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 3])
    with torch.no_grad():
        diff = d(x, y) - plain(x, y)
        pooled = feats[0].relu().sum(dim=(2, 3))  # (b, c)
        expected = (d.proj.weight[y] * pooled).sum(1)
    torch.testing.assert_close(diff, expected, rtol=1e-5, atol=1e-5)
    assert parametrize.is_parametrized(d.proj, "weight")


def test_class_embedding_in_z_conditions_the_first_layer_and_interpolates():
    from attnorm.models.gan import Generator
    torch.manual_seed(0)
    g = Generator(resolution=32, ch=8, num_classes=5, class_embed_dim=16).eval()
    assert g.config["class_embed_dim"] == 16 and "class_embed_dim" not in Generator(32, 8, 5).config
    z = torch.randn(1, 128).repeat(2, 1)
    a, b = g(z, torch.tensor([1, 3]))
    assert (a - b).abs().mean() > 1e-3  # the class changes the image at initialisation (CBN alone would not)
    plain = Generator(resolution=32, ch=8, num_classes=5).eval()
    pa, pb = plain(z, torch.tensor([1, 3]))
    assert torch.allclose(pa, pb, atol=1e-6)  # the listing's G: class-independent CBN at init
    # one-hot class weights equal labels; a 50/50 mixture uses the mean embedding
    w = torch.eye(5)[[1, 3]]
    assert torch.allclose(g(z, w), g(z, torch.tensor([1, 3])), atol=1e-6)
    mix = torch.full((1, 5), 0.0); mix[0, 1] = mix[0, 3] = 0.5
    e = 0.5 * (g.class_embed.weight[1] + g.class_embed.weight[3])
    h = g.fc(torch.cat([z[:1], e[None]], 1))
    h2 = g.fc(torch.cat([z[:1], (mix @ g.class_embed.weight)], 1))
    assert torch.allclose(h, h2, atol=1e-6)
    assert Generator(**g.get_config()).class_embed.weight.shape == (5, 16)


def test_generator_param_groups_put_class_tables_at_their_own_lr():
    from attnorm.models.gan import Generator
    from attnorm.training.gan import generator_param_groups
    g = Generator(resolution=32, ch=8, num_classes=5, class_embed_dim=4)
    groups = generator_param_groups(g, 1e-4, 10.0)
    cls = {id(p) for p in groups[1]["params"]}
    expected = {id(m.weight) for n, m in g.named_modules() if isinstance(m, torch.nn.Embedding)}
    assert cls == expected and groups[1]["lr"] == pytest.approx(1e-3)
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(g.parameters()))
    assert len(generator_param_groups(g, 1e-4, 1.0)) == 1


def test_minibatch_std_groups_consecutive_samples_and_never_mixes_real_and_fake():
    from attnorm.models.gan import minibatch_std
    g = torch.Generator().manual_seed(0)
    h = torch.randn(8, 5, 3, 3, generator=g)
    s = minibatch_std(h, 4)  # groups [0..3], [4..7]
    ref = [h[k:k + 4].var(0, unbiased=False).add(1e-8).sqrt().mean() for k in (0, 4)]
    assert torch.allclose(s[:4], ref[0].expand(4, 1, 3, 3)) and torch.allclose(s[4:], ref[1].expand(4, 1, 3, 3))
    same = h[:1].repeat(8, 1, 1, 1)  # a collapsed batch has std ~0
    assert float(minibatch_std(same, 4).max()) < 1e-3
    assert minibatch_std(h[:6], 4).shape == (6, 1, 3, 3)  # 6 samples: groups of 3
    # and its gradient, on a channels-last map as D has it, is that of the per-group variance
    hl = h.double().contiguous(memory_format=torch.channels_last).requires_grad_()
    href = h.double().requires_grad_()
    w = torch.randn(8, 1, 3, 3, generator=g, dtype=torch.float64)
    (minibatch_std(hl, 4) * w).sum().backward()
    ref = torch.cat([href[k:k + 4].var(0, unbiased=False).add(1e-8).sqrt().mean().expand(4, 1, 3, 3) for k in (0, 4)])
    (ref * w).sum().backward()
    torch.testing.assert_close(hl.grad, href.grad, rtol=1e-5, atol=1e-7)  # computed in float32
    d = Discriminator(resolution=32, ch=8, num_classes=3, mbstd_group=4)
    assert d.config["mbstd_group"] == 4 and "mbstd_group" not in Discriminator(32, 8, 3).config
    x = torch.randn(8, 3, 32, 32, generator=g)
    y = torch.arange(8) % 3
    d.eval()
    a = d(x, y)
    b = d(torch.cat([x[:4], x[:1].repeat(4, 1, 1, 1)]), y)  # only the second group changes
    assert not torch.allclose(a[4:], b[4:]) and torch.allclose(a[:4], b[:4], atol=1e-6)


def test_conv_discriminator_is_the_documented_stack_and_projects_the_class():
    from attnorm.models.gan import ConvDiscriminator
    torch.manual_seed(0)
    d = ConvDiscriminator(resolution=32, ch=8, num_classes=5).eval()
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 0])
    # independent forward from the (spectrally normalised) weights: 3x3 then 4x4/2 per stage
    h = x
    widths = []
    for conv in d.convs:
        w = conv.weight  # parametrized: W / sigma
        assert all(isinstance(p, nn.Module) for p in conv.parametrizations.weight)
        stride = 2 if w.shape[-1] == 4 else 1
        h = torch.nn.functional.leaky_relu(torch.nn.functional.conv2d(h, w, conv.bias, stride, 1), 0.1)
        widths.append((w.shape[0], h.shape[-1]))
    assert widths == [(8, 32), (8, 16), (16, 16), (16, 8), (32, 8), (32, 4)]
    h = torch.nn.functional.leaky_relu(torch.nn.functional.conv2d(h, d.last.weight, d.last.bias, 1, 1), 0.1)
    pooled = h.sum((2, 3))  # (6, 64)
    ref = pooled @ d.linear.weight[0] + d.linear.bias + (d.proj.weight[y] * pooled).sum(1)
    assert torch.allclose(d(x, y), ref, atol=1e-4)
    # the class enters only through the projection: changing it moves the logit by <e_a - e_b, pooled>
    y2 = (y + 1) % 5
    assert torch.allclose(d(x, y2) - d(x, y), ((d.proj.weight[y2] - d.proj.weight[y]) * pooled).sum(1), atol=1e-4)
    # soft class weights: one-hot weights give the label's logit
    assert torch.allclose(d(x, torch.nn.functional.one_hot(y, 5).float()), d(x, y), atol=1e-5)


def test_build_gan_picks_the_discriminator_by_name():
    from attnorm.models.gan import ConvDiscriminator
    _, d = build_gan(resolution=32, ch=16, d_ch=32, d_arch="conv", mbstd_group=4)
    assert isinstance(d, ConvDiscriminator) and d.config["ch"] == 32 and d.last.in_channels == 128 + 1
    _, d = build_gan(resolution=32, ch=16, d_channel_mults=[1, 4, 8])
    assert isinstance(d, Discriminator) and [b.conv2.out_channels for b in d.blocks] == [16, 64, 128]
    with pytest.raises(ValueError, match="d_arch must be"):
        build_gan(d_arch="mlp")


def _grouped_std_reference(h, ids):
    """Per sample: the population std over the samples sharing its id, per feature (+1e-8 under
    the root), averaged over features; ids seen once get the mean over the repeated ids."""
    h = h.reshape(h.shape[0], -1).double().numpy()
    ids = np.asarray(ids)
    per_id = {}
    for i in set(ids.tolist()):
        rows = h[ids == i]
        if len(rows) >= 2:
            per_id[i] = np.sqrt(rows.var(0) + 1e-8).mean()
    fill = np.mean(list(per_id.values()))
    return np.array([per_id.get(i, fill) for i in ids.tolist()])


def test_minibatch_std_by_class_groups_samples_sharing_a_label_anywhere_in_the_batch():
    from attnorm.models.gan import minibatch_std
    torch.manual_seed(0)
    h = torch.randn(9, 5, 3, 3)
    ids = torch.tensor([2, 0, 2, 1, 0, 2, 7, 1, 0])  # id 7 occurs once
    got = minibatch_std(h, 4, ids)
    assert got.shape == (9, 1, 3, 3) and torch.all(got == got[:, :, :1, :1])
    np.testing.assert_allclose(got[:, 0, 0, 0].double().numpy(), _grouped_std_reference(h, ids), rtol=1e-5)
    perm = torch.randperm(9)
    torch.testing.assert_close(minibatch_std(h[perm], 4, ids[perm]), got[perm])
    # one image per class (a G that ignores z): ~0 within each class, though the classes differ
    collapsed = torch.randn(3, 5, 3, 3)[torch.tensor([0, 1, 2, 0, 1, 2])]
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    assert float(minibatch_std(collapsed, 4, labels).max()) < 1e-3
    assert float(minibatch_std(collapsed, 3).min()) > 0.5  # position groups of 3 mix the classes
    assert float(minibatch_std(h, 4, torch.arange(9)).abs().max()) == 0.0  # no id repeats


@pytest.mark.parametrize("d_arch", ["conv", "resblock"])
def test_class_grouped_mbstd_in_d_uses_the_labels_or_the_given_ids(d_arch):
    from attnorm.models.gan import build_gan
    torch.manual_seed(0)
    _, d = build_gan(resolution=16, ch=8, num_classes=3, attention="none", d_arch=d_arch, mbstd_group=4,
                     mbstd_by_class=True, projection=True)
    assert d.mbstd_by_class and d.get_config()["mbstd_by_class"] is True
    d.eval()  # no spectral-norm power iterations between the calls
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2])
    with torch.no_grad():
        by_label = d(x, y)
        torch.testing.assert_close(d(x, y, mbstd_ids=y), by_label)
        # the same batch split into two id groups per label changes the statistic, hence the logits
        assert not torch.allclose(d(x, y, mbstd_ids=torch.arange(6) // 3), by_label)
        weights = torch.nn.functional.one_hot(y, 3).float()
        torch.testing.assert_close(d(x, weights), by_label)  # class weights: grouped by their argmax
    _, plain = build_gan(resolution=16, ch=8, num_classes=3, attention="none", d_arch=d_arch, mbstd_group=4)
    assert not plain.mbstd_by_class and "mbstd_by_class" not in plain.get_config()


def test_the_d_phase_gives_real_fake_and_wrong_label_chunks_disjoint_mbstd_ids():
    from attnorm.losses.gan import HingeGANLoss

    class RecordingD(torch.nn.Module):
        mbstd_by_class = True

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.calls = []

        def forward(self, x, y, mbstd_ids=None):
            self.calls.append((y.clone(), mbstd_ids))
            return x.mean((1, 2, 3)) * self.w

    class ConstG(torch.nn.Module):
        def forward(self, z, y):
            return torch.zeros(z.shape[0], 3, 4, 4)

    d = RecordingD()
    loss = HingeGANLoss(ConstG(), d, z_dim=4, num_classes=5, batch_size=4, wrong_label=1.0, ortho_weight=0.0)
    y = torch.tensor([0, 1, 4, 4])
    loss.run_phase("D", (torch.zeros(4, 3, 4, 4), y))
    labels, ids = d.calls[-1]
    assert torch.equal(ids[:4], y)                      # real: the labels
    assert torch.equal(ids[4:8], labels[4:8] + 5)       # fake: shifted past every real id
    assert torch.equal(ids[8:], labels[8:] + 10)        # real again with wrong labels
    d.mbstd_by_class = False
    loss.run_phase("D", (torch.zeros(4, 3, 4, 4), y))
    assert d.calls[-1][1] is None


def test_hierarchical_z_feeds_one_chunk_per_block_and_starts_as_the_fc_only_path():
    """BigGAN's hierarchical latent: z splits into num_blocks + 1 chunks; chunk 0 (with the class
    embedding) feeds the linear layer, chunk i + 1 block i's norms. The maps start at zero, so at
    initialisation only chunk 0 matters; once they are trained, each chunk moves the image."""
    torch.manual_seed(0)
    g = Generator(resolution=32, ch=8, num_classes=4, z_dim=10, class_embed_dim=6, hierarchical_z=True).eval()
    assert g.z_chunks == [3, 3, 2, 2] and g.fc.in_features == 3 + 6
    assert [b.cbn1.latent.in_features for b in g.blocks] == [3, 2, 2]
    z, y = torch.randn(3, 10), torch.tensor([0, 3, 1])

    def moved(g, lo, hi):  # does changing z[:, lo:hi] change the images?
        z2 = z.clone()
        z2[:, lo:hi] += 1.0
        with torch.no_grad():
            return not torch.allclose(g(z, y), g(z2, y))

    assert moved(g, 0, 3) and not moved(g, 3, 10)
    # the zero maps still get a gradient, so the latent path learns
    g.train()
    g(z, y).square().sum().backward()
    assert all(b.cbn1.latent.weight.grad.abs().sum() > 0 for b in g.blocks)
    with torch.no_grad():
        for b in g.blocks:
            b.cbn1.latent.weight.normal_()
            b.cbn2.latent.weight.normal_()
    g.eval()
    assert moved(g, 3, 6) and moved(g, 6, 8) and moved(g, 8, 10)
    g2 = Generator(**g.get_config())  # the option is in the config: a checkpoint rebuilds it
    g2.load_state_dict(g.state_dict())
    with torch.no_grad():
        assert torch.equal(g(z, y), g2.eval()(z, y))
    assert "hierarchical_z" not in Generator(resolution=32, ch=8, num_classes=4).get_config()
    with pytest.raises(ValueError, match=r"z must be \(b, 10\)"):
        g(torch.randn(3, 9), y)
    with pytest.raises(ValueError, match="z_dim must be >= 4"):
        Generator(resolution=32, ch=8, num_classes=4, z_dim=3, hierarchical_z=True)


def test_coordinate_channels_hold_each_pixels_x_and_y():
    h = torch.zeros(2, 5, 4, 3)
    c = coordinate_channels(h)
    ys, xs = np.meshgrid(np.linspace(-1, 1, 4), np.linspace(-1, 1, 3), indexing="ij")  # (4, 3) each
    assert c.shape == (2, 2, 4, 3)
    for b in range(2):
        np.testing.assert_allclose(c[b, 0].numpy(), xs, atol=1e-6)
        np.testing.assert_allclose(c[b, 1].numpy(), ys, atol=1e-6)
    hl = torch.zeros(2, 5, 4, 3).contiguous(memory_format=torch.channels_last)
    cl = coordinate_channels(hl)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, c)
    assert coordinate_channels(h.to(torch.bfloat16)).dtype == torch.bfloat16


def test_coords_give_a_block_the_position_a_constant_input_lacks():
    """A block fed a constant map draws a constant interior (only the zero padding at the borders
    tells positions apart); with CoordConv's channels its interior varies with the position."""
    torch.manual_seed(0)
    x, y = torch.full((2, 8, 4, 4), 0.3), torch.tensor([0, 1])
    interior = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    spreads = {}
    for coords in (False, True):
        block = GBlock(8, 8, num_classes=2, coords=coords).eval()
        assert block.conv1.in_channels == 8 + (2 if coords else 0)
        with torch.no_grad():
            out = block(x, y)[interior]  # (2, 8, 4, 4) of the 8x8 output
        spreads[coords] = (out - out.mean(dim=(2, 3), keepdim=True)).abs().max().item()
    assert spreads[False] < 1e-6 and spreads[True] > 1e-3


def test_coords_option_is_in_the_generators_config():
    torch.manual_seed(0)
    g = Generator(resolution=32, ch=8, num_classes=4, coords=True).eval()
    assert all(b.coords and b.conv1.in_channels == b.cbn1.bn.num_features + 2 for b in g.blocks)
    assert g.get_config()["coords"] is True
    assert "coords" not in Generator(resolution=32, ch=8, num_classes=4).get_config()  # older files load
    g2 = Generator(**g.get_config())
    g2.load_state_dict(g.state_dict())
    z, y = torch.randn(3, 128), torch.tensor([0, 3, 1])
    with torch.no_grad():
        assert torch.equal(g(z, y), g2.eval()(z, y))
    gen, _ = build_gan(resolution=32, ch=8, num_classes=4, g_coords=True)
    assert gen.get_config()["coords"] is True


def test_fourier_channels_are_the_plane_waves_of_each_sample():
    """Against numpy: sin(fx x + fy y + phase) over pixel centres spanning [-1, 1], per sample and wave."""
    torch.manual_seed(0)
    freqs, phases = torch.randn(2, 3, 2) * 5, torch.randn(2, 3)
    h = torch.zeros(2, 4, 5, 7)
    w = fourier_channels(h, freqs, phases)
    ys, xs = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 7), indexing="ij")
    assert w.shape == (2, 3, 5, 7)
    for b in range(2):
        for k in range(3):
            fx, fy, ph = freqs[b, k, 0].item(), freqs[b, k, 1].item(), phases[b, k].item()
            np.testing.assert_allclose(w[b, k].numpy(), np.sin(fx * xs + fy * ys + ph), atol=1e-5)
    hl = h.contiguous(memory_format=torch.channels_last)
    wl = fourier_channels(hl, freqs, phases)
    assert wl.is_contiguous(memory_format=torch.channels_last) and torch.equal(wl, w)
    assert fourier_channels(h.to(torch.bfloat16), freqs, phases).dtype == torch.bfloat16


def test_fourier_features_follow_the_latent_and_reach_every_block():
    """The waves are a function of (z, class): two latents give two sets of frequencies, and a G
    block's output changes with them; the option round-trips through the config and build_gan."""
    torch.manual_seed(0)
    g = Generator(resolution=32, ch=8, num_classes=4, class_embed_dim=6, fourier=5).eval()
    assert all(b.conv1.in_channels == b.cbn1.bn.num_features + 5 for b in g.blocks)
    assert g.fourier.map.in_features == 128 + 6
    z, y = torch.randn(3, 128), torch.tensor([0, 3, 1])
    code = torch.cat([z, g.class_embed(y)], dim=1)
    freqs, phases = g.fourier(code)
    assert freqs.shape == (3, 5, 2) and phases.shape == (3, 5)
    assert (freqs[0] - freqs[1]).abs().min() > 1e-4  # each sample its own waves
    # the frequencies start spread over a few periods across the image (the data's stripes have 2-6)
    many = g.fourier(torch.randn(4000, 134))[0].abs()
    assert 1.0 < many.mean().item() / math.pi < 4.0
    # a block's output depends on the waves it is given
    block = g.blocks[0]
    x = torch.randn(3, block.cbn1.bn.num_features, 4, 4)
    with torch.no_grad():
        a = block(x, y, waves=(freqs, phases))
        b = block(x, y, waves=(freqs * 1.5, phases))
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="pass waves"):
        block(x, y)
    assert g.get_config()["fourier"] == 5
    assert "fourier" not in Generator(resolution=32, ch=8, num_classes=4).get_config()  # older files load
    g2 = Generator(**g.get_config())
    g2.load_state_dict(g.state_dict())
    with torch.no_grad():
        assert torch.equal(g(z, y), g2.eval()(z, y))
    gen, _ = build_gan(resolution=32, ch=8, num_classes=4, g_fourier=3)
    assert gen.get_config()["fourier"] == 3
    with pytest.raises(ValueError, match="fourier must be >= 0"):
        Generator(resolution=32, ch=8, num_classes=4, fourier=-1)


def test_bilinear_upsampling_is_what_the_blocks_compute_and_round_trips():
    """``upsample="bilinear"``: both paths of every G block double the map by bilinear interpolation (checked
    against the block's computation written out with ``F.interpolate``), the default stays the listing's nearest,
    the choice is kept in the config the checkpoints carry, and a wrong name is refused by name."""
    import torch.nn.functional as F
    from attnorm.models.gan import GBlock, Generator, build_gan
    torch.manual_seed(0)
    block = GBlock(8, 4, num_classes=3, use_sn=False, upsample="bilinear").eval()
    x, y = torch.randn(2, 8, 4, 4), torch.tensor([0, 2])
    up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)
    h = block.conv2(F.relu(block.cbn2(block.conv1(up(F.relu(block.cbn1(x, y)))), y)))
    assert torch.allclose(block(x, y), h + block.shortcut(up(x)), atol=1e-6)
    nearest = GBlock(8, 4, num_classes=3, use_sn=False)
    nearest.load_state_dict(block.state_dict())
    assert not torch.allclose(nearest.eval()(x, y), block(x, y), atol=1e-3)
    g, _ = build_gan(resolution=16, ch=8, num_classes=3, g_upsample="bilinear")
    assert g.get_config()["upsample"] == "bilinear" and all(b.upsample == "bilinear" for b in g.blocks)
    assert Generator(**g.get_config()).blocks[0].upsample == "bilinear"
    assert "upsample" not in build_gan(resolution=16, ch=8, num_classes=3)[0].get_config()  # old configs unchanged
    with pytest.raises(ValueError, match="upsample must be one of nearest, bilinear, shuffle or a comma-separated list of "
                       r"them \(one per block\), got 'bicubic'"):
        Generator(resolution=16, ch=8, num_classes=3, upsample="bicubic")
    with pytest.raises(ValueError, match="^g_upsample must be one of nearest, bilinear, shuffle or .*got 'cubic'"):
        build_gan(resolution=16, ch=8, num_classes=3, g_upsample="cubic")


def test_upsampling_per_block():
    """A comma-separated ``upsample`` names each block's doubling, first block first: a 32 px G with
    ``"bilinear, bilinear,nearest"`` gives its blocks those modes (spaces stripped), differs from the
    all-bilinear G with the same weights, its last block copies nearest-neighbour (checked against the
    block written out), the choice round-trips through the config (a G rebuilt from it computes the same),
    a list works as the string does, and a list of the wrong length or with a wrong name is refused."""
    import torch.nn.functional as F
    from attnorm.models.gan import Generator, build_gan
    torch.manual_seed(0)
    g, _ = build_gan(resolution=32, ch=8, num_classes=3, z_dim=16, g_upsample="bilinear, bilinear,nearest")
    assert [b.upsample for b in g.blocks] == ["bilinear", "bilinear", "nearest"]
    assert g.get_config()["upsample"] == "bilinear, bilinear,nearest"
    g.eval()
    twin = Generator(**g.get_config()).eval()
    twin.load_state_dict(g.state_dict())
    z, y = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        assert torch.equal(g(z, y), twin(z, y))
        # against the same weights with every block bilinear: only the last block's doubling differs
        allbil = Generator(**{**g.get_config(), "upsample": "bilinear"}).eval()
        allbil.load_state_dict(g.state_dict())
        assert not torch.allclose(g(z, y), allbil(z, y), atol=1e-3)
        last = g.blocks[2]
        x16, yy = torch.randn(2, 16, 16, 16), torch.tensor([1, 2])
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")
        h = last.conv2(F.relu(last.cbn2(last.conv1(up(F.relu(last.cbn1(x16, yy)))), yy)))
        assert torch.allclose(last(x16, yy), h + last.shortcut(up(x16)), atol=1e-6)
    as_list = Generator(resolution=32, ch=8, num_classes=3, z_dim=16, upsample=["bilinear", "bilinear", "nearest"])
    assert [b.upsample for b in as_list.blocks] == ["bilinear", "bilinear", "nearest"]
    from attnorm.models.gan import GBlock
    assert GBlock(8, 4, num_classes=3, upsample=" bilinear").upsample == "bilinear"
    with pytest.raises(ValueError, match="names 2 modes for 1 block: name one mode"):
        GBlock(8, 4, num_classes=3, upsample="bilinear,nearest")
    assert as_list.get_config()["upsample"] == ["bilinear", "bilinear", "nearest"]
    with pytest.raises(ValueError, match="^g_upsample='bilinear,nearest' names 2 modes for 3 blocks: "
                                         "name one mode, or one per block$"):
        build_gan(resolution=32, ch=8, num_classes=3, g_upsample="bilinear,nearest")
    with pytest.raises(ValueError, match="got 'bilinear,cubic,nearest'"):
        Generator(resolution=32, ch=8, num_classes=3, upsample="bilinear,cubic,nearest")


def test_shuffle_upsampling_starts_as_nearest_and_learns_each_child():
    """``upsample="shuffle"``: the residual path doubles through a 1x1 convolution to 4 c channels and
    ``pixel_shuffle`` (written out by hand: child (i, j) of pixel (r, c) is output channel 4 ch + 2 i + j), the
    shortcut by nearest copies; initialised (ICNR) so that a G with it computes what the nearest G with the same
    other weights computes, with and without spectral norm, in eval and training mode; once its weights move,
    the four children of a pixel differ; the choice round-trips through the config and the training key."""
    import torch.nn.functional as F
    from attnorm.models.gan import GBlock, Generator, ShuffleUp, build_gan
    for use_sn in (True, False):
        torch.manual_seed(0)
        kw = dict(resolution=32, ch=8, num_classes=3, z_dim=16, spectral_norm=use_sn)
        near = Generator(**kw)
        shuf = Generator(**kw, upsample="nearest,shuffle,shuffle")
        missing = shuf.load_state_dict(near.state_dict(), strict=False).missing_keys
        assert missing and all(".shuffle." in k for k in missing)
        z, y = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
        for mode in ("eval", "train"):
            getattr(near, mode)(), getattr(shuf, mode)()
            with torch.no_grad():
                torch.testing.assert_close(shuf(z, y), near(z, y), rtol=1e-5, atol=1e-5)
    up = ShuffleUp(3, use_sn=False)
    with torch.no_grad():
        up.conv.weight.normal_()
    x = torch.randn(2, 3, 4, 5)
    w = up.conv.weight[:, :, 0, 0]  # (12, 3)
    out = torch.einsum("oc,bchw->bohw", w, x)  # (2, 12, 4, 5)
    want = torch.zeros(2, 3, 8, 10)
    for c in range(3):
        for i in range(2):
            for j in range(2):
                want[:, c, i::2, j::2] = out[:, 4 * c + 2 * i + j]
    torch.testing.assert_close(up(x), want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(want[:, :, 0::2, 0::2], want[:, :, 1::2, 1::2])  # the children differ
    block = GBlock(4, 4, num_classes=3, use_sn=False, upsample="shuffle").eval()
    xb, yb = torch.randn(2, 4, 4, 4), torch.tensor([0, 2])
    with torch.no_grad():
        block.shuffle.conv.weight.normal_()
        h = block.conv2(F.relu(block.cbn2(block.conv1(block.shuffle(F.relu(block.cbn1(xb, yb)))), yb)))
        sc = block.shortcut(F.interpolate(xb, scale_factor=2, mode="nearest"))
        torch.testing.assert_close(block(xb, yb), h + sc, rtol=1e-5, atol=1e-6)
    g, _ = build_gan(resolution=16, ch=8, num_classes=3, g_upsample="shuffle")
    assert g.get_config()["upsample"] == "shuffle" and all(b.shuffle is not None for b in g.blocks)
    assert Generator(**g.get_config()).blocks[1].shuffle is not None


def test_skip_generator_sums_bilinearly_doubled_rgb_images():
    """``skip=True`` (StyleGAN2's skip G): the output is tanh of the last layer's image plus the coarse blocks'
    RGB images, summed coarse to fine with a bilinear doubling before each addition (checked against the sum
    written out with ``F.interpolate``); with those RGB layers at zero it is the plain generator with the same
    weights; the option round-trips through the config and the training config's ``g_skip`` reaches it."""
    import torch.nn.functional as F
    from attnorm.models.gan import Generator, build_gan
    torch.manual_seed(0)
    g = Generator(resolution=32, ch=8, num_classes=3, z_dim=16, spectral_norm=False, skip=True).eval()
    assert len(g.to_rgb) == 2  # 8x8 and 16x16; the 32x32 block's image is conv_out's
    z, y = torch.randn(3, 16), torch.tensor([0, 1, 2])
    up = lambda t, f: F.interpolate(t, scale_factor=f, mode="bilinear", align_corners=False)
    with torch.no_grad():
        h8 = g.blocks[0](g.fc(z).view(3, -1, 4, 4), y)
        h16 = g.blocks[1](h8, y)
        h32 = g.blocks[2](h16, y)
        rgb = up(up(g.to_rgb[0](F.relu(h8)), 2) + g.to_rgb[1](F.relu(h16)), 2)
        want = torch.tanh(g.conv_out(F.relu(g.bn(h32))) + rgb)
        assert torch.allclose(g(z, y), want, atol=1e-6)
        assert rgb.abs().max() > 0.05  # the skip path is not negligible in this check
        plain = Generator(resolution=32, ch=8, num_classes=3, z_dim=16, spectral_norm=False).eval()
        plain.load_state_dict({k: v for k, v in g.state_dict().items() if not k.startswith("to_rgb")})
        for layer in g.to_rgb:
            layer.weight.zero_()
            layer.bias.zero_()
        assert torch.allclose(g(z, y), plain(z, y), atol=1e-6)
    assert Generator(**g.get_config()).to_rgb is not None
    assert "skip" not in Generator(resolution=32, ch=8, num_classes=3).get_config()  # older files load
    assert build_gan(resolution=16, ch=8, num_classes=3, g_skip=True)[0].get_config()["skip"] is True


def test_grain_generator_adds_per_channel_noise_of_its_learned_std():
    """``grain=s``: the image is the plain generator's (same weights) plus N(0, grain_std_c^2) noise per
    pixel and channel, clipped to [-1, 1], from torch's global generator (repeatable under a seed, fresh on the next call); the std
    starts at s; the option round-trips through the config and the training config's ``g_grain`` reaches it."""
    from attnorm.models.gan import Generator, build_gan
    torch.manual_seed(0)
    g = Generator(resolution=16, ch=8, num_classes=3, z_dim=16, grain=0.06).eval()
    assert g.grain_std.tolist() == pytest.approx([0.06] * 3)
    plain = Generator(resolution=16, ch=8, num_classes=3, z_dim=16).eval()
    plain.load_state_dict({k: v for k, v in g.state_dict().items() if k != "grain_std"})
    z, y = torch.randn(64, 16), torch.arange(64) % 3
    with torch.no_grad():
        clean = plain(z, y)
        g.grain_std.zero_()
        assert torch.equal(g(z, y), clean)  # std 0: the plain image
        g.grain_std.copy_(torch.tensor([0.02, 0.06, 0.2]))
        torch.manual_seed(5)
        noisy = g(z, y)
        noise = noisy - clean
        assert g.pop_drawn(None) is None  # kept only by a forward with gradients in training mode
        torch.manual_seed(5)
        assert torch.equal(g(z, y), noisy)  # repeatable under a seed
        assert not torch.equal(g(z, y), noisy)  # a fresh draw on the next call
        got = noise.transpose(0, 1).flatten(1).std(1).numpy()
        assert got == pytest.approx([0.02, 0.06, 0.2], rel=0.03)  # 16384 draws per channel
        g.grain_std.fill_(5.0)
        loud = g(z, y)
        assert loud.abs().max() == 1.0 and (loud.abs() == 1.0).float().mean() > 0.5  # clipped at the range's ends
    g.train()
    drawn_by_plain = plain.train()(z, y)
    out = g(z, y)  # with gradients, in training mode: the image before the grain is kept until read
    assert torch.allclose(g.pop_drawn(None), drawn_by_plain, atol=1e-6) and not torch.equal(out, drawn_by_plain)
    assert g.pop_drawn(None) is None
    import copy
    copy.deepcopy(g)  # nothing left that a deep copy cannot take
    assert Generator(**g.get_config()).grain_std is not None
    assert "grain" not in plain.get_config()  # older files load
    assert build_gan(resolution=16, ch=8, num_classes=3, g_grain=0.06)[0].get_config()["grain"] == 0.06
    with pytest.raises(ValueError, match="grain"):
        Generator(resolution=16, ch=8, num_classes=3, grain=-0.1)


def _group_std_reference(h, members, channels):
    """Per feature the population std over ``members`` (torch.var, not the layer's own sums), then
    the mean over each of ``channels`` consecutive channel groups: (channels, H, W)."""
    sd = (h[members].var(0, unbiased=False) + 1e-8).sqrt()  # (c, H, W)
    c = sd.shape[0]
    return sd.view(channels, c // channels, *sd.shape[1:]).mean(1)


@pytest.mark.parametrize("spatial", [False, True])
def test_minibatch_std_channels_and_spatial_against_a_per_group_reference(spatial):
    from attnorm.models.gan import minibatch_std
    torch.manual_seed(0)
    h = torch.randn(8, 6, 4, 4) * torch.linspace(0.2, 3.0, 6)[None, :, None, None]  # channels differ in spread
    # consecutive groups of 4
    out = minibatch_std(h, 4, channels=3, spatial=spatial)
    assert out.shape == (8, 3, 4, 4)
    for k, members in enumerate(([0, 1, 2, 3], [4, 5, 6, 7])):
        ref = _group_std_reference(h, members, 3)
        if not spatial:
            ref = ref.mean((1, 2), keepdim=True).expand_as(ref)
        for i in members:
            torch.testing.assert_close(out[i], ref)
    # groups by id; id 3 occurs once and gets the mean of the other groups' values
    ids = torch.tensor([0, 1, 0, 1, 2, 2, 3, 0])
    out = minibatch_std(h, 4, ids, channels=2, spatial=spatial)
    refs = {}
    for gid, members in ((0, [0, 2, 7]), (1, [1, 3]), (2, [4, 5])):
        ref = _group_std_reference(h, members, 2)
        refs[gid] = ref.mean((1, 2), keepdim=True).expand_as(ref) if not spatial else ref
        for i in members:
            torch.testing.assert_close(out[i], refs[gid])
    torch.testing.assert_close(out[6], torch.stack(list(refs.values())).mean(0))
    # the channel groups see different spreads (the later channels are wider)
    assert float(out[0, 1].mean()) > 2 * float(out[0, 0].mean())
    if spatial:  # positions differ from each other; the plain channel is one value per sample
        assert float(out[0, 0].std()) > 0
    with pytest.raises(ValueError, match="divide the 6 feature channels"):
        minibatch_std(h, 4, channels=4)


def test_minibatch_std_marks_where_a_group_agrees_only_when_spatial():
    """A class drawn the same at one position (its 'stroke') and varied elsewhere: the spatial
    channel is near 0 there and large elsewhere; the pooled channel cannot tell the positions apart."""
    from attnorm.models.gan import minibatch_std
    torch.manual_seed(1)
    h = torch.randn(4, 8, 4, 4)
    h[:, :, 1, 2] = 0.7  # all four agree at one position
    spatial = minibatch_std(h, 4, channels=1, spatial=True)[0, 0]
    assert float(spatial[1, 2]) < 1e-3 < 0.5 < float(spatial.flatten()[[0, 5, 15]].min())
    pooled = minibatch_std(h, 4)[0, 0]
    assert float(pooled.max() - pooled.min()) == 0.0


@pytest.mark.parametrize("d_arch", ["conv", "resblock"])
def test_mbstd_channels_and_spatial_in_d_are_saved_and_change_its_input(d_arch):
    from attnorm.models.gan import ConvDiscriminator, Discriminator, build_gan
    torch.manual_seed(0)
    _, d = build_gan(resolution=16, ch=8, num_classes=3, attention="none", d_arch=d_arch, mbstd_group=4,
                     mbstd_by_class=True, mbstd_channels=2, mbstd_spatial=True)
    cfg = d.get_config()
    assert cfg["mbstd_channels"] == 2 and cfg["mbstd_spatial"] is True
    cls = ConvDiscriminator if d_arch == "conv" else Discriminator
    again = cls(**cfg)
    again.load_state_dict(d.state_dict())  # the saved arguments rebuild the same shapes
    d.eval(), again.eval()
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 0, 1, 1, 2, 2])
    with torch.no_grad():
        torch.testing.assert_close(again(x, y), d(x, y))
    _, plain = build_gan(resolution=16, ch=8, num_classes=3, attention="none", d_arch=d_arch, mbstd_group=4)
    assert "mbstd_channels" not in plain.get_config() and "mbstd_spatial" not in plain.get_config()
    with pytest.raises(ValueError, match="mbstd_channels must be >= 1"):
        build_gan(resolution=16, ch=8, num_classes=3, attention="none", d_arch=d_arch, mbstd_group=4, mbstd_channels=0)
    # at construction, not at the first step: at 16 px, ch 8 the stddev is taken over 16 features in the conv D
    # (8, then 16 channels), over 8 in the listing's (its first block's output)
    features = 16 if d_arch == "conv" else 8
    with pytest.raises(ValueError, match=rf"d_mbstd_channels\) must divide the {features} feature channels D takes the stddev over, got 3"):
        build_gan(resolution=16, ch=8, num_classes=3, attention="none", d_arch=d_arch, mbstd_group=4, mbstd_channels=3)
    _, d = build_gan(resolution=16, ch=8, num_classes=3, attention="none", d_arch=d_arch, mbstd_group=4,
                     mbstd_channels=features)  # one feature per channel: allowed, and it runs
    assert d(x, y).shape == (6,)
