"""The optional GAN loss terms: MSGAN's mode-seeking term in the G phase (paired halves, the value
against a hand computation, the direction of its gradient) and the matching-aware D term."""

import numpy as np
import pytest
import torch

from attnorm.losses.gan import HingeGANLoss, feature_seeking_ratio, mode_seeking_ratio
from attnorm.training.gan import resolve_config


class _LinearG(torch.nn.Module):
    """x = reshape(A z + E[y]): records its inputs."""

    def __init__(self, z_dim=6, classes=3):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.A = torch.nn.Parameter(0.1 * torch.randn(3 * 4 * 4, z_dim, generator=g))
        self.E = torch.nn.Parameter(torch.randn(classes, 3 * 4 * 4, generator=g))
        self.calls = []

    def forward(self, z, y):
        self.calls.append((z.detach().clone(), y.clone()))
        return (z @ self.A.T + self.E[y]).view(-1, 3, 4, 4)


class _MeanD(torch.nn.Module):
    def forward(self, x, y):
        return x.mean((1, 2, 3))


def test_ratio_matches_a_per_element_reference():
    rng = np.random.default_rng(0)
    x, z = rng.normal(size=(8, 3, 5, 5)), rng.normal(size=(8, 7))
    want = np.abs(x[:4] - x[4:]).mean() / np.abs(z[:4] - z[4:]).mean()
    got = mode_seeking_ratio(torch.tensor(x), torch.tensor(z)).item()
    assert got == pytest.approx(want, rel=1e-12)


def test_image_norm_matches_a_per_element_reference_and_ignores_contrast():
    rng = np.random.default_rng(1)
    x, z = rng.normal(size=(8, 3, 5, 5)), rng.normal(size=(8, 7))
    contrast = np.abs(x - x.mean((2, 3), keepdims=True)).mean()
    want = np.abs(x[:4] - x[4:]).mean() / contrast / np.abs(z[:4] - z[4:]).mean()
    got = mode_seeking_ratio(torch.tensor(x), torch.tensor(z), "image").item()
    assert got == pytest.approx(want, rel=1e-12)
    brighter = 2.5 * torch.tensor(x) + 0.3  # every colour pushed out (and shifted)
    assert mode_seeking_ratio(brighter, torch.tensor(z), "image").item() == pytest.approx(want, rel=1e-12)
    assert mode_seeking_ratio(brighter, torch.tensor(z)).item() == pytest.approx(
        2.5 * mode_seeking_ratio(torch.tensor(x), torch.tensor(z)).item(), rel=1e-12)  # MSGAN's grows with it
    with pytest.raises(ValueError, match="mode_seeking_norm"):
        mode_seeking_ratio(torch.tensor(x), torch.tensor(z), "pixel")


def test_batch_norm_of_the_mode_seeking_distance_against_a_per_element_reference():
    """``norm="batch"``: the image distance over the batch's spread around its mean colour (per channel); no
    affine change of the pixel values moves it, and (unlike ``"image"``) flattening every image while keeping
    its mean colour lowers it, where ``"image"`` rises."""
    rng = np.random.default_rng(2)
    x, z = rng.normal(size=(8, 3, 5, 5)) + rng.normal(size=(8, 3, 1, 1)), rng.normal(size=(8, 7))
    spread = np.abs(x - x.mean((0, 2, 3), keepdims=True)).mean()
    want = np.abs(x[:4] - x[4:]).mean() / spread / np.abs(z[:4] - z[4:]).mean()
    xt, zt = torch.tensor(x), torch.tensor(z)
    assert mode_seeking_ratio(xt, zt, "batch").item() == pytest.approx(want, rel=1e-12)
    assert mode_seeking_ratio(2.5 * xt + 0.3, zt, "batch").item() == pytest.approx(want, rel=1e-12)
    per_pair = np.abs(x[:4] - x[4:]).reshape(4, -1).mean(1) / spread / np.abs(z[:4] - z[4:]).mean(1)
    np.testing.assert_allclose(mode_seeking_ratio(xt, zt, "batch", per_pair=True).numpy(), per_pair, rtol=1e-12)
    flat = xt.mean((2, 3), keepdim=True) + 0.2 * (xt - xt.mean((2, 3), keepdim=True))
    assert mode_seeking_ratio(flat, zt, "batch").item() < want
    assert mode_seeking_ratio(flat, zt, "image").item() > mode_seeking_ratio(xt, zt, "image").item()


