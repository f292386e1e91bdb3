"""Personalisation nodes: phase 1 (multi-view textual inversion), phase 2 (fine-tuning), and token files."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch

from ..dreamedit3d_core.errors import ConfigError
from ._compat import (FOLDER_TOKENS, ComfyProgress, embeddings_folder, io, managed_load, model_files, model_folder,
                      model_path, output_folder, ui)
from .load import _safe_stem
from .sockets import MVDreamModelSocket, MVTokensSocket, MVViewsSocket

CATEGORY = "DreamEdit3D/personalize"
FT_MODES = ("full", "lora")
PRECISIONS = ("no", "bf16", "fp16")


@contextmanager
def training_mode():
    """ComfyUI runs nodes under torch.inference_mode(); training needs autograd back."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def clone_model(model):
    """A private copy, so training never changes the model object other nodes (and ComfyUI's cache) hold."""
    with torch.inference_mode(False):
        return copy.deepcopy(model)


def clone_tensors(obj):
    """Copy of a frozen dataclass with every tensor cloned outside inference mode (inference tensors can't be saved
    for backward)."""
    from dataclasses import fields, is_dataclass, replace

    if obj is None or not is_dataclass(obj):
        return obj
    with torch.inference_mode(False):
        changes = {f.name: getattr(obj, f.name).clone() for f in fields(obj) if isinstance(getattr(obj, f.name), torch.Tensor)}
        return replace(obj, **changes)


def train_dir(run_name: str):
    """Where a run keeps its resumable training state: output/dreamedit3d/train/<run_name>/."""
    return output_folder() / "dreamedit3d" / "train" / _safe_stem(run_name)


def resume_file(folder, prefix: str, resume: bool):
    """The latest training state of an interrupted run in ``folder`` (None: start afresh)."""
    from ..dreamedit3d_core.personalize.train import latest_checkpoint

    return latest_checkpoint(folder, prefix) if resume and folder.is_dir() else None


def parse_init_words(text: str, components) -> tuple:
    """'hat: hat; dog: puppy' -> one init word per component in order ('' = mean embedding)."""
    words = {}
    for chunk in (c.strip() for c in str(text).replace("\n", ";").split(";")):
        if not chunk:
            continue
        name, sep, word = chunk.partition(":")
        if not sep or not name.strip():
            raise ConfigError(f"init_words entry {chunk!r} is not 'component: word'")
        if name.strip() not in components:
            raise ConfigError(f"init_words names component {name.strip()!r}, but the components are {list(components)}")
        words[name.strip()] = word.strip()
    return tuple(words.get(c, "") for c in components)


def _common_inputs(steps: int, lr: float):
    return [
        io.Int.Input("steps", default=steps, min=1, max=20000, tooltip="Optimisation steps."),
        io.Float.Input("learning_rate", default=lr, min=0.0, max=1.0, step=1e-7, round=False,
                       tooltip="AdamW learning rate (gradients clipped at 1.0)."),
        io.Float.Input("attention_loss_weight", default=1e-2, min=0.0, max=10.0, step=1e-3, round=False,
                       tooltip="Weight of the attention-alignment loss (Break-a-Scene: 0.01); 0 turns it off."),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Seed for timesteps, noise and component sampling."),
        io.String.Input("run_name", default="dreamedit3d-run",
                        tooltip="Training state (optimizer, step, RNG) is saved under "
                                "output/dreamedit3d/train/<run_name>/ every few steps and on interruption."),
        io.Boolean.Input("resume", default=True,
                         tooltip="Continue a run of the same name where it stopped (same model and components)."),
        io.Int.Input("checkpoint_every", default=50, min=1, max=10000, tooltip="Save the training state every N steps.",
                     ),
        io.Int.Input("preview_every", default=25, min=0, max=10000,
                     tooltip="Preview the 4-view reconstruction every N steps (0 = never)."),
    ]


class MultiViewTextualInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamEdit3D_MultiViewTextualInversion",
            display_name="Multi-View Textual Inversion (DreamEdit3D)",
            category=CATEGORY,
            description="Phase 1: learns one token <name> per component through the multi-view UNet with the real "
                        "cameras (masked diffusion loss + attention alignment). Only the new embedding rows train.",
            inputs=[
                MVDreamModelSocket.Input("model", tooltip="The base MVDream model."),
                MVViewsSocket.Input("views", tooltip="Views with component masks (DreamEdit3D_ComponentMask)."),
                io.String.Input("init_words", default="",
                                tooltip="Optional 'component: word' pairs to initialise tokens from (e.g. 'hat: hat'); "
                                        "others start from the component name's words, or the mean embedding."),
                *_common_inputs(400, 5e-4),
            ],
            outputs=[
                MVDreamModelSocket.Output("out_model", display_name="model", tooltip="The model with the learned tokens added."),
                MVTokensSocket.Output("out_tokens", display_name="tokens", tooltip="The learned tokens."),
            ],
            hidden=[io.Hidden.unique_id],
            not_idempotent=False,
        )

    @classmethod
    def execute(cls, model, views, init_words, steps, learning_rate, attention_loss_weight, seed, run_name, resume,
                checkpoint_every, preview_every) -> io.NodeOutput:
        from ..dreamedit3d_core.personalize import textual_inversion as ti

        masks = views.require_masks("MultiViewTextualInversion")
        config = ti.TIConfig(steps=int(steps), lr=float(learning_rate), attention_loss_weight=float(attention_loss_weight),
                             init_words=parse_init_words(init_words, masks.names), seed=int(seed),
                             checkpoint_every=int(checkpoint_every), preview_every=int(preview_every))
        folder = train_dir(run_name) / "phase1"
        progress = ComfyProgress(int(steps), cls.hidden.unique_id)
        with training_mode():
            trained = clone_model(model)
            patcher = managed_load(trained.unet)  # noqa: F841  (ComfyUI makes room; kept alive while training)
            tokens = ti.train_textual_inversion(trained, clone_tensors(views.render), clone_tensors(masks), config, progress,
                                                resume_from=resume_file(folder, "phase1", resume), checkpoint_dir=folder)
        return io.NodeOutput(trained, tokens, ui=_training_ui(progress, cls, views.render.num_views))


