"""LGM's network (Tang et al. 2024, "LGM: Large Multi-View Gaussian Model"), written from the paper and the released
weights' layout: an asymmetric U-Net whose attention layers attend jointly over the tokens of all four views, then a
1x1 convolution, giving 14 Gaussian parameters per output pixel.

The module tree mirrors the released state dict (``unet.conv_in``, ``unet.down_blocks.{i}.nets.{j}.conv1``,
``unet.down_blocks.{i}.attns.{j}.attn.qkv``, ``unet.mid_block``, ``unet.up_blocks``, ``unet.norm_out``,
``unet.conv_out``, ``conv``), so the published safetensors load as they are. Facts from
``../shared/design/lgm.md`` (configuration ``big``, activations, the two rotation normalisations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import ConfigError, ShapeError

#: LGM always sees four views of one object.
LGM_NUM_VIEWS = 4
#: Channels per input pixel: ImageNet-normalised RGB then the Plücker ray (o x d, d).
LGM_INPUT_CHANNELS = 9
#: Parameters per Gaussian: position 3, opacity 1, scale 3, rotation quaternion (w, x, y, z) 4, colour 3.
GAUSSIAN_PARAMS = 14
GROUPS = 32
ATTENTION_HEADS = 16
#: Residual branches are summed then scaled by sqrt(1/2) so activations keep their variance.
SKIP_SCALE = math.sqrt(0.5)
NORM_EPS = 1e-5


class RotationNormalization(str, Enum):
    """How the raw quaternion channels become the rasterizer's rotation.

    ``PER_GAUSSIAN``: each quaternion is made unit length (the released code since the "fix rotation normalization"
    commit, weights ``model_fp16_fixrot.safetensors``). ``ACROSS_GAUSSIANS``: each quaternion channel is divided by its
    norm over all Gaussians of the object (``F.normalize`` on its default dim 1 of ``[B, N, 4]``), the behaviour the
    older ``model_fp16.safetensors`` was trained with; the rasterizer then builds its matrix from these small,
    non-unit quaternions as they are.
    """

    PER_GAUSSIAN = "per_gaussian"
    ACROSS_GAUSSIANS = "across_gaussians"


@dataclass(frozen=True)
class LGMConfig:
    """Shape of an LGM U-Net. ``big`` (the released weights) is :data:`LGM_BIG`.

    ``input_size`` must be divisible by ``2 ** (len(down_channels) - 1)``; the output (splat) grid side is
    ``input_size / 2 ** (len(down_channels) - 1) * 2 ** (len(up_channels) - 1)``.
    """

    down_channels: tuple = (64, 128, 256, 512, 1024, 1024)
    down_attention: tuple = (False, False, False, True, True, True)
    mid_attention: bool = True
    up_channels: tuple = (1024, 1024, 512, 256, 128)
    up_attention: tuple = (True, True, True, False, False)
    input_size: int = 256
    layers_per_block: int = 2
    attention_heads: int = ATTENTION_HEADS

    def __post_init__(self):
        for name in ("down_channels", "down_attention", "up_channels", "up_attention"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.down_channels) != len(self.down_attention) or len(self.up_channels) != len(self.up_attention):
            raise ConfigError(f"LGM config: {len(self.down_channels)} down channels vs {len(self.down_attention)} "
                              f"attention flags, {len(self.up_channels)} up channels vs {len(self.up_attention)}; "
                              "give one flag per level")
        if not (1 <= len(self.up_channels) <= len(self.down_channels)):
            raise ConfigError(f"LGM config: {len(self.up_channels)} up levels for {len(self.down_channels)} down "
                              "levels; the decoder may be shorter than the encoder, never longer")
        for c in self.down_channels + self.up_channels:
            if c % GROUPS or c % self.attention_heads:
                raise ConfigError(f"LGM config: channel count {c} must be divisible by {GROUPS} (group norm) and "
                                  f"{self.attention_heads} (attention heads)")
        if self.input_size % self.downscale:
            raise ConfigError(f"LGM config: input_size {self.input_size} must be divisible by {self.downscale}")

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.down_channels) - 1)

    @property
    def splat_size(self) -> int:
        """Side of each view's grid of Gaussians (128 for ``big``)."""
        return self.input_size // self.downscale * 2 ** (len(self.up_channels) - 1)


LGM_BIG = LGMConfig()


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a (1x1 when widths differ) shortcut."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, in_ch, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(GROUPS, out_ch, eps=NORM_EPS)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(x))
        h = self.conv2(F.silu(self.norm2(self.conv1(h))))
        return (h + self.shortcut(x)) * SKIP_SCALE


