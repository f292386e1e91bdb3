"""A small multi-part example asset the pack builds itself, so the example runs on a machine with no assets at all.

``write_example_asset(path)`` writes a GLB of a toy figure in the glTF convention (+Y up, front +Z) with four named
parts, each its own node: ``body`` (a box with a UV texture whose front face carries a marker, so the front is
recognisable in renders), ``head`` (a sphere), ``hat`` (a cone; both plain base colours) and ``nose``
(a small cylinder pointing at the front). The component spec ``"hat: hat; toy: *"`` splits it into an accessory and
the rest, like the paper's examples.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..storage import save_bytes

EXAMPLE_COMPONENTS = "hat: hat; toy: *"
EXAMPLE_PROMPT = "a <toy> wearing a <hat> made of gold"


def _body_texture(size: int = 64) -> np.ndarray:
    """A 2x3 atlas of face colours; the front cell (+Z) has a white square marker."""
    colours = [(200, 70, 60), (70, 160, 90), (60, 90, 200), (220, 190, 60), (150, 80, 170), (80, 180, 190)]
    tex = np.zeros((2 * size, 3 * size, 3), np.uint8)
    for i, c in enumerate(colours):
        r, k = divmod(i, 3)
        tex[r * size:(r + 1) * size, k * size:(k + 1) * size] = c
    tex[size // 4: size // 2, size // 4: size // 2] = 255  # marker in cell 0 (front face)
    return tex


def _textured_box(extents, size: int = 64):
    """A box whose 6 faces each map to one atlas cell (cell 0 = the +Z face)."""
    import trimesh
    from PIL import Image

    hx, hy, hz = (e / 2.0 for e in extents)
    # per face: 4 corners (counter-clockwise seen from outside) and the outward axis
    faces = [
        [(-hx, -hy, hz), (hx, -hy, hz), (hx, hy, hz), (-hx, hy, hz)],      # +Z front
        [(hx, -hy, -hz), (-hx, -hy, -hz), (-hx, hy, -hz), (hx, hy, -hz)],  # -Z back
        [(hx, -hy, hz), (hx, -hy, -hz), (hx, hy, -hz), (hx, hy, hz)],      # +X
        [(-hx, -hy, -hz), (-hx, -hy, hz), (-hx, hy, hz), (-hx, hy, -hz)],  # -X
        [(-hx, hy, hz), (hx, hy, hz), (hx, hy, -hz), (-hx, hy, -hz)],      # +Y top
        [(-hx, -hy, -hz), (hx, -hy, -hz), (hx, -hy, hz), (-hx, -hy, hz)],  # -Y bottom
    ]
    vertices, uvs, tris = [], [], []
    for i, quad in enumerate(faces):
        r, k = divmod(i, 3)
        u0, u1 = k / 3.0, (k + 1) / 3.0
        v1, v0 = 1.0 - r / 2.0, 1.0 - (r + 1) / 2.0  # trimesh uv: v = 0 at the image bottom
        base = len(vertices)
        vertices.extend(quad)
        uvs.extend([(u0, v0), (u1, v0), (u1, v1), (u0, v1)])
        tris.extend([(base, base + 1, base + 2), (base, base + 2, base + 3)])
    image = Image.fromarray(_body_texture(size))
    # an explicit white factor: trimesh's default material would darken the texture to 40 %
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=image, baseColorFactor=[255, 255, 255, 255])
    visual = trimesh.visual.TextureVisuals(uv=np.array(uvs), material=material)
    return trimesh.Trimesh(np.array(vertices, float), np.array(tris), visual=visual, process=False)


def _plain(r: int, g: int, b: int):
    """A material with only a base colour (glTF baseColorFactor)."""
    import trimesh

    return trimesh.visual.TextureVisuals(material=trimesh.visual.material.PBRMaterial(baseColorFactor=[r, g, b, 255]))


def build_example_scene():
    """The example as a ``trimesh.Scene`` with parts body, head, hat and nose."""
    import trimesh

    scene = trimesh.Scene()
    body = _textured_box((0.8, 0.9, 0.5))
    scene.add_geometry(body, node_name="body", geom_name="body")

    head = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    head.apply_translation((0.0, 0.75, 0.0))
    head.visual = _plain(235, 195, 160)
    scene.add_geometry(head, node_name="head", geom_name="head")

    hat = trimesh.creation.cone(radius=0.28, height=0.4, sections=24)  # apex on +Z
    hat.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, (1, 0, 0)))  # apex up (+Y)
    hat.apply_translation((0.0, 0.98, 0.0))
    hat.visual = _plain(40, 40, 140)
    scene.add_geometry(hat, node_name="hat", geom_name="hat")

    nose = trimesh.creation.cylinder(radius=0.05, height=0.2, sections=16)  # along Z: points at the front
    nose.apply_translation((0.0, 0.72, 0.35))
    nose.visual = _plain(230, 120, 40)
    scene.add_geometry(nose, node_name="nose", geom_name="nose")
    return scene


def write_example_asset(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the example GLB to ``path`` (atomically; never over an existing file unless ``overwrite``)."""
    data = build_example_scene().export(file_type="glb")
    return save_bytes(Path(path), data if isinstance(data, bytes) else io.BytesIO(data).getvalue(), overwrite=overwrite)