class _ScaledG(torch.nn.Module):
    """x = a * pattern(z, y) + b: ``a`` is the images' contrast, nothing else."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.B = torch.randn(3 * 4 * 4, 6, generator=g)
        self.E = torch.randn(3, 3 * 4 * 4, generator=g)
        self.a = torch.nn.Parameter(torch.tensor(1.0))
        self.b = torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, z, y):
        return (self.a * torch.tanh(z @ self.B.T + self.E[y]) + self.b).view(-1, 3, 4, 4)


class _ZeroD(torch.nn.Module):
    def forward(self, x, y):
        return 0.0 * x.sum((1, 2, 3))


@pytest.mark.parametrize("norm", ["", "image"])
def test_only_msgans_plain_term_rewards_contrast(norm):
    """The G phase's gradient on the contrast ``a`` (D flat): MSGAN's term pulls it up (its loss
    m / ratio falls as a grows), the image-normalised one not at all."""
    torch.manual_seed(0)
    G = _ScaledG()
    loss = HingeGANLoss(G, _ZeroD(), z_dim=6, num_classes=3, batch_size=16, ortho_weight=0.0, mode_seeking=1.0,
                        mode_seeking_norm=norm)
    loss.run_phase("G", None)
    if norm:
        assert abs(G.a.grad.item()) < 1e-6 and abs(G.b.grad.item()) < 1e-6
    else:
        assert G.a.grad.item() < -0.1 and abs(G.b.grad.item()) < 1e-6


def test_an_unknown_mode_seeking_norm_is_one_line(tmp_path, capsys):
    from attnorm.cli import main
    assert resolve_config()["mode_seeking_norm"] == ""
    assert main(["train-gan", "--out", str(tmp_path / "r"), "--steps", "1", "mode_seeking=1.0",
                 "mode_seeking_norm=pixels"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mode_seeking_norm" in err[0] and "image" in err[0]


def test_g_phase_pairs_labels_and_adds_the_term():
    torch.manual_seed(0)
    G = _LinearG()
    loss = HingeGANLoss(G, _MeanD(), z_dim=6, num_classes=3, batch_size=10, ortho_weight=0.0, mode_seeking=2.0)
    stats = loss.run_phase("G", None)
    z, y = G.calls[-1]
    assert torch.equal(y[:5], y[5:])  # the two halves share their labels
    A, E = G.A.detach().numpy().astype(np.float64), G.E.detach().numpy().astype(np.float64)
    x = z.numpy() @ A.T + E[y.numpy()]
    # same labels: the class term cancels, so the image distance is |A (z1 - z2)| alone
    ratio = np.abs((z[:5] - z[5:]).numpy() @ A.T).mean() / np.abs((z[:5] - z[5:]).numpy()).mean()
    assert stats["G/ms_ratio"].item() == pytest.approx(ratio, rel=1e-5)
    assert stats["G/loss"].item() == pytest.approx(-x.mean() + 2.0 / (ratio + 1e-5), rel=1e-5)


def test_per_pair_ratios_and_term_match_a_per_element_reference():
    """``mode_seeking_pairs``: one ratio per pair (its own image and latent distances, the batch's
    contrast), and the term is the mean of their reciprocals, so the closest pair weighs most."""
    rng = np.random.default_rng(3)
    x, z = rng.normal(size=(8, 3, 5, 5)), rng.normal(size=(8, 7))
    contrast = np.abs(x - x.mean((2, 3), keepdims=True)).mean()
    want = np.abs(x[:4] - x[4:]).reshape(4, -1).mean(1) / contrast / np.abs(z[:4] - z[4:]).mean(1)
    got = mode_seeking_ratio(torch.tensor(x), torch.tensor(z), "image", per_pair=True).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    torch.manual_seed(0)
    G = _LinearG()
    loss = HingeGANLoss(G, _MeanD(), z_dim=6, num_classes=3, batch_size=10, ortho_weight=0.0, mode_seeking=2.0,
                        mode_seeking_pairs=True)
    stats = loss.run_phase("G", None)
    z, y = G.calls[-1]
    A, E = G.A.detach().numpy().astype(np.float64), G.E.detach().numpy().astype(np.float64)
    xx = z.numpy() @ A.T + E[y.numpy()]
    dz = (z[:5] - z[5:]).numpy()
    ratios = np.abs(dz @ A.T).mean(1) / np.abs(dz).mean(1)
    assert stats["G/ms_ratio"].item() == pytest.approx(ratios.mean(), rel=1e-5)
    assert stats["G/loss"].item() == pytest.approx(-xx.mean() + 2.0 * np.mean(1 / (ratios + 1e-5)), rel=1e-5)
    assert resolve_config()["mode_seeking_pairs"] is False


def test_capped_pairs_add_a_constant_and_get_no_push():
    """``mode_seeking_cap``: each pair's ratio is clamped at the cap before its reciprocal, so the loss is the
    per-element reference with ``min(ratio, cap)``, and only the pairs below the cap carry the term's gradient."""
    torch.manual_seed(0)
    A0, E0 = _LinearG().A.detach().clone(), _LinearG().E.detach().clone()

    def run(cap):
        G = _LinearG()
        G.A.data.copy_(A0), G.E.data.copy_(E0)
        loss = HingeGANLoss(G, _MeanD(), z_dim=6, num_classes=3, batch_size=10, ortho_weight=0.0,
                            mode_seeking=2.0, mode_seeking_pairs=True, mode_seeking_cap=cap)
        torch.manual_seed(1)  # the same latents and labels in every run
        return G, loss.run_phase("G", None)

    G0, _ = run(0.0)
    z, y = G0.calls[-1]
    A, E = A0.numpy().astype(np.float64), E0.numpy().astype(np.float64)
    dz = (z[:5] - z[5:]).numpy().astype(np.float64)
    ratios = np.abs(dz @ A.T).mean(1) / np.abs(dz).mean(1)
    cap = float(np.sort(ratios)[2]) + 1e-3  # three pairs below the cap, two above
    assert (ratios < cap).sum() == 3
    G, stats = run(cap)
    assert torch.equal(G.calls[-1][0], z)
    x = z.numpy() @ A.T + E[y.numpy()]
    assert stats["G/loss"].item() == pytest.approx(-x.mean() + 2.0 * np.mean(1 / (np.minimum(ratios, cap) + 1e-5)),
                                                   rel=1e-5)
    assert stats["G/ms_ratio"].item() == pytest.approx(ratios.mean(), rel=1e-5)  # the log shows the unclamped mean
    assert stats["G/ms_capped"].item() == pytest.approx(0.4)
    # the gradient on A: the adversarial part plus the term of the pairs below the cap alone (autograd on float64)
    At = torch.tensor(A, requires_grad=True)
    dzt = torch.tensor(dz)
    r = (dzt @ At.T).abs().mean(1) / dzt.abs().mean(1)
    below = torch.tensor(ratios < cap)
    (2.0 * torch.where(below, 1 / (r + 1e-5), torch.zeros_like(r)).mean()).backward()
    adv = -np.outer(np.ones(48) / 48, z.numpy().astype(np.float64).mean(0))  # d(-mean x)/dA
    np.testing.assert_allclose(G.A.grad.numpy(), adv + At.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert np.abs(G0.A.grad.numpy() - G.A.grad.numpy()).max() > 1e-3  # without the cap the far pairs push too
    with pytest.raises(ValueError, match="mode_seeking_cap"):
        HingeGANLoss(_LinearG(), _MeanD(), z_dim=6, num_classes=3, batch_size=8, mode_seeking=1.0, mode_seeking_cap=-1)
    assert resolve_config()["mode_seeking_cap"] == 0.0


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_its_gradient_spreads_the_pair_apart(weight):
    torch.manual_seed(0)
    G = _LinearG()
    z = torch.randn(16, 6)
    y = torch.zeros(16, dtype=torch.long)
    before = mode_seeking_ratio(G(z, y), z).item()
    loss = HingeGANLoss(G, _MeanD(), z_dim=6, num_classes=3, batch_size=16, ortho_weight=0.0, mode_seeking=weight)
    opt = torch.optim.SGD(G.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        loss.run_phase("G", None)
        opt.step()
    after = mode_seeking_ratio(G(z, y), z).item()
    if weight:
        assert after > 1.05 * before
    else:  # the mean-D objective alone barely moves the spread
        assert after == pytest.approx(before, rel=5e-3)


def test_odd_batch_is_refused_and_the_config_key_exists():
    with pytest.raises(ValueError, match="even"):
        HingeGANLoss(_LinearG(), _MeanD(), z_dim=6, num_classes=3, batch_size=7, mode_seeking=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        HingeGANLoss(_LinearG(), _MeanD(), z_dim=6, num_classes=3, batch_size=8, wrong_label=-1.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        HingeGANLoss(_LinearG(), _MeanD(), z_dim=6, num_classes=1, batch_size=8, wrong_label=1.0)
    assert resolve_config()["mode_seeking"] == 0.0 and resolve_config()["wrong_label"] == 0.0


class _LabelD(torch.nn.Module):
    """logit = mean(x) + w[y]: records what it is shown."""

    def __init__(self, classes=5):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1.5, 1.5, classes))
        self.seen = []

    def forward(self, x, y):
        self.seen.append((x.detach().clone(), y.clone()))
        return x.mean((1, 2, 3)) + self.w[y]


class _ConstG(torch.nn.Module):
    def forward(self, z, y):
        return torch.full((z.shape[0], 3, 4, 4), -0.25)


def test_wrong_label_margin_compares_each_real_image_under_its_own_and_another_label():
    torch.manual_seed(0)
    D = _LabelD()
    loss = HingeGANLoss(_ConstG(), D, z_dim=3, num_classes=5, batch_size=12, ortho_weight=0.0, wrong_label=0.5)
    x = torch.rand(12, 3, 4, 4)
    y = torch.arange(12) % 5
    stats = loss.run_phase("D", (x, y))
    images, labels = D.seen[-1]
    assert images.shape[0] == 36 and torch.equal(images[24:], x) and torch.equal(images[:12], x)
    y_f, y_w = labels[12:24], labels[24:]
    assert torch.equal(labels[:12], y) and (y_w != y).all() and ((0 <= y_w) & (y_w < 5)).all()
    w = D.w.detach().numpy().astype(np.float64)
    xm = x.mean((1, 2, 3)).numpy().astype(np.float64)
    relu = lambda t: np.maximum(t, 0.0)
    want = (relu(1 - (xm + w[y.numpy()])).mean() + relu(1 + (-0.25 + w[y_f.numpy()])).mean()
            + 0.5 * relu(1 - w[y.numpy()] + w[y_w.numpy()]).mean())
    assert stats["D/loss"].item() == pytest.approx(want, rel=1e-5)
    # off: D sees reals and fakes only
    loss.wrong_label = 0.0
    D.seen.clear()
    stats0 = loss.run_phase("D", (x, y))
    assert D.seen[-1][0].shape[0] == 24 and "D/wrong" not in stats0 and "D/wrong" in stats


@pytest.mark.parametrize("phase", ["D", "G"])
def test_amp_runs_the_nets_in_bf16_and_the_losses_in_float32(phase):
    """amp=True: D's convolutions see bfloat16 (autocast on the CPU), the logged losses are
    float32 and within bf16 rounding of the same phase without amp (same weights, same draws)."""
    from attnorm.models.gan import build_gan
    torch.manual_seed(0)
    G, D = build_gan(resolution=16, ch=8, num_classes=3, z_dim=16, attention="an", num_entities=4,
                     d_ch=8, d_arch="conv")
    x, y = torch.rand(6, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2])
    seen = []
    hook = D.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    conv_dtypes = []
    conv = next(m for m in D.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: conv_dtypes.append(o.dtype))
    out = {}
    for amp in (False, True):
        loss = HingeGANLoss(G, D, z_dim=16, num_classes=3, batch_size=6, amp=amp)
        torch.manual_seed(1)
        out[amp] = loss.run_phase(phase, (x, y))
    hook.remove()
    assert conv_dtypes[0] == torch.float32 and conv_dtypes[-1] == torch.bfloat16
    key = f"{phase}/loss"
    assert out[True][key].dtype == torch.float32
    assert out[True][key].item() == pytest.approx(out[False][key].item(), abs=0.05)
    assert out[True][key].item() != out[False][key].item()  # bf16 did round somewhere


class _QuadD(torch.nn.Module):
    """D(x, y) = sum_p w_p x_p^2 / 2 + b_y: its input gradient w * x is known in closed form."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(0.1, 1.0, 3 * 4 * 4).view(3, 4, 4))
        self.b = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))

    def forward(self, x, y):
        return (self.w * x * x).flatten(1).sum(1) / 2 + self.b[y]


def _d_phase(r1, r1_every=1, phases=1, seed=0):
    torch.manual_seed(seed)
    D = _QuadD()
    loss = HingeGANLoss(_LinearG(), D, z_dim=6, num_classes=3, batch_size=4, ortho_weight=0.0, r1=r1,
                        r1_every=r1_every)
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 1, 2, 0])
    out = []
    for _ in range(phases):
        D.zero_grad()
        out.append((loss.run_phase("D", (x, y)), D.w.grad.clone()))
    return out, x.numpy().astype(np.float64), D.w.detach().numpy().astype(np.float64)


def test_r1_is_the_squared_input_gradient_of_the_real_logits():
    [(stats, gw)], x, w = _d_phase(r1=0.5)
    [(stats0, gw0)], _, _ = _d_phase(r1=0.0)  # same fakes (same seed), no penalty
    want = ((w * x) ** 2).reshape(4, -1).sum(1).mean()  # mean over real images of ||w * x||^2
    assert stats["D/r1"].item() == pytest.approx(want, rel=1e-5)
    assert "D/r1" not in stats0
    assert stats["D/loss"].item() == pytest.approx(stats0["D/loss"].item() + 0.25 * want, rel=1e-5)
    # its parameter gradient: d/dw of gamma/2 * mean_i sum_p (w_p x_ip)^2 = gamma * w * mean_i x_i^2
    np.testing.assert_allclose((gw - gw0).numpy(), 0.5 * w * (x ** 2).mean(0), rtol=1e-4, atol=1e-7)


def test_lazy_r1_runs_every_kth_d_phase_scaled_by_k():
    runs, x, w = _d_phase(r1=0.5, r1_every=3, phases=4)
    base, _, _ = _d_phase(r1=0.0, phases=4)
    want = ((w * x) ** 2).reshape(4, -1).sum(1).mean()
    assert ["D/r1" in s for s, _ in runs] == [True, False, False, True]
    assert runs[0][0]["D/loss"].item() == pytest.approx(base[0][0]["D/loss"].item() + 3 * 0.25 * want, rel=1e-5)
    assert runs[1][0]["D/loss"].item() == pytest.approx(base[1][0]["D/loss"].item(), rel=1e-6)


def test_r1_settings_are_checked():
    with pytest.raises(ValueError, match="r1"):
        HingeGANLoss(_LinearG(), _QuadD(), 6, 3, 4, r1=-1.0)
    with pytest.raises(ValueError, match="r1_every"):
        HingeGANLoss(_LinearG(), _QuadD(), 6, 3, 4, r1=1.0, r1_every=0)
    from attnorm.models.gan import Discriminator
    with pytest.raises(ValueError, match="once-differentiable"):  # AN in D: no double backward
        HingeGANLoss(_LinearG(), Discriminator(resolution=32, ch=8, num_classes=3, attention="an"), 6, 3, 4, r1=1.0)
    HingeGANLoss(_LinearG(), Discriminator(resolution=32, ch=8, num_classes=3, attention="sa"), 6, 3, 4, r1=1.0)
    cfg = resolve_config(overrides={"r1": 0.2, "r1_every": 4})
    assert (cfg["r1"], cfg["r1_every"]) == (0.2, 4)


def test_r1_on_the_demo_discriminator_matches_its_gradient_on_the_reals_alone():
    """With the demo's D (conv, minibatch stddev over groups of 4 that stay inside the real chunk),
    the penalty equals the squared gradient of D on the real batch computed on its own."""
    from attnorm.models.gan import ConvDiscriminator
    torch.manual_seed(0)
    D = ConvDiscriminator(resolution=16, ch=8, num_classes=3, mbstd_group=4)
    G = lambda z, y: torch.tanh(z[:, :1, None, None].expand(-1, 3, 16, 16))  # noqa: E731
    loss = HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=8, ortho_weight=0.0, r1=1.0)
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = torch.arange(8) % 3
    stats = loss.run_phase("D", (x, y))
    xr = x.clone().requires_grad_(True)
    D.eval()  # spectral norm: the weights of the loss's forward, without another power iteration
    g, = torch.autograd.grad(D(xr, y).sum(), xr)
    assert stats["D/r1"].item() == pytest.approx(g.pow(2).flatten(1).sum(1).mean().item(), rel=1e-4)


def test_lecam_pulls_logits_towards_the_other_sides_moving_average():
    """D/lecam = mean((D(x) - a_F)^2) + mean((D(fake) - a_R)^2) with a_R, a_F the moving averages
    of the mean real / fake logits, computed by hand over three D phases."""
    torch.manual_seed(0)
    D = _QuadD()
    G = _LinearG()
    loss = HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=4, ortho_weight=0.0, lecam=0.3, lecam_decay=0.9)
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 1, 2, 0])
    a = None
    for _ in range(3):
        stats = loss.run_phase("D", (x, y))
        z, yf = G.calls[-1]
        with torch.no_grad():
            real = D(x, y).double().numpy()
            fake = D(G(z, yf), yf).double().numpy()
        means = np.array([real.mean(), fake.mean()])
        a = means if a is None else 0.9 * a + 0.1 * means
        want = ((real - a[1]) ** 2).mean() + ((fake - a[0]) ** 2).mean()
        assert stats["D/lecam"].item() == pytest.approx(want, rel=1e-5)
        hinge = np.maximum(0, 1 - real).mean() + np.maximum(0, 1 + fake).mean()
        assert stats["D/loss"].item() == pytest.approx(hinge + 0.3 * want, rel=1e-5)
    state = loss.state_dict()
    fresh = HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=4, lecam=0.3, lecam_decay=0.9)
    fresh.load_state_dict(state)
    assert state["lecam_ema"] == pytest.approx(list(a)) and all(type(v) is float for v in state["lecam_ema"])
    assert fresh.lecam_ema.tolist() == pytest.approx(list(a)) and fresh._d_phases == 3
    assert torch.equal(fresh.lecam_ema, loss.lecam_ema)  # float32 round trip: a resumed run continues exactly


def test_lecam_steps_limits_the_term_to_the_first_d_phases():
    """lecam_steps=2: phases 1-2 carry the term exactly as without the limit; from phase 3 on D's loss is the
    plain hinge and the moving averages stay where phase 2 left them (also across a state round trip)."""
    torch.manual_seed(0)
    D, G = _QuadD(), _LinearG()
    x = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 1, 2, 0])
    limited = HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=4, ortho_weight=0.0, lecam=0.3, lecam_steps=2)
    for phase in range(1, 5):
        stats = limited.run_phase("D", (x, y))
        z, yf = G.calls[-1]
        with torch.no_grad():
            real, fake = D(x, y).double().numpy(), D(G(z, yf), yf).double().numpy()
        hinge = np.maximum(0, 1 - real).mean() + np.maximum(0, 1 + fake).mean()
        if phase <= 2:
            assert "D/lecam" in stats and stats["D/loss"].item() > hinge + 1e-6
            kept = limited.lecam_ema.clone()
        else:
            assert "D/lecam" not in stats and stats["D/loss"].item() == pytest.approx(hinge, rel=1e-6)
            assert torch.equal(limited.lecam_ema, kept)
        if phase == 3:
            fresh = HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=4, lecam=0.3, lecam_steps=2)
            fresh.load_state_dict(limited.state_dict())
            assert fresh._d_phases == 3 and torch.equal(fresh.lecam_ema, kept)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="lecam_steps must be an integer >= 0"):
            HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=4, lecam=0.3, lecam_steps=bad)


class _RecordingD(torch.nn.Module):
    """D(x) = mean of w * x: records the images it scores."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.seen = []

    def forward(self, x, y):
        self.seen.append((x.detach().clone(), y.clone()))
        return (self.w * x).mean((1, 2, 3))


def test_reuse_fakes_d_phase_scores_the_g_phase_images_without_a_g_forward():
    torch.manual_seed(0)
    G, D = _LinearG(), _RecordingD()
    loss = HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=8, ortho_weight=0.0, reuse_fakes=True,
                        mode_seeking=1.0)
    loss.run_phase("G", None)
    z, y = G.calls[-1]
    A, E = G.A.detach().numpy().astype(np.float64), G.E.detach().numpy().astype(np.float64)
    fake = z.numpy().astype(np.float64) @ A.T + E[y.numpy()]  # (8, 48): the G phase's images
    with torch.no_grad():
        G.A.add_(1.0)  # as if G's optimiser had stepped: the D phase must not regenerate
    x_real, y_real = torch.randn(8, 3, 4, 4), torch.randint(3, (8,))
    stats = loss.run_phase("D", (x_real, y_real))
    assert len(G.calls) == 1  # no second G forward
    seen_x, seen_y = D.seen[-1]
    np.testing.assert_allclose(seen_x[8:].reshape(8, -1).numpy(), fake, rtol=1e-5, atol=1e-6)
    assert torch.equal(seen_y[8:], y) and torch.equal(seen_y[:8], y_real)
    real_logits = 0.5 * x_real.double().mean((1, 2, 3)).numpy()
    fake_logits = 0.5 * fake.mean(1)
    want = np.maximum(0, 1 - real_logits).mean() + np.maximum(0, 1 + fake_logits).mean()
    assert stats["D/loss"].item() == pytest.approx(want, rel=1e-5)
    # a second D phase in the same step (d_steps > 1) has no G phase before it: it generates with G as it is now
    loss.run_phase("D", (x_real, y_real))
    assert len(G.calls) == 2
    z2, y2 = G.calls[-1]
    fresh = z2.numpy().astype(np.float64) @ (A + 1.0).T + E[y2.numpy()]
    np.testing.assert_allclose(D.seen[-1][0][8:].reshape(8, -1).numpy(), fresh, rtol=1e-5, atol=1e-5)


