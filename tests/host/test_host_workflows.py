"""The pack inside a real ComfyUI server: registration, templates, example workflows end to end, interrupt, bad input.

One server per session (tests/host/conftest.py), fixtures from tests/workflows/prepare_host.py, workflows from
tests/workflows/*.api.json. Runs in the order written: the full edit first (it saves tokens and a model).
"""

from __future__ import annotations

import copy
import json
import sys
import uuid
from pathlib import Path

import pytest

from _host import (REPO, UI_WORKFLOWS, HostError, api_workflow_names, load_api_workflow, nodes_of, with_template_values,
                   without_meta)

pytestmark = pytest.mark.host

OUR_NODES = [
    "DreamEdit3D_MVDreamLoader", "DreamEdit3D_OrthoRender", "DreamEdit3D_ComponentMask",
    "DreamEdit3D_MultiViewTextualInversion", "DreamEdit3D_MVFineTune", "DreamEdit3D_ComposePrompt",
    "DreamEdit3D_MVScheduler", "DreamEdit3D_MVSample", "DreamEdit3D_LiftToMesh", "DreamEdit3D_SaveMVDream",
    "DreamEdit3D_SaveTokens", "DreamEdit3D_LoadTokens", "DreamEdit3D_EditMetrics",
]
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@pytest.fixture(scope="module")
def object_info(comfy_host):
    return comfy_host.object_info()


def _images(host, result, node_id):
    from PIL import Image

    items = result.outputs.get(node_id, {}).get("images", [])
    return [Image.open(host.output_file(i)) for i in items]


# ------------------------------------------------------------------------------------------------ registration
def test_server_log_shows_the_pack_imported_without_failures(comfy_host):
    assert comfy_host.pack_import_failures() == [], comfy_host.log_tail()
    assert "dreamedit3d" in comfy_host.log_text()


def test_object_info_lists_every_node_with_category_tooltips_and_defaults(object_info):
    missing = [n for n in OUR_NODES if n not in object_info]
    assert not missing, f"not registered: {missing}"
    for name in OUR_NODES:
        info = object_info[name]
        assert info["category"].startswith("DreamEdit3D/"), name
        assert info["python_module"].startswith("custom_nodes."), name
        assert info["description"], name
        for cat in ("required", "optional"):
            for inp, spec in info["input"].get(cat, {}).items():
                opts = spec[1] if len(spec) > 1 else {}
                assert opts.get("tooltip"), f"{name}.{inp} has no tooltip"
                kind = spec[0]
                if kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                    assert "default" in opts, f"{name}.{inp} has no default"
        assert all(t for t in info.get("output_tooltips", [])), name


def test_loader_and_render_list_the_prepared_files(object_info):
    ckpts = object_info["DreamEdit3D_MVDreamLoader"]["input"]["required"]["ckpt_name"][1]["options"]
    assert "dreamedit3d-tiny-random-4view.pt" in ckpts
    assets = object_info["DreamEdit3D_OrthoRender"]["input"]["required"]["asset"][1]["options"]
    assert "dreamedit3d/kenney_character.glb" in assets


def test_ui_templates_convert_to_their_api_twins(object_info):
    sys.path.insert(0, str(REPO / "tools"))
    from comfy_workflow import ui_to_api

    names = api_workflow_names()
    assert set(names) == {"full_edit", "sample_only", "full_edit_swapped_sampler", "batch_edits"}
    for name in names:
        ui = json.loads((UI_WORKFLOWS / f"{name}.json").read_text())
        converted = without_meta(ui_to_api(ui, object_info))
        expected = without_meta(with_template_values(load_api_workflow(name), name))
        assert converted == expected, f"workflows/{name}.json drifted from tests/workflows/{name}.api.json: " \
                                      "edit both, or rerun tests/workflows/make_ui.py"


def test_workflow_templates_are_served_for_the_pack(comfy_host):
    listing = comfy_host.get_json("/workflow_templates")
    assert sorted(listing.get("dreamedit3d", [])) == sorted(api_workflow_names())
    full = comfy_host.get_json("/api/workflow_templates/dreamedit3d/full_edit.json")
    assert {n["type"] for n in full["nodes"]} >= {"DreamEdit3D_MVSample", "SaveGLB", "Preview3D"}


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def full_edit_run(comfy_host):
    result = comfy_host.run(load_api_workflow("full_edit"), timeout=900)
    assert result.status == "success", (result.error, comfy_host.log_tail())
    return result


