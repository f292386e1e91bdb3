"""Load GLB / glTF / OBJ / PLY files into a normalised :class:`~dreamedit3d_core.types.MeshAsset`.

trimesh reads the formats (always ``process=False``, so vertex order, UVs and parts stay as stored); this module adds what a
server-side loader of untrusted files needs and trimesh does not do: safety checks made *before* trimesh resolves anything
(glTF buffer/image URIs and OBJ material files must stay inside the asset's folder; texture headers are checked against a pixel
limit; a GLB's binary header must match its size), one-line :class:`~dreamedit3d_core.errors.AssetError` messages naming the
file, unique part names, and the normalisation MVDream expects.

Conventions:

* Orientation: every format is read as glTF defines it, **+Y up and the asset's front facing +Z** (OBJ and PLY have no standard:
  we assume the same; Blender's default OBJ export, "-Z forward, Y up", needs ``front_axis="-z"``). The asset is rotated so
  that its front faces **+x** (MVDream's front view camera, azimuth 90) and its up stays +y.
* Size: the rotated bounding box is centred on the origin and scaled uniformly so its longest side is 1 (the cube
  ``[-0.5, 0.5]^3``, ``cameras.OBJECT_HALF_EXTENT``). The 4x4 applied is kept in ``MeshAsset.source_frame``
  (:class:`~dreamedit3d_core.geometry.SourceFrame`), which ``render_views`` carries into the views so lifted meshes can be
  written back in the file's own coordinates.
* Colour: base colour factor (glTF ``baseColorFactor``, MTL ``Kd``) x vertex colour x base-colour texture, taken as stored
  (no sRGB/linear conversion); alpha channels are ignored. A part without material gets :data:`DEFAULT_BASE_COLOR`.
* Scene graph: every node's world transform is applied to its mesh (an instanced mesh becomes one part per node); a
  node that mirrors (negative determinant) has its triangles' winding reversed, as glTF specifies, so faces stay
  outward; each part keeps only the vertices its faces use. Normalized integer positions and UVs (KHR_mesh_quantization)
  are dequantised as glTF specifies.
* Parts: one per scene-graph node instance (glTF), per OBJ ``o``/``g`` group, or the whole file (PLY). Names are the glTF node
  names; unnamed glTF nodes use the material name of their primitive or the mesh name; duplicates get ``_1``, ``_2`` suffixes
  (unique without regard to case, since components match names case-insensitively).
* Nothing is ever written anywhere: files are read into memory and trimesh reads companions only through a read-only resolver.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import struct
import urllib.parse
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .errors import AssetError
from .geometry import SourceFrame, axes_rotation
from .types import MeshAsset

SUPPORTED_SUFFIXES = (".glb", ".gltf", ".obj", ".ply")
#: Largest texture accepted, in pixels (8192 x 8192); larger images are refused as possible decompression bombs.
MAX_TEXTURE_PIXELS = 8192 * 8192
#: Largest triangle count accepted by default (rendering is chunked; memory grows about 0.3 KB per face).
DEFAULT_MAX_FACES = 5_000_000
#: Colour of parts that carry no material, vertex colour or texture (light grey: visible on white and grey backgrounds).
DEFAULT_BASE_COLOR = (0.7, 0.7, 0.7)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tga", ".tif", ".tiff", ".webp", ".gif")


def _fail(path: Path, problem: str) -> AssetError:
    return AssetError(f"{path}: {problem}")


# --------------------------------------------------------------------------------------------------------------------------
# safety checks before trimesh sees the file


def _inside(folder: Path, name: str, path: Path, what: str) -> Path:
    """Resolve a companion file name relative to ``folder``; refuse anything that leaves it."""
    clean = urllib.parse.unquote(name).replace("\\", "/")
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", clean) or clean.startswith("/"):
        raise _fail(path, f"{what} '{name}' is an absolute path or URL; refused (keep companions in the asset's folder)")
    target = (folder / clean).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise _fail(path, f"{what} '{name}' points outside the asset's folder (path traversal); refused")
    return target


def _check_image_header(data: bytes, path: Path, what: str, max_pixels: int) -> None:
    from PIL import Image

    try:
        with warnings.catch_warnings():  # PIL warns between its limit and twice it; we decide below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
    except Image.DecompressionBombError:
        raise _fail(path, f"{what} is a decompression bomb (over PIL's pixel limit); refused") from None
    except Exception as exc:
        raise _fail(path, f"{what} is not a readable image ({type(exc).__name__}: {exc})") from None
    if w * h > max_pixels:
        raise _fail(path, f"{what} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                          f"(decompression-bomb guard); downscale the texture")


class _ReadOnlyResolver:
    """trimesh resolver confined to the asset's folder: reads only, normalises Windows ``\\`` separators."""

    def __init__(self, folder: Path, path: Path, max_pixels: int, missing_ok: bool = False):
        self.folder, self.path, self.max_pixels, self.missing_ok = folder, path, max_pixels, missing_ok
        self.file_name = path.name
        self.problems: list[str] = []  # trimesh swallows resolver errors: we re-raise them after loading

    def get(self, name: str) -> bytes:
        try:
            target = _inside(self.folder, name, self.path, "referenced file")
            if not target.is_file():
                if self.missing_ok:  # an OBJ without its .mtl or a texture still has its geometry
                    warnings.warn(f"{self.path}: referenced file '{name}' is missing; loading without it", stacklevel=4)
                    raise KeyError(name)
                raise _fail(self.path, f"referenced file '{name}' is missing")
            data = target.read_bytes()
            if target.suffix.lower() in _IMAGE_SUFFIXES:
                _check_image_header(data, self.path, f"texture '{name}'", self.max_pixels)
            return data
        except AssetError as exc:
            self.problems.append(str(exc))
            raise KeyError(name) from None

    __getitem__ = get

    def namespaced(self, namespace: str) -> "_ReadOnlyResolver":
        return self  # names are always resolved from the asset's folder

    def keys(self):
        return iter(())

    def write(self, name, data):  # never write next to a user's asset
        raise AssetError(f"{self.path}: refusing to write '{name}' next to the asset")


