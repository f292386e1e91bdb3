"""TokenReport: did each learned token learn its component? (attention isolation, reconstruction, omission, swap)."""

from __future__ import annotations

from contextlib import ExitStack

from ..dreamedit3d_core.errors import ConfigError
from ..dreamedit3d_core.personalize.autograd import grad_enabled, usable_by_autograd
from ._compat import compute_device, io, model_on_compute_device, ui
from .metrics import NONE, load_metric_models, metric_model_inputs, metric_model_problem, metric_models_stamp
from .personalize import parse_init_words
from .sockets import MVDreamModelSocket, MVTokensSocket, MVViewsSocket, to_comfy_image

CATEGORY = "DreamEdit3D/evaluate"


class TokenReport(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamEdit3D_TokenReport",
            display_name="Token Report (DreamEdit3D)",
            category=CATEGORY,
            description="Checks, before you spend time on edits, whether each learned token captured its own "
                        "component: share of its cross-attention inside each component's mask per view (a leakage "
                        "matrix; base model + initialiser word as reference), masked reconstruction, what changes "
                        "when a token is dropped or two tokens are swapped, a heat map and one verdict per token. "
                        "Optionally trains the tokens again with and without the attention loss to show what it buys.",
            inputs=[
                MVDreamModelSocket.Input("model", tooltip="The personalised model (MultiViewTextualInversion or MVFineTune)."),
                MVViewsSocket.Input("views", tooltip="The views with the component masks the tokens were learned from."),
                MVTokensSocket.Input("tokens", tooltip="The learned tokens."),
                MVDreamModelSocket.Input("base_model", optional=True,
                                         tooltip="The base model (MVDreamLoader): reference attention of each "
                                                 "component's initialiser word, and the model the ablation trains."),
                io.String.Input("init_words", default="", optional=True,
                                tooltip="Reference words 'component: word' (e.g. 'hat: hat'); others use the "
                                        "component's name."),
                io.Boolean.Input("measure_images", default=True,
                                 tooltip="Also sample views for reconstruction, omission and swap (1 + K + K(K-1)/2 "
                                         "samplings); off: attention only, much faster."),
                io.Int.Input("sample_steps", default=30, min=1, max=500, tooltip="DDIM steps of each sampling."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1, tooltip="Classifier-free guidance."),
                io.Int.Input("seed", default=23, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Noise seed shared by every sampling (so changes come from the prompt only)."),
                *metric_model_inputs(
                    clip_tooltip="Optional CLIP from models/clip_vision: masked CLIP-I of the reconstruction.",
                    dino_tooltip="Optional DINO ViT-S/16 from models/dino: masked DINO of the reconstruction.",
                    optional=True),
                io.Boolean.Input("ablation", default=False, optional=True,
                                 tooltip="Needs base_model: learn the tokens again twice on these views, with the "
                                         "attention loss off (λ = 0) and at attention_loss_weight, and compare each "
                                         "token's isolation (takes two phase-1 runs)."),
                io.Int.Input("ablation_steps", default=400, min=1, max=20000, optional=True,
                             tooltip="Phase-1 steps of each ablation run."),
                io.Float.Input("ablation_learning_rate", default=5e-4, min=0.0, max=1.0, step=1e-5, round=False,
                               optional=True, tooltip="Phase-1 learning rate of each ablation run."),
                io.Float.Input("attention_loss_weight", default=0.1, min=0.0, max=10.0, step=1e-3, round=False,
                               optional=True, tooltip="λ of the ablation's second run (the training default, 0.1)."),
            ],
            outputs=[
                io.String.Output("report_json", display_name="report_json",
                                 tooltip="Per token and view: attention shares (leakage matrix, reference, gain), "
                                         "reconstruction PSNR (+ DINO / CLIP-I), omission and swap change shares, "
                                         "verdicts, and the ablation when asked."),
                io.Image.Output("heatmap", display_name="heatmap",
                                tooltip="One row per token: its attention in the four views (then the reference "
                                        "word's, with a base model), beside its mask."),
                io.String.Output("verdicts", display_name="verdicts", tooltip="One line per token: isolated / leaking into X / weak."),
            ],
            hidden=[io.Hidden.unique_id],
            is_output_node=True,  # runs and shows its heat map and verdicts without anything wired to its outputs
        )

    @classmethod
    def validate_inputs(cls, clip_model=NONE, dino_model=NONE):
        return metric_model_problem(clip_model, dino_model) or True

    @classmethod
    def fingerprint_inputs(cls, clip_model=NONE, dino_model=NONE, **_):
        return metric_models_stamp(clip_model, dino_model)

    @classmethod
    def execute(cls, model, views, tokens, measure_images, sample_steps, cfg, seed, base_model=None, init_words="",
                clip_model=NONE, dino_model=NONE, ablation=False, ablation_steps=400, ablation_learning_rate=5e-4,
                attention_loss_weight=0.1) -> io.NodeOutput:
        from ..dreamedit3d_core import token_report as tr
        from ..dreamedit3d_core.personalize.textual_inversion import TIConfig

        masks = views.require_masks("DreamEdit3D_TokenReport")
        if ablation and base_model is None:
            raise ConfigError("ablation needs the base model: connect MVDreamLoader's model to base_model, "
                              "or switch ablation off")
        config = tr.TokenReportConfig(images=bool(measure_images), sample_steps=int(sample_steps), cfg=float(cfg),
                                      seed=int(seed))
        words = parse_init_words(init_words or "", masks.names)
        clip, dino = load_metric_models(clip_model, dino_model, compute_device()) if measure_images else (None, None)
        render, masks = usable_by_autograd(views.render), usable_by_autograd(masks)
        with ExitStack() as loaded:
            # every part of both models on the compute device through ComfyUI (the report encodes prompts, samples
            # and decodes; the ablation trains tokens on the base model)
            for each in (model, base_model):
                if each is not None:
                    loaded.enter_context(model_on_compute_device(each))
            report = tr.token_report(model, tokens, render, masks, config, reference_model=base_model,
                                     reference_words=words, clip=clip, dino=dino)
            table = report.table
            if ablation:
                with grad_enabled():
                    table["ablation"] = tr.compare_attention_loss(
                        base_model, render, masks,
                        TIConfig(steps=int(ablation_steps), lr=float(ablation_learning_rate),
                                 attention_loss_weight=float(attention_loss_weight),
                                 tokens=tuple(report.table["tokens"]), init_words=words, seed=int(seed)),
                        config)
        heat = to_comfy_image(report.heatmap[None])
        verdicts = "\n".join(report.verdicts)
        # the heat map as a preview and the verdicts as text on the node
        shown = {**ui.PreviewImage(heat, cls=cls).as_dict(), "text": (verdicts,)}
        return io.NodeOutput(tr.report_to_json(table), heat, verdicts, ui=shown)
