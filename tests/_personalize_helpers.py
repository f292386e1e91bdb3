"""Test helpers for personalisation: a synthetic two-component four-view scene and the tiny model."""

from __future__ import annotations

import functools

import torch

from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.types import ComponentMasks, MaskSource, MultiViewRender


def two_component_scene(size: int = 128, views: int = 4, seed: int = 0):
    """A crafted scene: a red checkered "hat" band above a blue "dog" band, their border moving per view, on white.

    The bands span the full width: the tiny random UNet's cross-attention favours the left image border, and
    Break-a-Scene's max-normalised attention loss raises whatever peak a map has, so with narrower shapes the
    peak it sharpens may lie outside the mask. Full-width bands keep the test about the method, not that bias.

    Returns:
        (MultiViewRender, ComponentMasks) with masks bool [2, V, size, size] (hat, dog), disjoint.
    """
    g = torch.Generator().manual_seed(seed)
    rgb = torch.ones(views, 3, size, size)
    hat = torch.zeros(views, size, size, dtype=torch.bool)
    dog = torch.zeros(views, size, size, dtype=torch.bool)
    s = size / 32.0
    for v in range(views):
        dx = int(round((v - 1.5) * 2 * s))
        hat[v, : int(15 * s) + dx, :] = True
        dog[v, int(17 * s) + dx:, :] = True
    texture = 0.05 * torch.rand(views, 3, size, size, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    period = max(2, size // 32)
    checker = (((yy // period) + (xx // period)) % 2).float()[None]  # a high-contrast pattern on the hat
    red = torch.tensor([0.9, 0.1, 0.1])[:, None, None] * (0.25 + 0.75 * checker)
    blue = torch.tensor([0.1, 0.2, 0.8])[:, None, None]
    for v in range(views):
        rgb[v] = torch.where(hat[v][None], red + texture[v], rgb[v])
        rgb[v] = torch.where(dog[v][None], blue + texture[v], rgb[v])
    alpha = (hat | dog).float()[:, None]
    part_id = torch.full((views, size, size), -1, dtype=torch.long)
    part_id[hat] = 0
    part_id[dog] = 1
    render = MultiViewRender(
        rgb=rgb.clamp(0, 1), alpha=alpha, depth=alpha * 2.0, normals=torch.zeros(views, 3, size, size),
        part_id=part_id, part_names=("hat", "dog"), cameras=MVCameras.mvdream_default(num_views=views),
    )
    masks = ComponentMasks(masks=torch.stack([hat, dog]), names=("hat", "dog"), source=MaskSource.PARTS)
    return render, masks


@functools.lru_cache(maxsize=None)
def _tiny_state(seed: int):
    from dreamedit3d_core.testing.tiny import load_tiny_mvdream

    return load_tiny_mvdream(seed=seed)


def fresh_tiny_model(seed: int = 0):
    """A tiny MVDream model in its loaded state (a deep copy, so tests may mutate it)."""
    import copy

    return copy.deepcopy(_tiny_state(seed))


def all_parameters(model) -> dict:
    """{qualified name: detached clone} of every parameter and buffer of the model's three modules."""
    out = {}
    for prefix, module in (("unet", model.unet), ("vae", model.vae), ("text_encoder", model.text_encoder)):
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            out[f"{prefix}.{name}"] = t.detach().clone()
    return out


def evaluate_scene(model, scene, draws: int = 6, seed: int = 1234):
    """Masked loss and each token's attention mass inside its own mask, averaged over fixed (t, noise) draws.

    Uses the full prompt with every token ("a photo of <hat> and <dog>") and timesteps spread over 100..900.

    Returns:
        (mean masked loss, mean attention-alignment loss, float [K] mean attention mass inside the own mask over
        views and draws).
    """
    from dreamedit3d_core.personalize.losses import attention_mass_inside
    from dreamedit3d_core.personalize.objective import personalization_loss

    g = torch.Generator().manual_seed(seed)
    K = len(scene.token_ids)
    losses, attn, mass = [], [], torch.zeros(K)
    for i in range(draws):
        t = int(100 + 800 * i / max(1, draws - 1))
        noise = torch.randn(scene.latents.shape, generator=g)
        diag = {}
        with torch.no_grad():
            out = personalization_loss(model, scene, g, 1.0, subset=list(range(K)), timestep=t, noise=noise,
                                       diagnostics=diag)
        losses.append(out.info["masked"])
        attn.append(out.info["attention"])
        for j, pos in enumerate(diag["positions"]):
            mass[j] += attention_mass_inside(diag["attention"], pos, scene.masks[j]).mean().cpu()
    return sum(losses) / len(losses), sum(attn) / len(attn), mass / draws
