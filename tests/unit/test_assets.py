"""load_asset: every shared asset, normalisation and orientation, part names, and every kind of bad input."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch
import trimesh

from dreamedit3d_core.assets import load_asset, orientation_matrix
from dreamedit3d_core.errors import AssetError, ConfigError

SHARED = {
    # file: (kwargs, expected part names (prefix) or count, textured)
    "kenney_character.glb": ({}, ("leg-left", "leg-right", "torso", "arm-left", "arm-right", "antenna"), True),  # glTF node order
    "cesium_milk_truck.glb": ({}, ("truck", "glass", "window_trim", "Wheels", "Wheels_1"), True),
    "Fox.gltf": ({}, ("fox",), True),
    "spider.obj": ({}, 19, True),
    "spot.obj": ({"texture": "spot_texture.png"}, ("spot",), True),
    "lee_perry_smith_head.glb": ({"texture": "lee_perry_smith_color.jpg", "texture_flip_y": True}, ("LeePerrySmith",), True),
    "vertex_colors_reference.ply": ({}, ("vertex_colors_reference",), False),
}


@pytest.mark.assets
@pytest.mark.parametrize("name", sorted(SHARED))
def test_every_shared_asset_loads_normalised_with_its_parts(shared_assets, name):
    kwargs, parts, textured = SHARED[name]
    kwargs = {k: (str(shared_assets / v) if k == "texture" else v) for k, v in kwargs.items()}
    before = sorted(p.name for p in shared_assets.iterdir())
    asset = load_asset(shared_assets / name, **kwargs)
    assert sorted(p.name for p in shared_assets.iterdir()) == before, "something was written next to the asset"
    lo, hi = asset.vertices.min(0).values, asset.vertices.max(0).values
    torch.testing.assert_close((hi - lo).max(), torch.tensor(1.0), atol=1e-6, rtol=0)
    torch.testing.assert_close((hi + lo) / 2, torch.zeros(3), atol=1e-6, rtol=0)
    if isinstance(parts, int):
        assert asset.num_parts == parts
    else:
        assert asset.part_names == parts
    assert len({n.lower() for n in asset.part_names}) == asset.num_parts
    assert set(asset.part_ids.unique().tolist()) == set(range(asset.num_parts))
    assert bool(asset.textures) == textured
    # the recorded normalisation maps the file's world coordinates onto the loaded vertices
    assert asset.normalisation.shape == (4, 4) and torch.linalg.det(asset.normalisation[:3, :3]) > 0


@pytest.mark.assets
def test_spider_mtl_with_windows_paths_gets_its_textures_and_ply_its_vertex_colours(shared_assets):
    spider = load_asset(shared_assets / "spider.obj")
    assert len(spider.textures) == 4
    assert spider.part_names[:4] == ("HLeib01", "OK", "Bein1Li", "Bein1Re") and spider.part_names[-1] == "Duplicate05"

    ply = load_asset(shared_assets / "vertex_colors_reference.ply")
    colours = {tuple(c) for c in (ply.vertex_colors * 255).round().int().tolist()}
    assert colours == {(192, 192, 192), (255, 0, 0), (0, 255, 0), (0, 127, 0)}


@pytest.mark.assets
def test_broken_shared_assets_give_one_line_errors(shared_assets):
    with pytest.raises(AssetError, match=r"broken_missing_buffer\.gltf: buffer 0 URI 'not_found\.bin' is missing") as e:
        load_asset(shared_assets / "broken_missing_buffer.gltf")
    assert "\n" not in str(e.value)
    # all three triangles sit at the origin (POSITION has no bufferView): nothing can be framed or rendered
    with pytest.raises(AssetError, match=r"broken_degenerate_triangles\.gltf: all 3 triangles have zero area"):
        load_asset(shared_assets / "broken_degenerate_triangles.gltf")


# --- synthetic files -----------------------------------------------------------------------------------------------


def _two_part_scene(names=("Hat", "hat")) -> trimesh.Scene:
    scene = trimesh.Scene()
    body = trimesh.creation.box((2.0, 1.0, 1.0))
    marker = trimesh.creation.box((0.2, 0.2, 0.2))
    scene.add_geometry(body, node_name=names[0], geom_name="body_mesh")
    scene.add_geometry(marker, node_name=names[1], geom_name="marker_mesh",
                       transform=trimesh.transformations.translation_matrix([0.0, 0.0, 1.0]))  # marker on the front (+z)
    return scene


def test_front_is_rotated_to_plus_x_and_names_are_made_unique(tmp_path):
    path = tmp_path / "two.glb"
    path.write_bytes(_two_part_scene().export(file_type="glb"))
    asset = load_asset(path)
    assert asset.part_names == ("Hat", "hat_1")
    marker = asset.vertices[asset.faces[asset.part_ids == 1].reshape(-1)]
    assert float(marker[:, 0].min()) > 0.3, "the +z marker (glTF front) must end up at +x"
    # the file spans x 2, y 1, z -0.5..1.1 (box + marker): longest side 2 -> scale 0.5; file z becomes x, file x becomes z
    ext = asset.vertices.max(0).values - asset.vertices.min(0).values
    torch.testing.assert_close(ext, torch.tensor([0.8, 0.5, 1.0]), atol=1e-6, rtol=0)
    # overrides: declare -x as the front -> the marker (at +z) ends up on the side, at -z... (+z -> R @ ez)
    side = load_asset(path, front_axis="-x")
    r = orientation_matrix("-x", "+y")
    assert np.allclose(r @ [-1, 0, 0], [1, 0, 0]) and np.allclose(r @ [0, 1, 0], [0, 1, 0])
    marker = side.vertices[side.faces[side.part_ids == 1].reshape(-1)]
    expect = np.sign((r @ [0, 0, 1]))
    assert np.allclose(np.sign(marker.mean(0).numpy()).round() * np.abs(expect), expect)
    # normalisation maps file coordinates to loaded coordinates
    v_file = np.concatenate([np.asarray(g.vertices) for g in _two_part_scene().dump()])
    n = asset.normalisation.numpy()
    np.testing.assert_allclose(v_file @ n[:3, :3].T + n[:3, 3], asset.vertices.numpy(), atol=1e-6)
    with pytest.raises(ConfigError, match="perpendicular"):
        load_asset(path, front_axis="+y", up_axis="-y")
    with pytest.raises(ConfigError, match="front_axis must be one of"):
        load_asset(path, front_axis="forward")


def _write_gltf(folder, buffer_uri, image_uri=None, with_bin=True):
    tri = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    idx = np.array([0, 1, 2], np.uint16)
    blob = tri.tobytes() + idx.tobytes() + b"\0\0"
    tree = {
        "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": "tri"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3",
                       "min": [0, 0, 0], "max": [1, 1, 0]},
                      {"bufferView": 1, "componentType": 5123, "count": 3, "type": "SCALAR"}],
        "bufferViews": [{"buffer": 0, "byteLength": 36}, {"buffer": 0, "byteOffset": 36, "byteLength": 6}],
        "buffers": [{"uri": buffer_uri, "byteLength": len(blob)}],
    }
    if image_uri:
        tree["images"] = [{"uri": image_uri}]
    (folder / "m.gltf").write_text(json.dumps(tree))
    if with_bin:
        (folder / "m.bin").write_bytes(blob)
    return folder / "m.gltf", blob


def _png_header(width, height) -> bytes:
    """A PNG whose header claims width x height (the pixel data is never decoded)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_gltf_with_separate_buffer_loads(tmp_path):
    path, _ = _write_gltf(tmp_path, "m.bin")
    asset = load_asset(path)
    assert asset.faces.shape == (1, 3) and asset.part_names == ("tri",)


