"""Tiny seeded MVDream checkpoints in the released key layout, for tests, benchmarks and CI only.

No real weights exist on the machines this pack is tested on, so every loading path is exercised with small random
models written exactly as users have the real file (``../shared/design/mvdream.md`` §1): one flat state dict with
``model.diffusion_model.*`` (LDM UNet names, the four ``camera_embed`` keys), ``first_stage_model.*`` (LDM VAE
names, 1×1-conv attention), ``cond_stage_model.model.*`` (the whole OpenCLIP text tower including the last block,
``text_projection`` and ``logit_scale``) and the 12 schedule buffers with the real SD2.1 values, saved as a torch
pickle ``.pt`` or a ``.safetensors``.

The layout is written out here from the LDM module structure (``openaimodel.py``, ``model.py``, open_clip's
``TextTransformer``), independently of the diffusers converters the loader uses, so a test that loads these files
checks the loader against an independent statement of the layout. :func:`released_layout` with the full-size
architecture reproduces the real file's key and parameter counts (a test checks them).

Widths are multiples of 64 (MVDream's head width) with few channels, so a 4-view forward at 32×32 latents takes a
fraction of a second on a CPU. The vocabulary keeps the real 49,408 rows, so the real tokenizer drives it.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from ..errors import ConfigError
from ..schedule import schedule_buffers
from ..storage import write_state_dict
from ..mvdream.layout import (
    HF_CLIP_PREFIX,
    OPEN_CLIP_PREFIX,
    SCHEDULE_BUFFERS,
    UNET_PREFIX,
    VAE_PREFIX,
    TextArch,
    UNetArch,
    VAEArch,
)

VARIANTS = ("mvdream-sd21", "sd21", "sd15", "mvdream-sd15", "imagedream")

#: Full-size MVDream sd-v2.1-base-4view (``configs/sd-v2-base.yaml``, OpenCLIP ViT-H/14 text tower, SD VAE).
SD21_UNET = UNetArch(320, (1, 2, 4, 4), 2, (True, True, True, False), 1, 1024, True, 16)
SD21_VAE = VAEArch(128, (1, 2, 4, 4), 2, 4)
SD21_TEXT = TextArch("open_clip", 1024, 24, 16, 4096, 49408, 77, 1024)

TINY_UNET = UNetArch(32, (1, 2, 4, 4), 2, (False, True, True, False), 1, 128, True, 16)
TINY_VAE = VAEArch(32, (1, 1, 2, 2), 1, 4)
TINY_TEXT = TextArch("open_clip", 128, 3, 2, 256, 49408, 77, 96)
TINY_SD15_UNET = UNetArch(32, (1, 2, 4, 4), 2, (False, True, True, False), 1, 64, False, 16)
TINY_SD15_TEXT = TextArch("hf_clip", 64, 2, 1, 128, 49408, 77, 64)



# ------------------------------------------------------------------------------------------------- the layout
def _resblock(out: Dict, p: str, cin: int, cout: int, temb: int) -> None:
    """LDM ``ResBlock`` (openaimodel.py): in_layers (GN, SiLU, conv), emb_layers (SiLU, linear), out_layers."""
    out[p + "in_layers.0.weight"] = (cin,)
    out[p + "in_layers.0.bias"] = (cin,)
    out[p + "in_layers.2.weight"] = (cout, cin, 3, 3)
    out[p + "in_layers.2.bias"] = (cout,)
    out[p + "emb_layers.1.weight"] = (cout, temb)
    out[p + "emb_layers.1.bias"] = (cout,)
    out[p + "out_layers.0.weight"] = (cout,)
    out[p + "out_layers.0.bias"] = (cout,)
    out[p + "out_layers.3.weight"] = (cout, cout, 3, 3)
    out[p + "out_layers.3.bias"] = (cout,)
    if cin != cout:
        out[p + "skip_connection.weight"] = (cout, cin, 1, 1)
        out[p + "skip_connection.bias"] = (cout,)


def _transformer(out: Dict, p: str, ch: int, arch: UNetArch) -> None:
    """LDM ``SpatialTransformer(3D)``: GN, proj_in, ``depth`` blocks (attn1, attn2, GEGLU ff, 3 LNs), proj_out."""
    proj = (ch, ch) if arch.use_linear else (ch, ch, 1, 1)
    out[p + "norm.weight"] = (ch,)
    out[p + "norm.bias"] = (ch,)
    out[p + "proj_in.weight"] = proj
    out[p + "proj_in.bias"] = (ch,)
    for d in range(arch.transformer_depth):
        b = p + f"transformer_blocks.{d}."
        for name, kv in (("attn1", ch), ("attn2", arch.context_dim)):
            out[b + f"{name}.to_q.weight"] = (ch, ch)
            out[b + f"{name}.to_k.weight"] = (ch, kv)
            out[b + f"{name}.to_v.weight"] = (ch, kv)
            out[b + f"{name}.to_out.0.weight"] = (ch, ch)
            out[b + f"{name}.to_out.0.bias"] = (ch,)
        out[b + "ff.net.0.proj.weight"] = (8 * ch, ch)
        out[b + "ff.net.0.proj.bias"] = (8 * ch,)
        out[b + "ff.net.2.weight"] = (ch, 4 * ch)
        out[b + "ff.net.2.bias"] = (ch,)
        for n in (1, 2, 3):
            out[b + f"norm{n}.weight"] = (ch,)
            out[b + f"norm{n}.bias"] = (ch,)
    out[p + "proj_out.weight"] = proj
    out[p + "proj_out.bias"] = (ch,)


def unet_layout(arch: UNetArch, prefix: str = UNET_PREFIX) -> "OrderedDict[str, Tuple[int, ...]]":
    """Keys and shapes of MVDream's ``MultiViewUNetModel`` (LDM ``UNetModel`` naming plus ``camera_embed``)."""
    out: Dict = OrderedDict()
    mc, temb = arch.model_channels, 4 * arch.model_channels
    out["time_embed.0.weight"] = (temb, mc)
    out["time_embed.0.bias"] = (temb,)
    out["time_embed.2.weight"] = (temb, temb)
    out["time_embed.2.bias"] = (temb,)
    if arch.camera_dim:
        out["camera_embed.0.weight"] = (temb, arch.camera_dim)
        out["camera_embed.0.bias"] = (temb,)
        out["camera_embed.2.weight"] = (temb, temb)
        out["camera_embed.2.bias"] = (temb,)
    out["input_blocks.0.0.weight"] = (mc, arch.in_channels, 3, 3)
    out["input_blocks.0.0.bias"] = (mc,)
    skips, ch, i = [mc], mc, 1
    levels = len(arch.channel_mult)
    for level, mult in enumerate(arch.channel_mult):
        for _ in range(arch.num_res_blocks):
            _resblock(out, f"input_blocks.{i}.0.", ch, mc * mult, temb)
            ch = mc * mult
            if arch.attention_levels[level]:
                _transformer(out, f"input_blocks.{i}.1.", ch, arch)
            skips.append(ch)
            i += 1
        if level != levels - 1:
            out[f"input_blocks.{i}.0.op.weight"] = (ch, ch, 3, 3)
            out[f"input_blocks.{i}.0.op.bias"] = (ch,)
            skips.append(ch)
            i += 1
    _resblock(out, "middle_block.0.", ch, ch, temb)
    _transformer(out, "middle_block.1.", ch, arch)
    _resblock(out, "middle_block.2.", ch, ch, temb)
    j = 0
    for level in reversed(range(levels)):
        mult = arch.channel_mult[level]
        for r in range(arch.num_res_blocks + 1):
            _resblock(out, f"output_blocks.{j}.0.", ch + skips.pop(), mc * mult, temb)
            ch = mc * mult
            sub = 1
            if arch.attention_levels[level]:
                _transformer(out, f"output_blocks.{j}.1.", ch, arch)
                sub = 2
            if level and r == arch.num_res_blocks:
                out[f"output_blocks.{j}.{sub}.conv.weight"] = (ch, ch, 3, 3)
                out[f"output_blocks.{j}.{sub}.conv.bias"] = (ch,)
            j += 1
    out["out.0.weight"] = (ch,)
    out["out.0.bias"] = (ch,)
    out["out.2.weight"] = (arch.out_channels, ch, 3, 3)
    out["out.2.bias"] = (arch.out_channels,)
    return OrderedDict((prefix + k, v) for k, v in out.items())


