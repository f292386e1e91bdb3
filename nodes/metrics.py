"""EditMetrics: CLIP directional similarity, CLIPScore, CLIP-I and DINO identity of an edit, per view and mean."""

from __future__ import annotations

from typing import Optional

from ..dreamedit3d_core.errors import ConfigError
from ._compat import compute_device, free_memory_for, io, ui
from .folders import (FOLDER_CLIP_VISION, FOLDER_DINO, NONE_CHOICE, model_choice_problem, model_path, model_stamp,
                      optional_model_choices)
from .sockets import MVViewsSocket, from_comfy_image, to_comfy_image

CATEGORY = "DreamEdit3D/evaluate"
NONE = NONE_CHOICE
FOLDER_CLIP = FOLDER_CLIP_VISION  # ComfyUI's own folder
#: the metric model widgets of EditMetrics and TokenReport: (input id, model folder)
METRIC_MODEL_INPUTS = (("clip_model", FOLDER_CLIP), ("dino_model", FOLDER_DINO))


def metric_model_inputs(clip_tooltip: str, dino_tooltip: str, optional: bool = False) -> list:
    """The CLIP and DINO widgets: (none) and the files of models/clip_vision, models/dino. Required ones default to
    the first file (a metric needs a model); optional ones to (none)."""
    widgets = []
    for (input_id, kind), tooltip in zip(METRIC_MODEL_INPUTS, (clip_tooltip, dino_tooltip)):
        choices = optional_model_choices(kind)
        default = NONE if optional else choices[min(1, len(choices) - 1)]
        widgets.append(io.Combo.Input(input_id, options=choices, default=default, optional=optional, tooltip=tooltip))
    return widgets


def metric_model_problem(clip_model, dino_model) -> Optional[str]:
    """Why a chosen CLIP or DINO file cannot be used (not in its folder), or None; (none) and linked inputs pass."""
    problems = (model_choice_problem(kind, value, input_id)
                for (input_id, kind), value in zip(METRIC_MODEL_INPUTS, (clip_model, dino_model)))
    return next((p for p in problems if p), None)


def metric_models_stamp(clip_model, dino_model) -> str:
    """The fingerprint of the chosen metric model files: a model overwritten under the same name scores again."""
    return "|".join(model_stamp(kind, value) for (_, kind), value in zip(METRIC_MODEL_INPUTS, (clip_model, dino_model)))


def load_metric_models(clip_model, dino_model, device) -> tuple:
    """The chosen CLIP and DINO metric models on ``device`` ((none): None), after ComfyUI made room for them next to
    the models it holds."""
    from ..dreamedit3d_core import metrics

    paths = {input_id: model_path(kind, value) for (input_id, kind), value in zip(METRIC_MODEL_INPUTS, (clip_model, dino_model))
             if value not in (NONE, None)}
    if paths:
        free_memory_for(int(1.5 * sum(p.stat().st_size for p in paths.values())), device)  # room next to MVDream
    clip = metrics.load_metric_clip(paths["clip_model"], device) if "clip_model" in paths else None
    dino = metrics.load_metric_dino(paths["dino_model"], device) if "dino_model" in paths else None
    return clip, dino


