"""The personalisation objective both phases minimise, and the per-run constants it reads (``../shared/design/mvdream.md`` §6).

One step (Break-a-Scene's recipe mapped onto MVDream):

1. draw ``k`` uniformly from 1..K and a random ``k``-subset of the components in random order (union sampling);
2. encode ``"a photo of <a> and <b>"``;
3. take the V views' cached VAE latents, one timestep ``t ~ U{0..999}`` shared by the views of the object, and
   Gaussian noise; ``x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε``;
4. predict ε with the multi-view UNet on all V views with their real cameras (joint self-attention), recording the
   cross-attention maps of the ~16×16 layers in the same forward pass when the attention loss is on;
5. ``loss = masked_mse(ε̂, ε, ∪ masks) + λ · Σ_i attention_alignment(token i, mask i)`` (+ an optional class-prior term
   in phase 2).

Only what the objective needs lives here: :class:`Scene` (cached latents, masks, cameras, tokens), :class:`TokenRows`
(the trainable placeholder rows, spliced into the text tower), :func:`personalization_loss` and the preview of its
prediction. The phases (``textual_inversion.py``, ``finetune.py``) choose what trains; ``train.py`` runs the loop.
"""

from __future__ import annotations

import contextlib
import re
from enum import Enum
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError, TokenError
from ..schedule import NUM_TRAIN_TIMESTEPS
from ..types import ComponentMasks, ConfigDict, MultiViewRender
from .autograd import usable_by_autograd
from .losses import (ATTENTION_NORMALISATIONS, attention_alignment_loss, average_attention_maps, map_size,
                     masked_diffusion_loss)
from .train import StepOutput

class MixedPrecision(str, Enum):
    """The autocast dtype of training on a GPU, over float32 master weights (a ``str`` Enum: the plain strings are
    accepted everywhere; configs keep the plain string)."""

    NO = "no"
    BF16 = "bf16"
    FP16 = "fp16"


MIXED_PRECISION = tuple(m.value for m in MixedPrecision)


