"""Inpainting losses: spatially discounted L1, known-pixel L1, WGAN-GP in the hole, and the
``InpaintLoss`` object that combines them for discriminator and generator steps.

Masks are (b, 1, H, W) floats, 1 = hole. Everything here is pure torch (the distance
transform is an iterated 3x3 dilation, so it runs on the GPU with the batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnorm.layers import orthogonality_loss
from attnorm.losses.gan import d_hinge
from attnorm.models.inpaint import crop_hole_patches

__all__ = [
    "InpaintLoss", "discounted_weights", "distance_to_known", "gradient_penalty", "hole_l1", "hole_ssim_loss",
    "known_l1", "ssim_map",
]


def distance_to_known(mask: Tensor, metric: str = "chessboard") -> Tensor:
    """Grid distance from every pixel to the nearest known pixel (mask < 0.5).

    Args:
        mask: (b, 1, H, W), 1 = hole.
        metric: ``"chessboard"`` (8-neighbour steps, d = max(|dy|, |dx|)) or
            ``"cityblock"`` (4-neighbour steps, d = |dy| + |dx|).
    Returns: (b, 1, H, W) float: 0 on known pixels, 1 on hole pixels touching a known
    pixel, and so on. A sample without any known pixel is measured from outside the
    image instead (as if a ring of known pixels surrounded it), so its weights stay finite.

    Computed by growing the known region one step at a time (a breadth-first search
    done as dilations), at most max(H, W) steps.
    """
    if metric not in ("chessboard", "cityblock"):
        raise ValueError(f"metric must be 'chessboard' or 'cityblock', got {metric!r}")
    if mask.dim() != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (b, 1, H, W), got shape {tuple(mask.shape)}")
    b, _, h, w = mask.shape
    reached = mask < 0.5  # (b, 1, H, W) bool
    none_known = ~reached.flatten(1).any(1)  # (b,)
    dist = torch.zeros(mask.shape, device=mask.device, dtype=torch.float32)
    step = 0
    while not bool(reached.all()):
        step += 1
        padded = F.pad(reached.float(), (1, 1, 1, 1))  # (b, 1, H+2, W+2), outside = not known
        if bool(none_known.any()):  # ... except for samples with no known pixel at all
            padded[none_known] = F.pad(reached[none_known].float(), (1, 1, 1, 1), value=1.0)
        if metric == "chessboard":
            grown = F.max_pool2d(padded, 3, stride=1) > 0
        else:
            c = padded[..., 1:-1, 1:-1]
            grown = (c + padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1]
                     + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]) > 0
        dist[grown & ~reached] = float(step)
        reached = grown
    return dist


def discounted_weights(mask: Tensor, gamma: float = 0.9, metric: str = "chessboard") -> Tensor:
    """DeepFill's spatial discount ``gamma ** d``, d = :func:`distance_to_known` (1 on known pixels).

    DeepFill v1 computes it in closed form for an axis-aligned box, counting the hole's
    edge pixels as distance 0; here hole pixels next to a known pixel have d = 1, which
    only scales the hole loss by the constant ``gamma``, and any hole shape works.
    """
    return torch.pow(torch.as_tensor(gamma, dtype=torch.float32, device=mask.device),
                     distance_to_known(mask, metric))


def hole_l1(pred: Tensor, target: Tensor, mask: Tensor, weights: Tensor | None = None) -> Tensor:
    """Weighted L1 over the hole: ``mean(|pred - target| * m * w) / mean(m)`` over the batch.

    With ``weights=None`` it is the plain mean absolute error over hole pixels (and channels).
    0 when the batch has no hole pixel.
    """
    m = mask.to(pred.dtype)
    err = (pred - target).abs() * m
    if weights is not None:
        err = err * weights.to(pred.dtype)
    return err.mean() / m.expand_as(err).mean().clamp_min(1e-8)


def known_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """DeepFill's autoencoder loss: ``mean(|pred - target| * (1 - m)) / mean(1 - m)`` over the batch."""
    keep = 1 - mask.to(pred.dtype)
    err = (pred - target).abs() * keep
    return err.mean() / keep.expand_as(err).mean().clamp_min(1e-8)


