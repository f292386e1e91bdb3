"""Batch edits, provenance and the training nodes' UI previews, against the real comfy_api in-process (no server).

One personalization -> many edits: a two-line prompt samples 8 views; LiftToMesh writes 2 GLBs whose provenance
names their own prompt; ContactSheet lays the 8 views out 2x4; SaveViews writes PNGs with provenance chunks;
ReadProvenance reads them back. The server-side run of the same graph is tests/host/test_host_batch.py.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from _comfy_pack import install_robot_asset

pytestmark = pytest.mark.nodes

PROMPTS = "a <robot> painted red\na <robot> made of gold"


def run(pack, node_id, hidden=None, **inputs):
    from comfy_api.latest import io

    cls = pack.NODES[node_id]
    return cls.PREPARE_CLASS_CLONE(hidden or {}).execute(**inputs)


@pytest.fixture(scope="module")
def graph(pack):
    """Loader -> render -> masks -> (tiny) TI -> compose 2 prompts -> MVSample, as ComfyUI runs it."""
    from comfy_api.latest import io
    import comfy.samplers
    from dreamedit3d_pack.dreamedit3d_core.testing.tiny import write_tiny_checkpoint
    from dreamedit3d_pack.nodes import _compat

    write_tiny_checkpoint(_compat.model_folder("mvdream") / "tiny-batch.safetensors", seed=0)
    install_robot_asset(_compat.input_folder())
    prompt_graph = {"4": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
                    "7": {"class_type": "DreamEdit3D_MVSample", "inputs": {"sampler": ["4", 0], "seed": 31}}}
    hidden = {io.Hidden.prompt: prompt_graph, io.Hidden.unique_id: "7"}
    with torch.inference_mode():
        (model,) = run(pack, "DreamEdit3D_MVDreamLoader", ckpt_name="tiny-batch.safetensors").result
        rendered = run(pack, "DreamEdit3D_OrthoRender", asset="robot/kenney_character.glb", resolution=64).result
        alpha, views = rendered[1], rendered[-1]
        views = run(pack, "DreamEdit3D_ComponentMask", views=views, components="antenna: antenna; robot: *").result[-1]
        ti = run(pack, "DreamEdit3D_MultiViewTextualInversion", {io.Hidden.unique_id: "3"}, model=model, views=views,
                 init_words="", steps=2, learning_rate=5e-3, attention_loss_weight=0.01, seed=0, run_name="batch-ti",
                 resume=False, checkpoint_every=1000, preview_every=1)
        trained, tokens = ti.result
        (cond,) = run(pack, "DreamEdit3D_ComposePrompt", model=trained, prompt=PROMPTS, negative_prompt="blurry",
                      tokens=tokens).result
        sigmas = run(pack, "DreamEdit3D_MVScheduler", scheduler="normal", steps=2, model=trained).result[0]
        sample = run(pack, "DreamEdit3D_MVSample", hidden, model=trained, positive=cond,
                     sampler=comfy.samplers.sampler_object("euler"), sigmas=sigmas, seed=31, cfg=7.5, resolution=64)
    latent, images, samples = sample.result
    return dict(model=trained, tokens=tokens, views=views, alpha=alpha, cond=cond, sigmas=sigmas, images=images, ti=ti,
                prompt_graph=prompt_graph, latent=latent, samples=samples)


def test_training_node_returns_its_last_four_view_preview_and_loss_in_the_ui(pack, graph):
    from dreamedit3d_pack.nodes import _compat

    ui = graph["ti"].ui
    assert ui["text"] and "loss" in ui["text"][0]
    items = ui["images"]
    assert len(items) == 4 and all(i["type"] == "temp" for i in items)
    from PIL import Image

    from pathlib import Path

    files = [Image.open(Path(__import__("folder_paths").get_temp_directory()) / i["subfolder"] / i["filename"])
             for i in items]
    # one square picture per view (the trainer's preview strip [H, 4*H] cut into its views)
    assert len({im.size for im in files}) == 1 and files[0].size[0] == files[0].size[1]


def test_progress_keeps_the_last_image_preview_as_an_image_batch(pack):
    from dreamedit3d_pack.nodes import _compat

    progress = _compat.ComfyProgress(3)
    progress.update(1, 3, preview=torch.zeros(4, 3, 8, 8), loss=1.0)
    progress.update(2, 3, loss=0.5)  # no preview this step: the last one stays
    assert progress.last_preview.shape == (4, 8, 8, 3) and float(progress.last_preview.max()) == 0.0
    progress.update(3, 3, preview=torch.ones(4, 3, 8, 8))
    assert float(progress.last_preview.min()) == 1.0


def test_sample_records_every_prompt_seed_sampler_sigmas_and_hashes_on_its_images(pack, graph):
    from dreamedit3d_pack.dreamedit3d_core import __version__
    from dreamedit3d_pack.nodes.provenance import carried as recall

    images, cond = graph["images"], graph["cond"]
    assert images.shape == (8, 64, 64, 3) and cond.batch_size == 2
    rec = recall(images)
    assert rec["prompts"] == list(cond.prompts) and rec["prompts"][1].startswith("a <robot> made of gold")
    assert rec["negative_prompt"] == "blurry" and rec["seed"] == 31 and rec["sampler"] == "euler"
    assert rec["sigmas"] == graph["sigmas"].double().tolist() and rec["cfg"] == 7.5 and rec["steps"] == 2
    assert rec["base_model_hash"] == graph["model"].model_hash != ""
    assert rec["tokens"] == ["<antenna>", "<robot>"] and rec["token_files"] == {}  # learned in memory, no file
    assert rec["version"] == __version__
    assert recall(images.clone()) == {}  # another tensor (an edited image) has no record


def test_sample_returns_its_latent_on_comfys_intermediate_device(pack, graph, monkeypatch):
    # core KSampler hands LATENTs over on intermediate_device() (the GPU under --gpu-only), not always on the CPU;
    # a stand-in device ("meta") tells the two apart on a CPU-only machine
    from comfy_api.latest import io
    import comfy.samplers
    from dreamedit3d_pack.nodes import sampling

    assert graph["latent"]["samples"].device == torch.device("cpu")  # ComfyUI's intermediate device here
    monkeypatch.setattr(sampling, "intermediate_device", lambda: torch.device("meta"))
    hidden = {io.Hidden.prompt: graph["prompt_graph"], io.Hidden.unique_id: "7"}
    with torch.inference_mode():
        latent, _, _ = run(pack, "DreamEdit3D_MVSample", hidden, model=graph["model"], positive=graph["cond"],
                        sampler=comfy.samplers.sampler_object("euler"), sigmas=graph["sigmas"], seed=31, cfg=7.5,
                        resolution=64).result
    assert latent["samples"].device == torch.device("meta") and latent["samples"].dtype == torch.float32


def test_sampler_name_falls_back_to_the_sampler_function(pack):
    import comfy.samplers
    from dreamedit3d_pack.nodes.provenance import sampler_name

    assert sampler_name(comfy.samplers.sampler_object("dpmpp_2m")) == "dpmpp_2m"
    assert sampler_name(None, {"7": {"inputs": {"sampler": ["4", 0]}},
                               "4": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "lms"}}}, "7") == "lms"


def test_lift_writes_one_glb_per_edit_with_its_own_prompt_and_a_padded_mesh_batch(pack, graph):
    from comfy_api.latest import io
    from dreamedit3d_pack.dreamedit3d_core.provenance import read_file_provenance
    from dreamedit3d_pack.nodes import _compat

    hidden = {io.Hidden.prompt: graph["prompt_graph"], io.Hidden.unique_id: "9"}
    with torch.inference_mode():
        # the tiny random model's views have no background to key out: the render's silhouettes, shared by both edits
        out = run(pack, "DreamEdit3D_LiftToMesh", hidden, images=graph["images"], views=graph["views"], grid=24,
                  texture_size=64, face_budget=0, filename_prefix="dreamedit3d/batch", alpha=graph["alpha"])
    mesh, first = out.result
    items = out.ui["3d"]
    assert len(items) == 2 and first == f"{items[0]['subfolder']}/{items[0]['filename']}"
    cond = graph["cond"]
    for n, item in enumerate(items):
        rec = read_file_provenance(_compat.output_folder() / item["subfolder"] / item["filename"])
        assert rec["prompt"] == cond.prompts[n] and rec["edit_index"] == n and rec["edit_count"] == 2
        assert rec["seed"] == 31 and rec["sampler"] == "euler" and rec["sigmas"] == graph["sigmas"].double().tolist()
    # the core MESH carries both meshes, zero-padded, with their true sizes
    assert mesh.vertices.shape[0] == 2 and mesh.faces.shape[0] == 2
    import trimesh

    for n, item in enumerate(items):
        v, f = _compat.mesh_from_core(mesh, n)
        glb = trimesh.load(_compat.output_folder() / item["subfolder"] / item["filename"], force="mesh", process=False)
        assert len(v) == int(mesh.vertex_counts[n]) and len(f) == int(mesh.face_counts[n]) == len(glb.faces)
        assert torch.allclose(v, torch.as_tensor(glb.vertices, dtype=torch.float32), atol=1e-5)
    with pytest.raises(Exception, match="N\\*4 images"):
        run(pack, "DreamEdit3D_LiftToMesh", hidden, images=graph["images"][:6], views=graph["views"], grid=24,
            texture_size=0, face_budget=0)


def test_lift_also_writes_obj_mtl_png_next_to_each_glb_when_asked(pack, graph):
    from comfy_api.latest import io
    from dreamedit3d_pack.nodes import _compat

    hidden = {io.Hidden.prompt: graph["prompt_graph"], io.Hidden.unique_id: "9"}
    with torch.inference_mode():
        out = run(pack, "DreamEdit3D_LiftToMesh", hidden, images=graph["images"][:4], views=graph["views"], grid=24,
                  texture_size=64, face_budget=0, filename_prefix="dreamedit3d/objs", alpha=graph["alpha"],
                  also_obj=True)
    (item,) = out.ui["3d"]
    glb = _compat.output_folder() / item["subfolder"] / item["filename"]
    obj, mtl, png = (glb.with_suffix(s) for s in (".obj", ".mtl", ".png"))
    assert obj.is_file() and mtl.is_file() and png.is_file()
    assert f"map_Kd {png.name}" in mtl.read_text()
    import trimesh

    reloaded = trimesh.load(obj, force="mesh", process=False)
    from_glb = trimesh.load(glb, force="mesh", process=False)
    assert len(reloaded.faces) == len(from_glb.faces) > 0
    assert reloaded.visual.uv is not None and reloaded.visual.material.image is not None


def test_core_mesh_batch_pads_and_mesh_from_core_trims(pack):
    from dreamedit3d_pack.nodes import _compat

    a = dict(vertices=torch.rand(5, 3), faces=torch.tensor([[0, 1, 2], [2, 3, 4]]))
    b = dict(vertices=torch.rand(3, 3), faces=torch.tensor([[0, 1, 2]]))
    mesh = _compat.core_mesh_batch([a, b])
    assert mesh.vertices.shape == (2, 5, 3) and mesh.faces.shape == (2, 2, 3)
    assert torch.equal(mesh.faces[1, 1], torch.zeros(3, dtype=torch.int64))  # padding: a degenerate face
    v, f = _compat.mesh_from_core(mesh, 1)
    assert torch.equal(v, b["vertices"]) and torch.equal(f, b["faces"])


def test_contact_sheet_node_lays_out_two_rows_of_four_views_labelled_with_the_prompts(pack, graph):
    from dreamedit3d_pack.dreamedit3d_core.contact_sheet import sheet_layout

    (sheet,) = run(pack, "DreamEdit3D_ContactSheet", images=graph["images"]).result
    lay = sheet_layout(2, (64, 64))
    assert sheet.shape == (1, lay.height, lay.width, 3)
    x0, y0, x1, y1 = lay.cells[1][2]  # back view of the second edit
    assert torch.allclose(sheet[0, y0:y1, x0:x1], graph["images"][6])
    (with_cond,) = run(pack, "DreamEdit3D_ContactSheet", images=graph["images"], conditioning=graph["cond"]).result
    assert torch.equal(with_cond, sheet)  # the recorded prompts and the conditioning's prompts are the same labels
    (custom,) = run(pack, "DreamEdit3D_ContactSheet", images=graph["images"], labels="red\ngold").result
    lx0, ly0, lx1, ly1 = lay.labels[0]
    assert not torch.equal(custom[0, ly0:ly1, lx0:lx1], sheet[0, ly0:ly1, lx0:lx1])


def test_save_views_writes_pngs_with_provenance_and_read_provenance_returns_it(pack, graph):
    from comfy_api.latest import io
    from dreamedit3d_pack.dreamedit3d_core.provenance import read_png_provenance
    from dreamedit3d_pack.nodes import _compat

    hidden = {io.Hidden.prompt: graph["prompt_graph"], io.Hidden.extra_pnginfo: {"workflow": {"nodes": []}}}
    out = run(pack, "DreamEdit3D_SaveViews", hidden, images=graph["images"], filename_prefix="dreamedit3d/views")
    again = run(pack, "DreamEdit3D_SaveViews", hidden, images=graph["images"], filename_prefix="dreamedit3d/views")
    paths = out.result[0].splitlines()
    assert len(paths) == 8 and len(out.ui["images"]) == 8
    assert not set(paths) & set(again.result[0].splitlines())  # never over an earlier file
    recs = [read_png_provenance(_compat.output_folder() / p) for p in paths]
    assert [r["view"] for r in recs[:4]] == ["front", "right", "back", "left"]
    assert recs[5]["prompt"] == graph["cond"].prompts[1] and recs[5]["seed"] == 31
    assert recs[0]["workflow"] == {"4:KSamplerSelect": {"sampler_name": "euler"}, "7:DreamEdit3D_MVSample": {"seed": 31}}
    read = run(pack, "DreamEdit3D_ReadProvenance", path=paths[5])
    assert json.loads(read.result[0]) == recs[5] and read.ui["text"] == [read.result[0]]
    # a file from the input folder, picked in the combo
    shutil.copy2(_compat.output_folder() / paths[0], _compat.input_folder() / "picked.png")
    cls = pack.NODES["DreamEdit3D_ReadProvenance"]
    assert cls.validate_inputs(file="picked.png") is True and "not a GLB" in cls.validate_inputs(file="gone.png")
    assert json.loads(run(pack, "DreamEdit3D_ReadProvenance", file="picked.png").result[0]) == recs[0]
    for bad, msg in (("../secret.png", "inside the output folder"), ("x.txt", "not a GLB or PNG"),
                     ("missing.glb", "not found")):
        with pytest.raises(Exception, match=msg):
            run(pack, "DreamEdit3D_ReadProvenance", path=bad)


def test_provenance_reaches_saved_views_through_a_core_image_node_by_the_samples_socket(pack, graph):
    """The record is carried by the data: a core node in between makes a new IMAGE, MV_SAMPLES still brings it."""
    from comfy_api.latest import io
    from nodes import ImageInvert  # a core image node (ComfyUI's nodes.py)
    from dreamedit3d_pack.dreamedit3d_core.provenance import read_png_provenance
    from dreamedit3d_pack.nodes import folders

    (inverted,) = ImageInvert().invert(graph["images"])
    hidden = {io.Hidden.prompt: graph["prompt_graph"], io.Hidden.extra_pnginfo: None}
    with_samples = run(pack, "DreamEdit3D_SaveViews", hidden, images=inverted, filename_prefix="dreamedit3d/inv",
                       samples=graph["samples"]).result[0].splitlines()
    without = run(pack, "DreamEdit3D_SaveViews", hidden, images=inverted,
                  filename_prefix="dreamedit3d/inv").result[0].splitlines()
    rec = read_png_provenance(folders.output_folder() / with_samples[5])
    assert rec["seed"] == 31 and rec["sampler"] == "euler" and rec["prompt"] == graph["cond"].prompts[1]
    bare = read_png_provenance(folders.output_folder() / without[5])
    assert "seed" not in bare or bare["seed"] is None  # only the workflow's widgets: nothing claims MVSample's record
    assert bare["workflow"] == rec["workflow"]
    (sheet,) = run(pack, "DreamEdit3D_ContactSheet", images=inverted, samples=graph["samples"]).result
    (labelled,) = run(pack, "DreamEdit3D_ContactSheet", images=inverted, labels="a <robot> painted red\n"
                      "a <robot> made of gold").result
    assert torch.equal(sheet, labelled)  # the rows are labelled with MVSample's prompts


def test_glb_provenance_lists_the_token_file_saved_in_the_same_run(pack, graph):
    from comfy_api.latest import io
    import comfy.samplers
    from dreamedit3d_pack.dreamedit3d_core.provenance import read_file_provenance
    from dreamedit3d_pack.dreamedit3d_core.storage import file_sha256
    from dreamedit3d_pack.nodes import folders

    with torch.inference_mode():
        name, saved_tokens = run(pack, "DreamEdit3D_SaveTokens", tokens=graph["tokens"], name="same-run").result
        (cond,) = run(pack, "DreamEdit3D_ComposePrompt", model=graph["model"], prompt="a <robot>",
                      negative_prompt="", tokens=saved_tokens).result
        hidden = {io.Hidden.prompt: graph["prompt_graph"], io.Hidden.unique_id: "7"}
        _, images, _ = run(pack, "DreamEdit3D_MVSample", hidden, model=graph["model"], positive=cond,
                           sampler=comfy.samplers.sampler_object("euler"), sigmas=graph["sigmas"], seed=31, cfg=7.5,
                           resolution=64).result
        out = run(pack, "DreamEdit3D_LiftToMesh", {io.Hidden.prompt: {}, io.Hidden.unique_id: "9"}, images=images,
                  views=graph["views"], grid=24, texture_size=0, face_budget=0, filename_prefix="dreamedit3d/tok",
                  alpha=graph["alpha"])
    item = out.ui["3d"][0]
    rec = read_file_provenance(folders.output_folder() / item["subfolder"] / item["filename"])
    token_file = folders.model_folder("mvdream_tokens") / name
    assert name == "same-run.safetensors" and rec["token_files"] == {name: file_sha256(token_file)}


def test_save_tokens_keeps_what_an_embedding_name_means_unless_told_to_overwrite(pack, graph):
    from dreamedit3d_pack.dreamedit3d_core.storage import file_sha256
    from dreamedit3d_pack.nodes import folders

    emb = folders.embeddings_folder()
    first, _ = run(pack, "DreamEdit3D_SaveTokens", tokens=graph["tokens"], name="keep").result
    robot = emb / "keep_robot.safetensors"
    sha = file_sha256(robot)
    again = run(pack, "DreamEdit3D_SaveTokens", tokens=graph["tokens"], name="keep")  # default: new_version
    assert again.result[0] == "keep_v2.safetensors" and (emb / "keep_v2_robot.safetensors").is_file()
    assert file_sha256(robot) == sha and any("saved as keep_v2" in line for line in again.ui["text"])
    with pytest.raises(ValueError, match="exist already.*if_exists"):
        run(pack, "DreamEdit3D_SaveTokens", tokens=graph["tokens"], name="keep", if_exists="error")
    moved = graph["tokens"].__class__(tokens=graph["tokens"].tokens, embeddings=graph["tokens"].embeddings + 1.0,
                                      components=graph["tokens"].components)
    over = run(pack, "DreamEdit3D_SaveTokens", tokens=moved, name="keep", if_exists="overwrite")
    assert over.result[0] == first == "keep.safetensors" and file_sha256(robot) != sha
    assert not (emb / "keep_v3_robot.safetensors").exists()
