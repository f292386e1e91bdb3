"""LiftToMesh: four generated views -> a textured mesh (core MESH for SaveGLB/Preview3D + our own textured GLB)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ..dreamedit3d_core.errors import CheckpointError, ConfigError, ShapeError
from ..dreamedit3d_core.lifting.components import KEEP_POLICIES, KeepPolicy
from ..dreamedit3d_core.lifting.pipeline import MODES, LiftMode
from ._compat import compute_device, free_memory_for, io
from .folders import FOLDER_LGM, model_files, model_path, model_stamp, output_relative, save_target
from .progress import ComfyProgress
from .provenance import image_record
from .sockets import MVSamplesSocket, MVViewsSocket, core_mesh_batch, from_comfy_image

CATEGORY = "DreamEdit3D/lift"
#: The node's choices: "auto" picks the best mode available (see ``best_mode``), then the core's modes.
NODE_MODES = ("auto",) + MODES
#: The ``reconstructor`` choice that uses no file from models/lgm.
NO_RECONSTRUCTOR = "none"
#: The name the chosen LGM file is registered under, for the node's own run only (what was registered under that
#: name before, e.g. by a user's script, is put back afterwards).
LGM_NAME = "lgm"


def reconstructor_choices() -> list:
    """"none" and the LGM weight files in models/lgm ('/'-separated names); files there that are not LGM (an SD or
    MVDream checkpoint, a truncated download) are not offered. Reads each file's header only."""
    from ..dreamedit3d_core.lifting.lgm import is_lgm_file

    try:
        names = model_files(FOLDER_LGM)
    except KeyError:  # the folder kind is not registered in this host
        return [NO_RECONSTRUCTOR]
    offered = [NO_RECONSTRUCTOR]
    for name in names:
        try:
            path = model_path(FOLDER_LGM, name)
        except CheckpointError:  # listed from ComfyUI's file cache but gone since (deleted, folder unregistered)
            continue
        if is_lgm_file(path):
            offered.append(name)
    return offered


def reconstructor_input():
    """The optional ``reconstructor`` combo: "none" and the LGM files found (optional, so workflows saved before it
    existed still load and run with "none")."""
    return io.Combo.Input("reconstructor", options=reconstructor_choices(), default=NO_RECONSTRUCTOR, optional=True,
                          tooltip="LGM weights from models/lgm (e.g. model_fp16_fixrot.safetensors from ashawkey/LGM; "
                                  "only LGM files are listed): real geometry for new shapes from the four views, "
                                  "used by mode auto without a source asset and by hull. none: the silhouettes' "
                                  "visual hull.")


def reconstructor_problem(name: str) -> Optional[str]:
    """Why the ``reconstructor`` value ``name`` cannot be used, as a one-line message, or None when it can."""
    from ..dreamedit3d_core.lifting.lgm import RELEASED_FILE

    if name == NO_RECONSTRUCTOR:
        return None
    problem = lgm_file_problem(name)
    choices = reconstructor_choices()
    if problem is None and name not in choices:
        found = ", ".join(repr(c) for c in choices[1:13]) or "none"
        return (f"reconstructor {name!r} is not an LGM file in models/lgm (LGM files there: {found}): put "
                f"{RELEASED_FILE} into models/lgm and refresh, or choose {NO_RECONSTRUCTOR!r}")
    return problem


def lgm_file_problem(name: str) -> Optional[str]:
    """Why ``name``, a file in models/lgm, cannot be LGM's weights (the one-line message loading it gives), or None
    when it is LGM's or not there at all (``reconstructor_problem`` then names it as not offered)."""
    from ..dreamedit3d_core.lifting.lgm import is_lgm_file, load_lgm

    try:
        path = model_path(FOLDER_LGM, name)
    except (CheckpointError, KeyError):
        return None
    if is_lgm_file(path):
        return None
    try:  # refused on its header (no tensor read): the message says what the file is
        load_lgm(path)
    except CheckpointError as exc:
        return f"reconstructor {name!r}: {exc}"
    return None


def best_mode(has_source: bool, lgm_chosen: bool = False) -> tuple:
    """What "auto" lifts with, as (mode, reconstructor name or None): the core's ``best_mode`` (the source's geometry
    where the edit keeps it when the views come from an asset; else a reconstructor; else the visual hull), with the LGM
    file chosen on the node as the reconstructor."""
    from ..dreamedit3d_core.lifting import best_mode as core_best_mode

    return core_best_mode(has_source, LGM_NAME if lgm_chosen else None)


