"""LiftToMesh with an LGM file on a real ComfyUI server: OrthoRender -> LiftToMesh(reconstructor = a tiny LGM file in
models/lgm) gives a GLB; a file there that is not LGM is not offered, and a prompt naming it is refused at the node
saying what the file is. The in-process twin is tests/nodes/test_lift_lgm_node.py."""

from __future__ import annotations

import json

import pytest
import torch

from _host import HostError

pytestmark = pytest.mark.host

LGM_FILE = "dreamedit3d-tiny-lgm.safetensors"
FOREIGN_FILE = "dreamedit3d-not-lgm.safetensors"
TRUNCATED_FILE = "dreamedit3d-truncated-lgm.safetensors"
#: stages LiftToMesh reports itself (dreamedit3d_core.lifting.pipeline.NUM_STAGES); LGM's density grid reports per
#: Gaussian on top
LIFT_STAGES = 5


@pytest.fixture(scope="module")
def lgm_files(comfy_host):
    """The server's models/lgm with a tiny LGM file, an SD-style checkpoint and a truncated LGM file (removed after)."""
    from safetensors.torch import save_file

    from dreamedit3d_core.lifting.lgm import save_lgm
    from dreamedit3d_core.testing.lgm import tiny_lgm

    folder = comfy_host.base / "models" / "lgm"
    folder.mkdir(parents=True, exist_ok=True)
    lgm = save_lgm(tiny_lgm(0), folder / LGM_FILE, dtype=torch.float16, overwrite=True)
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 320, 3, 3)}, str(folder / FOREIGN_FILE))
    data = lgm.read_bytes()
    (folder / TRUNCATED_FILE).write_bytes(data[: len(data) // 3])
    yield folder
    for name in (LGM_FILE, FOREIGN_FILE, TRUNCATED_FILE):
        (folder / name).unlink(missing_ok=True)


def _graph(reconstructor: str) -> dict:
    return {
        "1": {"class_type": "DreamEdit3D_OrthoRender", "inputs": {
            "asset": "dreamedit3d/kenney_character.glb", "resolution": 64, "elevation_deg": 15.0, "fov_deg": 40.0,
            "background": 1.0, "lighting": "ambient_diffuse", "front_axis": "+z", "up_axis": "+y"}},
        "2": {"class_type": "DreamEdit3D_LiftToMesh", "inputs": {
            "images": ["1", 0], "views": ["1", 4], "mode": "hull", "grid": 32, "texture_size": 128,
            "face_budget": 3000, "background": 1.0, "filename_prefix": "dreamedit3d/lgm",
            "reconstructor": reconstructor}},
    }


def test_object_info_offers_only_the_lgm_file(comfy_host, lgm_files):
    spec = comfy_host.object_info("DreamEdit3D_LiftToMesh")["DreamEdit3D_LiftToMesh"]["input"]["optional"]
    choices = spec["reconstructor"][0]
    if isinstance(choices, str):  # newer hosts: ("COMBO", {"options": [...]})
        choices = spec["reconstructor"][1]["options"]
    assert choices == ["none", LGM_FILE]


def test_lift_with_the_lgm_file_writes_a_glb(comfy_host, lgm_files):
    import trimesh

    result = comfy_host.run(_graph(LGM_FILE), timeout=300)
    assert result.status == "success", (result.error, comfy_host.log_tail())
    mesh = trimesh.load(comfy_host.output_file(result.outputs["2"]["3d"][0]), force="mesh")
    assert 0 < len(mesh.faces) <= 3000
    # LGM's density grid reported its progress (per Gaussian) on the node's bar, next to the lift's own stages
    totals = {p["max"] for p in result.of_type("progress") if p["node"] == "2"}
    assert LIFT_STAGES in totals and any(t > LIFT_STAGES for t in totals), totals


@pytest.mark.parametrize("name, what", [(FOREIGN_FILE, "Stable Diffusion / MVDream checkpoint"),
                                        (TRUNCATED_FILE, "truncated")])
def test_a_file_that_is_not_lgm_is_refused_at_the_node(comfy_host, lgm_files, name, what):
    with pytest.raises(HostError) as refused:
        comfy_host.run(_graph(name), timeout=120)
    assert refused.value.status == 400
    errors = json.dumps(refused.value.body["node_errors"]["2"])
    assert name in errors and what in errors, errors
    assert comfy_host.alive()
