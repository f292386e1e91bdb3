"""Personalisation nodes: phase 1 (multi-view textual inversion), phase 2 (fine-tuning), and token files."""

from __future__ import annotations

import importlib.util

import torch

from ..dreamedit3d_core.errors import ConfigError
from ..dreamedit3d_core.personalize.autograd import grad_enabled, usable_by_autograd
from ..dreamedit3d_core.personalize.copies import copy_bytes, model_for_finetuning, model_for_token_training
from ..dreamedit3d_core.personalize.finetune import MODES as FT_MODES
from ..dreamedit3d_core.personalize.finetune import OPTIMIZERS, FTConfig
from ..dreamedit3d_core.personalize.textual_inversion import MIXED_PRECISION as PRECISIONS
from ..dreamedit3d_core.personalize.textual_inversion import TIConfig
from ._compat import advanced, compute_device, free_memory_for, io, model_on_compute_device, ui
from .folders import (FOLDER_TOKENS, embeddings_folder, model_files, model_folder, model_path, model_stamp,
                      output_folder)
from .paths import name_problem, plain_file_stem
from .progress import ComfyProgress
from .sockets import MVDreamModelSocket, MVTokensSocket, MVViewsSocket

CATEGORY = "DreamEdit3D/personalize"
#: what SaveTokens does when the name is taken: the choice is a widget, so it is visible in the workflow
IF_EXISTS = ("new_version", "overwrite", "error")


def train_dir(run_name: str):
    """Where a run keeps its resumable training state: output/dreamedit3d/train/<run_name>/."""
    return output_folder() / "dreamedit3d" / "train" / plain_file_stem(run_name, what="run_name")


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


