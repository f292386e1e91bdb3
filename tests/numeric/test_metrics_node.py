"""DreamEdit3D_EditMetrics against the real ComfyUI tree in-process: model lists from the folders, IMAGE/MASK conversion.

The pack is imported as a package under its own name (ComfyUI's top-level ``nodes.py`` owns ``nodes``), without
running its top-level ``__init__`` (other slices' nodes are not needed here). Values are compared with the core
functions on the same images in channels-first layout, which the numeric tests check against references.
"""

from __future__ import annotations

import importlib
import json
import sys
import types

import pytest
import torch
from _metrics_helpers import random_views, write_tiny_clip_file, write_tiny_clip_folder, write_tiny_dino_folder
from _sampling_helpers import REPO, comfy_root, import_comfy
from conftest import skip_or_fail

from dreamedit3d_core import metrics as M

pytestmark = pytest.mark.nodes

PACK = "dreamedit3d_metrics_pack"
SRC, EDIT = "a 3D render of a dog", "a 3D render of a dog wearing a hat"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy_models")
    write_tiny_clip_folder(root / "clip_vision" / "clip-tiny", seed=0)
    write_tiny_clip_file(root / "clip_vision" / "clip_vision_l.safetensors", seed=3, vision_only=True)
    write_tiny_dino_folder(root / "dino" / "dino-tiny", seed=5)
    return root


@pytest.fixture(scope="module")
def node(models):
    """The node module, with ComfyUI's clip_vision and dino folders pointed at the tiny models (restored after)."""
    if comfy_root() is None:
        skip_or_fail("no ComfyUI tree at .host/comfyui (run tools/setup_env.sh) and COMFYUI_PATH unset")
    import_comfy()
    import folder_paths

    if PACK not in sys.modules:
        pack = types.ModuleType(PACK)
        pack.__path__ = [str(REPO)]
        sys.modules[PACK] = pack
    module = importlib.import_module(f"{PACK}.nodes.metrics")
    # the pack registers models/dino itself (with ComfyUI's clip_vision beside it); the test only adds its folders
    assert ".safetensors" in folder_paths.folder_names_and_paths["dino"][1], "the pack did not register models/dino"
    added = [("clip_vision", str(models / "clip_vision")), ("dino", str(models / "dino"))]
    saved = {k: list(folder_paths.folder_names_and_paths[k][0]) for k, _ in added}
    for kind, path in added:
        folder_paths.folder_names_and_paths[kind] = ([path], folder_paths.folder_names_and_paths[kind][1])
    folder_paths.filename_list_cache.clear()
    try:
        yield module
    finally:
        for kind, paths in saved.items():
            folder_paths.folder_names_and_paths[kind] = (paths, folder_paths.folder_names_and_paths[kind][1])
        folder_paths.filename_list_cache.clear()


def run(node, **inputs):
    cls = node.EditMetrics
    cls.PREPARE_CLASS_CLONE({})
    out = cls.execute(**inputs)
    return json.loads(out.result[0]), out.result[1]


def bhwc(x):
    return x.permute(0, 2, 3, 1).contiguous()


def test_schema_lists_the_model_folders(node):
    schema = node.EditMetrics.define_schema()
    assert schema.node_id == "DreamEdit3D_EditMetrics"
    inputs = {i.id: i for i in schema.inputs}
    assert list(inputs) == ["source_images", "edited_images", "source_caption", "edit_caption", "clip_model",
                            "dino_model", "protected_mask", "views", "edited_components", "background"]
    assert inputs["clip_model"].options == ["(none)", "clip-tiny/model.safetensors", "clip_vision_l.safetensors"]
    assert inputs["dino_model"].options == ["(none)", "dino-tiny/model.safetensors"]
    assert all(i.tooltip for i in schema.inputs)
    node.EditMetrics.GET_SCHEMA()  # what the host runs at registration: unique ids, class properties
    legacy = node.EditMetrics.INPUT_TYPES()
    assert list(legacy["optional"]) == ["protected_mask", "views", "edited_components", "background"]
    assert node.EditMetrics.RETURN_TYPES == ["STRING", "IMAGE"]
    validate = node.EditMetrics.validate_inputs
    assert validate(clip_model="(none)", dino_model="(none)").startswith("choose a CLIP")
    assert validate(clip_model="gone.safetensors", dino_model="(none)").startswith("clip_model 'gone.safetensors' is not")
    assert validate(clip_model="(none)", dino_model="dino-tiny/model.safetensors") is True