def test_without_reuse_every_d_phase_generates_and_a_size_mismatch_regenerates():
    torch.manual_seed(0)
    G, D = _LinearG(), _RecordingD()
    plain = HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=8, ortho_weight=0.0)
    plain.run_phase("G", None)
    plain.run_phase("D", (torch.randn(8, 3, 4, 4), torch.randint(3, (8,))))
    assert len(G.calls) == 2
    reuse = HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=8, ortho_weight=0.0, reuse_fakes=True)
    reuse.run_phase("G", None)
    reuse.run_phase("D", (torch.randn(6, 3, 4, 4), torch.randint(3, (6,))))  # a real batch of another size
    assert len(G.calls) == 4 and G.calls[-1][0].shape[0] == 6 and D.seen[-1][0].shape[0] == 12


class _PoolD(torch.nn.Module):
    """Pooled features = the channel means of the image; logit = a linear map of them (D.linear)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, x, y):
        return self.linear(x.mean((2, 3))).squeeze(1)


def _fm_loss(weight, seed=0):
    torch.manual_seed(5)
    G, D = _LinearG(), _PoolD()
    real = torch.randn(6, 3, 4, 4) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + 0.7
    loss = HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=4, feature_matching=weight)
    loss.run_phase("D", (real, torch.tensor([0, 1, 2, 0, 1, 2])))
    G.calls.clear()
    torch.manual_seed(seed)
    stats = loss.run_phase("G", None)
    return G, real, stats, loss


def test_feature_matching_is_the_relative_distance_of_the_batch_means_of_ds_pooled_features():
    G, real, stats, _ = _fm_loss(0.5)
    z, y = G.calls[0]
    with torch.no_grad():
        fake = G(z, y).numpy()
    r = real.numpy().mean((2, 3))  # (6, 3) pooled features of the real batch
    f = fake.mean((2, 3))
    want = ((f.mean(0) - r.mean(0)) ** 2).sum() / ((r - r.mean(0)) ** 2).sum(1).mean()
    assert stats["G/fm"].item() == pytest.approx(want, rel=1e-5)
    G0, _, stats0, _ = _fm_loss(0.0)
    assert "G/fm" not in stats0
    assert stats["G/loss"].item() - stats0["G/loss"].item() == pytest.approx(0.5 * want, rel=1e-4)
    # its gradient moves G's mean image towards the real batch's: the class rows E shift by
    # -w * 2 (mean_f - mean_r) / spread / (b * hw) per pixel of each channel (3 x 4 x 4 per row, summed over its rows)
    diff = G.E.grad - G0.E.grad  # (3 classes, 48)
    per_pixel = 0.5 * 2 * (f.mean(0) - r.mean(0)) / (((r - r.mean(0)) ** 2).sum(1).mean()) / (4 * 16)
    counts = np.bincount(y.numpy(), minlength=3)
    want_grad = counts[:, None, None] * np.repeat(per_pixel[None, :, None], 16, axis=2)  # (3, 3, 16)
    assert np.allclose(diff.view(3, 3, 16).numpy(), want_grad, atol=1e-6)


def test_feature_matching_waits_for_a_real_batch_resumes_and_is_checked():
    G, D = _LinearG(), _PoolD()
    loss = HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=4, feature_matching=1.0)
    assert "G/fm" not in loss.run_phase("G", None)  # no D phase yet: no real features to match
    _, _, _, trained = _fm_loss(1.0)
    fresh = HingeGANLoss(_LinearG(), _PoolD(), z_dim=6, num_classes=3, batch_size=4, feature_matching=1.0)
    fresh.load_state_dict(trained.state_dict())
    for a, b in zip(fresh._real_features, trained._real_features):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="read D's pooled features"):
        HingeGANLoss(_LinearG(), _MeanD(), z_dim=6, num_classes=3, batch_size=4, feature_matching=1.0)
    with pytest.raises(ValueError, match="loss weights >= 0"):
        HingeGANLoss(_LinearG(), _PoolD(), z_dim=6, num_classes=3, batch_size=4, feature_matching=-1.0)
    assert resolve_config()["feature_matching"] == 0.0


def test_feature_seeking_ratio_matches_a_per_element_reference_and_ignores_ds_feature_scale():
    rng = np.random.default_rng(7)
    f, z = rng.normal(size=(8, 5)), rng.normal(size=(8, 7))
    spread = np.abs(f - f.mean(0)).mean()
    want = np.abs(f[:4] - f[4:]).mean(1) / spread / np.abs(z[:4] - z[4:]).mean(1)
    got = feature_seeking_ratio(torch.tensor(f), torch.tensor(z)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    scaled = feature_seeking_ratio(3.0 * torch.tensor(f) - 1.0, torch.tensor(z)).numpy()
    np.testing.assert_allclose(scaled, want, rtol=1e-12)


def test_mode_seeking_features_term_uses_ds_pooled_features_of_the_paired_halves():
    """The G phase pairs its halves (same labels) and adds ``w * mean_i 1 / ratio_i`` with the ratio
    taken in D's pooled features (here the images' channel means), not in pixels."""
    torch.manual_seed(0)
    G, D = _LinearG(), _PoolD()
    loss = HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=10, ortho_weight=0.0, mode_seeking_features=1.5)
    loss.run_phase("D", (torch.randn(6, 3, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])))
    stats = loss.run_phase("G", None)
    z, y = G.calls[-1]
    assert torch.equal(y[:5], y[5:])
    with torch.no_grad():
        x = G(z, y)
        logits = D(x, y).numpy().astype(np.float64)
    feats = x.numpy().astype(np.float64).mean((2, 3))
    dz = np.abs((z[:5] - z[5:]).numpy()).mean(1)
    ratios = np.abs(feats[:5] - feats[5:]).mean(1) / np.abs(feats - feats.mean(0)).mean() / dz
    assert stats["G/ms_feature_ratio"].item() == pytest.approx(ratios.mean(), rel=1e-5)
    assert stats["G/loss"].item() == pytest.approx(-logits.mean() + 1.5 * np.mean(1 / (ratios + 1e-5)), rel=1e-5)
    assert "G/ms_ratio" not in stats  # the pixel term stays off
    assert loss.state_dict()["real_features"] is None  # nothing kept for feature matching
    with pytest.raises(ValueError, match="read D's pooled features"):
        HingeGANLoss(_LinearG(), _MeanD(), z_dim=6, num_classes=3, batch_size=4, mode_seeking_features=1.0)
    with pytest.raises(ValueError, match="odd"):
        HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=5, mode_seeking_features=1.0)
    assert resolve_config()["mode_seeking_features"] == 0.0


def test_pooled_ratio_matches_block_means_and_ignores_fine_speckle():
    """``mode_seeking_pool=k``: the pair and contrast distances on k x k block means, so speckle
    that averages out inside each block (here +-a alternating pixels) moves the plain ratio only."""
    rng = np.random.default_rng(11)
    x, z = rng.normal(size=(8, 3, 8, 8)), rng.normal(size=(8, 5))
    blocks = x.reshape(8, 3, 4, 2, 4, 2).mean((3, 5))  # (8, 3, 4, 4) 2x2 block means
    contrast = np.abs(blocks - blocks.mean((2, 3), keepdims=True)).mean()
    want = np.abs(blocks[:4] - blocks[4:]).reshape(4, -1).mean(1) / contrast / np.abs(z[:4] - z[4:]).mean(1)
    got = mode_seeking_ratio(torch.tensor(x), torch.tensor(z), "image", per_pair=True, pool=2).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    checker = np.where((np.arange(8)[:, None] + np.arange(8)[None, :]) % 2 == 0, 1.0, -1.0)
    speckle = 0.7 * checker * rng.choice([-1.0, 1.0], size=(8, 1, 1, 1))  # a different sign per image
    noisy = torch.tensor(x + speckle)
    np.testing.assert_allclose(mode_seeking_ratio(noisy, torch.tensor(z), "image", True, pool=2).numpy(), want,
                               rtol=1e-10)
    plain, plain_noisy = (mode_seeking_ratio(t, torch.tensor(z), "image", True).numpy() for t in (torch.tensor(x), noisy))
    assert not np.allclose(plain, plain_noisy, rtol=1e-3)
    with pytest.raises(ValueError, match="mode_seeking_pool"):
        HingeGANLoss(_LinearG(), _MeanD(), z_dim=6, num_classes=3, batch_size=4, mode_seeking=1.0, mode_seeking_pool=0)
    assert resolve_config()["mode_seeking_pool"] == 1


def test_the_g_phase_takes_the_pooled_ratio():
    torch.manual_seed(0)
    G = _LinearG()
    loss = HingeGANLoss(G, _MeanD(), z_dim=6, num_classes=3, batch_size=10, ortho_weight=0.0, mode_seeking=2.0,
                        mode_seeking_norm="image", mode_seeking_pairs=True, mode_seeking_pool=2)
    stats = loss.run_phase("G", None)
    z, y = G.calls[-1]
    with torch.no_grad():
        x = G(z, y).double()
    ratios = mode_seeking_ratio(x, z.double(), "image", per_pair=True, pool=2)
    assert stats["G/ms_ratio"].item() == pytest.approx(ratios.mean().item(), rel=1e-5)
    assert stats["G/loss"].item() == pytest.approx(-x.mean().item() + 2.0 * (1 / (ratios + 1e-5)).mean().item(),
                                                   rel=1e-5)


def test_mode_seeking_ignores_the_generators_own_grain():
    """A grain generator's noise would count as diversity in the mode-seeking term (independent noise per image
    widens every pair's distance); the term measures the image without it: the same ratio whatever the grain's
    std, while the G phase's gradient still reaches that std through D."""
    from attnorm.models.gan import Generator
    ratios = []
    for std in (0.0, 0.5):
        torch.manual_seed(0)
        G = Generator(resolution=16, ch=8, num_classes=3, z_dim=16, grain=0.06)
        with torch.no_grad():
            G.grain_std.fill_(std)
        loss = HingeGANLoss(G, _MeanD(), z_dim=16, num_classes=3, batch_size=8, ortho_weight=0.0, mode_seeking=1.0,
                            mode_seeking_norm="image", mode_seeking_pairs=True)
        torch.manual_seed(1)
        ratios.append(loss.run_phase("G", None)["G/ms_ratio"].item())
        assert G.grain_std.grad is not None and G.grain_std.grad.abs().sum() > 0
        assert G.pop_drawn(None) is None  # the G phase read it
    assert ratios[1] == pytest.approx(ratios[0], rel=1e-5)