def parse_rgb(text: str) -> tuple[float, float, float]:
    """'r, g, b' in 0..1 -> (r, g, b); a clear error for anything else."""
    try:
        rgb = tuple(float(v) for v in str(text).replace(";", ",").split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
        raise ConfigError(f"background {text!r} is not 'r, g, b' with values in 0..1 (white is '1, 1, 1')")
    return rgb


class EditMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamEdit3D_EditMetrics",
            display_name="Edit Metrics (DreamEdit3D)",
            category=CATEGORY,
            description="Scores an edit view by view against the source renders (same cameras): CLIP directional "
                        "similarity and CLIPScore (need a full CLIP ViT-L/14 with its text tower), CLIP-I, and DINO "
                        "ViT-S/16 identity, optionally only on the components the edit must not touch.",
            inputs=[
                io.Image.Input("source_images", tooltip="The source renders [4,H,W,3] (DreamEdit3D_OrthoRender)."),
                io.Image.Input("edited_images",
                               tooltip="The edited views [4,H,W,3] with the same cameras; several edits of the same "
                                       "source as one batch [N*4,H,W,3] (edit-major) give one table per edit."),
                io.String.Input("source_caption", default="a 3D model of a robot",
                                tooltip="A caption of the source object (for CLIP directional similarity)."),
                io.String.Input("edit_caption", default="a 3D model of a robot wearing a hat", multiline=True,
                                tooltip="A caption of the intended result (CLIP directional similarity and CLIPScore); "
                                        "for a batch of N edits, one caption per line."),
                *metric_model_inputs(
                    clip_tooltip="CLIP from models/clip_vision. The text scores need the full CLIPModel: the "
                                 "openai/clip-vit-large-patch14 folder (config.json, model.safetensors, vocab.json, "
                                 "merges.txt) or its full model.safetensors; an image-only clip_vision file gives "
                                 "CLIP-I only.",
                    dino_tooltip="DINO ViT-S/16 from models/dino: the facebook/dino-vits16 transformers folder "
                                 "(config.json + model.safetensors); pick any file inside it."),
                io.Mask.Input("protected_mask", optional=True,
                              tooltip="Pixels of the components the edit must not touch [4,H,W] (1 = protected): adds "
                                      "DINO identity on those pixels only (the rest is set to the background in both)."),
                MVViewsSocket.Input("views", optional=True,
                                    tooltip="Instead of protected_mask: the views with component masks "
                                            "(DreamEdit3D_ComponentMask); every component not listed in "
                                            "edited_components is protected."),
                io.String.Input("edited_components", default="", optional=True,
                                tooltip="With 'views': the components the edit changes, e.g. 'hat' or 'hat, scarf'."),
                io.String.Input("background", default="1, 1, 1", optional=True,
                                tooltip="Background colour 'r, g, b' in 0..1 that replaces unprotected pixels."),
            ],
            outputs=[
                io.String.Output(display_name="metrics_json",
                                 tooltip="Per-view and mean scores with their definitions (for a batch: one table per "
                                         "edit under 'edits', and each edit's means under 'summary')."),
                io.Image.Output(display_name="chart",
                                tooltip="Bar chart, one panel per metric: bars per view (for a batch: per edit)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, clip_model, dino_model):
        if clip_model == NONE and dino_model == NONE:
            return "choose a CLIP model (models/clip_vision) and/or a DINO model (models/dino)"
        return metric_model_problem(clip_model, dino_model) or True

    @classmethod
    def fingerprint_inputs(cls, clip_model=None, dino_model=None, **_):
        return metric_models_stamp(clip_model, dino_model)

    @classmethod
    def execute(cls, source_images, edited_images, source_caption, edit_caption, clip_model, dino_model,
                protected_mask=None, views=None, edited_components="", background="1, 1, 1") -> io.NodeOutput:
        from ..dreamedit3d_core import metrics

        source, edited = from_comfy_image(source_images), from_comfy_image(edited_images)
        rgb, mask = parse_rgb(background), None
        if protected_mask is not None and views is not None:
            raise ConfigError("connect either protected_mask or views + edited_components, not both")
        if views is not None:
            mask = metrics.protected_mask(views.require_masks("DreamEdit3D_EditMetrics"), edited_components)
        elif protected_mask is not None:
            mask = protected_mask if protected_mask.ndim == 3 else protected_mask[None]
        clip, dino = load_metric_models(clip_model, dino_model, compute_device())
        options = dict(clip=clip, dino=dino, mask=mask, background=rgb)
        if edited.shape[0] == source.shape[0]:
            table = plotted = metrics.evaluate_edit(source, edited, source_caption, edit_caption.strip(), **options)
        else:  # several edits of one source (edit-major batch): one caption per line
            table = metrics.evaluate_edits(source, edited, source_caption, edit_caption.splitlines(), **options)
            plotted = table["summary"]
        text = metrics.metrics_to_json(table)
        chart = to_comfy_image(metrics.render_metrics_chart(plotted)[None])
        return io.NodeOutput(text, chart, ui=ui.PreviewImage(chart, cls=cls))
