"""Files the project has never seen, built from code for the frame round-trip tests (issue 13 item 1).

A GLB whose scene graph nests translation, quaternion rotation, uniform, non-uniform and negative (mirroring) scale with
one mesh instanced by several nodes and several materials; a Z-up OBJ; a file whose front is -x; a file in millimetres;
files far from the origin (one in UTM-like coordinates); a 1 cm part in metres; an open-based bust; a PLY with vertex
colours; a glTF with a separate ``.bin``; a Z-up vehicle in centimetres with many nested and instanced parts. The glTF
files are written by hand (JSON + binary buffer), so neither our loader nor trimesh's exporter shapes the scene graph they
contain. References are the files' triangles as **trimesh** reads
their scenes (``scene.dump()``: the file's world coordinates), never anything our loader computed.
"""

from __future__ import annotations

import json
import math

import numpy as np

from dreamedit3d_core.assets import pack_glb


def quaternion(axis, angle) -> list:
    """glTF rotation [x, y, z, w] of ``angle`` radians about ``axis``."""
    a = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    return [*(a * math.sin(angle / 2)).tolist(), math.cos(angle / 2)]


def write_gltf(path, meshes: list, nodes: list, roots: list, materials: list, separate_bin: bool = False):
    """Write a glTF 2.0 file by hand.

    meshes: dicts with ``vertices`` [N, 3], ``faces`` [M, 3], optional ``colors`` [N, 3] (COLOR_0) and ``material``
    (index into ``materials``, a list of RGB base colours); or, instead of ``vertices``, ``positions_of``: the index of
    an earlier mesh whose POSITION accessor this one shares (its faces index into that mesh's vertices); optional
    ``uv`` [N, 2] (TEXCOORD_0); ``normalized``: True stores the positions (in [0, 1]) and UVs as normalized unsigned
    shorts (KHR_mesh_quantization, as gltfpack writes them; positions padded to 8-byte vertices), read as c / 65535. nodes: glTF node dicts (``mesh``, ``children``,
    ``translation``, ``rotation``, ``scale``, ``matrix``, ``name``) as written. roots: the scene's root node indices.
    """
    blob, views, accessors, gl_meshes = bytearray(), [], [], []

    def add(array: np.ndarray, component: int, kind: str, target: int, with_bounds: bool = False) -> int:
        while len(blob) % 4:
            blob.append(0)
        data = np.ascontiguousarray(array).tobytes()
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(data), "target": target})
        blob.extend(data)
        accessor = {"bufferView": len(views) - 1, "componentType": component, "count": int(len(array)), "type": kind}
        if with_bounds:
            accessor.update(min=array.min(0).tolist(), max=array.max(0).tolist())
        accessors.append(accessor)
        return len(accessors) - 1

    positions = []
    for mesh in meshes:
        if "positions_of" in mesh:
            positions.append(positions[mesh["positions_of"]])
        elif mesh.get("normalized"):
            q = np.round(np.asarray(mesh["vertices"], np.float64) * 65535).astype(np.uint16)
            positions.append(add(np.concatenate([q, np.zeros((len(q), 1), np.uint16)], 1), 5123, "VEC4", 34962))
            views[-1]["byteStride"] = 8
            accessors[-1].update(type="VEC3", normalized=True, min=q.min(0).tolist(), max=q.max(0).tolist())
        else:
            positions.append(add(np.asarray(mesh["vertices"], np.float32), 5126, "VEC3", 34962, True))
        attributes = {"POSITION": positions[-1]}
        if mesh.get("uv") is not None:
            if mesh.get("normalized"):
                uv = np.round(np.asarray(mesh["uv"], np.float64) * 65535).astype(np.uint16)
                attributes["TEXCOORD_0"] = add(uv, 5123, "VEC2", 34962)
                accessors[-1]["normalized"] = True
            else:
                attributes["TEXCOORD_0"] = add(np.asarray(mesh["uv"], np.float32), 5126, "VEC2", 34962)
        if mesh.get("colors") is not None:
            attributes["COLOR_0"] = add(np.asarray(mesh["colors"], np.float32), 5126, "VEC3", 34962)
        primitive = {"attributes": attributes,
                     "indices": add(np.asarray(mesh["faces"], np.uint32).reshape(-1), 5125, "SCALAR", 34963)}
        if mesh.get("material") is not None:
            primitive["material"] = mesh["material"]
        gl_meshes.append({"name": mesh["name"], "primitives": [primitive]})
    buffer = {"byteLength": len(blob)}
    if separate_bin:
        buffer["uri"] = path.with_suffix(".bin").name
        path.with_suffix(".bin").write_bytes(bytes(blob))
    tree = {"asset": {"version": "2.0", "generator": "test_frame_unseen_assets"}, "scene": 0,
            "scenes": [{"nodes": roots}], "nodes": nodes, "meshes": gl_meshes, "accessors": accessors,
            "bufferViews": views, "buffers": [buffer],
            "materials": [{"name": f"material_{i}", "pbrMetallicRoughness": {"baseColorFactor": [*rgb, 1.0],
                                                                             "metallicFactor": 0.0}}
                          for i, rgb in enumerate(materials)]}
    if separate_bin:
        path.write_text(json.dumps(tree))
        return path
    path.write_bytes(pack_glb(tree, bytes(blob)))
    return path


