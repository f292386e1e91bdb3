"""The released MVDream key layout: what a checkpoint is, its architecture, and its map to diffusers/transformers.

A released MVDream file (``../shared/design/mvdream.md`` §1) is one flat state dict of ``LatentDiffusionInterface``:
``model.diffusion_model.*`` (LDM UNet + ``camera_embed.{0,2}``), ``first_stage_model.*`` (LDM VAE),
``cond_stage_model.model.*`` (OpenCLIP text tower; SD1.5-based: ``cond_stage_model.transformer.*``, a HF CLIP-L)
and 12 schedule buffers. Everything here works on *shapes* only:

* :func:`identify` names the kind of file (MVDream SD2.1/SD1.5, plain SD2.x/SD1.x, ImageDream, other) so the
  loader can refuse the wrong ones in one sentence;
* :func:`infer_architecture` reads the model sizes from the tensor shapes (MVDream uses 64-wide heads);
* :func:`derive_key_map` runs diffusers' own single-file converters on tagged placeholder tensors and records, for
  every diffusers/transformers parameter, which released key (and which third of a fused ``in_proj``) it comes
  from. The loader applies that map forwards, :func:`~.checkpoint.save_mvdream` backwards, so neither direction
  is hand-written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
HF_CLIP_PREFIX = "cond_stage_model.transformer."

SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)
CAMERA_KEYS = {
    "camera_embed.0.weight": "class_embedding.linear_1.weight",
    "camera_embed.0.bias": "class_embedding.linear_1.bias",
    "camera_embed.2.weight": "class_embedding.linear_2.weight",
    "camera_embed.2.bias": "class_embedding.linear_2.bias",
}
#: MVDream (SD2 configs) uses ``num_head_channels 64`` in the UNet; OpenCLIP text towers use 64-wide heads too.
HEAD_WIDTH = 64
#: SD1.x UNets use 8 heads at every level (``num_heads 8``).
SD1_NUM_HEADS = 8

Shape = Tuple[int, ...]


# ----------------------------------------------------------------------------------------------- identification
def identify(shapes: Mapping[str, Shape]) -> str:
    """Kind of checkpoint from its keys.

    Returns:
        ``"mvdream-sd21"``, ``"mvdream-sd15"``, ``"sd2"``, ``"sd1"``, ``"imagedream"``, ``"unet-only"``,
        ``"diffusers"`` or ``"unknown"``.
    """
    keys = list(shapes)
    unet = [k for k in keys if k.startswith(UNET_PREFIX)]
    if any("to_k_ip" in k or "image_embed" in k or k.startswith("cond_stage_model.model.visual.") for k in keys):
        return "imagedream"
    if not unet:
        if any(k.startswith(("down_blocks.", "up_blocks.", "unet.down_blocks.")) for k in keys):
            return "diffusers"
        if any(k.startswith(("input_blocks.", "camera_embed.")) for k in keys):
            return "unet-only"
        return "unknown"
    camera = any(k.startswith(UNET_PREFIX + "camera_embed.") for k in keys)
    open_clip = any(k.startswith(OPEN_CLIP_PREFIX) for k in keys)
    hf_clip = any(k.startswith(HF_CLIP_PREFIX) for k in keys)
    if open_clip:
        return "mvdream-sd21" if camera else "sd2"
    if hf_clip:
        return "mvdream-sd15" if camera else "sd1"
    return "unet-only"


# ------------------------------------------------------------------------------------------------ architecture
@dataclass(frozen=True)
class UNetArch:
    model_channels: int
    channel_mult: Tuple[int, ...]
    num_res_blocks: int
    attention_levels: Tuple[bool, ...]
    transformer_depth: int
    context_dim: int
    use_linear: bool
    camera_dim: int  # 0: no camera MLP
    in_channels: int = 4
    out_channels: int = 4

    def heads(self) -> Tuple[int, ...]:
        """Heads per level: ``channels / 64`` (SD2/MVDream) or 8 (SD1, conv ``proj_in``)."""
        if self.use_linear:
            # levels without attention get a placeholder count diffusers never uses
            return tuple(max(1, self.model_channels * m // HEAD_WIDTH) for m in self.channel_mult)
        return tuple(SD1_NUM_HEADS for _ in self.channel_mult)

    def diffusers_config(self, sample_size: int = 32) -> dict:
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.attention_levels)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.attention_levels))
        config = dict(
            sample_size=sample_size, in_channels=self.in_channels, out_channels=self.out_channels,
            down_block_types=down, up_block_types=up, mid_block_type="UNetMidBlock2DCrossAttn",
            block_out_channels=tuple(self.model_channels * m for m in self.channel_mult),
            layers_per_block=self.num_res_blocks, cross_attention_dim=self.context_dim,
            attention_head_dim=self.heads(),  # diffusers' legacy name for the number of heads
            transformer_layers_per_block=self.transformer_depth, use_linear_projection=self.use_linear,
            norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
        )
        if self.camera_dim:
            config.update(class_embed_type="projection", projection_class_embeddings_input_dim=self.camera_dim)
        return config


@dataclass(frozen=True)
class VAEArch:
    ch: int
    ch_mult: Tuple[int, ...]
    num_res_blocks: int
    z_channels: int
    in_channels: int = 3
    out_channels: int = 3

    def diffusers_config(self, sample_size: int = 256) -> dict:
        levels = len(self.ch_mult)
        return dict(
            in_channels=self.in_channels, out_channels=self.out_channels,
            down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
            block_out_channels=tuple(self.ch * m for m in self.ch_mult), layers_per_block=self.num_res_blocks,
            latent_channels=self.z_channels, norm_num_groups=32, sample_size=sample_size, scaling_factor=0.18215,
        )


@dataclass(frozen=True)
class TextArch:
    kind: str  # "open_clip" (SD2 / MVDream sd-v2.1: penultimate layer) or "hf_clip" (SD1 / sd-v1.5: last layer)
    width: int
    layers: int  # blocks in the file
    heads: int
    mlp_width: int
    vocab_size: int
    context_length: int
    projection_dim: int

    @property
    def used_layers(self) -> int:
        """Blocks the text encoder runs: MVDream's ``layer="penultimate"`` skips OpenCLIP's last block."""
        return self.layers - 1 if self.kind == "open_clip" else self.layers

    def transformers_config(self):
        from transformers import CLIPTextConfig

        return CLIPTextConfig(
            vocab_size=self.vocab_size, hidden_size=self.width, intermediate_size=self.mlp_width,
            num_attention_heads=self.heads, num_hidden_layers=self.used_layers,
            max_position_embeddings=self.context_length,
            hidden_act="gelu" if self.kind == "open_clip" else "quick_gelu", layer_norm_eps=1e-5,
            projection_dim=self.projection_dim, bos_token_id=49406, eos_token_id=49407,
            pad_token_id=0 if self.kind == "open_clip" else 49407,
        )


@dataclass(frozen=True)
class Architecture:
    kind: str
    unet: UNetArch
    vae: VAEArch
    text: TextArch


class LayoutError(ValueError):
    """Shapes that do not form a model; the checkpoint module turns it into a ``CheckpointError``."""


def _get(shapes: Mapping[str, Shape], key: str) -> Shape:
    if key not in shapes:
        raise LayoutError(f"missing key {key}")
    return tuple(shapes[key])


def _indices(shapes: Mapping[str, Shape], pattern: str) -> list:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in shapes for m in [rx.match(k)] if m})


def infer_unet(shapes: Mapping[str, Shape], prefix: str = UNET_PREFIX) -> UNetArch:
    conv_in = _get(shapes, prefix + "input_blocks.0.0.weight")
    mc = conv_in[0]
    blocks = _indices(shapes, re.escape(prefix) + r"input_blocks\.(\d+)\.")
    downs = [i for i in blocks if prefix + f"input_blocks.{i}.0.op.weight" in shapes]
    if not downs:
        raise LayoutError("no downsampling blocks (input_blocks.N.0.op) in the UNet")
    nr = downs[0] - 1
    levels = len(downs) + 1
    mult, attn = [], []
    for level in range(levels):
        first = 1 + level * (nr + 1)
        out = _get(shapes, prefix + f"input_blocks.{first}.0.out_layers.3.weight")[0]
        if out % mc:
            raise LayoutError(f"level {level} width {out} is not a multiple of {mc}")
        mult.append(out // mc)
        attn.append(prefix + f"input_blocks.{first}.1.proj_in.weight" in shapes)
    first_attn = next((1 + lv * (nr + 1) for lv, a in enumerate(attn) if a), None)
    if first_attn is None:
        raise LayoutError("the UNet has no attention blocks")
    base = prefix + f"input_blocks.{first_attn}.1."
    depth = len(_indices(shapes, re.escape(base) + r"transformer_blocks\.(\d+)\."))
    context = _get(shapes, base + "transformer_blocks.0.attn2.to_k.weight")[1]
    use_linear = len(_get(shapes, base + "proj_in.weight")) == 2
    camera = shapes.get(prefix + "camera_embed.0.weight")
    out_conv = _get(shapes, prefix + "out.2.weight")
    arch = UNetArch(mc, tuple(mult), nr, tuple(attn), depth, context, use_linear,
                    int(camera[1]) if camera is not None else 0, conv_in[1], out_conv[0])
    widths = [mc * m for m, a in zip(mult, attn) if a] + [mc * mult[-1]]  # attention levels and the mid block
    if use_linear and any(w % HEAD_WIDTH for w in widths):
        raise LayoutError(f"UNet attention widths {widths} are not multiples of the 64-wide heads")
    return arch


def infer_vae(shapes: Mapping[str, Shape], prefix: str = VAE_PREFIX) -> VAEArch:
    conv_in = _get(shapes, prefix + "encoder.conv_in.weight")
    ch = conv_in[0]
    levels = _indices(shapes, re.escape(prefix) + r"encoder\.down\.(\d+)\.")
    nr = len(_indices(shapes, re.escape(prefix) + r"encoder\.down\.0\.block\.(\d+)\."))
    if not levels or not nr:
        raise LayoutError("the VAE encoder has no down blocks")
    mult = tuple(_get(shapes, prefix + f"encoder.down.{i}.block.0.conv1.weight")[0] // ch for i in levels)
    z = _get(shapes, prefix + "decoder.conv_in.weight")[1]
    out = _get(shapes, prefix + "decoder.conv_out.weight")[0]
    return VAEArch(ch, mult, nr, z, conv_in[1], out)


def infer_open_clip_text(shapes: Mapping[str, Shape], prefix: str = OPEN_CLIP_PREFIX) -> TextArch:
    vocab, width = _get(shapes, prefix + "token_embedding.weight")
    context = _get(shapes, prefix + "positional_embedding")[0]
    layers = len(_indices(shapes, re.escape(prefix) + r"transformer\.resblocks\.(\d+)\."))
    mlp = _get(shapes, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0]
    proj = _get(shapes, prefix + "text_projection")[1]
    if width % HEAD_WIDTH:
        raise LayoutError(f"text width {width} is not a multiple of the 64-wide OpenCLIP heads")
    if layers < 2:
        raise LayoutError(f"the text tower has {layers} blocks; MVDream uses the penultimate one, so it needs >= 2")
    return TextArch("open_clip", width, layers, width // HEAD_WIDTH, mlp, vocab, context, proj)


def infer_hf_clip_text(shapes: Mapping[str, Shape], prefix: str = HF_CLIP_PREFIX) -> TextArch:
    p = prefix + "text_model."
    vocab, width = _get(shapes, p + "embeddings.token_embedding.weight")
    context = _get(shapes, p + "embeddings.position_embedding.weight")[0]
    layers = len(_indices(shapes, re.escape(p) + r"encoder\.layers\.(\d+)\."))
    mlp = _get(shapes, p + "encoder.layers.0.mlp.fc1.weight")[0]
    if width % HEAD_WIDTH:
        raise LayoutError(f"text width {width} is not a multiple of the 64-wide CLIP heads")
    return TextArch("hf_clip", width, layers, width // HEAD_WIDTH, mlp, vocab, context, width)


def infer_architecture(shapes: Mapping[str, Shape], kind: Optional[str] = None) -> Architecture:
    kind = kind or identify(shapes)
    text = infer_open_clip_text(shapes) if kind == "mvdream-sd21" else infer_hf_clip_text(shapes)
    return Architecture(kind, infer_unet(shapes), infer_vae(shapes), text)


# --------------------------------------------------------------------------------------------------- key map
def passthrough_keys(shapes: Mapping[str, Shape], arch: Architecture) -> list:
    """Released keys the diffusers/transformers modules do not hold, kept verbatim so a save is complete.

    The schedule buffers; for OpenCLIP the last block (MVDream stops at the penultimate one), ``text_projection``
    and ``logit_scale``; for HF CLIP its ``position_ids`` buffer.
    """
    keep = [k for k in SCHEDULE_BUFFERS if k in shapes]
    if arch.text.kind == "open_clip":
        last = OPEN_CLIP_PREFIX + f"transformer.resblocks.{arch.text.layers - 1}."
        keep += [k for k in shapes if k.startswith(last)]
        keep += [k for k in (OPEN_CLIP_PREFIX + "text_projection", OPEN_CLIP_PREFIX + "logit_scale") if k in shapes]
    else:
        keep += [k for k in shapes if k.startswith(HF_CLIP_PREFIX) and k.endswith("position_ids")]
    return keep


_FUSED = (".in_proj_weight", ".in_proj_bias")
_TAG = 8  # tag = key index * 8 + chunk (chunk 0..2 for the q/k/v thirds of a fused in_proj, else 0)


def _template(keys: Sequence[str], shapes: Mapping[str, Shape], index: Dict[str, int]) -> Dict[str, torch.Tensor]:
    """Placeholder tensors with every dim 1 (ndim kept) whose value names the released key."""
    out = {}
    for key in keys:
        ndim = len(shapes[key])
        tag = float(index[key] * _TAG)
        if key.endswith(_FUSED):  # three rows so the converter's q/k/v split sees one row each
            out[key] = (torch.arange(3, dtype=torch.float64) + tag).reshape(3, *([1] * (ndim - 1)))
        else:
            out[key] = torch.full([1] * ndim, tag, dtype=torch.float64)
    return out


@dataclass(frozen=True)
class Source:
    """Where a diffusers/transformers parameter comes from: a released key, and the third of a fused in_proj."""

    key: str
    chunk: Optional[int] = None  # 0 q, 1 k, 2 v


def derive_key_map(shapes: Mapping[str, Shape], arch: Architecture) -> Dict[str, Dict[str, Source]]:
    """``{"unet"|"vae"|"text": {module_param_name: Source}}`` derived by running diffusers' converters.

    Text names are transformers ``CLIPTextModel`` names *with* the ``text_model.`` prefix, as diffusers emits
    them; the loader adapts them to the installed transformers version.
    """
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    keys = list(shapes)
    index = {k: i for i, k in enumerate(keys)}
    skip = set(passthrough_keys(shapes, arch))

    def decode(converted: Mapping[str, torch.Tensor]) -> Dict[str, Source]:
        result = {}
        for name, tensor in converted.items():
            if tensor is None:
                continue
            tag = int(tensor.reshape(-1)[0].item())
            key = keys[tag // _TAG]
            result[name] = Source(key, tag % _TAG if key.endswith(_FUSED) else None)
        return result

    unet_keys = [k for k in keys if k.startswith(UNET_PREFIX) and k not in skip]
    unet_config = {"layers_per_block": arch.unet.num_res_blocks}  # camera MLP mapped below (mvdream.md §1)
    unet_map = decode(convert_ldm_unet_checkpoint(_template(unet_keys, shapes, index), unet_config))
    for ldm, diffusers_name in CAMERA_KEYS.items():
        if UNET_PREFIX + ldm in shapes:
            unet_map[diffusers_name] = Source(UNET_PREFIX + ldm)

    vae_keys = [k for k in keys if k.startswith(VAE_PREFIX) and k not in skip]
    vae_config = arch.vae.diffusers_config()
    vae_map = decode(convert_ldm_vae_checkpoint(_template(vae_keys, shapes, index), vae_config))

    if arch.text.kind == "open_clip":
        text_keys = [k for k in keys if k.startswith(OPEN_CLIP_PREFIX) and k not in skip]
        # without text_projection in the dict the converter splits in_proj by config.hidden_size: 1 row per third
        fake_model = SimpleNamespace(config=SimpleNamespace(hidden_size=1))
        text_map = decode(convert_open_clip_checkpoint(fake_model, _template(text_keys, shapes, index)))
    else:
        text_keys = [k for k in keys if k.startswith(HF_CLIP_PREFIX) and k not in skip]
        text_map = decode(convert_ldm_clip_checkpoint(_template(text_keys, shapes, index), HF_CLIP_PREFIX))
    return {"unet": unet_map, "vae": vae_map, "text": text_map}
