"""Self-attention, conditional BN and the create_norm factory."""

import numpy as np
import pytest
import torch
from torch import nn

from attnorm.layers import (AttentiveNorm, ConditionalBatchNorm2d, SelfAttention2d, create_norm,
                            norm_kinds)


def test_factory_kinds():
    assert isinstance(create_norm("an", 16, num_entities=4), AttentiveNorm)
    assert create_norm("an", 16, num_entities=4).num_entities == 4
    assert isinstance(create_norm("sa", 16), SelfAttention2d)
    assert isinstance(create_norm("bn", 16), nn.BatchNorm2d)
    inorm = create_norm("in", 16)
    assert isinstance(inorm, nn.InstanceNorm2d) and inorm.affine
    assert isinstance(create_norm("none", 16), nn.Identity)
    assert isinstance(create_norm("cbn", 16, num_classes=3), ConditionalBatchNorm2d)
    assert set(norm_kinds()) >= {"an", "sa", "bn", "in", "cbn", "none"}
    with pytest.raises(ValueError, match="unknown norm kind 'gn'.*choose one of"):
        create_norm("gn", 16)


def _naive_self_attention(sa, x):
    """Per-position loops in numpy: softmax over pooled keys of q_i . k_j."""
    w = lambda conv: conv.weight.detach().numpy()[:, :, 0, 0].astype(np.float64)
    xn = x.detach().numpy().astype(np.float64)
    b, c, h, wd = xn.shape
    out = np.zeros_like(xn)
    for n in range(b):
        feats = xn[n].reshape(c, -1)  # c, hw
        q = w(sa.query) @ feats
        k = (w(sa.key) @ feats).reshape(-1, h, wd)
        v = (w(sa.value) @ feats).reshape(-1, h, wd)
        # 2x2 max pooling
        kp = k.reshape(k.shape[0], h // 2, 2, wd // 2, 2).max(axis=(2, 4)).reshape(k.shape[0], -1)
        vp = v.reshape(v.shape[0], h // 2, 2, wd // 2, 2).max(axis=(2, 4)).reshape(v.shape[0], -1)
        for i in range(h * wd):
            logits = q[:, i] @ kp
            p = np.exp(logits - logits.max())
            p /= p.sum()
            out[n].reshape(c, -1)[:, i] = w(sa.out) @ (vp @ p)
    return xn + sa.gamma.item() * out


def test_self_attention_matches_naive_loops():
    torch.manual_seed(0)
    sa = SelfAttention2d(16)
    with torch.no_grad():
        sa.gamma.fill_(0.7)
    x = torch.randn(2, 16, 6, 4)
    np.testing.assert_allclose(sa(x).detach().numpy(), _naive_self_attention(sa, x), rtol=1e-4, atol=1e-5)


def test_self_attention_starts_as_identity_and_handles_odd_sizes():
    sa = SelfAttention2d(16)
    x = torch.randn(1, 16, 5, 3)
    assert torch.equal(sa(x), x)
    assert sa(torch.randn(2, 16, 1, 1)).shape == (2, 16, 1, 1)
    with pytest.raises(ValueError, match="channels"):
        SelfAttention2d(4)


def test_self_attention_spectral_norm_option():
    sa = SelfAttention2d(16, spectral_norm=True)
    assert nn.utils.parametrize.is_parametrized(sa.query, "weight")


def test_cbn_initial_state_equals_plain_bn():
    cbn = ConditionalBatchNorm2d(8, num_classes=5)
    bn = nn.BatchNorm2d(8, affine=False)
    x = torch.randn(4, 8, 3, 3) * 3 + 1
    y = torch.tensor([0, 4, 2, 2])
    assert torch.allclose(cbn(x, y), bn(x), atol=1e-6)


def test_cbn_per_class_affine_and_soft_classes():
    torch.manual_seed(0)
    cbn = ConditionalBatchNorm2d(8, num_classes=5).eval()
    with torch.no_grad():
        cbn.gain.weight.normal_()
        cbn.bias.weight.normal_()
    x = torch.randn(3, 8, 4, 4)
    y = torch.tensor([1, 3, 4])
    out = cbn(x, y)
    normed = cbn.bn(x)
    expected = normed * cbn.gain.weight[y][:, :, None, None] + cbn.bias.weight[y][:, :, None, None]
    assert torch.allclose(out, expected, atol=1e-6)
    onehot = torch.nn.functional.one_hot(y, 5).float()
    assert torch.allclose(cbn(x, onehot), out, atol=1e-6)
    # a 50/50 mixture of two classes uses the mean of their gains and biases
    mix = 0.5 * torch.nn.functional.one_hot(torch.tensor([1, 1, 1]), 5).float() + \
        0.5 * torch.nn.functional.one_hot(torch.tensor([3, 3, 3]), 5).float()
    gain = 0.5 * (cbn.gain.weight[1] + cbn.gain.weight[3])
    bias = 0.5 * (cbn.bias.weight[1] + cbn.bias.weight[3])
    assert torch.allclose(cbn(x, mix), normed * gain[None, :, None, None] + bias[None, :, None, None],
                          atol=1e-6)


def test_cbn_errors():
    cbn = ConditionalBatchNorm2d(8, num_classes=5)
    x = torch.randn(2, 8, 2, 2)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        cbn(x, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        cbn(x, torch.tensor([-1, 4]))
    cbn(x, torch.tensor([0, 4]))  # both ends of the range are fine
    with pytest.raises(ValueError, match=r"\(b, 5\)"):
        cbn(x, torch.ones(2, 4))


def test_cbn_latent_path_adds_a_linear_map_of_z_to_gain_and_bias():
    torch.manual_seed(1)
    cbn = ConditionalBatchNorm2d(6, num_classes=3, latent_dim=4)
    x, y, z = torch.randn(5, 6, 3, 3) * 2 + 1, torch.tensor([0, 2, 1, 1, 0]), torch.randn(5, 4)
    plain = ConditionalBatchNorm2d(6, num_classes=3)
    assert torch.equal(cbn(x, y, z), plain(x, y))  # zero-initialised: starts as the class-only norm
    with torch.no_grad():
        cbn.gain.weight.normal_()
        cbn.bias.weight.normal_()
        cbn.latent.weight.normal_()
    w = cbn.latent.weight.detach()  # (12, 4): rows 0-5 the gain's map, 6-11 the bias's
    mean, var = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    normed = (x - mean) / torch.sqrt(var + 1e-5)
    gain = cbn.gain.weight[y] + z @ w[:6].T
    bias = cbn.bias.weight[y] + z @ w[6:].T
    assert torch.allclose(cbn(x, y, z), normed * gain[:, :, None, None] + bias[:, :, None, None], atol=1e-5)
    with pytest.raises(ValueError, match="latent chunk"):
        cbn(x, y)
    with pytest.raises(ValueError, match="latent_dim"):
        ConditionalBatchNorm2d(6, 3, latent_dim=-1)
