"""LiftToMesh: four generated views -> a textured mesh (core MESH for SaveGLB/Preview3D + our own textured GLB)."""

from __future__ import annotations

import json

from ..dreamedit3d_core.errors import ConfigError
from ._compat import ComfyProgress, compute_device, core_mesh, io, output_relative, save_target
from .sockets import MVViewsSocket, from_comfy_image

CATEGORY = "DreamEdit3D/lift"
MODES = ("hull", "source_guided", "keep_source")


class LiftToMesh(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamEdit3D_LiftToMesh",
            display_name="Lift Views to Mesh (DreamEdit3D)",
            category=CATEGORY,
            description="Builds a textured mesh from the four views with their exact cameras (visual hull + marching "
                        "cubes + baked UV texture), or re-textures the source mesh. Writes a GLB with texture and "
                        "provenance into the output folder.",
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="The four views [4,H,W,3] (e.g. MVSample's IMAGE)."),
                MVViewsSocket.Input("views", tooltip="The views the edit started from: their cameras (and the source "
                                                     "asset for source_guided/keep_source)."),
                io.Combo.Input("mode", options=list(MODES), default="hull",
                               tooltip="hull: new geometry from the silhouettes; source_guided: source where the edit "
                                       "keeps it; keep_source: the source mesh exactly, re-textured (appearance "
                                       "edits; uses the source silhouettes unless alpha is given)."),
                io.Int.Input("grid", default=128, min=16, max=512, step=8,
                             tooltip="Voxels along the longest side (quality 128)."),
                io.Int.Input("texture_size", default=1024, min=0, max=4096, step=64,
                             tooltip="Texture side in texels (0 = vertex colours only)."),
                io.Int.Input("face_budget", default=50000, min=0, max=2000000, tooltip="Decimate to this many faces (0: none)."),
                io.Float.Input("background", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Background grey of the views (keyed out when no alpha is given)."),
                io.String.Input("filename_prefix", default="dreamedit3d/edit", tooltip="GLB path prefix in the output folder."),
                io.Mask.Input("alpha", optional=True, tooltip="Silhouettes [4,H,W]; by default the background is keyed out."),
            ],
            outputs=[
                io.Mesh.Output("out_mesh", display_name="mesh", tooltip="ComfyUI's core MESH (for SaveGLB / Preview3D)."),
                io.String.Output("out_glb_path", display_name="glb_path",
                                 tooltip="Our textured GLB, relative to the output folder (for Preview3D)."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def validate_inputs(cls, **kw):
        if kw.get("mode") is not None and kw["mode"] not in MODES:
            return f"mode {kw['mode']!r} is not one of {list(MODES)}"
        return True

    @classmethod
    def execute(cls, images, views, mode="hull", grid=128, texture_size=1024, face_budget=50000, background=1.0,
                filename_prefix="dreamedit3d/edit", alpha=None) -> io.NodeOutput:
        from ..dreamedit3d_core.lifting import export_mesh, lift_to_mesh

        if mode != "hull" and views.asset is None:
            raise ConfigError(f"mode {mode!r} needs the source asset: connect views from OrthoRender of an asset file")
        device = compute_device()
        rgb = from_comfy_image(images, expect=views.render.num_views).to(device)
        alpha_views = None if alpha is None else alpha.reshape(-1, 1, *alpha.shape[-2:]).float().to(device)
        if alpha_views is None and mode == "keep_source":
            # the geometry is the source's, so its own silhouettes are the right ones (no keying of the new views)
            alpha_views = views.render.alpha.float().to(device)
        lifted = lift_to_mesh(rgb, views.render.cameras, alpha=alpha_views, background=(float(background),) * 3,
                              source=views.asset, mode=mode, grid=int(grid), texture_size=int(texture_size),
                              face_budget=int(face_budget), progress=ComfyProgress(1, cls.hidden.unique_id),
                              device=device).to("cpu")
        folder, stem, counter, subfolder = save_target(filename_prefix)
        path = export_mesh(lifted, folder / f"{stem}_{counter:05d}_.glb", fmt="glb", extras=_provenance(cls.hidden.prompt))
        mesh = core_mesh(lifted.vertices, lifted.faces, uvs=lifted.uv, texture=lifted.texture,
                         vertex_colors=lifted.vertex_colors)
        item = {"filename": path.name, "subfolder": subfolder, "type": "output"}
        return io.NodeOutput(mesh, output_relative(path), ui={"3d": [item]})


def _provenance(prompt) -> dict:
    """What made this mesh: the prompts, seeds and tokens of the DreamEdit3D nodes in the running workflow."""
    extras = {"generator": "DreamEdit3D"}
    if not isinstance(prompt, dict):
        return extras
    keep = {"prompt", "negative_prompt", "seed", "noise_seed", "tokens_name", "ckpt_name", "sampler_name", "scheduler",
            "steps", "cfg", "components"}
    nodes = {}
    for nid, node in prompt.items():
        ct = node.get("class_type", "")
        if ct.startswith("DreamEdit3D_") or ct in ("KSamplerSelect", "RandomNoise"):
            vals = {k: v for k, v in node.get("inputs", {}).items() if k in keep and not isinstance(v, list)}
            if vals:
                nodes[f"{nid}:{ct}"] = vals
    extras["workflow"] = json.loads(json.dumps(nodes, default=str))
    return extras
