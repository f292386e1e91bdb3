"""LiftToMesh with an LGM file from models/lgm, against the real comfy_api in-process (no server).

A tiny LGM file (the released key layout, random weights) in the module's own models/lgm is offered as a
``reconstructor`` choice and lifts four rendered views to a GLB; files there that are not LGM (an MVDream / SD
checkpoint, a truncated download) are not offered, and naming one anyway is refused with what the file is. The server-side
run is tests/host/test_host_lgm.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from _comfy_pack import install_robot_asset

pytestmark = pytest.mark.nodes

LGM_FILE = "tiny/model_fp16_fixrot.safetensors"
FOREIGN_FILE = "sd-v2.1-base-4view.safetensors"
TRUNCATED_FILE = "half_downloaded.safetensors"


def run(pack, node_id, hidden=None, **inputs):
    cls = pack.NODES[node_id]
    return cls.PREPARE_CLASS_CLONE(hidden or {}).execute(**inputs)


def validate(pack, **values):
    return pack.NODES["DreamEdit3D_LiftToMesh"].validate_inputs(**values)


@pytest.fixture(scope="module")
def lgm_folder(pack):
    """models/lgm with a tiny LGM file (in a subfolder), an MVDream-style checkpoint and a truncated LGM file."""
    import folder_paths
    from safetensors.torch import save_file

    from dreamedit3d_pack.dreamedit3d_core.lifting.lgm import save_lgm
    from dreamedit3d_pack.dreamedit3d_core.testing.lgm import tiny_lgm
    from dreamedit3d_pack.nodes import folders

    # this module's own models/lgm first in the search order (never the host tree's)
    folder = pack.base / "models" / "lgm"
    (folder / "tiny").mkdir(parents=True, exist_ok=True)
    folder_paths.add_model_folder_path("lgm", str(folder), is_default=True)
    assert folders.model_folder("lgm") == folder
    lgm = save_lgm(tiny_lgm(0), folder / LGM_FILE, dtype=torch.float16)
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(4, 3, 3, 3)}, str(folder / FOREIGN_FILE))
    data = lgm.read_bytes()
    (folder / TRUNCATED_FILE).write_bytes(data[: len(data) // 2])
    yield folder
    folder_paths.folder_names_and_paths["lgm"][0].remove(str(folder))  # later modules see no LGM file
    folder_paths.filename_list_cache.pop("lgm", None)  # nor its cached listing (ComfyUI keeps it for removed folders)


@pytest.fixture(scope="module")
def rendered(pack):
    from dreamedit3d_pack.nodes import folders

    install_robot_asset(folders.input_folder())
    with torch.inference_mode():
        out = run(pack, "DreamEdit3D_OrthoRender", asset="robot/kenney_character.glb", resolution=64).result
    return dict(images=out[0], alpha=out[1], views=out[-1])


def lift(pack, rendered, views=None, **inputs):
    from comfy_api.latest import io

    hidden = {io.Hidden.prompt: {}, io.Hidden.unique_id: "2"}
    options = dict(images=rendered["images"], views=views or rendered["views"], grid=32, texture_size=128,
                   face_budget=2000, filename_prefix="dreamedit3d/lgm_node")
    options.update(inputs)
    with torch.inference_mode():
        return run(pack, "DreamEdit3D_LiftToMesh", hidden, **options)


def reconstructor_for(folder, name):
    """The cached reconstructor the node used for the file ``name`` (the same object for the same file)."""
    from dreamedit3d_pack.dreamedit3d_core.lifting.lgm import cached_lgm_reconstructor

    return cached_lgm_reconstructor(folder / name)


def test_without_an_lgm_file_only_none_is_offered(pack, tmp_path):
    import folder_paths

    from safetensors.torch import save_file

    paths = folder_paths.folder_names_and_paths["lgm"][0]
    kept = list(paths)
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(2)}, str(tmp_path / "not-lgm.safetensors"))
    paths[:] = [str(tmp_path)]  # a models/lgm holding only a file that is not LGM
    try:
        inputs = {i.id: i for i in pack.NODES["DreamEdit3D_LiftToMesh"].define_schema().inputs}
        message = validate(pack, mode="hull", reconstructor="gone.safetensors")
    finally:
        paths[:] = kept
    assert list(inputs["reconstructor"].options) == ["none"]
    assert isinstance(message, str) and "'gone.safetensors' is not an LGM file in models/lgm" in message


def test_only_lgm_files_are_offered_as_reconstructors(pack, lgm_folder):
    schema = pack.NODES["DreamEdit3D_LiftToMesh"].define_schema()
    choice = next(i for i in schema.inputs if i.id == "reconstructor")
    assert list(choice.options) == ["none", LGM_FILE]
    assert choice.optional and choice.default == "none" and "models/lgm" in choice.tooltip
    assert validate(pack, mode="hull", reconstructor=LGM_FILE) is True
    assert validate(pack, mode="auto") is True  # workflows saved before the input existed


def test_hull_mode_with_the_lgm_file_lifts_through_lgm_to_a_glb(pack, lgm_folder, rendered):
    import trimesh

    from dreamedit3d_pack.dreamedit3d_core.lifting import list_reconstructors
    from dreamedit3d_pack.nodes import folders

    rec = reconstructor_for(lgm_folder, LGM_FILE)
    rec.last_gaussians = None
    out = lift(pack, rendered, mode="hull", reconstructor=LGM_FILE)
    # LGM ran on the node's views: its Gaussians (one per output pixel of each view; the head predicts at half the
    # tiny file's 64 px input) are recorded
    assert rec.last_gaussians is not None and rec.last_gaussians.means.shape[0] == 4 * 32 * 32
    assert rec.last_stats and "lgm" not in list_reconstructors()  # registered for the run only
    item = out.ui["3d"][0]
    mesh = trimesh.load(folders.output_folder() / item["subfolder"] / item["filename"], force="mesh")
    assert len(mesh.faces) > 0 and out.result[1].endswith(".glb")


def test_auto_without_a_source_uses_the_chosen_lgm_file(pack, lgm_folder, rendered):
    from dreamedit3d_pack.nodes.lifting import best_mode, lift_plan

    rec = reconstructor_for(lgm_folder, LGM_FILE)
    rec.last_gaussians = None
    no_source = dataclasses.replace(rendered["views"], asset=None)
    out = lift(pack, rendered, views=no_source, mode="auto", reconstructor=LGM_FILE, texture_size=0)
    assert rec.last_gaussians is not None and out.ui["3d"]
    # with a source, auto keeps the source's components (component-aware) and LGM shapes only the new parts; a mode
    # that keeps all of the source's geometry with LGM is refused, not ignored
    assert best_mode(True, True) == ("component_aware", "lgm")
    assert best_mode(True, False) == ("component_aware", None)
    assert lift_plan("hull", True, False) == ("hull", None)
    from dreamedit3d_pack.dreamedit3d_core.errors import ConfigError

    with pytest.raises(ConfigError, match="reconstructor to 'none'"):
        lift(pack, rendered, mode="source_guided", reconstructor=LGM_FILE)


def test_a_registration_made_in_python_is_put_back_after_the_run(pack, lgm_folder, rendered):
    from dreamedit3d_pack.dreamedit3d_core.lifting.pipeline import (register_reconstructor, registered_reconstructor,
                                                                    unregister_reconstructor)

    def users_own(rgb, alpha, cameras, *, grid, device):
        raise AssertionError("the node's LGM file must be used for its run")

    register_reconstructor("lgm", users_own)
    try:
        lift(pack, rendered, mode="hull", reconstructor=LGM_FILE, texture_size=0)
        assert registered_reconstructor("lgm") is users_own
    finally:
        unregister_reconstructor("lgm")


@pytest.mark.parametrize("name, what", [(FOREIGN_FILE, "Stable Diffusion / MVDream checkpoint"),
                                        (TRUNCATED_FILE, "truncated")])
def test_a_file_that_is_not_lgm_is_refused_at_the_node_saying_what_it_is(pack, lgm_folder, rendered, name, what):
    from dreamedit3d_pack.dreamedit3d_core.errors import CheckpointError
    from dreamedit3d_pack.dreamedit3d_core.lifting import list_reconstructors

    message = validate(pack, mode="hull", reconstructor=name)
    assert isinstance(message, str) and name in message and what in message and "\n" not in message
    with pytest.raises(CheckpointError, match=what):
        lift(pack, rendered, mode="hull", reconstructor=name)
    assert "lgm" not in list_reconstructors()


def test_a_missing_file_is_refused_as_not_offered(pack, lgm_folder):
    message = validate(pack, mode="hull", reconstructor="gone.safetensors")
    assert isinstance(message, str) and "gone.safetensors" in message and repr(LGM_FILE) in message


def test_views_of_the_wrong_count_are_refused_at_the_node(pack, lgm_folder, rendered):
    from dreamedit3d_pack.dreamedit3d_core.errors import ShapeError

    with pytest.raises(ShapeError, match="4 views per edit"):
        lift(pack, {**rendered, "images": rendered["images"][:3]}, mode="hull", reconstructor=LGM_FILE)


def test_an_interrupt_during_lgm_stops_the_node_and_unregisters(pack, lgm_folder, rendered, monkeypatch):
    import comfy.model_management

    from dreamedit3d_pack.dreamedit3d_core.lifting import list_reconstructors
    from dreamedit3d_pack.nodes.progress import ComfyProgress

    update = ComfyProgress.update

    def interrupt_after_silhouettes(self, step, total, preview=None, **info):
        update(self, step, total, preview, **info)
        if info.get("stage") == "silhouettes":  # the next stage is LGM's geometry
            comfy.model_management.interrupt_current_processing(True)

    monkeypatch.setattr(ComfyProgress, "update", interrupt_after_silhouettes)
    rec = reconstructor_for(lgm_folder, LGM_FILE)
    rec.last_stats = {}
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            lift(pack, rendered, mode="hull", reconstructor=LGM_FILE, texture_size=0)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert rec.last_stats == {} and "lgm" not in list_reconstructors()  # stopped inside LGM's mesh extraction