@pytest.mark.parametrize("uri", ["../secret.bin", "sub/../../secret.bin", "/etc/passwd", "file:///etc/passwd",
                                 "http://example.com/m.bin", "%2E%2E/secret.bin"])
def test_gltf_uris_outside_the_folder_are_refused(tmp_path, uri):
    inner = tmp_path / "inner"
    inner.mkdir()
    _, blob = _write_gltf(inner, "m.bin")
    (tmp_path / "secret.bin").write_bytes(blob)  # exists, so only the path check can refuse it
    path, _ = _write_gltf(inner, uri)
    with pytest.raises(AssetError, match=r"m\.gltf: buffer 0 URI .*(outside the asset's folder|absolute path or URL)"):
        load_asset(path)
    path, _ = _write_gltf(inner, "m.bin", image_uri=uri)
    with pytest.raises(AssetError, match=r"image 0 URI .*(outside the asset's folder|absolute path or URL)"):
        load_asset(path)


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    _, blob = _write_gltf(inner, "m.bin", with_bin=False)
    (tmp_path / "outside.bin").write_bytes(blob)
    (inner / "link.bin").symlink_to(tmp_path / "outside.bin")
    path, _ = _write_gltf(inner, "link.bin", with_bin=False)
    with pytest.raises(AssetError, match="path traversal"):
        load_asset(path)