def critter():
    """An asymmetric closed shape in glTF axes (front +z, up +y): a body box, a nose cone at the front (tip at
    z = 0.55), a chimney at the top towards the back (top at y = 0.45) and a fin on the left (-x) only, as a list of
    named trimesh parts. No two of its axes can be swapped, flipped or rescaled without the surface moving."""
    import trimesh

    body = trimesh.creation.box(extents=(0.5, 0.4, 0.8))
    nose = trimesh.creation.cone(radius=0.12, height=0.15, sections=16)  # along +z, base at z = 0
    nose.apply_translation((0.05, 0.0, 0.4))
    chimney = trimesh.creation.box(extents=(0.12, 0.25, 0.12))
    chimney.apply_translation((0.0, 0.2 + 0.125, -0.2))
    fin = trimesh.creation.box(extents=(0.2, 0.06, 0.3))
    fin.apply_translation((-0.25 - 0.1, -0.05, 0.0))
    return {"body": body, "nose": nose, "chimney": chimney, "fin": fin}


#: The critter's nose tip and chimney top in glTF axes (front +z, up +y).
NOSE_TIP, CHIMNEY_TOP = np.array([0.05, 0.0, 0.55]), np.array([0.0, 0.45, -0.2])
#: The centre of the critter's bounding box in glTF axes (x -0.45..0.25, y -0.2..0.45, z -0.4..0.55).
CRITTER_CENTRE = np.array([-0.1, 0.125, 0.075])


def critter_internal(point) -> np.ndarray:
    """Where points [..., 3] of the critter (glTF axes) land in the internal frame when a file holding it is loaded with its
    own axes: its bounding box centred at :data:`CRITTER_CENTRE`, its longest side (0.95, front to back) scaled to 1,
    glTF's front +z to +x, up +y kept, and +x (the critter's right) to -z."""
    q = (np.asarray(point, np.float64) - CRITTER_CENTRE) / 0.95
    return np.stack([q[..., 2], q[..., 1], -q[..., 0]], -1)


def placed(matrix):
    """The critter's parts moved by the 4x4 ``matrix`` (glTF axes -> the file's own coordinates)."""
    parts = {}
    for name, part in critter().items():
        moved = part.copy()
        moved.apply_transform(matrix)
        parts[name] = moved
    return parts


def write_obj(path, parts: dict):
    lines, offset = [], 1
    for name, part in parts.items():
        lines.append(f"o {name}")
        lines += [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in np.asarray(part.vertices)]
        lines += [f"f {a + offset} {b + offset} {c + offset}" for a, b, c in np.asarray(part.faces)]
        offset += len(part.vertices)
    path.write_text("\n".join(lines) + "\n")
    return path


