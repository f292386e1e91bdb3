"""The released key layout: full-size counts, architecture inference and the diffusers key map (shapes only)."""

from __future__ import annotations

import math

import pytest
import torch

from dreamedit3d_core.mvdream import layout as L
from dreamedit3d_core.testing.tiny import SD21_TEXT, SD21_UNET, SD21_VAE, released_layout, tiny_state_dict


def _count(shapes, prefix):
    keys = [k for k in shapes if k.startswith(prefix)]
    return len(keys), sum(math.prod(shapes[k]) for k in keys)


def test_full_size_layout_has_the_released_key_and_parameter_counts():
    """Numbers from mvdream.md §1, recomputed there from MVDream's LatentDiffusionInterface."""
    shapes = released_layout(SD21_UNET, SD21_VAE, SD21_TEXT)
    assert _count(shapes, "model.diffusion_model.") == (690, 867_572_164)
    assert _count(shapes, "first_stage_model.") == (248, 83_653_863)
    assert _count(shapes, "cond_stage_model.model.") == (294, 354_032_641)
    assert len(shapes) == 1244
    assert sum(math.prod(s) for s in shapes.values()) * 4 == 5_221_082_672  # fp32 bytes, "5.22 GB"
    assert shapes["model.diffusion_model.camera_embed.0.weight"] == (1280, 16)
    assert shapes["model.diffusion_model.camera_embed.2.weight"] == (1280, 1280)
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert shapes["cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight"] == (3072, 1024)
    assert shapes["cond_stage_model.model.logit_scale"] == ()


def test_full_size_architecture_is_inferred_from_shapes_as_sd21_base():
    shapes = released_layout(SD21_UNET, SD21_VAE, SD21_TEXT)
    assert L.identify(shapes) == "mvdream-sd21"
    arch = L.infer_architecture(shapes)
    cfg = arch.unet.diffusers_config()
    assert cfg["block_out_channels"] == (320, 640, 1280, 1280)
    assert cfg["attention_head_dim"] == (5, 10, 20, 20)
    assert cfg["cross_attention_dim"] == 1024 and cfg["use_linear_projection"] is True
    assert cfg["down_block_types"] == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert cfg["class_embed_type"] == "projection" and cfg["projection_class_embeddings_input_dim"] == 16
    assert arch.vae.diffusers_config()["block_out_channels"] == (128, 256, 512, 512)
    text = arch.text.transformers_config()
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.hidden_act) == (1024, 23, 16, "gelu")


def test_full_size_key_map_fills_the_diffusers_modules_exactly():
    """Every non-passthrough released key maps to exactly one parameter of the full-size modules, and back."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    shapes = released_layout(SD21_UNET, SD21_VAE, SD21_TEXT)
    arch = L.infer_architecture(shapes)
    key_map = L.derive_key_map(shapes, arch)
    with init_empty_weights():
        modules = {"unet": UNet2DConditionModel(**arch.unet.diffusers_config()),
                   "vae": AutoencoderKL(**arch.vae.diffusers_config()),
                   "text": CLIPTextModel(arch.text.transformers_config())}
    used = set()
    for name, module in modules.items():
        params = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        mapped = {k if k in params else k.removeprefix("text_model."): s for k, s in key_map[name].items()}
        assert set(mapped) == set(params), name
        for param, source in mapped.items():
            numel = math.prod(shapes[source.key]) // (3 if source.chunk is not None else 1)
            assert numel == math.prod(params[param]), (param, source)
            used.add(source.key)
    passthrough = set(L.passthrough_keys(shapes, arch))
    assert len(passthrough) == 12 + 12 + 2  # schedule buffers; last text block; text_projection, logit_scale
    assert used | passthrough == set(shapes) and not used & passthrough
    assert key_map["unet"]["class_embedding.linear_1.weight"].key == "model.diffusion_model.camera_embed.0.weight"
    assert key_map["unet"]["class_embedding.linear_2.bias"].key == "model.diffusion_model.camera_embed.2.bias"
    q = key_map["text"]["text_model.encoder.layers.4.self_attn.v_proj.weight"]
    assert q == L.Source("cond_stage_model.model.transformer.resblocks.4.attn.in_proj_weight", 2)


def test_tiny_checkpoint_has_the_released_prefixes_buffers_and_real_vocabulary():
    state = tiny_state_dict(0)
    assert list(state)[:12] == list(L.SCHEDULE_BUFFERS)
    camera = [k for k in state if "camera_embed" in k]
    assert camera == [f"model.diffusion_model.camera_embed.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
    assert state["cond_stage_model.model.token_embedding.weight"].shape == (49408, 128)
    assert "cond_stage_model.model.transformer.resblocks.2.mlp.c_proj.bias" in state  # the last block is kept
    assert {k.split(".")[0] for k in state if "." in k} == {"model", "cond_stage_model", "first_stage_model"}
    assert all(v.dtype == torch.float32 for v in state.values())
    assert L.identify({k: tuple(v.shape) for k, v in state.items()}) == "mvdream-sd21"


def test_tiny_checkpoint_is_seeded():
    a, b, c = tiny_state_dict(0), tiny_state_dict(0), tiny_state_dict(1)
    key = "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


@pytest.mark.parametrize("variant,kind", [("sd21", "sd2"), ("sd15", "sd1"), ("mvdream-sd15", "mvdream-sd15"),
                                          ("imagedream", "imagedream")])
def test_variants_are_identified(variant, kind):
    state = tiny_state_dict(0, variant)
    assert L.identify({k: tuple(v.shape) for k, v in state.items()}) == kind
