"""DiffAugment: each op against a per-image numpy reference with the same random draws, gradients,
and the GAN loss showing D only augmented images."""

import numpy as np
import pytest
import torch

from attnorm.losses.augment import color, cutout, diff_augment, parse_policy, translation
from attnorm.losses.gan import HingeGANLoss
from attnorm.training.gan import resolve_config


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_translation_moves_each_image_by_its_own_shift_with_zero_fill():
    x = torch.randn(6, 3, 16, 16, generator=_gen(1))
    got = translation(x, generator=_gen(7)).numpy()
    g = _gen(7)  # the same draws, in the same order, as the op
    ty = torch.randint(-2, 3, (6, 1, 1), generator=g).view(-1).tolist()
    tx = torch.randint(-2, 3, (6, 1, 1), generator=g).view(-1).tolist()
    assert len({(a, b) for a, b in zip(ty, tx)}) > 1
    for k in range(6):
        ref = np.zeros((3, 16, 16), np.float32)
        src = x[k].numpy()
        for i in range(16):
            for j in range(16):
                if 0 <= i - ty[k] < 16 and 0 <= j - tx[k] < 16:
                    ref[:, i, j] = src[:, i - ty[k], j - tx[k]]
        np.testing.assert_array_equal(got[k], ref)


def test_cutout_zeroes_one_half_size_square_per_image():
    x = torch.rand(32, 2, 16, 16, generator=_gen(2)) + 1.0  # no zeros of its own
    got = cutout(x, generator=_gen(3))
    for k in range(32):
        zero = (got[k] == 0).all(0).numpy()
        ys, xs = np.nonzero(zero)
        assert len(ys) > 0
        # the zeros form one axis-aligned rectangle of at most 8x8, clipped only at the border
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert zero.sum() == h * w and h <= 8 and w <= 8
        assert h == 8 or ys.min() == 0 or ys.max() == 15
        assert w == 8 or xs.min() == 0 or xs.max() == 15
        np.testing.assert_array_equal(got[k].numpy()[:, ~zero], x[k].numpy()[:, ~zero])


def test_color_is_brightness_then_saturation_then_contrast():
    x = torch.randn(4, 3, 8, 8, generator=_gen(4))
    got = color(x, generator=_gen(5)).double().numpy()
    u = torch.rand(3, 4, generator=_gen(5)).double().numpy()  # three (b, 1, 1, 1) draws, in order
    for k in range(4):
        a = x[k].double().numpy() + (u[0, k] - 0.5)
        a = (a - a.mean(0)) * (2 * u[1, k]) + a.mean(0)
        a = (a - a.mean()) * (u[2, k] + 0.5) + a.mean()
        np.testing.assert_allclose(got[k], a, rtol=1e-5, atol=1e-5)


def test_gradients_pass_through_every_op():
    x = torch.randn(3, 3, 8, 8, dtype=torch.double, requires_grad=True)
    policy = parse_policy("color,translation,cutout")
    assert torch.autograd.gradcheck(lambda t: diff_augment(t, policy, generator=_gen(9)), (x,))


def test_empty_policy_is_the_identity_and_unknown_names_are_refused():
    x = torch.randn(2, 3, 8, 8)
    assert diff_augment(x, "") is x and diff_augment(x, None) is x
    with pytest.raises(ValueError, match="unknown DiffAugment policy 'flip'.*color, translation, cutout"):
        parse_policy("translation,flip")
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        resolve_config(overrides={"diffaugment": "rotate"})