def test_obj_mtl_outside_the_folder_is_refused(tmp_path):
    inner = tmp_path / "inner"
    inner.mkdir()
    (tmp_path / "evil.mtl").write_text("newmtl a\nKd 1 0 0\n")
    (inner / "m.obj").write_text("mtllib ../evil.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nusemtl a\nf 1 2 3\n")
    with pytest.raises(AssetError, match=r"m\.obj: .*'\.\./evil\.mtl' points outside the asset's folder"):
        load_asset(inner / "m.obj")


def test_decompression_bomb_textures_are_refused(tmp_path):
    (tmp_path / "huge.png").write_bytes(_png_header(10000, 10000))  # over our 8192^2 limit
    path, _ = _write_gltf(tmp_path, "m.bin", image_uri="huge.png")
    with pytest.raises(AssetError, match=r"texture 'huge\.png' is 10000x10000 = 100000000 pixels, over the limit"):
        load_asset(path)
    (tmp_path / "bomb.png").write_bytes(_png_header(30000, 30000))  # over PIL's own limit too
    path, _ = _write_gltf(tmp_path, "m.bin", image_uri="bomb.png")
    with pytest.raises(AssetError, match=r"texture 'bomb\.png' is a decompression bomb"):
        load_asset(path)
    (tmp_path / "small.png").write_bytes(_png_header(64, 64))
    _write_gltf(tmp_path, "m.bin")
    with pytest.raises(AssetError, match="over the limit of 1000"):
        load_asset(tmp_path / "m.gltf", texture=tmp_path / "small.png", max_texture_pixels=1000)
    (tmp_path / "q.obj").write_text("mtllib q.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"
                                    "usemtl a\nf 1/1 2/2 3/3\n")
    (tmp_path / "q.mtl").write_text("newmtl a\nmap_Kd huge.png\n")
    with pytest.raises(AssetError, match=r"q\.obj: texture 'huge\.png' is 10000x10000"):
        load_asset(tmp_path / "q.obj")