def lift_plan(mode: str, has_source: bool, lgm_chosen: bool) -> tuple:
    """The node's (mode, reconstructor name or None) for its ``mode`` widget and whether an LGM file is chosen.

    LGM replaces the silhouettes' geometry, so it serves "auto" without a source and "hull"; "auto" with a source and
    "component_aware" keep the source's components and let LGM shape only the new parts. Asked for with a mode that
    keeps all of the source's geometry ("source_guided", "keep_source"), it is refused rather than ignored.
    """
    if mode == "auto":
        return best_mode(has_source, lgm_chosen)
    mode = LiftMode(mode)
    if mode in (LiftMode.HULL, LiftMode.COMPONENT_AWARE):
        return mode, (LGM_NAME if lgm_chosen else None)
    if lgm_chosen:
        raise ConfigError(f"mode {mode.value!r} keeps the source's geometry, and LGM would replace all of it: set "
                          f"reconstructor to {NO_RECONSTRUCTOR!r}, or use mode 'auto', 'component_aware' (LGM shapes "
                          "the new parts only) or 'hull' with LGM")
    return mode, None


@contextmanager
def lgm_for_this_run(path: Optional[Path], device) -> Iterator[None]:
    """Register the LGM file ``path`` as ``LGM_NAME`` on ``device`` for the body, then put back what was there.

    The weights are loaded (or taken from the reconstructor cache) before the body runs, so a foreign or truncated
    file stops the node with its one-line CheckpointError before any lifting; on a GPU the network goes back to the
    CPU afterwards, so it holds no VRAM outside ComfyUI's model management between runs.
    """
    if path is None:
        yield
        return
    from ..dreamedit3d_core.lifting.lgm import register_lgm
    from ..dreamedit3d_core.lifting.pipeline import (register_reconstructor, registered_reconstructor,
                                                     unregister_reconstructor)

    previous = registered_reconstructor(LGM_NAME)
    free_memory_for(int(1.5 * path.stat().st_size), device)  # room next to MVDream
    rec = register_lgm(path, name=LGM_NAME, overwrite=True)
    try:
        rec.network(device)
        yield
    finally:
        if device.type != "cpu":
            rec.offload()
        if previous is None:
            unregister_reconstructor(LGM_NAME)
        else:
            register_reconstructor(LGM_NAME, previous, overwrite=True)


