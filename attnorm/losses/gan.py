"""Hinge GAN loss as a phase-runner for :class:`attnorm.training.loop.TrainingLoop`.

Phases:

* ``"D"``: ``mean(relu(1 - D(x, y))) + mean(relu(1 + D(G(z, y_f), y_f))) + w * ortho(D)
  [+ l * mean(relu(1 - D(x, y) + D(x, y_w)))] [+ k * r1 / 2 * mean(||grad_x D(x, y)||^2)]
  [+ c * (mean((D(x, y) - a_F)^2) + mean((D(G(z), y_f) - a_R)^2))]``
* ``"G"``: ``-mean(D(G(z, y_f), y_f)) + w * ortho(G) [+ m / (d_img / d_z + 1e-5)]``

``y_f`` are uniform random class labels, ``z ~ N(0, I)``; ``ortho`` is the sum of
``||K K^T - I||_F^2`` over every AttentiveNorm layer of the net
(:func:`attnorm.layers.orthogonality_loss`), ``w = ortho_weight``. D steps per G
step are the D phase's ``repeats`` in the loop. With an ``augment`` policy (DiffAugment,
:mod:`attnorm.losses.augment`) every image D sees, real or fake, in both phases is augmented
first: ``D(T(x), y)`` with a fresh random ``T`` per image.

The optional D term, weight ``l = wrong_label``, is a class margin in the spirit of GAN-CLS's
matching-aware discriminator (Reed et al., ICML 2016): each real image must score at least 1 higher
with its own label than with a wrong label ``y_w`` (uniform over the other classes). D then learns
what each class looks like from the real data alone, instead of only from the fakes' labels, which
carry no class information while G ignores them. A margin between the two labels of one image
is blind to the label-independent part of the logit (it cancels), so it cannot move the
real/fake level; GAN-CLS's plain negative ``relu(1 + D(x, y_w))`` instead
pulls every logit to -1 while D cannot yet tell the classes apart (measured: D went constant).

The optional R1 term (Mescheder et al., ICML 2018), weight ``r1`` (gamma): the squared gradient
norm of D's logits on the real images, penalising D for slopes on the data manifold. Lazy as in
StyleGAN2: computed every ``k = r1_every``-th D phase and scaled by ``k``; the gradient is taken
w.r.t. the real images as D sees them (after DiffAugment, if any).

The optional LeCam term (Tseng et al., CVPR 2021), weight ``c = lecam``: ``a_R`` and ``a_F`` are
exponential moving averages (decay ``lecam_decay``) of D's mean real and fake logits; pulling real
logits towards the fake average and fake logits towards the real one keeps D's outputs from
drifting apart (a bound on the LeCam divergence between real and fake).

The optional G term is MSGAN's mode-seeking regulariser (Mao et al., CVPR 2019), weight
``m = mode_seeking``: the G batch is two halves with the same labels and independent z, and
``d_img / d_z = mean|G(z1, y) - G(z2, y)| / mean|z1 - z2|``. Raising that ratio pushes two
latents of one class apart in image space, against within-class mode collapse. The pixel
distance also grows with contrast, and at weight 0.6-2.0 the demo's images came out over-bright
and over-saturated (pixel std 1.15-1.3x the data's); ``mode_seeking_norm="image"`` measures the
distance relative to the images' own contrast instead (:func:`mode_seeking_ratio`).
``mode_seeking_pool = k`` measures the image distance (and the contrast it is divided by) on the
images average-pooled by ``k`` (their coarse layout and colours), so uncorrelated fine speckle, which raises a pixel distance cheaply,
does not count. ``mode_seeking_cap = C`` replaces the ratio by ``min(ratio, C)`` (each pair's, per pair): the term
has no target of its own and keeps pushing pairs apart past the data's own spread (session 36: the demo's same-class
pairs lie 1.2-1.35x as far apart as the data's); capped, a pair that far apart adds a constant. ``mode_seeking_features`` adds the same term per pair measured in D's pooled features (the input of
its last linear layer) instead of pixels, over the batch's feature spread (:func:`feature_seeking_ratio`):
a pair that differs only in pixels D does not tell apart (a shifted speckle) gains nothing there.

The optional G term ``f * ||mean_b phi(G(z, y_f)) - mean_b phi(x)||^2 / mean_b ||phi(x) - mean_b phi(x)||^2``,
``f = feature_matching``, is feature matching (Salimans et al., NeurIPS 2016) as an extra term:
``phi`` is D's pooled feature vector (the input of its last linear layer), ``x`` the real batch of
the D phase just run (D one update older; its batch mean is an unbiased estimate, so the term's
gradient is too), and the divisor (the real features' spread, held constant) makes the weight
independent of D's feature scale. Per-image losses do not see how often G draws each kind of
image; a batch mean does (a generator drawing one kind of background for most of its images
moves the mean of every feature that tells the kinds apart).

The optional G term ``s * mean_k (log P_G(k) - log P_x(k))^2``, ``s = spectrum_matching``, matches the batch's
radial power spectrum (:func:`radial_power_spectrum`: the images' power at each integer frequency radius ``k``,
averaged over directions, channels and the batch) to the real images', ``P_x`` a moving average (decay 0.99) over
the D phases' real batches. At the demo's length G's images carry half the data's power at periods of 5-10 pixels
(radii 3-6 at 32 px: the stripes' band, the shapes' repeated structure; session 37) while D conveys that only
slowly; this term says it directly, as a statistic of the batch (any image may be flat, the batch may not).

``relativistic=True`` replaces both hinge losses by the relativistic pairing loss (RpGAN; Jolicoeur-Martineau
2019, the loss of R3GAN, Huang et al. 2024): D ``mean softplus(D(G(z_i), y_i) - D(x_i, y_i))``, G ``mean
softplus(D(x_i, y_i) - D(G(z_i), y_i))``. Each fake is judged against a real image *of its own class* (the D
phase draws its fakes with the real batch's labels; the G phase's fakes take the labels of the last D phase's
real batch, paired halves sharing them as the mode-seeking term pairs them), so D's class-dependent offset
cancels and only how much more real the real image looks counts. The G phase reuses the real logits of that D
phase (D one update older; detached, so they only weight G's gradient, as ``D(x)`` does in the loss): no
extra D forward. A G phase with no D phase before it uses 0 for them (``softplus(-D(G(z)))``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnorm.layers import AttentiveNorm, orthogonality_loss
from attnorm.losses.augment import consistency_transform, diff_augment, parse_policy


def d_hinge(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_hinge(fake_logits: Tensor) -> Tensor:
    return -fake_logits.mean()


G_ADVERSARIAL = ("hinge", "ns")


def check_g_adversarial(kind: str, topk: float) -> None:
    """One-line ValueErrors for a G loss kind or a top-k fraction :func:`g_adversarial` does not take."""
    if kind not in G_ADVERSARIAL:
        raise ValueError(f"g_adv must be one of {', '.join(G_ADVERSARIAL)}, got {kind!r}")
    if not 0 < topk <= 1:
        raise ValueError(f"g_topk is the fraction of fakes G learns from, in (0, 1], got {topk}")


def g_adversarial(fake_logits: Tensor, kind: str = "hinge", topk: float = 1.0) -> Tensor:
    """G's adversarial loss on D's logits of its fakes (b,): ``"hinge"`` ``-logit`` (SAGAN, BigGAN; every fake
    pulled equally) or ``"ns"`` the non-saturating ``softplus(-logit)`` (Goodfellow et al. 2014; fakes D finds
    most fake pulled hardest); averaged over the ``ceil(topk * b)`` fakes D scores highest (top-k training,
    Sinha et al. 2020; 1: all)."""
    check_g_adversarial(kind, topk)
    per_fake = -fake_logits if kind == "hinge" else F.softplus(-fake_logits)
    if topk < 1:
        k = max(1, math.ceil(topk * fake_logits.shape[0]))
        per_fake = per_fake.gather(0, fake_logits.topk(k).indices)
    return per_fake.mean()


MODE_SEEKING_NORMS = ("", "image", "batch")


def check_relativistic(relativistic: bool, g_adv: str = "hinge", g_topk: float = 1.0, reuse_fakes: bool = False,
                       share_fakes: bool = False) -> None:
    """One-line ValueError for options the relativistic pairing loss cannot be combined with."""
    if relativistic and (g_adv != "hinge" or float(g_topk) != 1.0 or reuse_fakes or share_fakes):
        raise ValueError("the relativistic loss replaces G's loss and pairs each fake with a real image of its class: "
                         "use it with g_adv=hinge, g_topk=1 and without reuse_fakes / share_fakes")


def _check_mode_seeking_norm(norm: str) -> None:
    if norm not in MODE_SEEKING_NORMS:
        raise ValueError(f"mode_seeking_norm must be one of {MODE_SEEKING_NORMS}, got {norm!r}")


def mode_seeking_ratio(fake: Tensor, z: Tensor, norm: str = "", per_pair: bool = False, pool: int = 1) -> Tensor:
    """MSGAN's ``mean|x1 - x2| / mean|z1 - z2|`` for a batch whose two halves are paired
    (same labels, independent z). ``norm="image"`` divides the image distance by the images'
    own contrast, ``mean|x - mean_hw(x)|`` (each image's deviation from its mean colour, averaged
    over the batch): then no affine change of the pixel values (``a x + b``) moves the ratio, so
    G cannot raise it by pushing every colour towards the extremes. But a flatter image lowers that
    contrast more than it lowers a pair's distance (the pair's mean colours still differ), so the ratio also
    rewards flat images in differing colours (session 37: the demo's G draws half the data's power at 5-10 px
    periods). ``norm="batch"`` divides by the batch's spread around its mean colour instead,
    ``mean|x - mean_bhw(x)|``: still unmoved by ``a x + b``, and flattening an image no longer raises the
    ratio (its pixels stay as far from the batch's mean colour). ``per_pair``: one ratio per
    pair (b/2,), each pair's own image and latent distances (the contrast stays the batch's).
    ``pool`` > 1: the image distance and the contrast on ``avg_pool2d(fake, pool)`` (coarse layout and
    colours only)."""
    if pool > 1:
        fake = F.avg_pool2d(fake, pool)
    x1, x2 = fake.chunk(2)
    z1, z2 = z.chunk(2)
    _check_mode_seeking_norm(norm)
    d = (x1 - x2).abs().flatten(1).mean(1) if per_pair else (x1 - x2).abs().mean()
    if norm:  # "image": each image's own mean colour; "batch": the batch's
        centre = fake.mean((2, 3) if norm == "image" else (0, 2, 3), keepdim=True)
        d = d / (fake - centre).abs().mean().clamp_min(1e-6)
    return d / ((z1 - z2).abs().mean(1) if per_pair else (z1 - z2).abs().mean())


def feature_seeking_ratio(features: Tensor, z: Tensor) -> Tensor:
    """Per pair of a batch whose two halves are paired: ``mean|f1 - f2| / mean|f - mean_b f|`` over
    ``mean|z1 - z2|``, (b/2,), with ``f`` D's pooled features (b, c): the pair's distance in D's
    features relative to the batch's spread there, so D's feature scale does not set the weight."""
    f1, f2 = features.chunk(2)
    z1, z2 = z.chunk(2)
    spread = (features - features.mean(0, keepdim=True)).abs().mean().clamp_min(1e-6)
    return (f1 - f2).abs().mean(1) / spread / (z1 - z2).abs().mean(1)


def radial_power_spectrum(x: Tensor) -> Tensor:
    """(H // 2,): the mean power of the 2-D DFT of ``x`` (b, c, H, H), each image's mean removed first, at the
    integer frequency radii 1 .. H // 2 (a frequency ``(u, v)`` counts at ``round(sqrt(u^2 + v^2))``; the corners
    beyond H // 2 are left out), averaged over the frequencies of each radius, the channels and the batch."""
    h = x.shape[-1]
    if x.dim() != 4 or x.shape[-2] != h:
        raise ValueError(f"radial_power_spectrum needs square images (b, c, H, H), got shape {tuple(x.shape)}")
    power = torch.fft.fft2(x - x.mean((2, 3), keepdim=True)).abs().pow(2).mean((0, 1))  # (H, H)
    k = torch.fft.fftfreq(h, device=x.device) * h
    radius = (k[:, None] ** 2 + k[None, :] ** 2).sqrt().round().long().flatten()
    keep = (radius >= 1) & (radius <= h // 2)
    idx = radius[keep] - 1
    total = power.new_zeros(h // 2).index_add(0, idx, power.flatten()[keep])
    count = power.new_zeros(h // 2).index_add(0, idx, torch.ones_like(idx, dtype=power.dtype))
    return total / count


def _inner(m: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (a net used frozen must bypass DDP's reducer)."""
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


class _InputCapture:
    """``with _InputCapture(module) as got:`` appends ``module``'s first input to ``got`` on every
    forward inside the block (``module`` None: captures nothing)."""

    def __init__(self, module: nn.Module | None) -> None:
        self.module, self.got, self.handle = module, [], None

    def __enter__(self) -> list:
        if self.module is not None:
            self.handle = self.module.register_forward_hook(lambda m, args, out: self.got.append(args[0]))
        return self.got

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.remove()


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
        wrong_label: weight of the class-margin term (real images must score higher with their
            own label than with a wrong one) in the D phase (0: off).
        mode_seeking: weight of MSGAN's mode-seeking term in the G phase (0: off); needs an
            even ``batch_size``.
        mode_seeking_norm: "" (MSGAN's pixel distance) or "image" (relative to the images'
            contrast; see :func:`mode_seeking_ratio`).
        amp: run G's and D's forward passes under bf16 autocast (on the CPU too, where
            oneDNN's bf16 convolutions are faster on CPUs with AVX512-BF16 or AMX); the losses,
            the AN layers' statistics and the batch norms stay float32.
        r1: weight gamma of the R1 gradient penalty on real images in the D phase (0: off).
        r1_every: compute R1 on every this-many D phases, scaled by it (lazy regularisation).
        lecam: weight of the LeCam regulariser in the D phase (0: off).
        lecam_decay: decay of the moving averages of D's real and fake logits it uses.
        lecam_steps: apply LeCam in the first this-many D phases only (0: in every one); the
            moving averages are not updated after that.
        reuse_fakes: the D phase scores the fakes of the G phase just run (same z, labels and
            images, G one update older) instead of drawing and generating its own: one G forward
            per step fewer (the DCGAN example's way). Meant for the phase order G, then D: only
            the D phase right after a G phase uses them (with several D steps the later ones, and
            a real batch of another size, generate as usual).
        share_fakes: the D phase generates the fakes with G's graph kept (G's parameters made trainable for
            that forward) and scores them detached; the G phase right after it trains G on those very images
            (same z and labels, paired as the mode-seeking term pairs them): one G forward per step fewer,
            in the phase order D, then G (the PyTorch DCGAN example's way). Unlike ``reuse_fakes``, D never
            scores fakes G was just trained on. A D phase whose real batch differs from ``batch_size`` in
            size, or a G phase without a D phase before it, generates as usual.
        feature_matching: weight of the feature-matching term in the G phase (0: off; see above).
        mode_seeking_pool: average-pool the images by this factor before that term's image distance (1: off).
        mode_seeking_features: weight of the per-pair mode-seeking term in D's pooled features
            (:func:`feature_seeking_ratio`; 0: off); pairs the G batch like ``mode_seeking``.
        mode_seeking_cap: > 0: the pixel term's ratio is clamped at this value (per pair with
            ``mode_seeking_pairs``), so a pair already that far apart is not pushed further (0: no cap).
        cr: weight of balanced consistency regularisation in the D phase (bCR, Zhao et al. 2021; 0: off):
            ``cr * (mean (D(T x) - D(x))^2 + mean (D(T G(z)) - D(G(z)))^2)`` over the real and the fake
            chunk, T a random mirror and shift (:func:`~attnorm.losses.augment.consistency_transform`);
            one more D forward per D phase.
        g_adv: G's adversarial loss, ``"hinge"`` (default) or ``"ns"`` (see :func:`g_adversarial`).
        g_topk: G learns from the fraction of its fakes D scores highest (1: all; :func:`g_adversarial`).
        instance_noise: std of Gaussian noise added to every image D sees (after the augmentation),
            real and fake, in both phases; pixel units of the [-1, 1] images (0: off; instance noise,
            Sonderby et al. 2017).
        spectrum_matching: weight of the radial-spectrum term in the G phase (0: off; see above).
        relativistic: the relativistic pairing loss in both phases instead of the hinge (see above); needs
            the G loss as ``g_adv="hinge"``, ``g_topk=1`` (it replaces it) and neither ``reuse_fakes`` nor
            ``share_fakes`` (their fakes are not drawn with the real batch's labels).
    """

    def __init__(self, G: nn.Module, D: nn.Module, z_dim: int, num_classes: int, batch_size: int,
                 ortho_weight: float = 1e-3, device: str | torch.device = "cpu", augment: str | None = None,
                 mode_seeking: float = 0.0, wrong_label: float = 0.0, amp: bool = False, r1: float = 0.0,
                 r1_every: int = 1, lecam: float = 0.0, lecam_decay: float = 0.99, lecam_steps: int = 0,
                 reuse_fakes: bool = False, mode_seeking_norm: str = "", feature_matching: float = 0.0,
                 mode_seeking_pairs: bool = False, mode_seeking_features: float = 0.0,
                 mode_seeking_pool: int = 1, instance_noise: float = 0.0, g_adv: str = "hinge",
                 g_topk: float = 1.0, cr: float = 0.0, share_fakes: bool = False,
                 mode_seeking_cap: float = 0.0, relativistic: bool = False, spectrum_matching: float = 0.0) -> None:
        _check_mode_seeking_norm(mode_seeking_norm)
        self.mode_seeking_norm, self.mode_seeking_pairs = mode_seeking_norm, bool(mode_seeking_pairs)
        if min(mode_seeking, wrong_label, r1, lecam, feature_matching, mode_seeking_features) < 0:
            raise ValueError(f"mode_seeking, wrong_label, r1, lecam, feature_matching and mode_seeking_features are "
                             f"loss weights >= 0, got {mode_seeking}, {wrong_label}, {r1}, {lecam}, {feature_matching} "
                             f"and {mode_seeking_features}")
        if not cr >= 0:
            raise ValueError(f"cr is a loss weight >= 0, got {cr}")
        self.cr = float(cr)
        if not instance_noise >= 0:
            raise ValueError(f"instance_noise is a noise std >= 0 (pixel units of [-1, 1] images), got {instance_noise}")
        if (feature_matching or mode_seeking_features) and not isinstance(getattr(_inner(D), "linear", None), nn.Linear):
            raise ValueError("feature_matching and mode_seeking_features read D's pooled features at the input of its last linear layer "
                             "(D.linear); this discriminator has none")
        if not 0 <= lecam_decay < 1:
            raise ValueError(f"lecam_decay must be in [0, 1), got {lecam_decay}")
        if isinstance(lecam_steps, bool) or int(lecam_steps) != lecam_steps or lecam_steps < 0:
            raise ValueError(f"lecam_steps must be an integer >= 0 (0: every D phase), got {lecam_steps!r}")
        self.lecam_steps = int(lecam_steps)
        if int(r1_every) < 1:
            raise ValueError(f"r1_every must be an integer >= 1, got {r1_every}")
        if r1 and any(isinstance(m, AttentiveNorm) for m in _inner(D).modules()):
            raise ValueError("r1 needs the gradient of D's input gradient, and AttentiveNorm's fast backward is "
                             "once-differentiable; use r1 with a discriminator without AN (d_arch=\"conv\", "
                             "or attention \"sa\"/\"none\")")
        if wrong_label and num_classes < 2:
            raise ValueError(f"wrong_label needs at least 2 classes (a wrong label to compare with), got {num_classes}")
        if (mode_seeking or mode_seeking_features) and batch_size % 2:
            raise ValueError(f"mode_seeking pairs the G batch in halves; batch_size {batch_size} is odd, use an even one")
        self.G, self.D = G, D
        self.mode_seeking, self.wrong_label = float(mode_seeking), float(wrong_label)
        self.augment = parse_policy(augment)
        self.z_dim, self.num_classes, self.batch_size = z_dim, num_classes, batch_size
        self.ortho_weight, self.device = ortho_weight, torch.device(device)
        self.amp = bool(amp)
        self.r1, self.r1_every = float(r1), int(r1_every)
        self._d_phases = 0  # D phases run (for lazy R1)
        self.lecam, self.lecam_decay = float(lecam), float(lecam_decay)
        # moving averages [a_R, a_F] as a (2,) float32 tensor on the device, kept there so the D phase
        # never waits for the device (None until the first D phase)
        self.lecam_ema: Tensor | None = None
        self.reuse_fakes = bool(reuse_fakes)
        if reuse_fakes and share_fakes:
            raise ValueError("reuse_fakes (phase order G, D) and share_fakes (D, G) exclude each other; choose one")
        self.share_fakes = bool(share_fakes)
        self._shared: tuple[Tensor, Tensor, Tensor] | None = None  # (z, labels, images with G's graph) for the G phase
        self._fakes: tuple[Tensor, Tensor] | None = None  # (images, labels) of the last G phase, for the next D phase
        self.feature_matching = float(feature_matching)
        self.mode_seeking_features = float(mode_seeking_features)
        if int(mode_seeking_pool) < 1:
            raise ValueError(f"mode_seeking_pool must be an integer >= 1, got {mode_seeking_pool}")
        self.mode_seeking_pool = int(mode_seeking_pool)
        if not mode_seeking_cap >= 0:
            raise ValueError(f"mode_seeking_cap is a ratio >= 0 (0: no cap), got {mode_seeking_cap}")
        self.mode_seeking_cap = float(mode_seeking_cap)
        self.instance_noise = float(instance_noise)
        check_g_adversarial(g_adv, g_topk)
        self.g_adv, self.g_topk = g_adv, float(g_topk)
        check_relativistic(relativistic, g_adv, g_topk, reuse_fakes, share_fakes)
        self.relativistic = bool(relativistic)
        if not spectrum_matching >= 0:
            raise ValueError(f"spectrum_matching is a loss weight >= 0, got {spectrum_matching}")
        self.spectrum_matching = float(spectrum_matching)
        self._real_spectrum: Tensor | None = None  # moving average of the real batches' radial_power_spectrum
        # (real logits (b,), labels (b,)) of the last D phase's real batch, for the relativistic G phase
        self._real_pairs: tuple[Tensor, Tensor] | None = None
        # (mean (c,), spread ()) of D's pooled features of the last D phase's real batch (feature matching)
        self._real_features: tuple[Tensor, Tensor] | None = None

    def state_dict(self) -> dict:
        """What a resumed run needs to continue exactly: the D-phase count (lazy R1), LeCam's averages and the
        real features feature matching compares the next G phase with."""
        ema = None if self.lecam_ema is None else [float(a) for a in self.lecam_ema.tolist()]
        feats = None if self._real_features is None else [t.detach().cpu() for t in self._real_features]
        spectrum = None if self._real_spectrum is None else self._real_spectrum.detach().cpu()
        return {"d_phases": self._d_phases, "lecam_ema": ema, "real_features": feats, "real_spectrum": spectrum}

    def load_state_dict(self, state: dict) -> None:
        self._fakes = self._shared = self._real_pairs = None
        self._d_phases = int(state.get("d_phases", 0))
        ema = state.get("lecam_ema")
        self.lecam_ema = None if ema is None else torch.tensor([float(a) for a in ema], device=self.device)
        feats = state.get("real_features")
        self._real_features = None if feats is None else tuple(t.to(self.device) for t in feats)
        spectrum = state.get("real_spectrum")
        self._real_spectrum = None if spectrum is None else spectrum.to(self.device)

    def _pooled_features(self):
        """Context manager yielding a list that receives D's pooled features (the input of
        ``D.linear``) on each forward inside it; nothing is hooked without feature matching."""
        wanted = self.feature_matching or self.mode_seeking_features
        return _InputCapture(_inner(self.D).linear if wanted else None)

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _noisy(self, x: Tensor) -> Tensor:
        """``x`` plus instance noise of std ``instance_noise`` (x itself when off)."""
        return x + self.instance_noise * torch.randn_like(x) if self.instance_noise else x

    def sample_latents(self, b: int) -> tuple[Tensor, Tensor]:
        z = torch.randn(b, self.z_dim, device=self.device)
        y = torch.randint(self.num_classes, (b,), device=self.device)
        return z, y

    def _g_latents(self) -> tuple[Tensor, Tensor]:
        """The G phase's latents and labels: with a mode-seeking term the two halves share labels."""
        z, y = self.sample_latents(self.batch_size)
        if self.mode_seeking or self.mode_seeking_features:
            y = y[: self.batch_size // 2].repeat(2)  # halves share labels
        return z, y

    def _generate_with_graph(self) -> tuple[Tensor, Tensor, Tensor]:
        """(z, labels, G(z, labels)) with G's graph, G's parameters trainable for the forward whatever the
        loop set (it freezes G during the D phase); their flags are restored after it."""
        z, y = self._g_latents()
        params = list(self.G.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        try:
            with self._autocast():
                fake = self.G(z, y)
        finally:
            for p, f in zip(params, flags):
                p.requires_grad_(f)
        return z, y, fake

    def run_phase(self, name: str, batch) -> dict[str, Tensor]:
        if name == "D":
            x, y = batch
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            fakes, self._fakes = self._fakes, None
            self._shared = None
            if fakes is not None and fakes[0].shape[0] == x.shape[0]:
                fake, y_fake = fakes
            elif self.share_fakes and self.batch_size == x.shape[0]:
                self._shared = self._generate_with_graph()
                _, y_fake, fake = self._shared
                fake = fake.detach()
            else:
                z, y_fake = self.sample_latents(x.shape[0])
                if self.relativistic:  # each fake is paired with the real image of its index: same class
                    y_fake = y
                with torch.no_grad(), self._autocast():
                    fake = _inner(self.G)(z, y_fake)
            if self.spectrum_matching:  # the real images as the data gives them (before any augmentation)
                spectrum = radial_power_spectrum(x.float()).detach()
                self._real_spectrum = (spectrum if self._real_spectrum is None
                                       else torch.lerp(spectrum, self._real_spectrum, 0.99))
            images, labels = [x, fake], [y, y_fake]
            if self.wrong_label:  # the real batch again, each with one of the other classes
                labels.append((y + torch.randint_like(y, 1, self.num_classes)) % self.num_classes)
                images.append(x)
            kw = {}
            if getattr(_inner(self.D), "mbstd_by_class", False):
                # class-grouped minibatch stddev: real, fake and wrong-label chunks get disjoint ids
                kw["mbstd_ids"] = torch.cat([lab + i * self.num_classes for i, lab in enumerate(labels)])
            with_r1 = self.r1 > 0 and self._d_phases % self.r1_every == 0
            self._d_phases += 1
            seen = self._noisy(diff_augment(torch.cat(images), self.augment))
            if with_r1:  # the gradient is taken w.r.t. the images as D sees them
                seen = seen.detach().requires_grad_(True)
            with self._autocast(), self._pooled_features() as pooled:
                logits = self.D(seen, torch.cat(labels), **kw)  # (2b | 3b,)
            if self.feature_matching and pooled:  # the real chunk's mean and spread, for the next G phase
                real = pooled[0][: x.shape[0]].detach().float()
                mean = real.mean(0)
                self._real_features = (mean, (real - mean).pow(2).sum(1).mean())
            logits = logits.float()
            real_logits, fake_logits, *wrong = logits.split(x.shape[0])
            if self.relativistic:
                adv = F.softplus(fake_logits - real_logits).mean()
                self._real_pairs = (real_logits.detach(), y)
            else:
                adv = d_hinge(real_logits, fake_logits)
            stats = {}
            if wrong:
                wrong_term = F.relu(1.0 - real_logits + wrong[0]).mean()
                adv = adv + self.wrong_label * wrong_term
                stats["D/wrong"] = wrong[0].detach().mean()
            if with_r1:
                # d(sum of real logits)/d(seen): row i of the real chunk is real image i's gradient
                grad, = torch.autograd.grad(real_logits.sum(), seen, create_graph=True)
                r1 = grad[: x.shape[0]].float().pow(2).flatten(1).sum(1).mean()
                adv = adv + (self.r1 * self.r1_every / 2) * r1
                stats["D/r1"] = r1.detach()
            if self.cr:  # the real and fake chunks again, each image mirrored / shifted; D should not care
                both = seen[: 2 * x.shape[0]].detach()
                kw_cr = {"mbstd_ids": kw["mbstd_ids"][: 2 * x.shape[0]]} if kw else {}
                with self._autocast():
                    moved = self.D(consistency_transform(both), torch.cat(labels[:2]), **kw_cr).float()
                gap = (moved - logits[: 2 * x.shape[0]]).pow(2)
                cr = gap[: x.shape[0]].mean() + gap[x.shape[0]:].mean()
                adv = adv + self.cr * cr
                stats["D/cr"] = cr.detach()
            if self.lecam and (not self.lecam_steps or self._d_phases <= self.lecam_steps):
                means = torch.stack([real_logits.detach().mean(), fake_logits.detach().mean()])  # (2,)
                if self.lecam_ema is None:
                    self.lecam_ema = means
                else:
                    self.lecam_ema = torch.lerp(means, self.lecam_ema, self.lecam_decay)
                a_real, a_fake = self.lecam_ema
                lc = (real_logits - a_fake).pow(2).mean() + (fake_logits - a_real).pow(2).mean()
                adv = adv + self.lecam * lc
                stats["D/lecam"] = lc.detach()
            ortho = orthogonality_loss(_inner(self.D))
            loss = adv + self.ortho_weight * ortho
            loss.backward()
            return {"D/loss": loss.detach(), "D/real": real_logits.detach().mean(),
                    "D/fake": fake_logits.detach().mean(), **stats, "D/ortho": ortho.detach()}
        if name == "G":
            shared, self._shared = self._shared, None
            real_pairs, self._real_pairs = self._real_pairs, None
            if shared is None:
                z, y_fake = self._g_latents()
            else:
                z, y_fake, fake = shared
            if self.relativistic:
                real_logits = torch.zeros(len(y_fake), device=z.device)
                if real_pairs is not None and real_pairs[1].shape[0] >= len(y_fake):
                    # the D phase's real labels (the paired halves share theirs), each fake with its real image
                    half = len(y_fake) // 2 if (self.mode_seeking or self.mode_seeking_features) else len(y_fake)
                    idx = torch.arange(len(y_fake), device=z.device) % half
                    real_logits, y_fake = real_pairs[0][idx], real_pairs[1][idx]
            with self._autocast(), self._pooled_features() as pooled:
                if shared is None:
                    fake = self.G(z, y_fake)
                logits = _inner(self.D)(self._noisy(diff_augment(fake, self.augment)), y_fake)
            if self.relativistic:
                adv = F.softplus(real_logits - logits.float()).mean()
            else:
                adv = g_adversarial(logits.float(), self.g_adv, self.g_topk)
            pop_drawn = getattr(_inner(self.G), "pop_drawn", None)
            drawn = fake if pop_drawn is None else pop_drawn(fake)  # a grain G's image before its grain
            ortho = orthogonality_loss(_inner(self.G))
            loss = adv + self.ortho_weight * ortho
            stats = {"G/ortho": ortho.detach()}
            if self.mode_seeking:
                # G's own grain is not diversity: the pairs' distance is that of the images before it
                ratio = mode_seeking_ratio(drawn.float(), z, self.mode_seeking_norm, self.mode_seeking_pairs,
                                           self.mode_seeking_pool)
                pushed = ratio.clamp(max=self.mode_seeking_cap) if self.mode_seeking_cap else ratio
                if self.mode_seeking_pairs:
                    loss = loss + self.mode_seeking * (1.0 / (pushed + 1e-5)).mean()
                else:  # MSGAN's form, kept bit for bit (earlier runs reproduce)
                    loss = loss + self.mode_seeking / (pushed + 1e-5)
                stats["G/ms_ratio"] = ratio.detach().mean()
                if self.mode_seeking_cap:
                    stats["G/ms_capped"] = (ratio.detach() >= self.mode_seeking_cap).float().mean()
            if self.spectrum_matching and self._real_spectrum is not None:
                spectrum = radial_power_spectrum(drawn.float())
                sm = (spectrum.clamp_min(1e-12).log() - self._real_spectrum.clamp_min(1e-12).log()).pow(2).mean()
                loss = loss + self.spectrum_matching * sm
                stats["G/spectrum"] = sm.detach()
            if self.mode_seeking_features:
                ratio_f = feature_seeking_ratio(pooled[0].float(), z)
                loss = loss + self.mode_seeking_features * (1.0 / (ratio_f + 1e-5)).mean()
                stats["G/ms_feature_ratio"] = ratio_f.detach().mean()
            if self.feature_matching and pooled and self._real_features is not None:
                mean, spread = self._real_features
                fm = (pooled[0].float().mean(0) - mean).pow(2).sum() / spread.clamp_min(1e-8)
                loss = loss + self.feature_matching * fm
                stats["G/fm"] = fm.detach()
            loss.backward()
            if self.reuse_fakes:  # a copy: a compiled G's output buffers may be reused by its next call
                self._fakes = (fake.detach().clone(), y_fake)
            return {"G/loss": loss.detach(), **stats}
        raise ValueError(f"unknown phase {name!r}; HingeGANLoss runs 'D' and 'G'")
