"""Training nodes and ComfyUI's model management (issue 16 item 3): copies only of what a phase changes, every part
registered with ComfyUI, nothing left behind, --novram honoured, the optimizer choice checked at the node.

The node chain runs as ComfyUI runs it (inference mode, every output kept, as its cache does) on the tiny model in
float16 (the loader's "auto" on CUDA). What a node adds is counted as the bytes of tensor storages alive after it
minus those freed in between (gc-visible tensors, after a collection).
"""

from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch

from _comfy_pack import install_robot_asset, node

pytestmark = pytest.mark.nodes

COMMON = dict(attention_loss_weight=0.01, seed=0, resume=False, checkpoint_every=1000, preview_every=0)


def live_storages() -> dict:
    """{storage pointer: bytes} of every tensor the garbage collector can see (after a collection)."""
    gc.collect()
    out = {}
    with warnings.catch_warnings():  # isinstance() on some module objects warns about deprecated aliases
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor) and not obj.is_meta]
    for obj in tensors:
        storage = obj.untyped_storage()
        if storage.nbytes():
            out[storage.data_ptr()] = storage.nbytes()
    return out


def added_bytes(before: dict) -> int:
    """Net bytes alive now that were not before (storages freed in between count against it)."""
    return sum(live_storages().values()) - sum(before.values())


def module_bytes(module: torch.nn.Module, dtype: torch.dtype | None = None) -> int:
    size = 0
    for t in (*module.parameters(), *module.buffers()):
        item = torch.empty((), dtype=dtype).element_size() if dtype is not None and t.is_floating_point() else t.element_size()
        size += t.numel() * item
    return size


@pytest.fixture()
def scene(pack):
    """(the loader's float16 model, masked views) as ComfyUI's cache holds them."""
    from dreamedit3d_pack.dreamedit3d_core.testing.tiny import write_tiny_checkpoint
    from dreamedit3d_pack.nodes import _compat

    ckpt = _compat.model_folder("mvdream") / "tiny-memory-test.safetensors"
    if not ckpt.is_file():
        write_tiny_checkpoint(ckpt, seed=0)
    install_robot_asset(_compat.input_folder())
    get = pack.NODES.get
    with torch.inference_mode():
        (model,) = node(get("DreamEdit3D_MVDreamLoader")).execute(ckpt_name="tiny-memory-test.safetensors",
                                                                    dtype="float16").result
        views = node(get("DreamEdit3D_OrthoRender")).execute(asset="robot/kenney_character.glb", resolution=64).result[-1]
        views = node(get("DreamEdit3D_ComponentMask")).execute(views=views, components="antenna: antenna; robot: *").result[-1]
    return model, views


def run_ti(pack, model, views, run_name):
    ti = pack.NODES["DreamEdit3D_MultiViewTextualInversion"].PREPARE_CLASS_CLONE({"unique_id": "11"})
    with torch.inference_mode():
        return ti.execute(model=model, views=views, init_words="", steps=1, learning_rate=5e-3, run_name=run_name,
                          **COMMON).result


def run_ft(pack, model, views, tokens, run_name, mode="full"):
    ft = pack.NODES["DreamEdit3D_MVFineTune"].PREPARE_CLASS_CLONE({"unique_id": "12"})
    with torch.inference_mode():
        return ft.execute(model=model, views=views, tokens=tokens, steps=1, learning_rate=1e-4, run_name=run_name,
                          token_learning_rate=1e-4, mode=mode, lora_rank=4, train_text_encoder=False,
                          gradient_checkpointing=False, mixed_precision="no", **COMMON).result


def test_training_nodes_copy_only_what_they_train_and_leave_no_other_copy(pack, scene):
    import comfy.model_management as mm

    model, views = scene
    assert model.dtype == torch.float16
    loaded = {id(lm.model) for lm in mm.current_loaded_models}
    assert {id(p) for p in model.comfy_patchers.values()} <= loaded, "the loader's three parts are registered"

    before = live_storages()
    ti_model, ti_tokens = run_ti(pack, model, views, "memory-ti")
    ti_added = added_bytes(before)
    # phase 1 changes only the text tower's table: its copy of the text tower is all it adds (the old node deep-copied
    # the whole model: UNet and VAE too)
    assert ti_model.unet is model.unet and ti_model.vae is model.vae and ti_model.text_encoder is not model.text_encoder
    assert ti_added <= module_bytes(ti_model.text_encoder) + (1 << 20), (ti_added, module_bytes(ti_model.text_encoder))
    assert ti_model.comfy_patchers["unet"] is model.comfy_patchers["unet"], "a shared part keeps its one patcher"
    assert ti_model.comfy_patchers["text_encoder"] is not model.comfy_patchers["text_encoder"]

    before = live_storages()
    ft_model, _ = run_ft(pack, ti_model, views, ti_tokens, "memory-ft")
    ft_added = added_bytes(before)
    # full fine-tuning: a float32 UNet and a text tower in the loaded dtype; the VAE is shared, nothing else stays
    # (the old node kept a float32 copy of all three parts)
    assert ft_model.vae is model.vae and ft_model.unet is not ti_model.unet
    assert ft_model.dtype == torch.float32 and ft_model.text_encoder.dtype == torch.float16
    assert ti_model.dtype == torch.float16, "the input model is left as ComfyUI cached it"
    budget = module_bytes(ft_model.unet) + module_bytes(ft_model.text_encoder)
    assert ft_added <= budget + (1 << 20), (ft_added, budget)
    assert ft_added >= module_bytes(model.unet, torch.float32), "the fine-tuned UNet is the node's own float32 copy"
    registered = {id(lm.model) for lm in mm.current_loaded_models}
    assert {id(p) for p in ft_model.comfy_patchers.values()} <= registered

    # dropping the outputs (ComfyUI's cache letting go) frees the copies: nothing of ours keeps them alive
    gone = [weakref.ref(ft_model.unet), weakref.ref(ft_model.text_encoder), weakref.ref(ti_model.text_encoder)]
    del ft_model, ti_model
    gc.collect()
    assert [r() for r in gone] == [None, None, None]