def test_full_edit_outputs_four_views_masks_and_source_renders(comfy_host, full_edit_run):
    views = _images(comfy_host, full_edit_run, "11")
    assert len(views) == 4 and all(im.size == (64, 64) for im in views)
    renders = _images(comfy_host, full_edit_run, "17")
    assert len(renders) == 4 and all(im.size == (64, 64) for im in renders)
    masks = _images(comfy_host, full_edit_run, "16")
    assert len(masks) == 2 * 4  # antenna, robot x 4 views
    import numpy as np

    fractions = [float((np.asarray(m.convert("L")) > 127).mean()) for m in masks]
    assert all(f > 0 for f in fractions[4:]), f"the robot is visible in every view: {fractions}"
    assert max(fractions[:4]) < min(fractions[4:]), f"the antenna is smaller than the robot: {fractions}"


def test_full_edit_saves_tokens_as_embeddings_and_the_finetuned_model(comfy_host, full_edit_run):
    text = full_edit_run.outputs["6"]["text"]
    embeddings = [t.split(":", 1)[1] for t in text if t.startswith("embedding:")]
    assert len(embeddings) == 2
    emb_dir = comfy_host.base / "models" / "embeddings"
    from safetensors.torch import load_file

    for name in embeddings:
        tensors = load_file(emb_dir / f"{name}.safetensors")
        assert list(tensors) == ["clip_h"] and tensors["clip_h"].ndim == 2
    saved = full_edit_run.outputs["18"]["text"][0].split("/")[-1]
    assert (comfy_host.base / "models" / "mvdream" / saved).is_file()
    # prepare_host.py wrote the sample-only workflow's files under these names: nothing of them is overwritten, and
    # SaveTokens says which new version it wrote (if_exists: new_version)
    assert saved.startswith("dreamedit3d-example-finetuned_") and saved.endswith(".safetensors")
    assert "dreamedit3d-example existed: saved as dreamedit3d-example_v2" in text
    assert "saved models/mvdream_tokens/dreamedit3d-example_v2.safetensors" in text
    assert all(name.startswith("dreamedit3d-example_v2_") for name in embeddings)


def test_full_edit_writes_a_textured_glb_and_a_core_savglb_file(comfy_host, full_edit_run):
    import trimesh

    ours = full_edit_run.outputs["12"]["3d"][0]
    scene = trimesh.load(comfy_host.output_file(ours), force="scene")
    geom = list(scene.geometry.values())
    assert geom and len(geom[0].faces) > 0
    material = geom[0].visual.material
    texture = getattr(material, "baseColorTexture", None)
    # texture_size 128 is the atlas's side; the faces the edit left alone keep the asset's own 512² image, so the GLB's
    # texture is that image (source layout) or a canvas of it beside the atlas (both 512² for kenney)
    assert texture is not None and texture.size == (512, 512)
    # keep_source re-textures the source asset: the same faces as the rendered asset
    assert len(geom[0].faces) == full_edit_run_source_faces(comfy_host)
    from dreamedit3d_core.lifting import read_provenance

    prov = read_provenance(comfy_host.output_file(ours))
    assert "a <robot> with a <antenna> made of gold" in json.dumps(prov)
    # the token file SaveTokens wrote in this run is named, with its hash
    from dreamedit3d_core.provenance import read_file_provenance
    from dreamedit3d_core.storage import file_sha256

    token_file = comfy_host.base / "models" / "mvdream_tokens" / "dreamedit3d-example_v2.safetensors"
    record = read_file_provenance(comfy_host.output_file(ours))
    assert record["token_files"] == {token_file.name: file_sha256(token_file)}
    core = full_edit_run.outputs["13"]["3d"][0]
    core_mesh = trimesh.load(comfy_host.output_file(core), force="mesh")
    assert len(core_mesh.faces) == len(geom[0].faces)
    assert full_edit_run.outputs["14"]["result"][0] == f"{ours['subfolder']}/{ours['filename']}".lstrip("/")


def full_edit_run_source_faces(host) -> int:
    from dreamedit3d_core.assets import load_asset

    return int(load_asset(host.base / "input" / "dreamedit3d" / "kenney_character.glb").faces.shape[0])


def test_full_edit_reports_progress_for_training_and_sampling(full_edit_run):
    progress_nodes = {p["node"] for p in full_edit_run.of_type("progress")}
    assert {"4", "5", "10"} <= progress_nodes, progress_nodes
    sample_steps = [p["value"] for p in full_edit_run.of_type("progress") if p["node"] == "10"]
    assert sample_steps[-1] == 3
    assert full_edit_run.preview_frames > 0


def test_swapped_core_sampler_runs_the_same_edit(comfy_host, full_edit_run):
    result = comfy_host.run(load_api_workflow("full_edit_swapped_sampler"), timeout=600)
    assert result.status == "success", (result.error, comfy_host.log_tail())
    cached = {n for c in result.of_type("execution_cached") for n in c.get("nodes", [])}
    assert {"4", "5"} <= cached, "training is reused from the full edit (same inputs)"
    views = _images(comfy_host, result, "11")
    assert len(views) == 4 and all(im.size == (64, 64) for im in views)
    import numpy as np

    before = np.stack([np.asarray(i) for i in _images(comfy_host, full_edit_run, "11")])
    after = np.stack([np.asarray(i) for i in views])
    assert not np.array_equal(before, after), "another sampler gives other images"


