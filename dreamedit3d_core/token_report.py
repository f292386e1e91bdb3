"""Did each token learn its part? Disentanglement evidence for a set of learned component tokens (issue 18).

For every token and every view the report measures:

* **attention isolation**: the token's cross-attention maps, averaged over heads, the layers the attention-alignment
  loss uses and a fixed set of timesteps (fixed noise, the source views' latents, the prompt naming every token), and
  the share of that mass inside each component's mask (a leakage matrix: row = token, column = component). The same
  is measured on a base model with each token's initialiser word as a reference.
* **reconstruction**: four views sampled with the prompt naming every token (fixed seed), compared with the source
  render inside each component's mask: masked PSNR always, masked DINO / CLIP-I when those models are given.
* **omission**: the same noise with one token dropped from the prompt; the share of the image change
  (mean absolute RGB difference) that falls inside that token's mask.
* **swap**: the same noise with two tokens' embeddings exchanged; the share of the change inside both masks.

Every share comes with the mask's own area share (what a change or an attention spread evenly over the image would
score), and each token gets a one-line verdict: isolated / leaking into X / weak. :func:`compare_attention_loss`
trains the tokens twice on the same scene, λ = 0 and the given λ, and reports each token's isolation for both (the
ablation that shows what the attention loss buys).

Tensor layout: channels-first, views first (``[V, 3, H, W]``), masks ``[K, V, H, W]``; see ``../shared/design/mvdream.md``
§6 for the attention maps (Break-a-Scene's "res 16" layers).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .cameras import view_names
from .errors import ConfigError, ShapeError, TokenError
from .personalize.losses import attention_mass_inside, average_attention_maps, downsample_mask, map_size
from .types import ComponentMasks, MultiViewRender, TokenSet

#: Timesteps the attention maps are averaged over (spread over the schedule; fixed so reports compare).
DEFAULT_TIMESTEPS = (100, 300, 500, 700, 900)
#: Guard for empty masks / all-zero change maps.
_EPS = 1e-12
#: PSNR of identical pixels is reported as this value instead of infinity.
MAX_PSNR_DB = 100.0


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


@dataclass(frozen=True)
class TokenReport:
    """What :func:`token_report` returns.

    Attributes:
        table: JSON-ready dict (see :func:`token_report`).
        heatmap: float32 [3, H, W] in 0..1: one row per token, its attention in the four views beside its masks.
        verdicts: one line per token.
    """

    table: dict
    heatmap: torch.Tensor
    verdicts: tuple

    def to_json(self) -> str:
        return report_to_json(self.table)


# ------------------------------------------------------------------------------------------------ pure measures
def attention_shares(attention: torch.Tensor, positions: Sequence[int], masks: torch.Tensor) -> torch.Tensor:
    """Leakage matrix: share of each token's attention mass inside each component's mask, per view.

    Args:
        attention: float [V, h, w, T] head/layer(/timestep)-averaged cross-attention probabilities.
        positions: K text positions, token i's position in the T text positions.
        masks: bool/float [C, V, H, W] component masks (nearest-downsampled to (h, w), as the attention loss does).

    Returns:
        float32 [K, C, V]: ``Σ_p a_i(p)·m_c(p) / Σ_p a_i(p)`` for token i, component c, view v.
    """
    if attention.ndim != 4:
        raise ShapeError(f"attention must be [V, h, w, T], got {list(attention.shape)}")
    if masks.ndim != 4 or masks.shape[1] != attention.shape[0]:
        raise ShapeError(f"masks must be [C, V={attention.shape[0]}, H, W], got {list(masks.shape)}")
    rows = [torch.stack([attention_mass_inside(attention, int(pos), masks[c]) for c in range(masks.shape[0])])
            for pos in positions]
    return torch.stack(rows).float().cpu()


def mask_area_shares(masks: torch.Tensor, size: Optional[tuple] = None) -> torch.Tensor:
    """float32 [C, V]: the fraction of each view's pixels inside each mask (at ``size`` (h, w) when given, nearest)."""
    m = downsample_mask(masks, size) if size is not None else masks.float()
    return m.mean(dim=(-2, -1)).float().cpu()