def split_glb(data: bytes, path: Path) -> tuple[dict, bytes]:
    """A binary glTF's two chunks: (its JSON, parsed; its BIN chunk, b"" without one), the container checked first.

    Raises:
        AssetError: ``path: <problem>`` for a file that is not a glTF 2.0 binary, is truncated, or whose JSON is corrupt.
    """
    if len(data) < 20:
        raise _fail(path, f"is not a GLB file (not a binary glTF): only {len(data)} bytes")
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    if magic != b"glTF":
        raise _fail(path, "is not a GLB file (not a binary glTF: no 'glTF' magic bytes); is it a .gltf text file or "
                          "another format?")
    if version != 2:
        raise _fail(path, f"is a glTF {version} binary; only glTF 2.0 is supported")
    if length != len(data):
        raise _fail(path, f"is truncated or corrupt: its header says {length} bytes, the file has {len(data)}")
    chunk_len, chunk_type = struct.unpack_from("<I4s", data, 12)
    if chunk_type != b"JSON" or 20 + chunk_len > len(data):
        raise _fail(path, "is corrupt: the first GLB chunk is not a complete JSON chunk")
    try:
        tree = json.loads(data[20:20 + chunk_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"is corrupt: its JSON chunk does not parse ({exc})") from None
    binary = b""
    offset = 20 + ((chunk_len + 3) // 4) * 4
    if offset + 8 <= len(data):
        bin_len, bin_type = struct.unpack_from("<I4s", data, offset)
        if bin_type == b"BIN\x00":
            if offset + 8 + bin_len > len(data):
                raise _fail(path, "is truncated: its binary chunk ends past the end of the file")
            binary = data[offset + 8:offset + 8 + bin_len]
    return tree, binary


def pack_glb(tree: dict, binary: bytes) -> bytes:
    """A GLB container of ``tree`` (JSON) and ``binary`` (its BIN chunk, omitted when empty): :func:`split_glb`'s
    inverse."""
    text = json.dumps(tree).encode("utf-8")
    text += b" " * (-len(text) % 4)
    chunks = struct.pack("<I4s", len(text), b"JSON") + text
    if binary:
        binary = binary + b"\0" * (-len(binary) % 4)
        chunks += struct.pack("<I4s", len(binary), b"BIN\x00") + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks


def _check_gltf(tree: dict, binary: bytes, path: Path, max_pixels: int) -> None:
    """URIs stay in the folder and exist; every image header is within the pixel limit."""
    if not isinstance(tree, dict):
        raise _fail(path, "is corrupt: the glTF JSON is not an object")
    folder = path.parent
    for kind in ("buffers", "images"):
        for i, item in enumerate(tree.get(kind, []) or []):
            uri = item.get("uri") if isinstance(item, dict) else None
            if not uri or uri.startswith("data:"):
                continue
            what = f"{kind[:-1]} {i} URI"
            target = _inside(folder, uri, path, what)
            if not target.is_file():
                raise _fail(path, f"{what} '{uri}' is missing (expected at {target})")
            if kind == "images":
                _check_image_header(target.read_bytes(), path, f"texture '{uri}'", max_pixels)
    required = set(tree.get("extensionsRequired", []) or [])
    if "KHR_draco_mesh_compression" in required:
        try:
            import DracoPy  # noqa: F401  (trimesh decodes Draco with it)
        except ImportError:
            raise _fail(path, "is Draco-compressed (KHR_draco_mesh_compression): pip install DracoPy, or re-export it "
                              "without compression") from None
    if "EXT_meshopt_compression" in required:
        raise _fail(path, "is meshopt-compressed (EXT_meshopt_compression), which cannot be decoded here; re-export it "
                          "without compression")
    for i, img in enumerate(tree.get("images", []) or []):
        uri = img.get("uri", "") if isinstance(img, dict) else ""
        if uri.startswith("data:") and "," in uri:
            try:
                blob = base64.b64decode(uri.split(",", 1)[1], validate=False)
            except ValueError:
                raise _fail(path, f"is corrupt: image {i} has a malformed data: URI") from None
            _check_image_header(blob, path, f"embedded texture {i}", max_pixels)
    views = tree.get("bufferViews", []) or []
    for i, img in enumerate(tree.get("images", []) or []):
        if isinstance(img, dict) and "bufferView" in img and binary:
            try:
                view = views[img["bufferView"]]
                start = int(view.get("byteOffset", 0))
                blob = binary[start:start + int(view["byteLength"])]
            except (IndexError, KeyError, TypeError, ValueError):
                raise _fail(path, f"is corrupt: image {i} refers to a missing bufferView") from None
            _check_image_header(blob, path, f"embedded texture {i}", max_pixels)


# --------------------------------------------------------------------------------------------------------------------------
# scene -> arrays


def _texture_transforms(tree: dict) -> dict:
    """KHR_texture_transform of each material's base-colour texture, as ``{material name: uv -> uv}``.

    trimesh does not apply the extension. Per the spec the transform acts on glTF UVs (v down):
    ``uv' = T(offset) R(rotation) S(scale) uv``; trimesh's UVs have v up, so v is flipped around it.
    """
    out = {}
    for material in tree.get("materials", []) or []:
        if not isinstance(material, dict):
            continue
        info = (material.get("pbrMetallicRoughness") or {}).get("baseColorTexture") or {}
        ext = (info.get("extensions") or {}).get("KHR_texture_transform")
        if not ext or not material.get("name"):
            continue
        off = np.asarray(ext.get("offset", [0.0, 0.0]), np.float64)
        sc = np.asarray(ext.get("scale", [1.0, 1.0]), np.float64)
        rot = float(ext.get("rotation", 0.0))
        if not off.any() and (sc == 1).all() and rot == 0.0:
            continue
        c, s_ = np.cos(rot), np.sin(rot)
        matrix = np.array([[c, s_], [-s_, c]]) @ np.diag(sc)

        def apply(uv, matrix=matrix, off=off):
            gl = np.stack([uv[:, 0], 1.0 - uv[:, 1]], 1) @ matrix.T + off
            return np.stack([gl[:, 0], 1.0 - gl[:, 1]], 1)

        out[material["name"]] = apply
    return out


def _rgb(value, default=(1.0, 1.0, 1.0)) -> np.ndarray:
    if value is None:
        return np.asarray(default, np.float64)
    arr = np.asarray(value, np.float64).reshape(-1)[:3]
    if np.asarray(value).dtype == np.uint8 or arr.max() > 1.0:
        arr = arr / 255.0
    return np.clip(arr, 0.0, 1.0)


def _colour_array(colours) -> np.ndarray:
    """Per-vertex RGB in 0..1 from glTF COLOR_0 as trimesh keeps it (float, or normalised uint8/uint16)."""
    arr = np.asarray(colours)
    rgb = arr.reshape(len(arr), -1)[:, :3].astype(np.float64)
    if np.issubdtype(arr.dtype, np.integer):
        rgb = rgb / float(np.iinfo(arr.dtype).max)
    return np.clip(rgb, 0.0, 1.0)


def _material_colour_and_image(material):
    """(base colour RGB in 0..1, PIL image or None) of a trimesh material."""
    if material is None:
        return np.asarray(DEFAULT_BASE_COLOR), None
    if hasattr(material, "baseColorFactor") or hasattr(material, "baseColorTexture"):  # PBRMaterial
        return _rgb(getattr(material, "baseColorFactor", None)), getattr(material, "baseColorTexture", None)
    return _rgb(getattr(material, "diffuse", None), DEFAULT_BASE_COLOR), getattr(material, "image", None)


def _unique(name: str, taken: set) -> str:
    base, k, out = name or "part", 0, name or "part"
    while out.lower() in taken:
        k += 1
        out = f"{base}_{k}"
    taken.add(out.lower())
    return out


def _part_name(node: str, geom_name: str, geom, named_nodes: dict, fmt: str, path: Path) -> str:
    if fmt in (".glb", ".gltf"):
        if node in named_nodes:
            return node
        material = getattr(getattr(geom, "visual", None), "material", None)
        if geom.metadata.get("from_gltf_primitive") and getattr(material, "name", None):
            return str(material.name)
        return re.sub(r"_\d+$", "", geom_name) if geom.metadata.get("from_gltf_primitive") else geom_name
    if geom_name == path.name or re.fullmatch(r"geometry(_\d+)?", geom_name) or geom_name.startswith(path.name + "_"):
        return path.stem  # trimesh's stand-in names for an OBJ/PLY without groups
    return geom_name


def _scene_parts(scene, path: Path, named_nodes: dict, fmt: str, texture_override, has_materials: bool = True,
                 uv_transforms: Optional[dict] = None):
    """Flatten a trimesh scene (node transforms applied) into per-part numpy arrays."""
    import trimesh

    instances = [(node, *scene.graph[node]) for node in scene.graph.nodes_geometry]
    if fmt in (".obj", ".ply"):  # one instance per geometry: keep the file's order of o/g groups (trimesh reverses it)
        fallback = {name: len(named_nodes) + i for i, name in enumerate(reversed(list(scene.geometry)))}

        def file_order(item):
            geom = item[2]
            if geom in named_nodes:
                return named_nodes[geom]
            hits = [i for n, i in named_nodes.items() if geom.startswith(n + "_") or geom.endswith("_" + n)]
            return min(hits) if hits else fallback.get(geom, len(fallback) + len(named_nodes))

        instances.sort(key=file_order)
    else:  # named glTF nodes in file order (trimesh's graph order is not), unnamed ones after them as trimesh lists them
        instances.sort(key=lambda item: named_nodes.get(item[0], len(named_nodes)))
    if not instances:  # e.g. a glTF without a scene: take the meshes as stored
        instances = [(name, np.eye(4), name) for name in scene.geometry]
    parts, taken = [], set()
    for node, transform, geom_name in instances:
        geom = scene.geometry[geom_name]
        if not isinstance(geom, trimesh.Trimesh):
            continue  # point clouds, paths: not renderable surfaces
        faces = np.asarray(geom.faces, np.int64).reshape(-1, 3)
        vertices = np.asarray(geom.vertices, np.float64).reshape(-1, 3)
        linear = np.asarray(transform, np.float64)[:3, :3]
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/inf coordinates are reported in _assemble
            vertices = vertices @ linear.T + np.asarray(transform)[:3, 3]
            if np.linalg.det(linear) < 0:  # a mirroring node (negative scale): glTF reverses the winding, so do we
                faces = faces[:, ::-1].copy()
        visual = geom.visual
        uv, image, vcol = None, None, None
        base = np.asarray(DEFAULT_BASE_COLOR, np.float64)
        face_rgb = None
        if visual is not None and visual.kind is not None and getattr(visual, "vertex_attributes", None) is not None \
                and "color" in visual.vertex_attributes and len(visual.vertex_attributes["color"]) == len(vertices):
            vcol = _colour_array(visual.vertex_attributes["color"])
        if isinstance(visual, trimesh.visual.TextureVisuals):
            base, image = _material_colour_and_image(visual.material if has_materials else None)
            if visual.uv is not None and len(visual.uv) == len(vertices):
                uv = np.asarray(visual.uv, np.float64)[:, :2]
                transform_uv = (uv_transforms or {}).get(getattr(visual.material, "name", None))
                if transform_uv is not None and image is not None:
                    uv = transform_uv(uv)
            if image is None and texture_override is not None and uv is not None:
                image = texture_override
                base = np.ones(3)
        elif isinstance(visual, trimesh.visual.ColorVisuals) and visual.defined:
            if visual.kind == "vertex":
                vcol = np.asarray(visual.vertex_colors, np.float64)[:, :3] / 255.0
            elif visual.kind == "face":
                face_rgb = np.asarray(visual.face_colors, np.float64)[:, :3] / 255.0
        if image is not None and uv is None:
            image = None  # a texture without UVs cannot be sampled
        name = _unique(_part_name(node, geom_name, geom, named_nodes, fmt, path), taken)
        face_base = np.broadcast_to(base, (len(faces), 3)).copy() if face_rgb is None else face_rgb * base
        vertices, faces, uv, vcol = _referenced_only(vertices, faces, uv, vcol)
        parts.append(dict(name=name, vertices=vertices, faces=faces, uv=uv, vcol=vcol, image=image, face_base=face_base))
    return parts


def _referenced_only(vertices: np.ndarray, faces: np.ndarray, *per_vertex):
    """(vertices, faces, *per_vertex) keeping only the vertices the faces use, in their order.

    A glTF primitive may index into a POSITION accessor it shares with other meshes; trimesh keeps the whole accessor
    for each, so every instance would also carry the other meshes' vertices, moved by its own node transform: stray points
    that stretch the bounding box the asset is normalised by (and multiply the vertex count). Faces indexing outside the
    vertices are left as they are, for ``_assemble`` to report.
    """
    if len(faces) == 0 or faces.min() < 0 or faces.max() >= len(vertices):
        return (vertices, faces, *per_vertex)
    used = np.unique(faces)
    if len(used) == len(vertices):
        return (vertices, faces, *per_vertex)
    new_index = np.full(len(vertices), -1, np.int64)
    new_index[used] = np.arange(len(used))
    return (vertices[used], new_index[faces], *(None if a is None else a[used] for a in per_vertex))


def orientation_matrix(front_axis: str = "+z", up_axis: str = "+y") -> np.ndarray:
    """Rotation [3, 3] taking the asset's front to +x and its up to +y (a proper rotation, det +1;
    ``geometry.axes_rotation`` as numpy)."""
    return axes_rotation(front_axis, up_axis).numpy()


def normalising_transform(vertices: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """The 4x4 (float64) that rotates ``vertices`` [N, 3], centres their bounding box on the origin and scales its
    longest side to 1: the normalisation every asset gets (``MeshAsset.source_frame.to_internal``)."""
    rotated = vertices @ rotation.T
    lo, hi = rotated.min(0), rotated.max(0)
    scale = 1.0 / max(float((hi - lo).max()), 1e-12)
    transform = np.eye(4)
    transform[:3, :3] = scale * rotation
    transform[:3, 3] = -scale * (lo + hi) / 2.0
    return transform


def _image_to_tensor(image) -> torch.Tensor:
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr))


def _read_texture_override(texture, path: Path, max_pixels: int, flip_y: bool = False):
    from PIL import Image

    tex_path = Path(texture)
    if not tex_path.is_file():
        raise _fail(path, f"texture '{texture}' given for it does not exist")
    data = tex_path.read_bytes()
    _check_image_header(data, tex_path, "texture", max_pixels)
    image = Image.open(io.BytesIO(data))
    return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM) if flip_y else image


