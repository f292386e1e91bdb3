"""The multi-view UNet against independent references (tiny seeded model in the released layout, fp32, CPU)."""

from __future__ import annotations

import pytest
import torch

from _mvdream_helpers import fresh_tiny_model, shared_tiny_model, unet_inputs, views_per_object

pytestmark = pytest.mark.numeric

ATOL = 1e-5


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("variant", ["mvdream-sd21", "mvdream-sd15"])
def test_one_view_with_zeroed_camera_mlp_equals_stock_diffusers_unet(variant):
    """2D mode with the camera MLP zeroed is plain SD: a stock UNet2DConditionModel with the same weights agrees."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    model = fresh_tiny_model(variant=variant)
    with torch.no_grad():
        for p in model.unet.class_embedding.parameters():
            p.zero_()
    config = {k: v for k, v in model.unet.config.items() if not k.startswith("_")}
    config.update(class_embed_type=None, projection_class_embeddings_input_dim=None)
    stock = UNet2DConditionModel(**config)
    weights = {k: v for k, v in model.unet.state_dict().items() if not k.startswith("class_embedding.")}
    stock.load_state_dict(weights, strict=True)
    stock.set_attn_processor(AttnProcessor2_0())
    stock.eval()
    latents, timesteps, text, cameras = unet_inputs(model, objects=1, size=16)
    with torch.no_grad():
        ours = model.predict_noise(latents, timesteps, text, cameras, num_views=1)
        reference = stock(latents, timesteps, encoder_hidden_states=text).sample
    assert reference.abs().mean() > 0.1
    assert _max_diff(ours, reference) <= ATOL


class EinsumJointSelfAttention:
    """Independent reference for MVDream's attn1: explicit einsum attention over all tokens of an object's views."""

    def __init__(self, views: int):
        self.views = views

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 num_views=None):
        n, length, channels = hidden_states.shape
        objects = n // self.views
        x = hidden_states.reshape(objects, self.views, length, channels).reshape(objects, self.views * length, channels)
        heads = attn.heads
        d = channels // heads
        q = torch.einsum("btc,oc->bto", x, attn.to_q.weight).reshape(objects, -1, heads, d)
        k = torch.einsum("btc,oc->bto", x, attn.to_k.weight).reshape(objects, -1, heads, d)
        v = torch.einsum("btc,oc->bto", x, attn.to_v.weight).reshape(objects, -1, heads, d)
        weights = torch.einsum("bihd,bjhd->bhij", q, k).mul(d ** -0.5).softmax(dim=-1)
        out = torch.einsum("bhij,bjhd->bihd", weights, v).reshape(objects, -1, channels)
        out = torch.einsum("btc,oc->bto", out, attn.to_out[0].weight) + attn.to_out[0].bias
        return out.reshape(objects, self.views, length, channels).reshape(n, length, channels)


def test_joint_self_attention_equals_einsum_reference_in_the_whole_unet():
    model = fresh_tiny_model()
    latents, timesteps, text, cameras = unet_inputs(model, objects=2, size=16)
    with torch.no_grad():
        ours = model.predict_noise(latents, timesteps, text, cameras)
        processors = {n: (EinsumJointSelfAttention(model.num_views) if n.endswith("attn1.processor") else p)
                      for n, p in model.unet.attn_processors.items()}
        model.unet.set_attn_processor(processors)
        reference = model.predict_noise(latents, timesteps, text, cameras)
    assert _max_diff(ours, reference) <= ATOL


def test_joint_self_attention_module_equals_einsum_reference():
    model = shared_tiny_model()
    attn = dict(model.unet.named_modules())["down_blocks.1.attentions.0.transformer_blocks.0.attn1"]
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2 * 4, 6 * 10, attn.to_q.in_features, generator=g)  # B 2, V 4, L 60 (6x10 tokens)
    with torch.no_grad():
        ours = attn(hidden, num_views=4)
        reference = EinsumJointSelfAttention(4)(attn, hidden)
        per_view = attn(hidden, num_views=1)
    assert _max_diff(ours, reference) <= ATOL
    assert _max_diff(ours, per_view) > 1e-3  # the views do see each other


def test_joint_attention_changes_the_output_compared_with_one_view():
    model = shared_tiny_model()
    latents, timesteps, text, cameras = unet_inputs(model, objects=1, size=16)
    with torch.no_grad():
        joint = model.predict_noise(latents, timesteps, text, cameras)
        alone = model.predict_noise(latents, timesteps, text, cameras, num_views=1)
        with views_per_object(model, 1):
            alone_ctx = model.predict_noise(latents, timesteps, text, cameras)
    assert _max_diff(joint, alone) > 1e-3
    assert torch.equal(alone, alone_ctx)
    # each object's views only see each other: the second object's output does not depend on the first object
    latents2, timesteps2, text2, cameras2 = unet_inputs(model, objects=2, size=16, seed=5)
    with torch.no_grad():
        both = model.predict_noise(latents2, timesteps2, text2, cameras2)
        second = model.predict_noise(latents2[4:], timesteps2[4:], text2[4:], cameras2[4:])
    assert _max_diff(both[4:], second) <= ATOL


def test_changing_one_views_text_changes_only_that_views_cross_attention():
    model = shared_tiny_model()
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
    attn = dict(model.unet.named_modules())[name]
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(4, 64, attn.to_q.in_features, generator=g)
    context = torch.randn(4, 77, model.text_dim, generator=g)
    changed = context.clone()
    changed[2] = torch.randn(77, model.text_dim, generator=g)
    with torch.no_grad():
        before = attn(hidden, encoder_hidden_states=context, num_views=4)
        after = attn(hidden, encoder_hidden_states=changed, num_views=4)
    diff = (before - after).abs().amax(dim=(1, 2))
    assert diff[2] > 1e-3
    assert torch.all(diff[[0, 1, 3]] == 0)


def test_changing_one_views_text_leaves_other_views_first_cross_attention_untouched_in_the_unet():
    model = shared_tiny_model()
    latents, timesteps, text, cameras = unet_inputs(model, objects=1, size=16)
    first = dict(model.unet.named_modules())["down_blocks.1.attentions.0.transformer_blocks.0.attn2"]
    outputs = []
    hook = first.register_forward_hook(lambda mod, args, out: outputs.append(out.detach().clone()))
    try:
        changed = text.clone()
        changed[1] += 1.0
        with torch.no_grad():
            eps_a = model.predict_noise(latents, timesteps, text, cameras)
            eps_b = model.predict_noise(latents, timesteps, changed, cameras)
    finally:
        hook.remove()
    diff = (outputs[0] - outputs[1]).abs().amax(dim=(1, 2))
    assert diff[1] > 1e-4 and torch.all(diff[[0, 2, 3]] == 0)
    # later joint self-attention spreads view 1's change to the other views of the same object
    assert (eps_a - eps_b)[0].abs().max() > 1e-6


def test_camera_embedding_is_added_to_the_timestep_embedding():
    """emb = time_embed(t) + camera_embed(camera), as MVDream's forward: checked on the diffusers modules."""
    model = shared_tiny_model()
    unet = model.unet
    t = torch.tensor([10, 500])
    cams = torch.randn(2, 16, generator=torch.Generator().manual_seed(8))
    captured = {}
    hook = unet.time_embedding.register_forward_hook(lambda m, a, out: captured.setdefault("time", out))
    hook2 = unet.class_embedding.register_forward_hook(lambda m, a, out: captured.setdefault("camera", out))
    hook3 = unet.down_blocks[0].resnets[0].time_emb_proj.register_forward_pre_hook(
        lambda m, a: captured.setdefault("emb", a[0]))
    try:
        with torch.no_grad(), views_per_object(model, 1):
            model.predict_noise(torch.randn(2, 4, 8, 8), t, torch.randn(2, 77, model.text_dim), cams)
    finally:
        hook.remove(), hook2.remove(), hook3.remove()
    w1, b1 = unet.class_embedding.linear_1.weight, unet.class_embedding.linear_1.bias
    w2, b2 = unet.class_embedding.linear_2.weight, unet.class_embedding.linear_2.bias
    camera_mlp = torch.nn.functional.silu(cams @ w1.T + b1) @ w2.T + b2
    assert _max_diff(captured["camera"], camera_mlp) <= ATOL
    assert _max_diff(torch.nn.functional.silu(captured["time"] + camera_mlp), captured["emb"]) <= ATOL