def change_shares(reference: torch.Tensor, changed: torch.Tensor, region: torch.Tensor) -> tuple:
    """Where an image change falls: share of the mean absolute RGB difference inside ``region``.

    Args:
        reference, changed: float [V, 3, H, W].
        region: bool/float [V, H, W] (any size; nearest-resized to H, W).

    Returns:
        (float32 [V] share per view, float share over all views together); NaN where nothing changed.
    """
    if reference.shape != changed.shape or reference.ndim != 4:
        raise ShapeError(f"images must both be [V, 3, H, W], got {list(reference.shape)} and {list(changed.shape)}")
    diff = (reference.float() - changed.float()).abs().mean(dim=1)  # [V, H, W]
    m = downsample_mask(region, diff.shape[-2:]).to(diff.device)
    inside, total = (diff * m).sum(dim=(-2, -1)), diff.sum(dim=(-2, -1))
    per_view = torch.where(total > _EPS, inside / total.clamp_min(_EPS), torch.full_like(total, float("nan")))
    overall = float(inside.sum() / total.sum()) if float(total.sum()) > _EPS else float("nan")
    return per_view.cpu(), overall


def masked_psnr(reference: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR in dB over the pixels of a mask, per view: ``10·log10(1 / mean_{mask, RGB}((x − y)²))`` (range 0..1).

    Args:
        reference, image: float [V, 3, H, W] in 0..1.
        mask: bool/float [V, H, W] (nearest-resized to H, W).

    Returns:
        float32 [V]; NaN for a view whose mask is empty, :data:`MAX_PSNR_DB` for identical pixels.
    """
    if reference.shape != image.shape or reference.ndim != 4:
        raise ShapeError(f"images must both be [V, 3, H, W], got {list(reference.shape)} and {list(image.shape)}")
    m = downsample_mask(mask, reference.shape[-2:]).to(reference.device)
    err = ((reference.float() - image.float()) ** 2).sum(dim=1)  # [V, H, W], summed over RGB
    area = m.sum(dim=(-2, -1))
    mse = (err * m).sum(dim=(-2, -1)) / (3.0 * area.clamp_min(_EPS))
    psnr = (10.0 * torch.log10(1.0 / mse.clamp_min(10 ** (-MAX_PSNR_DB / 10)))).clamp(max=MAX_PSNR_DB)
    return torch.where(area > 0, psnr, torch.full_like(psnr, float("nan"))).cpu()


def verdict(token: str, shares: torch.Tensor, index: int, components: Sequence[str], isolated_share: float = 0.5,
            leak_share: float = 0.25) -> str:
    """One line for a token from its row of the leakage matrix.

    Args:
        token: the token ("<hat>").
        shares: float [C, V], the token's attention share inside each component's mask per view.
        index: the token's own component.
        components: the C component names.

    Returns:
        ``"<hat>: isolated (...)"`` when its own share (mean over views) is at least ``isolated_share`` and every
        other component gets less than ``leak_share``; ``"<hat>: leaking into dog (...)"`` when some other component
        gets ``leak_share`` or more (largest first); ``"<hat>: weak (...)"`` otherwise (its attention is mostly
        outside every mask).
    """
    mean = shares.float().mean(dim=-1)
    own = float(mean[index])
    others = sorted(((float(mean[c]), components[c]) for c in range(len(components)) if c != index), reverse=True)
    leaks = [(s, name) for s, name in others if s >= leak_share]
    if leaks:
        into = ", ".join(f"{name} ({s:.2f})" for s, name in leaks)
        return f"{token}: leaking into {into}; own share {own:.2f}"
    if own >= isolated_share:
        return f"{token}: isolated; own share {own:.2f}" + (f", largest leak {others[0][1]} {others[0][0]:.2f}"
                                                               if others else "")
    return f"{token}: weak; own share {own:.2f}, the rest of its attention is outside every component"


# ------------------------------------------------------------------------------------------------ attention maps
def _views_and_latents(model, render: MultiViewRender, resolution: Optional[int]):
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
    from .mvdream.attention import record_cross_attention

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
    from .personalize.objective import attention_layers_for

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
    rgb, latents, cameras = _prepared if _prepared is not None else _views_and_latents(model, render, config.resolution)
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


# ------------------------------------------------------------------------------------------------ sampled images
@contextlib.contextmanager
def _token_vectors(model, tokens: TokenSet):
    """Put ``tokens``' vectors into the model for the duration; the rows they replace come back afterwards."""
    from .tokens import apply_tokens, existing_token_id, vector_names

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
    from .prompts import compose_prompt
    from .sampling import sample_views

    B, V = len(prompts), render.num_views
    with _token_vectors(model, vectors if vectors is not None else tokens):
        cond = compose_prompt(model, "\n".join(prompts), negative_prompt=config.negative_prompt, tokens=None,
                              add_mvdream_suffix=False, add_quality_suffix=False, cameras=render.cameras)
        out = sample_views(model, cond, method=config.method, steps=config.sample_steps, cfg=config.cfg,
                           noise=noise.repeat(B, 1, 1, 1))
    return out.images.float().reshape(B, V, *out.images.shape[1:])


def _masked_identity(source: torch.Tensor, sample: torch.Tensor, mask: torch.Tensor, clip=None, dino=None) -> dict:
    from . import metrics

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


# ------------------------------------------------------------------------------------------------ heat map
def _heat(x: torch.Tensor) -> torch.Tensor:
    """float [..., H, W] in 0..1 -> [..., 3, H, W] black-red-yellow-white ramp."""
    x = x.clamp(0, 1)[..., None, :, :]
    return torch.cat([(3 * x).clamp(0, 1), (3 * x - 1).clamp(0, 1), (3 * x - 2).clamp(0, 1)], dim=-3)


def _outline(mask: torch.Tensor) -> torch.Tensor:
    """bool [N, 1, H, W]: the mask's pixels with a pixel outside it among their 8 neighbours (image border excluded)."""
    m = mask > 0.5
    inner = -F.max_pool2d(-m.float(), kernel_size=3, stride=1, padding=1) > 0.5  # erosion (3x3)
    return m & ~inner


def render_heatmap(attention: torch.Tensor, masks: torch.Tensor, labels: Sequence[str], tile: int = 96,
                   reference: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One row per token: its attention in each view (scaled by its max over the views; the mask's outline in cyan),
    then its mask in each view.

    Args:
        attention: float [K, V, h, w] each token's map.
        masks: bool/float [K, V, H, W] each token's component mask.
        labels: K row labels.
        tile: side of one tile in pixels.
        reference: optional float [K, V, h, w] the reference maps (base model, initialiser words), drawn between the
            token's maps and its masks.

    Returns:
        float32 [3, K·(tile + 14), n·tile + gaps] in 0..1.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    K, V = int(attention.shape[0]), int(attention.shape[1])
    label_h, gap = 14, 4
    groups = [attention] + ([reference] if reference is not None else []) + [masks]
    width = len(groups) * V * tile + (len(groups) - 1) * gap
    canvas = torch.ones(3, K * (tile + label_h), width)
    for k in range(K):
        y = k * (tile + label_h) + label_h
        x = 0
        for g, maps in enumerate(groups):
            m = maps[k].float()
            if g < len(groups) - 1:  # attention: per-token max over views
                m = m / m.amax().clamp_min(_EPS)
            up = F.interpolate(m[:, None].cpu(), size=(tile, tile), mode="nearest")[:, 0]
            if g < len(groups) - 1:  # heat, with the mask's outline in cyan so the two can be compared
                tiles = _heat(up)
                outline = _outline(F.interpolate(masks[k].float()[:, None].cpu(), size=(tile, tile), mode="nearest"))
                tiles = torch.where(outline, torch.tensor([0.0, 1.0, 1.0])[None, :, None, None], tiles)
            else:
                tiles = up[:, None].expand(-1, 3, -1, -1)
            for v in range(V):
                canvas[:, y:y + tile, x:x + tile] = tiles[v]
                x += tile
            x += gap
    img = Image.fromarray((canvas.permute(1, 2, 0) * 255).round().byte().numpy())
    draw = ImageDraw.Draw(img)
    for k, text in enumerate(labels):
        draw.text((2, k * (tile + label_h) + 1), str(text), fill=(0, 0, 0))
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255.0


# ------------------------------------------------------------------------------------------------ the report
def _floats(t) -> list:
    return [None if math.isnan(float(x)) else round(float(x), 4) for x in torch.as_tensor(t).flatten()]


def _mean(t) -> Optional[float]:
    vals = [float(x) for x in torch.as_tensor(t).flatten() if not math.isnan(float(x))]
    return round(sum(vals) / len(vals), 4) if vals else None


def _isolation_table(iso: dict, labels: Sequence[str], components: Sequence[str], views: Sequence[str]) -> dict:
    share, area = iso["share"], iso["area"]
    table = {
        "prompt": iso["prompt"], "layers": iso["layers"], "timesteps": iso["timesteps"], "map_size": iso["map_size"],
        "views": list(views),
        "mask_area": {c: {"per_view": _floats(area[j]), "mean": _mean(area[j])} for j, c in enumerate(components)},
        "tokens": {},
    }
    for i, label in enumerate(labels):
        inside = share[i].sum(dim=0)  # masks may overlap; the background share is 1 minus the union's share
        table["tokens"][label] = {
            "component": components[i],
            "own": {"per_view": _floats(share[i, i]), "mean": _mean(share[i, i])},
            "leakage": {c: {"per_view": _floats(share[i, j]), "mean": _mean(share[i, j])}
                        for j, c in enumerate(components)},
            "outside_all": {"per_view": _floats((1 - inside).clamp_min(0)), "mean": _mean((1 - inside).clamp_min(0))},
        }
    return table


def token_report(model, tokens: TokenSet, render: MultiViewRender, masks: ComponentMasks,
                 config: Optional[TokenReportConfig] = None, reference_model=None,
                 reference_words: Optional[Sequence[str]] = None, clip=None, dino=None, progress=None) -> TokenReport:
    """Per token and per view: attention isolation (+ reference), reconstruction, omission, swap, verdicts.

    Args:
        model: the personalised MVDreamModel (the tokens' vectors are put into it, as ``compose_prompt`` does).
        tokens: the learned tokens, one per component, in the masks' component order (``tokens.components`` names
            them; when empty the order of ``masks.names`` is assumed).
        render: the source views (the ones the tokens were learned from).
        masks: the components' masks [K, V, H, W] at the render's size.
        config: :class:`TokenReportConfig`.
        reference_model: a base model (without the tokens) for the reference isolation; None: no reference.
        reference_words: one plain word per component for the reference ("hat"); default: the component names.
        clip, dino: metric models (``dreamedit3d_core.metrics``) for masked CLIP-I / DINO in the reconstruction.
        progress: optional :class:`~dreamedit3d_core.progress.Progress`; its ``check_interrupt`` runs between stages.

    Returns:
        :class:`TokenReport`. ``table`` holds ``tokens``, ``components``, ``views``, ``attention`` (leakage matrix per
        token: ``tokens[t].own`` / ``leakage[c]`` / ``outside_all`` with ``per_view`` and ``mean``, plus each mask's
        area share), ``reference`` (the same for the words, and each token's ``gain`` over its word), and with
        ``config.images``: ``reconstruction``, ``omission``, ``swap``; and ``verdicts``.

    Raises:
        ConfigError / TokenError / ShapeError: tokens that do not match the components, words that collide in a
        prompt, masks that do not fit the render.
    """
    from .personalize.objective import check_inputs

    config = config or TokenReportConfig()
    check_inputs(render, masks)
    components = list(masks.names)
    order = _token_order(tokens, components)
    tokens = replace(tokens, tokens=tuple(tokens.tokens[i] for i in order),
                     embeddings=tokens.embeddings[list(order)], components=tuple(components))
    labels = list(tokens.tokens)
    views = list(view_names(render.num_views))
    check = (progress.check_interrupt if progress is not None else (lambda: None))

    with torch.no_grad(), _token_vectors(model, tokens):
        prepared = _views_and_latents(model, render, config.resolution)
        iso = attention_isolation(model, render, masks, labels, config, _prepared=prepared)
    table = {"tokens": labels, "components": components, "views": views,
             "attention": _isolation_table(iso, labels, components, views)}
    ref_maps = None
    if reference_model is not None:
        check()
        words = list(reference_words) if reference_words else list(components)
        words = [w.strip() or c for w, c in zip(words, components)]
        with torch.no_grad():
            ref = attention_isolation(reference_model, render, masks, words, config,
                                      _prepared=_views_and_latents(reference_model, render, config.resolution))
        ref_maps = ref["attention"]
        ref_labels = words if len(set(words)) == len(words) else [f"{w} ({c})" for w, c in zip(words, components)]
        table["reference"] = _isolation_table(ref, ref_labels, components, views)
        table["reference"]["words"] = words
        for i, label in enumerate(labels):
            entry = table["attention"]["tokens"][label]
            entry["reference_own"] = _mean(ref["share"][i, i])
            entry["gain_over_reference"] = _mean(iso["share"][i, i] - ref["share"][i, i])
    if config.images:
        check()
        with torch.no_grad():
            measures = image_measures(model, tokens, render, masks, config, clip=clip, dino=dino)
        table["reconstruction"] = {
            "prompt": measures["prompt"], "seed": config.seed, "steps": config.sample_steps, "cfg": config.cfg,
            "components": {c: {k: {"per_view": _floats(v), "mean": _mean(v)} for k, v in entry.items()}
                           for c, entry in measures["reconstruction"].items()},
        }
        table["omission"] = {t: {"prompt": e["prompt"], "share_inside": {"per_view": _floats(e["share"]),
                                                                        "mean": _mean(e["share"])},
                                 "overall": _floats([e["overall"]])[0], "mask_area": _mean(e["area"])}
                             for t, e in measures["omission"].items()}
        table["swap"] = [{"tokens": e["tokens"], "share_inside": {"per_view": _floats(e["share"]),
                                                                 "mean": _mean(e["share"])},
                          "overall": _floats([e["overall"]])[0], "mask_area": _mean(e["area"])}
                         for e in measures["swap"]]
    lines = []
    for i, label in enumerate(labels):
        line = verdict(label, iso["share"][i], i, components, config.isolated_share, config.leak_share)
        gain = table["attention"]["tokens"][label].get("gain_over_reference")
        if gain is not None:
            line += f" (vs '{table['reference']['words'][i]}' on the base model: {gain:+.2f})"
        om = table.get("omission", {}).get(label)
        if om is not None and om["overall"] is not None:
            line += f"; dropping it changes {om['overall']:.0%} inside its mask (mask area {om['mask_area']:.0%})"
        lines.append(line)
    table["verdicts"] = lines
    heat = render_heatmap(iso["attention"], masks.masks, [f"{t} ({c})" for t, c in zip(labels, components)],
                          reference=ref_maps)
    return TokenReport(table=table, heatmap=heat, verdicts=tuple(lines))


def _token_order(tokens: TokenSet, components: Sequence[str]) -> list:
    """Index of the token of each component (tokens.components names them; else the same order is assumed)."""
    if len(tokens.tokens) != len(components):
        raise TokenError(f"{len(tokens.tokens)} tokens {list(tokens.tokens)} for {len(components)} components "
                         f"{list(components)}: give the tokens learned from these masks")
    if not tokens.components:
        return list(range(len(components)))
    missing = [c for c in components if c not in tokens.components]
    if missing:
        raise TokenError(f"the tokens were learned for components {list(tokens.components)}, the masks have "
                         f"{list(components)}: use the masks the tokens were learned from")
    return [list(tokens.components).index(c) for c in components]


def report_to_json(table: dict) -> str:
    """The table as indented JSON (NaN written as null)."""
    return json.dumps(table, indent=2, allow_nan=False)


# ------------------------------------------------------------------------------------------------ ablation
def compare_attention_loss(base_model, render: MultiViewRender, masks: ComponentMasks, ti_config=None,
                           config: Optional[TokenReportConfig] = None, progress=None) -> dict:
    """What the attention loss buys: learn the tokens twice on the same scene (λ = 0 and ``ti_config``'s λ, same
    seed and settings otherwise), then measure each token's attention isolation for both.

    Args:
        base_model: the MVDreamModel without the tokens; it is not changed (each run trains a copy).
        ti_config: :class:`~dreamedit3d_core.personalize.textual_inversion.TIConfig` of the λ run (default TIConfig()).
        config: the report settings (only the attention measures are used).

    Returns:
        {"steps", "lr", "seed", "attention_loss_weight": λ, "tokens": {token: {"component", "own_without": share at
        λ = 0, "own_with": share at λ, "gain": difference, "per_view_without", "per_view_with"}}, "mean_gain",
        "every_token_gains": bool, "verdicts": {"without": [...], "with": [...]}}.
    """
    from .personalize.textual_inversion import TIConfig, train_textual_inversion

    ti_config = ti_config or TIConfig()
    config = replace(config or TokenReportConfig(), images=False)
    if ti_config.attention_loss_weight <= 0:
        raise ConfigError("the ablation compares λ = 0 with a positive attention_loss_weight; got "
                          f"{ti_config.attention_loss_weight}: set it above 0 (Break-a-Scene: 0.01)")
    results = {}
    for key, weight in (("without", 0.0), ("with", float(ti_config.attention_loss_weight))):
        if progress is not None:
            progress.check_interrupt()
        model = copy.deepcopy(base_model)
        learned = train_textual_inversion(model, render, masks, replace(ti_config, attention_loss_weight=weight),
                                          progress=progress)
        results[key] = token_report(model, learned, render, masks, config)
        del model
    out = {"steps": ti_config.steps, "lr": ti_config.lr, "seed": ti_config.seed,
           "attention_loss_weight": ti_config.attention_loss_weight, "tokens": {}}
    gains = []
    for label in results["with"].table["tokens"]:
        without = results["without"].table["attention"]["tokens"][label]["own"]
        with_ = results["with"].table["attention"]["tokens"][label]["own"]
        gain = round(with_["mean"] - without["mean"], 4)
        gains.append(gain)
        out["tokens"][label] = {"component": results["with"].table["attention"]["tokens"][label]["component"],
                                "own_without": without["mean"], "own_with": with_["mean"], "gain": gain,
                                "per_view_without": without["per_view"], "per_view_with": with_["per_view"]}
    out["mean_gain"] = round(sum(gains) / len(gains), 4)
    out["every_token_gains"] = all(g > 0 for g in gains)
    out["verdicts"] = {k: list(r.verdicts) for k, r in results.items()}
    return out


# ------------------------------------------------------------------------------------------------ files
def save_token_report(report: TokenReport, folder, stem: str, overwrite: bool = False) -> dict:
    """Write ``<stem>_tokens.json`` (the table) and ``<stem>_tokens_heatmap.png`` into ``folder``, atomically.

    Returns:
        {"json": Path, "heatmap": Path}.

    Raises:
        ConfigError: a file exists and ``overwrite`` is False (nothing is overwritten).
    """
    import io as _io
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from .storage import save_bytes

    folder = Path(folder)
    buffer = _io.BytesIO()
    pixels = (report.heatmap.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().cpu().numpy()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return {
        "json": save_bytes(folder / f"{stem}_tokens.json", report.to_json().encode("utf-8"), overwrite=overwrite),
        "heatmap": save_bytes(folder / f"{stem}_tokens_heatmap.png", buffer.getvalue(), overwrite=overwrite),
    }