# ------------------------------------------------------------------------------------------------ interrupt
def test_interrupt_during_training_stops_and_leaves_a_resumable_checkpoint(comfy_host):
    prompt = load_api_workflow("full_edit")
    run_name = f"interrupt-{uuid.uuid4().hex[:8]}"
    ti = prompt["4"]["inputs"]
    ti.update(steps=200, run_name=run_name, checkpoint_every=1000, seed=123)
    sent = []

    def interrupt_at_step_2(host, kind, data, result):
        if kind == "progress" and data.get("node") == "4" and data.get("value", 0) >= 2 and not sent:
            sent.append(data["value"])
            host.interrupt()

    result = comfy_host.run(prompt, timeout=600, on_event=interrupt_at_step_2)
    assert sent and result.status == "interrupted", (result.status, result.error)
    folder = comfy_host.base / "output" / "dreamedit3d" / "train" / run_name / "phase1"
    states = sorted(folder.glob("phase1-step*.pt"))
    assert states, f"no training state in {folder}"
    assert comfy_host.alive()

    # resume: the same run continues from the saved step instead of starting over. The interrupt lands a few steps
    # after it was sent (the request races the tiny model's fast steps): resume from the step actually saved
    import re

    saved = max(int(re.search(r"step(\d+)", p.stem).group(1)) for p in states)
    ti.update(steps=saved + 2)
    for nid in ("5", "7", "10", "12"):  # stop after training: keep outputs cheap
        prompt.pop(nid, None)
    for nid in list(prompt):
        if any(isinstance(v, list) and v[0] not in prompt for v in prompt[nid]["inputs"].values()):
            prompt.pop(nid)
    prompt["90"] = {"class_type": "DreamEdit3D_SaveTokens", "inputs": {"tokens": ["4", 1], "name": run_name}}
    resumed = comfy_host.run(prompt, timeout=600)
    assert resumed.status == "success", (resumed.error, comfy_host.log_tail())
    first = [p["value"] for p in resumed.of_type("progress") if p["node"] == "4"]
    assert first and first[0] > 1, f"resumed run restarted from step 1: {first[:5]}"


def test_sample_only_runs_from_saved_tokens_and_model(comfy_host):
    result = comfy_host.run(load_api_workflow("sample_only"), timeout=600)
    assert result.status == "success", (result.error, comfy_host.log_tail())
    views = _images(comfy_host, result, "8")
    assert len(views) == 4 and all(im.size == (64, 64) for im in views)


def test_lift_builds_a_visual_hull_from_rendered_views(comfy_host):
    import trimesh

    prompt = {
        "1": {"class_type": "DreamEdit3D_OrthoRender", "inputs": {
            "asset": "dreamedit3d/kenney_character.glb", "resolution": 64, "elevation_deg": 15.0, "fov_deg": 40.0,
            "background": 1.0, "lighting": "ambient_diffuse", "front_axis": "+z", "up_axis": "+y"}},
        "2": {"class_type": "DreamEdit3D_LiftToMesh", "inputs": {
            "images": ["1", 0], "views": ["1", 4], "mode": "hull", "grid": 32, "texture_size": 128,
            "face_budget": 5000, "background": 1.0, "filename_prefix": "dreamedit3d/hull"}},
        "3": {"class_type": "SaveGLB", "inputs": {"mesh": ["2", 0], "filename_prefix": "dreamedit3d/hull_core"}},
    }
    result = comfy_host.run(prompt, timeout=300)
    assert result.status == "success", (result.error, comfy_host.log_tail())
    mesh = trimesh.load(comfy_host.output_file(result.outputs["2"]["3d"][0]), force="mesh")
    assert 0 < len(mesh.faces) <= 5000
    lo, hi = mesh.bounds
    # the GLB is written in the source asset's own coordinates: the hull spans the asset as its file has it
    source = trimesh.load(comfy_host.base / "input" / "dreamedit3d" / "kenney_character.glb", force="mesh")
    extent = float((source.bounds[1] - source.bounds[0]).max())
    assert (hi - lo).max() == pytest.approx(extent, rel=0.15), "the hull spans the source asset"