@dataclass(frozen=True)
class ObjectiveConfig(ConfigDict):
    """The settings both phases share: the optimiser, the objective, the run (each phase adds its own).

    Attributes:
        steps: optimisation steps (400).
        lr: learning rate of what the phase trains (its default is the phase's).
        betas, weight_decay, adam_eps: AdamW settings (0.9/0.999, 1e-2, 1e-8).
        max_grad_norm: global gradient-norm clip (1.0).
        attention_loss_weight: λ of the attention-alignment loss (0.1); 0 turns it (and map recording) off.
            Break-a-Scene's 0.01 belongs to its max-normalised MSE; the KL form ("distribution") is about 3.5x the
            masked diffusion loss in value and its gradient on the token rows 14-30x the diffusion loss's (tiny model,
            lr 5e-4), so at 0.01 it hardly moves attention, at 0.1 it is a quarter of the loss and raises each token's
            in-mask share clearly for +0.5 % of diffusion loss, at 1 it dominates (figures:
            ``bench/token_isolation_study.py``).
        attention_normalisation: how the loss compares a token's map with its mask: "distribution" (the default,
            ``KL(mask ‖ map)`` of the normalised maps) or "max" (Break-a-Scene's max-normalised MSE); see
            :func:`~.losses.attention_alignment_loss`.
        attention_map_size: side of the cross-attention maps used (16: ``down_blocks.1``/``up_blocks.2`` at 256 px);
            the layers are chosen from the latent size, the nearest level when no level has exactly this size.
        resolution: side the views are resized to before encoding (256 for MVDream); None keeps the render's size.
        seed: seed of the run's random generator (subsets, timesteps, noise).
        mixed_precision: "no", "bf16" or "fp16" autocast around the forward pass (trainable weights stay fp32).
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
    attention_loss_weight: float = 0.1
    attention_normalisation: str = "distribution"
    attention_map_size: int = 16
    resolution: Optional[int] = 256
    seed: int = 0
    mixed_precision: str = "no"
    checkpoint_every: int = 100
    preview_every: int = 0
    prompt_prefix: str = "a photo of "

    def __post_init__(self):
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        if self.attention_loss_weight < 0:
            raise ConfigError(f"attention_loss_weight must be >= 0, got {self.attention_loss_weight}")
        if self.attention_normalisation not in ATTENTION_NORMALISATIONS:
            raise ConfigError(f"attention_normalisation must be one of {ATTENTION_NORMALISATIONS}, got "
                              f"{self.attention_normalisation!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        object.__setattr__(self, "mixed_precision", MixedPrecision(self.mixed_precision).value)
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


def build_scene(model, render: MultiViewRender, masks: ComponentMasks, tokens: Sequence[str], token_ids: Sequence[int],
                resolution: Optional[int], attention_map_size: int, with_attention: bool) -> Scene:
    """Encode the views once and gather the constants of a run."""
    check_inputs(render, masks)
    if render.num_views != model.num_views:
        raise ShapeError(f"the render has {render.num_views} views but the model expects {model.num_views}")
    device = model.device
    rgb = usable_by_autograd(render.rgb).to(device=device, dtype=torch.float32)
    if resolution is not None and tuple(rgb.shape[-2:]) != (resolution, resolution):
        rgb = F.interpolate(rgb, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        latents = model.encode_images(rgb.to(model.dtype).clamp(0, 1), sample=False).float()
    cameras = usable_by_autograd(render.cameras.embedding()).to(device=device, dtype=torch.float32)
    layers = attention_layers_for(model.unet, latents.shape[-2:], attention_map_size) if with_attention else []
    return Scene(
        latents=latents.detach(),
        masks=usable_by_autograd(masks.masks).to(device=device, dtype=torch.float32),
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


# ----------------------------------------------------------------------------------------------------------------
# the objective


def autocast_context(device: torch.device, mixed_precision: str):
    """Autocast for ``mixed_precision`` on ``device``; fp16 on CPU is refused (CPU: bf16 or off)."""
    if mixed_precision == "no":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        raise ConfigError("fp16 mixed precision needs a GPU; on CPU use mixed_precision='bf16' or 'no'")
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class InstanceDraw:
    """The random choices of one step for the instance object: components (in prompt order), timestep, noise."""

    subset: list
    timestep: int
    noise: torch.Tensor  # float32 [V, 4, h, w] on the scene's device


@dataclass(frozen=True)
class PriorDraw:
    """The class object riding along in phase 2: which one, its timestep, noise and noisy latents."""

    index: int
    timestep: int
    noise: torch.Tensor  # float32 [V, 4, h, w]
    noisy: torch.Tensor  # float32 [V, 4, h, w]


def draw_instance(scene: Scene, generator: torch.Generator, subset: Optional[Sequence[int]] = None,
                  timestep: Optional[int] = None, noise: Optional[torch.Tensor] = None) -> InstanceDraw:
    """Draw, in this order from the CPU ``generator``: k, the subset permutation, the timestep, the noise.

    A value given by the caller replaces its draw (and that draw is skipped).
    """
    k_total = len(scene.token_ids)
    if subset is None:
        k = int(torch.randint(1, k_total + 1, (1,), generator=generator))
        subset = torch.randperm(k_total, generator=generator)[:k].tolist()
    if timestep is None:
        timestep = int(torch.randint(0, NUM_TRAIN_TIMESTEPS, (1,), generator=generator))
    if noise is None:
        noise = torch.randn(scene.latents.shape, generator=generator, dtype=torch.float32)
    return InstanceDraw(list(subset), int(timestep), noise.to(scene.latents.device))


def draw_prior(scene: Scene, generator: torch.Generator, alphas: torch.Tensor) -> PriorDraw:
    """Draw the class object, its timestep and noise (after the instance draws) and noise its latents."""
    c = int(torch.randint(0, scene.class_latents.shape[0], (1,), generator=generator))
    t = int(torch.randint(0, NUM_TRAIN_TIMESTEPS, (1,), generator=generator))
    noise = torch.randn(scene.class_latents.shape[1:], generator=generator, dtype=torch.float32).to(alphas.device)
    return PriorDraw(c, t, noise, add_noise(scene.class_latents[c], noise, alphas[t].float()))


def add_noise(latents: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The forward process ``√ᾱ·x0 + √(1−ᾱ)·ε``."""
    return alpha_bar.sqrt() * latents + (1.0 - alpha_bar).sqrt() * noise


