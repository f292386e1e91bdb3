"""Node adapters against the real comfy_api of the host tree, in-process (no server).

Checks the parts of nodes/ that are ours: safe input paths, the eps model-sampling given to core samplers, the
converters between core tensors and ComfyUI's layouts, progress/interrupt plumbing, the core MESH and SaveGLB, and the
registration list. End-to-end runs are in tests/host.
"""

from __future__ import annotations

import os

import pytest
import torch

from _comfy_pack import install_robot_asset, node

pytestmark = pytest.mark.nodes


def test_registration_lists_every_stage_node_with_v3_classes(pack):
    from comfy_api.latest import io

    expected = {"DreamEdit3D_MVDreamLoader", "DreamEdit3D_OrthoRender", "DreamEdit3D_ComponentMask",
                "DreamEdit3D_MultiViewTextualInversion", "DreamEdit3D_MVFineTune", "DreamEdit3D_ComposePrompt",
                "DreamEdit3D_MVScheduler", "DreamEdit3D_MVSample", "DreamEdit3D_LiftToMesh"}
    assert expected <= set(pack.NODES)
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS"), "a host with ComfyExtension must use comfy_entrypoint"
    import asyncio

    from comfy_api.latest import ComfyExtension

    extension = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension) and asyncio.run(extension.get_node_list()) == pack.NODE_LIST
    for cls in pack.NODE_LIST:
        node_id = cls.define_schema().node_id
        if node_id == "DreamEdit3D_EditMetrics":
            continue  # the extras slice's node: checked by its own tests
        assert issubclass(cls, io.ComfyNode)
        schema = cls.define_schema()
        schema.validate()
        assert schema.node_id == node_id and schema.category.startswith("DreamEdit3D/")
    assert pack.WEB_DIRECTORY == "web"