def test_bad_files_give_one_line_errors_naming_the_file(tmp_path):
    with pytest.raises(AssetError, match=r"nothere\.glb: file not found"):
        load_asset(tmp_path / "nothere.glb")
    (tmp_path / "m.fbx").write_bytes(b"x")
    with pytest.raises(AssetError, match=r"m\.fbx: unsupported file type '\.fbx'; supported: \.glb"):
        load_asset(tmp_path / "m.fbx")
    glb = _two_part_scene().export(file_type="glb")
    (tmp_path / "cut.glb").write_bytes(glb[: len(glb) // 2])
    with pytest.raises(AssetError, match=r"cut\.glb: is truncated or corrupt: its header says \d+ bytes, the file has"):
        load_asset(tmp_path / "cut.glb")
    (tmp_path / "junk.glb").write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(AssetError, match=r"junk\.glb: is not a GLB file"):
        load_asset(tmp_path / "junk.glb")
    bad_json = bytearray(glb)
    bad_json[20:24] = b"!!!!"
    (tmp_path / "badjson.glb").write_bytes(bytes(bad_json))
    with pytest.raises(AssetError, match=r"badjson\.glb: is corrupt: its JSON chunk does not parse"):
        load_asset(tmp_path / "badjson.glb")
    (tmp_path / "empty.obj").write_text("v 0 0 0\nv 1 0 0\n")
    with pytest.raises(AssetError, match=r"empty\.obj: contains no triangles"):
        load_asset(tmp_path / "empty.obj")
    (tmp_path / "nan.obj").write_text("v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(AssetError, match=r"nan\.obj: has 1 vertices with NaN or infinite coordinates"):
        load_asset(tmp_path / "nan.obj")
    (tmp_path / "inf.obj").write_text("v inf 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(AssetError, match="NaN or infinite"):
        load_asset(tmp_path / "inf.obj")
    (tmp_path / "zero.glb").write_bytes(b"")
    with pytest.raises(AssetError, match=r"zero\.glb: is empty"):
        load_asset(tmp_path / "zero.glb")


def test_face_limit_is_a_clear_error(tmp_path):
    mesh = trimesh.creation.icosphere(subdivisions=2)
    path = tmp_path / "ball.ply"
    path.write_bytes(mesh.export(file_type="ply"))
    with pytest.raises(AssetError, match=r"ball\.ply: has 320 triangles, over the limit of 100"):
        load_asset(path, max_faces=100)
    assert load_asset(path).faces.shape[0] == 320
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ball.ply"]


def _triangle_gltf(folder, stem, attribute, values, **tree):
    """A one-triangle ``<stem>.gltf`` + ``<stem>.bin``: POSITION and one float ``attribute`` (``values`` [3, 2 or 3]);
    ``tree`` adds top-level entries (with ``materials`` the triangle uses material 0)."""
    pos = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    values = np.asarray(values, np.float32)
    blob = pos.tobytes() + values.tobytes()
    primitive = {"attributes": {"POSITION": 0, attribute: 1}, **({"material": 0} if "materials" in tree else {})}
    gltf = {
        "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": "tri"}],
        "meshes": [{"primitives": [primitive]}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3", "min": [0, 0, 0],
                       "max": [1, 1, 0]},
                      {"bufferView": 1, "componentType": 5126, "count": 3, "type": f"VEC{values.shape[1]}"}],
        "bufferViews": [{"buffer": 0, "byteLength": 36}, {"buffer": 0, "byteOffset": 36, "byteLength": values.nbytes}],
        "buffers": [{"uri": f"{stem}.bin", "byteLength": len(blob)}],
        **tree,
    }
    (folder / f"{stem}.bin").write_bytes(blob)
    (folder / f"{stem}.gltf").write_text(json.dumps(gltf))
    return folder / f"{stem}.gltf"


def test_gltf_vertex_colours_multiply_the_base_colour_factor(tmp_path):
    """COLOR_0 as float next to a material: kept as 0..1 vertex colours, baseColorFactor as the face base colour."""
    col = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0.5]], np.float32)
    _triangle_gltf(tmp_path, "c", "COLOR_0", col,
                   materials=[{"pbrMetallicRoughness": {"baseColorFactor": [0.5, 1.0, 0.25, 1.0]}}])
    asset = load_asset(tmp_path / "c.gltf")
    torch.testing.assert_close(asset.vertex_colors, torch.from_numpy(col), atol=1e-6, rtol=0)
    # trimesh keeps material factors as uint8: within one step of 1/255
    torch.testing.assert_close(asset.face_base_color[0], torch.tensor([0.5, 1.0, 0.25]), atol=1 / 255, rtol=0)


def _textured_gltf(folder, extra_material=None, image_uri="t.png", required=()):
    from PIL import Image

    uv = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)  # glTF UVs (v down)
    texture = {"index": 0}
    if extra_material:
        texture["extensions"] = {"KHR_texture_transform": extra_material}
    Image.new("RGB", (4, 2), (200, 10, 10)).save(folder / "t.png")
    return _triangle_gltf(
        folder, "t", "TEXCOORD_0", uv,
        extensionsRequired=list(required), extensionsUsed=list(required) + ["KHR_texture_transform"],
        materials=[{"name": "m", "pbrMetallicRoughness": {"baseColorTexture": texture}}],
        textures=[{"source": 0}], images=[{"uri": image_uri}])


def test_khr_texture_transform_is_applied_to_the_uvs(tmp_path):
    plain = load_asset(_textured_gltf(tmp_path))
    # trimesh UVs are v-up: glTF (0,0),(1,0),(0,1) -> (0,1),(1,1),(0,0)
    torch.testing.assert_close(plain.uv, torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]))
    moved = load_asset(_textured_gltf(tmp_path, {"offset": [0.5, 0.25], "scale": [0.5, 0.5]}))
    gl = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]) * 0.5 + [0.5, 0.25]  # the spec's T * S on glTF UVs
    expect = np.stack([gl[:, 0], 1 - gl[:, 1]], 1)
    np.testing.assert_allclose(moved.uv.numpy(), expect, atol=1e-6)