def _vae_resblock(out: Dict, p: str, cin: int, cout: int) -> None:
    out[p + "norm1.weight"] = (cin,)
    out[p + "norm1.bias"] = (cin,)
    out[p + "conv1.weight"] = (cout, cin, 3, 3)
    out[p + "conv1.bias"] = (cout,)
    out[p + "norm2.weight"] = (cout,)
    out[p + "norm2.bias"] = (cout,)
    out[p + "conv2.weight"] = (cout, cout, 3, 3)
    out[p + "conv2.bias"] = (cout,)
    if cin != cout:
        out[p + "nin_shortcut.weight"] = (cout, cin, 1, 1)
        out[p + "nin_shortcut.bias"] = (cout,)


def _vae_mid(out: Dict, p: str, ch: int) -> None:
    _vae_resblock(out, p + "block_1.", ch, ch)
    out[p + "attn_1.norm.weight"] = (ch,)
    out[p + "attn_1.norm.bias"] = (ch,)
    for name in ("q", "k", "v", "proj_out"):  # LDM AttnBlock: 1×1 convs
        out[p + f"attn_1.{name}.weight"] = (ch, ch, 1, 1)
        out[p + f"attn_1.{name}.bias"] = (ch,)
    _vae_resblock(out, p + "block_2.", ch, ch)


