"""Inpainting losses against independent references (BFS distances, hand-computed GP, direct L1)."""

from collections import deque

import numpy as np
import pytest
import torch
from torch import nn

from attnorm.losses.inpaint import (
    InpaintLoss, discounted_weights, distance_to_known, gradient_penalty, hole_l1, known_l1,
)
from attnorm.models.inpaint import GlobalCritic, InpaintGenerator, LocalCritic, PatchCritic


def bfs_distance(hole: np.ndarray, metric: str) -> np.ndarray:
    """Independent multi-source BFS from all known pixels (hole == False)."""
    h, w = hole.shape
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if metric == "chessboard":
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    dist = np.full((h, w), -1)
    q = deque()
    for y in range(h):
        for x in range(w):
            if not hole[y, x]:
                dist[y, x] = 0
                q.append((y, x))
    while q:
        y, x = q.popleft()
        for dy, dx in steps:
            ny, nx = y + dy, x + dx
            if 0 <= ny < h and 0 <= nx < w and dist[ny, nx] < 0:
                dist[ny, nx] = dist[y, x] + 1
                q.append((ny, nx))
    return dist


def _masks():
    rng = np.random.default_rng(0)
    box = np.zeros((11, 13), bool)
    box[2:9, 3:12] = True
    ell = np.zeros((12, 12), bool)
    ell[1:11, 1:4] = True
    ell[8:11, 1:11] = True
    blobs = rng.random((20, 17)) < 0.75  # ragged holes, most pixels missing
    edge = np.zeros((9, 9), bool)
    edge[:, :6] = True  # hole touching the image border
    return [box, ell, blobs, edge]


@pytest.mark.parametrize("metric", ["chessboard", "cityblock"])
def test_distance_matches_bfs(metric):
    for hole in _masks():
        got = distance_to_known(torch.from_numpy(hole).float()[None, None], metric)[0, 0].numpy()
        np.testing.assert_array_equal(got, bfs_distance(hole, metric))
    # batched: each sample its own
    holes = np.stack([_masks()[0], ~_masks()[0]])
    got = distance_to_known(torch.from_numpy(holes).float()[:, None], metric)[:, 0].numpy()
    for i in range(2):
        np.testing.assert_array_equal(got[i], bfs_distance(holes[i], metric))


def test_distance_matches_scipy():
    from scipy import ndimage
    hole = _masks()[2]
    for metric, sp in (("chessboard", "chessboard"), ("cityblock", "taxicab")):
        got = distance_to_known(torch.from_numpy(hole).float()[None, None], metric)[0, 0].numpy()
        np.testing.assert_array_equal(got, ndimage.distance_transform_cdt(hole, metric=sp))


def test_discounted_weight_on_hand_built_mask():
    m = torch.zeros(1, 1, 11, 11)
    m[..., 2:9, 2:9] = 1  # 7x7 hole: rings at chessboard distance 1, 2, 3, 4 (centre)
    w = discounted_weights(m, gamma=0.9)[0, 0]
    assert w[0, 0] == 1 and w[1, 5] == 1  # known
    for (y, x), d in {(2, 2): 1, (2, 5): 1, (3, 3): 2, (4, 6): 3, (5, 5): 4, (8, 8): 1, (7, 5): 2}.items():
        assert w[y, x].item() == pytest.approx(0.9 ** d), (y, x)
    # the whole image missing: measured from outside the image
    full = distance_to_known(torch.ones(1, 1, 5, 5))[0, 0]
    assert full[0, 0] == 1 and full[1, 1] == 2 and full[2, 2] == 3 and full[0, 2] == 1


def test_l1_terms_vs_direct_formulas():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 3, 6, 7, generator=g), torch.rand(2, 3, 6, 7, generator=g)
    mask = (torch.rand(2, 1, 6, 7, generator=g) > 0.6).float()
    weights = torch.rand(2, 1, 6, 7, generator=g)
    p, t, m, w = (a.double().numpy() for a in (pred, target, mask, weights))
    num_h = den_h = num_k = den_k = 0.0
    for b in range(2):
        for y in range(6):
            for x in range(7):
                for c in range(3):
                    e = abs(p[b, c, y, x] - t[b, c, y, x])
                    if m[b, 0, y, x] == 1:
                        num_h, den_h = num_h + e * w[b, 0, y, x], den_h + 1
                    else:
                        num_k, den_k = num_k + e, den_k + 1
    assert hole_l1(pred, target, mask, weights).item() == pytest.approx(num_h / den_h, rel=1e-5)
    assert known_l1(pred, target, mask).item() == pytest.approx(num_k / den_k, rel=1e-5)
    assert hole_l1(pred, target, torch.zeros_like(mask)).item() == 0