def test_embedded_bombs_and_undecodable_compression_are_refused(tmp_path):
    import base64

    uri = "data:image/png;base64," + base64.b64encode(_png_header(10000, 9000)).decode()
    with pytest.raises(AssetError, match=r"t\.gltf: embedded texture 0 is 10000x9000"):
        load_asset(_textured_gltf(tmp_path, image_uri=uri))
    with pytest.raises(AssetError, match=r"t\.gltf: is meshopt-compressed"):
        load_asset(_textured_gltf(tmp_path, required=("EXT_meshopt_compression",)))
    try:
        import DracoPy  # noqa: F401
    except ImportError:
        with pytest.raises(AssetError, match=r"t\.gltf: is Draco-compressed .*pip install DracoPy"):
            load_asset(_textured_gltf(tmp_path, required=("KHR_draco_mesh_compression",)))


def test_obj_with_a_missing_mtl_loads_its_geometry_with_a_warning(tmp_path):
    (tmp_path / "m.obj").write_text("mtllib gone.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nusemtl a\nf 1 2 3\n")
    with pytest.warns(UserWarning, match=r"m\.obj: referenced file 'gone\.mtl' is missing; loading without it"):
        asset = load_asset(tmp_path / "m.obj")
    assert asset.faces.shape == (1, 3) and not asset.textures


# --- the source frame: internal <-> the file's own coordinates ------------------------------------------------------


def _file_vertices(path) -> np.ndarray:
    """Every vertex of the file in its own world coordinates, read by trimesh alone (scene graph applied)."""
    scene = trimesh.load(str(path), force="scene", process=False)
    return np.concatenate([np.asarray(g.vertices, np.float64) for g in scene.dump() if isinstance(g, trimesh.Trimesh)])


@pytest.mark.assets
@pytest.mark.parametrize("name", sorted(SHARED))
def test_source_frame_takes_the_loaded_vertices_back_onto_the_files_own_vertices(shared_assets, name):
    from scipy.spatial import cKDTree

    kwargs = {k: (str(shared_assets / v) if k == "texture" else v) for k, v in SHARED[name][0].items()}
    asset = load_asset(shared_assets / name, **kwargs)
    in_source = asset.source_frame.to_source_frame(asset.vertices.double()).numpy()
    reference = _file_vertices(shared_assets / name)
    diagonal = float(np.linalg.norm(reference.max(0) - reference.min(0)))
    tol = 1e-5 * diagonal  # source units differ per file (metres, centimetres): relative to its own size
    assert cKDTree(reference).query(in_source)[0].max() <= tol, "a loaded vertex is not on a vertex of the file"
    assert cKDTree(in_source).query(reference)[0].max() <= tol, "a vertex of the file was lost"
    # and the other way: the file's vertices come into the internal frame, inside [-0.5, 0.5]^3 with the longest side 1
    internal = asset.source_frame.from_source_frame(torch.from_numpy(reference))
    ext = internal.max(0).values - internal.min(0).values
    assert abs(float(ext.max()) - 1.0) <= 1e-6 and float(internal.abs().max()) <= 0.5 + 1e-6


