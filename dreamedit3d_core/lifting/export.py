"""Writing a :class:`LiftedMesh` to GLB or OBJ+MTL+PNG, and reading a GLB's provenance back.

Files are written atomically and never over an existing file (``storage.py``): a taken name gets a ``_00001`` suffix.
Provenance (prompt, seed, tokens, ... as the caller passes them) goes into the GLB's ``asset.extras``, where ComfyUI's own
SaveGLB puts its prompt too.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..assets import split_glb
from ..errors import AssetError, ConfigError, LiftError
from ..geometry import SourceFrame, transform_points
from ..storage import atomic_write, free_stem, save_bytes, save_new_bytes
from ..types import LiftedMesh, MeshAsset

FORMATS = ("glb", "obj")
#: ``frame`` values of :func:`export_mesh`: the mesh's recorded output frame (the source's coordinates), or as lifted.
FRAMES = ("output", "internal")
#: Key under which the lift's own numbers are stored in the extras (next to the caller's).
LIFT_STATS_KEY = "dreamedit3d_lift"


def output_frame(source: Optional[MeshAsset] = None, frame: Optional[SourceFrame] = None) -> np.ndarray:
    """The 4x4 (float64) from our internal frame to the frame a lift is written in.

    ``frame`` when given (e.g. ``MultiViewRender.source_frame``, which the views carry); else the source asset's own
    frame (the inverse of the normalisation ``load_asset`` applied: its axes and units), so the mesh lands on the source
    file's coordinates; without either, glTF's convention (+Y up, front +Z) at the internal unit size.
    """
    if frame is None:
        frame = source.source_frame if source is not None else SourceFrame.gltf_unit()
    return frame.to_source().numpy()


def in_output_frame(mesh: LiftedMesh) -> LiftedMesh:
    """``mesh`` moved into the frame recorded in ``stats["output_frame"]`` by ``lift_to_mesh`` (unchanged if none).

    The moved vertices are float64: a source far from its origin (a georeferenced scan at x = 500 000) keeps its detail,
    which float32 coordinates there would round to a quarter unit. A mirroring transform (negative determinant) also
    reverses the faces' winding, so they stay outward-facing.
    """
    record = mesh.stats.get("output_frame")
    if record is None:
        return mesh
    m = torch.as_tensor(np.asarray(record, np.float64).reshape(4, 4), device=mesh.vertices.device)
    verts = transform_points(m, mesh.vertices.double())
    faces = mesh.faces.flip(1) if float(torch.linalg.det(m[:3, :3])) < 0 else mesh.faces
    stats = {k: v for k, v in mesh.stats.items() if k != "output_frame"}
    stats["frame"] = "output"
    return replace(mesh, vertices=verts, faces=faces, stats=stats)


def _provenance(mesh: LiftedMesh, extras: Optional[dict]) -> dict:
    extras = dict(extras or {})
    stats = {k: v for k, v in mesh.stats.items() if isinstance(v, (int, float, str, bool))}
    extras.setdefault(LIFT_STATS_KEY, stats)
    try:
        json.dumps(extras, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"extras must be JSON-serialisable (strings, numbers, lists, dicts): {err}") from None
    return extras


def _texture_png(mesh: LiftedMesh) -> bytes:
    from PIL import Image

    img = (mesh.texture.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _check_mesh(mesh: LiftedMesh) -> None:
    if not isinstance(mesh, LiftedMesh):
        raise ConfigError(f"export_mesh needs a LiftedMesh, got {type(mesh).__name__}")
    if mesh.faces.shape[0] == 0 or mesh.vertices.shape[0] < 3:
        raise LiftError("the mesh is empty (no faces); nothing was written")
    if (mesh.uv is None) != (mesh.texture is None):
        raise ConfigError("a textured mesh needs both uv and texture")


def _glb_bytes(mesh: LiftedMesh, extras: dict) -> bytes:
    import trimesh
    from PIL import Image
    from trimesh.exchange.gltf import export_glb
    from trimesh.visual import ColorVisuals, TextureVisuals
    from trimesh.visual.material import PBRMaterial

    verts = mesh.vertices.detach().cpu().double().numpy()
    faces = mesh.faces.detach().cpu().numpy()
    # glTF positions are float32: store them around the bounding-box centre and put the centre (a float64 JSON number)
    # in the node's translation, so a mesh far from its origin keeps float32's relative precision of its own size
    centre = (verts.min(0) + verts.max(0)) / 2.0
    tm = trimesh.Trimesh(verts - centre, faces, process=False)
    if mesh.texture is not None:
        png = Image.open(io.BytesIO(_texture_png(mesh)))
        material = PBRMaterial(name="lifted", baseColorTexture=png, metallicFactor=0.0, roughnessFactor=1.0)
        tm.visual = TextureVisuals(uv=mesh.uv.detach().cpu().double().numpy(), material=material)
    elif mesh.vertex_colors is not None:
        rgb = (mesh.vertex_colors.detach().cpu().clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
        tm.visual = ColorVisuals(tm, vertex_colors=np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1))
    scene = trimesh.Scene()
    placement = np.eye(4)
    placement[:3, 3] = centre
    scene.add_geometry(tm, node_name="lifted_mesh", geom_name="lifted_mesh", transform=placement)

    def put_extras(tree: dict) -> None:
        tree.setdefault("asset", {})["extras"] = extras

    return export_glb(scene, tree_postprocessor=put_extras)


def _obj_decimals(verts: np.ndarray) -> int:
    """Decimals that write ``verts`` to 1e-7 of their extent: 6 for a unit-sized mesh, more for a small one in large
    units (a 1 cm part modelled in metres), never fewer than 6."""
    extent = float(np.ptp(verts, axis=0).max()) if len(verts) else 1.0
    return int(np.clip(np.ceil(7.0 - np.log10(max(extent, 1e-12))), 6, 15))


def _obj_text(mesh: LiftedMesh, mtl_name: Optional[str], extras: dict) -> str:
    verts = mesh.vertices.detach().cpu().double().numpy()
    faces = mesh.faces.detach().cpu().numpy() + 1
    d = _obj_decimals(verts)
    lines = ["# written by DreamEdit3D LiftToMesh", "# dreamedit3d-extras: " + json.dumps(extras, separators=(",", ":"))]
    if mtl_name is not None:
        lines += [f"mtllib {mtl_name}", "usemtl lifted"]
        lines += [f"v {x:.{d}f} {y:.{d}f} {z:.{d}f}" for x, y, z in verts]
        lines += [f"vt {u:.6f} {v:.6f}" for u, v in mesh.uv.detach().cpu().double().numpy()]
        lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in faces]
    else:
        cols = mesh.vertex_colors.detach().cpu().double().numpy() if mesh.vertex_colors is not None else None
        if cols is None:
            lines += [f"v {x:.{d}f} {y:.{d}f} {z:.{d}f}" for x, y, z in verts]
        else:
            lines += [f"v {x:.{d}f} {y:.{d}f} {z:.{d}f} {r:.4f} {g:.4f} {b:.4f}" for (x, y, z), (r, g, b) in zip(verts, cols)]
        lines += [f"f {a} {b} {c}" for a, b, c in faces]
    return "\n".join(lines) + "\n"


def export_mesh(mesh: LiftedMesh, path, fmt: str = "glb", extras: Optional[dict] = None, frame: str = "output") -> Path:
    """Write ``mesh`` as a GLB (PBR base-colour texture, or vertex colours) or as OBJ + MTL + PNG.

    By default the file is in the frame ``lift_to_mesh`` recorded: the source asset's own coordinates (so the edit
    opens on top of the original), or glTF's +Y up / front +Z without a source. Precision follows the source: a GLB
    stores its float32 positions around the mesh's bounding-box centre, which is its node's translation; an OBJ writes
    coordinates to 1e-7 of the mesh's extent.

    Args:
        mesh: the lifted mesh.
        path: file path; the suffix is added when missing. A taken name gets ``_00001``, ``_00002``, ...
        fmt: "glb" or "obj".
        extras: JSON-serialisable provenance (prompt, seed, token names, ...) stored in the GLB's ``asset.extras`` (and a
            comment line of the OBJ); the lift's stats are added under ``"dreamedit3d_lift"``.
        frame: "output" (the recorded frame, see above) or "internal" (our MVDream frame, as lifted).

    Returns:
        The path written (the GLB, or the OBJ whose MTL and PNG sit next to it with the same stem).

    Raises:
        ConfigError: unknown format or frame, suffix that contradicts ``fmt``, extras that are not JSON.
        LiftError: an empty mesh (nothing is written).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown mesh format {fmt!r}; valid formats are {list(FORMATS)}")
    if frame not in FRAMES:
        raise ConfigError(f"unknown frame {frame!r}; valid frames are {list(FRAMES)}")
    _check_mesh(mesh)
    mesh = in_output_frame(mesh) if frame == "output" else mesh
    path = Path(path)
    if path.suffix.lower() != f".{fmt}":
        if path.suffix.lower() in (".glb", ".obj", ".gltf", ".ply", ".stl"):
            raise ConfigError(f"path {path.name} ends in {path.suffix} but fmt is {fmt!r}; make them agree")
        path = path.with_name(path.name + f".{fmt}")
    extras = _provenance(mesh, extras)
    if fmt == "glb":
        return save_new_bytes(path, _glb_bytes(mesh, extras))
    stem = free_stem(path.with_suffix(""), (".obj", ".mtl", ".png"))
    textured = mesh.texture is not None
    if textured:
        png_name, mtl_name = stem.name + ".png", stem.name + ".mtl"
        save_bytes(stem.with_name(png_name), _texture_png(mesh))
        mtl = f"newmtl lifted\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {png_name}\n"
        save_bytes(stem.with_name(mtl_name), mtl.encode("utf-8"))
    text = _obj_text(mesh, stem.name + ".mtl" if textured else None, extras)
    return atomic_write(stem.with_name(stem.name + ".obj"), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_glb_json(path) -> dict:
    """The JSON chunk of a binary glTF file (the container parsed by :func:`~dreamedit3d_core.assets.split_glb`).

    Raises:
        AssetError: the file is missing, not a GLB, truncated, or its JSON is not an object.
    """
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path} does not exist")
    tree, _ = split_glb(path.read_bytes(), path)
    if not isinstance(tree, dict):
        raise AssetError(f"{path}: is corrupt: the glTF JSON is not an object")
    return tree


def read_provenance(path) -> dict:
    """The provenance dict stored by :func:`export_mesh` (or ComfyUI's SaveGLB) in a GLB's ``asset.extras``; {} if none.

    For an OBJ written by :func:`export_mesh`, the ``# dreamedit3d-extras:`` comment is read instead.
    """
    path = Path(path)
    if path.suffix.lower() == ".obj":
        if not path.is_file():
            raise AssetError(f"{path} does not exist")
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            for _, line in zip(range(20), f):
                if line.startswith("# dreamedit3d-extras: "):
                    return json.loads(line[len("# dreamedit3d-extras: "):])
        return {}
    extras = read_glb_json(path).get("asset", {}).get("extras", {})
    return extras if isinstance(extras, dict) else {"extras": extras}