def test_g_adversarial_kinds_and_top_k_against_a_hand_computation():
    """``g_adversarial``: hinge -logit, non-saturating log(1 + exp(-logit)), each averaged over the
    ceil(topk * b) fakes with the highest logits; the hinge over all fakes is ``g_hinge``."""
    from attnorm.losses.gan import g_adversarial, g_hinge
    logits = torch.tensor([0.5, -2.0, 1.5, -0.3, 3.0], dtype=torch.float64)
    assert g_adversarial(logits).item() == g_hinge(logits).item() == pytest.approx(-2.7 / 5)
    ns = [np.log1p(np.exp(-v)) for v in logits.tolist()]
    assert g_adversarial(logits, "ns").item() == pytest.approx(np.mean(ns), rel=1e-12)
    # top 3 of 5 by logit: 3.0, 1.5, 0.5; 0.5 * 5 = 2.5 -> 3
    assert g_adversarial(logits, "hinge", 0.5).item() == pytest.approx(-5.0 / 3, rel=1e-12)
    assert g_adversarial(logits, "ns", 0.5).item() == pytest.approx(np.mean([ns[4], ns[2], ns[0]]), rel=1e-12)
    assert g_adversarial(logits, "hinge", 0.01).item() == pytest.approx(-3.0)  # at least one
    g = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    g_adversarial(logits + g, "ns", 0.5).backward()  # the gradient reaches only the kept fakes: -sigmoid(-l) / k
    want = [-1 / (1 + np.exp(v)) / 3 if i in (0, 2, 4) else 0.0 for i, v in enumerate(logits.tolist())]
    assert g.grad.numpy() == pytest.approx(want, rel=1e-12)
    for kind, topk, match in (("wgan", 1.0, "g_adv"), ("ns", 0.0, "g_topk"), ("ns", 1.5, "g_topk")):
        with pytest.raises(ValueError, match=match):
            g_adversarial(logits, kind, topk)
        with pytest.raises(ValueError, match=match):
            resolve_config(overrides={"g_adv": kind, "g_topk": topk})
        with pytest.raises(ValueError, match=match):
            HingeGANLoss(_LinearG(), _MeanD(), z_dim=6, num_classes=3, batch_size=4, g_adv=kind, g_topk=topk)
    cfg = resolve_config()
    assert (cfg["g_adv"], cfg["g_topk"]) == ("hinge", 1.0)


