"""Class-conditional GAN of the AN paper (supplement, section 2), one definition for 32/64/128 px.

Generator (128 px, ``ch = 64``, listing of the supplement)::

    z(128) -> SN-Linear(4x4x16ch) -> ResBlock up 16ch -> up 8ch -> up 4ch (AN) -> up 2ch -> up 1ch
           -> BN -> ReLU -> SN-Conv3x3(3) -> tanh

Discriminator::

    x -> ResBlock down ch -> down 2ch (AN) -> down 4ch -> concat(Embed(y), h)
      -> down 8ch -> down 16ch -> ReLU -> global sum pooling -> SN-Linear -> 1

Other resolutions use the same code: ``log2(res / 4)`` blocks. The generator keeps
the *last* (finest) blocks of the 128 px multiplier list ``[16, 16, 8, 4, 2, 1]``
(first entry: the 4x4 map after the linear layer), the discriminator the *first*
blocks of ``[1, 2, 4, 8, 16]``, so every net ends at ``ch`` channels in G and
starts at ``ch`` in D. ``channel_mults`` overrides the list.

Attention placement (``attn_index=None`` picks it):

* G: the block whose output is 32x32 (its AN runs at 32x32, as SAGAN places its
  attention); below 32 px the middle block.
* D: the block whose output is 32x32 (128 px: the second block, as in the listing;
  64 px: the first); at 32 px and below, the middle block.
* ``attention``: ``"an"`` (Attentive Normalization, default), ``"sa"`` (SAGAN
  self-attention, spectrally normalised, in the same slot), ``"none"`` (SN-GAN-like).

Reading of Figures 1 and 2 (supplement) and of "AN between a convolution and its
activation" (authors' README):

* G default block:  CBN - ReLU - up(nearest x2) - conv3x3 - CBN - ReLU - conv3x3,
  shortcut conv1x1(up(x)).
* G AN block:       CBN - ReLU - up - conv3x3 - **AN** - CBN - ReLU - conv3x3: AN sits
  right after the first convolution, before the second CBN and its ReLU.
* D block:          ReLU - conv3x3 - [AN] - ReLU - conv3x3 - avgpool, shortcut
  avgpool(conv1x1(x)); the first block is SN-GAN's optimised block
  conv3x3 - [AN] - ReLU - conv3x3 - avgpool with shortcut conv1x1(avgpool(x)).
  AN in D also sits between the first conv and the following activation, i.e. it
  runs at the block's input resolution (64x64 for the 128 px D).

The class embedding of D (``embed_dim``, default ``ch``) is broadcast over space
and concatenated *before* the last two blocks (at 16x16 for every resolution,
which is where the 128 px listing puts it). D has no projection term: the class
enters only through this concatenation, as in the listing.

Spectral norm (``torch.nn.utils.parametrizations.spectral_norm``) wraps every
conv/linear of G and every conv/linear/embedding of D; the CBN gains/biases and
AN's internal weights (plain parameters) are not normalised. SA's 1x1 convs are.

Both nets keep their constructor arguments in ``self.config``; ``get_config()``
returns a JSON-able copy, and ``Generator(**cfg)`` rebuilds the same architecture.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from attnorm.layers import AttentiveNorm, ConditionalBatchNorm2d, create_norm

G_MULTS_128 = (16, 16, 8, 4, 2, 1)  # 4x4 map after the linear, then the output of each up block
D_MULTS_128 = (1, 2, 4, 8, 16)  # output of each down block
ATTENTION_KINDS = ("an", "sa", "none")
D_ARCHS = ("resblock", "conv")  # build_gan's d_arch: the listing's Discriminator, ConvDiscriminator


def sn(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Spectral normalisation of ``module.weight`` (one power iteration per training forward);
    ``enabled=False`` returns the module unchanged."""
    return spectral_norm(module) if enabled else module


