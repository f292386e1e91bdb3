"""OrthoRender: an asset (a file from the input folder, or a core MESH) -> four views in MVDream's camera convention.

The node id says "Ortho" for the saved workflows that use it; the views are perspective renders (40 degree field of
view by default) from MVDream's four orthogonal directions (azimuths 90/180/270/0: front, right, back, left)."""

from __future__ import annotations

import torch

from ..dreamedit3d_core.assets import SUPPORTED_SUFFIXES
from ..dreamedit3d_core.errors import AssetError
from ..dreamedit3d_core.geometry import AXES as AXIS_VECTORS
from ..dreamedit3d_core.render import LIGHTING_MODES
from ._compat import UPLOAD_FILE, compute_device, io, ui
from .folders import input_stamp, list_input_files, resolve_input_file
from .sockets import MVViews, MVViewsSocket, mesh_from_core, to_comfy_image, to_comfy_mask

CATEGORY = "DreamEdit3D/render"
ASSET_EXTENSIONS = SUPPORTED_SUFFIXES  # what the loader reads (one definition)
AXES = tuple(AXIS_VECTORS)  # the axis names the loader understands
LIGHTING = LIGHTING_MODES  # the renderer's own option list (one definition)
UPLOAD = UPLOAD_FILE


class OrthoRender(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = list_input_files(ASSET_EXTENSIONS)
        return io.Schema(
            node_id="DreamEdit3D_OrthoRender",
            display_name="Render 4 MVDream Views (DreamEdit3D)",
            category=CATEGORY,
            description="Renders an asset as MVDream sees it: perspective views (field of view fov_deg) from MVDream's "
                        "four orthogonal directions (front, right, back, left; elevation 15, azimuths 90/180/270/0): "
                        "colour, alpha, depth, normals and part ids, with the exact cameras.",
            inputs=[
                io.Combo.Input("asset", options=files, default=files[0] if files else None, upload=UPLOAD,
                               tooltip="A GLB/GLTF/OBJ/PLY file from ComfyUI's input folder (subfolders included). "
                                       "Ignored when a mesh is connected."),
                io.Int.Input("resolution", default=256, min=64, max=1024, step=8,
                             tooltip="Side of each view in pixels (a multiple of 8; MVDream works at 256)."),
                io.Float.Input("elevation_deg", default=15.0, min=-30.0, max=60.0, step=0.5,
                               tooltip="Camera elevation in degrees (MVDream default 15)."),
                io.Float.Input("fov_deg", default=40.0, min=15.0, max=60.0, step=1.0,
                               tooltip="Vertical field of view (MVDream trained with 15-60 degrees)."),
                io.Float.Input("background", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Background grey level (1 = white, as MVDream trains on white/grey)."),
                io.Combo.Input("lighting", options=[getattr(m, "value", m) for m in LIGHTING], default="ambient_diffuse",
                               tooltip="ambient_diffuse: flat ambient + simple diffuse light; unlit: base colours only."),
                io.Combo.Input("front_axis", options=list(AXES), default="+z",
                               tooltip="The asset's own front direction (glTF: +Z). It is turned to MVDream's front view."),
                io.Combo.Input("up_axis", options=list(AXES), default="+y", tooltip="The asset's up direction (glTF: +Y)."),
                io.Mesh.Input("mesh", optional=True, tooltip="A core MESH to render instead of the asset file "
                                                              "(no parts: use SAM masks)."),
            ],
            outputs=[
                io.Image.Output("out_images", display_name="images", tooltip="The four views [4,H,W,3] (front, right, back, left)."),
                io.Mask.Output("out_alpha", display_name="alpha", tooltip="Coverage of the object [4,H,W]."),
                io.Image.Output("out_normals", display_name="normals", tooltip="World-space normals mapped to 0..1 [4,H,W,3]."),
                io.Image.Output("out_depth", display_name="depth", tooltip="Depth normalised to 0..1 per view (near = bright) [4,H,W,3]."),
                MVViewsSocket.Output("out_views", display_name="views", tooltip="The views, cameras, part ids and the asset."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, input_types=None, **kw):
        # input_types: the types arriving on linked inputs (ComfyUI passes it when asked for by name)
        if kw.get("asset") is not None and not (input_types and "mesh" in input_types):
            try:
                resolve_input_file(kw["asset"], ASSET_EXTENSIONS)
            except AssetError as exc:
                return str(exc)
        if kw.get("front_axis") and kw.get("up_axis") and str(kw["front_axis"])[1:] == str(kw["up_axis"])[1:]:
            return f"front_axis {kw['front_axis']} and up_axis {kw['up_axis']} must be different axes"
        if kw.get("resolution") is not None and int(kw["resolution"]) % 8:
            return f"resolution {kw['resolution']} is not a multiple of 8"
        return True

    @classmethod
    def fingerprint_inputs(cls, asset=None, **_):
        # an asset overwritten under the same name renders again (a connected mesh is tracked by ComfyUI itself)
        return input_stamp(asset, ASSET_EXTENSIONS)

    @classmethod
    def execute(cls, asset, resolution=256, elevation_deg=15.0, fov_deg=40.0, background=1.0, lighting="ambient_diffuse",
                front_axis="+z", up_axis="+y", mesh=None) -> io.NodeOutput:
        from ..dreamedit3d_core.assets import asset_from_arrays, load_asset
        from ..dreamedit3d_core.cameras import MVCameras
        from ..dreamedit3d_core.render import render_views

        if mesh is not None:
            vertices, faces = mesh_from_core(mesh)
            mesh_asset = asset_from_arrays(vertices.cpu().numpy(), faces.cpu().numpy(), front_axis=front_axis, up_axis=up_axis)
        else:
            if front_axis[1] == up_axis[1]:
                raise AssetError(f"front_axis {front_axis} and up_axis {up_axis} must be different axes")
            mesh_asset = load_asset(resolve_input_file(asset, ASSET_EXTENSIONS), front_axis=front_axis, up_axis=up_axis)
        cameras = MVCameras.mvdream_default(elevation_deg=float(elevation_deg), fov_deg=float(fov_deg))
        device = compute_device()
        render = render_views(mesh_asset.to(device), cameras, resolution=int(resolution),
                              background=(float(background),) * 3, lighting=lighting)
        render = render.to("cpu")
        images = to_comfy_image(render.rgb)
        depth = render.depth
        far = depth.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        near = torch.where(depth > 0, depth, far).amin(dim=(1, 2, 3), keepdim=True)
        depth01 = torch.where(depth > 0, 1.0 - (depth - near) / (far - near).clamp_min(1e-6) * 0.8, torch.zeros_like(depth))
        normals01 = torch.where(render.alpha > 0, render.normals * 0.5 + 0.5, torch.zeros_like(render.normals))
        views = MVViews(render=render, asset=mesh_asset.to("cpu"))
        return io.NodeOutput(images, to_comfy_mask(render.alpha), to_comfy_image(normals01), to_comfy_image(depth01), views,
                             ui=ui.PreviewImage(images, cls=cls))