def _common_inputs(config):
    """The inputs both trainers share, with the defaults of the core's ``config`` (TIConfig() or FTConfig())."""
    return [
        io.Int.Input("steps", default=config.steps, min=1, max=20000, tooltip="Optimisation steps."),
        io.Float.Input("learning_rate", default=config.lr, min=0.0, max=1.0, step=1e-7, round=False,
                       tooltip="AdamW learning rate (gradients clipped at 1.0)."),
        advanced(io.Float.Input("attention_loss_weight", default=config.attention_loss_weight, min=0.0, max=10.0,
                                step=1e-3, round=False,
                                tooltip="Weight of the attention-alignment loss (KL form: 0.1); 0 turns it off.")),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Seed for timesteps, noise and component sampling."),
        io.String.Input("run_name", default="dreamedit3d-run",
                        tooltip="A plain name: training state (optimizer, step, RNG) is saved under "
                                "output/dreamedit3d/train/<run_name>/ every few steps and on interruption."),
        advanced(io.Boolean.Input("resume", default=True,
                                  tooltip="Continue a run of the same name where it stopped (same model and components).")),
        advanced(io.Int.Input("checkpoint_every", default=50, min=1, max=10000,
                              tooltip="Save the training state every N steps.")),
        advanced(io.Int.Input("preview_every", default=25, min=0, max=10000,
                              tooltip="Preview the 4-view reconstruction every N steps (0 = never).")),
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
                *_common_inputs(TIConfig()),
            ],
            outputs=[
                MVDreamModelSocket.Output("out_model", display_name="model", tooltip="The model with the learned tokens added."),
                MVTokensSocket.Output("out_tokens", display_name="tokens", tooltip="The learned tokens."),
            ],
            hidden=[io.Hidden.unique_id],
            not_idempotent=False,
        )

    @classmethod
    def validate_inputs(cls, run_name=None):
        return name_problem(run_name, what="run_name")

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
        with grad_enabled():
            # the input model stays as ComfyUI cached it: phase 1 changes only the text tower (new token rows) and
            # the tokenizer, so only those are copied; the UNet and VAE are the input's own modules
            free_memory_for(copy_bytes(model, "token"), compute_device())  # ComfyUI makes room for the copy
            trained = model_for_token_training(model)
            with model_on_compute_device(trained, exclusive=True):
                tokens = ti.train_textual_inversion(trained, usable_by_autograd(views.render), usable_by_autograd(masks),
                                                    config, progress, resume_from=resume_file(folder, "phase1", resume),
                                                    checkpoint_dir=folder)
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
                *_common_inputs(FTConfig()),
                advanced(io.Float.Input("token_learning_rate", default=FTConfig().token_lr, min=0.0, max=1.0, step=1e-6, round=False,
                                        tooltip="Learning rate of the tokens during phase 2.")),
                io.Combo.Input("mode", options=_choices(FT_MODES), default="full", tooltip=_tooltip("mode")),
                advanced(io.Int.Input("lora_rank", default=8, min=1, max=256, tooltip="LoRA rank (mode lora).")),
                advanced(io.Boolean.Input("train_text_encoder", default=False, tooltip=_tooltip("train_text_encoder"))),
                advanced(io.Boolean.Input("gradient_checkpointing", default=False,
                                          tooltip=_tooltip("gradient_checkpointing"))),
                advanced(io.Combo.Input("mixed_precision", options=_choices(PRECISIONS), default="no",
                                        tooltip=_tooltip("mixed_precision"))),
                advanced(io.Combo.Input("optimizer", options=optimizer_choices(), default="adamw", optional=True,
                                        tooltip=_tooltip("optimizer"))),
            ],
            outputs=[
                MVDreamModelSocket.Output("out_model", display_name="model", tooltip="The fine-tuned model."),
                MVTokensSocket.Output("out_tokens", display_name="tokens", tooltip="The tokens after phase 2."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def validate_inputs(cls, run_name=None, optimizer=None):
        name = name_problem(run_name, what="run_name")
        return name if name is not True else (optimizer_problem(optimizer) or True)

    @classmethod
    def execute(cls, model, views, tokens, steps, learning_rate, attention_loss_weight, seed, run_name, resume,
                checkpoint_every, preview_every, token_learning_rate, mode, lora_rank, train_text_encoder,
                gradient_checkpointing, mixed_precision, optimizer="adamw") -> io.NodeOutput:
        from ..dreamedit3d_core.personalize import finetune as ft

        problem = optimizer_problem(optimizer)
        if problem:
            raise ConfigError(problem)
        masks = views.require_masks("MVFineTune")
        config = ft.FTConfig(
            steps=int(steps), lr=float(learning_rate), token_lr=float(token_learning_rate),
            attention_loss_weight=float(attention_loss_weight), seed=int(seed), mode=mode, lora_rank=int(lora_rank),
            lora_alpha=float(lora_rank), train_text_encoder=bool(train_text_encoder),
            gradient_checkpointing=bool(gradient_checkpointing), mixed_precision=mixed_precision, optimizer=optimizer,
            checkpoint_every=int(checkpoint_every), preview_every=int(preview_every))
        folder = train_dir(run_name) / "phase2"
        progress = ComfyProgress(int(steps), cls.hidden.unique_id)
        with grad_enabled():
            # phase 2 changes the UNet and the text tower's token rows (and the whole text tower when it trains): only
            # those are copied, trained weights as float32 masters (the loader's "auto" dtype is fp16 on CUDA; fp16
            # cannot hold 2e-6 steps and mixed_precision autocasts anyway); the VAE is the input's own module
            free_memory_for(copy_bytes(model, "finetune", mode, bool(train_text_encoder)), compute_device())
            copy_ = model_for_finetuning(model, mode, bool(train_text_encoder))
            with model_on_compute_device(copy_, exclusive=True):
                trained, tokens = ft.finetune(copy_, usable_by_autograd(views.render), usable_by_autograd(masks),
                                              usable_by_autograd(tokens), config, progress,
                                              resume_from=resume_file(folder, "phase2", resume), checkpoint_dir=folder)
        return io.NodeOutput(trained, tokens, ui=_training_ui(progress, cls, views.render.num_views))


#: GiB, estimated peaks of MVFineTune in the node chain (loader "auto" -> TI -> MVFineTune, 4 views x 256 px) from
#: ``python -m bench.bench_memory`` (bench/RESULTS.md "GPU memory"); the tooltips quote them so each memory option
#: says what it costs or saves (estimates of allocated bytes on a simulated GPU; CUDA context and fragmentation not
#: included). Run of 2026-12-03, torch 2.14.1.
MEMORY = {"full": 13.73, "full_8bit": 8.91, "full_checkpointing": 15.06, "full_text_encoder": 17.61,
          "lora": 3.58, "lora_checkpointing": 3.21}


def _tooltip(name: str) -> str:
    """MVFineTune's tooltip for the memory-relevant input ``name``, with the bench's figures where measured."""
    gib = {k: f"{v:.1f} GiB" for k, v in MEMORY.items()}
    if name == "mode":
        return ("full: every UNet weight trains (float32 master weights, gradients and AdamW states); lora: a low-rank "
                "delta on the loaded weights (small GPUs). LoRA wants a much higher learning_rate than full "
                "fine-tuning: about 1e-4 instead of 2e-6. Estimated peak at 4 views x 256 px, mixed precision: "
                f"full {gib['full']}, lora {gib['lora']}.")
    if name == "train_text_encoder":
        return ("Also fine-tune the text tower (float32 weights, gradients and AdamW states for it too). Full "
                f"fine-tuning's estimated peak: {gib['full']} -> {gib['full_text_encoder']}.")
    if name == "gradient_checkpointing":
        return ("Recompute UNet activations in the backward pass (slower) to hold fewer of them. At 256 px it saves "
                f"little or nothing (estimated peak: full {gib['full']} -> {gib['full_checkpointing']}, lora "
                f"{gib['lora']} -> {gib['lora_checkpointing']}): full fine-tuning's memory is its float32 weights, "
                "gradients and optimizer states.")
    if name == "mixed_precision":
        return "Autocast dtype on GPU with float32 master weights (faster matmuls, smaller activations)."
    if name == "optimizer":
        return ("adamw: PyTorch AdamW (fused on CUDA), two float32 states per trained weight (6.5 GiB for the full "
                "UNet). adamw8bit (offered when bitsandbytes is installed): 8-bit states, about 1.6 GiB. Full "
                f"fine-tuning's estimated peak: {gib['full']} with adamw, {gib['full_8bit']} with adamw8bit.")
    raise KeyError(name)


def bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def optimizer_choices() -> list:
    """The optimizers MVFineTune offers: AdamW, and 8-bit AdamW where bitsandbytes is importable."""
    return [o for o in _choices(OPTIMIZERS) if o != "adamw8bit" or bitsandbytes_installed()]


def optimizer_problem(optimizer) -> str:
    """Why ``optimizer`` cannot be used here ('' when it can); None means the default."""
    if optimizer is None or optimizer in optimizer_choices():
        return ""
    if optimizer == "adamw8bit":
        return ("optimizer 'adamw8bit' needs bitsandbytes, which is not installed: pip install bitsandbytes in "
                "ComfyUI's Python, or choose adamw")
    return f"optimizer {optimizer!r} is not one of {optimizer_choices()}"


def _choices(options) -> list:
    """A core option list (a tuple of strings or a ``str`` Enum) as combo options."""
    return [getattr(o, "value", o) for o in options]


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
            description="Saves learned tokens twice: our file models/mvdream_tokens/<name>.safetensors (for "
                        "LoadTokens), and one ComfyUI embedding per token, models/embeddings/<name>_<token>.safetensors, "
                        "usable as 'embedding:<name>_<token>' in core CLIPTextEncode with an SD2 model. When the name "
                        "is taken, if_exists decides: a new version <name>_v2 (the old files, and prompts using them, "
                        "stay as they were), overwrite, or stop with an error.",
            is_output_node=True,
            inputs=[
                MVTokensSocket.Input("tokens", tooltip="The learned tokens."),
                io.String.Input("name", default="dreamedit3d-tokens",
                                tooltip="A plain name: the token file models/mvdream_tokens/<name>.safetensors and the "
                                        "embeddings <name>_<token> (prompt: embedding:<name>_<token>)."),
                io.Combo.Input("if_exists", options=list(IF_EXISTS), default="new_version", optional=True,
                               tooltip="When <name> is taken: new_version writes <name>_v2 (v3, ...) and leaves the old "
                                       "files alone; overwrite replaces them (prompts naming them get the new "
                                       "tokens); error stops."),
            ],
            outputs=[
                io.String.Output("out_tokens_name", display_name="tokens_name",
                                 tooltip="The token file's name in models/mvdream_tokens."),
                MVTokensSocket.Output("out_tokens", display_name="tokens",
                                      tooltip="The same tokens, now recording the file they were saved to (connect "
                                              "ComposePrompt here so the GLB's provenance names the token file)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, name=None):
        return name_problem(name, ".safetensors", what="name")

    @classmethod
    def execute(cls, tokens, name, if_exists="new_version") -> io.NodeOutput:
        from dataclasses import replace

        from ..dreamedit3d_core.storage import file_sha256
        from ..dreamedit3d_core.tokens import save_comfy_embeddings, save_tokens

        stem = plain_file_stem(name, ".safetensors", what="name")
        ours_dir, emb_dir = model_folder(FOLDER_TOKENS), embeddings_folder()
        chosen, taken = token_file_stem(stem, tokens.tokens, ours_dir, emb_dir, if_exists)
        overwrite = taken and if_exists == "overwrite"
        saved = save_tokens(tokens, ours_dir / f"{chosen}.safetensors", overwrite=overwrite)
        written = save_comfy_embeddings(tokens, emb_dir, prefix=chosen + "_", overwrite=overwrite)
        note = ({"overwrite": f"{stem} existed: overwritten", "new_version": f"{stem} existed: saved as {chosen}"}
                .get(if_exists) if taken else None)
        lines = [f"saved models/mvdream_tokens/{saved.name}"] + [f"embedding:{p.stem}" for p in written]
        saved_tokens = replace(tokens, source_files=((saved.name, file_sha256(saved)),))
        return io.NodeOutput(saved.name, saved_tokens, ui={"text": ([note] if note else []) + lines})


def token_file_stem(stem: str, tokens, ours_dir, emb_dir, if_exists: str) -> tuple[str, bool]:
    """(the stem to write, whether ``stem`` was taken) for SaveTokens' ``if_exists`` choice.

    A stem is taken when our token file or any of its embedding files exists; a new version is the first
    ``<stem>_v<N>`` (N >= 2) free in both folders, so one save never half-overwrites another.

    Raises:
        ConfigError: ``stem`` is taken and ``if_exists`` is 'error' (or not a known choice).
    """
    from ..dreamedit3d_core.tokens import comfy_embedding_name

    def is_taken(candidate: str) -> bool:
        files = [ours_dir / f"{candidate}.safetensors"]
        files += [emb_dir / f"{comfy_embedding_name(t, candidate + '_')}.safetensors" for t in tokens]
        return any(p.exists() for p in files)

    if if_exists not in IF_EXISTS:
        raise ConfigError(f"if_exists {if_exists!r} is not one of {list(IF_EXISTS)}")
    if not is_taken(stem):
        return stem, False
    if if_exists == "overwrite":
        return stem, True
    if if_exists == "error":
        raise ConfigError(f"tokens named {stem!r} exist already (models/mvdream_tokens/{stem}.safetensors or its "
                          "embeddings): set if_exists to new_version or overwrite, or choose another name")
    for version in range(2, 100000):
        candidate = f"{stem}_v{version}"
        if not is_taken(candidate):
            return candidate, True
    raise ConfigError(f"no free version of {stem!r} in models/mvdream_tokens: clean up the folder")


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
    def fingerprint_inputs(cls, tokens_name=None, **_):
        # a token file overwritten under the same name (SaveTokens' if_exists: overwrite) loads again
        return model_stamp(FOLDER_TOKENS, tokens_name)

    @classmethod
    def execute(cls, tokens_name) -> io.NodeOutput:
        from ..dreamedit3d_core.tokens import load_tokens

        return io.NodeOutput(load_tokens(model_path(FOLDER_TOKENS, tokens_name)))
