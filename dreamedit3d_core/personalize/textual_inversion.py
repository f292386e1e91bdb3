"""Phase 1, multi-view textual inversion: one new token per component, learned through the multi-view UNet.

The objective (union sampling of components, masked diffusion loss + λ·attention alignment on all four views with
their cameras) is :func:`~.objective.personalization_loss`. Only the new tokens' embedding rows learn. They live in
one trainable tensor spliced into the output of the text tower's token embedding by a forward hook
(:class:`~.objective.TokenRows`), so the embedding table and every other weight never receive an update (they stay
bit-identical); at the end the learned rows are written into the table. No horizontal flips (a mirrored view no
longer matches its camera).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..errors import ConfigError, TokenError
from ..progress import Progress
from ..schedule import NUM_TRAIN_TIMESTEPS  # noqa: F401  (re-exported: it was defined here)
from ..tokens import check_tokens_are_new, token_for_component, validate_token_names
from ..types import ComponentMasks, MultiViewRender, TokenSet
from .autograd import grad_enabled, usable_by_autograd
# the objective moved to objective.py; its names stay importable from here
from .objective import (  # noqa: F401
    MIXED_PRECISION,
    ObjectiveConfig,
    Scene,
    TokenRows,
    attention_layers_for,
    autocast_context,
    build_scene,
    check_inputs,
    personalization_loss,
    preview_from,
    recording,
)
from .train import CheckpointPolicy, PersonalizationResult, StepOutput, frozen, run_training


@dataclass(frozen=True)
class TIConfig(ObjectiveConfig):
    """Phase 1 settings (defaults: Break-a-Scene's phase 1 mapped to MVDream at 256 px).

    Attributes:
        lr: AdamW learning rate of the token rows (5e-4, constant).
        tokens: one token per component (``"<hat>"``); empty: ``<component name>``.
        init_words: per component, the word whose first sub-token initialises its token (``"hat"``); "" or
            missing: the mean of the base vocabulary's embeddings.
        The rest (steps 400, AdamW settings, λ 0.1, resolution 256, seed, mixed precision, checkpoints, previews,
        prompt prefix): :class:`~.objective.ObjectiveConfig`.
    """

    lr: float = 5e-4
    tokens: tuple = ()
    init_words: tuple = ()

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "init_words", tuple(self.init_words))
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")


# ----------------------------------------------------------------------------------------------------------------
# initial vectors of the new tokens


def _mean_embedding(model) -> torch.Tensor:
    weight = model.token_embedding.weight
    base = getattr(model.tokenizer, "vocab_size", weight.shape[0]) - len(getattr(model.tokenizer, "added_tokens", ()))
    return weight[: max(1, int(base))].detach().float().mean(dim=0)


def initial_embeddings(model, init_words: Sequence[str], count: int) -> torch.Tensor:
    """float32 [count, D]: the first sub-token embedding of each init word, or the vocabulary mean."""
    weight = model.token_embedding.weight
    rows = []
    for i in range(count):
        word = init_words[i] if i < len(init_words) else ""
        word = (word or "").strip()
        if not word:
            rows.append(_mean_embedding(model))
            continue
        ids = model.tokenizer.token_ids(word)
        if not ids:
            raise TokenError(f"initialiser word {word!r} gives no tokens; use a plain word such as 'hat'")
        rows.append(weight[int(ids[0])].detach().float())
    return torch.stack(rows)


def resolve_tokens(masks: ComponentMasks, tokens: Sequence[str]) -> tuple:
    tokens = tuple(tokens) or tuple(token_for_component(n) for n in masks.names)
    validate_token_names(tokens)
    if len(tokens) != len(masks.names):
        raise TokenError(f"{len(tokens)} tokens for {len(masks.names)} components {list(masks.names)}: give one per component")
    return tokens


def train_textual_inversion(model, render: MultiViewRender, masks: ComponentMasks, config: Optional[TIConfig] = None,
                            progress: Optional[Progress] = None, resume_from=None, checkpoint_dir=None) -> TokenSet:
    """Learn one placeholder token per component (phase 1); returns the TokenSet. See :func:`run_textual_inversion`.

    A run with a ``checkpoint_dir`` leaves its final state there (the tokens' only copy on disk until saved); use
    :func:`run_textual_inversion` and ``result.release()`` after saving the tokens to delete it.
    """
    return run_textual_inversion(model, render, masks, config, progress, resume_from, checkpoint_dir).tokens


def run_textual_inversion(model, render: MultiViewRender, masks: ComponentMasks, config: Optional[TIConfig] = None,
                          progress: Optional[Progress] = None, resume_from=None,
                          checkpoint_dir=None) -> PersonalizationResult:
    """Learn one placeholder token per component (phase 1). Adds the tokens to ``model`` (in place).

    Args:
        model: MVDreamModel; only the new tokens' embedding rows are trained.
        render: the four views of the asset.
        masks: one mask per component, [K, V, H, W] at the render's size.
        config: TIConfig (defaults: 400 steps, lr 5e-4, λ 0.1).
        progress: progress/interrupt hook (loss, masked, attention, t, k per step; preview every N steps); None
            shows a tqdm bar.
        resume_from: a training-state file of an interrupted run with the same model, tokens and components.
        checkpoint_dir: folder for training state (every ``config.checkpoint_every`` steps, on interruption and at
            the end; the final one is deleted by ``result.release()``).

    Returns:
        PersonalizationResult: ``model``, ``tokens`` (TokenSet with embeddings float32 [K, 1, D]) and ``training``
        (losses per step, the final state file).

    Raises:
        TokenError: malformed/duplicate tokens, one already in the vocabulary.
        ShapeError / ConfigError: masks not matching the render, zero or empty components, bad settings.
        TrainingError: NaN loss (names the step and the last good checkpoint), a resume file of another run.
    """
    config = config or TIConfig()
    check_inputs(render, masks)
    tokens = resolve_tokens(masks, config.tokens)
    with grad_enabled():
        usable_by_autograd(model)
        token_ids, initial = _placeholder_ids(model, tokens, config.init_words, resuming=resume_from is not None)
        scene = build_scene(model, render, masks, tokens, token_ids, config.resolution, config.attention_map_size,
                            with_attention=config.attention_loss_weight > 0)
        rows = TokenRows(model, token_ids, initial)
        optimizer = torch.optim.AdamW([rows.rows], lr=config.lr, betas=config.betas, weight_decay=config.weight_decay,
                                      eps=config.adam_eps)
        generator = torch.Generator("cpu").manual_seed(int(config.seed))
        # fp16 forward passes (fp16 autocast, or a model loaded in fp16, ComfyUI's default on CUDA) need loss scaling,
        # or the small gradients reaching the token rows through the fp16 graph underflow to zero (as in phase 2).
        fp16_forward = config.mixed_precision == "fp16" or model.dtype == torch.float16
        scaler = torch.amp.GradScaler(scene.latents.device.type) if fp16_forward else None
        fingerprint = {
            "phase": "textual_inversion",
            "model_hash": getattr(model, "model_hash", ""),
            "tokens": list(tokens),
            "components": list(masks.names),
            "num_views": scene.num_views,
            "image_size": list(scene.image_size),
        }

        def step_fn(step: int) -> StepOutput:
            return personalization_loss(model, scene, generator, config.attention_loss_weight, config.mixed_precision,
                                        prompt_prefix=config.prompt_prefix,
                                        attention_normalisation=config.attention_normalisation)

        with frozen(model), rows.attached(), recording(model, scene):
            result = run_training(
                step_fn, {"token_rows": rows.rows}, optimizer, config.steps, generator, fingerprint, progress=progress,
                checkpoint=CheckpointPolicy(checkpoint_dir, config.checkpoint_every, "phase1"), resume_from=resume_from,
                max_grad_norm=config.max_grad_norm, scaler=scaler, preview_fn=lambda ctx: preview_from(model, ctx),
                preview_every=config.preview_every, learning_rates=[config.lr], description="textual inversion",
            )
        rows.write_back()
        token_set = TokenSet(tokens=tokens, embeddings=rows.rows.detach().float().cpu()[:, None, :].clone(),
                             components=tuple(masks.names), base_model_hash=getattr(model, "model_hash", ""))
    return PersonalizationResult(model=model, tokens=token_set, training=result)


def _placeholder_ids(model, tokens: tuple, init_words: Sequence[str], resuming: bool) -> tuple:
    """The placeholder tokens' ids (added to the model unless a resumed run already has them) and their initial rows."""
    if not resuming:
        check_tokens_are_new(model, tokens)
    initial = initial_embeddings(model, init_words, len(tokens))
    known = [t for t in tokens if t in getattr(model.tokenizer, "added_tokens", ())]
    if known and len(known) != len(tokens):
        raise TokenError(f"tokens {known} exist in this model but {sorted(set(tokens) - set(known))} do not: "
                         "load the base model again")
    token_ids = [model.tokenizer.token_ids(t)[0] for t in tokens] if known else model.add_tokens(list(tokens), initial)
    return token_ids, initial