def load_asset(
    path: Union[str, os.PathLike],
    front_axis: str = "+z",
    up_axis: str = "+y",
    texture: Optional[Union[str, os.PathLike]] = None,
    texture_flip_y: bool = False,
    max_faces: int = DEFAULT_MAX_FACES,
    max_texture_pixels: int = MAX_TEXTURE_PIXELS,
    device: Optional[Union[str, torch.device]] = None,
) -> MeshAsset:
    """Load a 3D asset, flatten its scene into named parts, and normalise it for MVDream's four views.

    Args:
        path: a ``.glb``, ``.gltf`` (+ ``.bin`` + textures), ``.obj`` (+ ``.mtl`` + textures) or ``.ply`` file.
        front_axis, up_axis: the asset's own front and up directions in its file coordinates ("+x", "-z", ...);
            glTF's convention "+z"/"+y" is the default for every format.
        texture: an image used as base-colour texture for parts that have UVs but no texture of their own (an OBJ
            without MTL such as ``spot.obj``, a scan whose colour map ships separately).
        texture_flip_y: flip ``texture`` upside down first, for maps made for a v-down convention (three.js'
            default ``flipY``; e.g. ``lee_perry_smith_color.jpg`` for ``lee_perry_smith_head.glb``).
        max_faces: refuse assets with more triangles than this (a clear limit instead of running out of memory).
        max_texture_pixels: refuse textures with more pixels than this (decompression-bomb guard).
        device: where the returned tensors live (default CPU).

    Returns:
        MeshAsset with vertices in ``[-0.5, 0.5]^3`` (longest side exactly 1, centred), front facing +x.

    Raises:
        AssetError: the file is missing, unsupported, corrupt, unsafe (path traversal, decompression bomb), has no
            triangles, has NaN/inf coordinates, only degenerate triangles, or too many faces. One line, naming the file.
        ConfigError: bad ``front_axis``/``up_axis``.
    """
    path = Path(path).expanduser()
    rotation = orientation_matrix(front_axis, up_axis)
    data = _read_asset_bytes(path)
    suffix = path.suffix.lower()
    if suffix in (".glb", ".gltf"):
        named_nodes, uv_transforms, data = _gltf_layout(data, path, max_texture_pixels)
        trimesh_options, has_materials = {}, True
    elif suffix == ".obj":
        named_nodes, trimesh_options, has_materials = _obj_layout(data)
        uv_transforms = {}
    else:
        named_nodes, uv_transforms, trimesh_options, has_materials = {}, {}, {}, True
    texture_override = None
    if texture is not None:
        texture_override = _read_texture_override(texture, path, max_texture_pixels, texture_flip_y)
    scene = _load_scene(data, path, max_texture_pixels, trimesh_options)
    parts = _scene_parts(scene, path, named_nodes, suffix, texture_override, has_materials, uv_transforms)
    return _assemble(parts, path, rotation, max_faces, device)