def num_blocks(resolution: int) -> int:
    """``log2(resolution / 4)``; resolution must be a power of two in [16, 128] (or more with mults)."""
    if resolution < 8 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
    return int(math.log2(resolution // 4))


def default_attn_index(resolution: int, net: str) -> int:
    """Index of the block holding the attention layer (see module docstring)."""
    nb = num_blocks(resolution)
    if net == "g":
        # block i of G outputs 8 * 2**i pixels
        if resolution >= 32:
            return int(math.log2(32 // 8))
        return nb // 2
    # block i of D outputs resolution / 2**(i+1) pixels
    if resolution >= 64:
        return int(math.log2(resolution // 32)) - 1
    return nb // 2


def make_attention(kind: str, channels: int, num_entities: int, an_kwargs: dict | None) -> nn.Module | None:
    """``"an"`` -> AttentiveNorm, ``"sa"`` -> SN self-attention (both via ``create_norm``), ``"none"`` -> None."""
    kind = (kind or "none").lower()
    if kind == "an":
        return create_norm("an", channels, num_entities=num_entities, **(an_kwargs or {}))
    if kind == "sa":
        return create_norm("sa", channels, spectral_norm=True)
    if kind == "none":
        return None
    raise ValueError(f"unknown attention kind {kind!r}; choose one of {ATTENTION_KINDS}")


def _apply_attention(attn: nn.Module | None, h: Tensor, layouts: list | None) -> Tensor:
    if attn is None:
        return h
    if layouts is not None and isinstance(attn, AttentiveNorm):
        h, s = attn(h, return_layout=True)  # s: (b, n, h, w)
        layouts.append(s)
        return h
    return attn(h)


def class_weights_or_labels(y: Tensor, num_classes: int) -> None:
    if y.dtype.is_floating_point:
        if y.dim() != 2 or y.shape[1] != num_classes:
            raise ValueError(f"class weights must be (b, {num_classes}), got {tuple(y.shape)}")
    elif y.dim() != 1:
        raise ValueError(f"labels must be (b,), got {tuple(y.shape)}")


def class_rows(table: nn.Embedding, y: Tensor) -> Tensor:
    """(b, dim) rows of ``table`` for labels (b,), or for class weights (b, C) the same mixture
    of rows (weights @ table)."""
    if y.dtype.is_floating_point:
        return y.to(table.weight.dtype) @ table.weight
    return table(y)


# ---------------------------------------------------------------------------- generator
def coordinate_channels(h: Tensor) -> Tensor:
    """(b, 2, H, W) in ``h``'s dtype, device and memory format: channel 0 each pixel centre's x,
    channel 1 its y, both spanning [-1, 1] (first to last pixel) across the map."""
    b, _, height, width = h.shape
    ys = torch.linspace(-1.0, 1.0, height, device=h.device, dtype=h.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=h.device, dtype=h.dtype)
    grid = torch.stack([xs.view(1, width).expand(height, width), ys.view(height, 1).expand(height, width)])
    out = grid.unsqueeze(0).expand(b, 2, height, width)
    if h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def fourier_channels(h: Tensor, freqs: Tensor, phases: Tensor) -> Tensor:
    """(b, k, H, W) in ``h``'s dtype, device and memory format: channel j of sample i is
    ``sin(freqs[i, j, 0] * x + freqs[i, j, 1] * y + phases[i, j])`` with x, y the pixel centres'
    coordinates spanning [-1, 1] across the map (as in :func:`coordinate_channels`).

    ``freqs`` (b, k, 2) in radians per unit of x and y; ``phases`` (b, k)."""
    b, _, height, width = h.shape
    ys = torch.linspace(-1.0, 1.0, height, device=h.device, dtype=freqs.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=h.device, dtype=freqs.dtype)
    arg = (freqs[..., 0, None, None] * xs.view(1, 1, 1, width) + freqs[..., 1, None, None] * ys.view(1, 1, height, 1)
           + phases[..., None, None])  # (b, k, H, W)
    out = torch.sin(arg).to(h.dtype)
    if h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


class FourierFeatures(nn.Module):
    """Per-sample plane waves for G (not in the listing): a linear map of the latent (and the class
    embedding) gives ``k`` frequency vectors and phases; :func:`fourier_channels` draws them at any
    map size. A G given them can draw a straight stripe at any angle, period and phase by passing one
    through, where a convolutional G has to build a sinusoid out of ReLUs and 3x3 kernels.

    The frequencies start spread over about +-3 pi per axis (a wave of up to ~3 periods across the
    image; the procedural data's stripes have 2-6): the map's outputs, about N(0, 1) at initialisation,
    are multiplied by ``max_freq`` (frequencies) and pi (phases)."""

    def __init__(self, in_dim: int, k: int, max_freq: float = 3.0 * math.pi) -> None:
        super().__init__()
        self.k, self.max_freq = int(k), float(max_freq)
        self.map = nn.Linear(in_dim, 3 * self.k)
        nn.init.normal_(self.map.weight, std=1.0 / math.sqrt(in_dim))
        nn.init.uniform_(self.map.bias, -1.0, 1.0)

    def forward(self, code: Tensor) -> tuple[Tensor, Tensor]:
        """code (b, in_dim) -> (freqs (b, k, 2), phases (b, k)), float32."""
        out = self.map(code.float()).view(code.shape[0], self.k, 3)
        return out[..., :2] * self.max_freq, out[..., 2] * math.pi


UPSAMPLE_MODES = ("nearest", "bilinear", "shuffle")


def _check_upsample(mode: str | list[str], name: str = "upsample", blocks: int | None = None) -> list[str]:
    """The per-block modes of ``mode``: one of :data:`UPSAMPLE_MODES` for every block, or a list of them
    (comma-separated or a Python / JSON list), first block first (``blocks``: how many the list must name
    when given). ``name``: the argument or config key as the caller knows it."""
    modes = [str(m).strip() for m in (mode if isinstance(mode, (list, tuple)) else str(mode).split(","))]
    bad = [m for m in modes if m not in UPSAMPLE_MODES]
    if bad:
        raise ValueError(f"{name} must be one of {', '.join(UPSAMPLE_MODES)} or a comma-separated list of them "
                         f"(one per block), got {mode!r}")
    if len(modes) == 1:
        return modes * (blocks or 1)
    if blocks is not None and len(modes) != blocks:
        raise ValueError(f"{name}={mode!r} names {len(modes)} modes for {blocks} block{'s' if blocks != 1 else ''}: "
                         f"name one mode, or one per block")
    return modes


def _check_mults(mults: list[int], entries: int, resolution: int, name: str, first: str) -> None:
    """One error line when a channel-multiplier list does not have ``entries`` entries (``name``: the argument or
    config key as the caller knows it; ``first``: which stage the list starts with)."""
    if len(mults) != entries:
        raise ValueError(f"{name} needs {entries} entries for resolution {resolution} ({first} first), got {list(mults)}")


def _up(x: Tensor, mode: str) -> Tensor:
    """The map at twice the size: nearest-neighbour copies, or bilinear interpolation (half-pixel centres).
    (``"shuffle"`` is a learned layer, :class:`ShuffleUp`; where a fixed doubling is needed it is nearest.)"""
    if mode == "bilinear":
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    return F.interpolate(x, scale_factor=2, mode="nearest")


class ShuffleUp(nn.Module):
    """Learned doubling (sub-pixel convolution, Shi et al. 2016): a 1x1 convolution to ``4 c`` channels, then
    ``pixel_shuffle`` puts each pixel's four outputs on its 2x2 children. Initialised as ICNR (Aitken et al.
    2017) puts it: each channel copied to its four children, so it starts as nearest-neighbour doubling exactly
    (with spectral norm, whose divisor is then 2, a fixed gain of 2 restores the copies and bounds the layer's
    norm at 2 after). Nearest copies are a box filter, which damps what G draws at the finer stage's short
    periods; learned children can differ from each other from the start of the finer stage."""

    def __init__(self, ch: int, use_sn: bool = True) -> None:
        super().__init__()
        conv = nn.Conv2d(ch, 4 * ch, 1, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            for k in range(4):  # pixel_shuffle reads output channel 4 c + k as child k of channel c
                conv.weight[torch.arange(ch) * 4 + k, torch.arange(ch), 0, 0] = 1.0
        self.conv = sn(conv, use_sn)
        self.gain = 2.0 if use_sn else 1.0

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(x) * self.gain, 2)


class GBlock(nn.Module):
    """Up block (Fig. 1 / Fig. 2 with ``attention``); ``forward(x, y, layouts=None)``.

    Args:
        in_ch, out_ch: channels in and out; the spatial size doubles.
        num_classes: classes of the two conditional batch norms.
        attention: ``"an"``, ``"sa"`` or ``"none"``, placed after the first conv.
        num_entities, an_kwargs: AN options (``an_kwargs`` goes to ``AttentiveNorm``).
        latent_dim: > 0: both conditional norms also take a latent chunk (``forward``'s ``z``).
        coords: CoordConv (Liu et al. 2018): two channels holding each pixel's x and y in [-1, 1]
            are appended to the first convolution's input, so the block can draw what depends on
            the position itself (a straight stripe, a linear gradient) rather than inferring
            the position from the zero padding at the borders.
        fourier: ``k`` > 0: ``k`` per-sample plane waves (:class:`FourierFeatures`, ``forward``'s
            ``waves``) are appended to the first convolution's input.
        upsample: ``"nearest"`` (the listing) or ``"bilinear"``: how both paths double the map; or
            ``"shuffle"``: the residual path doubles through a learned :class:`ShuffleUp` (starting as nearest),
            the shortcut by nearest copies.
    """

    def __init__(self, in_ch: int, out_ch: int, num_classes: int, attention: str = "none",
                 num_entities: int = 16, an_kwargs: dict | None = None, use_sn: bool = True,
                 latent_dim: int = 0, coords: bool = False, fourier: int = 0, upsample: str = "nearest") -> None:
        super().__init__()
        self.upsample = _check_upsample(upsample, blocks=1)[0]  # one mode, as _up compares it
        self.coords = bool(coords)
        self.fourier = int(fourier)
        self.cbn1 = ConditionalBatchNorm2d(in_ch, num_classes, latent_dim=latent_dim)
        self.conv1 = sn(nn.Conv2d(in_ch + (2 if coords else 0) + self.fourier, out_ch, 3, padding=1), use_sn)
        self.attn = make_attention(attention, out_ch, num_entities, an_kwargs)
        self.cbn2 = ConditionalBatchNorm2d(out_ch, num_classes, latent_dim=latent_dim)
        self.conv2 = sn(nn.Conv2d(out_ch, out_ch, 3, padding=1), use_sn)
        self.shortcut = sn(nn.Conv2d(in_ch, out_ch, 1), use_sn)
        self.shuffle = ShuffleUp(in_ch, use_sn) if self.upsample == "shuffle" else None

    def forward(self, x: Tensor, y: Tensor, layouts: list | None = None, z: Tensor | None = None,
                waves: tuple[Tensor, Tensor] | None = None) -> Tensor:
        fixed = "nearest" if self.shuffle is not None else self.upsample
        x_up = _up(x, fixed)  # (b, in, 2h, 2w)
        h = F.relu(self.cbn1(x, y, z))
        h = self.shuffle(h) if self.shuffle is not None else _up(h, fixed)
        if self.coords:
            h = torch.cat([h, coordinate_channels(h)], dim=1)  # (b, in + 2, 2h, 2w)
        if self.fourier:
            if waves is None:
                raise ValueError("this block was built with fourier channels: pass waves=(freqs, phases)")
            h = torch.cat([h, fourier_channels(h, *waves)], dim=1)  # (b, ... + k, 2h, 2w)
        h = self.conv1(h)  # (b, out, 2h, 2w)
        h = _apply_attention(self.attn, h, layouts)
        h = self.conv2(F.relu(self.cbn2(h, y, z)))
        return h + self.shortcut(x_up)


class Generator(nn.Module):
    """Class-conditional generator; ``forward(z, y)`` -> images (b, 3, res, res) in [-1, 1].

    Args:
        resolution: output size (power of two; presets 32, 64, 128).
        ch: width unit (paper: 64 at 128 px).
        num_classes: classes of the conditional batch norms.
        z_dim: latent size (paper: 128).
        attention: ``"an"`` (default), ``"sa"`` or ``"none"``.
        num_entities: AN's number of semantic entities n (paper: 16).
        attn_index: block holding the attention (None: the 32x32 block, see module doc).
        channel_mults: override of the multipliers, ``num_blocks + 1`` entries.
        an_kwargs: extra ``AttentiveNorm`` arguments (``self_sampling``, ``temperature``, ...).
        class_embed_dim: 0 (the listing): the class enters G only through the conditional
            batch norms, whose per-class gains and biases start class-independent (1 and 0).
            ``> 0``: also a class embedding (N(0, 1) initialised, ``class_embed_dim`` wide) is
            concatenated to ``z`` before the first linear layer, so the class shapes the
            4x4 map from the first step (cGAN/BigGAN-style; attnorm's CPU preset).
        spectral_norm: spectral normalisation of G's convolutions and linear layer (the
            listing, SAGAN, BigGAN); False leaves them plain (SN-GAN's generator).
        hierarchical_z: BigGAN's hierarchical latent (not in the listing): ``z`` is split into
            ``num_blocks + 1`` chunks (``torch.tensor_split``); the first feeds the linear layer,
            chunk ``i + 1`` the conditional norms of block ``i`` (zero-initialised linear maps added
            to their class gains and biases), so the latent acts at every scale, not only at 4x4.
        coords: every block's first convolution also sees two coordinate channels
            (:func:`coordinate_channels`, CoordConv; not in the listing).
        fourier: ``k`` > 0: every block's first convolution also sees ``k`` plane waves whose
            frequencies and phases are a linear map of the whole latent and the class embedding
            (:class:`FourierFeatures`; not in the listing).
        upsample: ``"nearest"`` (the listing, default), ``"bilinear"`` or ``"shuffle"`` (a learned
            :class:`ShuffleUp` on the residual path, starting as nearest): how every block doubles
            its map (not in the listing); or a comma-separated list, one mode per block, first
            block first (e.g. ``"bilinear,bilinear,nearest"`` at 32 px: smooth coarse maps, the
            last doubling sharp).
        skip: StyleGAN2's skip generator (Karras et al. 2020; not in the listing): every block but
            the last also draws an RGB image at its own size (``SN-Conv1x1(ReLU(h))``); these
            images are summed coarse to fine, each doubled by bilinear interpolation before the
            next is added, and the sum is added to the last layer's output before the tanh. The
            blocks still double their features as ``upsample`` says: smooth, low-frequency colour
            (a linear gradient) comes from the coarse images, sharp detail from the fine features.
        grain: ``s`` > 0: add to the output image per-pixel Gaussian noise with a learned std per
            colour channel (``grain_std``, ``s`` at the start; StyleGAN's noise input, at the image):
            the i.i.d. fine grain of real images, which convolutions of z draw badly (not in the
            listing; the procedural data's grain is 0.06 in [-1, 1] units); the sum is clipped to
            [-1, 1]. The noise comes from torch's global generator, so seed it for repeatable
            pictures; the std is exported with the weights.

    ``y`` is a (b,) long tensor of labels or a (b, num_classes) float tensor of
    class weights (soft path through every CBN, for class interpolation).
    """

    def __init__(self, resolution: int = 128, ch: int = 64, num_classes: int = 1000, z_dim: int = 128,
                 attention: str = "an", num_entities: int = 16, attn_index: int | None = None,
                 channel_mults: list[int] | None = None, an_kwargs: dict | None = None,
                 class_embed_dim: int = 0, spectral_norm: bool = True, hierarchical_z: bool = False,
                 coords: bool = False, fourier: int = 0, upsample: str = "nearest", skip: bool = False,
                 grain: float = 0.0) -> None:
        super().__init__()
        nb = num_blocks(resolution)
        up_modes = _check_upsample(upsample, blocks=nb)
        if fourier < 0:
            raise ValueError(f"fourier must be >= 0, got {fourier}")
        if hierarchical_z and z_dim < nb + 1:
            raise ValueError(f"hierarchical_z splits z into {nb + 1} chunks: z_dim must be >= {nb + 1}, got {z_dim}")
        if class_embed_dim < 0:
            raise ValueError(f"class_embed_dim must be >= 0, got {class_embed_dim}")
        if channel_mults is None:
            if nb + 1 > len(G_MULTS_128):
                raise ValueError(f"no default channel_mults for resolution {resolution}; pass channel_mults")
            channel_mults = list(G_MULTS_128[-(nb + 1):])
        _check_mults(channel_mults, nb + 1, resolution, "channel_mults", "the 4x4 stage")
        if attn_index is None:
            attn_index = default_attn_index(resolution, "g")
        if (attention or "none").lower() not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention kind {attention!r}; choose one of {ATTENTION_KINDS}")
        self.config: dict[str, Any] = dict(
            resolution=resolution, ch=ch, num_classes=num_classes, z_dim=z_dim, attention=attention,
            num_entities=num_entities, attn_index=attn_index, channel_mults=list(channel_mults),
            an_kwargs=dict(an_kwargs or {}))
        if class_embed_dim:  # absent for the listing's G: configs saved before the option still load
            self.config["class_embed_dim"] = int(class_embed_dim)
        if not spectral_norm:
            self.config["spectral_norm"] = False
        if hierarchical_z:
            self.config["hierarchical_z"] = True
        if coords:
            self.config["coords"] = True
        if fourier:
            self.config["fourier"] = int(fourier)
        if up_modes != ["nearest"] * nb:
            self.config["upsample"] = upsample if isinstance(upsample, str) else list(upsample)
        if skip:
            self.config["skip"] = True
        if grain < 0:
            raise ValueError(f"grain is the noise's starting std, >= 0 (0: off), got {grain}")
        if grain:
            self.config["grain"] = float(grain)
        # latent chunk sizes: [linear layer, block 0, block 1, ...] (one chunk: the whole z to the linear layer)
        self.z_chunks = [len(c) for c in torch.arange(z_dim).tensor_split(nb + 1)] if hierarchical_z else [z_dim]
        self.resolution, self.num_classes, self.z_dim = resolution, num_classes, z_dim
        chans = [m * ch for m in channel_mults]
        self.class_embed = nn.Embedding(num_classes, class_embed_dim) if class_embed_dim else None
        self.fc = sn(nn.Linear(self.z_chunks[0] + class_embed_dim, 4 * 4 * chans[0]), spectral_norm)
        self.fourier = FourierFeatures(z_dim + class_embed_dim, fourier) if fourier else None
        self.blocks = nn.ModuleList(
            GBlock(chans[i], chans[i + 1], num_classes, attention if i == attn_index else "none",
                   num_entities, an_kwargs, use_sn=spectral_norm,
                   latent_dim=self.z_chunks[i + 1] if hierarchical_z else 0, coords=coords, fourier=fourier,
                   upsample=up_modes[i])
            for i in range(nb))
        self.bn = nn.BatchNorm2d(chans[-1])
        self.conv_out = sn(nn.Conv2d(chans[-1], 3, 3, padding=1), spectral_norm)
        # skip: an RGB image from every block's output but the last's (which conv_out draws)
        self.to_rgb = (nn.ModuleList(sn(nn.Conv2d(chans[i + 1], 3, 1), spectral_norm) for i in range(nb - 1))
                       if skip else None)
        self.grain_std = nn.Parameter(torch.full((3,), float(grain))) if grain else None

    def get_config(self) -> dict[str, Any]:
        return copy.deepcopy(self.config)

    def pop_drawn(self, default: Tensor) -> Tensor:
        """The image of the last forward with gradients in training mode before the grain was added (``default``
        without grain), forgotten once read: a module holding a graph tensor could not be deep-copied."""
        return self.__dict__.pop("_drawn", default)

    def forward(self, z: Tensor, y: Tensor, return_layouts: bool = False):
        """Args: z (b, z_dim); y labels (b,) or class weights (b, C).
        ``return_layouts``: also return the list of AN soft layouts (b, n, h, w)."""
        class_weights_or_labels(y, self.num_classes)
        layouts: list | None = [] if return_layouts else None
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be (b, {self.z_dim}), got shape {tuple(z.shape)}")
        full_z = z
        z, *block_z = z.split(self.z_chunks, dim=1)  # hierarchical: one chunk per block after the first
        e = None
        if self.class_embed is not None:
            e = class_rows(self.class_embed, y)
            z = torch.cat([z, e.to(z.dtype)], dim=1)  # (b, chunk + class_embed_dim)
        waves = None
        if self.fourier is not None:
            waves = self.fourier(full_z if e is None else torch.cat([full_z, e.to(full_z.dtype)], dim=1))
        h = self.fc(z).view(z.shape[0], -1, 4, 4)  # (b, c0, 4, 4)
        rgb = None  # skip: the coarse images' sum so far, at the current block's size
        for i, block in enumerate(self.blocks):
            h = block(h, y, layouts, block_z[i] if block_z else None, waves)
            if self.to_rgb is not None:
                rgb = None if rgb is None else _up(rgb, "bilinear")
                if i < len(self.to_rgb):
                    block_rgb = self.to_rgb[i](F.relu(h))
                    rgb = block_rgb if rgb is None else rgb + block_rgb
        out = self.conv_out(F.relu(self.bn(h)))
        img = torch.tanh(out if rgb is None else out + rgb)  # (b, 3, res, res)
        if self.grain_std is not None:
            if self.training and torch.is_grad_enabled():  # for the mode-seeking term: see pop_drawn
                self._drawn = img
            grain = self.grain_std.to(img.dtype).view(1, 3, 1, 1) * torch.randn_like(img)
            img = (img + grain).clamp(-1.0, 1.0)  # the data's grain is clipped at the range's ends too
        return (img, layouts) if return_layouts else img


# ---------------------------------------------------------------------------- discriminator
class DBlock(nn.Module):
    """Down block; ``optimized=True`` is SN-GAN's first block (no leading ReLU, pool-then-conv shortcut).

    Args:
        in_ch, out_ch: channels; the spatial size halves.
        optimized: first-block variant.
        attention, num_entities, an_kwargs: as in :class:`GBlock` (after the first conv).
    """

    def __init__(self, in_ch: int, out_ch: int, optimized: bool = False, attention: str = "none",
                 num_entities: int = 16, an_kwargs: dict | None = None) -> None:
        super().__init__()
        self.optimized = optimized
        self.conv1 = sn(nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.attn = make_attention(attention, out_ch, num_entities, an_kwargs)
        self.conv2 = sn(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.shortcut = sn(nn.Conv2d(in_ch, out_ch, 1))

    def forward(self, x: Tensor, layouts: list | None = None) -> Tensor:
        h = x if self.optimized else F.relu(x)
        h = _apply_attention(self.attn, self.conv1(h), layouts)
        h = F.avg_pool2d(self.conv2(F.relu(h)), 2)  # (b, out, h/2, w/2)
        if self.optimized:
            sc = self.shortcut(F.avg_pool2d(x, 2))
        else:
            sc = F.avg_pool2d(self.shortcut(x), 2)
        return h + sc


class Discriminator(nn.Module):
    """Class-conditional discriminator; ``forward(x, y)`` -> logits (b,).

    Args:
        resolution, ch, num_classes, attention, num_entities, attn_index, channel_mults,
        an_kwargs: as in :class:`Generator` (``channel_mults`` has ``num_blocks`` entries).
        embed_dim: size of the class embedding concatenated before the last two
            blocks (default ``ch``).
        mbstd_group: > 0 adds ProGAN's minibatch standard deviation channel before the last block:
            the mean feature std over groups of this many *consecutive* samples (so a batch of
            reals followed by fakes, each a multiple of the group, never mixes them), which lets D
            see a lack of diversity (not in the listing; 0 = off).
        mbstd_by_class: group that channel by class label instead (``forward``'s ``mbstd_ids``,
            default the labels): the spread within a class, which mixed-class groups do not show
            when G gives every class a single image (not in the listing).
        mbstd_channels, mbstd_spatial: that many stddev channels, one per group of feature
            channels, and the stddev kept per position (:func:`minibatch_std`; defaults 1, False).
        projection: also add SN-GAN's projection term ``<Embed_p(y), sum_pool(h)>`` to the
            logit (not in the paper's listing; off by default). A stronger class signal
            for D, which helps short runs learn the conditioning.
    """

    def __init__(self, resolution: int = 128, ch: int = 64, num_classes: int = 1000,
                 attention: str = "an", num_entities: int = 16, attn_index: int | None = None,
                 channel_mults: list[int] | None = None, embed_dim: int | None = None,
                 projection: bool = False, an_kwargs: dict | None = None, mbstd_group: int = 0,
                 mbstd_by_class: bool = False, mbstd_channels: int = 1, mbstd_spatial: bool = False) -> None:
        super().__init__()
        nb = num_blocks(resolution)
        if channel_mults is None:
            if nb > len(D_MULTS_128):
                raise ValueError(f"no default channel_mults for resolution {resolution}; pass channel_mults")
            channel_mults = list(D_MULTS_128[:nb])
        _check_mults(channel_mults, nb, resolution, "channel_mults", "the full-resolution block")
        if attn_index is None:
            attn_index = default_attn_index(resolution, "d")
        if (attention or "none").lower() not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention kind {attention!r}; choose one of {ATTENTION_KINDS}")
        embed_dim = ch if embed_dim is None else embed_dim
        self.config: dict[str, Any] = dict(
            resolution=resolution, ch=ch, num_classes=num_classes, attention=attention,
            num_entities=num_entities, attn_index=attn_index, channel_mults=list(channel_mults),
            embed_dim=embed_dim, projection=projection, an_kwargs=dict(an_kwargs or {}))
        if mbstd_group:  # absent for the listing's D: configs saved before the option still load
            self.config["mbstd_group"] = int(mbstd_group)
        if mbstd_by_class:
            self.config["mbstd_by_class"] = True
        self.mbstd_group = int(mbstd_group)
        self.mbstd_by_class = bool(mbstd_by_class and mbstd_group)
        self.resolution, self.num_classes = resolution, num_classes
        self.concat_index = max(nb - 2, 0)  # the embedding joins the input of this block
        chans = [3] + [m * ch for m in channel_mults]
        self.mbstd_channels, self.mbstd_spatial = _mbstd_shape_options(
            self.config, mbstd_group, mbstd_channels, mbstd_spatial,
            features=chans[nb - 1] + (embed_dim if self.concat_index == nb - 1 else 0))
        blocks = []
        for i in range(nb):
            in_ch = chans[i] + (embed_dim if i == self.concat_index else 0) + (self.mbstd_channels if mbstd_group and i == nb - 1 else 0)
            blocks.append(DBlock(in_ch, chans[i + 1], optimized=(i == 0),
                                 attention=attention if i == attn_index else "none",
                                 num_entities=num_entities, an_kwargs=an_kwargs))
        self.blocks = nn.ModuleList(blocks)
        self.embed = sn(nn.Embedding(num_classes, embed_dim))
        self.linear = sn(nn.Linear(chans[-1], 1))
        self.proj = sn(nn.Embedding(num_classes, chans[-1])) if projection else None

    def get_config(self) -> dict[str, Any]:
        return copy.deepcopy(self.config)

    def class_embedding(self, y: Tensor, table: nn.Embedding | None = None) -> Tensor:
        """(b, dim) rows of ``table`` (default the concat embedding) for labels (b,) or
        class weights (b, C) (weights @ table)."""
        class_weights_or_labels(y, self.num_classes)
        return class_rows(self.embed if table is None else table, y)

    def forward(self, x: Tensor, y: Tensor, return_layouts: bool = False, mbstd_ids: Tensor | None = None):
        """``mbstd_ids``: see :class:`ConvDiscriminator`."""
        layouts: list | None = [] if return_layouts else None
        h = x
        for i, block in enumerate(self.blocks):
            if i == self.concat_index:
                e = self.class_embedding(y)  # (b, e)
                e = e[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])  # (b, e, h, w)
                h = torch.cat([e.to(h.dtype), h], dim=1)
            if self.mbstd_group and i == len(self.blocks) - 1:
                ids = mbstd_ids_of(y, mbstd_ids) if self.mbstd_by_class else None
                h = torch.cat([h, minibatch_std(h, self.mbstd_group, ids, self.mbstd_channels,
                                                self.mbstd_spatial)], dim=1)
            h = block(h, layouts)
        pooled = F.relu(h).sum(dim=(2, 3))  # (b, c): global sum pooling
        out = self.linear(pooled).squeeze(1)  # (b,)
        if self.proj is not None:
            out = out + (self.class_embedding(y, self.proj).to(pooled.dtype) * pooled).sum(1)
        return (out, layouts) if return_layouts else out


class ConvDiscriminator(nn.Module):
    """A light, DCGAN-style class-conditional discriminator for CPU runs; ``forward(x, y)`` -> logits (b,).

    Not the supplement's: per stage a 3x3 convolution and a 4x4 stride-2 convolution
    (LeakyReLU 0.1, spectral norm on every layer), widths ``ch, 2ch, 4ch`` down to 4x4, a last
    3x3 convolution to ``8 ch``, global sum pooling, a linear logit plus SN-GAN's projection term
    ``<Embed(y), pooled>``. At 32 px and ``ch`` 32 it costs about as much per image as the
    listing's ResBlock D at ``ch`` 16, but is 8x wider at 4x4; in a 5-minute CPU run it gives G a
    class signal that the thin ResBlock D does not (issue 8, README). No attention layer.

    Args:
        resolution: power of two >= 8. ch: base width. num_classes: labels.
        mbstd_group: > 0 adds the minibatch standard deviation channel before the last convolution
            (as in :class:`Discriminator`).
        mbstd_by_class: group that channel by class label instead of by position (as in
            :class:`Discriminator`).
        mbstd_channels, mbstd_spatial: as in :class:`Discriminator`.
    """

    def __init__(self, resolution: int = 32, ch: int = 32, num_classes: int = 10, mbstd_group: int = 0,
                 mbstd_by_class: bool = False, mbstd_channels: int = 1, mbstd_spatial: bool = False) -> None:
        super().__init__()
        nb = num_blocks(resolution)
        self.config: dict[str, Any] = dict(resolution=resolution, ch=ch, num_classes=num_classes,
                                           mbstd_group=int(mbstd_group))
        if mbstd_by_class:  # absent unless on: configs saved before the option still load
            self.config["mbstd_by_class"] = True
        self.resolution, self.num_classes, self.mbstd_group = resolution, num_classes, int(mbstd_group)
        self.mbstd_by_class = bool(mbstd_by_class and mbstd_group)
        self.mbstd_channels, self.mbstd_spatial = _mbstd_shape_options(self.config, mbstd_group, mbstd_channels,
                                                                       mbstd_spatial, features=ch * 2 ** (nb - 1))
        layers, c_in = [], 3
        for i in range(nb):
            c = ch * 2 ** i
            layers += [sn(nn.Conv2d(c_in, c, 3, 1, 1)), sn(nn.Conv2d(c, c, 4, 2, 1))]
            c_in = c
        self.convs = nn.ModuleList(layers)
        self.last = sn(nn.Conv2d(c_in + (self.mbstd_channels if mbstd_group else 0), ch * 2 ** nb, 3, 1, 1))
        self.linear = sn(nn.Linear(ch * 2 ** nb, 1))
        self.proj = sn(nn.Embedding(num_classes, ch * 2 ** nb))

    def get_config(self) -> dict[str, Any]:
        return copy.deepcopy(self.config)

    def forward(self, x: Tensor, y: Tensor, return_layouts: bool = False, mbstd_ids: Tensor | None = None):
        """``mbstd_ids`` (b,): the groups of a class-grouped minibatch stddev (default: the labels;
        give real and fake samples of one batch different ids so no group mixes them)."""
        h = x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.1)
        if self.mbstd_group:
            ids = mbstd_ids_of(y, mbstd_ids) if self.mbstd_by_class else None
            h = torch.cat([h, minibatch_std(h, self.mbstd_group, ids, self.mbstd_channels, self.mbstd_spatial)],
                          dim=1)
        pooled = F.leaky_relu(self.last(h), 0.1).sum(dim=(2, 3))  # (b, c)
        class_weights_or_labels(y, self.num_classes)
        e = class_rows(self.proj, y)
        out = self.linear(pooled).squeeze(1) + (e.to(pooled.dtype) * pooled).sum(1)
        return (out, []) if return_layouts else out


def _mbstd_shape_options(config: dict, group: int, channels: int, spatial: bool, features: int) -> tuple[int, bool]:
    """Check a D's minibatch-stddev channel count (it must divide the ``features`` channels it is
    taken over) and spatial flag; record them in its ``config`` only where they differ from the
    defaults (so configs saved before the options still load)."""
    channels = int(channels)
    if channels < 1:
        raise ValueError(f"mbstd_channels must be >= 1, got {channels}")
    if group and features % channels:
        raise ValueError(f"mbstd_channels (d_mbstd_channels) must divide the {features} feature channels D takes "
                         f"the stddev over, got {channels}")
    if group and channels != 1:
        config["mbstd_channels"] = channels
    if group and spatial:
        config["mbstd_spatial"] = True
    return channels, bool(spatial)


def minibatch_std(h: Tensor, group: int, ids: Tensor | None = None, channels: int = 1,
                  spatial: bool = False) -> Tensor:
    """(b, channels, H, W): per group of ``group`` consecutive samples (the largest divisor of b not
    above ``group``), the standard deviation over the group of every feature, averaged over features and
    positions, broadcast to a channel.

    With ``ids`` (b,) integers the groups are instead the samples that share an id, wherever they
    sit in the batch (``group`` is then unused); a sample whose id occurs once gets the mean of the
    other groups' values (0 if no id repeats). Grouped by class label, this is the spread *within*
    a class, which a generator that ignores its latent (one image per class) drives to zero while
    mixed-class groups stay spread out.

    ``channels`` > 1 splits the features into that many consecutive channel groups, one output
    channel each (StyleGAN's ``num_channels``; it must divide the feature channels); ``spatial``
    keeps the mean per position instead of averaging over the map, so D sees *where* the samples of
    a group agree (a class drawn in one colour at its centre, say)."""
    b, c, hh, ww = h.shape
    channels = int(channels)
    if channels < 1 or c % channels:
        raise ValueError(f"minibatch-stddev channels must divide the {c} feature channels, got {channels}")
    if ids is not None:
        return _minibatch_std_by_id(h, ids, channels, spatial)
    g = max(d for d in range(1, min(group, b) + 1) if b % d == 0)
    if g < 2:
        return h.new_zeros(b, channels, hh, ww)
    x = h.float().view(b // g, g, c, hh, ww)
    # the population variance over the group as the mean squared deviation: ``x.var(dim=1)`` on this
    # view took 2-8 ms on the CPU where these ops take 0.1-0.5 (session 24, one thread, b 16-32, 4x4-8x8)
    var = (x - x.mean(1, keepdim=True)).square().mean(1)  # (b / g, c, H, W)
    std = _pool_std((var + 1e-8).sqrt(), channels, spatial)  # (b / g, channels, H or 1, W or 1)
    return std.repeat_interleave(g, dim=0).expand(b, channels, hh, ww).to(h.dtype)


def _pool_std(std: Tensor, channels: int, spatial: bool) -> Tensor:
    """(n, c, H, W) per-feature stds -> (n, channels, H, W) or (n, channels, 1, 1) means."""
    n, c, hh, ww = std.shape
    if channels == 1 and not spatial:  # one reduction, as before the options (the same rounding)
        return std.reshape(n, -1).mean(1).view(n, 1, 1, 1)
    std = std.reshape(n, channels, c // channels, hh, ww).mean(2)
    return std if spatial else std.mean(dim=(2, 3), keepdim=True)


def _minibatch_std_by_id(h: Tensor, ids: Tensor, channels: int = 1, spatial: bool = False) -> Tensor:
    b, c, hh, ww = h.shape
    if ids.shape != (b,):
        raise ValueError(f"mbstd ids must be ({b},), got {tuple(ids.shape)}")
    x = h.float().reshape(b, -1)  # (b, f)
    _, inv = torch.unique(ids, return_inverse=True)  # (b,): group index of each sample
    onehot = F.one_hot(inv).to(x.dtype)  # (b, groups)
    count = onehot.sum(0)  # (groups,)
    mean = (onehot.t() @ x) / count[:, None]  # (groups, f)
    var = (onehot.t() @ (x - mean[inv]).square()) / count[:, None]  # population variance
    std = _pool_std((var + 1e-8).sqrt().view(-1, c, hh, ww), channels, spatial)  # (groups, channels, ., .)
    repeated = count >= 2
    if not bool(repeated.any()):
        return h.new_zeros(b, channels, hh, ww)
    std = torch.where(repeated[:, None, None, None], std, std[repeated].mean(0, keepdim=True))
    return std[inv].expand(b, channels, hh, ww).to(h.dtype)


def mbstd_ids_of(y: Tensor, ids: Tensor | None = None) -> Tensor:
    """Group ids for a class-grouped minibatch stddev: ``ids`` when given, else the labels (the
    argmax of class weights)."""
    if ids is not None:
        return ids
    return y if y.dim() == 1 else y.argmax(1)


def build_gan(resolution: int = 32, ch: int = 16, num_classes: int = 10, z_dim: int = 128,
              attention: str = "an", num_entities: int = 16, an_kwargs: dict | None = None,
              d_ch: int | None = None, projection: bool = False, class_embed_dim: int = 0,
              g_spectral_norm: bool = True, mbstd_group: int = 0,
              d_channel_mults: list[int] | None = None, d_arch: str = "resblock",
              mbstd_by_class: bool = False, mbstd_channels: int = 1, mbstd_spatial: bool = False,
              hierarchical_z: bool = False,
              g_coords: bool = False, g_fourier: int = 0, g_upsample: str = "nearest",
              g_skip: bool = False, g_grain: float = 0.0,
              g_channel_mults: list[int] | None = None) -> tuple[Generator, nn.Module]:
    """A matching (G, D) pair from one set of arguments (``d_ch`` defaults to ``ch``;
    ``mbstd_channels`` and ``mbstd_spatial`` go to either discriminator (:func:`minibatch_std`);
    ``class_embed_dim``, ``g_spectral_norm``, ``hierarchical_z``, ``g_coords`` (as ``coords``), ``g_fourier`` (as ``fourier``), ``g_upsample`` (as ``upsample``), ``g_skip`` (as ``skip``), ``g_grain`` (as ``grain``) and ``g_channel_mults`` (as ``channel_mults``; default the
    listing's) go to the generator, ``d_channel_mults`` (default:
    the listing's 1, 2, 4, ...) to the discriminator). ``d_arch`` "resblock": the listing's D
    (:class:`Discriminator`); "conv": :class:`ConvDiscriminator` (``d_ch`` wide; no attention,
    always the projection term)."""
    if d_arch not in D_ARCHS:
        raise ValueError(f"d_arch must be one of {', '.join(D_ARCHS)}, got {d_arch!r}")
    _check_upsample(g_upsample, "g_upsample", num_blocks(resolution))  # named as the training config names it
    if g_channel_mults is not None:  # named as the training config names it
        _check_mults(g_channel_mults, num_blocks(resolution) + 1, resolution, "g_channel_mults", "the 4x4 stage")
    g = Generator(resolution=resolution, ch=ch, num_classes=num_classes, z_dim=z_dim,
                  attention=attention, num_entities=num_entities, an_kwargs=an_kwargs,
                  class_embed_dim=class_embed_dim, spectral_norm=g_spectral_norm, hierarchical_z=hierarchical_z,
                  coords=g_coords, fourier=g_fourier, upsample=g_upsample, skip=g_skip, grain=g_grain,
                  channel_mults=g_channel_mults)
    if d_arch == "conv":
        return g, ConvDiscriminator(resolution=resolution, ch=d_ch or ch, num_classes=num_classes,
                                    mbstd_group=mbstd_group, mbstd_by_class=mbstd_by_class,
                                    mbstd_channels=mbstd_channels, mbstd_spatial=mbstd_spatial)
    d = Discriminator(resolution=resolution, ch=d_ch or ch, num_classes=num_classes,
                      attention=attention, num_entities=num_entities, an_kwargs=an_kwargs,
                      projection=projection, mbstd_group=mbstd_group, channel_mults=d_channel_mults,
                      mbstd_by_class=mbstd_by_class, mbstd_channels=mbstd_channels, mbstd_spatial=mbstd_spatial)
    return g, d


@torch.no_grad()
def standing_statistics(G: "Generator", batches: int = 200, batch_size: int = 16, seed: int = 0) -> "Generator":
    """BigGAN's "standing statistics": replace the running mean/variance of every batch norm of
    ``G`` by the plain average, over ``batches`` fresh batches of ``z ~ N(0, I)`` and uniform
    labels (a ``torch.Generator`` seeded with ``seed``), of the batch statistics that training-mode
    normalisation would use. The running averages left by training mix statistics of many
    past weights (and, in an EMA copy, of weights that never existed); these match the weights as
    they are. Only the batch norms run in training mode (AN stays in eval mode: no SSR draws).
    Returns ``G`` in eval mode, its momenta restored; other parameters are not touched."""
    bns = [m for m in G.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return G.eval()
    if batches < 1 or batch_size < 2:
        raise ValueError(f"standing statistics need batches >= 1 and batch_size >= 2, got {batches}, {batch_size}")
    device = next(G.parameters()).device
    gen = torch.Generator().manual_seed(int(seed))
    G.eval()
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the forward passes below
        m.train()
    try:
        for _ in range(batches):
            z = torch.randn(batch_size, G.z_dim, generator=gen)
            y = torch.randint(G.num_classes, (batch_size,), generator=gen)
            G(z.to(device), y.to(device))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        G.eval()
    return G


def attention_layers(module: nn.Module) -> list[AttentiveNorm]:
    """The AN layers of ``module``, in forward order."""
    return [m for m in module.modules() if isinstance(m, AttentiveNorm)]


def truncated_normal(shape: tuple[int, ...], truncation: float | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
    """Standard normal, entries with ``|z| > truncation`` redrawn until inside (None: no truncation)."""
    z = torch.randn(shape, generator=generator)
    if truncation is None or truncation <= 0:
        return z
    for _ in range(1000):
        bad = z.abs() > truncation
        if not bad.any():
            break
        z[bad] = torch.randn(int(bad.sum()), generator=generator)
    return z.clamp(-truncation, truncation)


# ---------------------------------------------------------------------------- synchronised batch norm on CPU
class DistributedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are taken over the batches of all DDP ranks.

    ``nn.SyncBatchNorm`` refuses CPU tensors; this one works with any backend (gloo on
    CPU). In training mode with an initialised process group of more than one rank the
    per-channel sum and count, then the sum of squared deviations from the global mean,
    are all-reduced (``torch.distributed.nn.functional.all_reduce``, which all-reduces
    the gradients in backward), so output, input gradients and running statistics equal
    those of one ``BatchNorm2d`` over the concatenated global batch. Every rank must call
    it the same number of times. Otherwise (eval, or not distributed) it is ``BatchNorm2d``.
    Same parameters and buffers as ``BatchNorm2d``: state dicts load either way.
    """

    def forward(self, x: Tensor) -> Tensor:
        import torch.distributed as dist
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce
        self._check_input_dim(x)
        c = x.shape[1]
        count = x.new_full((1,), x.numel() // c)
        s = all_reduce(torch.cat([x.sum(dim=(0, 2, 3)), count]))  # (c + 1,): global sums and pixel count
        n = s[c]
        mean = s[:c] / n  # (c,)
        d = x - mean.view(1, c, 1, 1)
        var = all_reduce(d.pow(2).sum(dim=(0, 2, 3))) / n  # (c,) biased, two-pass
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * n / (n - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        y = d * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def convert_distributed_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` (also CBN's inner one) by a
    :class:`DistributedBatchNorm2d` holding the same parameters and buffers; returns ``module``
    (or the replacement when ``module`` itself is a ``BatchNorm2d``)."""
    if type(module) is nn.BatchNorm2d:
        new = DistributedBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                     module.track_running_stats)
        state = module.state_dict()
        new.load_state_dict(state)
        new.train(module.training)
        return new.to(next(iter(state.values())).device) if state else new
    for name, child in module.named_children():
        new_child = convert_distributed_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