def test_source_frame_of_a_file_with_other_axes_and_the_gltf_frame_without_a_source(tmp_path):
    from dreamedit3d_core.geometry import SourceFrame

    path = tmp_path / "two.glb"
    path.write_bytes(_two_part_scene().export(file_type="glb"))
    side = load_asset(path, front_axis="-x")
    v_file = np.concatenate([np.asarray(g.vertices) for g in _two_part_scene().dump()])
    np.testing.assert_allclose(side.source_frame.to_source_frame(side.vertices.double()).numpy(), v_file, atol=1e-6)
    torch.testing.assert_close(side.source_frame.to_source() @ side.source_frame.to_internal,
                               torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    assert not side.source_frame.mirrors
    # moving the asset to another dtype leaves its frame in float64
    assert side.to(dtype=torch.float16).source_frame == side.source_frame
    assert side.source_frame.to_internal.dtype == torch.float64
    # no source: glTF's convention at the internal size -- internal front +x is glTF front +z, up stays +y
    gltf = SourceFrame.gltf_unit()
    front_up = gltf.to_source_frame(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(front_up, torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    # a plain glTF file loads in the same frame up to centring and scale: its front marker sits at +z in both
    plain = load_asset(path)
    marker = plain.vertices[plain.faces[plain.part_ids == 1].reshape(-1)]
    assert float(gltf.to_source_frame(marker.double())[:, 2].min()) > 0.3
    # kept in dictionaries (provenance), and bad matrices refused with one line
    assert SourceFrame.from_dict(side.source_frame.to_dict()) == side.source_frame
    from dreamedit3d_core.errors import ShapeError

    with pytest.raises(ShapeError, match=r"to_internal must be a 4x4 matrix, got \[3, 3\]"):
        SourceFrame(torch.eye(3))
    with pytest.raises(ShapeError, match="is singular"):
        SourceFrame(torch.diag(torch.tensor([1.0, 0.0, 1.0, 1.0])))
    with pytest.raises(ConfigError, match="needs 16 numbers"):
        SourceFrame.from_dict({"to_internal": [1.0, 0.0]})
    from dataclasses import replace

    with pytest.raises(ShapeError, match="source_frame must be a geometry.SourceFrame, got Tensor"):
        replace(side, source_frame=torch.eye(4))


_AXES = {"+x": (1, 0, 0), "-x": (-1, 0, 0), "+y": (0, 1, 0), "-y": (0, -1, 0), "+z": (0, 0, 1), "-z": (0, 0, -1)}


@pytest.mark.parametrize("front,up", [(f, u) for f in _AXES for u in _AXES if f[1] != u[1]])
def test_every_front_and_up_pair_puts_the_front_at_plus_x_and_the_top_at_plus_y(tmp_path, front, up):
    """All 24 axis pairs: a file modelled with its front along ``front`` and its top along ``up`` loads exactly as the
    same object modelled in glTF axes (the rotation built here from the axis vectors, not with the loader's code)."""
    from _unseen_assets import critter, critter_internal, write_obj

    f, u = np.asarray(_AXES[front], np.float64), np.asarray(_AXES[up], np.float64)
    to_file = np.eye(4)
    to_file[:3, :3] = np.stack([np.cross(u, f), u, f], 1)  # glTF +x, +y, +z -> the file's right, up, front
    parts = critter()
    for part in parts.values():
        part.apply_transform(to_file)
    asset = load_asset(write_obj(tmp_path / "turned.obj", parts), front_axis=front, up_axis=up)
    gltf_vertices = np.concatenate([np.asarray(p.vertices) @ to_file[:3, :3] for p in parts.values()])  # back in glTF
    np.testing.assert_allclose(asset.vertices.double().numpy(), critter_internal(gltf_vertices), atol=1e-6)
    assert asset.source_frame.to_internal[:3, :3].det() > 0  # a turn, never a mirror


def test_a_mirroring_gltf_node_keeps_its_faces_outward(tmp_path):
    """glTF: a node whose transform has a negative determinant (scale -1, as Blender writes mirrored instances) has its
    winding reversed; loaded, every part is a closed surface of positive volume, as trimesh's own scene reading."""
    from _unseen_assets import write_gltf

    box = trimesh.creation.box(extents=(0.2, 0.3, 0.4))
    nodes = [{"name": "plain", "mesh": 0, "translation": [-0.3, 0.0, 0.0]},
             {"name": "mirrored", "mesh": 0, "translation": [0.3, 0.0, 0.0], "scale": [-1.0, 1.0, 1.0]},
             {"name": "twice", "children": [3], "scale": [1.0, -1.0, 1.0], "translation": [0.0, 0.5, 0.0]},
             {"name": "mirrored_again", "mesh": 0, "scale": [1.0, 1.0, -2.0]}]
    path = write_gltf(tmp_path / "mirrors.glb", [dict(name="box", vertices=box.vertices, faces=box.faces)], nodes,
                      [0, 1, 2], [])
    asset = load_asset(path)
    for k, name in enumerate(asset.part_names):
        part = trimesh.Trimesh(asset.vertices.double().numpy(), asset.faces[asset.part_ids == k].numpy(), process=False)
        assert part.volume > 0, f"part {name} is wound inward"
    reference = sum(g.volume for g in trimesh.load(path, force="scene", process=False).dump())
    whole = trimesh.Trimesh(asset.source_frame.to_source_frame(asset.vertices.double()).numpy(), asset.faces.numpy(),
                            process=False)
    assert whole.volume == pytest.approx(reference, rel=1e-6) and reference > 0


def test_meshes_sharing_one_position_accessor_bring_only_their_own_vertices(tmp_path):
    """glTF lets primitives index into one shared POSITION accessor; trimesh keeps the whole accessor per mesh, so each
    instance also carried the other meshes' vertices moved by its own node (here 100 units away). The loader keeps only
    the vertices faces use, so the asset is normalised by the triangles' bounding box, as trimesh measures the file."""
    from _unseen_assets import write_gltf

    box = trimesh.creation.box(extents=(0.2, 0.3, 0.4))
    box.apply_translation((100.0, 0.0, 0.0))  # stored far away, placed back by its node
    cone = trimesh.creation.cone(radius=0.1, height=0.2, sections=8)
    shared = np.concatenate([box.vertices, cone.vertices])
    meshes = [dict(name="box", vertices=shared, faces=box.faces),
              dict(name="cone", positions_of=0, faces=cone.faces + len(box.vertices))]
    nodes = [{"name": "box", "mesh": 0, "translation": [-100.0, 0.0, 0.0]},
             {"name": "cone", "mesh": 1, "translation": [0.0, 0.0, 0.3]}]
    path = write_gltf(tmp_path / "shared.glb", meshes, nodes, [0, 1], [])
    asset = load_asset(path)
    assert asset.vertices.shape[0] == len(box.vertices) + len(cone.vertices)
    reference = trimesh.util.concatenate(trimesh.load(path, force="scene", process=False).dump())
    lo, hi = reference.bounds  # the triangles' bounding box (trimesh ignores unused vertices there)
    internal = asset.source_frame.from_source_frame(torch.tensor(np.stack([lo, hi])))
    extent = (internal[1] - internal[0]).abs()
    assert float(extent.max()) == pytest.approx(1.0, abs=1e-6) and float(internal.abs().max()) <= 0.5 + 1e-6
    assert float((asset.vertices.max(0).values - asset.vertices.min(0).values).max()) == pytest.approx(1.0, abs=1e-6)
    # every kept vertex is a vertex of a triangle of the file, in its own coordinates
    back = asset.source_frame.to_source_frame(asset.vertices.double()).numpy()
    used = np.asarray(reference.vertices)[np.unique(reference.faces)]
    from scipy.spatial import cKDTree

    assert cKDTree(used).query(back)[0].max() < 1e-6


def test_normalized_integer_positions_and_uvs_are_dequantised(tmp_path):
    """KHR_mesh_quantization: normalized unsigned-short POSITION and TEXCOORD_0 mean c / 65535 (glTF 2.0 spec, as
    Blender and three.js read them; trimesh reads the raw integers). The node's scale and offset place the unit cube."""
    from _unseen_assets import write_gltf

    box = trimesh.creation.box(extents=(0.5, 0.8, 1.0))
    unit = (np.asarray(box.vertices) - box.bounds[0]) / 1.0  # within [0, 1]: what the quantized accessor holds
    uv = np.stack([unit[:, 0], unit[:, 2]], 1) * 0.9 + 0.05
    nodes = [{"name": "quantized", "mesh": 0, "scale": [40.0, 40.0, 40.0], "translation": [-20.0, 5.0, 300.0]}]
    path = write_gltf(tmp_path / "quantized.glb", [dict(name="q", vertices=unit, faces=box.faces, uv=uv, material=0,
                                                        normalized=True)], nodes, [0], [(1.0, 1.0, 1.0)])
    asset = load_asset(path)
    expected = np.round(unit * 65535) / 65535 * 40.0 + (-20.0, 5.0, 300.0)
    got = asset.source_frame.to_source_frame(asset.vertices.double()).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)  # float32 internal vertices of a 40-unit box
    stored = np.round(uv * 65535) / 65535
    np.testing.assert_allclose(asset.uv.numpy(), np.stack([stored[:, 0], 1.0 - stored[:, 1]], 1), atol=1e-6)  # v up
    # the same file with float accessors loads the same
    plain = load_asset(write_gltf(tmp_path / "plain.glb", [dict(name="q", vertices=np.round(unit * 65535) / 65535,
                                                                faces=box.faces, uv=np.round(uv * 65535) / 65535,
                                                                material=0)], nodes, [0], [(1.0, 1.0, 1.0)]))
    torch.testing.assert_close(asset.source_frame.to_internal, plain.source_frame.to_internal, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(asset.vertices, plain.vertices, rtol=0, atol=1e-6)
    torch.testing.assert_close(asset.uv, plain.uv, rtol=0, atol=1e-6)
