"""LiftToMesh's outputs in the source file's own coordinates, through the nodes (issue 13 item 1), in-process.

OrthoRender of files the project has never seen (a Z-up OBJ read with its axes; a GLB with nested, instanced and mirrored
nodes; a Z-up vehicle in centimetres with many parts) -> LiftToMesh (keep_source) -> its GLB, its core MESH, and ComfyUI's own SaveGLB of that MESH all land on the
file's vertices as trimesh reads the file; the MESH fed back into OrthoRender renders the same four views.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _unseen_assets import BUILDERS, bbox_diagonal, file_mesh, normals_agree

pytestmark = pytest.mark.nodes

CASES = ("z_up.obj", "nested_instanced.glb", "vehicle.glb")


def run(pack, node_id, hidden=None, **inputs):
    return pack.NODES[node_id].PREPARE_CLASS_CLONE(hidden or {}).execute(**inputs)


def _on_the_file(vertices, reference, what):
    from scipy.spatial import cKDTree

    diagonal = bbox_diagonal(reference)
    off = cKDTree(np.asarray(reference.vertices)).query(np.asarray(vertices, np.float64))[0]
    assert off.max() <= 1e-5 * diagonal, f"{what}: a vertex is {off.max() / diagonal:.2e} diagonals off the file's"
    back = cKDTree(np.asarray(vertices, np.float64)).query(np.asarray(reference.vertices))[0]
    assert back.max() <= 1e-5 * diagonal, f"{what}: a vertex of the file is missing"


@pytest.mark.parametrize("name", CASES)
def test_lift_glb_core_mesh_and_comfy_saveglb_sit_on_the_source_file(pack, name):
    import trimesh
    from comfy_api.latest import io
    from comfy_extras.nodes_hunyuan3d import SaveGLB
    from dreamedit3d_pack.nodes import folders, sockets

    folder = folders.input_folder() / "unseen"
    folder.mkdir(parents=True, exist_ok=True)
    path, options = BUILDERS[name](folder)
    reference = file_mesh(path)
    with torch.inference_mode():
        images, alpha, _n, _d, views = run(pack, "DreamEdit3D_OrthoRender", asset=f"unseen/{path.name}", resolution=64,
                                          lighting="unlit", **options).result
        hidden = {io.Hidden.prompt: {}, io.Hidden.unique_id: "7"}
        out = run(pack, "DreamEdit3D_LiftToMesh", hidden, images=images, views=views, mode="keep_source",
                  texture_size=64, filename_prefix=f"frames/{path.stem}")
    mesh, glb_path = out.result
    glb = trimesh.load(folders.output_folder() / glb_path, force="mesh", process=False)
    _on_the_file(glb.vertices, reference, f"{name}: LiftToMesh's GLB")
    assert normals_agree(glb, reference) > 0.98 and glb.volume > 0, f"{name}: the GLB's faces point inward"
    vertices, faces = sockets.mesh_from_core(mesh)
    _on_the_file(vertices.numpy(), reference, f"{name}: the core MESH")
    core = trimesh.Trimesh(vertices.double().numpy(), faces.numpy(), process=False)
    assert normals_agree(core, reference) > 0.98, f"{name}: the core MESH's faces point inward"
    # ComfyUI's own SaveGLB writes the MESH as it is: the file's coordinates again
    saved = SaveGLB.PREPARE_CLASS_CLONE({}).execute(mesh=mesh, filename_prefix=f"frames/{path.stem}_core")
    item = saved.ui["3d"][0] if isinstance(saved.ui, dict) else saved.ui.as_dict()["3d"][0]
    written = trimesh.load(folders.output_folder() / item["subfolder"] / item["filename"], force="mesh", process=False)
    _on_the_file(written.vertices, reference, f"{name}: ComfyUI SaveGLB of the MESH")
    # the MESH into OrthoRender with the file's axes: the same frame, the same four views
    with torch.inference_mode():
        again = run(pack, "DreamEdit3D_OrthoRender", asset=f"unseen/{path.name}", resolution=64, lighting="unlit",
                    mesh=mesh, **options).result
    again_views = again[-1]
    torch.testing.assert_close(again_views.render.source_frame.to_internal, views.render.source_frame.to_internal,
                               rtol=1e-5, atol=1e-6 * float(views.render.source_frame.to_internal.abs().max()))
    both = (again[1] > 0.5) & (alpha > 0.5)
    either = (again[1] > 0.5) | (alpha > 0.5)
    assert float(both.sum()) / float(either.sum()) >= 0.99, f"{name}: the MESH renders other views"