def gradient_penalty(critic, real: Tensor, fake: Tensor, mask: Tensor | None = None,
                     weight: float = 10.0, eps: Tensor | None = None, critic_args: tuple = ()) -> Tensor:
    """WGAN-GP penalty ``weight * mean_b (||grad D(x_hat) * m|| - 1)^2`` on interpolates.

    Args:
        critic: callable ``critic(x, *critic_args)`` returning (b, ...) scores (summed per sample).
        real, fake: (b, c, H, W); ``x_hat = eps * real + (1 - eps) * fake``.
        mask: (b or 1, 1, H, W): the gradient norm is taken over hole pixels only
            (DeepFill's "penalty inside the hole"). None: the whole image.
        weight: lambda (10).
        eps: optional (b, 1, 1, 1) interpolation factors; uniform random by default.
        critic_args: extra critic inputs (e.g. the mask for :class:`PatchCritic`).

    DeepFill's code uses the root *mean* square of the masked gradient; this is the
    standard norm (root sum of squares) restricted to the hole.
    """
    b = real.shape[0]
    if eps is None:
        eps = torch.rand(b, 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat, *critic_args)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    if mask is not None:
        grad = grad * mask.to(grad.dtype)
    norm = (grad.pow(2).flatten(1).sum(1) + 1e-12).sqrt()  # (b,)
    return weight * (norm - 1).pow(2).mean()


def ssim_map(x: Tensor, y: Tensor, data_range: float = 2.0, win: int = 7, k1: float = 0.01,
             k2: float = 0.03) -> Tensor:
    """Differentiable SSIM map with scikit-image's defaults (uniform ``win`` x ``win`` window, sample
    covariances ``N / (N - 1)``, K1 0.01, K2 0.03); (b, c, H, W) -> (b, c, H - win + 1, W - win + 1)
    (valid windows only). ``data_range`` 2 for images in [-1, 1]. Its mean over the valid windows
    and channels equals ``skimage.metrics.structural_similarity(..., channel_axis)`` (which crops
    the same (win - 1) / 2 border)."""
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    n = win * win
    cov = n / (n - 1)
    mean = lambda t: F.avg_pool2d(t, win, stride=1)  # noqa: E731
    ux, uy = mean(x), mean(y)
    vx = cov * (mean(x * x) - ux * ux)
    vy = cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def hole_ssim_loss(pred: Tensor, target: Tensor, mask: Tensor, win: int = 7) -> Tensor:
    """``1 - mean SSIM`` of the composite (``pred`` in the hole, ``target`` elsewhere) over the SSIM
    windows that touch the hole; 0 when the batch has no hole."""
    m = mask.to(pred.dtype)
    comp = pred * m + target * (1 - m)
    smap = ssim_map(comp.float(), target.float(), win=win)  # (b, c, H', W')
    touch = (F.max_pool2d(m.float(), win, stride=1) > 0).to(smap.dtype)  # windows with a hole pixel
    denom = touch.expand_as(smap).sum()
    if float(denom) == 0:
        return pred.new_zeros(())
    return ((1 - smap) * touch).sum() / denom