# ------------------------------------------------------------------------------------------------ input files
def test_input_files_are_listed_with_subfolders_and_symlinks_out_are_skipped(pack, tmp_path):
    from dreamedit3d_pack.nodes import folders as _compat

    inp = _compat.input_folder()
    (inp / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    (inp / "a.glb").write_bytes(b"x")
    (inp / "sub" / "deeper" / "b.obj").write_text("v 0 0 0\n")
    (inp / "notes.txt").write_text("no")
    outside = tmp_path / "secret.glb"
    outside.write_bytes(b"secret")
    os.symlink(outside, inp / "link_out.glb")
    files = _compat.list_input_files((".glb", ".obj"))
    assert "a.glb" in files and "sub/deeper/b.obj" in files
    assert "link_out.glb" not in files and "notes.txt" not in files


@pytest.mark.parametrize("name, fragment", [
    ("../secret.glb", "outside the input folder"),
    ("sub/../../secret.glb", "outside the input folder"),
    ("/etc/passwd.glb", "outside the input folder"),
    ("C:/x.glb", "outside the input folder"),
    ("link_out.glb", "resolves outside the input folder"),
    ("missing.glb", "not found in the input folder"),
    ("a.txt", "unsupported extension"),
    ("", "no asset chosen"),
])
def test_unsafe_or_missing_input_paths_are_refused_with_a_clear_message(pack, name, fragment):
    from dreamedit3d_core.errors import AssetError as PlainAssetError
    from dreamedit3d_pack.nodes import folders as _compat

    with pytest.raises(ValueError, match=fragment) as info:
        _compat.resolve_input_file(name, (".glb", ".obj"))
    assert type(info.value).__name__ == PlainAssetError.__name__


def test_input_path_inside_a_subfolder_resolves_to_that_file(pack):
    from dreamedit3d_pack.nodes import folders as _compat

    got = _compat.resolve_input_file("sub/deeper/b.obj", (".obj",))
    assert got == (_compat.input_folder() / "sub" / "deeper" / "b.obj").resolve()
    assert _compat.resolve_input_file("a.glb [input]", (".glb",)).name == "a.glb"


def test_ortho_render_validation_rejects_escaping_assets_before_running(pack):
    cls = pack.NODES["DreamEdit3D_OrthoRender"]
    assert "outside the input folder" in cls.validate_inputs(asset="../x.glb", lighting="unlit")
    assert cls.validate_inputs(asset="a.glb", lighting="unlit") is True
    assert "not one of" in cls.validate_inputs(asset="a.glb", lighting="neon")
    # a connected mesh replaces the file: the combo value is not checked then
    assert cls.validate_inputs(input_types={"mesh": "MESH"}, asset="../x.glb") is True


# ------------------------------------------------------------------------------------------------ sampling
def test_model_sampling_matches_comfyui_sd_schedule_for_the_sd21_alphas(pack):
    import comfy.model_sampling as ms
    from dreamedit3d_core.schedule import sd21_alphas_cumprod
    from dreamedit3d_pack.nodes import _compat

    ours = _compat.make_model_sampling(sd21_alphas_cumprod())
    reference = type("Ref", (ms.ModelSamplingDiscrete, ms.EPS), {})()  # ComfyUI's own SD1/SD2 linear schedule
    torch.testing.assert_close(ours.sigmas, reference.sigmas, rtol=1e-5, atol=1e-6)
    assert isinstance(ours, ms.EPS) and float(ours.sigma_max) == pytest.approx(14.6146, rel=1e-4)
    with pytest.raises(ValueError, match="not a valid diffusion schedule"):
        _compat.make_model_sampling(torch.zeros(1000))


def test_mv_scheduler_gives_the_core_scheduler_sigmas_without_a_model(pack):
    import comfy.model_sampling as ms
    import comfy.samplers

    sched = node(pack.NODES["DreamEdit3D_MVScheduler"])
    reference = type("Ref", (ms.ModelSamplingDiscrete, ms.EPS), {})()
    for name in ("karras", "normal", "simple"):
        (sigmas,) = sched.execute(scheduler=name, steps=7).result
        expected = comfy.samplers.calculate_sigmas(reference, name, 7)
        torch.testing.assert_close(sigmas, expected, rtol=1e-5, atol=1e-6)
    (half,) = sched.execute(scheduler="karras", steps=5, denoise=0.5).result
    full = comfy.samplers.calculate_sigmas(reference, "karras", 10)
    torch.testing.assert_close(half, full[-6:], rtol=1e-5, atol=1e-6)
    assert "not one of" in pack.NODES["DreamEdit3D_MVScheduler"].validate_inputs(scheduler="nope")


# ------------------------------------------------------------------------------------------------ converters
def test_image_and_mask_converters_move_channels_last_without_reordering_pixels(pack):
    from dreamedit3d_pack.nodes import sockets

    rgb = torch.rand(4, 3, 5, 7)
    img = sockets.to_comfy_image(rgb)
    assert img.shape == (4, 5, 7, 3) and img.dtype == torch.float32
    assert img[2, 3, 6, 1] == rgb[2, 1, 3, 6]
    torch.testing.assert_close(sockets.from_comfy_image(img, expect=4), rgb)
    with pytest.raises(ValueError, match="expected a batch of 4 views"):
        sockets.from_comfy_image(img[:3], expect=4)
    mask = sockets.to_comfy_mask(torch.rand(4, 1, 5, 7) > 0.5)
    assert mask.shape == (4, 5, 7) and set(mask.unique().tolist()) <= {0.0, 1.0}


def test_component_masks_are_stacked_component_major_and_coloured_by_component(pack):
    from dreamedit3d_pack.dreamedit3d_core.types import ComponentMasks
    from dreamedit3d_pack.nodes import sockets

    m = torch.zeros(2, 4, 6, 6, dtype=torch.bool)
    m[0, :, :2] = True  # component 0: top rows
    m[1, 1, 3:] = True  # component 1: bottom rows of view 1 only
    masks = ComponentMasks(masks=m, names=("hat", "dog"))
    union, stacked = sockets.component_masks_to_comfy(masks)
    assert stacked.shape == (8, 6, 6) and torch.equal(stacked[4 + 1].bool(), m[1, 1])
    assert torch.equal(union.bool(), m.any(0))
    cmap = sockets.component_map_image(masks)
    assert cmap.shape == (4, 6, 6, 3)
    assert not torch.equal(cmap[1, 0, 0], cmap[1, 5, 0]) and torch.equal(cmap[0, 5, 0], torch.ones(3))


# ------------------------------------------------------------------------------------------------ progress
def test_progress_reports_to_comfyui_hook_with_a_grid_preview_and_interrupts(pack):
    import comfy.model_management as mm
    import comfy.utils
    from dreamedit3d_pack.nodes.progress import ComfyProgress

    calls = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append(
        (value, total, preview, node_id)))
    try:
        progress = ComfyProgress(10, node_id="7")
        progress.update(3, 10, preview=torch.rand(4, 3, 8, 8), loss=0.5)
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
    value, total, preview, node_id = calls[0]
    assert (value, total, node_id) == (3, 10, "7") and progress.last_info == {"loss": 0.5}
    kind, image, _size = preview
    assert kind == "JPEG" and image.size == (16, 16)  # 2x2 grid of the four views
    progress.check_interrupt()  # nothing requested: no exception
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        progress.check_interrupt()