def _nested_instanced(folder):
    """GLB: root (translation, rotation, uniform scale 2) > body (non-uniform scale) and legs: one leg mesh instanced by
    four nodes, one of them mirrored (scale -1 on x, as Blender writes mirrored instances), three materials."""
    import trimesh

    body = trimesh.creation.box(extents=(0.4, 0.2, 0.5))
    leg = trimesh.creation.cylinder(radius=0.03, height=0.2, sections=10)
    leg.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, (1, 0, 0)))  # along y
    # a wedge: mirroring it moves its slope, so a wrong mirror is seen in the surface, not just the winding
    leg.vertices[leg.vertices[:, 1] < 0] += (0.03, 0.0, 0.0)
    nose = trimesh.creation.cone(radius=0.06, height=0.12, sections=12)
    meshes = [dict(name="body", vertices=body.vertices, faces=body.faces, material=0),
              dict(name="leg", vertices=leg.vertices, faces=leg.faces, material=1),
              dict(name="nose", vertices=nose.vertices, faces=nose.faces, material=2)]
    nodes = [
        {"name": "root", "children": [1, 2, 3, 4, 5, 6], "translation": [1.0, 2.0, 3.0],
         "rotation": quaternion((0, 1, 0), 0.6), "scale": [2.0, 2.0, 2.0]},
        {"name": "torso", "mesh": 0, "scale": [1.5, 1.0, 0.8], "translation": [0.0, 0.1, 0.0]},
        {"name": "leg_front_left", "mesh": 1, "translation": [-0.15, -0.1, 0.15]},
        {"name": "leg_front_right", "mesh": 1, "translation": [0.15, -0.1, 0.15], "scale": [-1.0, 1.0, 1.0]},
        {"name": "leg_back", "mesh": 1, "translation": [0.0, -0.1, -0.15], "rotation": quaternion((0, 1, 0), 0.5)},
        {"name": "head", "mesh": 2, "translation": [0.0, 0.15, 0.2],
         "rotation": quaternion((1, 0, 0), math.pi / 2), "scale": [1.0, 1.0, 1.6]},
        {"name": "tail", "children": [7], "translation": [0.0, 0.1, -0.2], "rotation": quaternion((1, 0, 0), 0.4)},
        {"name": "tail_tip", "mesh": 1, "scale": [0.5, 1.5, 0.5], "translation": [0.0, 0.05, -0.05]},
    ]
    return write_gltf(folder / "nested_instanced.glb", meshes, nodes, [0],
                       [(0.8, 0.2, 0.2), (0.2, 0.3, 0.9), (0.2, 0.8, 0.3)]), {}


def _separate_bin(folder):
    """A .gltf whose buffer is a separate .bin, its parts placed by their parent's matrix (a quarter turn about y that
    takes the front to +x, half size, moved away from the origin)."""
    parts = critter()
    meshes = [dict(name=n, vertices=p.vertices, faces=p.faces, material=i % 2) for i, (n, p) in enumerate(parts.items())]
    matrix = np.eye(4)
    matrix[:3, :3] = 0.5 * np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    matrix[:3, 3] = (-3.0, 0.5, 7.0)
    nodes = [{"name": "rig", "children": [1, 2, 3, 4], "matrix": matrix.T.reshape(-1).tolist()}]
    nodes += [{"name": n, "mesh": i} for i, n in enumerate(parts)]
    path = write_gltf(folder / "separate.gltf", meshes, nodes, [0], [(0.9, 0.6, 0.1), (0.1, 0.5, 0.6)], separate_bin=True)
    return path, {"front_axis": "+x"}  # the quarter turn took the critter's front (+z) to +x


def _z_up_obj(folder):
    """OBJ modelled Z-up with its front at -y (Blender's world axes)."""
    to_file = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])  # +y -> +z, +z -> -y
    return write_obj(folder / "z_up.obj", placed(to_file)), {"up_axis": "+z", "front_axis": "-y"}


def _front_minus_x(folder):
    """GLB (no node transforms) whose front is -x, up +y."""
    import trimesh

    to_file = trimesh.transformations.rotation_matrix(-math.pi / 2, (0, 1, 0))  # +z -> -x
    scene = trimesh.Scene()
    for name, part in placed(to_file).items():
        scene.add_geometry(part, node_name=name, geom_name=name)
    path = folder / "front_minus_x.glb"
    path.write_bytes(scene.export(file_type="glb"))
    return path, {"front_axis": "-x"}


def _millimetres(folder):
    """OBJ in millimetres: the critter about 1000 units long."""
    return write_obj(folder / "millimetres.obj", placed(np.diag([1000.0, 1000.0, 1000.0, 1.0]))), {}


def _far(folder):
    """OBJ centred at (500, -20, 3000), 40 units across."""
    matrix = np.diag([40.0, 40.0, 40.0, 1.0])
    matrix[:3, 3] = (500.0, -20.0, 3000.0)
    return write_obj(folder / "far.obj", placed(matrix)), {}


def _georeferenced(folder):
    """OBJ of a 20 m object in UTM-like coordinates (x 500 000, y 4 000 000), as photogrammetry exports them: float32
    there steps by a quarter unit, so only coordinates kept in float64 (or stored around the object) land on the file."""
    matrix = np.diag([20.0, 20.0, 20.0, 1.0])
    matrix[:3, 3] = (500000.0, 4000000.0, 120.0)
    return write_obj(folder / "georeferenced.obj", placed(matrix)), {}


def _tiny(folder):
    """OBJ of a 1 cm part modelled in metres: six decimals would round it by 1e-4 of its size."""
    return write_obj(folder / "tiny.obj", placed(np.diag([0.01, 0.01, 0.01, 1.0]))), {}


