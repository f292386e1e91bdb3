"""ComponentMask: one mask per named component in every view (exact from part ids, or Segment Anything)."""

from __future__ import annotations

from ..dreamedit3d_core.cameras import VIEW_NAMES
from ..dreamedit3d_core.errors import ConfigError
from ..dreamedit3d_core.types import MaskSource
from ._compat import compute_device, free_memory_for, io, ui
from .folders import FOLDER_SAMS, NONE_CHOICE, model_path, model_stamp, optional_model_choices
from .sockets import MVViewsSocket, component_map_image, component_masks_to_comfy

CATEGORY = "DreamEdit3D/render"
SOURCES = tuple(m.value for m in MaskSource)
NO_SAM = NONE_CHOICE  # the sam_model choice when models/sams is empty (source 'parts' needs none)


def parse_points(text: str) -> list[tuple[float, float]]:
    """'x,y; x,y' (pixels of the prompt view) -> [(x, y), ...]; a clear error for anything else."""
    points = []
    for chunk in (c.strip() for c in str(text).replace("\n", ";").split(";")):
        if not chunk:
            continue
        try:
            x, y = (float(v) for v in chunk.split(","))
        except ValueError:
            raise ConfigError(f"point {chunk!r} is not 'x,y' in pixels; write points as 'x,y; x,y'") from None
        points.append((x, y))
    return points


class ComponentMask(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        sams = optional_model_choices(FOLDER_SAMS, NO_SAM)
        return io.Schema(
            node_id="DreamEdit3D_ComponentMask",
            display_name="Component Masks (DreamEdit3D)",
            category=CATEGORY,
            description="Names the components to learn and the parts each takes, e.g. 'hat: Hat, Brim; dog: *' "
                        "('*' = all other parts). With source 'sam', one component is segmented by Segment Anything "
                        "from points on one view, re-projected consistently into the other views.",
            inputs=[
                MVViewsSocket.Input("views", tooltip="The views from DreamEdit3D_OrthoRender."),
                io.String.Input("components", default="antenna: antenna; robot: *", multiline=True,
                                tooltip="'name: part, part; name: *' - one component per ';'. Part names are the "
                                        "asset's node/mesh names; '*' takes every part not named before."),
                io.Combo.Input("source", options=MaskSource, default=MaskSource.PARTS,
                               tooltip="parts: exact masks from the asset's parts; sam: Segment Anything (assets "
                                       "without usable parts)."),
                io.Combo.Input("sam_model", options=sams, default=NO_SAM, optional=True,
                               tooltip="SAM checkpoint in models/sams (source 'sam' only)."),
                io.Combo.Input("prompt_view", options=list(VIEW_NAMES), default="front", optional=True,
                               tooltip="The view the SAM points are placed on (source 'sam' only)."),
                io.String.Input("points", default="", optional=True,
                                tooltip="SAM points on the prompt view in pixels: 'x,y; x,y' (source 'sam' only)."),
            ],
            outputs=[
                io.Mask.Output("out_mask", display_name="mask", tooltip="Union of all components per view [4,H,W]."),
                io.Mask.Output("out_component_masks", display_name="component_masks",
                               tooltip="Every component's masks [K*4,H,W], component-major (k*4 + view)."),
                io.Image.Output("out_component_map", display_name="component_map", tooltip="Components in colour [4,H,W,3]."),
                MVViewsSocket.Output("out_views", display_name="views", tooltip="The views with the component masks attached."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, source=None, sam_model=None, **_):
        # a SAM checkpoint overwritten under the same name segments again
        return model_stamp(FOLDER_SAMS, sam_model, none=(NO_SAM,)) if source == MaskSource.SAM.value else ""

    @classmethod
    def execute(cls, views, components, source="parts", sam_model=None, prompt_view="front", points="") -> io.NodeOutput:
        from ..dreamedit3d_core import masks as core_masks

        if MaskSource(source) is MaskSource.PARTS:
            masks = core_masks.masks_from_parts(views.render, components)
        else:
            if not sam_model or sam_model == NO_SAM:
                raise ConfigError("source 'sam' needs a SAM checkpoint: put one (e.g. sam_vit_b_01ec64.pth) into models/sams")
            # the views are kept on the CPU, and SAM runs on the render's device unless told otherwise: run it on
            # ComfyUI's compute device (a ViT-H image encoder on the CPU takes tens of seconds per view)
            path, device = model_path(FOLDER_SAMS, sam_model), compute_device()
            free_memory_for(int(1.5 * path.stat().st_size), device)  # room next to MVDream
            masks = core_masks.masks_from_sam(views.render, path, components=components,
                                              view=VIEW_NAMES.index(prompt_view), points=parse_points(points),
                                              device=device)
        union, stacked = component_masks_to_comfy(masks)
        cmap = component_map_image(masks)
        return io.NodeOutput(union, stacked, cmap, views.with_masks(masks), ui=ui.PreviewImage(cmap, cls=cls))