# ------------------------------------------------------------------------------------------------ 3D
def test_core_mesh_is_the_hosts_class_and_core_saveglb_writes_it(pack):
    import trimesh
    from comfy_api.latest import Types
    from comfy_extras.nodes_hunyuan3d import SaveGLB
    from dreamedit3d_pack.nodes import folders, sockets

    verts = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    mesh = sockets.core_mesh(verts, faces, uvs=torch.zeros(4, 2), texture=torch.zeros(8, 8, 3))
    assert isinstance(mesh, Types.MESH) and mesh.vertices.shape == (1, 4, 3)
    v, f = sockets.mesh_from_core(mesh)
    assert torch.equal(v, verts) and torch.equal(f, faces)
    out = SaveGLB.PREPARE_CLASS_CLONE({}).execute(mesh=mesh, filename_prefix="dreamedit3d/test")
    item = out.ui["3d"][0] if isinstance(out.ui, dict) else out.ui.as_dict()["3d"][0]
    saved = trimesh.load(folders.output_folder() / item["subfolder"] / item["filename"], force="mesh")
    assert len(saved.faces) == 4


def test_names_moved_out_of_compat_still_import_from_it(pack):
    """nodes/lifting.py (and any module not yet updated) imports these from _compat: they resolve to the new homes."""
    from dreamedit3d_pack.nodes import _compat, folders, progress, sockets

    for name, home in (("ComfyProgress", progress), ("core_mesh_batch", sockets), ("save_target", folders),
                       ("output_relative", folders), ("resolve_input_file", folders), ("FOLDER_MVDREAM", folders)):
        assert getattr(_compat, name) is getattr(home, name)
    with pytest.raises(AttributeError, match="no attribute"):
        _compat.no_such_name


def test_model_management_takes_a_diffusers_module(pack):
    import comfy.model_management as mm
    from diffusers import UNet2DConditionModel
    from dreamedit3d_pack.nodes import _compat

    unet = UNet2DConditionModel(block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=4, layers_per_block=1, sample_size=8, attention_head_dim=2)
    patcher = _compat.managed_load(unet)
    assert any(m.model is patcher for m in mm.current_loaded_models)
    assert next(unet.parameters()).device == mm.get_torch_device()
    out = unet(torch.randn(1, 4, 8, 8), 1, torch.randn(1, 3, 8)).sample
    assert out.shape == (1, 4, 8, 8)


# ------------------------------------------------------------------------------------------------ training nodes
def test_training_node_runs_under_inference_mode_and_leaves_its_input_model_untouched(pack, tmp_path):
    """ComfyUI executes nodes inside torch.inference_mode(); the TI node must still train, on a private copy."""

    from dreamedit3d_pack.dreamedit3d_core.testing.tiny import write_tiny_checkpoint
    from dreamedit3d_pack.nodes import _compat

    ckpt_dir = _compat.model_folder("mvdream")
    write_tiny_checkpoint(ckpt_dir / "tiny-node-test.safetensors", seed=0)
    install_robot_asset(_compat.input_folder())
    get = pack.NODES.get
    with torch.inference_mode():
        (model,) = node(get("DreamEdit3D_MVDreamLoader")).execute(ckpt_name="tiny-node-test.safetensors").result
        before = model.token_embedding.weight.detach().clone()
        render = node(get("DreamEdit3D_OrthoRender")).execute(asset="robot/kenney_character.glb", resolution=64)
        images, alpha, _normals, _depth, views = render.result
        assert images.shape == (4, 64, 64, 3) and alpha.shape == (4, 64, 64)
        masked = node(get("DreamEdit3D_ComponentMask")).execute(views=views, components="antenna: antenna; robot: *")
        union, stacked, cmap, views = masked.result
        assert stacked.shape == (8, 64, 64) and cmap.shape == (4, 64, 64, 3)
        ti = node(get("DreamEdit3D_MultiViewTextualInversion")).PREPARE_CLASS_CLONE({"unique_id": "4"})
        out = ti.execute(model=model, views=views, init_words="robot: robot", steps=2, learning_rate=5e-3,
                         attention_loss_weight=0.01, seed=0, run_name="node-test", resume=False, checkpoint_every=1000,
                         preview_every=0)
    trained, tokens = out.result
    assert tokens.tokens == ("<antenna>", "<robot>") and tokens.embeddings.shape[0] == 2
    assert trained is not model
    assert "<robot>" in trained.tokenizer.added_tokens and "<robot>" not in model.tokenizer.added_tokens
    assert torch.equal(model.token_embedding.weight, before), "the loader's model (ComfyUI's cache) is unchanged"
    ids = trained.tokenizer.encode(["a <robot>"])[0]
    rows = trained.token_embedding.weight[ids[2]]
    assert torch.allclose(rows, tokens.embeddings[1, 0].to(rows)), "the trained model carries the learned vector"


