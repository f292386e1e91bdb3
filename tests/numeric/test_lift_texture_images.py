"""A lift keeps the source's own images on the faces the edit left alone when the source has several of them
(issue 13 item 4: the spider's five materials re-baked into an atlas held 27.3 dB from held-out cameras): each image
gets a copy on one canvas beside the atlas, times its faces' base colour, repeated as far as their UVs reach."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.lifting import lift_to_mesh
from dreamedit3d_core.types import MeshAsset

pytestmark = pytest.mark.numeric

CAMS = MVCameras.mvdream_default()
#: Part "a" on image 0 (32 x 32, white), "b" on image 1 (24 wide x 40 high, a tinted base colour, UVs repeating it
#: up to 1.9 times), "c" on image 0 and recoloured by the edit.
TINT = (0.8, 0.9, 0.7)


def _box(extents, offset):
    import trimesh

    box = trimesh.creation.box(extents=extents).subdivide().subdivide()
    box.apply_translation(offset)
    return box


def _three_part_source(recolour_c: bool = False) -> MeshAsset:
    g = torch.Generator().manual_seed(3)
    images = (torch.rand(32, 32, 3, generator=g) * 0.8 + 0.1, torch.rand(40, 24, 3, generator=g) * 0.8 + 0.1)
    boxes = [_box((0.5, 0.5, 0.5), (0.0, -0.2, -0.35)), _box((0.5, 0.5, 0.5), (0.0, -0.2, 0.35)),
             _box((0.3, 0.3, 0.3), (0.0, 0.35, 0.0))]
    verts, faces, uv, n = [], [], [], 0
    for i, b in enumerate(boxes):
        v = np.asarray(b.vertices, np.float64)
        # planar UVs over x+z and y: every box face but the top and bottom has its own texels
        planar = np.stack([(v[:, 0] + v[:, 2]) * 0.9 + 0.5, v[:, 1] * 0.9 + 0.5], 1)
        uv.append(planar * 1.5 + 0.25 if i == 1 else planar)
        verts.append(v)
        faces.append(np.asarray(b.faces) + n)
        n += len(v)
    part = np.repeat([0, 1, 2], [len(f) for f in faces])
    tex = np.where(part == 1, 1, 0)
    colour = np.where(part[:, None] == 1, TINT, (1.0, 1.0, 1.0))
    if recolour_c:
        tex = np.where(part == 2, -1, tex)
        colour = np.where(part[:, None] == 2, (0.1, 0.35, 0.9), colour)
    return MeshAsset(vertices=torch.tensor(np.concatenate(verts), dtype=torch.float32),
                     faces=torch.from_numpy(np.concatenate(faces)).long(), part_ids=torch.from_numpy(part).long(),
                     part_names=("a", "b", "c"), face_base_color=torch.tensor(colour, dtype=torch.float32),
                     uv=torch.tensor(np.concatenate(uv), dtype=torch.float32), face_textures=torch.from_numpy(tex).long(),
                     textures=images)


def test_faces_the_edit_left_alone_keep_each_source_image_at_their_own_uvs(tmp_path):
    from dreamedit3d_core.lifting.bake import sample_texture, source_surface_colors
    from dreamedit3d_core.render import render_views

    source, edited = _three_part_source(), _three_part_source(recolour_c=True)
    rgb = render_views(edited, CAMS, resolution=256, lighting="unlit").rgb
    mesh = lift_to_mesh(rgb, CAMS, source=source, mode="component_aware", grid=64, texture_size=256)
    s = mesh.stats
    print({k: s[k] for k in ("texture_layout", "canvas", "canvas_size", "source_layout_faces")})
    assert s["texture_layout"] == "source+atlas" and mesh.texture.shape[0] == s["canvas_size"] <= 4096
    assert torch.equal(mesh.vertices[mesh.faces], source.vertices[source.faces])  # the source's faces, in order
    kept_parts = source.part_ids < 2
    assert s["source_layout_faces"] == int(kept_parts.sum())  # all of parts a and b, none of the recoloured c
    # at random points of every face of a and b: the lift's texture at its UVs is the source's image at the source's
    # UVs times the base colour (the renderer's own lookup, wrapping repeated UVs)
    g = torch.Generator().manual_seed(0)
    faces = kept_parts.nonzero().squeeze(1).repeat_interleave(20)
    bary = torch.rand(len(faces), 3, generator=g)
    bary = bary / bary.sum(1, keepdim=True)
    want = source_surface_colors(source, faces, bary)
    uv = (mesh.uv[mesh.faces[faces]] * bary[..., None]).sum(1)
    got = sample_texture(mesh.texture, uv[None, None])[0, :, 0].t()
    # the renderer clamps at each repeat's edge where the canvas continues the image: leave out the outer half texel
    src_uv = (source.uv[source.faces[faces]] * bary[..., None]).sum(1)
    size = torch.tensor([[32.0, 32.0], [24.0, 40.0]])[source.face_textures[faces]]
    frac = (src_uv - torch.floor(src_uv)) * size
    inner = ((frac > 0.5) & (frac < size - 0.5)).all(-1)
    on_b = source.part_ids[faces] == 1
    assert int((inner & on_b).sum()) > 500 and int((inner & ~on_b).sum()) > 500
    err = (got - want).abs().amax(-1)
    print("max difference to the source's images, part a / b:", float(err[inner & ~on_b].max()),
          float(err[inner & on_b].max()))
    assert float(err[inner].max()) < 1e-4
    # the recoloured part is on the atlas in its new colour
    on_c = (source.part_ids == 2).nonzero().squeeze(1)
    c_uv = mesh.uv[mesh.faces[on_c]].mean(1)
    c_colour = sample_texture(mesh.texture, c_uv[None, None])[0, :, 0].t()
    assert float(((c_colour - torch.tensor([0.1, 0.35, 0.9])).abs().amax(-1) < 0.05).float().mean()) > 0.9
    # the canvas travels in a GLB like any texture: one image of the canvas's size, every corner's UV
    import trimesh

    from dreamedit3d_core.lifting.export import export_mesh

    path = export_mesh(mesh, tmp_path / "canvas.glb", frame="internal")
    loaded = next(iter(trimesh.load(path).geometry.values()))
    assert loaded.visual.material.baseColorTexture.size == (s["canvas_size"], s["canvas_size"])
    assert np.allclose(loaded.visual.uv, mesh.uv.numpy(), atol=1e-6)


def test_a_vertex_of_a_textured_source_keeps_the_image_at_its_uv():
    """Without a texture (``texture_size`` 0) a vertex of a face the edit left alone is its image sampled at its
    UV (bilinear, wrapped) times its base colour."""
    from scipy.spatial import cKDTree

    from dreamedit3d_core.lifting.bake import source_surface_colors
    from dreamedit3d_core.render import render_views

    source, edited = _three_part_source(), _three_part_source(recolour_c=True)
    rgb = render_views(edited, CAMS, resolution=256, lighting="unlit").rgb
    mesh = lift_to_mesh(rgb, CAMS, source=source, mode="component_aware", grid=64, texture_size=0)
    dist, src = cKDTree(source.vertices.numpy()).query(mesh.vertices.numpy())
    assert float(dist.max()) < 1e-6  # the lift of an unchanged shape is the source's own vertices
    src = torch.from_numpy(src)
    # a corner of a face of part a or b, as a point of that face
    face_of = torch.full((source.vertices.shape[0],), -1, dtype=torch.int64)
    corner_of = torch.zeros(source.vertices.shape[0], dtype=torch.int64)
    for k in range(3):
        face_of[source.faces[:, k]] = torch.arange(source.faces.shape[0])
        corner_of[source.faces[:, k]] = k
    fid = face_of[src]
    kept = source.part_ids[fid] < 2
    want = source_surface_colors(source, fid, torch.nn.functional.one_hot(corner_of[src], 3).float())
    err = (mesh.vertex_colors - want).abs().amax(-1)
    print("kept vertices of parts a and b:", int(kept.sum()), "max difference", float(err[kept].max()))
    assert int(kept.sum()) > 100 and float(err[kept].max()) < 1e-6


def test_images_that_do_not_fit_the_cap_are_shrunk_then_left_for_the_atlas(monkeypatch):
    """With the cap lowered to 512², a 448² atlas leaves a 64-texel strip: the copies (128² with their margins) are
    shrunk to fit it (the least-used first), and the stats say how much; with the cap at the atlas's own side nothing
    fits, and the lift keeps the atlas alone, saying why (never a larger texture than the cap)."""
    from dreamedit3d_core.lifting import pipeline
    from dreamedit3d_core.render import render_views

    source, edited = _three_part_source(), _three_part_source(recolour_c=True)
    rgb = render_views(edited, CAMS, resolution=256, lighting="unlit").rgb
    monkeypatch.setattr(pipeline, "MAX_CANVAS_SIDE", 512)
    mesh = lift_to_mesh(rgb, CAMS, source=source, mode="component_aware", grid=64, texture_size=448)
    s = mesh.stats
    print(s["canvas"], s["canvas_shrunk_images"])
    assert s["texture_layout"] == "source+atlas" and s["canvas_size"] == 512 and mesh.texture.shape[0] == 512
    assert s["canvas_shrunk_images"] >= 1
    # a copy shrunk k times (the stats name each) is the image box-filtered by k, at the same UVs (away from each
    # repeat's edge)
    import re

    from dreamedit3d_core.lifting.bake import sample_texture

    shrink = {int(t): int(k) for t, k in re.findall(r"image (\d+) at 1/(\d+)", s["canvas"])}
    assert s["source_layout_faces"] == int((source.part_ids < 2).sum()) and len(shrink) == 2
    faces = (source.part_ids < 2).nonzero().squeeze(1).repeat_interleave(10)
    bary = torch.rand(len(faces), 3, generator=torch.Generator().manual_seed(1))
    bary = bary / bary.sum(1, keepdim=True)
    got = sample_texture(mesh.texture, (mesh.uv[mesh.faces[faces]] * bary[..., None]).sum(1)[None, None])[0, :, 0].t()
    src_uv = (source.uv[source.faces[faces]] * bary[..., None]).sum(1)
    want = torch.empty_like(got)
    inner = torch.zeros(len(faces), dtype=torch.bool)
    for t, image in enumerate(source.textures):
        on = source.face_textures[faces] == t
        halved = torch.nn.functional.avg_pool2d(image.permute(2, 0, 1)[None], shrink[t])[0]
        frac = src_uv[on] - torch.floor(src_uv[on])
        grid = torch.stack([frac[:, 0] * 2 - 1, 1 - frac[:, 1] * 2], -1)[None, None]
        sampled = torch.nn.functional.grid_sample(halved[None], grid, align_corners=False)[0, :, 0].t()
        want[on] = sampled * source.face_base_color[faces[on]]
        size = torch.tensor([image.shape[1] / shrink[t], image.shape[0] / shrink[t]])
        inner[on] = ((frac * size > 0.5) & (frac * size < size - 0.5)).all(-1)
    err = (got - want).abs().amax(-1)[inner]
    print("shrunk copies: samples", int(inner.sum()), "max difference", float(err.max()))
    assert int(inner.sum()) > 500 and float(err.max()) < 1e-4
    monkeypatch.setattr(pipeline, "MAX_CANVAS_SIDE", 256)
    mesh = lift_to_mesh(rgb, CAMS, source=source, mode="component_aware", grid=64, texture_size=256)
    print(mesh.stats["canvas"])
    assert mesh.stats["texture_layout"] == "atlas" and mesh.texture.shape[0] == 256
    assert "do not fit" in mesh.stats["canvas"]
