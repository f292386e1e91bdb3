"""Exports in the source's own frame (issue 13 item 1): a lifted mesh is written in the coordinates, axes and units of
the file it was edited from (glTF's +Y up / front +Z at unit size without a source), checked against the file's own
vertices as trimesh reads them (independent of our loader)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _lift_helpers import asset_from_trimesh, box_with_nose
from _unseen_assets import chamfer_fraction, file_mesh, normals_agree
from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.lifting import export_mesh, lift_to_mesh
from dreamedit3d_core.lifting.export import in_output_frame

pytestmark = pytest.mark.numeric

CAMS = MVCameras.mvdream_default()
#: Assets and the loader options that read them as the files mean (textures beside the OBJ / untextured GLB).
ASSETS = {
    "kenney_character.glb": {},
    "cesium_milk_truck.glb": {},
    "Fox.gltf": {},
    "spot.obj": {"texture": "spot_texture.png"},
    "lee_perry_smith_head.glb": {"texture": "lee_perry_smith_color.jpg", "texture_flip_y": True},
}


@pytest.mark.assets
@pytest.mark.parametrize("name", sorted(ASSETS))
def test_keep_source_round_trip_lands_on_the_source_files_vertices(shared_assets, name, tmp_path):
    import trimesh
    from scipy.spatial import cKDTree

    from dreamedit3d_core.assets import load_asset
    from dreamedit3d_core.render import render_views

    kwargs = {k: (str(shared_assets / v) if k == "texture" else v) for k, v in ASSETS[name].items()}
    asset = load_asset(shared_assets / name, **kwargs)
    views = render_views(asset, CAMS, resolution=128, lighting="unlit")
    mesh = lift_to_mesh(views.rgb, CAMS, alpha=views.alpha, source=asset, mode="keep_source", texture_size=0,
                        frame=views.source_frame)
    path = export_mesh(mesh, tmp_path / "edit.glb")
    written = trimesh.load(path, force="mesh", process=False)
    reference = file_mesh(shared_assets / name)
    diagonal = float(np.linalg.norm(reference.bounds[1] - reference.bounds[0]))
    # every written vertex is a vertex of the file (in its own units), and the surfaces agree
    nearest = cKDTree(np.asarray(reference.vertices)).query(np.asarray(written.vertices))[0]
    assert nearest.max() <= 1e-5 * diagonal, f"{name}: a written vertex is {nearest.max() / diagonal:.2e} diagonals off"
    c = chamfer_fraction(written, reference)
    assert c <= 0.005, f"{name}: Chamfer {c:.2%} of the diagonal in the source's coordinates"
    # the winding stays outward (a mirroring frame reverses it): signed volume keeps the file's sign
    assert np.sign(written.volume) == np.sign(reference.volume) or abs(reference.volume) < 1e-9 * diagonal ** 3


def test_without_a_source_files_use_gltf_axes_at_unit_size(tmp_path):
    import trimesh

    tm, colors = box_with_nose()  # in our internal frame: the nose points at +x, the front camera
    asset = asset_from_trimesh(tm, face_colors=colors)
    from dreamedit3d_core.render import render_views

    views = render_views(asset, CAMS, resolution=128, lighting="unlit")
    mesh = lift_to_mesh(views.rgb, CAMS, alpha=views.alpha, grid=48, texture_size=0, face_budget=4000)
    written = trimesh.load(export_mesh(mesh, tmp_path / "hull.glb"), force="mesh", process=False)
    v = np.asarray(written.vertices)
    # glTF: front +z, up +y; the nose (internal x up to 0.5) is now the only thing beyond z = 0.3, and the box's long
    # side (internal z, +-0.35) lies along x
    assert v[:, 2].max() > 0.45 and v[:, 2].min() > -0.3 and 0.33 < np.abs(v[:, 0]).max() < 0.42
    np.testing.assert_allclose(np.ptp(v, axis=0), np.ptp(mesh.vertices.numpy(), axis=0)[[2, 1, 0]], atol=1e-5)
    # the internal frame stays available, and the same transform reaches the core MESH via in_output_frame
    internal = trimesh.load(export_mesh(mesh, tmp_path / "internal.glb", frame="internal"), force="mesh", process=False)
    np.testing.assert_allclose(np.asarray(internal.vertices), mesh.vertices.numpy(), atol=1e-6)
    moved = in_output_frame(mesh)
    np.testing.assert_allclose(moved.vertices.numpy(), v, atol=1e-6)
    assert "output_frame" not in moved.stats and in_output_frame(moved) is moved


def test_a_mirroring_source_frame_keeps_faces_outward(tmp_path):
    import trimesh

    from dreamedit3d_core.geometry import SourceFrame

    tm = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    asset = asset_from_trimesh(tm)
    mirror = torch.diag(torch.tensor([-2.0, 2.0, 2.0, 1.0], dtype=torch.float64))  # source = mirrored, half size
    from dreamedit3d_core.render import render_views

    views = render_views(asset, CAMS, resolution=96, lighting="unlit")
    mesh = lift_to_mesh(views.rgb, CAMS, alpha=views.alpha, source=asset, mode="keep_source", texture_size=0,
                        frame=SourceFrame(mirror))
    written = trimesh.load(export_mesh(mesh, tmp_path / "m.glb"), force="mesh", process=False)
    assert written.volume > 0  # outward winding after the mirror
    np.testing.assert_allclose(np.abs(np.asarray(written.vertices)).max(), 0.15, atol=1e-6)


@pytest.mark.assets
@pytest.mark.parametrize("name", ["cesium_milk_truck.glb", "lee_perry_smith_head.glb"])
def test_source_guided_export_sits_on_the_source_file(shared_assets, name, tmp_path):
    """The vehicle with many parts and the open head, lifted source_guided at a small grid: the GLB has the file's place,
    size and axes (bounding box within 3 % of its diagonal, surfaces within 2 %) and faces outward."""
    import trimesh

    from dreamedit3d_core.assets import load_asset
    from dreamedit3d_core.render import render_views

    kwargs = {k: (str(shared_assets / v) if k == "texture" else v) for k, v in ASSETS[name].items()}
    asset = load_asset(shared_assets / name, **kwargs)
    views = render_views(asset, CAMS, resolution=64, lighting="unlit")
    mesh = lift_to_mesh(views.rgb, CAMS, alpha=views.alpha, source=asset, mode="source_guided", grid=32,
                        texture_size=0, face_budget=3000, frame=views.source_frame)
    written = trimesh.load(export_mesh(mesh, tmp_path / "guided.glb"), force="mesh", process=False)
    reference = file_mesh(shared_assets / name)
    diagonal = float(np.linalg.norm(reference.bounds[1] - reference.bounds[0]))
    np.testing.assert_allclose(written.bounds, reference.bounds, atol=0.03 * diagonal, err_msg=name)
    c = chamfer_fraction(written, reference)
    assert c <= 0.02, f"{name}: Chamfer {c:.2%} of the diagonal in the source's coordinates"
    assert normals_agree(written, reference) > 0.9, f"{name}: faces point inward"