def test_predict_noise_rejects_a_batch_that_is_not_whole_objects():
    from dreamedit3d_core.errors import ConfigError, ShapeError

    model = shared_tiny_model()
    latents, timesteps, text, cameras = unet_inputs(model, objects=1, size=8)
    with pytest.raises(ShapeError, match="whole number of 4-view objects"):
        model.predict_noise(latents[:3], timesteps[:3], text[:3], cameras[:3])
    with pytest.raises(ShapeError, match=r"cameras must be \[4, 16\]"):
        model.predict_noise(latents, timesteps, text, cameras[:, :12])
    with pytest.raises(ConfigError, match="MVDream needs cameras"):
        model.predict_noise(latents, timesteps, text, None)
    with pytest.raises(ShapeError, match="text_embeddings must be"):
        model.predict_noise(latents, timesteps, text[:1], cameras)


def test_attention_processor_errors_are_clear():
    from dreamedit3d_core.errors import ConfigError, ShapeError
    from dreamedit3d_core.mvdream.attention import MultiViewAttnProcessor

    with pytest.raises(ConfigError, match="num_views must be at least 1, got 0"):
        MultiViewAttnProcessor(0)
    model = shared_tiny_model()
    attn = dict(model.unet.named_modules())["down_blocks.1.attentions.0.transformer_blocks.0.attn1"]
    with pytest.raises(ShapeError, match=r"UNet batch \(6\) must be a whole number of objects of num_views=4"):
        attn(torch.zeros(6, 10, attn.to_q.in_features), num_views=4)
    with pytest.raises(ConfigError, match="for self-attention"):
        attn(torch.zeros(4, 10, attn.to_q.in_features), encoder_hidden_states=torch.zeros(4, 77, 64), num_views=4)


def test_model_to_and_dtype_follow_the_modules():
    model = fresh_tiny_model()
    assert model.device.type == "cpu" and model.dtype == torch.float32
    model.to(dtype=torch.float64)
    assert model.dtype == torch.float64 and model.vae.dtype == torch.float64
    latents, timesteps, text, cameras = unet_inputs(model, objects=1, size=8)
    with torch.no_grad():
        eps = model.predict_noise(latents, timesteps, text, cameras)  # inputs are cast to the UNet dtype
    assert eps.dtype == torch.float64