def encode_subset_prompt(model, scene: Scene, subset: Sequence[int], prompt_prefix: str) -> tuple:
    """Token ids [1, 77] of ``prefix + "<a> and <b>"`` and the position of each subset token in them."""
    prompt = prompt_prefix + " and ".join(scene.tokens[i] for i in subset)
    ids = model.tokenizer.encode([prompt]).to(scene.latents.device)
    positions = []
    for i in subset:
        where = (ids[0] == scene.token_ids[i]).nonzero().flatten()
        if where.numel() != 1:
            raise TokenError(f"token {scene.tokens[i]} appears {where.numel()} times in the encoded prompt {prompt!r}")
        positions.append(int(where[0]))
    return ids, positions


def predict_noise_and_maps(model, scene: Scene, latents: torch.Tensor, timesteps: torch.Tensor, ids: torch.Tensor,
                           cameras: torch.Tensor, mixed_precision: str, with_attention: bool) -> tuple:
    """One UNet forward of B objects × V views (text encoded with its gradient path kept), with the cross-attention
    maps of that same forward when ``with_attention``; returns ``(eps [B·V, 4, h, w], maps or None)``."""
    views = scene.num_views
    with autocast_context(latents.device, mixed_precision):
        # the model's own encoder keeps the autograd graph: the spliced token rows (and in phase 2 the text tower)
        # receive their gradients through it
        text = model.encode_text_ids(ids).repeat_interleave(views, dim=0)  # view-contiguous rows b*V .. b*V+V-1

        def forward():
            return model.predict_noise(latents.to(model.dtype), timesteps, text, cameras.to(model.dtype))

        if not with_attention:
            return forward(), None
        if scene.attention_store is not None:  # the run-long recorder (see recording())
            scene.attention_store.clear()
            eps = forward()
            return eps, dict(scene.attention_store.maps)
        from ..mvdream.attention import record_cross_attention

        with record_cross_attention(model.unet, scene.attention_layers) as store:
            eps = forward()
        return eps, dict(store.maps)


def attention_term(maps: dict, batch: int, scene: Scene, subset: Sequence[int], positions: Sequence[int],
                   normalisation: str = "distribution") -> tuple:
    """Attention-alignment loss of the instance object's views and its head/layer-averaged maps [V, h, w, T]."""
    views = scene.num_views
    avg = average_attention_maps(maps, batch=batch)[:views]  # [V, HW, T] of the instance object
    h, w = map_size(avg.shape[1], scene.image_size)
    avg = avg.reshape(views, h, w, avg.shape[-1])
    return attention_alignment_loss(avg, positions, scene.masks[list(subset)], normalisation=normalisation), avg