def vae_layout(arch: VAEArch, prefix: str = VAE_PREFIX) -> "OrderedDict[str, Tuple[int, ...]]":
    """Keys and shapes of LDM's ``AutoencoderKL`` (``Encoder``/``Decoder`` in ``diffusionmodules/model.py``)."""
    out: Dict = OrderedDict()
    ch, z, levels = arch.ch, arch.z_channels, len(arch.ch_mult)
    out["encoder.conv_in.weight"] = (ch, arch.in_channels, 3, 3)
    out["encoder.conv_in.bias"] = (ch,)
    cin = ch
    for i, mult in enumerate(arch.ch_mult):
        for b in range(arch.num_res_blocks):
            _vae_resblock(out, f"encoder.down.{i}.block.{b}.", cin, ch * mult)
            cin = ch * mult
        if i != levels - 1:
            out[f"encoder.down.{i}.downsample.conv.weight"] = (cin, cin, 3, 3)
            out[f"encoder.down.{i}.downsample.conv.bias"] = (cin,)
    _vae_mid(out, "encoder.mid.", cin)
    out["encoder.norm_out.weight"] = (cin,)
    out["encoder.norm_out.bias"] = (cin,)
    out["encoder.conv_out.weight"] = (2 * z, cin, 3, 3)
    out["encoder.conv_out.bias"] = (2 * z,)
    top = ch * arch.ch_mult[-1]
    out["decoder.conv_in.weight"] = (top, z, 3, 3)
    out["decoder.conv_in.bias"] = (top,)
    _vae_mid(out, "decoder.mid.", top)
    cin = top
    for i in reversed(range(levels)):
        cout = ch * arch.ch_mult[i]
        for b in range(arch.num_res_blocks + 1):
            _vae_resblock(out, f"decoder.up.{i}.block.{b}.", cin, cout)
            cin = cout
        if i != 0:
            out[f"decoder.up.{i}.upsample.conv.weight"] = (cin, cin, 3, 3)
            out[f"decoder.up.{i}.upsample.conv.bias"] = (cin,)
    out["decoder.norm_out.weight"] = (cin,)
    out["decoder.norm_out.bias"] = (cin,)
    out["decoder.conv_out.weight"] = (arch.out_channels, cin, 3, 3)
    out["decoder.conv_out.bias"] = (arch.out_channels,)
    out["quant_conv.weight"] = (2 * z, 2 * z, 1, 1)
    out["quant_conv.bias"] = (2 * z,)
    out["post_quant_conv.weight"] = (z, z, 1, 1)
    out["post_quant_conv.bias"] = (z,)
    return OrderedDict((prefix + k, v) for k, v in out.items())