class Linear(nn.Module):
    """D(x) = sum(w * x): its input gradient is w everywhere."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1, keepdim=True)


def test_gradient_penalty_on_linear_critic():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(1, 3, 5, 5, generator=g) * 0.3
    critic = Linear(w.clone())
    real, fake = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    mask = torch.zeros(4, 1, 5, 5)
    mask[:, :, 1:4, 2:5] = 1
    mask[3] = 0  # a sample without hole: norm 0, penalty (0 - 1)^2
    masked_norm = (w * mask[0]).pow(2).sum().sqrt()
    expected = 10 * ((masked_norm - 1) ** 2 * 3 + 1) / 4
    gp = gradient_penalty(critic, real, fake, mask)
    assert gp.item() == pytest.approx(expected.item(), rel=1e-5)
    full = gradient_penalty(critic, real, fake, None, weight=2.0)
    assert full.item() == pytest.approx(2 * (w.norm() - 1).item() ** 2, rel=1e-5)
    # differentiable w.r.t. the critic: d/dw 10 (|w m| - 1)^2 = 20 (|w m| - 1) w m / |w m| (one sample)
    gp1 = gradient_penalty(critic, real[:1], fake[:1], mask[:1])
    (grad,) = torch.autograd.grad(gp1, critic.w)
    torch.testing.assert_close(grad, 20 * (masked_norm - 1) * w * mask[0] / masked_norm, rtol=1e-4, atol=1e-6)


class Const(nn.Module):
    """Patch critic stub: +a on images whose mean is > 0.5 (the 'real' ones below), -b otherwise."""

    def forward(self, x, mask):
        score = torch.where(x.flatten(1).mean(1) > 0.5, 0.25, -3.0)
        return score.view(-1, 1, 1, 1).expand(-1, 1, 2, 2)


def test_hinge_with_patch_critic_stub():
    real = torch.ones(2, 3, 8, 8)
    refined = torch.zeros(2, 3, 8, 8)
    mask = torch.ones(2, 1, 8, 8)
    loss = InpaintLoss(patch_critic=Const())
    d = loss.discriminator_step(real, refined, mask)
    assert d["loss"].item() == pytest.approx(0.75 + 0.0)  # relu(1 - 0.25) + relu(1 - 3)
    gen = loss.generator_step(real, mask, refined, refined)
    assert gen["g_adv"].item() == pytest.approx(3.0)


def test_generator_loss_formula_without_critics():
    g = torch.Generator().manual_seed(2)
    real, coarse, refined = (torch.rand(2, 3, 12, 12, generator=g) * 2 - 1 for _ in range(3))
    mask = torch.zeros(2, 1, 12, 12)
    mask[:, :, 3:9, 2:10] = 1
    gen = InpaintGenerator(width=0.125, num_entities=4)
    out = InpaintLoss().generator_step(real, mask, coarse, refined, generator=gen)
    w = 0.9 ** torch.from_numpy(bfs_distance(mask[0, 0].bool().numpy(), "chessboard")).float()

    def hole(p):
        return ((p - real).abs() * mask * w).sum() / (mask.sum() * 3)

    def known(p):
        return ((p - real).abs() * (1 - mask)).sum() / ((1 - mask).sum() * 3)

    ortho = sum(((m.entities @ m.entities.t() - torch.eye(4)) ** 2).sum() for m in [gen.attention_layer])
    expected = 1.4 * (1.2 * hole(coarse) + hole(refined)) + 1.2 * (1.2 * known(coarse) + known(refined)) + 0.2 * ortho
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(out) == {"loss", "hole_l1", "known_l1", "ortho"}


def test_wgan_steps_with_global_and_local_critics():
    torch.manual_seed(0)
    gen = InpaintGenerator(width=0.125, num_entities=4)
    gc, lc = GlobalCritic(32, width=0.125), LocalCritic(16, width=0.125)
    loss = InpaintLoss(gc, lc)
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 4:16, 6:18] = 1
    mask[1, :, 18:30, 10:24] = 1
    coarse, refined = gen(real, mask)
    d = loss.discriminator_step(real, refined, mask)
    d["loss"].backward()
    assert all(p.grad is None for p in gen.parameters())  # fake is detached
    assert all(p.grad is not None for p in list(gc.parameters()) + list(lc.parameters()))
    expected = d["d_global_fake"] - d["d_global_real"] + d["gp_global"] + d["d_local_fake"] - d["d_local_real"] + d["gp_local"]
    assert d["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    gc.zero_grad(), lc.zero_grad()
    out = loss.generator_step(real, mask, coarse, refined, generator=gen)
    assert {"loss", "hole_l1", "known_l1", "ortho", "g_adv"} <= set(out)
    out["loss"].backward()
    assert gen.coarse_encoder[0].weight.grad is not None and torch.isfinite(out["loss"])
    # warm-up: no adversarial term, critics untouched
    warm = InpaintLoss(gc, lc, l1_only=True).generator_step(real, mask, coarse.detach(), refined.detach())
    assert "g_adv" not in warm


def test_patch_critic_loss_runs():
    pc = PatchCritic(width=0.125)
    loss = InpaintLoss(patch_critic=pc)
    real = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 10:30, 5:40] = 1
    d = loss.discriminator_step(real, real * 0, mask)
    assert torch.isfinite(d["loss"]) and "d_hinge" in d
    with pytest.raises(ValueError):
        InpaintLoss(GlobalCritic(64), patch_critic=pc)


def test_few_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    gen = InpaintGenerator(width=0.125, num_entities=4)
    gc, lc = GlobalCritic(32, width=0.125), LocalCritic(16, width=0.125)
    loss = InpaintLoss(gc, lc)
    opt_g = torch.optim.Adam(gen.parameters(), 2e-3, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(list(gc.parameters()) + list(lc.parameters()), 1e-4, betas=(0.5, 0.9))
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    real = torch.stack([xx, yy, xx * yy]).unsqueeze(0).repeat(2, 1, 1, 1)  # smooth, easy to fill
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:20, 10:22] = 1
    first = last = None
    for step in range(25):
        coarse, refined = gen(real, mask)
        opt_d.zero_grad()
        loss.discriminator_step(real, refined, mask)["loss"].backward()
        opt_d.step()
        opt_g.zero_grad()
        out = loss.generator_step(real, mask, coarse, refined, generator=gen)
        out["loss"].backward()
        opt_g.step()
        first = out["hole_l1"].item() if first is None else first
        last = out["hole_l1"].item()
    assert last < 0.6 * first, (first, last)


def test_ssim_map_mean_equals_scikit_image():
    from skimage.metrics import structural_similarity

    from attnorm.losses.inpaint import ssim_map
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 40, 33, generator=g, dtype=torch.float64) * 2 - 1
    y = (x + 0.3 * torch.randn(1, 3, 40, 33, generator=g, dtype=torch.float64)).clamp(-1, 1)
    ours = float(ssim_map(x, y).mean())
    ref = structural_similarity(x[0].permute(1, 2, 0).numpy(), y[0].permute(1, 2, 0).numpy(), channel_axis=-1,
                                data_range=2.0)
    assert ours == pytest.approx(ref, abs=1e-10)


def test_hole_ssim_loss_zero_for_a_perfect_fill_and_only_sees_the_hole():
    from attnorm.losses.inpaint import hole_ssim_loss
    g = torch.Generator().manual_seed(1)
    real = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    m = torch.zeros(2, 1, 32, 32)
    m[:, :, 10:20, 12:22] = 1
    assert float(hole_ssim_loss(real, real, m)) == pytest.approx(0.0, abs=1e-6)
    wrong_outside = real.clone()
    wrong_outside[..., :3, :] = -real[..., :3, :]  # far from the hole: not composited in
    assert float(hole_ssim_loss(wrong_outside, real, m)) == pytest.approx(0.0, abs=1e-6)
    flat = torch.zeros_like(real)
    loss = hole_ssim_loss(flat.requires_grad_(), real, m)
    assert 0.1 < float(loss.detach()) <= 2.0
    loss.backward()
    assert flat.grad[m.expand_as(flat) == 0].abs().max() == 0 and flat.grad.abs().sum() > 0
    assert float(hole_ssim_loss(flat, real, torch.zeros_like(m))) == 0.0
