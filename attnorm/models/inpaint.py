"""Two-stage inpainting generator with an attentive branch, and DeepFill critics.

Generator, exactly the layer list of the AN supplement (section 2, "Generative Image
Inpainting"); ``Conv(k, c, s, d)`` = kernel, filters, stride, dilation with 'same'
zero padding ``d * (k - 1) / 2``::

    Encoder     Conv(5,32,1,1)-ELU-Conv(3,64,2,1)-ELU-Conv(3,64,1,1)-ELU-Conv(3,128,2,1)-ELU-Conv(3,128,1,1)-ELU
    Bottleneck  Conv(3,128,1,2)-ELU-Conv(3,128,1,4)-ELU-Conv(3,128,1,8)-ELU-Conv(3,128,1,16)-ELU
    Decoder1    x2-Conv(3,64)-ELU-Conv(3,64)-ELU-x2-Conv(3,32)-ELU-Conv(3,16)-ELU-Conv(3,3)-clip[-1,1]
    Decoder2    Conv(3,128)-ELU-Conv(3,128)-ELU-Decoder1
    Attentive   Conv(3,128)-AN-Conv(3,128)-ELU-Conv(3,128)-ELU

    stage 1:  X -> Encoder -> Bottleneck -> Decoder1 -> coarse
    stage 2:  X2 = x * (1 - m) + coarse * m   (coarse pasted into the hole)
              [X2, 1, m] -> Encoder_a -> Attentive branch -> Xa
              [X2, 1, m] -> Encoder_b -> Bottleneck      -> Xb     (two separate encoders)
              concat(Xa, Xb) -> Decoder2 -> refined

``x2`` is nearest-neighbour upsampling by 2. Inputs of both stages have 5 channels:
the masked image (3), a ones channel (1) and the mask (1), as in DeepFill (the ones
channel lets zero padding mark the image border).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnorm.data.masks import hole_bbox
from attnorm.layers import AttentiveNorm, create_norm

__all__ = [
    "Clip", "GlobalCritic", "pushpull_fill", "InpaintGenerator", "LocalCritic", "PatchCritic", "conv_same",
    "crop_hole_patches",
]


def conv_same(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """``Conv(k, cout, stride, dilation)`` with 'same' zero padding (exact for sizes divisible by the stride)."""
    return nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k - 1) // 2, dilation=dilation)


class Clip(nn.Module):
    """Clamp to [lo, hi] (the supplement's "Clip to [-1, 1]")."""

    def __init__(self, lo: float = -1.0, hi: float = 1.0) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp(self.lo, self.hi)

    def extra_repr(self) -> str:
        return f"[{self.lo}, {self.hi}]"


HOLE_FILLS = ("zero", "pushpull", "harmonic")
FILL_SMOOTH = {"pushpull": 0, "harmonic": 64}  # Jacobi sweeps per pyramid level of each residual fill


def pushpull_fill(x: Tensor, hole: Tensor, smooth: int = 0) -> Tensor:
    """Fill the holes of ``x`` smoothly from the known pixels (pull-push, Gortler et al. 1996).

    Pull: a pyramid of mask-weighted 2x2 means (a coarse pixel averages its known
    children; it is known when any child is). Push: from the coarsest level back up,
    every hole pixel takes the bilinear upsampling of the filled level below, known
    pixels keep their value. The fill is a smooth, colour-preserving interpolation
    of the hole's surroundings: a flat colour is filled exactly, at any image size.
    Cost: a few passes over the image (no parameters, no gradient needed).

    With ``smooth = k > 0`` every level of the push is followed by ``k`` Jacobi sweeps of
    Laplace's equation on the hole pixels (each takes the mean of its 4 neighbours, known
    pixels fixed): a multigrid approximation of the harmonic (membrane) fill, which removes
    the pull-push's blockiness.

    Args:
        x: (b, c, H, W) images.
        hole: (b or 1, 1, H, W), 1 = hole (>= 0.5 counts as hole).
        smooth: Jacobi sweeps per pyramid level (0: plain pull-push).
    Returns: (b, c, H, W), equal to ``x`` on known pixels. Where an image has no
    known pixel at all, the fill is 0.
    """
    b, c, h, w = x.shape
    known = (hole < 0.5).to(x.dtype).expand(b, 1, h, w)
    if h <= 1 and w <= 1:
        return x * known
    ph, pw = h % 2, w % 2
    xs, ks = x * known, known
    if ph or pw:  # pad odd sizes with unknown pixels
        xs, ks = F.pad(xs, (0, pw, 0, ph)), F.pad(ks, (0, pw, 0, ph))
    wsum = F.avg_pool2d(ks, 2)  # (b, 1, H/2, W/2): fraction of known children
    coarse = F.avg_pool2d(xs, 2) / wsum.clamp_min(1e-12)
    coarse = pushpull_fill(coarse, (wsum <= 0).to(x.dtype), smooth)
    up = F.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]
    out = x * known + up * (1 - known)
    if smooth > 0:
        kernel = x.new_tensor([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]]).expand(c, 1, 3, 3)
        for _ in range(int(smooth)):
            nb = F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), kernel, groups=c)
            out = x * known + nb * (1 - known)
    return out