def open_clip_text_layout(arch: TextArch, prefix: str = OPEN_CLIP_PREFIX) -> "OrderedDict[str, Tuple[int, ...]]":
    """Keys and shapes of open_clip's text tower as ``FrozenOpenCLIPEmbedder.model`` holds it (visual deleted)."""
    w = arch.width
    out: Dict = OrderedDict()
    out["positional_embedding"] = (arch.context_length, w)
    out["text_projection"] = (w, arch.projection_dim)
    out["logit_scale"] = ()
    for i in range(arch.layers):
        b = f"transformer.resblocks.{i}."
        out[b + "ln_1.weight"] = (w,)
        out[b + "ln_1.bias"] = (w,)
        out[b + "attn.in_proj_weight"] = (3 * w, w)
        out[b + "attn.in_proj_bias"] = (3 * w,)
        out[b + "attn.out_proj.weight"] = (w, w)
        out[b + "attn.out_proj.bias"] = (w,)
        out[b + "ln_2.weight"] = (w,)
        out[b + "ln_2.bias"] = (w,)
        out[b + "mlp.c_fc.weight"] = (arch.mlp_width, w)
        out[b + "mlp.c_fc.bias"] = (arch.mlp_width,)
        out[b + "mlp.c_proj.weight"] = (w, arch.mlp_width)
        out[b + "mlp.c_proj.bias"] = (w,)
    out["token_embedding.weight"] = (arch.vocab_size, w)
    out["ln_final.weight"] = (w,)
    out["ln_final.bias"] = (w,)
    return OrderedDict((prefix + k, v) for k, v in out.items())


def hf_clip_text_layout(arch: TextArch, prefix: str = HF_CLIP_PREFIX) -> "OrderedDict[str, Tuple[int, ...]]":
    """Keys and shapes of SD1's ``FrozenCLIPEmbedder.transformer`` (a transformers ``CLIPTextModel``)."""
    w = arch.width
    p = "text_model."
    out: Dict = OrderedDict()
    out[p + "embeddings.position_ids"] = (1, arch.context_length)
    out[p + "embeddings.token_embedding.weight"] = (arch.vocab_size, w)
    out[p + "embeddings.position_embedding.weight"] = (arch.context_length, w)
    for i in range(arch.layers):
        b = p + f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out[b + f"self_attn.{proj}.weight"] = (w, w)
            out[b + f"self_attn.{proj}.bias"] = (w,)
        out[b + "layer_norm1.weight"] = (w,)
        out[b + "layer_norm1.bias"] = (w,)
        out[b + "mlp.fc1.weight"] = (arch.mlp_width, w)
        out[b + "mlp.fc1.bias"] = (arch.mlp_width,)
        out[b + "mlp.fc2.weight"] = (w, arch.mlp_width)
        out[b + "mlp.fc2.bias"] = (w,)
        out[b + "layer_norm2.weight"] = (w,)
        out[b + "layer_norm2.bias"] = (w,)
    out[p + "final_layer_norm.weight"] = (w,)
    out[p + "final_layer_norm.bias"] = (w,)
    return OrderedDict((prefix + k, v) for k, v in out.items())


def released_layout(unet: UNetArch = SD21_UNET, vae: VAEArch = SD21_VAE,
                    text: TextArch = SD21_TEXT) -> "OrderedDict[str, Tuple[int, ...]]":
    """Keys and shapes of a released checkpoint: schedule buffers, UNet, text tower, VAE (state-dict order)."""
    out: Dict = OrderedDict((k, (1000,)) for k in SCHEDULE_BUFFERS)
    out.update(unet_layout(unet))
    out.update(open_clip_text_layout(text) if text.kind == "open_clip" else hf_clip_text_layout(text))
    out.update(vae_layout(vae))
    return out


# ----------------------------------------------------------------------------------------------- the values
_NORM = re.compile(r"(norm|ln_|in_layers\.0\.|out_layers\.0\.|\.out\.0\.)")


