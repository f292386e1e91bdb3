"""Shared helpers for the MVDream model-core tests: cached tiny models and seeded inputs."""

from __future__ import annotations

import contextlib
import functools

import torch

from dreamedit3d_core.cameras import get_camera


@functools.lru_cache(maxsize=2)
def shared_tiny_model(seed: int = 0):
    """A tiny MVDream loaded through the real loader, shared read-only by tests (do not modify it)."""
    from dreamedit3d_core.testing.tiny import load_tiny_mvdream

    return load_tiny_mvdream(seed)


def fresh_tiny_model(seed: int = 0, variant: str = "mvdream-sd21"):
    """A tiny MVDream a test may modify."""
    from dreamedit3d_core.testing.tiny import load_tiny_mvdream

    return load_tiny_mvdream(seed, variant=variant)


@contextlib.contextmanager
def views_per_object(model, num_views: int):
    """Temporarily set ``model.num_views`` (``1`` = 2D mode, every image on its own), as a caller of the library may."""
    old = model.num_views
    model.num_views = int(num_views)
    try:
        yield model
    finally:
        model.num_views = old


def unet_inputs(model, objects: int = 2, size: int = 16, seed: int = 1):
    """Seeded view-contiguous UNet inputs: latents [B·V,4,s,s], timesteps [B·V], text [B·V,77,D], cameras [B·V,16].

    Every object gets its own timestep, shared by its views; cameras are the pack's front/right/back/left.
    """
    g = torch.Generator("cpu").manual_seed(seed)
    views = model.num_views
    n = objects * views
    latents = torch.randn(n, 4, size, size, generator=g)
    timesteps = torch.randint(0, 1000, (objects,), generator=g).repeat_interleave(views)
    text = torch.randn(n, 77, model.text_dim, generator=g)
    cameras = get_camera(views, 15, 90).repeat(objects, 1)
    return latents, timesteps, text, cameras
