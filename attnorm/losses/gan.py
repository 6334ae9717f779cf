"""Hinge GAN loss as a phase-runner for :class:`attnorm.training.loop.TrainingLoop`.

Phases:

* ``"D"``: ``mean(relu(1 - D(x, y))) + mean(relu(1 + D(G(z, y_f), y_f))) + w * ortho(D)``
* ``"G"``: ``-mean(D(G(z, y_f), y_f)) + w * ortho(G)``

``y_f`` are uniform random class labels, ``z ~ N(0, I)``; ``ortho`` is the sum of
``||K K^T - I||_F^2`` over every AttentiveNorm layer of the net
(:func:`attnorm.layers.orthogonality_loss`), ``w = ortho_weight``. D steps per G
step are the D phase's ``repeats`` in the loop. With an ``augment`` policy (DiffAugment,
:mod:`attnorm.losses.augment`) every image D sees, real or fake, in both phases is augmented
first: ``D(T(x), y)`` with a fresh random ``T`` per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnorm.layers import orthogonality_loss
from attnorm.losses.augment import diff_augment, parse_policy


def d_hinge(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_hinge(fake_logits: Tensor) -> Tensor:
    return -fake_logits.mean()


def _inner(m: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (a net used frozen must bypass DDP's reducer)."""
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


class HingeGANLoss:
    """Args:
        G, D: generator ``G(z, y)`` and discriminator ``D(x, y)`` (labels (b,) long), plain or
            DDP-wrapped; the net not being trained in a phase is called unwrapped.
        z_dim, num_classes: latent size and class count for sampling fakes.
        batch_size: fakes per G phase (the D phase uses the real batch's size).
        ortho_weight: weight of the AN orthogonality penalty, in both phases.
        device: where z and the batch go.
        augment: DiffAugment policy for every image D sees, e.g. ``"color,translation,cutout"``
            ("" or None: none).
    """

    def __init__(self, G: nn.Module, D: nn.Module, z_dim: int, num_classes: int, batch_size: int,
                 ortho_weight: float = 1e-3, device: str | torch.device = "cpu", augment: str | None = None) -> None:
        self.G, self.D = G, D
        self.augment = parse_policy(augment)
        self.z_dim, self.num_classes, self.batch_size = z_dim, num_classes, batch_size
        self.ortho_weight, self.device = ortho_weight, torch.device(device)

    def sample_latents(self, b: int) -> tuple[Tensor, Tensor]:
        z = torch.randn(b, self.z_dim, device=self.device)
        y = torch.randint(self.num_classes, (b,), device=self.device)
        return z, y

    def run_phase(self, name: str, batch) -> dict[str, Tensor]:
        if name == "D":
            x, y = batch
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            z, y_fake = self.sample_latents(x.shape[0])
            with torch.no_grad():
                fake = _inner(self.G)(z, y_fake)
            logits = self.D(diff_augment(torch.cat([x, fake]), self.augment), torch.cat([y, y_fake]))  # (2b,)
            real_logits, fake_logits = logits.split(x.shape[0])
            adv = d_hinge(real_logits, fake_logits)
            ortho = orthogonality_loss(_inner(self.D))
            loss = adv + self.ortho_weight * ortho
            loss.backward()
            return {"D/loss": loss.detach(), "D/real": real_logits.detach().mean(),
                    "D/fake": fake_logits.detach().mean(), "D/ortho": ortho.detach()}
        if name == "G":
            z, y_fake = self.sample_latents(self.batch_size)
            adv = g_hinge(_inner(self.D)(diff_augment(self.G(z, y_fake), self.augment), y_fake))
            ortho = orthogonality_loss(_inner(self.G))
            loss = adv + self.ortho_weight * ortho
            loss.backward()
            return {"G/loss": loss.detach(), "G/ortho": ortho.detach()}
        raise ValueError(f"unknown phase {name!r}; HingeGANLoss runs 'D' and 'G'")