def _vehicle(folder):
    """GLB of a vehicle with many parts, modelled Z-up with its front at +x and in centimetres (as many DCC exports
    are): a body and a cabin, two axle nodes each holding two wheels that instance one wheel mesh (the right-hand
    wheels mirrored by scale -1), four windows instancing one pane, two headlights, an antenna, empty nodes; 19 nodes,
    13 parts."""
    import trimesh

    body = trimesh.creation.box(extents=(400.0, 180.0, 80.0))
    cabin = trimesh.creation.box(extents=(180.0, 160.0, 70.0))
    wheel = trimesh.creation.cylinder(radius=35.0, height=25.0, sections=16)
    wheel.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, (1, 0, 0)))  # axis along y
    wheel.vertices[wheel.vertices[:, 1] > 0] *= (0.8, 1.0, 0.8)  # a dished outer face: mirroring shows
    pane = trimesh.creation.box(extents=(2.0, 50.0, 40.0))
    lamp = trimesh.creation.icosphere(subdivisions=1, radius=12.0)
    antenna = trimesh.creation.cylinder(radius=1.5, height=90.0, sections=6)
    meshes = [dict(name="body", vertices=body.vertices, faces=body.faces, material=0),
              dict(name="cabin", vertices=cabin.vertices, faces=cabin.faces, material=0),
              dict(name="wheel", vertices=wheel.vertices, faces=wheel.faces, material=1),
              dict(name="pane", vertices=pane.vertices, faces=pane.faces, material=2),
              dict(name="lamp", vertices=lamp.vertices, faces=lamp.faces, material=3),
              dict(name="antenna", vertices=antenna.vertices, faces=antenna.faces, material=1)]
    nodes = [
        {"name": "vehicle", "children": [1, 2, 3, 4], "translation": [250.0, -40.0, 75.0],
         "rotation": quaternion((0, 0, 1), 0.3)},
        {"name": "body", "mesh": 0, "children": [5, 6, 13, 14]},
        {"name": "cabin", "mesh": 1, "translation": [-40.0, 0.0, 75.0], "children": [7, 8, 9, 10, 11]},
        {"name": "axle_front", "translation": [130.0, 0.0, -40.0], "children": [15, 16]},
        {"name": "axle_back", "translation": [-130.0, 0.0, -40.0], "children": [17, 18]},
        {"name": "lamp_left", "mesh": 4, "translation": [200.0, 60.0, 10.0]},
        {"name": "lamp_right", "mesh": 4, "translation": [200.0, -60.0, 10.0], "scale": [1.0, 1.0, 0.6]},
        {"name": "window_front", "mesh": 3, "translation": [90.0, 0.0, 5.0], "scale": [1.0, 2.6, 1.0]},
        {"name": "window_back", "mesh": 3, "translation": [-90.0, 0.0, 5.0], "scale": [1.0, 2.6, 1.0]},
        {"name": "window_left", "mesh": 3, "translation": [0.0, 80.0, 5.0], "rotation": quaternion((0, 0, 1), math.pi / 2),
         "scale": [1.0, 2.8, 1.0]},
        {"name": "window_right", "mesh": 3, "translation": [0.0, -80.0, 5.0],
         "rotation": quaternion((0, 0, 1), -math.pi / 2), "scale": [1.0, 2.8, 1.0]},
        {"name": "antenna", "mesh": 5, "translation": [-60.0, 50.0, 80.0], "rotation": quaternion((1, 0, 0), math.pi / 2)},
        {"name": "unused_empty"},
        {"name": "bumper_front", "translation": [205.0, 0.0, -20.0]},
        {"name": "bumper_back", "translation": [-205.0, 0.0, -20.0]},
        {"name": "wheel_front_left", "mesh": 2, "translation": [0.0, 95.0, 0.0]},
        {"name": "wheel_front_right", "mesh": 2, "translation": [0.0, -95.0, 0.0], "scale": [1.0, -1.0, 1.0]},
        {"name": "wheel_back_left", "mesh": 2, "translation": [0.0, 95.0, 0.0]},
        {"name": "wheel_back_right", "mesh": 2, "translation": [0.0, -95.0, 0.0], "scale": [1.0, -1.0, 1.0]},
    ]
    return write_gltf(folder / "vehicle.glb", meshes, nodes, [0],
                      [(0.9, 0.9, 0.2), (0.1, 0.1, 0.1), (0.5, 0.7, 0.9), (1.0, 1.0, 0.8)]), \
        {"up_axis": "+z", "front_axis": "+x"}


