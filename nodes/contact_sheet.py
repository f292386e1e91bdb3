"""ContactSheet: N edits x 4 views -> one IMAGE, a row per prompt, columns front, right, back, left."""

from __future__ import annotations

from ._compat import io, ui
from .provenance import carried
from .sockets import MVConditioningSocket, MVSamplesSocket, from_comfy_image, to_comfy_image

CATEGORY = "DreamEdit3D/output"


class ContactSheet(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamEdit3D_ContactSheet",
            display_name="Contact Sheet (DreamEdit3D)",
            category=CATEGORY,
            description="Lays out the views of several edits on one image: one row per prompt (labelled), columns "
                        "front, right, back, left.",
            inputs=[
                io.Image.Input("images", tooltip="Views [N*4,H,W,3], view-contiguous (MVSample's IMAGE)."),
                io.String.Input("labels", default="", multiline=True, optional=True,
                                tooltip="One row label per line; empty: the prompts of the conditioning, else those "
                                        "MVSample recorded for these images."),
                MVConditioningSocket.Input("conditioning", optional=True,
                                           tooltip="ComposePrompt's conditioning: its prompts label the rows."),
                io.Int.Input("padding", default=4, min=0, max=64, optional=True, tooltip="Pixels between views."),
                MVSamplesSocket.Input("samples", optional=True,
                                      tooltip="MVSample's samples: their recorded prompts label the rows when the "
                                              "images went through other nodes first."),
            ],
            outputs=[io.Image.Output("out_image", display_name="image", tooltip="The contact sheet [1,Hs,Ws,3].")],
        )

    @classmethod
    def execute(cls, images, labels="", conditioning=None, padding=4, samples=None) -> io.NodeOutput:
        from ..dreamedit3d_core.contact_sheet import contact_sheet, strip_suffixes

        if labels and labels.strip():
            rows = [line.strip() for line in labels.splitlines() if line.strip()]
        elif conditioning is not None:
            rows = [strip_suffixes(p) for p in conditioning.prompts]
        else:
            rows = [strip_suffixes(p) for p in carried(images, samples).get("prompts", [])]
        sheet, _ = contact_sheet(from_comfy_image(images), rows, pad=int(padding))
        image = to_comfy_image(sheet[None])
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))