def _seq(*layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(*layers)


def encoder(cin: int, c: dict[int, int]) -> nn.Sequential:
    """Encoder: 5 convs, two stride-2 (output at 1/4 resolution, ``c[128]`` channels)."""
    return _seq(conv_same(cin, c[32], 5), nn.ELU(),
                conv_same(c[32], c[64], 3, stride=2), nn.ELU(),
                conv_same(c[64], c[64], 3), nn.ELU(),
                conv_same(c[64], c[128], 3, stride=2), nn.ELU(),
                conv_same(c[128], c[128], 3), nn.ELU())


def bottleneck(c: dict[int, int]) -> nn.Sequential:
    """Bottleneck: four dilated 3x3 convs, dilation 2, 4, 8, 16."""
    layers: list[nn.Module] = []
    for d in (2, 4, 8, 16):
        layers += [conv_same(c[128], c[128], 3, dilation=d), nn.ELU()]
    return _seq(*layers)


def decoder1(cin: int, c: dict[int, int], clip: bool = True) -> nn.Sequential:
    """Decoder1: x2, two convs, x2, three convs down to RGB, clip to [-1, 1] (``clip=False``: an
    identity in the clip's place, for residual outputs that are clipped after the addition)."""
    return _seq(nn.Upsample(scale_factor=2, mode="nearest"),
                conv_same(cin, c[64], 3), nn.ELU(),
                conv_same(c[64], c[64], 3), nn.ELU(),
                nn.Upsample(scale_factor=2, mode="nearest"),
                conv_same(c[64], c[32], 3), nn.ELU(),
                conv_same(c[32], c[16], 3), nn.ELU(),
                conv_same(c[16], 3, 3), Clip() if clip else nn.Identity())


def decoder2(cin: int, c: dict[int, int], clip: bool = True) -> nn.Sequential:
    """Decoder2: two 3x3 convs, then Decoder1."""
    return _seq(conv_same(cin, c[128], 3), nn.ELU(),
                conv_same(c[128], c[128], 3), nn.ELU(),
                *decoder1(c[128], c, clip))


class InpaintGenerator(nn.Module):
    """Two-stage coarse-to-fine inpainting generator with an AN branch (AN supplement, sec. 2).

    Args:
        width: channel multiplier; 1.0 gives the supplement's widths (32/64/128, 16 before RGB).
            Each width becomes ``max(1, round(c * width))``.
        attention: the attentive branch's middle layer, by :func:`attnorm.layers.create_norm`
            name: ``"an"`` (paper), ``"sa"`` (SAGAN self-attention, quadratic) or ``"none"``.
        num_entities: AN's number of semantic entities ``n`` (paper: 16).
        pad_mode: how inputs are padded up to a multiple of 4 before the network (cropped
            back afterwards): ``"replicate"`` (default; any size, even 1 px) or
            ``"reflect"`` (needs H, W >= 4) or ``"constant"`` (zeros; the mask is padded
            with zeros, i.e. the padding counts as known black pixels).
        hole_fill: what the network sees in the hole and what it predicts. ``"zero"`` (the
            paper, DeepFill): hole pixels are set to 0 and each stage outputs the image
            directly. ``"pushpull"`` (attnorm's CPU-trained weights): the hole is first
            filled by :func:`pushpull_fill` from the known pixels, and each stage
            predicts a residual on its input (``coarse = clip(X_in + D1)``,
            ``refined = clip(X2 + D2)``), so colour and brightness come from the hole's
            surroundings by construction and the layers learn only structure and texture.
            ``"harmonic"``: the same with the smoothed fill ``pushpull_fill(..., smooth=64)`` (a
            multigrid harmonic fill; attnorm's shipped CPU weights).
        **attention_kwargs: passed to the branch layer's constructor (e.g. ``self_sampling``).

    ``forward(x, mask)`` with ``x`` (b, 3, H, W) in [-1, 1] and ``mask`` (b or 1, 1, H, W),
    1 = hole, returns ``(coarse, refined)``, both (b, 3, H, W) clipped to [-1, 1]
    (the raw network outputs: paste them into the hole yourself, or use
    :func:`attnorm.inference.inpaint_image`). With ``return_layout=True`` (AN
    only) it returns ``(coarse, refined, layout)``, the soft layout (b, n, ceil(H/4),
    ceil(W/4)) of the padded input.
    """

    def __init__(self, width: float = 1.0, attention: str = "an", num_entities: int = 16,
                 pad_mode: str = "replicate", hole_fill: str = "zero", **attention_kwargs) -> None:
        super().__init__()
        if hole_fill not in HOLE_FILLS:
            raise ValueError(f"hole_fill must be one of {HOLE_FILLS}, got {hole_fill!r}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if pad_mode not in ("replicate", "reflect", "constant"):
            raise ValueError(f"pad_mode must be 'replicate', 'reflect' or 'constant', got {pad_mode!r}")
        self.config = {"width": width, "attention": attention, "num_entities": num_entities,
                       "pad_mode": pad_mode, **attention_kwargs}
        if hole_fill != "zero":  # the paper's default stays out of the config (old files load unchanged)
            self.config["hole_fill"] = hole_fill
        self.pad_mode, self.hole_fill = pad_mode, hole_fill
        residual = hole_fill != "zero"
        c = {k: max(1, round(k * width)) for k in (16, 32, 64, 128)}
        self.channels = c
        cin = 5  # masked image (3) + ones (1) + mask (1)

        # stage 1
        self.coarse_encoder = encoder(cin, c)
        self.coarse_bottleneck = bottleneck(c)
        self.coarse_decoder = decoder1(c[128], c, clip=not residual)
        # stage 2, attentive branch with its own encoder. Seed order Conv-AN-Conv-ELU-Conv-ELU;
        # the authors' code has an extra ELU right after AN -- we follow the seed.
        norm_kwargs = dict(attention_kwargs)
        if attention == "an":
            norm_kwargs["num_entities"] = num_entities
        self.attn_encoder = encoder(cin, c)
        self.attn_branch = _seq(conv_same(c[128], c[128], 3),
                                create_norm(attention, c[128], **norm_kwargs),
                                conv_same(c[128], c[128], 3), nn.ELU(),
                                conv_same(c[128], c[128], 3), nn.ELU())
        # stage 2, dilated branch with its own encoder
        self.refine_encoder = encoder(cin, c)
        self.refine_bottleneck = bottleneck(c)
        self.refine_decoder = decoder2(2 * c[128], c, clip=not residual)
        if residual:  # start close to the pull-push fill: the last conv of both decoders scaled by 0.1
            # (not zeroed: a zero last layer passes no gradient to the rest of the network, and
            # the hole L1's sign gradients then keep it near zero for hundreds of steps)
            with torch.no_grad():
                for dec in (self.coarse_decoder, self.refine_decoder):
                    dec[-2].weight.mul_(0.1)
                    dec[-2].bias.zero_()

    @property
    def attention_layer(self) -> nn.Module:
        """The attentive branch's middle layer (AN, self-attention or identity)."""
        return self.attn_branch[1]

    @staticmethod
    def _inputs(x: Tensor, mask: Tensor) -> Tensor:
        ones = torch.ones_like(mask)
        return torch.cat([x, ones, mask], dim=1)  # (b, 5, H, W)

    def _pad(self, t: Tensor, ph: int, pw: int) -> Tensor:
        if ph == 0 and pw == 0:
            return t
        return F.pad(t, (0, pw, 0, ph), mode=self.pad_mode)

    def forward(self, x: Tensor, mask: Tensor, return_layout: bool = False):
        """Args:
            x: (b, 3, H, W) images in [-1, 1]; hole pixels are ignored (zeroed here).
            mask: (b, 1, H, W) or (1, 1, H, W), 1 = hole (expected binary).
            return_layout: also return AN's soft layout (needs ``attention="an"``).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be (b, 3, H, W), got shape {tuple(x.shape)}")
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"mask must be (b, 1, H, W) matching x {tuple(x.shape)}, got {tuple(mask.shape)}")
        if return_layout and not isinstance(self.attention_layer, AttentiveNorm):
            raise ValueError(f"return_layout needs attention='an', this generator has "
                             f"{self.config['attention']!r}")
        b, _, h, w = x.shape
        mask = mask.to(x.dtype).expand(b, 1, h, w)
        ph, pw = (-h) % 4, (-w) % 4  # pad to a multiple of 4 (two stride-2 convs)
        x = self._pad(x, ph, pw)
        mask = self._pad(mask, ph, pw)
        keep = 1 - mask

        residual = self.hole_fill != "zero"
        # stage 1
        xin = x * keep
        if residual:
            with torch.no_grad():
                smooth = FILL_SMOOTH[self.hole_fill]
                xin = xin + pushpull_fill(x.float(), mask.float(), smooth).to(x.dtype) * mask
        coarse = self.coarse_decoder(self.coarse_bottleneck(self.coarse_encoder(self._inputs(xin, mask))))
        if residual:
            coarse = (xin + coarse).clamp(-1.0, 1.0)

        # stage 2: coarse pasted into the hole
        x2 = x * keep + coarse * mask
        inp2 = self._inputs(x2, mask)  # (b, 5, H', W')
        feat = self.attn_encoder(inp2)  # (b, c128, H'/4, W'/4)
        feat = self.attn_branch[0](feat)
        layout = None
        if return_layout:
            feat, layout = self.attn_branch[1](feat, return_layout=True)  # layout (b, n, H'/4, W'/4)
        else:
            feat = self.attn_branch[1](feat)
        xa = self.attn_branch[2:](feat)
        xb = self.refine_bottleneck(self.refine_encoder(inp2))
        refined = self.refine_decoder(torch.cat([xa, xb], dim=1))  # (b, 3, H', W')
        if residual:
            refined = (x2 + refined).clamp(-1.0, 1.0)

        coarse, refined = coarse[..., :h, :w], refined[..., :h, :w]
        if return_layout:
            return coarse, refined, layout
        return coarse, refined


# ---------------------------------------------------------------------------- critics
def _conv_stack(cin: int, channels: tuple[int, ...], spectral_norm: bool = False) -> nn.Sequential:
    """5x5 stride-2 convs ('same' padding 2), each followed by LeakyReLU(0.2)."""
    sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
    layers: list[nn.Module] = []
    for cout in channels:
        layers += [sn(nn.Conv2d(cin, cout, 5, stride=2, padding=2)), nn.LeakyReLU(0.2)]
        cin = cout
    return nn.Sequential(*layers)


def _size2(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class _FlatCritic(nn.Module):
    """Conv stack -> flatten -> linear -> 1 score per image (WGAN critic, no normalisation)."""

    def __init__(self, input_size: int | tuple[int, int], channels: tuple[int, ...], in_channels: int = 3) -> None:
        super().__init__()
        self.input_size = _size2(input_size)
        self.config = {"input_size": input_size, "channels": tuple(channels), "in_channels": in_channels}
        self.features = _conv_stack(in_channels, tuple(channels))
        h, w = self.input_size
        for _ in channels:  # each stride-2 conv with padding 2, kernel 5: ceil(n / 2)
            h, w = (h + 1) // 2, (w + 1) // 2
        self.linear = nn.Linear(channels[-1] * h * w, 1)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"{type(self).__name__} was built for {self.input_size} inputs, got {tuple(x.shape[-2:])}")
        return self.linear(self.features(x).flatten(1))  # (b, 1)


class GlobalCritic(_FlatCritic):
    """DeepFill v1 global WGAN critic on the whole image: channels 64, 128, 256, 256.

    Args:
        input_size: image size the flatten-linear head is built for (int or (H, W)).
        width: channel multiplier.
        in_channels: 3 (RGB).
    """

    def __init__(self, input_size: int | tuple[int, int] = 256, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__(input_size, tuple(max(1, round(c * width)) for c in (64, 128, 256, 256)), in_channels)
        self.config = {"input_size": input_size, "width": width, "in_channels": in_channels}  # rebuild args


class LocalCritic(_FlatCritic):
    """DeepFill v1 local WGAN critic on the hole's patch: channels 64, 128, 256, 512.

    Args:
        patch_size: size of the patch it scores (DeepFill: 128 for 256 images); crop
            patches with :func:`crop_hole_patches`.
        width: channel multiplier.
    """

    def __init__(self, patch_size: int | tuple[int, int] = 128, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__(patch_size, tuple(max(1, round(c * width)) for c in (64, 128, 256, 512)), in_channels)
        self.config = {"patch_size": patch_size, "width": width, "in_channels": in_channels}  # rebuild args


class PatchCritic(nn.Module):
    """Mask-aware patch discriminator (SN-PatchGAN style, DeepFill v2) for free-form holes.

    Input: image (3) and mask (1) concatenated; six 5x5 stride-2 convs with LeakyReLU(0.2).
    Output: a (b, c_last, ceil(H/64), ceil(W/64)) map of patch scores (any input size),
    meant for the hinge loss.

    Args:
        channels: filters of the convs (DeepFill v2: 64, 128, 256, 256, 256, 256).
        width: channel multiplier.
        spectral_norm: wrap every conv in spectral normalisation (SN-PatchGAN: yes).
    """

    def __init__(self, channels: tuple[int, ...] = (64, 128, 256, 256, 256, 256), width: float = 1.0,
                 spectral_norm: bool = True) -> None:
        super().__init__()
        chans = tuple(max(1, round(c * width)) for c in channels)
        self.config = {"channels": tuple(channels), "width": width, "spectral_norm": spectral_norm}
        self.features = _conv_stack(4, chans, spectral_norm)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        mask = mask.to(x.dtype).expand(x.shape[0], 1, *x.shape[-2:])
        return self.features(torch.cat([x, mask], dim=1))


def crop_hole_patches(tensors: list[Tensor] | tuple[Tensor, ...], mask: Tensor,
                      patch_size: int | tuple[int, int]) -> list[Tensor]:
    """Crop, per sample, the same local patch around the hole from every tensor in ``tensors``.

    The patch is a ``patch_size`` window centred on the hole's bounding box and shifted
    to lie inside the image (DeepFill v1's box holes, at most 128 of 256, always fit:
    the patch then contains the whole hole, unresampled). A hole larger than the
    window is cropped to its bounding box and resized to ``patch_size`` (bilinear for
    images, nearest for the mask); an empty mask gives the centre window.

    Args:
        tensors: (b, c, H, W) tensors (images, the mask itself, ...), cropped alike.
        mask: (b, 1, H, W), 1 = hole.
        patch_size: output patch size, int or (ph, pw), at most the image size.
    Returns: list of (b, c, ph, pw) tensors, in the order of ``tensors``.
    """
    ph, pw = _size2(patch_size)
    b, _, h, w = mask.shape
    if ph > h or pw > w:
        raise ValueError(f"patch_size {(ph, pw)} is larger than the images {(h, w)}")
    outs: list[list[Tensor]] = [[] for _ in tensors]
    for i in range(b):
        box = hole_bbox(mask[i])
        if box is None:
            box = ((h - ph) // 2, (w - pw) // 2, ph, pw)
        top, left, bh, bw = box
        wh, ww = max(ph, bh), max(pw, bw)  # window covers the hole
        ct, cl = top + bh / 2, left + bw / 2  # hole centre
        t0 = int(min(max(round(ct - wh / 2), 0), h - wh))
        l0 = int(min(max(round(cl - ww / 2), 0), w - ww))
        for k, t in enumerate(tensors):
            crop = t[i:i + 1, :, t0:t0 + wh, l0:l0 + ww]
            if (wh, ww) != (ph, pw):
                nearest = t is mask
                crop = F.interpolate(crop, size=(ph, pw), mode="nearest-exact" if nearest else "bilinear",
                                     align_corners=None if nearest else False)
            outs[k].append(crop)
    return [torch.cat(o, dim=0) for o in outs]