def test_lora_node_shares_the_vae_and_copies_the_unet_in_its_loaded_dtype(pack, scene):
    from dreamedit3d_pack.dreamedit3d_core.types import TokenSet

    model, views = scene
    gen = torch.Generator().manual_seed(0)
    tokens = TokenSet(tokens=("<antenna>", "<robot>"), embeddings=torch.randn(2, 1, model.text_dim, generator=gen),
                      components=("antenna", "robot"))
    before = live_storages()
    lora_model, _ = run_ft(pack, model, views, tokens, "memory-lora", mode="lora")
    added = added_bytes(before)
    assert lora_model.vae is model.vae and lora_model.unet is not model.unet
    assert "dreamedit3d" in lora_model.unet.peft_config and not hasattr(model.unet, "peft_config")
    adapter = sum(p.numel() * p.element_size() for n, p in lora_model.unet.named_parameters() if "lora_" in n)
    budget = module_bytes(model.unet) + module_bytes(model.text_encoder) + adapter
    assert added <= budget + (1 << 20), (added, budget)


@pytest.mark.parametrize("state", ["NO_VRAM", "LOW_VRAM"])
def test_novram_and_lowvram_leave_nothing_of_the_training_node_loaded(pack, scene, monkeypatch, state):
    """Under --novram/--lowvram our modules (which cannot stream their weights) are loaded for the node's work only."""
    import comfy.model_management as mm

    model, views = scene
    monkeypatch.setattr(mm, "vram_state", getattr(mm.VRAMState, state))
    ti_model, _ = run_ti(pack, model, views, "memory-novram")
    ours = {id(p) for p in ti_model.comfy_patchers.values()}
    assert not ours & {id(lm.model) for lm in mm.current_loaded_models}


def test_the_optimizer_choice_is_checked_at_the_node(pack, monkeypatch):
    from dreamedit3d_pack.nodes import personalize

    cls = pack.NODES["DreamEdit3D_MVFineTune"]
    monkeypatch.setattr(personalize, "bitsandbytes_installed", lambda: False)
    options = {i.id: i for i in cls.define_schema().inputs}["optimizer"].options
    assert options == ["adamw"]
    message = cls.validate_inputs(run_name="run", optimizer="adamw8bit")
    assert isinstance(message, str) and "bitsandbytes" in message and "adamw" in message
    assert "not one of" in cls.validate_inputs(run_name="run", optimizer="sgd")
    assert cls.validate_inputs(run_name="run", optimizer="adamw") is True
    monkeypatch.setattr(personalize, "bitsandbytes_installed", lambda: True)
    assert {i.id: i for i in cls.define_schema().inputs}["optimizer"].options == ["adamw", "adamw8bit"]
    assert cls.validate_inputs(run_name="run", optimizer="adamw8bit") is True


def test_comfyui_unloads_our_modules_whole_never_part_of_one(pack, scene):
    """ComfyUI frees room by partial unloads; our modules cannot stream weights back, so a partial unload would leave
    one split across devices: the patcher refuses it (0 bytes freed) and ComfyUI then unloads the module whole."""
    import comfy.model_management as mm

    model, _ = scene
    patcher = model.comfy_patchers["vae"]
    loaded = next(lm for lm in mm.current_loaded_models if lm.model is patcher)
    assert patcher.partially_unload(patcher.offload_device, 1) == 0
    assert loaded.model_unload(memory_to_free=1) is True, "unloaded whole"
    mm.current_loaded_models.remove(loaded)
    assert patcher.loaded_size() == 0


@pytest.mark.parametrize("phase, mode, train_text_encoder", [("token", "full", False), ("finetune", "full", False),
                                                             ("finetune", "lora", False), ("finetune", "lora", True)])
def test_the_room_a_node_asks_for_is_what_its_copy_allocates(scene, phase, mode, train_text_encoder):
    from dreamedit3d_pack.dreamedit3d_core.personalize.copies import (copy_bytes, model_for_finetuning,
                                                                       model_for_token_training)

    model, _ = scene
    before = live_storages()
    copy_ = model_for_token_training(model) if phase == "token" else model_for_finetuning(model, mode, train_text_encoder)
    added = added_bytes(before)
    copied = [m for m in (copy_.unet, copy_.vae, copy_.text_encoder) if m not in (model.unet, model.vae, model.text_encoder)]
    assert copy_bytes(model, phase, mode, train_text_encoder) == sum(module_bytes(m) for m in copied)
    assert abs(added - sum(module_bytes(m) for m in copied)) <= (1 << 20), added