class _RecordingD(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.seen = []

    def forward(self, x, y):
        self.seen.append(x.detach().clone())
        return self.w * x.mean((1, 2, 3))


class _ConstG(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.b = torch.nn.Parameter(torch.full((), 0.5))

    def forward(self, z, y):
        return self.b.expand(z.shape[0], 3, 16, 16) + 0.0


@pytest.mark.parametrize("policy", ["", "cutout"])
def test_the_gan_loss_shows_d_only_augmented_images(policy):
    torch.manual_seed(0)
    G, D = _ConstG(), _RecordingD()
    loss = HingeGANLoss(G, D, z_dim=4, num_classes=2, batch_size=8, ortho_weight=0.0, augment=policy)
    real = torch.full((8, 3, 16, 16), -0.5)
    loss.run_phase("D", (real, torch.zeros(8, dtype=torch.long)))
    loss.run_phase("G", None)
    d_batch, g_batch = D.seen
    assert d_batch.shape == (16, 3, 16, 16) and g_batch.shape == (8, 3, 16, 16)
    zeros = [(img == 0).all(0).sum().item() for img in torch.cat([d_batch, g_batch])]
    if policy:  # every image, real and fake, in both phases, lost a square (up to 8x8 pixels)
        assert all(0 < z <= 64 for z in zeros)
    else:
        assert all(z == 0 for z in zeros)
    # the G phase's gradient reaches G through the augmentation: d/db of -mean(D) = -(kept fraction)
    kept = 1 - np.mean(zeros[16:]) / 256
    assert G.b.grad.item() == pytest.approx(-kept, rel=1e-5)


def test_instance_noise_is_added_to_every_image_d_sees_and_passes_gs_gradient():
    """``instance_noise=s``: every image D sees, real and fake, in both phases, is the image plus N(0, s^2)
    noise drawn anew each time; the noise is additive, so G's gradient is the noiseless one."""
    torch.manual_seed(0)
    G, D = _ConstG(), _RecordingD()
    loss = HingeGANLoss(G, D, z_dim=4, num_classes=2, batch_size=8, ortho_weight=0.0, instance_noise=0.1)
    real = torch.full((8, 3, 16, 16), -0.5)
    loss.run_phase("D", (real, torch.zeros(8, dtype=torch.long)))
    loss.run_phase("G", None)
    d_batch, g_batch = D.seen
    clean = torch.cat([real, torch.full((16, 3, 16, 16), 0.5)])
    noise = torch.cat([d_batch, g_batch]) - clean
    per_image = noise.flatten(1)
    assert per_image.std(1).numpy() == pytest.approx(np.full(24, 0.1), rel=0.15)  # 768 draws per image
    assert noise.std().item() == pytest.approx(0.1, rel=0.03) and abs(noise.mean().item()) < 0.005
    assert torch.corrcoef(per_image[[8, 16]])[0, 1].abs() < 0.15  # the G phase's fake drew its own noise
    assert G.b.grad.item() == pytest.approx(-1.0, rel=1e-6)  # d/db of -mean(D(b + noise))
    D.seen.clear()
    quiet = HingeGANLoss(G, D, z_dim=4, num_classes=2, batch_size=8, ortho_weight=0.0)
    quiet.run_phase("D", (real, torch.zeros(8, dtype=torch.long)))
    assert torch.equal(D.seen[0], clean[:16])  # off by default: the images themselves
    with pytest.raises(ValueError, match="instance_noise"):
        HingeGANLoss(G, D, z_dim=4, num_classes=2, batch_size=8, instance_noise=-0.1)
    assert resolve_config()["instance_noise"] == 0
    with pytest.raises(ValueError, match="instance_noise"):
        resolve_config(overrides={"instance_noise": -1})


def _mirror_shift_candidates(img: np.ndarray, s: int) -> list[np.ndarray]:
    """Every image consistency_transform may make of img (c, h, w): mirrored or not, shifted by -s..s, reflected."""
    h, w = img.shape[1:]
    out = []
    for src in (img, img[:, :, ::-1]):
        padded = np.pad(src, ((0, 0), (s, s), (s, s)), mode="reflect")
        out += [padded[:, oy:oy + h, ox:ox + w] for oy in range(2 * s + 1) for ox in range(2 * s + 1)]
    return out


def test_consistency_transform_mirrors_and_shifts_with_reflected_borders():
    from attnorm.losses.augment import consistency_transform
    x = torch.randn(24, 3, 16, 16, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    y = consistency_transform(x, generator=g).numpy()
    # the same draws, redone by hand: mirror flags, then row and column offsets into the 2-pixel reflected border
    g = torch.Generator().manual_seed(0)
    flip = (torch.rand(24, generator=g) < 0.5).numpy()
    oy, ox = (torch.randint(0, 5, (24, 1, 1), generator=g).flatten().numpy() for _ in range(2))
    for i in range(24):
        src = x[i].numpy()[:, :, ::-1] if flip[i] else x[i].numpy()
        want = np.pad(src, ((0, 0), (2, 2), (2, 2)), mode="reflect")[:, oy[i]:oy[i] + 16, ox[i]:ox[i] + 16]
        assert np.array_equal(y[i], want)
    assert 4 <= flip.sum() <= 20 and len(set(zip(oy, ox))) > 8  # the draws vary


class _RecordingMeanD(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []
        self.w = torch.nn.Parameter(torch.tensor(3.0))

    def forward(self, x, y):
        self.seen.append(x.detach().clone())
        return x.mean((1, 2, 3)) * self.w


def test_consistency_regularisation_penalises_ds_change_under_the_transform():
    """``cr=w``: the D phase runs D once more on the real and fake chunks, each image mirrored / shifted
    (checked: every image of that second call is one of its image's 50 mirror-shift candidates), and adds
    w * (mean squared logit change over the reals + the same over the fakes) to D's loss."""
    torch.manual_seed(0)
    G, D = _ConstG(), _RecordingMeanD()
    loss = HingeGANLoss(G, D, z_dim=4, num_classes=2, batch_size=8, ortho_weight=0.0, cr=10.0)
    real = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        G.b.fill_(0.0)
    stats = loss.run_phase("D", (real, torch.zeros(8, dtype=torch.long)))
    first, moved = D.seen
    assert moved.shape == first.shape == (16, 3, 16, 16)
    for a, b in zip(first.numpy(), moved.numpy()):
        assert any(np.allclose(b, c, atol=1e-6) for c in _mirror_shift_candidates(a, 2))
    la, lb = first.mean((1, 2, 3)) * 3.0, moved.mean((1, 2, 3)) * 3.0
    gap = (lb - la).pow(2)
    want_cr = gap[:8].mean() + gap[8:].mean()
    assert want_cr > 1e-4  # the real images' means do change under the shift
    assert stats["D/cr"].item() == pytest.approx(want_cr.item(), rel=1e-5)
    hinge = torch.relu(1 - la[:8]).mean() + torch.relu(1 + la[8:]).mean()
    assert stats["D/loss"].item() == pytest.approx((hinge + 10.0 * want_cr).item(), rel=1e-5)
    with pytest.raises(ValueError, match="cr"):
        HingeGANLoss(G, D, z_dim=4, num_classes=2, batch_size=8, cr=-1.0)
    assert resolve_config()["cr"] == 0
