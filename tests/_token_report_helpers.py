"""Test helpers for the token report: a two-block asset (the tiny model's standard two-part scene)."""

from __future__ import annotations


def two_block_asset():
    """A MeshAsset of two stacked boxes, part 0 ``top`` (a red cube) on part 1 ``base`` (a wider blue slab).

    Both parts are visible in all four views with a clear border between them; component spec ``"top: top; base: base"``.
    """
    import numpy as np
    import trimesh

    from dreamedit3d_core.assets import asset_from_arrays

    top = trimesh.creation.box(extents=(0.45, 0.45, 0.45))
    top.apply_translation((0.0, 0.32, 0.0))
    base = trimesh.creation.box(extents=(0.9, 0.5, 0.9))
    base.apply_translation((0.0, -0.2, 0.0))
    vertices = np.concatenate([top.vertices, base.vertices])
    faces = np.concatenate([top.faces, base.faces + len(top.vertices)])
    part_ids = np.concatenate([np.zeros(len(top.faces), np.int64), np.ones(len(base.faces), np.int64)])
    colours = np.where(part_ids[:, None] == 0, [[0.85, 0.15, 0.1]], [[0.1, 0.25, 0.8]])
    return asset_from_arrays(vertices, faces, part_ids=part_ids, part_names=("top", "base"), face_base_color=colours)


def two_block_scene(resolution: int = 128):
    """(MultiViewRender, ComponentMasks) of :func:`two_block_asset` at ``resolution`` px, components (top, base)."""
    from dreamedit3d_core.masks import masks_from_parts
    from dreamedit3d_core.render import render_views

    render = render_views(two_block_asset(), resolution=resolution)
    return render, masks_from_parts(render, "top: top; base: base")
