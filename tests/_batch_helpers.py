"""Helpers of the batch tests (tests/batch): a catalogue of three small multi-part assets, fast settings, output hashes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

PROMPTS = ["a <body> with a golden <top>", "a <body> made of wood"]
# every asset is cut into the same two components, so the same prompts fit all of them
COMPONENTS = {"default": "body: *",
              "assets": {"figure.glb": "top: hat; body: *", "lamp": "top: top; body: *",
                         "mushroom.glb": {"components": "top: cap; body: *"}}}
# the bookkeeping files of a run (they hold times and worker ids); everything else must be identical across runs
BOOKKEEPING = {"done.json", "manifest.json", "report.md", "report.csv", "worker.json"}


def fast_settings(**changes):
    from dreamedit3d_core.batch import BatchSettings

    values = dict(resolution=64, ti_steps=2, ft_steps=2, checkpoint_every=1, steps=2, grid=32, texture_size=64)
    values.update(changes)
    return BatchSettings(**values)


def _scene(parts):
    import trimesh

    scene = trimesh.Scene()
    for name, mesh, rgb in parts:
        material = trimesh.visual.material.PBRMaterial(baseColorFactor=[*rgb, 255])
        mesh.visual = trimesh.visual.TextureVisuals(material=material)
        scene.add_geometry(mesh, node_name=name, geom_name=name)
    return scene


def write_catalogue(folder: Path) -> Path:
    """figure.glb (the pack's example: body, head, hat, nose), lamp.glb (base, top), mushroom.glb (stem, cap)."""
    import trimesh

    from dreamedit3d_core.testing.examples import write_example_asset

    folder.mkdir(parents=True, exist_ok=True)
    write_example_asset(folder / "figure.glb")
    top = trimesh.creation.icosphere(subdivisions=2, radius=0.35)
    top.apply_translation((0, 0.6, 0))
    _scene([("base", trimesh.creation.box((0.8, 0.6, 0.6)), (200, 60, 60)),
            ("top", top, (60, 60, 200))]).export(folder / "lamp.glb")
    cap = trimesh.creation.cone(radius=0.5, height=0.4, sections=16)
    cap.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, (1, 0, 0)))
    cap.apply_translation((0, 0.4, 0))
    _scene([("stem", trimesh.creation.cylinder(radius=0.15, height=0.8, sections=12), (230, 220, 200)),
            ("cap", cap, (180, 30, 30))]).export(folder / "mushroom.glb")
    return folder


def output_hashes(root: Path) -> dict:
    """{relative path: sha256} of every output file of a batch folder except its bookkeeping files."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in BOOKKEEPING}