def test_sam_component_mask_runs_sam_on_the_compute_device(pack, monkeypatch):
    """OrthoRender keeps the views on the CPU; SAM must still run on ComfyUI's compute device, not the render's."""

    from dreamedit3d_core.testing.sam import tiny_sam
    from dreamedit3d_pack.dreamedit3d_core import masks as core_masks
    from dreamedit3d_pack.nodes import _compat

    install_robot_asset(_compat.input_folder())
    sams = _compat.model_folder(_compat.FOLDER_SAMS)
    sams.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_sam().state_dict(), sams / "tiny-node-sam.pth")
    real, seen = core_masks.masks_from_sam, []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(core_masks, "masks_from_sam", spy)
    get = pack.NODES.get
    with torch.inference_mode():
        views = node(get("DreamEdit3D_OrthoRender")).execute(asset="robot/kenney_character.glb", resolution=64).result[-1]
        out = node(get("DreamEdit3D_ComponentMask")).execute(views=views, components="head: top; robot: *", source="sam",
                                                             sam_model="tiny-node-sam.pth", prompt_view="front",
                                                             points="32,20; 30,24")
    assert seen == [_compat.compute_device()]
    union, stacked, _cmap, masked_views = out.result
    assert stacked.shape == (8, 64, 64) and masked_views.require_masks("test").names == ("head", "robot")


def test_full_finetune_node_trains_a_model_loaded_in_half_precision(pack):
    """The loader's "auto" dtype is fp16 on CUDA; MVFineTune (full) must train an fp32 copy instead of refusing."""

    from dreamedit3d_pack.dreamedit3d_core.testing.tiny import write_tiny_checkpoint
    from dreamedit3d_pack.dreamedit3d_core.types import TokenSet
    from dreamedit3d_pack.nodes import _compat

    write_tiny_checkpoint(_compat.model_folder("mvdream") / "tiny-half-test.safetensors", seed=0)
    install_robot_asset(_compat.input_folder())
    get = pack.NODES.get
    common = dict(steps=1, attention_loss_weight=0.01, seed=0, resume=False, checkpoint_every=1000, preview_every=0)
    with torch.inference_mode():
        (model,) = node(get("DreamEdit3D_MVDreamLoader")).execute(ckpt_name="tiny-half-test.safetensors",
                                                                    dtype="float16").result
        assert model.dtype == torch.float16
        views = node(get("DreamEdit3D_OrthoRender")).execute(asset="robot/kenney_character.glb", resolution=64).result[-1]
        views = node(get("DreamEdit3D_ComponentMask")).execute(views=views, components="antenna: antenna; robot: *").result[-1]
        phase1 = model  # phase 1's output is a model of the loader's dtype; random tokens stand in for its tokens
        gen = torch.Generator().manual_seed(0)
        tokens = TokenSet(tokens=("<antenna>", "<robot>"), embeddings=torch.randn(2, 1, model.text_dim, generator=gen),
                          components=("antenna", "robot"))
        before = {n: p.detach().clone() for n, p in phase1.unet.named_parameters()}
        ft = node(get("DreamEdit3D_MVFineTune")).PREPARE_CLASS_CLONE({"unique_id": "5"})
        trained, _ = ft.execute(model=phase1, views=views, tokens=tokens, learning_rate=1e-3, run_name="half-ft",
                                token_learning_rate=1e-4, mode="full", lora_rank=4, train_text_encoder=False,
                                gradient_checkpointing=False, mixed_precision="no", **common).result
    assert trained.dtype == torch.float32 and phase1.dtype == torch.float16  # the input model is left as it was
    changed = [n for n, p in trained.unet.named_parameters() if not torch.equal(p.detach().half(), before[n])]
    assert changed, "the fine-tuned UNet did not change"