class InpaintLoss:
    """Losses of the two-stage inpainting GAN, DeepFill v1 style, with the AN authors' weights.

    Adversarial part, chosen by the critics given:
      * ``global_critic`` and/or ``local_critic`` (:class:`GlobalCritic` /
        :class:`LocalCritic`): WGAN with gradient penalty inside the hole; the local
        critic sees the hole patch (:func:`crop_hole_patches`).
      * ``patch_critic`` (:class:`PatchCritic`, free-form holes): hinge loss, no penalty.
      * none: reconstruction only.

    The critics score the *composited* result ``refined * m + real * (1 - m)``.

    Args (weights default to the authors' code, REFERENCE.md section 3):
        gan_weight: adversarial term in the generator loss (1e-3).
        hole_weight: discounted hole L1 (1.4).
        known_weight: known-pixel L1, normalised by the known area (1.2).
        coarse_weight: multiplier of the stage-1 (coarse) L1 terms (1.2; DeepFill's
            COARSE_L1_ALPHA -- read as REFERENCE's "pretrain L1 of 1.2 on both stages");
            stage 2 has multiplier 1.
        ortho_weight: AN orthogonality regulariser of the generator (0.2).
        gp_weight: WGAN-GP lambda (10).
        gamma: spatial discount base (0.9); ``None`` turns the discount off.
        discount_metric: ``"chessboard"`` or ``"cityblock"`` distance for the discount.
        l1_only: warm-up mode: the generator loss has no adversarial term (DeepFill's
            PRETRAIN_COARSE_NETWORK), so no critic is run in ``generator_step``.
        ssim_weight: weight of :func:`hole_ssim_loss` on the refined composite (0: off; not in the
            paper; the CPU recipe uses it because SSIM is one of its targets).

    ``discriminator_step(real, refined, mask)`` and
    ``generator_step(real, mask, coarse, refined, generator=None)`` return dicts of
    scalar tensors; ``"loss"`` is the one to backpropagate, the others are detached
    for logging.
    """

    def __init__(self, global_critic: nn.Module | None = None, local_critic: nn.Module | None = None,
                 patch_critic: nn.Module | None = None, *, gan_weight: float = 1e-3, hole_weight: float = 1.4,
                 known_weight: float = 1.2, coarse_weight: float = 1.2, ortho_weight: float = 0.2,
                 gp_weight: float = 10.0, gamma: float | None = 0.9, discount_metric: str = "chessboard",
                 l1_only: bool = False, ssim_weight: float = 0.0) -> None:
        if patch_critic is not None and (global_critic is not None or local_critic is not None):
            raise ValueError("use either global/local WGAN critics or a patch critic, not both")
        self.global_critic, self.local_critic, self.patch_critic = global_critic, local_critic, patch_critic
        self.gan_weight, self.hole_weight, self.known_weight = gan_weight, hole_weight, known_weight
        self.coarse_weight, self.ortho_weight, self.gp_weight = coarse_weight, ortho_weight, gp_weight
        self.gamma, self.discount_metric, self.l1_only = gamma, discount_metric, l1_only
        self.ssim_weight = ssim_weight

    @property
    def has_critic(self) -> bool:
        return any(c is not None for c in (self.global_critic, self.local_critic, self.patch_critic))

    def _local_patches(self, tensors: list[Tensor], mask: Tensor) -> list[Tensor]:
        return crop_hole_patches(tensors + [mask], mask, self.local_critic.input_size)

    @staticmethod
    def composite(real: Tensor, refined: Tensor, mask: Tensor) -> Tensor:
        m = mask.to(refined.dtype)
        return refined * m + real * (1 - m)

    def discriminator_step(self, real: Tensor, refined: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Critic loss on real vs composited fake (the generator's output is detached)."""
        if not self.has_critic:
            raise ValueError("InpaintLoss has no critic: discriminator_step needs one")
        fake = self.composite(real, refined.detach(), mask)
        out: dict[str, Tensor] = {}
        total = real.new_zeros(())
        if self.patch_critic is not None:
            d_real = self.patch_critic(real, mask)
            d_fake = self.patch_critic(fake, mask)
            hinge = d_hinge(d_real, d_fake)
            total = total + hinge
            out.update(d_hinge=hinge.detach(), d_real=d_real.mean().detach(), d_fake=d_fake.mean().detach())
        for name, critic in (("global", self.global_critic), ("local", self.local_critic)):
            if critic is None:
                continue
            r, f, m = (real, fake, mask) if name == "global" else self._local_patches([real, fake], mask)
            d_real, d_fake = critic(r).mean(), critic(f).mean()
            gp = gradient_penalty(critic, r, f, m, weight=self.gp_weight)
            total = total + d_fake - d_real + gp
            out.update({f"d_{name}_real": d_real.detach(), f"d_{name}_fake": d_fake.detach(),
                        f"gp_{name}": gp.detach(), f"wdist_{name}": (d_real - d_fake).detach()})
        out["loss"] = total
        return out

    def generator_step(self, real: Tensor, mask: Tensor, coarse: Tensor, refined: Tensor,
                       generator: nn.Module | None = None) -> dict[str, Tensor]:
        """Generator loss: both stages' hole and known L1, adversarial term, AN orthogonality.

        ``generator``, when given, contributes ``ortho_weight * orthogonality_loss(generator)``.
        """
        w = discounted_weights(mask, self.gamma, self.discount_metric) if self.gamma is not None else None
        hole = self.coarse_weight * hole_l1(coarse, real, mask, w) + hole_l1(refined, real, mask, w)
        known = self.coarse_weight * known_l1(coarse, real, mask) + known_l1(refined, real, mask)
        total = self.hole_weight * hole + self.known_weight * known
        out = {"hole_l1": hole.detach(), "known_l1": known.detach()}
        if self.ssim_weight:
            ss = hole_ssim_loss(refined, real, mask)
            total = total + self.ssim_weight * ss
            out["hole_ssim_loss"] = ss.detach()
        if generator is not None and self.ortho_weight:
            ortho = orthogonality_loss(generator)
            total = total + self.ortho_weight * ortho
            out["ortho"] = ortho.detach()
        if self.has_critic and not self.l1_only:
            fake = self.composite(real, refined, mask)
            adv = real.new_zeros(())
            if self.patch_critic is not None:
                adv = adv - self.patch_critic(fake, mask).mean()
            if self.global_critic is not None:
                adv = adv - self.global_critic(fake).mean()
            if self.local_critic is not None:
                (f,) = crop_hole_patches([fake], mask, self.local_critic.input_size)
                adv = adv - self.local_critic(f).mean()
            total = total + self.gan_weight * adv
            out["g_adv"] = adv.detach()
        out["loss"] = total
        return out