def _open_bust(folder):
    """GLB: an open-based bust -- a sphere cut below its equator (no bottom), a neck tube open at both ends, and a nose
    at the front; nothing about it is closed."""
    import trimesh

    head = trimesh.creation.uv_sphere(radius=0.3, count=(16, 24))
    keep = head.vertices[head.faces].mean(1)[:, 1] > -0.1
    head = trimesh.Trimesh(head.vertices, head.faces[keep], process=True)
    head.update_faces(head.nondegenerate_faces())
    head.remove_unreferenced_vertices()
    neck = trimesh.creation.cylinder(radius=0.2, height=0.3, sections=20)
    neck.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, (1, 0, 0)))
    neck.apply_translation((0.0, -0.25, 0.0))
    neck.update_faces(np.abs(neck.face_normals[:, 1]) < 0.5)  # drop both caps: a tube
    neck.remove_unreferenced_vertices()
    nose = trimesh.creation.cone(radius=0.06, height=0.12, sections=12)
    nose.apply_translation((0.0, 0.0, 0.28))
    meshes = [dict(name=n, vertices=m.vertices, faces=m.faces, material=i) for i, (n, m) in
              enumerate((("head", head), ("neck", neck), ("nose", nose)))]
    nodes = [{"name": "bust", "children": [1, 2, 3], "translation": [0.0, 1.5, 0.0]},
             {"name": "head", "mesh": 0}, {"name": "neck", "mesh": 1}, {"name": "nose", "mesh": 2}]
    return write_gltf(folder / "open_bust.glb", meshes, nodes, [0],
                       [(0.8, 0.7, 0.6), (0.6, 0.5, 0.4), (0.9, 0.3, 0.3)]), {}


def _vertex_colour_ply(folder):
    """PLY with per-vertex colours (a gradient along the critter's length)."""
    import trimesh

    whole = trimesh.util.concatenate(list(placed(np.eye(4)).values()))
    t = (whole.vertices[:, 2] - whole.vertices[:, 2].min()) / np.ptp(whole.vertices[:, 2])
    rgb = np.stack([t, 0.3 + 0.4 * t, 1.0 - t], 1)
    whole.visual = trimesh.visual.ColorVisuals(whole, vertex_colors=(np.c_[rgb, np.ones(len(t))] * 255).astype(np.uint8))
    path = folder / "vertex_colours.ply"
    path.write_bytes(whole.export(file_type="ply"))
    return path, {}


BUILDERS = {
    "nested_instanced.glb": _nested_instanced,
    "separate_bin.gltf": _separate_bin,
    "z_up.obj": _z_up_obj,
    "front_minus_x.glb": _front_minus_x,
    "millimetres.obj": _millimetres,
    "far.obj": _far,
    "georeferenced.obj": _georeferenced,
    "tiny.obj": _tiny,
    "open_bust.glb": _open_bust,
    "vehicle.glb": _vehicle,
    "vertex_colours.ply": _vertex_colour_ply,
}
#: Files holding the critter (:func:`critter`), whose nose and chimney tell its axes apart.
CRITTERS = {"separate_bin.gltf", "z_up.obj", "front_minus_x.glb", "millimetres.obj", "far.obj", "georeferenced.obj",
            "tiny.obj", "vertex_colours.ply"}
#: Files with an open surface: no volume, so outward faces are checked against the file's own face normals.
OPEN = {"open_bust.glb"}


def file_mesh(path):
    """The file's triangles in its own world coordinates, as trimesh alone reads them (scene graph applied)."""
    import trimesh

    scene = trimesh.load(str(path), force="scene", process=False)
    return trimesh.util.concatenate([g for g in scene.dump() if isinstance(g, trimesh.Trimesh)])


def bbox_diagonal(mesh) -> float:
    return float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]))


def normals_agree(written, reference) -> float:
    """Fraction of the written faces whose normal points the same way as the nearest face of the reference."""
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(reference.triangles_center).query(written.triangles_center)
    return float(((written.face_normals * reference.face_normals[nearest]).sum(1) > 0).mean())


def read_back(path):
    import trimesh

    return trimesh.load(str(path), force="mesh", process=False)


def chamfer_fraction(a, b) -> float:
    """Surface Chamfer (``_lift_helpers.surface_chamfer``) of trimesh meshes ``a`` and ``b`` as a fraction of ``b``'s
    bounding-box diagonal."""
    from _lift_helpers import surface_chamfer

    return surface_chamfer(a.vertices, a.faces, b.vertices, b.faces, samples=2000)[0] / bbox_diagonal(b)
