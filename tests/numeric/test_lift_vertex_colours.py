"""A lift without a texture (``texture_size`` 0) takes the texture's keep/change decision at its vertices: a vertex of
a component the edit left alone keeps the source's own colour there (its vertex colour, or its image at the vertex's
UV), one of a recoloured component takes the views' colour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.lifting import lift_to_mesh
from dreamedit3d_core.types import MeshAsset

pytestmark = pytest.mark.numeric

CAMS = MVCameras.mvdream_default()
NEW = (0.1, 0.35, 0.9)


def _boxes_with_vertex_colours(recolour_top: bool = False) -> MeshAsset:
    """A 0.6-wide base box and a 0.3-wide box on it, subdivided, every vertex a random colour (the top's all ``NEW``
    when recoloured)."""
    import trimesh

    base = trimesh.creation.box(extents=(0.6, 0.4, 0.6)).subdivide().subdivide()
    top = trimesh.creation.box(extents=(0.3, 0.3, 0.3)).subdivide().subdivide()
    base.apply_translation((0.0, -0.1, 0.0))
    top.apply_translation((0.0, 0.35, 0.0))
    verts = np.concatenate([base.vertices, top.vertices])
    faces = np.concatenate([base.faces, top.faces + len(base.vertices)])
    part = np.repeat([0, 1], [len(base.faces), len(top.faces)])
    colours = torch.rand(len(verts), 3, generator=torch.Generator().manual_seed(5)) * 0.8 + 0.1
    if recolour_top:
        colours[len(base.vertices):] = torch.tensor(NEW)
    return MeshAsset(vertices=torch.tensor(verts, dtype=torch.float32), faces=torch.from_numpy(faces).long(),
                     part_ids=torch.from_numpy(part).long(), part_names=("base", "top"),
                     face_base_color=torch.full((len(faces), 3), 0.9), vertex_colors=colours)


def _source_vertex(mesh_vertices: torch.Tensor, source: MeshAsset) -> torch.Tensor:
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(source.vertices.numpy()).query(mesh_vertices.numpy())
    assert float(dist.max()) < 1e-6  # the lift of an unchanged shape is the source's own vertices
    return torch.from_numpy(idx)


def test_a_vertex_the_edit_left_alone_keeps_the_source_vertex_colour_exactly():
    from dreamedit3d_core.render import render_views

    source, edited = _boxes_with_vertex_colours(), _boxes_with_vertex_colours(recolour_top=True)
    rgb = render_views(edited, CAMS, resolution=256, lighting="unlit").rgb
    mesh = lift_to_mesh(rgb, CAMS, source=source, mode="component_aware", grid=64, texture_size=0)
    assert mesh.texture is None
    src = _source_vertex(mesh.vertices, source)
    on_base = src <= int(source.faces[source.part_ids == 0].max())  # the base's vertices come first
    want = source.vertex_colors[src] * 0.9  # vertex colour times the base colour, as the renderer shades it
    err = (mesh.vertex_colors - want).abs().amax(-1)
    print("base vertices: max difference to the source's colour", float(err[on_base].max()),
          "; top vertices within 0.05 of the new colour",
          float(((mesh.vertex_colors[~on_base] - torch.tensor(NEW) * 0.9).abs().amax(-1) < 0.05).float().mean()))
    assert int(on_base.sum()) > 50 and float(err[on_base].max()) < 1e-6
    # the recoloured top keeps none of its old colours (but those that were near the new one already: a vertex the
    # views show in its own colour agrees); its corners and lid edge sit on the views' antialiased outlines (paler)
    was_other = (want - torch.tensor(NEW) * 0.9).abs().amax(-1) > 0.15
    assert bool((err[~on_base & was_other] > 0.05).all())
    top_new = ((mesh.vertex_colors[~on_base] - torch.tensor(NEW) * 0.9).abs().amax(-1) < 0.05).float().mean()
    assert float(top_new) > 0.8