class LiftToMesh(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamEdit3D_LiftToMesh",
            display_name="Lift Views to Mesh (DreamEdit3D)",
            category=CATEGORY,
            description="Builds a textured mesh from the four views with their exact cameras: component-aware geometry "
                        "(the source's components the edit does not touch exactly, with their own texture; new geometry "
                        "only where the edit changed the shape) or, with no source, a visual hull block-out (or LGM's "
                        "geometry); or re-textures the source mesh. Writes a GLB with texture and provenance into the output folder, in the source "
                        "asset's own coordinates (glTF's +Y up, front +Z without one).",
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="The four views [4,H,W,3] of an edit, or N*4 views of N edits (MVSample's "
                                           "IMAGE for a several-line prompt): one GLB per edit."),
                MVViewsSocket.Input("views", tooltip="The views the edit started from: their cameras (and the source "
                                                     "asset, and ComponentMask's masks when it made them)."),
                io.Combo.Input("mode", options=list(NODE_MODES), default="auto",
                               tooltip="auto: component_aware when the views come from an asset, else the LGM file "
                                       "chosen as reconstructor (or a reconstruction model registered in Python), "
                                       "else hull. "
                                       "component_aware: the source's components the edit does not touch keep their "
                                       "exact faces and texture (see keep), smooth new geometry where the silhouettes "
                                       "grow, parts the views no longer show removed; "
                                       "source_guided: the source's solid where the edit keeps it, new geometry "
                                       "where the silhouettes grow; keep_source: the source mesh exactly, re-textured "
                                       "(appearance edits; uses the source silhouettes unless alpha is given); hull: "
                                       "a preview-quality block-out from four silhouettes (slabs and facets from the "
                                       "side, concavities lost), or LGM's geometry when a reconstructor is chosen."),
                io.Int.Input("grid", default=128, min=16, max=512, step=8,
                             tooltip="Voxels along the longest side (quality 128)."),
                io.Int.Input("texture_size", default=1024, min=0, max=4096, step=64,
                             tooltip="Side of the baked atlas in texels (0 = vertex colours only, the asset's own "
                                     "colours kept where the edit left it alone). Faces the edit left alone keep the "
                                     "asset's own images and UVs: the GLB's texture is the asset's image itself when it "
                                     "has one square image and every face is the asset's, else a canvas of its images "
                                     "beside this atlas (at most 4096², or the largest image's side when larger; if "
                                     "they do not fit, the least-used images are shrunk, then the atlas alone is used, "
                                     "as the lift's stats 'canvas' says)."),
                io.Int.Input("face_budget", default=50000, min=0, max=2000000, tooltip="Decimate to this many faces (0: none)."),
                io.Float.Input("background", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Background grey of the views, keyed out exactly when detect_background is off "
                                       "and no alpha is given."),
                io.String.Input("filename_prefix", default="dreamedit3d/edit", tooltip="GLB path prefix in the output folder."),
                io.Mask.Input("alpha", optional=True,
                              tooltip="Silhouettes [4,H,W]; by default the background is keyed out, and with the views' "
                                      "asset each keyed view is first moved onto the asset's render (a sampler places "
                                      "objects up to a few px off) and the asset's background-coloured surface (a white "
                                      "van on white) is kept where the view still shows it."),
                io.Boolean.Input("also_obj", default=False, optional=True,
                                 tooltip="Also write OBJ + MTL + PNG next to each GLB (same name, never overwriting)."),
                io.Boolean.Input("detect_background", default=True, optional=True,
                                 tooltip="Read each view's background colour off its border (sampled views sit on the "
                                         "white or grey MVDream was trained with, never exactly the render's); off: "
                                         "key exactly the `background` grey."),
                reconstructor_input(),
                io.Combo.Input("keep", options=list(KEEP_POLICIES), default=KeepPolicy.ALL_BUT_EDITED.value,
                               optional=True,
                               tooltip="component_aware (and auto with an asset): which of the source's components keep "
                                       "their exact geometry and texture. all_but_edited: every one but those named in "
                                       "components, those the edit prompt leaves out when it uses some components' "
                                       "<tokens>, and those the views no longer show; listed: only those named in "
                                       "components; none: rebuild the whole object from the source and the views."),
                io.String.Input("components", default="", optional=True,
                                tooltip="Component names, separated by commas (<hat> works too): the edited ones for "
                                        "keep all_but_edited, the kept ones for keep listed. The names are "
                                        "ComponentMask's when the views carry its masks, else the asset's parts."),
                MVSamplesSocket.Input("samples", optional=True,
                                      tooltip="MVSample's samples: their recorded prompt tells which components the "
                                              "edit touches (by default read from the images MVSample made)."),
            ],
            outputs=[
                io.Mesh.Output("out_mesh", display_name="mesh",
                               tooltip="ComfyUI's core MESH (for SaveGLB / Preview3D); a batch of N meshes for N edits."),
                io.String.Output("out_glb_path", display_name="glb_path",
                                 tooltip="Our textured GLB of the first edit, relative to the output folder (for "
                                         "Preview3D, which shows one file; the node's own view lists them all)."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def validate_inputs(cls, **kw):
        if kw.get("mode") is not None and kw["mode"] not in NODE_MODES:
            return f"mode {kw['mode']!r} is not one of {list(NODE_MODES)}"
        if kw.get("keep") is not None and kw["keep"] not in KEEP_POLICIES:
            return f"keep {kw['keep']!r} is not one of {list(KEEP_POLICIES)}"
        chosen = kw.get("reconstructor")
        if isinstance(chosen, str):
            return reconstructor_problem(chosen) or True
        return True

    @classmethod
    def fingerprint_inputs(cls, reconstructor=None, **_):
        # LGM weights overwritten under the same name lift again
        return model_stamp(FOLDER_LGM, reconstructor, none=(NO_RECONSTRUCTOR,))

    @classmethod
    def execute(cls, images, views, mode="auto", grid=128, texture_size=1024, face_budget=50000, background=1.0,
                filename_prefix="dreamedit3d/edit", alpha=None, also_obj=False, detect_background=True,
                reconstructor=NO_RECONSTRUCTOR, keep=KeepPolicy.ALL_BUT_EDITED.value, components="",
                samples=None) -> io.NodeOutput:
        from ..dreamedit3d_core.lifting import export_mesh, lift_alpha, lift_to_mesh
        from ..dreamedit3d_core.lifting.export import in_output_frame
        from ..dreamedit3d_core.provenance import glb_extras, item_record

        # None: a saved workflow from before the input, or the frontend's null for an empty optional combo
        lgm_path = model_path(FOLDER_LGM, reconstructor) if reconstructor not in (None, NO_RECONSTRUCTOR) else None
        mode, reconstructor_name = lift_plan(mode, views.asset is not None, lgm_path is not None)
        if mode != LiftMode.HULL and views.asset is None:
            raise ConfigError(f"mode {mode.value!r} needs the source asset: connect views from OrthoRender of an asset file")
        device = compute_device()
        num_views = views.render.num_views
        if images.ndim != 4 or images.shape[0] == 0 or images.shape[0] % num_views:
            raise ShapeError(f"LiftToMesh needs {num_views} views per edit (N*{num_views} images, view-contiguous), got "
                             f"IMAGE {list(images.shape)}: connect MVSample's IMAGE")
        edits = images.shape[0] // num_views
        rgb_all = from_comfy_image(images).to(device)
        alpha_all = None if alpha is None else alpha.reshape(-1, 1, *alpha.shape[-2:]).float().to(device)
        if alpha_all is not None and alpha_all.shape[0] not in (num_views, edits * num_views):
            raise ShapeError(f"alpha has {alpha_all.shape[0]} masks; give {num_views} (shared) or {edits * num_views} "
                             "(one per view of every edit)")
        record = image_record(images, cls.hidden.prompt, samples)
        folder, stem, counter, subfolder = save_target(filename_prefix)
        progress = ComfyProgress(1, cls.hidden.unique_id)
        meshes, paths, items = [], [], []
        with lgm_for_this_run(lgm_path if reconstructor_name == LGM_NAME else None, device):
            for n in range(edits):
                rgb = rgb_all[n * num_views:(n + 1) * num_views]
                alpha_views = None
                if alpha_all is not None:
                    alpha_views = alpha_all if alpha_all.shape[0] == num_views else alpha_all[n * num_views:(n + 1) * num_views]
                else:
                    # keep_source: the geometry is the source's, so its own silhouettes are the right ones
                    alpha_views = lift_alpha(mode, views.render.alpha.float().to(device))
                edit_record = item_record(record, n, num_views)
                lifted = lift_to_mesh(rgb, views.render.cameras, alpha=alpha_views,
                                      background="auto" if detect_background else (float(background),) * 3,
                                      source=views.asset, mode=mode, grid=int(grid), texture_size=int(texture_size),
                                      face_budget=int(face_budget), progress=progress, device=device,
                                      reconstructor=reconstructor_name, frame=views.render.source_frame,
                                      keep=keep or KeepPolicy.ALL_BUT_EDITED.value, components=components or "",
                                      prompt=edit_record.get("prompt"), component_masks=views.masks).to("cpu")
                # files and the core MESH in the source asset's own coordinates (the frame the views carry)
                lifted = in_output_frame(lifted)
                extras = glb_extras(edit_record, generator="DreamEdit3D",
                                    workflow=record.get("workflow", {}))
                path = export_mesh(lifted, folder / f"{stem}_{counter + n:05d}_.glb", fmt="glb", extras=extras)
                if also_obj:
                    export_mesh(lifted, path.with_suffix(".obj"), fmt="obj", extras=extras)
                meshes.append(dict(vertices=lifted.vertices, faces=lifted.faces, uvs=lifted.uv, texture=lifted.texture,
                                   vertex_colors=lifted.vertex_colors))
                paths.append(output_relative(path))
                items.append({"filename": path.name, "subfolder": subfolder, "type": "output"})
        # Preview3D takes one file name: glb_path is the first edit's GLB; the ui lists every GLB written
        return io.NodeOutput(core_mesh_batch(meshes), paths[0], ui={"3d": items})
