"""Cross-attention recording: the same forward pass, only the requested layers, differentiable, exact probabilities."""

from __future__ import annotations

import pytest
import torch

from _mvdream_helpers import shared_tiny_model, unet_inputs
from dreamedit3d_core.mvdream.attention import (
    DEFAULT_RECORD_LAYERS,
    PerViewCrossAttnProcessor,
    cross_attention_layers,
    record_cross_attention,
)

pytestmark = pytest.mark.numeric

DEFAULT_16x16 = [
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "down_blocks.1.attentions.1.transformer_blocks.0.attn2",
    "up_blocks.2.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.2.attentions.1.transformer_blocks.0.attn2",
    "up_blocks.2.attentions.2.transformer_blocks.0.attn2",
]


def test_default_layers_are_the_16x16_ones_and_maps_have_the_documented_shape():
    model = shared_tiny_model()
    latents, timesteps, text, cameras = unet_inputs(model, objects=1, size=32)  # 256 px views
    with torch.no_grad():
        plain = model.predict_noise(latents, timesteps, text, cameras)
        with record_cross_attention(model.unet) as store:
            recorded = model.predict_noise(latents, timesteps, text, cameras)
    assert sorted(store.maps) == DEFAULT_16x16
    for name, probs in store.maps.items():
        heads = store.heads[name]
        assert heads == 1  # the tiny UNet has 64 channels at 16x16 (the real one 640: 10 heads)
        assert probs.shape == (4 * heads, 16 * 16, 77)
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
        assert store.per_view(name).shape == (4, heads, 256, 77)
    assert (plain - recorded).abs().max().item() <= 1e-5  # recording does not change the result


def test_recorded_probabilities_equal_an_independent_softmax_of_the_layer_inputs():
    model = shared_tiny_model()
    latents, timesteps, text, cameras = unet_inputs(model, objects=2, size=16)
    name = "up_blocks.1.attentions.1.transformer_blocks.0.attn2"  # 8x8, 128 channels: 2 heads
    attn = dict(model.unet.named_modules())[name]
    seen = {}
    hook = attn.register_forward_pre_hook(lambda m, args, kwargs: seen.update(x=args[0], ctx=kwargs["encoder_hidden_states"]),
                                          with_kwargs=True)
    try:
        with torch.no_grad(), record_cross_attention(model.unet, [name]) as store:
            model.predict_noise(latents, timesteps, text, cameras)
    finally:
        hook.remove()
    assert list(store.maps) == [name]  # only the requested layer
    x, ctx = seen["x"], seen["ctx"]
    heads, d = attn.heads, x.shape[-1] // attn.heads
    assert heads == 2 and store.heads[name] == 2
    q = (x @ attn.to_q.weight.T).reshape(x.shape[0], -1, heads, d)
    k = (ctx @ attn.to_k.weight.T).reshape(ctx.shape[0], -1, heads, d)
    reference = torch.einsum("nihd,njhd->nhij", q, k).mul(d ** -0.5).softmax(-1)
    reference = reference.reshape(-1, *reference.shape[2:])  # (n h) i j: diffusers' batch-major head layout
    assert (store.maps[name] - reference).abs().max().item() <= 1e-5


def test_recorded_maps_are_differentiable_towards_the_text_embeddings():
    model = shared_tiny_model()
    latents, timesteps, text, cameras = unet_inputs(model, objects=1, size=16)
    text = text.clone().requires_grad_(True)
    name = DEFAULT_16x16[0]
    with record_cross_attention(model.unet, [name]) as store:
        model.predict_noise(latents, timesteps, text, cameras)
    loss = store.per_view(name)[2, :, :, 5].mean()  # view 2, token 5
    loss.backward()
    grad = text.grad
    assert grad[2, 5].abs().sum() > 0
    assert grad[[0, 1, 3]].abs().sum() == 0  # cross-attention at this layer is per view


def test_processors_come_back_after_the_block_even_on_error():
    model = shared_tiny_model()
    before = {k: type(v) for k, v in model.unet.attn_processors.items()}
    with pytest.raises(RuntimeError, match="boom"):
        with record_cross_attention(model.unet, ["up_blocks.2.attentions.*"]):
            raise RuntimeError("boom")
    assert {k: type(v) for k, v in model.unet.attn_processors.items()} == before
    assert all(isinstance(p, PerViewCrossAttnProcessor) for k, p in model.unet.attn_processors.items()
               if k.endswith("attn2.processor"))


def test_unknown_layer_pattern_is_a_clear_error():
    from dreamedit3d_core.errors import ConfigError

    model = shared_tiny_model()
    assert len(cross_attention_layers(model.unet)) == 11  # 2 + 2 down, 1 mid, 3 + 3 up in the tiny UNet
    with pytest.raises(ConfigError, match="no cross-attention layer matches 'down_blocks.7"):
        with record_cross_attention(model.unet, ["down_blocks.7.*"]):
            pass
    assert DEFAULT_RECORD_LAYERS[0].startswith("down_blocks.1.")


def test_recorded_probabilities_stay_float32_under_bf16_autocast():
    # mixed-precision training runs the UNet under torch.autocast; autocast re-casts matmul to the low dtype whatever
    # its inputs are, so the maps must be computed with autocast off (fp16 scores on CUDA overflow / round).
    from diffusers.models.attention_processor import Attention

    from dreamedit3d_core.mvdream.attention import CrossAttentionStore, RecordingCrossAttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=64, cross_attention_dim=32, heads=2, dim_head=32)
    store = CrossAttentionStore()
    attn.set_processor(RecordingCrossAttnProcessor(store, "layer"))
    x, ctx = torch.randn(2, 16, 64) * 3, torch.randn(2, 77, 32) * 3
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x, encoder_hidden_states=ctx)
        q, k = attn.to_q(x), attn.to_k(ctx)  # what the processor sees: bf16 projections
    assert out.dtype == torch.bfloat16  # the layer itself still runs in the autocast dtype
    probs = store.maps["layer"]
    assert probs.dtype == torch.float32
    qh, kh = q.float().reshape(2, 16, 2, 32), k.float().reshape(2, 77, 2, 32)
    reference = torch.einsum("nihd,njhd->nhij", qh, kh).mul(32 ** -0.5).softmax(-1).reshape(4, 16, 77)
    assert (probs - reference).abs().max().item() <= 1e-6


def test_cross_attention_processors_refuse_an_attention_mask_by_name():
    from dreamedit3d_core.errors import ConfigError
    from dreamedit3d_core.mvdream.attention import CrossAttentionStore, RecordingCrossAttnProcessor

    model = shared_tiny_model()
    name = "up_blocks.1.attentions.1.transformer_blocks.0.attn2"
    attn = dict(model.unet.named_modules())[name]
    x, ctx = torch.randn(4, 64, 128), torch.randn(4, 77, attn.to_k.in_features)
    mask = torch.ones(4, 64, 77)
    for processor in (PerViewCrossAttnProcessor(), RecordingCrossAttnProcessor(CrossAttentionStore(), name)):
        with pytest.raises(ConfigError, match=f"{type(processor).__name__} does not take an attention mask"):
            processor(attn, x, ctx, attention_mask=mask)
        assert processor(attn, x, ctx).shape == x.shape  # without a mask it runs
