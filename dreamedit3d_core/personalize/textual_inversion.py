"""Phase 1, multi-view textual inversion: one new token per component, learned through the multi-view UNet.

Each step (Break-a-Scene's recipe mapped onto MVDream, ``../shared/design/mvdream.md`` §6):

1. draw ``k`` uniformly from 1..K and a random ``k``-subset of the components in random order (union sampling);
2. encode ``"a photo of <a> and <b>"``;
3. take the four views' VAE latents (encoded once, the posterior mean), one timestep ``t ~ U{0..999}`` shared by
   the views of the object, and Gaussian noise; ``x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε``;
4. predict ε with the multi-view UNet on all four views with their real cameras (joint self-attention), recording
   the cross-attention maps of the ~16×16 layers in the same forward pass when the attention loss is on;
5. ``loss = masked_mse(ε̂, ε, ∪ masks) + λ · Σ_i attention_alignment(token i, mask i)``.

Only the new tokens' embedding rows learn. They live in one trainable tensor spliced into the output of the text
tower's token embedding by a forward hook, so the embedding table and every other weight never receive an update
(they stay bit-identical); at the end the learned rows are written into the table. No horizontal flips (a mirrored
view no longer matches its camera).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError, TokenError
from ..progress import Progress
from ..tokens import check_tokens_are_new, token_for_component, validate_token_names
from ..types import ComponentMasks, MultiViewRender, TokenSet
from .losses import attention_alignment_loss, average_attention_maps, map_size, masked_diffusion_loss
from .train import CheckpointPolicy, ConfigDict, StepOutput, clone_out_of_inference, grad_enabled, run_training

NUM_TRAIN_TIMESTEPS = 1000
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass(frozen=True)
class TIConfig(ConfigDict):
    """Phase 1 settings (defaults: Break-a-Scene's phase 1 mapped to MVDream at 256 px).

    Attributes:
        steps: optimisation steps (400).
        lr: AdamW learning rate of the token rows (5e-4, constant).
        betas, weight_decay, adam_eps: AdamW settings (0.9/0.999, 1e-2, 1e-8).
        max_grad_norm: global gradient-norm clip (1.0).
        attention_loss_weight: λ of the attention-alignment loss (1e-2); 0 turns it (and map recording) off.
        attention_map_size: side of the cross-attention maps used (16: ``down_blocks.1``/``up_blocks.2`` at 256 px);
            the layers are chosen from the latent size, the nearest level when no level has exactly this size.
        tokens: one token per component (``"<hat>"``); empty: ``<component name>``.
        init_words: per component, the word whose first sub-token initialises its token (``"hat"``); "" or
            missing: the mean of the base vocabulary's embeddings.
        resolution: side the views are resized to before encoding (256 for MVDream); None keeps the render's size.
        seed: seed of the run's random generator (subsets, timesteps, noise).
        mixed_precision: "no", "bf16" or "fp16" autocast around the forward pass (weights stay fp32).
        checkpoint_every: save training state every N steps (when a checkpoint folder is given).
        preview_every: report a 4-view x0 preview every N steps (0: never).
        prompt_prefix: text before the tokens ("a photo of ").
    """

    steps: int = 400
    lr: float = 5e-4
    betas: tuple = (0.9, 0.999)
    weight_decay: float = 1e-2
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    attention_loss_weight: float = 1e-2
    attention_map_size: int = 16
    tokens: tuple = ()
    init_words: tuple = ()
    resolution: Optional[int] = 256
    seed: int = 0
    mixed_precision: str = "no"
    checkpoint_every: int = 100
    preview_every: int = 0
    prompt_prefix: str = "a photo of "

    def __post_init__(self):
        object.__setattr__(self, "tokens", tuple(self.tokens))
        object.__setattr__(self, "init_words", tuple(self.init_words))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.attention_loss_weight < 0:
            raise ConfigError(f"attention_loss_weight must be >= 0, got {self.attention_loss_weight}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ConfigError(f"resolution must be a multiple of 8, got {self.resolution}")


# ----------------------------------------------------------------------------------------------------------------
# scene: what every step of both phases reuses


@dataclass
class Scene:
    """Per-run constants: cached latents, masks, cameras, tokens.

    Attributes:
        latents: float32 [V, 4, h, w] VAE posterior means ×0.18215 of the V views.
        masks: float32 [K, V, H, W] component masks (0/1) at the render's size.
        cameras: float32 [V, 16] MVDream camera inputs.
        token_ids: K new token ids, in component order.
        tokens, components: K token strings and component names.
        attention_layers: cross-attention layer names recorded for the attention loss.
        attention_store: while :func:`recording` is active, the store the recording processors write to. Keeping
            them installed for the whole run (not per forward) lets gradient checkpointing recompute the same ops.
        class_latents: float32 [N, V, 4, h, w] prior-preservation objects (phase 2), or None.
        class_prompt: the prompt of the class objects.
    """

    latents: torch.Tensor
    masks: torch.Tensor
    cameras: torch.Tensor
    token_ids: list
    tokens: tuple
    components: tuple
    attention_layers: list = field(default_factory=list)
    image_size: tuple = (256, 256)
    attention_store: object = None  # an open record_cross_attention store for the whole run (see recording())
    class_latents: Optional[torch.Tensor] = None
    class_prompt: str = ""

    @property
    def num_views(self) -> int:
        return int(self.latents.shape[0])


def check_inputs(render: MultiViewRender, masks: ComponentMasks) -> None:
    """Raise ShapeError/ConfigError when the masks do not fit the render or a component is empty."""
    if not isinstance(masks, ComponentMasks):
        raise ConfigError(f"masks must be ComponentMasks, got {type(masks).__name__}")
    k = int(masks.masks.shape[0])
    if k == 0:
        raise ConfigError("no components to learn: give at least one component mask")
    if tuple(masks.masks.shape[1:]) != (render.num_views, *render.size):
        raise ShapeError(
            f"masks are [K, V, H, W] = {list(masks.masks.shape)} but the render has {render.num_views} views of "
            f"{render.size[0]}x{render.size[1]}: make the masks from this render"
        )
    empty = [n for n, m in zip(masks.names, masks.masks) if not bool(m.any())]
    if empty:
        raise ShapeError(f"components {empty} are empty in every view: check the part names or the SAM prompts")


def attention_layers_for(unet, latent_hw: tuple, map_size_px: int) -> list:
    """Cross-attention layers whose maps are ``map_size_px`` wide for latents of ``latent_hw`` (nearest level otherwise).

    The UNet halves the resolution after each down block but the last: ``down_blocks.i`` and ``up_blocks.(n−1−i)``
    work at ``latent / 2**i``. At 256 px (latent 32) a size of 16 picks ``down_blocks.1`` and ``up_blocks.2``.
    """
    n = len(unet.down_blocks)
    by_level: dict = {}
    for name in unet.attn_processors:
        if not name.endswith("attn2.processor"):
            continue
        m = re.match(r"(down|up)_blocks\.(\d+)\.", name)
        if m is None:  # mid block: ignored, as in Break-a-Scene
            continue
        level = int(m.group(2)) if m.group(1) == "down" else n - 1 - int(m.group(2))
        by_level.setdefault(level, []).append(name[: -len(".processor")])
    if not by_level:
        raise ConfigError("the UNet has no cross-attention layers in its down/up blocks")
    width = int(latent_hw[1])
    best = min(by_level, key=lambda lv: (abs(width / 2 ** lv - map_size_px), lv))
    return by_level[best]


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


def prepare_model_for_training(model) -> None:
    """Give every parameter/buffer created under ``torch.inference_mode`` normal storage, in place.

    ComfyUI loads models inside inference mode; such tensors cannot take part in autograd, even frozen.
    """
    modules = [m for m in (model.unet, model.vae, model.text_encoder) if m is not None]
    with torch.inference_mode(False), torch.no_grad():
        for root in modules:
            for module in root.modules():
                for name, p in list(module._parameters.items()):
                    if p is not None and p.is_inference():
                        module._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=p.requires_grad)
                for name, b in list(module._buffers.items()):
                    if b is not None and b.is_inference():
                        module._buffers[name] = b.clone()


def build_scene(model, render: MultiViewRender, masks: ComponentMasks, tokens: Sequence[str], token_ids: Sequence[int],
                resolution: Optional[int], attention_map_size: int, with_attention: bool) -> Scene:
    """Encode the views once and gather the constants of a run."""
    check_inputs(render, masks)
    if render.num_views != model.num_views:
        raise ShapeError(f"the render has {render.num_views} views but the model expects {model.num_views}")
    device = model.device
    rgb = clone_out_of_inference(render.rgb).to(device=device, dtype=torch.float32)
    if resolution is not None and tuple(rgb.shape[-2:]) != (resolution, resolution):
        rgb = F.interpolate(rgb, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        latents = model.encode_images(rgb.to(model.dtype).clamp(0, 1), sample=False).float()
    cameras = clone_out_of_inference(render.cameras.embedding()).to(device=device, dtype=torch.float32)
    layers = attention_layers_for(model.unet, latents.shape[-2:], attention_map_size) if with_attention else []
    return Scene(
        latents=latents.detach(),
        masks=clone_out_of_inference(masks.masks).to(device=device, dtype=torch.float32),
        cameras=cameras,
        token_ids=[int(t) for t in token_ids],
        tokens=tuple(tokens),
        components=tuple(masks.names),
        attention_layers=layers,
        image_size=tuple(int(s) for s in rgb.shape[-2:]),
    )


class TokenRows(torch.nn.Module):
    """The trainable embedding rows of the placeholder tokens, spliced into the token embedding's output.

    A forward hook on ``model.token_embedding`` replaces the looked-up vectors of the placeholder ids by
    ``rows``; the embedding table itself is never touched until :meth:`write_back`.
    """

    def __init__(self, model, token_ids: Sequence[int], initial: torch.Tensor):
        super().__init__()
        self.embedding = [model.token_embedding]  # a list keeps it out of this module's parameters
        self.register_buffer("ids", torch.tensor(list(token_ids), dtype=torch.long, device=model.device), persistent=False)
        self.rows = torch.nn.Parameter(initial.detach().to(device=model.device, dtype=torch.float32).clone())

    def _hook(self, module, inputs, output):
        ids = inputs[0]
        match = ids[..., None] == self.ids.to(ids.device)  # [B, T, K]
        hit = match.any(dim=-1, keepdim=True)
        if not bool(hit.any()):
            return output
        picked = self.rows.to(output.dtype)[match.to(torch.long).argmax(dim=-1)]  # [B, T, D]
        return torch.where(hit, picked, output)

    @contextlib.contextmanager
    def attached(self):
        handle = self.embedding[0].register_forward_hook(self._hook)
        try:
            yield self
        finally:
            handle.remove()

    def write_back(self) -> None:
        weight = self.embedding[0].weight
        with torch.no_grad():
            weight[self.ids.to(weight.device)] = self.rows.detach().to(weight)


def encode_ids_differentiable(model, ids: torch.Tensor) -> torch.Tensor:
    """Text embeddings [B, 77, D] through the model's own encoder, which keeps the autograd graph (the spliced
    token rows and, in phase 2, the text tower's weights receive gradients through it)."""
    return model.encode_text_ids(ids)


def autocast_context(device: torch.device, mixed_precision: str):
    """Autocast for ``mixed_precision`` on ``device``; fp16 on CPU is refused (CPU: bf16 or off)."""
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        raise ConfigError("fp16 mixed precision needs a GPU; on CPU use mixed_precision='bf16' or 'no'")
    return torch.autocast(device_type=device.type, dtype=dtype)


def personalization_loss(model, scene: Scene, generator: torch.Generator, attention_loss_weight: float,
                         mixed_precision: str = "no", subset: Optional[Sequence[int]] = None,
                         timestep: Optional[int] = None, noise: Optional[torch.Tensor] = None,
                         prompt_prefix: str = "a photo of ", diagnostics: Optional[dict] = None,
                         prior_loss_weight: float = 0.0) -> StepOutput:
    """One forward pass of the personalisation objective (both phases).

    Random draws, in order, from ``generator`` (CPU): k, the subset permutation, the timestep, the noise; with a
    prior (``scene.class_latents`` and ``prior_loss_weight > 0``) then the class object, its timestep and noise.
    ``subset``/``timestep``/``noise`` override the instance draws (tests, evaluation). When ``diagnostics`` is a dict
    it receives ``attention`` (float [V, h, w, T], detached head/layer-averaged maps), ``positions``, ``subset``
    and, with a prior, ``prior`` = (class index, timestep, noise).

    With a prior the class object rides in the same UNet batch as a second object ([instance × V, class × V],
    Break-a-Scene's batch order reversed), with the class prompt and the same cameras; its loss is the plain
    (unmasked) noise MSE and its attention maps are not used.

    Returns:
        StepOutput with loss = masked + λ·attention (+ w·prior), info {masked, attention, t, k[, prior]}, and the
        preview context of the instance views.
    """
    K, V = len(scene.token_ids), scene.num_views
    if subset is None:
        k = int(torch.randint(1, K + 1, (1,), generator=generator))
        subset = torch.randperm(K, generator=generator)[:k].tolist()
    if timestep is None:
        timestep = int(torch.randint(0, NUM_TRAIN_TIMESTEPS, (1,), generator=generator))
    if noise is None:
        noise = torch.randn(scene.latents.shape, generator=generator, dtype=torch.float32)
    device = scene.latents.device
    noise = noise.to(device)
    prompt = prompt_prefix + " and ".join(scene.tokens[i] for i in subset)
    ids = model.tokenizer.encode([prompt]).to(device)
    positions = []
    for i in subset:
        where = (ids[0] == scene.token_ids[i]).nonzero().flatten()
        if where.numel() != 1:
            raise TokenError(f"token {scene.tokens[i]} appears {where.numel()} times in the encoded prompt {prompt!r}")
        positions.append(int(where[0]))
    alphas = model.alphas_cumprod.to(device=device, dtype=torch.float64)
    ac = alphas[timestep].float()
    noisy = ac.sqrt() * scene.latents + (1.0 - ac).sqrt() * noise
    timesteps = torch.full((V,), timestep, dtype=torch.long, device=device)
    cameras = scene.cameras
    with_prior = prior_loss_weight > 0 and scene.class_latents is not None
    if with_prior:
        c = int(torch.randint(0, scene.class_latents.shape[0], (1,), generator=generator))
        class_t = int(torch.randint(0, NUM_TRAIN_TIMESTEPS, (1,), generator=generator))
        class_noise = torch.randn(scene.class_latents.shape[1:], generator=generator, dtype=torch.float32).to(device)
        class_ac = alphas[class_t].float()
        class_noisy = class_ac.sqrt() * scene.class_latents[c] + (1.0 - class_ac).sqrt() * class_noise
        batch_latents = torch.cat([noisy, class_noisy])
        timesteps = torch.cat([timesteps, torch.full((V,), class_t, dtype=torch.long, device=device)])
        cameras = torch.cat([cameras, cameras])
        ids = torch.cat([ids, model.tokenizer.encode([scene.class_prompt]).to(device)])
        if diagnostics is not None:
            diagnostics["prior"] = (c, class_t, class_noise.detach().cpu())
    else:
        batch_latents = noisy
    with_attention = attention_loss_weight > 0 and bool(scene.attention_layers)
    with autocast_context(device, mixed_precision):
        text = encode_ids_differentiable(model, ids)  # [1 or 2, 77, D]
        text = text.repeat_interleave(V, dim=0)  # view-contiguous: object b's views are rows b*V .. b*V+V-1

        def forward():
            return model.predict_noise(batch_latents.to(model.dtype), timesteps, text, cameras.to(model.dtype))

        if with_attention and scene.attention_store is not None:
            scene.attention_store.clear()
            eps_all = forward()
            maps = dict(scene.attention_store.maps)
        elif with_attention:
            from ..mvdream.attention import record_cross_attention

            with record_cross_attention(model.unet, scene.attention_layers) as store:
                eps_all = forward()
            maps = dict(store.maps)
        else:
            eps_all = forward()
    eps_pred = eps_all[:V]
    union = scene.masks[subset].amax(dim=0)  # [V, H, W]
    masked = masked_diffusion_loss(eps_pred.float(), noise, union)
    attn = torch.zeros((), device=device)
    if with_attention:
        avg = average_attention_maps(maps, batch=eps_all.shape[0])[:V]  # [V, HW, T] of the instance object
        h, w = map_size(avg.shape[1], scene.image_size)
        attn = attention_alignment_loss(avg.reshape(V, h, w, avg.shape[-1]), positions, scene.masks[subset])
        if diagnostics is not None:
            diagnostics.update(attention=avg.detach().reshape(V, h, w, avg.shape[-1]), positions=positions,
                               subset=list(subset))
    loss = masked + attention_loss_weight * attn
    info = {"masked": float(masked.detach()), "attention": float(attn.detach()), "t": timestep, "k": len(subset)}
    if with_prior:
        prior = F.mse_loss(eps_all[V:].float(), class_noise)
        loss = loss + prior_loss_weight * prior
        info["prior"] = float(prior.detach())
    return StepOutput(loss, info, (noisy.detach(), eps_pred.detach(), ac))


def preview_from(model, context) -> torch.Tensor:
    """float32 [3, H, V·W] in 0..1 (CPU): the views reconstructed from the current noise prediction."""
    noisy, eps_pred, ac = context
    with torch.no_grad():
        x0 = (noisy - (1.0 - ac).sqrt() * eps_pred.float()) / ac.sqrt()
        rgb = model.decode_latents(x0.to(model.dtype)).float().clamp(0, 1)
    return torch.cat(list(rgb), dim=-1).cpu()


@contextlib.contextmanager
def recording(model, scene: Scene):
    """Install the recording cross-attention processors for a whole run (no-op without attention layers)."""
    if not scene.attention_layers:
        yield scene
        return
    from ..mvdream.attention import record_cross_attention

    with record_cross_attention(model.unet, scene.attention_layers) as store:
        scene.attention_store = store
        try:
            yield scene
        finally:
            scene.attention_store = None


@contextlib.contextmanager
def frozen(model):
    """Freeze every weight of the model for the duration; restore the previous flags afterwards."""
    modules = [m for m in (model.unet, model.vae, model.text_encoder) if m is not None]
    flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def resolve_tokens(masks: ComponentMasks, tokens: Sequence[str]) -> tuple:
    tokens = tuple(tokens) or tuple(token_for_component(n) for n in masks.names)
    validate_token_names(tokens)
    if len(tokens) != len(masks.names):
        raise TokenError(f"{len(tokens)} tokens for {len(masks.names)} components {list(masks.names)}: give one per component")
    return tokens


def train_textual_inversion(model, render: MultiViewRender, masks: ComponentMasks, config: Optional[TIConfig] = None,
                            progress: Optional[Progress] = None, resume_from=None, checkpoint_dir=None,
                            return_result: bool = False):
    """Learn one placeholder token per component (phase 1). Adds the tokens to ``model`` (in place).

    Args:
        model: MVDreamModel; only the new tokens' embedding rows are trained.
        render: the four views of the asset.
        masks: one mask per component, [K, V, H, W] at the render's size.
        config: TIConfig (defaults: 400 steps, lr 5e-4, λ 1e-2).
        progress: progress/interrupt hook (loss, masked, attention, t, k per step; preview every N steps).
        resume_from: a training-state file of an interrupted run with the same model, tokens and components.
        checkpoint_dir: folder for training state (every ``config.checkpoint_every`` steps and on interruption).
        return_result: also return the :class:`TrainResult` (losses per step).

    Returns:
        TokenSet with embeddings float32 [K, 1, D] (and the TrainResult when asked).

    Raises:
        TokenError: malformed/duplicate tokens, one already in the vocabulary.
        ShapeError / ConfigError: masks not matching the render, zero or empty components, bad settings.
        TrainingError: NaN loss (names the step and the last good checkpoint), a resume file of another run.
    """
    config = config or TIConfig()
    check_inputs(render, masks)
    tokens = resolve_tokens(masks, config.tokens)
    with grad_enabled():
        prepare_model_for_training(model)
        if resume_from is None:
            check_tokens_are_new(model, tokens)
        initial = initial_embeddings(model, config.init_words, len(tokens))
        known = [t for t in tokens if t in getattr(model.tokenizer, "added_tokens", ())]
        if known and len(known) != len(tokens):
            raise TokenError(f"tokens {known} exist in this model but {sorted(set(tokens) - set(known))} do not: "
                             "load the base model again")
        token_ids = [model.tokenizer.token_ids(t)[0] for t in tokens] if known else model.add_tokens(list(tokens), initial)
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
                                        prompt_prefix=config.prompt_prefix)

        with frozen(model), rows.attached(), recording(model, scene):
            result = run_training(
                step_fn, {"token_rows": rows.rows}, optimizer, config.steps, generator, fingerprint, progress=progress,
                checkpoint=CheckpointPolicy(checkpoint_dir, config.checkpoint_every, "phase1"), resume_from=resume_from,
                max_grad_norm=config.max_grad_norm, scaler=scaler, preview_fn=lambda ctx: preview_from(model, ctx),
                preview_every=config.preview_every, learning_rates=[config.lr],
            )
        rows.write_back()
        token_set = TokenSet(tokens=tokens, embeddings=rows.rows.detach().float().cpu()[:, None, :].clone(),
                             components=tuple(masks.names), base_model_hash=getattr(model, "model_hash", ""))
    return (token_set, result) if return_result else token_set
