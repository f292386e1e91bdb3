"""Phase 2 (multi-view fine-tuning) on the tiny MVDream model: what trains, what stays, files users keep."""

from __future__ import annotations

import copy

import pytest
import torch

from _personalize_helpers import all_parameters, fresh_tiny_model, two_component_scene
from dreamedit3d_core.errors import ConfigError, MissingDependencyError, TokenError
from dreamedit3d_core.personalize.finetune import (
    FTConfig,
    finetune,
    load_unet_lora,
    save_finetuned_unet,
    save_unet_lora,
)
from dreamedit3d_core.personalize.textual_inversion import initial_embeddings
from dreamedit3d_core.tokens import apply_tokens
from dreamedit3d_core.types import ComponentMasks, TokenSet

pytestmark = pytest.mark.numeric


def _tokens(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    init = initial_embeddings(model, ("hat", "dog"), 2) + 0.01 * torch.randn(2, model.text_dim, generator=g)
    return TokenSet(tokens=("<hat>", "<dog>"), embeddings=init[:, None], components=("hat", "dog"),
                    base_model_hash=model.model_hash)


def _eps(model, render, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(4, 4, 8, 8, generator=g)
    with torch.no_grad():
        text = model.encode_text(["a photo of <hat> and <dog>"]).expand(4, -1, -1)
        return model.predict_noise(latents, 400, text, render.cameras.embedding())


def test_lora_trains_only_the_adapter_and_tokens_and_its_file_reproduces_the_model(tmp_path):
    render, masks = two_component_scene(64)
    model = fresh_tiny_model()
    tokens = _tokens(model)
    before = all_parameters(model)
    config = FTConfig(steps=3, mode="lora", lr=1e-2, token_lr=1e-2, lora_rank=4, resolution=None, seed=1)
    model, learned = finetune(model, render, masks, tokens, config)
    after = {k: v for k, v in all_parameters(model).items()}
    lora = [k for k in after if "lora_" in k]
    assert lora and all(k.startswith("unet.") for k in lora)
    assert any(not torch.equal(after[k], torch.zeros_like(after[k])) for k in lora if "lora_B" in k)
    table = "text_encoder." + next(n for n, p in model.text_encoder.named_parameters() if p is model.token_embedding.weight)
    vocab = before[table].shape[0]
    for name, value in before.items():
        base = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        got = after.get(name, after.get(base))
        assert got is not None, name
        if name == table:
            assert torch.equal(got[:vocab], value)
        else:
            assert torch.equal(got, value), f"{name} changed"
    assert not torch.equal(learned.embeddings, tokens.embeddings)  # the tokens kept learning
    assert torch.equal(model.token_embedding.weight[vocab:].detach(), learned.embeddings[:, 0])

    path = save_unet_lora(model, tmp_path / "scene_lora.safetensors")
    with pytest.raises(ConfigError, match="already exists"):
        save_unet_lora(model, path)
    other = fresh_tiny_model()
    apply_tokens(other, learned)
    base_eps = _eps(other, render)
    load_unet_lora(other, path)
    trained_eps = _eps(model, render)
    assert torch.allclose(_eps(other, render), trained_eps, atol=1e-6)
    assert (trained_eps - base_eps).abs().max() > 1e-4  # the adapter does something


def test_full_finetune_changes_the_unet_only_and_saves_a_loadable_model(tmp_path):
    from dreamedit3d_core.mvdream.checkpoint import load_mvdream

    render, masks = two_component_scene(64)
    model = fresh_tiny_model()
    tokens = _tokens(model)
    before = all_parameters(model)
    model, learned = finetune(model, render, masks, tokens,
                              FTConfig(steps=2, lr=1e-3, token_lr=0.0, resolution=None, attention_loss_weight=1.0))
    after = all_parameters(model)
    changed = {k for k in before if k in after and before[k].shape == after[k].shape and not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("unet.") for k in changed)
    assert any("attn2.to_k" in k for k in changed)  # the attention loss reaches the cross-attention keys
    assert torch.equal(learned.embeddings, tokens.embeddings)  # token_lr 0: unchanged
    path = save_finetuned_unet(model, tmp_path / "finetuned.safetensors")
    reloaded = load_mvdream(path)
    with pytest.warns(UserWarning, match="were learned on model"):  # the fine-tuned file has its own hash
        apply_tokens(reloaded, learned)
    assert torch.allclose(_eps(reloaded, render), _eps(model, render), atol=1e-6)


def test_text_encoder_training_keeps_the_vocabulary_table_fixed():
    render, masks = two_component_scene(64)
    model = fresh_tiny_model()
    before = all_parameters(model)
    model, _ = finetune(model, render, masks, _tokens(model),
                        FTConfig(steps=1, lr=0.0, text_encoder_lr=1e-3, train_text_encoder=True, resolution=None))
    after = all_parameters(model)
    table = "text_encoder." + next(n for n, p in model.text_encoder.named_parameters() if p is model.token_embedding.weight)
    assert torch.equal(after[table][: before[table].shape[0]], before[table])
    changed = {k for k in before if k != table and not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("text_encoder.") for k in changed)


def test_gradient_checkpointing_gives_the_same_step_as_without():
    render, masks = two_component_scene(64)
    results = []
    for checkpointing in (False, True):
        model = fresh_tiny_model()
        model, learned = finetune(model, render, masks, _tokens(model),
                                  FTConfig(steps=1, lr=1e-3, token_lr=1e-2, gradient_checkpointing=checkpointing,
                                           attention_loss_weight=1.0, resolution=None, seed=5))
        results.append((dict(model.unet.named_parameters()), learned.embeddings))
    (a, ta), (b, tb) = results
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert torch.allclose(ta, tb, atol=1e-6)


def test_bf16_autocast_runs_on_cpu_with_fp32_master_weights():
    render, masks = two_component_scene(64)
    model = fresh_tiny_model()
    model, _ = finetune(model, render, masks, _tokens(model),
                        FTConfig(steps=1, mode="lora", lora_rank=2, lr=1e-3, mixed_precision="bf16", resolution=None))
    assert all(p.dtype == torch.float32 for p in model.unet.parameters())


def test_phase2_bad_inputs_are_refused():
    render, masks = two_component_scene(64)
    model = fresh_tiny_model()
    tokens = _tokens(model)
    with pytest.raises(MissingDependencyError, match="pip install bitsandbytes"):
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            finetune(copy.deepcopy(model), render, masks, tokens, FTConfig(steps=1, optimizer="adamw8bit", resolution=None))
        else:
            raise MissingDependencyError("skip", "bitsandbytes")  # installed: nothing to check here
    with pytest.raises(TokenError, match=r"learned for components \['hat', 'dog'\] but the masks are \['cap', 'dog'\]"):
        finetune(model, render, ComponentMasks(masks=masks.masks, names=("cap", "dog")), tokens, FTConfig(steps=1))
    with pytest.raises(TokenError, match="2 tokens"):
        finetune(model, render, ComponentMasks(masks=masks.masks[:1], names=("hat",)), tokens, FTConfig(steps=1))
    with pytest.raises(ConfigError, match="mode must be one of"):
        FTConfig(mode="qlora")
    with pytest.raises(ConfigError, match="unknown FTConfig keys"):
        FTConfig.from_dict({"steps": 3, "learning_rate": 1e-4})