def test_the_g_phase_uses_the_chosen_adversarial_loss():
    """The G phase's loss is g_adversarial of D's logits of its fakes (no other term here)."""
    from attnorm.losses.gan import g_adversarial
    for kind, topk in (("hinge", 1.0), ("ns", 1.0), ("ns", 0.5)):
        torch.manual_seed(3)
        G = _LinearG()
        loss = HingeGANLoss(G, _MeanD(), z_dim=6, num_classes=3, batch_size=8, ortho_weight=0.0, g_adv=kind, g_topk=topk)
        got = loss.run_phase("G", None)["G/loss"].item()
        z, y = G.calls[-1]
        with torch.no_grad():
            want = g_adversarial(G(z, y).mean((1, 2, 3)), kind, topk).item()
        assert got == pytest.approx(want, rel=1e-6)


def test_share_fakes_g_phase_trains_on_the_d_phases_images_with_one_g_forward():
    """``share_fakes``: the D phase generates (with G's graph, though the loop froze G for it) and scores the
    fakes detached; the G phase right after trains G on those very images with D as it is now: one G forward
    per step, G's gradient that of the hinge loss through the updated D at the D phase's z (hand-computed),
    G's requires_grad flags restored after the D phase, the halves' labels paired for the mode-seeking term."""
    torch.manual_seed(0)
    G, D = _LinearG(), _RecordingD()
    loss = HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=8, ortho_weight=0.0, share_fakes=True,
                        mode_seeking=1.0)
    G.requires_grad_(False)  # as the loop leaves it in the D phase
    x_real, y_real = torch.randn(8, 3, 4, 4), torch.randint(3, (8,))
    loss.run_phase("D", (x_real, y_real))
    assert len(G.calls) == 1 and not any(p.requires_grad for p in G.parameters())
    z, y = G.calls[-1]
    assert torch.equal(y[:4], y[4:])  # paired halves
    A, E = G.A.detach().numpy().astype(np.float64), G.E.detach().numpy().astype(np.float64)
    fake = z.numpy().astype(np.float64) @ A.T + E[y.numpy()]
    np.testing.assert_allclose(D.seen[-1][0][8:].reshape(8, -1).numpy(), fake, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        D.w.fill_(2.0)  # D's update between the phases
    G.requires_grad_(True)
    stats = loss.run_phase("G", None)
    assert len(G.calls) == 1  # no second G forward
    assert torch.equal(D.seen[-1][1], y)
    np.testing.assert_allclose(D.seen[-1][0].reshape(8, -1).numpy(), fake, rtol=1e-5, atol=1e-6)
    ratio = mode_seeking_ratio(torch.tensor(fake).view(8, 3, 4, 4), z.double(), "", False).item()
    assert stats["G/loss"].item() == pytest.approx(-2.0 * fake.mean() + 1.0 / (ratio + 1e-5), rel=1e-5)
    # the same loss written out on a fresh copy of G's weights, at the D phase's z and labels
    A2, E2 = torch.tensor(A, requires_grad=True), torch.tensor(E, requires_grad=True)
    img = (z.double() @ A2.T + E2[y]).view(8, 3, 4, 4)
    (-(2.0 * img).mean((1, 2, 3)).mean() + 1.0 / (mode_seeking_ratio(img, z.double()) + 1e-5)).backward()
    np.testing.assert_allclose(G.A.grad.numpy(), A2.grad.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(G.E.grad.numpy(), E2.grad.numpy(), rtol=1e-4, atol=1e-7)
    # a G phase without a D phase before it generates as usual
    loss.run_phase("G", None)
    assert len(G.calls) == 2
    with pytest.raises(ValueError, match="exclude each other"):
        HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=8, reuse_fakes=True, share_fakes=True)
    assert resolve_config()["share_fakes"] is False


class _ClassD(torch.nn.Module):
    """D(x, y) = mean(w * x) + c[y] (a class offset, as a projection D has): records what it scores."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7))
        self.c = torch.nn.Parameter(torch.tensor([1.5, -2.0, 0.25]))
        self.seen = []

    def forward(self, x, y):
        self.seen.append((x.detach().clone(), y.clone()))
        return (self.w * x).mean((1, 2, 3)) + self.c[y]


def _softplus(v):
    return np.log1p(np.exp(v))


def test_relativistic_pairing_loss_pairs_each_fake_with_a_real_image_of_its_class():
    """``relativistic``: the D phase draws its fakes with the real batch's labels and its loss is
    mean softplus(D(fake_i) - D(real_i)); the G phase's fakes take those labels (paired halves sharing them,
    as the mode-seeking term pairs them) and its loss is mean softplus(D(real_i) - D(fake_i)) with the D phase's
    real logits held fixed; values and G's gradient against a float64 hand computation, a D whose class offset
    cancels only when the pairs share a class."""
    torch.manual_seed(0)
    G, D = _LinearG(), _ClassD()
    loss = HingeGANLoss(G, D, z_dim=6, num_classes=3, batch_size=8, ortho_weight=0.0, relativistic=True,
                        mode_seeking=1.0, mode_seeking_pairs=True)
    x_real, y_real = torch.randn(8, 3, 4, 4), torch.tensor([0, 1, 2, 2, 1, 0, 0, 1])
    w, c = 0.7, np.array([1.5, -2.0, 0.25])
    d_stats = loss.run_phase("D", (x_real, y_real))
    z_d, y_d = G.calls[-1]
    assert torch.equal(y_d, y_real)  # the fakes are drawn with the real images' labels
    A, E = G.A.detach().double().numpy(), G.E.detach().double().numpy()
    fake_d = z_d.double().numpy() @ A.T + E[y_d.numpy()]
    real = w * x_real.double().numpy().reshape(8, -1).mean(1) + c[y_real.numpy()]
    fake = w * fake_d.mean(1) + c[y_real.numpy()]
    assert d_stats["D/loss"].item() == pytest.approx(_softplus(fake - real).mean(), rel=1e-5)
    # G phase: labels of the real batch's first half, repeated; each fake against the real logit of its index mod 4
    g_stats = loss.run_phase("G", None)
    z, y = G.calls[-1]
    assert torch.equal(y, y_real[:4].repeat(2))
    A2, E2 = torch.tensor(A, requires_grad=True), torch.tensor(E, requires_grad=True)
    img = (z.double() @ A2.T + E2[y]).view(8, 3, 4, 4)
    f = w * img.mean((1, 2, 3)) + torch.tensor(c)[y]
    r = torch.tensor(real)[torch.arange(8) % 4]
    ratios = mode_seeking_ratio(img, z.double(), "", True)
    want = torch.nn.functional.softplus(r - f).mean() + (1.0 / (ratios + 1e-5)).mean()
    want.backward()
    assert g_stats["G/loss"].item() == pytest.approx(want.item(), rel=1e-5)
    np.testing.assert_allclose(G.A.grad.numpy(), A2.grad.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(G.E.grad.numpy(), E2.grad.numpy(), rtol=1e-4, atol=1e-7)
    # a G phase without a D phase before it: the real logits count as 0
    torch.manual_seed(1)
    G.zero_grad()
    got = loss.run_phase("G", None)["G/loss"].item()
    z, y = G.calls[-1]
    with torch.no_grad():
        f = D(G(z, y), y).double()
        ratios = mode_seeking_ratio(G(z, y).double(), z.double(), "", True)
    assert got == pytest.approx((torch.nn.functional.softplus(-f).mean() + (1.0 / (ratios + 1e-5)).mean()).item(), rel=1e-5)


def test_relativistic_loss_refuses_what_it_replaces_in_one_line():
    for kw in ({"g_adv": "ns"}, {"g_topk": 0.5}, {"reuse_fakes": True}, {"share_fakes": True}):
        with pytest.raises(ValueError, match="relativistic loss replaces"):
            HingeGANLoss(_LinearG(), _ClassD(), z_dim=6, num_classes=3, batch_size=4, relativistic=True, **kw)
        with pytest.raises(ValueError, match="relativistic loss replaces"):
            resolve_config(overrides={"relativistic": True, **kw})
    assert resolve_config()["relativistic"] is False


def test_radial_power_spectrum_against_numpy_and_a_plane_wave():
    """Each image's mean removed, the 2-D DFT's power averaged per integer radius (numpy reference, every
    frequency placed by hand); a plane wave of 3 periods across the image has all its power at radius 3."""
    from attnorm.losses.gan import radial_power_spectrum
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 3, 8, 8)) + 5.0
    got = radial_power_spectrum(torch.tensor(a)).numpy()
    p = (np.abs(np.fft.fft2(a - a.mean((2, 3), keepdims=True))) ** 2).mean((0, 1))
    total, count = np.zeros(4), np.zeros(4)
    for u in range(8):
        for v in range(8):
            r = int(np.floor(np.hypot(u if u < 4 else u - 8, v if v < 4 else v - 8) + 0.5))
            if 1 <= r <= 4:
                total[r - 1] += p[u, v]
                count[r - 1] += 1
    np.testing.assert_allclose(got, total / count, rtol=1e-12)
    xx = np.arange(16)
    wave = np.broadcast_to(np.cos(2 * np.pi * 3 * xx / 16), (1, 1, 16, 16))
    spec = radial_power_spectrum(torch.tensor(wave.copy())).numpy()
    assert spec[2] > 0 and np.allclose(np.delete(spec, 2), 0, atol=1e-20)
    with pytest.raises(ValueError, match="square"):
        radial_power_spectrum(torch.zeros(1, 3, 8, 6))


def test_spectrum_matching_term_against_a_hand_computation_and_its_resume_state():
    """``spectrum_matching``: the D phase keeps a moving average (0.99) of the real batches' radial spectra; the
    G phase adds w * mean_k (log P_fake(k) - log P_real(k))^2; the average is part of the loss state."""
    from attnorm.losses.gan import radial_power_spectrum
    torch.manual_seed(0)
    G = _LinearG()
    loss = HingeGANLoss(G, _RecordingD(), z_dim=6, num_classes=3, batch_size=8, ortho_weight=0.0, spectrum_matching=2.0)
    reals = [torch.randn(8, 3, 4, 4) * s for s in (1.0, 3.0)]
    for x in reals:
        loss.run_phase("D", (x, torch.randint(3, (8,))))
    s0, s1 = (radial_power_spectrum(x.double()).numpy() for x in reals)
    target = 0.99 * s0 + 0.01 * s1
    state = loss.state_dict()
    np.testing.assert_allclose(state["real_spectrum"].numpy(), target, rtol=1e-5)
    stats = loss.run_phase("G", None)
    z, y = G.calls[-1]
    with torch.no_grad():
        fake = G(z, y).double()
    sm = ((np.log(radial_power_spectrum(fake).numpy()) - np.log(target)) ** 2).mean()
    assert stats["G/spectrum"].item() == pytest.approx(sm, rel=1e-4)
    assert stats["G/loss"].item() == pytest.approx(-0.5 * fake.mean().item() + 2.0 * sm, rel=1e-4)
    fresh = HingeGANLoss(G, _RecordingD(), z_dim=6, num_classes=3, batch_size=8, ortho_weight=0.0, spectrum_matching=2.0)
    fresh.load_state_dict(state)
    torch.manual_seed(5)
    a = fresh.run_phase("G", None)["G/spectrum"].item()
    torch.manual_seed(5)
    assert loss.run_phase("G", None)["G/spectrum"].item() == a
    with pytest.raises(ValueError, match="spectrum_matching"):
        HingeGANLoss(G, _MeanD(), z_dim=6, num_classes=3, batch_size=8, spectrum_matching=-1.0)
    assert resolve_config()["spectrum_matching"] == 0.0
