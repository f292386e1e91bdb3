"""The non-training nodes ask ComfyUI for the parts of the model they run (issue 16 item 3): the loader registers the
UNet, VAE and text tower, so ComfyUI may offload any of them between nodes; ComposePrompt loads the text tower, MVSample
the UNet and the VAE, TokenReport every part of both models, before they use them — and under --novram/--lowvram they
leave none of them loaded."""

from __future__ import annotations

import pytest
import torch

from _comfy_pack import node

pytestmark = pytest.mark.nodes


@pytest.fixture()
def loaded(pack, monkeypatch):
    """(the loader's model, the modules each load_models_gpu call asked for, in order)."""
    import comfy.model_management as mm
    from dreamedit3d_pack.dreamedit3d_core.testing.tiny import write_tiny_checkpoint
    from dreamedit3d_pack.nodes import _compat

    ckpt = _compat.model_folder("mvdream") / "tiny-load-parts.safetensors"
    if not ckpt.is_file():
        write_tiny_checkpoint(ckpt, seed=0)
    with torch.inference_mode():
        (model,) = node(pack.NODES["DreamEdit3D_MVDreamLoader"]).execute(ckpt_name=ckpt.name, dtype="auto").result
    calls = []
    real = mm.load_models_gpu

    def recording(models, *args, **kwargs):
        calls.append([getattr(getattr(p, "model", None), "inner", None) for p in models])
        return real(models, *args, **kwargs)

    monkeypatch.setattr(mm, "load_models_gpu", recording)
    return model, calls


def _compose_and_sample(pack, model, calls: list) -> int:
    """ComposePrompt then MVSample on ``model``; returns how many load calls ComposePrompt made."""
    import comfy.samplers
    from comfy_api.latest import io

    with torch.inference_mode():
        (cond,) = node(pack.NODES["DreamEdit3D_ComposePrompt"]).execute(
            model=model, prompt="a robot", negative_prompt="blurry").result
        composed = len(calls)
        sigmas = node(pack.NODES["DreamEdit3D_MVScheduler"]).execute(scheduler="normal", steps=2, model=model).result[0]
        sampler_node = pack.NODES["DreamEdit3D_MVSample"].PREPARE_CLASS_CLONE(
            {io.Hidden.prompt: {}, io.Hidden.unique_id: "7"})
        sampler_node.execute(model=model, positive=cond, sampler=comfy.samplers.sampler_object("euler"),
                             sigmas=sigmas, seed=1, cfg=5.0, resolution=64)
    return composed


def test_compose_loads_the_text_tower_and_sample_the_unet_and_the_vae(pack, loaded):
    model, calls = loaded
    calls.clear()
    composed = _compose_and_sample(pack, model, calls)
    asked_by_compose = [m for call in calls[:composed] for m in call]
    asked_by_sample = [m for call in calls[composed:] for m in call]
    assert any(m is model.text_encoder for m in asked_by_compose), asked_by_compose
    assert any(m is model.unet for m in asked_by_sample) and any(m is model.vae for m in asked_by_sample)


@pytest.mark.parametrize("state", ["NO_VRAM", "LOW_VRAM"])
def test_under_low_vram_nothing_of_ours_stays_loaded_after_compose_and_sample(pack, loaded, monkeypatch, state):
    import comfy.model_management as mm

    model, calls = loaded
    monkeypatch.setattr(mm, "vram_state", getattr(mm.VRAMState, state))
    _compose_and_sample(pack, model, calls)
    ours = {id(p) for p in model.comfy_patchers.values()}
    assert not ours & {id(lm.model) for lm in mm.current_loaded_models}