def test_execute_converts_comfy_images_and_equals_the_core_functions(node, models):
    src, edit = random_views(40, height=36, width=36), random_views(41, height=36, width=36)
    mask = torch.zeros(4, 36, 36)
    mask[:, 4:30, 2:20] = 1.0
    table, chart = run(node, source_images=bhwc(src), edited_images=bhwc(edit), source_caption=SRC, edit_caption=EDIT,
                       clip_model="clip-tiny/model.safetensors", dino_model="dino-tiny/model.safetensors",
                       protected_mask=mask, background="0.5, 0.5, 0.5")
    clip = M.load_metric_clip(models / "clip_vision" / "clip-tiny")
    dino = M.load_metric_dino(models / "dino" / "dino-tiny")
    expect = {
        "clip_directional": M.clip_directional_similarity(src, edit, SRC, EDIT, clip),
        "clip_score": M.clip_text_image_score(edit, EDIT, clip),
        "clip_image": M.clip_image_similarity(src, edit, clip),
        "dino_identity": M.dino_identity(src, edit, dino),
        "dino_identity_protected": M.dino_identity(src, edit, dino, mask=mask, background=(0.5, 0.5, 0.5)),
    }
    assert list(table["metrics"]) == list(expect)
    for key, scores in expect.items():
        assert table["metrics"][key]["per_view"] == pytest.approx(scores.per_view, abs=1e-5), key
    assert chart.ndim == 4 and chart.shape[0] == 1 and chart.shape[-1] == 3 and chart.dtype == torch.float32


def test_views_with_component_masks_give_the_same_protected_score_as_the_mask(node):
    sockets = importlib.import_module(f"{PACK}.nodes.sockets")
    core_types = importlib.import_module(f"{PACK}.dreamedit3d_core.types")
    cameras = importlib.import_module(f"{PACK}.dreamedit3d_core.cameras")
    src, edit = random_views(42, height=36, width=36), random_views(43, height=36, width=36)
    parts = torch.zeros(2, 4, 36, 36, dtype=torch.bool)
    parts[0, :, 10:30, 5:25] = True  # dog
    parts[1, :, 2:10, 8:20] = True  # hat
    render = core_types.MultiViewRender(rgb=src, alpha=torch.ones(4, 1, 36, 36), depth=torch.ones(4, 1, 36, 36),
                                        normals=torch.zeros(4, 3, 36, 36), part_id=torch.zeros(4, 36, 36, dtype=torch.long),
                                        part_names=("dog", "hat"), cameras=cameras.MVCameras.mvdream_default())
    views = sockets.MVViews(render, core_types.ComponentMasks(parts, ("dog", "hat")))
    common = dict(source_images=bhwc(src), edited_images=bhwc(edit), source_caption=SRC, edit_caption=EDIT,
                  clip_model="(none)", dino_model="dino-tiny/model.safetensors")
    by_views, _ = run(node, views=views, edited_components="<hat>", **common)
    by_mask, _ = run(node, protected_mask=parts[0].float(), **common)
    assert by_views["metrics"]["dino_identity_protected"] == by_mask["metrics"]["dino_identity_protected"]
    unmasked = by_mask["metrics"]["dino_identity"]["per_view"]
    assert by_mask["metrics"]["dino_identity_protected"]["per_view"] != pytest.approx(unmasked, abs=1e-4)
    errors = importlib.import_module(f"{PACK}.dreamedit3d_core.errors")
    with pytest.raises(errors.ConfigError, match="either protected_mask or views"):
        run(node, views=views, edited_components="hat", protected_mask=parts[0].float(), **common)


def test_a_batch_of_edits_gives_one_table_per_edit(node, models):
    src = random_views(45, height=36, width=36)
    edits = [random_views(46, height=36, width=36), random_views(47, height=36, width=36)]
    table, chart = run(node, source_images=bhwc(src), edited_images=bhwc(torch.cat(edits)), source_caption=SRC,
                       edit_caption=f"{EDIT}\na 3D render of a golden dog\n", clip_model="clip-tiny/model.safetensors",
                       dino_model="(none)")
    clip = M.load_metric_clip(models / "clip_vision" / "clip-tiny")
    assert [e["captions"]["edit"] for e in table["edits"]] == [EDIT, "a 3D render of a golden dog"]
    second = M.clip_directional_similarity(src, edits[1], SRC, "a 3D render of a golden dog", clip)
    assert table["edits"][1]["metrics"]["clip_directional"]["per_view"] == pytest.approx(second.per_view, abs=1e-5)
    assert table["summary"]["views"] == ["edit 1", "edit 2"] and chart.shape[0] == 1


def test_bad_node_inputs_are_refused(node):
    errors = importlib.import_module(f"{PACK}.dreamedit3d_core.errors")  # the pack's own copy of the classes
    src = bhwc(random_views(44, height=36, width=36))
    common = dict(source_images=src, edited_images=src, source_caption=SRC, edit_caption=EDIT, clip_model="(none)",
                  dino_model="dino-tiny/model.safetensors")
    with pytest.raises(errors.ConfigError, match="background .* is not 'r, g, b'"):
        run(node, background="white", **common)
    with pytest.raises(errors.ShapeError, match="mask must have shape"):
        run(node, protected_mask=torch.ones(3, 36, 36), **common)
    with pytest.raises(errors.CheckpointError, match="dino file 'missing/model.safetensors' not found"):
        run(node, **{**common, "dino_model": "missing/model.safetensors"})