class _QKVAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (no bias) and an output projection (with bias)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, c = tokens.shape
        q, k, v = self.qkv(tokens).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossViewAttention(nn.Module):
    """Residual self-attention over the tokens of all views of an object at once: [B*V, C, H, W] -> same.

    Layout: the batch is view-contiguous (index = b * V + v); the sequence is (view, row, column) flattened.
    """

    def __init__(self, dim: int, heads: int, num_views: int = LGM_NUM_VIEWS):
        super().__init__()
        self.num_views = num_views
        self.norm = nn.GroupNorm(GROUPS, dim, eps=NORM_EPS)
        self.attn = _QKVAttention(dim, heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bv, c, h, w = x.shape
        v = self.num_views
        tokens = self.norm(x).reshape(bv // v, v, c, h * w).permute(0, 1, 3, 2).reshape(bv // v, v * h * w, c)
        out = self.attn(tokens).reshape(bv // v, v, h * w, c).permute(0, 1, 3, 2).reshape(bv, c, h, w)
        return (out + x) * SKIP_SCALE


def _attention_list(n: int, dim: int, heads: int, enabled: bool) -> nn.ModuleList:
    # index j of ``attns`` pairs with ``nets[j]``; levels without attention hold no attention module (no keys)
    return nn.ModuleList([CrossViewAttention(dim, heads) for _ in range(n)] if enabled else [])


class EncoderLevel(nn.Module):
    """``layers`` residual blocks (each optionally followed by cross-view attention), then a strided 3x3 conv.

    Every block's output and the downsampled output are kept for the decoder's skip connections.
    """

    def __init__(self, in_ch: int, out_ch: int, layers: int, attention: bool, downsample: bool, heads: int):
        super().__init__()
        self.nets = nn.ModuleList([ResBlock(in_ch if j == 0 else out_ch, out_ch) for j in range(layers)])
        self.attns = _attention_list(layers, out_ch, heads, attention)
        self.downsample = nn.Conv2d(out_ch, out_ch, 3, stride=2, padding=1) if downsample else None

    def forward(self, x: torch.Tensor, skips: list) -> torch.Tensor:
        for j, net in enumerate(self.nets):
            x = net(x)
            if len(self.attns):
                x = self.attns[j](x)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x


class Bottleneck(nn.Module):
    """Residual block, then (attention, residual block) once."""

    def __init__(self, ch: int, attention: bool, heads: int):
        super().__init__()
        self.nets = nn.ModuleList([ResBlock(ch, ch), ResBlock(ch, ch)])
        self.attns = _attention_list(1, ch, heads, attention)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.nets[0](x)
        if len(self.attns):
            x = self.attns[0](x)
        return self.nets[1](x)


class DecoderLevel(nn.Module):
    """``layers`` residual blocks over [x, skip] concatenations (optionally with attention), then nearest 2x upsampling
    followed by a 3x3 conv."""

    def __init__(self, in_ch: int, last_skip_ch: int, out_ch: int, layers: int, attention: bool, upsample: bool,
                 heads: int):
        super().__init__()
        nets = []
        for j in range(layers):
            skip_ch = last_skip_ch if j == layers - 1 else out_ch
            nets.append(ResBlock((in_ch if j == 0 else out_ch) + skip_ch, out_ch))
        self.nets = nn.ModuleList(nets)
        self.attns = _attention_list(layers, out_ch, heads, attention)
        self.upsample = nn.Conv2d(out_ch, out_ch, 3, padding=1) if upsample else None

    def forward(self, x: torch.Tensor, skips: list) -> torch.Tensor:
        for j, net in enumerate(self.nets):
            x = net(torch.cat([x, skips.pop()], dim=1))  # the most recent encoder output first
            if len(self.attns):
                x = self.attns[j](x)
        if self.upsample is not None:
            x = self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class MultiViewUNet(nn.Module):
    """The asymmetric U-Net: [B*V, 9, S, S] -> [B*V, 14, splat, splat] (view-contiguous batch)."""

    def __init__(self, config: LGMConfig, in_channels: int = LGM_INPUT_CHANNELS, out_channels: int = GAUSSIAN_PARAMS):
        super().__init__()
        cfg = config
        down, up, layers, heads = cfg.down_channels, cfg.up_channels, cfg.layers_per_block, cfg.attention_heads
        self.conv_in = nn.Conv2d(in_channels, down[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            EncoderLevel(down[max(i - 1, 0)], down[i], layers, cfg.down_attention[i], i < len(down) - 1, heads)
            for i in range(len(down))
        ])
        self.mid_block = Bottleneck(down[-1], cfg.mid_attention, heads)
        # decoder level i ends with the skip taken before encoder level (n - 1 - i) downsampled, hence its width;
        # the first stage's skip (conv_in) has width down[0]
        self.up_blocks = nn.ModuleList([
            DecoderLevel(up[max(i - 1, 0)], down[max(len(down) - 2 - i, 0)], up[i], layers + 1, cfg.up_attention[i],
                         i < len(up) - 1, heads)
            for i in range(len(up))
        ])
        self.norm_out = nn.GroupNorm(GROUPS, up[-1], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(up[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        skips = [x]
        for level in self.down_blocks:
            x = level(x, skips)
        x = self.mid_block(x)
        for level in self.up_blocks:
            x = level(x, skips)
        return self.conv_out(F.silu(self.norm_out(x)))


@dataclass(frozen=True)
class RawGaussians:
    """Activated Gaussians in LGM's own frame, as its network returns them (float [B, N, ...], N = 4 * splat^2).

    ``rotation`` is the quaternion (w, x, y, z) after the checkpoint's normalisation (unit length per Gaussian, or not,
    see :class:`RotationNormalization`).
    """

    position: torch.Tensor
    opacity: torch.Tensor
    scale: torch.Tensor
    rotation: torch.Tensor
    color: torch.Tensor
    rotation_normalization: RotationNormalization = field(default=RotationNormalization.PER_GAUSSIAN)

    def packed(self) -> torch.Tensor:
        """The original's ``[B, N, 14]`` layout: position, opacity, scale, rotation, colour."""
        return torch.cat([self.position, self.opacity, self.scale, self.rotation, self.color], dim=-1)


class LGMNetwork(nn.Module):
    """LGM: ``unet`` then a 1x1 ``conv``; :meth:`forward` returns the activated Gaussians.

    Args:
        config: the U-Net shape (:data:`LGM_BIG` for the released weights).
        rotation_normalization: see :class:`RotationNormalization` (follows the checkpoint file).
    """

    def __init__(self, config: LGMConfig = LGM_BIG,
                 rotation_normalization: RotationNormalization = RotationNormalization.PER_GAUSSIAN):
        super().__init__()
        self.config = config
        self.rotation_normalization = RotationNormalization(rotation_normalization)
        self.unet = MultiViewUNet(config)
        self.conv = nn.Conv2d(GAUSSIAN_PARAMS, GAUSSIAN_PARAMS, 1)

    def check_input(self, views: torch.Tensor) -> None:
        s = self.config.input_size
        want = [LGM_NUM_VIEWS, LGM_INPUT_CHANNELS]
        if not isinstance(views, torch.Tensor) or views.ndim != 5 or list(views.shape[1:3]) != want:
            got = list(views.shape) if isinstance(views, torch.Tensor) else type(views).__name__
            raise ShapeError(f"LGM input must be [B, {LGM_NUM_VIEWS}, {LGM_INPUT_CHANNELS}, {s}, {s}] (four views, "
                             f"RGB + Plücker rays), got {got}; build it with lgm_input()")
        if views.shape[-1] % self.config.downscale or views.shape[-2] % self.config.downscale:
            raise ShapeError(f"LGM input side {list(views.shape[-2:])} must be divisible by {self.config.downscale}; "
                             f"resize the views to {s} px")

    def forward(self, views: torch.Tensor) -> RawGaussians:
        """Args:
            views: float [B, 4, 9, S, S]: per view ImageNet-normalised RGB then the Plücker ray (o x d, d), LGM frame.

        Returns:
            :class:`RawGaussians` with N = 4 * splat^2 Gaussians per object, ordered (view, row, column).
        """
        self.check_input(views)
        b, v, c, h, w = views.shape
        x = self.conv(self.unet(views.reshape(b * v, c, h, w)))
        side = x.shape[-1]
        x = x.reshape(b, v, GAUSSIAN_PARAMS, side, side).permute(0, 1, 3, 4, 2).reshape(b, v * side * side, -1)
        rot = x[..., 7:11]
        if self.rotation_normalization is RotationNormalization.PER_GAUSSIAN:
            rot = F.normalize(rot, dim=-1)
        else:
            rot = F.normalize(rot, dim=1)
        return RawGaussians(
            position=x[..., 0:3].clamp(-1.0, 1.0),
            opacity=torch.sigmoid(x[..., 3:4]),
            scale=0.1 * F.softplus(x[..., 4:7]),
            rotation=rot,
            color=0.5 * torch.tanh(x[..., 11:14]) + 0.5,
            rotation_normalization=self.rotation_normalization,
        )