def _read_asset_bytes(path: Path) -> bytes:
    """The file's bytes, after checking its type and that it exists and is not empty."""
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise _fail(path, f"unsupported file type '{path.suffix}'; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    if not path.is_file():
        raise _fail(path, "file not found" if not path.exists() else "is not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror})") from None
    if not data:
        raise _fail(path, "is empty (0 bytes)")
    return data


#: glTF integer component types a ``normalized`` accessor maps to [-1, 1] / [0, 1]: (numpy type, divisor).
_NORMALIZED_TYPES = {5120: (np.int8, 127.0), 5121: (np.uint8, 255.0), 5122: (np.int16, 32767.0),
                     5123: (np.uint16, 65535.0)}
_ACCESSOR_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def _buffer_bytes(tree: dict, binary: bytes, index: int, path: Path) -> bytes:
    """The bytes of glTF buffer ``index``: the GLB's BIN chunk, a data: URI, or a file in the asset's folder."""
    uri = (tree["buffers"][index] or {}).get("uri")
    if not uri:
        return binary
    if uri.startswith("data:"):
        return base64.b64decode(uri.split(",", 1)[1])
    return _inside(path.parent, uri, path, f"buffer {index} URI").read_bytes()


def _dequantised(tree: dict, binary: bytes, path: Path) -> bool:
    """Rewrite ``tree`` so normalized integer POSITION and TEXCOORD accessors (KHR_mesh_quantization, e.g. gltfpack
    with normalized positions or texture coordinates) become float32 ones in an added data: buffer; True if any did.

    trimesh reads such accessors as raw integers (positions 65535 times too large, UVs far outside 0..1); glTF maps them
    to [0, 1] (unsigned) or [-1, 1] (signed) as ``max(c / (2^(bits-1) - 1), -1)``.
    """
    wanted = {index for mesh in tree.get("meshes", []) or [] for prim in (mesh or {}).get("primitives", []) or []
              for name, index in ((prim or {}).get("attributes") or {}).items()
              if name == "POSITION" or name.startswith("TEXCOORD_")}
    blob = bytearray()
    try:
        for index in sorted(wanted):
            acc = tree["accessors"][index]
            if not acc.get("normalized") or acc.get("componentType") not in _NORMALIZED_TYPES or "bufferView" not in acc \
                    or acc.get("sparse"):
                continue
            kind, divisor = _NORMALIZED_TYPES[acc["componentType"]]
            width, count = _ACCESSOR_WIDTH[acc["type"]], int(acc["count"])
            view = tree["bufferViews"][acc["bufferView"]]
            raw = _buffer_bytes(tree, binary, int(view.get("buffer", 0)), path)
            start = int(view.get("byteOffset", 0)) + int(acc.get("byteOffset", 0))
            item = np.dtype(kind).itemsize * width
            stride = int(view.get("byteStride", 0)) or item
            rows = np.frombuffer(raw, np.uint8, count=(count - 1) * stride + item if count else 0, offset=start)
            rows = np.lib.stride_tricks.as_strided(rows, (count, item), (stride, 1)) if count else rows.reshape(0, item)
            values = np.maximum(np.ascontiguousarray(rows).view(kind).reshape(count, width) / divisor, -1.0)
            values = values.astype(np.float32)
            acc.update(componentType=5126, bufferView=len(tree["bufferViews"]), byteOffset=0)
            acc.pop("normalized")
            if acc["type"] == "VEC3" and count:
                acc.update(min=values.min(0).tolist(), max=values.max(0).tolist())
            tree["bufferViews"].append({"buffer": len(tree["buffers"]), "byteOffset": len(blob),
                                        "byteLength": values.nbytes})
            blob += values.tobytes()
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise _fail(path, f"is corrupt: a quantized accessor cannot be read ({type(exc).__name__}: {exc})") from None
    if not blob:
        return False
    tree["buffers"].append({"byteLength": len(blob),
                            "uri": "data:application/octet-stream;base64," + base64.b64encode(bytes(blob)).decode()})
    return True


def _gltf_layout(data: bytes, path: Path, max_texture_pixels: int) -> tuple[dict, dict, bytes]:
    """Check a GLB/glTF's JSON before trimesh sees it; return (named node -> index in file order, UV transforms, the
    file's bytes for trimesh: rewritten when normalized integer accessors had to be dequantised)."""
    if path.suffix.lower() == ".glb":
        tree, binary = split_glb(data, path)
    else:
        try:
            tree, binary = json.loads(data.decode("utf-8")), b""
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _fail(path, f"is corrupt: the glTF JSON does not parse ({exc})") from None
    _check_gltf(tree, binary, path, max_texture_pixels)
    named_nodes: dict = {}
    for i, node in enumerate(tree.get("nodes", []) or []):
        if isinstance(node, dict) and node.get("name") and node["name"] not in named_nodes:
            named_nodes[node["name"]] = i
    if not tree.get("meshes"):
        raise _fail(path, "contains no meshes")
    if _dequantised(tree, binary, path):
        data = pack_glb(tree, binary) if path.suffix.lower() == ".glb" else json.dumps(tree).encode("utf-8")
    return named_nodes, _texture_transforms(tree), data


def _obj_layout(data: bytes) -> tuple[dict, dict, bool]:
    """An OBJ's group names in file order, trimesh's options to split it into them, and whether it names materials."""
    text = data.decode("utf-8", errors="replace")
    named_nodes: dict = {}
    for m in re.finditer(r"^[ \t]*[og][ \t]+(\S.*?)[ \t]*$", text, flags=re.M):  # group names, in file order
        named_nodes.setdefault(m.group(1), len(named_nodes))
    # without mtllib trimesh would invent a dark grey material with a 2x2 placeholder image
    has_materials = bool(re.search(r"^\s*mtllib\s", text, flags=re.M))
    return named_nodes, dict(split_objects=True, split_groups=True, group_material=False), has_materials


def _load_scene(data: bytes, path: Path, max_texture_pixels: int, trimesh_options: dict):
    """trimesh's scene of the file (``process=False``), reading companions only through the read-only resolver."""
    import trimesh

    suffix = path.suffix.lower()
    resolver = _ReadOnlyResolver(path.parent.resolve(), path, max_texture_pixels, missing_ok=suffix == ".obj")
    try:
        scene = trimesh.load(io.BytesIO(data), file_type=suffix[1:], resolver=resolver, force="scene",
                             process=False, **trimesh_options)
    except AssetError:
        raise
    except Exception as exc:
        if resolver.problems:
            raise AssetError(resolver.problems[0]) from None
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(path, f"is corrupt or not a valid {suffix[1:].upper()} file ({type(exc).__name__}: {msg})") from None
    if resolver.problems:
        raise AssetError(resolver.problems[0])
    return scene


def _assemble(parts: list, path: Path, rotation: np.ndarray, max_faces: int, device) -> MeshAsset:
    """Concatenate parts, validate, normalise, convert to tensors."""
    parts = [p for p in parts if len(p["faces"])]
    n_faces = sum(len(p["faces"]) for p in parts)
    if n_faces == 0:
        raise _fail(path, "contains no triangles (empty mesh or point cloud)")
    if n_faces > max_faces:
        raise _fail(path, f"has {n_faces} triangles, over the limit of {max_faces}; decimate it first or raise max_faces")
    vertices = np.concatenate([p["vertices"] for p in parts])
    if not np.isfinite(vertices).all():
        bad = int((~np.isfinite(vertices)).any(1).sum())
        raise _fail(path, f"has {bad} vertices with NaN or infinite coordinates")
    offsets = np.cumsum([0] + [len(p["vertices"]) for p in parts])[:-1]
    faces = np.concatenate([p["faces"] + o for p, o in zip(parts, offsets)])
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise _fail(path, "is corrupt: faces index vertices that do not exist")
    tri = vertices[faces]
    area2 = np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    if not (area2 > 0).any():
        raise _fail(path, f"all {len(faces)} triangles have zero area (degenerate): there is no surface to render")
    normalisation = normalising_transform(vertices, rotation)  # orient, centre the bounding box, longest side 1
    normalised = vertices @ normalisation[:3, :3].T + normalisation[:3, 3]

    has_uv = any(p["uv"] is not None for p in parts)
    has_vc = any(p["vcol"] is not None for p in parts)
    uv = np.concatenate([p["uv"] if p["uv"] is not None else np.zeros((len(p["vertices"]), 2)) for p in parts]) \
        if has_uv else None
    vcol = np.concatenate([p["vcol"] if p["vcol"] is not None else np.ones((len(p["vertices"]), 3)) for p in parts]) \
        if has_vc else None
    textures, tex_index, face_tex = [], {}, []
    for p in parts:
        if p["image"] is None:
            face_tex.append(np.full(len(p["faces"]), -1, np.int64))
            continue
        key = id(p["image"])
        if key not in tex_index:
            tex_index[key] = len(textures)
            textures.append(_image_to_tensor(p["image"]))
        face_tex.append(np.full(len(p["faces"]), tex_index[key], np.int64))
    part_ids = np.concatenate([np.full(len(p["faces"]), i, np.int64) for i, p in enumerate(parts)])

    def t(a, dtype=torch.float32):
        return None if a is None else torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

    return MeshAsset(
        vertices=t(normalised),
        faces=t(faces, torch.int64),
        part_ids=t(part_ids, torch.int64),
        part_names=tuple(p["name"] for p in parts),
        face_base_color=t(np.concatenate([p["face_base"] for p in parts])),
        uv=t(uv),
        vertex_colors=t(vcol),
        face_textures=t(np.concatenate(face_tex), torch.int64) if textures else None,
        textures=tuple(x.to(device) if device is not None else x for x in textures),
        source=str(path),
        source_frame=SourceFrame(torch.as_tensor(normalisation, dtype=torch.float64)),
    )


def asset_from_arrays(
    vertices, faces, part_ids=None, part_names=None, face_base_color=None, uv=None, vertex_colors=None,
    textures=(), face_textures=None, front_axis: str = "+z", up_axis: str = "+y", normalise: bool = True,
) -> MeshAsset:
    """Build a MeshAsset from in-memory arrays (tests, the lifting round trip), normalised like :func:`load_asset`.

    With ``normalise=False`` the vertices are kept as given (already in the normalised frame).
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    m = len(f)
    pid = np.zeros(m, np.int64) if part_ids is None else np.asarray(part_ids, np.int64)
    names = tuple(part_names) if part_names is not None else tuple(f"part{i}" for i in range(int(pid.max()) + 1 if m else 1))
    base = np.broadcast_to(np.asarray(DEFAULT_BASE_COLOR if face_base_color is None else face_base_color, np.float64),
                           (m, 3))
    if normalise:
        if not np.isfinite(v).all():
            raise AssetError("<arrays>: has vertices with NaN or infinite coordinates")
        norm = normalising_transform(v, orientation_matrix(front_axis, up_axis))
        v = v @ norm[:3, :3].T + norm[:3, 3]
    else:
        norm = np.eye(4)
    f32 = lambda a: None if a is None else torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    return MeshAsset(
        vertices=f32(v), faces=torch.as_tensor(f), part_ids=torch.as_tensor(pid), part_names=names,
        face_base_color=f32(base), uv=f32(uv), vertex_colors=f32(vertex_colors),
        face_textures=None if face_textures is None else torch.as_tensor(np.asarray(face_textures, np.int64)),
        textures=tuple(torch.as_tensor(x, dtype=torch.float32) for x in textures),
        source_frame=SourceFrame(torch.as_tensor(norm, dtype=torch.float64)),
    )
