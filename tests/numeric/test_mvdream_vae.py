"""The SD VAE scale is applied exactly once, in encode_images/decode_latents."""

from __future__ import annotations

import pytest
import torch

from _mvdream_helpers import shared_tiny_model

pytestmark = pytest.mark.numeric


def test_encode_images_scales_the_posterior_mode_by_0_18215():
    model = shared_tiny_model()
    rgb = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        latents = model.encode_images(rgb)
        mode = model.vae.encode(rgb * 2 - 1).latent_dist.mode()
    assert latents.shape == (2, 4, 6, 8)
    assert (latents - 0.18215 * mode).abs().max().item() <= 1e-6


def test_decode_latents_unscales_and_maps_to_unit_range():
    model = shared_tiny_model()
    z = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        rgb = model.decode_latents(z * 0.18215)
        raw = model.vae.decode(z).sample
    assert rgb.shape == (2, 3, 48, 64) and rgb.min() >= 0 and rgb.max() <= 1
    assert (rgb - ((raw + 1) / 2).clamp(0, 1)).abs().max().item() <= 1e-5  # z*s/s rounds


def test_sampling_the_posterior_uses_the_generator():
    model = shared_tiny_model()
    rgb = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = model.encode_images(rgb, generator=torch.Generator().manual_seed(5), sample=True)
        b = model.encode_images(rgb, generator=torch.Generator().manual_seed(5), sample=True)
        mode = model.encode_images(rgb)
    assert torch.equal(a, b) and (a - mode).abs().max() > 0


def test_bad_image_shape_is_a_clear_error():
    from dreamedit3d_core.errors import ShapeError

    with pytest.raises(ShapeError, match="multiples of 8"):
        shared_tiny_model().encode_images(torch.rand(1, 3, 30, 32))