def test_sam_masks_run_from_points_on_one_view(comfy_host):
    import numpy as np

    prompt = {
        "1": {"class_type": "DreamEdit3D_OrthoRender", "inputs": {
            "asset": "dreamedit3d/kenney_character.glb", "resolution": 64, "elevation_deg": 15.0, "fov_deg": 40.0,
            "background": 1.0, "lighting": "ambient_diffuse", "front_axis": "+z", "up_axis": "+y"}},
        "2": {"class_type": "DreamEdit3D_ComponentMask", "inputs": {
            "views": ["1", 4], "components": "head: top; robot: *", "source": "sam",
            "sam_model": "dreamedit3d-tiny-random-sam.pth", "prompt_view": "front", "points": "32,20; 30,24"}},
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 1]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "dreamedit3d/sam"}},
        "5": {"class_type": "MaskToImage", "inputs": {"mask": ["1", 1]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "dreamedit3d/sam_alpha"}},
    }
    result = comfy_host.run(prompt, timeout=300)
    assert result.status == "success", (result.error, comfy_host.log_tail())
    masks = [np.asarray(m.convert("L")) > 127 for m in _images(comfy_host, result, "4")]
    alpha = [np.asarray(m.convert("L")) > 127 for m in _images(comfy_host, result, "6")]
    assert len(masks) == 8 and len(alpha) == 4
    for v in range(4):  # 'head' is SAM's, 'robot' ('*') is the rest of the object: together exactly the object
        assert not (masks[v] & masks[4 + v]).any()
        assert np.array_equal(masks[v] | masks[4 + v], alpha[v])
    assert any(m.any() for m in masks[:4])


def test_null_for_an_optional_combo_without_choices_is_accepted(comfy_host):
    """The frontend sends null for an optional combo with no choices (sam_model when models/sams is empty)."""
    prompt = {
        "1": {"class_type": "DreamEdit3D_OrthoRender", "inputs": {
            "asset": "dreamedit3d/kenney_character.glb", "resolution": 64, "elevation_deg": 15.0, "fov_deg": 40.0,
            "background": 1.0, "lighting": "ambient_diffuse", "front_axis": "+z", "up_axis": "+y"}},
        "2": {"class_type": "DreamEdit3D_ComponentMask", "inputs": {
            "views": ["1", 4], "components": "antenna: antenna; robot: *", "source": "parts", "sam_model": None,
            "prompt_view": "front", "points": ""}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 2]}},
    }
    result = comfy_host.run(prompt, timeout=300)
    assert result.status == "success", (result.error, comfy_host.log_tail())


# ------------------------------------------------------------------------------------------------ bad input
def _expect_rejected(host, prompt, fragment):
    with pytest.raises(HostError) as info:
        host.run(prompt, timeout=120)
    assert info.value.status == 400
    assert fragment in json.dumps(info.value.body), info.value.body
    assert host.alive()


def test_unknown_checkpoint_is_rejected_with_our_message(comfy_host):
    prompt = {"1": {"class_type": "DreamEdit3D_MVDreamLoader", "inputs": {"ckpt_name": "nope.pt", "dtype": "auto"}},
              "2": {"class_type": "DreamEdit3D_SaveMVDream", "inputs": {"model": ["1", 0], "filename": "x"}}}
    _expect_rejected(comfy_host, prompt, "is not in models/mvdream")


def test_missing_or_escaping_asset_is_rejected_with_our_message(comfy_host):
    prompt = load_api_workflow("full_edit")
    prompt["2"]["inputs"]["asset"] = "dreamedit3d/no_such_asset.glb"
    _expect_rejected(comfy_host, copy.deepcopy(prompt), "not found in the input folder")
    prompt["2"]["inputs"]["asset"] = "../../server.log.glb"
    _expect_rejected(comfy_host, prompt, "outside the input folder")


def test_wrong_file_in_the_loader_is_an_execution_error_and_the_server_survives(comfy_host):
    bogus = comfy_host.base / "models" / "mvdream" / "not-a-checkpoint.safetensors"
    bogus.write_bytes(b"this is not a safetensors file")
    try:
        prompt = {"1": {"class_type": "DreamEdit3D_MVDreamLoader",
                        "inputs": {"ckpt_name": bogus.name, "dtype": "auto"}},
                  "2": {"class_type": "DreamEdit3D_SaveMVDream", "inputs": {"model": ["1", 0], "filename": "x"}}}
        result = comfy_host.run(prompt, timeout=120)
        assert result.status == "error"
        assert result.error["node_id"] == "1" and bogus.name in result.error["exception_message"]
        assert "Traceback" not in result.error["exception_message"]
        assert comfy_host.alive()
    finally:
        bogus.unlink()


def test_unknown_token_in_the_prompt_is_an_execution_error_listing_known_tokens(comfy_host):
    prompt = load_api_workflow("sample_only")
    prompt["3"]["inputs"]["prompt"] = "a <robot> wearing a <crown>"
    result = comfy_host.run(prompt, timeout=120)
    assert result.status == "error" and result.error["node_id"] == "3"
    msg = result.error["exception_message"]
    assert "<crown>" in msg and "<robot>" in msg and "<antenna>" in msg
    assert comfy_host.alive()
