"""Phase 2 (multi-view fine-tuning) on the tiny MVDream model: what trains, what stays, files users keep."""

from __future__ import annotations

import copy

import pytest
import torch

from _personalize_helpers import all_parameters, fresh_tiny_model, two_component_scene
from dreamedit3d_core.errors import ConfigError, MissingDependencyError, ShapeError, TokenError
from dreamedit3d_core.personalize.finetune import (
    FTConfig,
    finetune,
    load_unet_lora,
    run_finetune,
    save_finetuned_model,
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
    assert save_finetuned_unet is save_finetuned_model  # the old name stays for callers
    path = save_finetuned_model(model, tmp_path / "finetuned.safetensors")
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


@pytest.mark.parametrize("precision, activation_dtype", [("bf16", torch.bfloat16), ("no", torch.float32)])
def test_bf16_autocast_runs_on_cpu_with_fp32_master_weights(precision, activation_dtype):
    """The forward really runs under bf16 autocast (an fp32 model's weights would stay fp32 either way): a linear
    layer inside the UNet returns bf16 activations, and fp32 ones without mixed precision."""
    render, masks = two_component_scene(64)
    model = fresh_tiny_model()
    seen = []
    probe = model.unet.time_embedding.linear_1  # a plain nn.Linear every UNet forward runs
    handle = probe.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        model, _ = finetune(model, render, masks, _tokens(model),
                            FTConfig(steps=1, mode="lora", lora_rank=2, lr=1e-3, mixed_precision=precision,
                                     resolution=None))
    finally:
        handle.remove()
    assert seen and set(seen) == {activation_dtype}
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


def test_prior_term_matches_a_separate_forward_of_the_class_object():
    """The class object rides in the same batch; its term equals the plain MSE of its own forward pass."""
    from dreamedit3d_core.personalize.finetune import generate_class_latents
    from dreamedit3d_core.personalize.objective import build_scene, personalization_loss

    render, masks = two_component_scene(64)
    model = fresh_tiny_model()
    class_latents = generate_class_latents(model, "a 3d asset", render.cameras, 2, steps=2, seed=3, resolution=64)
    assert class_latents.shape == (2, 4, 4, 8, 8) and torch.isfinite(class_latents).all()
    again = generate_class_latents(model, "a 3d asset", render.cameras, 2, steps=2, seed=3, resolution=64)
    assert torch.equal(class_latents, again)

    ids = apply_tokens(model, _tokens(model))
    scene = build_scene(model, render, masks, ("<hat>", "<dog>"), ids, None, 16, True)
    scene.class_latents, scene.class_prompt = class_latents, "a 3d asset"
    noise = torch.randn(scene.latents.shape, generator=torch.Generator().manual_seed(1))
    diag = {}
    with torch.no_grad():
        out = personalization_loss(model, scene, torch.Generator().manual_seed(2), 1e-2, subset=[0], timestep=600,
                                   noise=noise, diagnostics=diag, prior_loss_weight=0.5)
        c, t, class_noise = diag["prior"]
        ac = model.alphas_cumprod[t].float()
        noisy = ac.sqrt() * class_latents[c] + (1 - ac).sqrt() * class_noise
        eps = model.predict_noise(noisy, t, model.encode_text(["a 3d asset"]).expand(4, -1, -1), render.cameras.embedding())
        prior_ref = torch.nn.functional.mse_loss(eps, class_noise).item()
        alone = personalization_loss(model, scene, torch.Generator(), 1e-2, subset=[0], timestep=600, noise=noise)
    assert out.info["prior"] == pytest.approx(prior_ref, rel=1e-5)
    assert out.info["masked"] == pytest.approx(alone.info["masked"], rel=1e-5)
    assert out.info["attention"] == pytest.approx(alone.info["attention"], rel=1e-5)
    assert out.loss.item() == pytest.approx(alone.loss.item() + 0.5 * prior_ref, rel=1e-5)

    result = run_finetune(model, render, masks, _tokens(model),
                          FTConfig(steps=1, mode="lora", lora_rank=2, lr=1e-3, prior_preservation=True,
                                   resolution=None), class_latents=class_latents).training
    assert "prior" in result.infos[0]
    with pytest.raises(ShapeError, match="class_latents must be"):
        finetune(fresh_tiny_model(), render, masks, _tokens(model),
                 FTConfig(steps=1, prior_preservation=True, resolution=None), class_latents=class_latents[:, :3])
    # without given class objects, the base model generates them first
    generated = run_finetune(fresh_tiny_model(), render, masks, _tokens(model),
                             FTConfig(steps=1, mode="lora", lora_rank=2, prior_preservation=True, num_class_objects=1,
                                      class_sample_steps=1, resolution=None)).training
    assert generated.infos[0]["prior"] > 0


def test_an_interrupted_lora_run_resumes_bit_for_bit_on_a_fresh_or_the_same_model(tmp_path):
    from dreamedit3d_core.errors import Interrupted
    from dreamedit3d_core.personalize.train import latest_checkpoint
    from dreamedit3d_core.progress import CallbackProgress

    render, masks = two_component_scene(64)
    config = FTConfig(steps=4, mode="lora", lora_rank=2, lr=1e-2, token_lr=1e-2, resolution=None, seed=4,
                      checkpoint_every=0, attention_loss_weight=1.0)
    base = fresh_tiny_model()
    full_model, full_tokens = finetune(copy.deepcopy(base), render, masks, _tokens(base), config)
    calls = {"n": 0}

    def stop_after_two():
        calls["n"] += 1
        return calls["n"] > 2

    same = copy.deepcopy(base)
    with pytest.raises(Interrupted):
        finetune(same, render, masks, _tokens(base), config, progress=CallbackProgress(should_stop=stop_after_two),
                 checkpoint_dir=tmp_path)
    ckpt = latest_checkpoint(tmp_path, "phase2")
    assert ckpt.name == "phase2-step000002.pt"
    expected = {n: p for n, p in full_model.unet.named_parameters() if "lora_" in n}
    for model in (copy.deepcopy(base), same):
        model, tokens = finetune(model, render, masks, _tokens(base), config, resume_from=ckpt)
        got = {n: p for n, p in model.unet.named_parameters() if "lora_" in n}
        assert all(torch.equal(got[n], expected[n]) for n in expected)
        assert torch.equal(tokens.embeddings, full_tokens.embeddings)


def test_lora_on_a_base_loaded_in_fp16_trains_with_loss_scaling(monkeypatch):
    # ComfyUI's loader gives fp16 weights on CUDA; LoRA keeps fp32 adapters on that base, but their gradients come
    # back through the fp16 graph, so the step needs a GradScaler (as fp16 autocast does).
    import dreamedit3d_core.personalize.finetune as ft

    seen = []
    real = ft.run_training

    def spy(*args, scaler=None, **kwargs):
        seen.append(scaler)
        return real(*args, scaler=scaler, **kwargs)

    monkeypatch.setattr(ft, "run_training", spy)
    render, masks = two_component_scene(64)
    model = fresh_tiny_model().to(dtype=torch.float16)
    model, tokens = finetune(model, render, masks, _tokens(model),
                             FTConfig(steps=2, mode="lora", lora_rank=2, lr=1e-2, resolution=None))
    assert len(seen) == 1 and isinstance(seen[0], torch.amp.GradScaler)
    lora = {n: p for n, p in model.unet.named_parameters() if "lora_B" in n}
    assert lora and all(p.dtype == torch.float32 for p in lora.values())
    assert any(p.abs().sum() > 0 for p in lora.values()), "the adapter did not learn (its B starts at zero)"
    assert torch.isfinite(tokens.embeddings).all()