def personalization_loss(model, scene: Scene, generator: torch.Generator, attention_loss_weight: float,
                         mixed_precision: str = "no", subset: Optional[Sequence[int]] = None,
                         timestep: Optional[int] = None, noise: Optional[torch.Tensor] = None,
                         prompt_prefix: str = "a photo of ", diagnostics: Optional[dict] = None,
                         prior_loss_weight: float = 0.0, attention_normalisation: str = "distribution") -> StepOutput:
    """One forward pass of the personalisation objective (both phases).

    Random draws, in order, from ``generator`` (CPU): k, the subset permutation, the timestep, the noise; with a
    prior (``scene.class_latents`` and ``prior_loss_weight > 0``) then the class object, its timestep and noise.
    ``subset``/``timestep``/``noise`` override the instance draws (tests, evaluation). When ``diagnostics`` is a dict
    it receives ``attention`` (float [V, h, w, T], detached head/layer-averaged maps), ``positions``, ``subset``
    and, with a prior, ``prior`` = (class index, timestep, noise). ``attention_normalisation`` is
    :attr:`ObjectiveConfig.attention_normalisation`.

    With a prior the class object rides in the same UNet batch as a second object ([instance × V, class × V],
    Break-a-Scene's batch order reversed), with the class prompt and the same cameras; its loss is the plain
    (unmasked) noise MSE and its attention maps are not used.

    Returns:
        StepOutput with loss = masked + λ·attention (+ w·prior), info {masked, attention, t, k[, prior]}, and the
        preview context of the instance views.
    """
    views, device = scene.num_views, scene.latents.device
    draw = draw_instance(scene, generator, subset, timestep, noise)
    ids, positions = encode_subset_prompt(model, scene, draw.subset, prompt_prefix)
    alphas = model.alphas_cumprod.to(device=device, dtype=torch.float64)
    ac = alphas[draw.timestep].float()
    noisy = add_noise(scene.latents, draw.noise, ac)
    latents, cameras = noisy, scene.cameras
    timesteps = torch.full((views,), draw.timestep, dtype=torch.long, device=device)
    prior = draw_prior(scene, generator, alphas) if prior_loss_weight > 0 and scene.class_latents is not None else None
    if prior is not None:  # the class object is a second object of the same UNet batch
        latents = torch.cat([noisy, prior.noisy])
        timesteps = torch.cat([timesteps, torch.full((views,), prior.timestep, dtype=torch.long, device=device)])
        cameras = torch.cat([cameras, cameras])
        ids = torch.cat([ids, model.tokenizer.encode([scene.class_prompt]).to(device)])
        if diagnostics is not None:
            diagnostics["prior"] = (prior.index, prior.timestep, prior.noise.detach().cpu())
    with_attention = attention_loss_weight > 0 and bool(scene.attention_layers)
    eps_all, maps = predict_noise_and_maps(model, scene, latents, timesteps, ids, cameras, mixed_precision,
                                           with_attention)
    eps_pred = eps_all[:views]
    masked = masked_diffusion_loss(eps_pred.float(), draw.noise, scene.masks[draw.subset].amax(dim=0))
    attn = torch.zeros((), device=device)
    if with_attention:
        attn, avg = attention_term(maps, eps_all.shape[0], scene, draw.subset, positions, attention_normalisation)
        if diagnostics is not None:
            diagnostics.update(attention=avg.detach(), positions=positions, subset=list(draw.subset))
    loss = masked + attention_loss_weight * attn
    info = {"masked": float(masked.detach()), "attention": float(attn.detach()), "t": draw.timestep,
            "k": len(draw.subset)}
    if prior is not None:
        prior_loss = F.mse_loss(eps_all[views:].float(), prior.noise)
        loss = loss + prior_loss_weight * prior_loss
        info["prior"] = float(prior_loss.detach())
    return StepOutput(loss, info, (noisy.detach(), eps_pred.detach(), ac))


def preview_from(model, context) -> torch.Tensor:
    """float32 [3, H, V·W] in 0..1 (CPU): the views reconstructed from the current noise prediction."""
    noisy, eps_pred, ac = context
    with torch.no_grad():
        x0 = (noisy - (1.0 - ac).sqrt() * eps_pred.float()) / ac.sqrt()
        rgb = model.decode_latents(x0.to(model.dtype)).float().clamp(0, 1)
    return torch.cat(list(rgb), dim=-1).cpu()
