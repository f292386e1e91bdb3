"""Running the model for the token report: the tokens' cross-attention maps on the source views (attention isolation)
and the sampled views of the image measures (reconstruction, omission, swap)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError, TokenError
from ..personalize.losses import average_attention_maps, downsample_mask, map_size
from ..types import ComponentMasks, MultiViewRender, TokenSet
from .measures import attention_shares, change_shares, mask_area_shares, masked_psnr

#: Timesteps the attention maps are averaged over (spread over the schedule; fixed so reports compare).
DEFAULT_TIMESTEPS = (100, 300, 500, 700, 900)


@dataclass(frozen=True)
class TokenReportConfig:
    """Settings of a token report.

    Attributes:
        timesteps: diffusion timesteps the attention maps are averaged over.
        noise_seed: seed of the noise added to the source latents for the attention maps.
        attention_map_size: side of the maps used (16: the layers of the attention loss at 256 px).
        resolution: side the views are resized to before encoding (256 for MVDream); None keeps the render's size.
        prompt_prefix: text before the tokens, as in training ("a photo of ").
        images: also sample views for reconstruction, omission and swap (False: attention only, much faster).
        sample_steps, cfg, seed, method: the sampler of the image measures (DDIM, 7.5, fixed seed).
        negative_prompt: CFG's unconditional text.
        isolated_share: a token is "isolated" when at least this share of its attention is inside its own mask ...
        leak_share: ... and no other component receives this share or more ("leaking into X" otherwise).
    """

    timesteps: tuple = DEFAULT_TIMESTEPS
    noise_seed: int = 0
    attention_map_size: int = 16
    resolution: Optional[int] = 256
    prompt_prefix: str = "a photo of "
    images: bool = True
    sample_steps: int = 30
    cfg: float = 7.5
    seed: int = 23
    method: str = "ddim"
    negative_prompt: str = ""
    isolated_share: float = 0.5
    leak_share: float = 0.25

    def __post_init__(self):
        object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))
        if not self.timesteps or not all(0 <= t < 1000 for t in self.timesteps):
            raise ConfigError(f"timesteps must be one or more integers in 0..999, got {list(self.timesteps)}")
        if self.sample_steps < 1:
            raise ConfigError(f"sample_steps must be at least 1, got {self.sample_steps}")
        if not 0.0 < self.isolated_share <= 1.0 or not 0.0 < self.leak_share <= 1.0:
            raise ConfigError(f"isolated_share and leak_share must be in (0, 1], got {self.isolated_share} and "
                              f"{self.leak_share}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise ConfigError(f"resolution must be a multiple of 8, got {self.resolution}")



def views_and_latents(model, render: MultiViewRender, resolution: Optional[int]):
    """(rgb float32 [V, 3, S, S] on the model's device, latents float32 [V, 4, s, s], cameras [V, 16])."""
    device = model.device
    rgb = render.rgb.detach().clone().to(device=device, dtype=torch.float32)
    if resolution is not None and tuple(rgb.shape[-2:]) != (resolution, resolution):
        rgb = F.interpolate(rgb, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        latents = model.encode_images(rgb.to(model.dtype).clamp(0, 1), sample=False).float()
    cameras = render.cameras.embedding().detach().clone().to(device=device, dtype=torch.float32)
    return rgb.clamp(0, 1), latents, cameras


def _positions(ids: torch.Tensor, token_ids: Sequence[int], words: Sequence[str], prompt: str) -> list:
    positions = []
    for tid, word in zip(token_ids, words):
        where = (ids == int(tid)).nonzero().flatten()
        if where.numel() != 1:
            raise TokenError(f"{word!r} appears {where.numel()} times in the encoded prompt {prompt!r}; "
                             "give every component a different token / initialiser word")
        positions.append(int(where[0]))
    return positions


def recorded_attention(model, latents: torch.Tensor, cameras: torch.Tensor, prompt: str, words: Sequence[str],
                       layers: Sequence[str], timesteps: Sequence[int], noise_seed: int = 0) -> tuple:
    """The words' cross-attention maps for one prompt, averaged over heads, ``layers`` and ``timesteps``.

    Each timestep noises the latents with the same seeded noise (``x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε``, the schedule of
    the model's own ``alphas_cumprod``) and runs the multi-view UNet once with the real cameras.

    Args:
        model: MVDreamModel.
        latents: float [V, 4, h, w] of the source views.
        cameras: float [V, 16].
        prompt: the prompt (one object).
        words: the tokens/words whose maps are wanted; each must encode to one position whose first sub-token is
            ``model.tokenizer.token_ids(word)[0]`` (appearing once).
        layers: cross-attention layers to record (names or patterns).
        timesteps: timesteps to average over.

    Returns:
        (float32 [V, mh, mw, T] averaged maps, list of the words' positions).
    """
    from ..mvdream.attention import record_cross_attention

    device = latents.device
    V = int(latents.shape[0])
    ids = model.tokenizer.encode([prompt]).to(device)
    token_ids = []
    for word in words:
        sub = model.tokenizer.token_ids(word)
        if not sub:
            raise TokenError(f"{word!r} gives no tokens: use a plain word or a learned <token>")
        token_ids.append(int(sub[0]))
    positions = _positions(ids[0], token_ids, words, prompt)
    generator = torch.Generator("cpu").manual_seed(int(noise_seed))
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(device)
    alphas = model.alphas_cumprod.to(device=device, dtype=torch.float64)
    total = None
    with torch.no_grad():
        text = model.encode_text_ids(ids).repeat_interleave(V, dim=0)  # view-contiguous
        with record_cross_attention(model.unet, list(layers)) as store:
            for t in timesteps:
                ac = alphas[int(t)].float()
                noisy = ac.sqrt() * latents + (1.0 - ac).sqrt() * noise
                store.clear()
                model.predict_noise(noisy.to(model.dtype), torch.full((V,), int(t), dtype=torch.long, device=device),
                                    text, cameras.to(model.dtype))
                avg = average_attention_maps(store.maps, batch=V)
                total = avg if total is None else total + avg
    avg = total / len(timesteps)
    h, w = map_size(avg.shape[1], tuple(latents.shape[-2:]))
    return avg.reshape(V, h, w, avg.shape[-1]).float(), positions


def report_layers(model, latents: torch.Tensor, attention_map_size: int) -> list:
    """The cross-attention layers the attention-alignment loss uses for latents of this size."""
    from ..personalize.objective import attention_layers_for

    return attention_layers_for(model.unet, tuple(latents.shape[-2:]), attention_map_size)


def attention_isolation(model, render: MultiViewRender, masks: ComponentMasks, words: Sequence[str],
                        config: Optional[TokenReportConfig] = None, _prepared=None) -> dict:
    """Leakage matrix of ``words`` (learned tokens, or plain initialiser words on a base model).

    The prompt names every word in component order (``config.prompt_prefix + " and ".join(words)``), as training
    does. When two words are the same (e.g. two components initialised from "object") each word is measured in a
    prompt of its own instead.

    Returns:
        {"prompt": str or [str], "layers": [...], "timesteps": [...], "map_size": [h, w],
         "share": float32 [K, C, V], "attention": float32 [K, V, h, w] (each word's map), "area": float32 [C, V]}.
    """
    config = config or TokenReportConfig()
    words = list(words)
    if len(words) != masks.masks.shape[0]:
        raise ConfigError(f"{len(words)} tokens/words for {masks.masks.shape[0]} components {list(masks.names)}")
    rgb, latents, cameras = _prepared if _prepared is not None else views_and_latents(model, render, config.resolution)
    layers = report_layers(model, latents, config.attention_map_size)
    groups = [list(range(len(words)))] if len(set(words)) == len(words) else [[i] for i in range(len(words))]
    maps, prompts = [None] * len(words), []
    for group in groups:
        prompt = config.prompt_prefix + " and ".join(words[i] for i in group)
        prompts.append(prompt)
        avg, positions = recorded_attention(model, latents, cameras, prompt, [words[i] for i in group], layers,
                                            config.timesteps, config.noise_seed)
        for i, pos in zip(group, positions):
            maps[i] = (avg, pos)
    mask_t = masks.masks.to(device=latents.device)
    share = torch.stack([attention_shares(a, [pos], mask_t)[0] for a, pos in maps])
    h, w = maps[0][0].shape[1:3]
    return {
        "prompt": prompts[0] if len(prompts) == 1 else prompts,
        "layers": list(layers),
        "timesteps": list(config.timesteps),
        "map_size": [int(h), int(w)],
        "share": share,
        "attention": torch.stack([a[..., pos] for a, pos in maps]).float().cpu(),
        "area": mask_area_shares(masks.masks, (h, w)),
    }



@contextlib.contextmanager
def token_vectors(model, tokens: TokenSet):
    """Put ``tokens``' vectors into the model for the duration; the rows they replace come back afterwards."""
    from ..tokens import apply_tokens, existing_token_id, vector_names

    n = int(tokens.embeddings.shape[1])
    names = [name for tok in tokens.tokens for name in vector_names(tok, n)]
    weight = model.token_embedding.weight
    saved = {}
    for name in names:
        tid = existing_token_id(model.tokenizer, name)
        if tid is not None:
            saved[tid] = weight[tid].detach().clone()
    apply_tokens(model, tokens)
    try:
        yield
    finally:
        with torch.no_grad():
            weight = model.token_embedding.weight
            for tid, row in saved.items():
                weight[tid] = row.to(weight)


def swapped(tokens: TokenSet, i: int, j: int) -> TokenSet:
    """``tokens`` with the embeddings of tokens i and j exchanged (the names stay in place)."""
    emb = tokens.embeddings.clone()
    emb[[i, j]] = emb[[j, i]]
    return replace(tokens, embeddings=emb)


def _sample(model, tokens: TokenSet, prompts: Sequence[str], render: MultiViewRender, noise: torch.Tensor,
            config: TokenReportConfig, vectors: Optional[TokenSet] = None) -> torch.Tensor:
    """float32 [B, V, 3, H, W]: each prompt's four views from the same noise (``vectors``' embeddings, if given)."""
    from ..prompts import compose_prompt
    from ..sampling import sample_views

    B, V = len(prompts), render.num_views
    with token_vectors(model, vectors if vectors is not None else tokens):
        cond = compose_prompt(model, "\n".join(prompts), negative_prompt=config.negative_prompt, tokens=None,
                              add_mvdream_suffix=False, add_quality_suffix=False, cameras=render.cameras)
        out = sample_views(model, cond, method=config.method, steps=config.sample_steps, cfg=config.cfg,
                           noise=noise.repeat(B, 1, 1, 1))
    return out.images.float().reshape(B, V, *out.images.shape[1:])


def _masked_identity(source: torch.Tensor, sample: torch.Tensor, mask: torch.Tensor, clip=None, dino=None) -> dict:
    from .. import metrics

    out = {}
    if dino is not None:
        out["dino"] = metrics.dino_identity(source, sample, dino, mask=mask).per_view
    if clip is not None:
        masked = [metrics.apply_protected_mask(x, mask) for x in (source, sample)]
        out["clip_image"] = metrics.clip_image_similarity(masked[0], masked[1], clip).per_view
    return out


def image_measures(model, tokens: TokenSet, render: MultiViewRender, masks: ComponentMasks,
                   config: Optional[TokenReportConfig] = None, clip=None, dino=None) -> dict:
    """Reconstruction, omission and swap from sampled views (one fixed noise for every prompt).

    Returns:
        {"prompt": full prompt, "images": float32 [V, 3, S, S] full-prompt sample, "reconstruction": per component
        {"psnr": [V], "dino": [V]?, "clip_image": [V]?}, "omission": per token {"prompt", "share": [V], "overall",
        "area": [V]}, "swap": list of {"tokens": [a, b], "share": [V], "overall", "area": [V]}}.
    """
    config = config or TokenReportConfig()
    names = list(tokens.tokens)
    K, V = len(names), render.num_views
    side = config.resolution or int(render.size[0])
    source = render.rgb.detach().clone().float().to(model.device)
    if tuple(source.shape[-2:]) != (side, side):
        source = F.interpolate(source, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    source = source.clamp(0, 1)
    component_masks = downsample_mask(masks.masks, (side, side)).to(model.device)  # [K, V, S, S]
    generator = torch.Generator("cpu").manual_seed(int(config.seed))
    noise = torch.randn((V, 4, side // 8, side // 8), generator=generator, dtype=torch.float32).to(model.device)
    full = config.prompt_prefix + " and ".join(names)
    omitted = [config.prompt_prefix + " and ".join(n for n in names if n != names[i]) for i in range(K)] if K > 1 else []
    images = _sample(model, tokens, [full] + omitted, render, noise, config)
    base = images[0]
    recon = {}
    for c, comp in enumerate(masks.names):
        entry = {"psnr": masked_psnr(source, base, component_masks[c])}
        entry.update(_masked_identity(source, base, component_masks[c], clip, dino))
        recon[comp] = entry
    omission = {}
    for i in range(len(omitted)):
        share, overall = change_shares(base, images[1 + i], component_masks[i])
        omission[names[i]] = {"prompt": omitted[i], "share": share, "overall": overall,
                              "area": mask_area_shares(component_masks[i:i + 1])[0]}
    swaps = []
    for i in range(K):
        for j in range(i + 1, K):
            other = _sample(model, tokens, [full], render, noise, config, vectors=swapped(tokens, i, j))[0]
            region = component_masks[i].bool() | component_masks[j].bool()
            share, overall = change_shares(base, other, region)
            swaps.append({"tokens": [names[i], names[j]], "share": share, "overall": overall,
                          "area": mask_area_shares(region[None])[0]})
    return {"prompt": full, "images": base.cpu(), "reconstruction": recon, "omission": omission, "swap": swaps}