class MVFineTune(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamEdit3D_MVFineTune",
            display_name="Multi-View Fine-Tune (DreamEdit3D)",
            category=CATEGORY,
            description="Phase 2: fine-tunes the UNet (full or LoRA) with the same losses while the tokens keep "
                        "learning, so the components keep their identity.",
            inputs=[
                MVDreamModelSocket.Input("model", tooltip="The model from phase 1."),
                MVViewsSocket.Input("views", tooltip="The same views with component masks."),
                MVTokensSocket.Input("tokens", tooltip="The tokens from phase 1."),
                *_common_inputs(400, 2e-6),
                io.Float.Input("token_learning_rate", default=2e-6, min=0.0, max=1.0, step=1e-6, round=False,
                               tooltip="Learning rate of the tokens during phase 2."),
                io.Combo.Input("mode", options=list(FT_MODES), default="full",
                               tooltip="full: every UNet weight; lora: a low-rank delta (small GPUs). LoRA wants a much higher "
                                       "learning_rate than full fine-tuning: about 1e-4 instead of 2e-6."),
                io.Int.Input("lora_rank", default=8, min=1, max=256, tooltip="LoRA rank (mode lora)."),
                io.Boolean.Input("train_text_encoder", default=False, tooltip="Also fine-tune the text encoder."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Trade compute for memory (needed for full fine-tuning on 24 GB)."),
                io.Combo.Input("mixed_precision", options=list(PRECISIONS), default="no",
                               tooltip="Autocast dtype on GPU with fp32 master weights."),
            ],
            outputs=[
                MVDreamModelSocket.Output("out_model", display_name="model", tooltip="The fine-tuned model."),
                MVTokensSocket.Output("out_tokens", display_name="tokens", tooltip="The tokens after phase 2."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, **kw):
        if kw.get("mode") is not None and kw["mode"] not in FT_MODES:
            return f"mode {kw['mode']!r} is not one of {list(FT_MODES)}"
        if kw.get("mixed_precision") is not None and kw["mixed_precision"] not in PRECISIONS:
            return f"mixed_precision {kw['mixed_precision']!r} is not one of {list(PRECISIONS)}"
        return True

    @classmethod
    def execute(cls, model, views, tokens, steps, learning_rate, attention_loss_weight, seed, run_name, resume,
                checkpoint_every, preview_every, token_learning_rate, mode, lora_rank, train_text_encoder,
                gradient_checkpointing, mixed_precision) -> io.NodeOutput:
        from ..dreamedit3d_core.personalize import finetune as ft

        masks = views.require_masks("MVFineTune")
        config = ft.FTConfig(
            steps=int(steps), lr=float(learning_rate), token_lr=float(token_learning_rate),
            attention_loss_weight=float(attention_loss_weight), seed=int(seed), mode=mode, lora_rank=int(lora_rank),
            lora_alpha=float(lora_rank), train_text_encoder=bool(train_text_encoder),
            gradient_checkpointing=bool(gradient_checkpointing), mixed_precision=mixed_precision,
            checkpoint_every=int(checkpoint_every), preview_every=int(preview_every))
        folder = train_dir(run_name) / "phase2"
        progress = ComfyProgress(int(steps), cls.hidden.unique_id)
        with training_mode():
            copy_ = clone_model(model)
            if mode == "full" or train_text_encoder:
                # the loader's "auto" dtype is fp16 on CUDA, but trained weights need fp32 masters (finetune() refuses
                # others: fp16 cannot hold 2e-6 steps, and mixed_precision autocasts anyway). The copy is private, so
                # it is upcast here; the fine-tuned model stays fp32 (fp16 would round its small updates away).
                copy_.to(dtype=torch.float32)
            patcher = managed_load(copy_.unet)  # noqa: F841  (ComfyUI makes room; kept alive while training)
            trained, tokens = ft.finetune(copy_, clone_tensors(views.render), clone_tensors(masks),
                                          clone_tensors(tokens), config, progress,
                                          resume_from=resume_file(folder, "phase2", resume), checkpoint_dir=folder)
        return io.NodeOutput(trained, tokens, ui=_training_ui(progress, cls, views.render.num_views))


def _training_ui(progress: ComfyProgress, cls, num_views: int = 4) -> dict:
    """The node's UI after training: the last loss as text and the last preview as one image per view (so the web
    grid shows it again after a reload of the page). The trainers preview a strip [H, V*W] of the views side by side."""
    out = {"text": [_loss_text(progress)]}
    preview = progress.last_preview
    if preview is not None:
        if preview.shape[0] == 1 and preview.shape[2] % num_views == 0:
            preview = torch.stack(preview[0].chunk(num_views, dim=1))  # [V, H, W, 3], view order kept
        out["images"] = ui.PreviewImage(preview, cls=cls).as_dict()["images"]
    return out


def _loss_text(progress: ComfyProgress) -> str:
    info = progress.last_info
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()) or "done"


class SaveTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamEdit3D_SaveTokens",
            display_name="Save Tokens (DreamEdit3D)",
            category=CATEGORY,
            description="Saves learned tokens twice: our file in models/mvdream_tokens (for LoadTokens), and one "
                        "ComfyUI embedding per token in models/embeddings, usable as 'embedding:<name>' in core "
                        "CLIPTextEncode with an SD2 model. Never overwrites: a free name is chosen.",
            is_output_node=True,
            inputs=[
                MVTokensSocket.Input("tokens", tooltip="The learned tokens."),
                io.String.Input("name", default="dreamedit3d-tokens",
                                tooltip="File name (models/mvdream_tokens/<name>.safetensors) and embedding prefix "
                                        "(embeddings/<name>_<token>.safetensors)."),
            ],
            outputs=[io.String.Output("out_tokens_name", display_name="tokens_name", tooltip="The token file's name in models/mvdream_tokens.")],
        )

    @classmethod
    def execute(cls, tokens, name) -> io.NodeOutput:
        from ..dreamedit3d_core.tokens import comfy_embedding_name, save_comfy_embeddings, save_tokens

        stem = _safe_stem(name)
        ours_dir, emb_dir = model_folder(FOLDER_TOKENS), embeddings_folder()
        for i in range(100000):  # the first stem free in both folders, so one run never half-overwrites another
            cand = stem if i == 0 else f"{stem}_{i:05d}"
            emb = [emb_dir / f"{comfy_embedding_name(t, cand + '_')}.safetensors" for t in tokens.tokens]
            if not (ours_dir / f"{cand}.safetensors").exists() and not any(p.exists() for p in emb):
                break
        saved = save_tokens(tokens, ours_dir / f"{cand}.safetensors")
        written = save_comfy_embeddings(tokens, emb_dir, prefix=cand + "_")
        lines = [f"saved models/mvdream_tokens/{saved.name}"] + [f"embedding:{p.stem}" for p in written]
        return io.NodeOutput(saved.name, ui={"text": lines})


class LoadTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = model_files(FOLDER_TOKENS)
        return io.Schema(
            node_id="DreamEdit3D_LoadTokens",
            display_name="Load Tokens (DreamEdit3D)",
            category=CATEGORY,
            description="Loads learned tokens saved by SaveTokens from models/mvdream_tokens.",
            inputs=[io.Combo.Input("tokens_name", options=files, default=files[0] if files else None,
                                   tooltip="Token file in models/mvdream_tokens.")],
            outputs=[MVTokensSocket.Output("out_tokens", display_name="tokens", tooltip="The tokens.")],
        )

    @classmethod
    def validate_inputs(cls, **kw):
        name = kw.get("tokens_name")
        if name is not None and name not in model_files(FOLDER_TOKENS):
            return f"token file {name!r} is not in models/mvdream_tokens (files there: {model_files(FOLDER_TOKENS)[:12]})"
        return True

    @classmethod
    def execute(cls, tokens_name) -> io.NodeOutput:
        from ..dreamedit3d_core.tokens import load_tokens

        return io.NodeOutput(load_tokens(model_path(FOLDER_TOKENS, tokens_name)))