def _random_tensor(key: str, shape: Tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    if key.endswith("position_ids"):
        return torch.arange(shape[-1], dtype=torch.long).reshape(shape)
    if key.endswith("logit_scale"):
        return torch.tensor(math.log(1 / 0.07), dtype=torch.float32)
    noise = torch.randn(shape, generator=g, dtype=torch.float32)
    if len(shape) >= 2:
        return noise / math.sqrt(math.prod(shape[1:]))  # fan-in scaling keeps activations O(1)
    if _NORM.search(key):
        return 1.0 + 0.1 * noise
    return 0.1 * noise


def _variant_archs(variant: str) -> Tuple[UNetArch, VAEArch, TextArch]:
    if variant not in VARIANTS:
        raise ConfigError(f"unknown tiny variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if variant in ("sd15", "mvdream-sd15"):
        unet = TINY_SD15_UNET if variant == "mvdream-sd15" else _replace_camera(TINY_SD15_UNET, 0)
        return unet, TINY_VAE, TINY_SD15_TEXT
    unet = TINY_UNET if variant in ("mvdream-sd21", "imagedream") else _replace_camera(TINY_UNET, 0)
    return unet, TINY_VAE, TINY_TEXT


def _replace_camera(arch: UNetArch, camera_dim: int) -> UNetArch:
    from dataclasses import replace

    return replace(arch, camera_dim=camera_dim)


def tiny_state_dict(seed: int = 0, variant: str = "mvdream-sd21") -> "OrderedDict[str, torch.Tensor]":
    """A seeded random checkpoint in the released layout (flat; float32 tensors, real schedule buffers).

    Variants: ``"mvdream-sd21"`` (the real layout, tiny), ``"sd21"`` (plain SD2.x: no camera MLP), ``"sd15"``
    (plain SD1.x: HF CLIP-L text tower, conv proj_in), ``"mvdream-sd15"`` (MVDream sd-v1.5-4view layout) and
    ``"imagedream"`` (MVDream plus ImageDream's image-prompt keys).
    """
    unet, vae, text = _variant_archs(variant)
    layout = released_layout(unet, vae, text)
    if variant == "imagedream":
        extra = OrderedDict()
        extra[UNET_PREFIX + "image_embed.proj_in.weight"] = (unet.model_channels, 1280)
        for key in list(layout):
            if key.endswith("attn2.to_k.weight"):
                ch, ctx = layout[key]
                extra[key.replace("to_k", "to_k_ip")] = (ch, ctx)
                extra[key.replace("to_k", "to_v_ip")] = (ch, ctx)
        layout.update(extra)
    g = torch.Generator("cpu").manual_seed(int(seed))
    buffers = schedule_buffers()
    out = OrderedDict()
    for key, shape in layout.items():
        out[key] = buffers[key].clone() if key in buffers else _random_tensor(key, shape, g)
    return out


def write_tiny_checkpoint(path: str | os.PathLike, seed: int = 0, variant: str = "mvdream-sd21",
                          fmt: Optional[str] = None, overwrite: bool = False) -> Path:
    """Write :func:`tiny_state_dict` to ``path`` (format from the suffix unless ``fmt`` is given)."""
    return write_state_dict(tiny_state_dict(seed, variant), path, fmt=fmt, overwrite=overwrite)


_CACHE: Dict[Tuple[int, str], Path] = {}


def tiny_checkpoint_path(seed: int = 0, variant: str = "mvdream-sd21") -> Path:
    """A tiny ``.safetensors`` for ``(seed, variant)``, written once per process into a temporary folder."""
    key = (int(seed), variant)
    path = _CACHE.get(key)
    if path is None or not path.exists():
        folder = Path(tempfile.mkdtemp(prefix="dreamedit3d_tiny_"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        path = write_tiny_checkpoint(folder / f"tiny-{variant}-seed{seed}.safetensors", seed, variant)
        _CACHE[key] = path
    return path


def load_tiny_mvdream(seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      variant: str = "mvdream-sd21"):
    """The tiny MVDream model through the real loader (:func:`~dreamedit3d_core.mvdream.checkpoint.load_mvdream`)."""
    from ..mvdream.checkpoint import load_mvdream

    return load_mvdream(tiny_checkpoint_path(seed, variant), device=device, dtype=dtype)
