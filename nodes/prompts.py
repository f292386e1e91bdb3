"""ComposePrompt: a prompt with learned <tokens> + a negative prompt -> multi-view conditioning (text x 4 cameras)."""

from __future__ import annotations

from ._compat import io, model_on_compute_device
from .sockets import MVConditioningSocket, MVDreamModelSocket, MVTokensSocket, MVViewsSocket

CATEGORY = "DreamEdit3D/sample"
DEFAULT_PROMPT = "a <robot> with a <antenna> made of gold"


class ComposePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ..dreamedit3d_core.prompts import DEFAULT_NEGATIVE

        return io.Schema(
            node_id="DreamEdit3D_ComposePrompt",
            display_name="Compose Prompt (DreamEdit3D)",
            category=CATEGORY,
            description="Encodes an edit prompt that uses learned tokens (e.g. 'a <dog> wearing a <hat> made of gold') "
                        "for all four views with MVDream's cameras. Unknown <tokens> are an error listing the known "
                        "ones; over-long prompts are cut as MVDream does and reported.",
            inputs=[
                MVDreamModelSocket.Input("model", tooltip="The (personalised) MVDream model."),
                io.String.Input("prompt", default=DEFAULT_PROMPT, multiline=True,
                                tooltip="The edit prompt; one line per object. <tokens> are learned placeholders."),
                io.String.Input("negative_prompt", default=DEFAULT_NEGATIVE, multiline=True,
                                tooltip="The unconditional text of classifier-free guidance."),
                io.Boolean.Input("mvdream_suffix", default=True, tooltip="Append MVDream's ', 3d asset'."),
                io.Boolean.Input("quality_suffix", default=True, tooltip="Append DreamEdit3D's quality suffix."),
                MVTokensSocket.Input("tokens", optional=True,
                                     tooltip="Learned tokens to use (added to the model if it lacks them)."),
                MVViewsSocket.Input("views", optional=True,
                                    tooltip="Use these views' camera orientations (e.g. a non-default elevation)."),
            ],
            outputs=[MVConditioningSocket.Output("out_conditioning", display_name="conditioning",
                                                 tooltip="Positive and negative text for every view, with cameras.")],
        )

    @classmethod
    def execute(cls, model, prompt, negative_prompt, mvdream_suffix=True, quality_suffix=True, tokens=None,
                views=None) -> io.NodeOutput:
        from ..dreamedit3d_core.prompts import compose_prompt

        with model_on_compute_device(model, ("text_encoder",)):  # ComfyUI may have offloaded it since the loader
            cond = compose_prompt(model, prompt, negative_prompt=negative_prompt, tokens=tokens,
                                  add_mvdream_suffix=bool(mvdream_suffix), add_quality_suffix=bool(quality_suffix),
                                  cameras=None if views is None else views.render.cameras)
        return io.NodeOutput(cond, ui={"text": list(cond.prompts)})
