"""The core sampling path on the tiny MVDream model (real multi-view UNet, text tower and VAE, random weights)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from _mvdream_helpers import views_per_object
from _sampling_helpers import diffusers_ddim_loop

from dreamedit3d_core.prompts import compose_prompt
from dreamedit3d_core.sampling import sample_views
from dreamedit3d_core.schedule import sigma_to_t, sigmas_from_alphas_cumprod
from dreamedit3d_core.testing.tiny import load_tiny_mvdream

pytestmark = pytest.mark.numeric

LATENT = (4, 4, 4, 4)  # 4 views of 32 px


@pytest.fixture(scope="module")
def model():
    return load_tiny_mvdream(0)


@pytest.fixture(scope="module")
def cond(model):
    return compose_prompt(model, "a dog wearing a hat made of gold")


def unit_noise(seed=0, shape=LATENT):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_core_ddim_equals_an_independent_diffusers_ddim_loop(model, cond):
    noise = unit_noise(1)
    ref = diffusers_ddim_loop(model, cond, noise, steps=6, cfg=7.5)
    out = sample_views(model, cond, method="ddim", steps=6, cfg=7.5, noise=noise)
    torch.testing.assert_close(out.latents, ref, rtol=1e-4, atol=1e-4)
    # the schedule run is sigmas now (was its timesteps): those of 831, ..., 1 (leading spacing, offset 1), then σ(ᾱ_0)
    table = sigmas_from_alphas_cumprod(model.alphas_cumprod)
    assert sigma_to_t(out.sigmas[:-1], table, quantize=True).tolist() == [831.0, 665.0, 499.0, 333.0, 167.0, 1.0]
    assert out.sigmas[-1].item() == pytest.approx(table[0].item(), rel=1e-6)


@pytest.mark.parametrize("method", ["ddim", "euler"])
def test_the_four_views_are_denoised_jointly(model, cond, method):
    """Changing view 0's noise changes views 1-3; in 2D mode (each view alone) it does not."""
    noise = unit_noise(2)
    other = noise.clone()
    other[0] = unit_noise(3)[0]
    a = sample_views(model, cond, method=method, steps=3, noise=noise).latents
    b = sample_views(model, cond, method=method, steps=3, noise=other).latents
    assert (a[1:] - b[1:]).abs().amax() > 1e-3
    single = replace(cond, num_views=1)
    with views_per_object(model, 1):
        a1 = sample_views(model, single, method=method, steps=3, noise=noise).latents
        b1 = sample_views(model, single, method=method, steps=3, noise=other).latents
    torch.testing.assert_close(a1[1:], b1[1:], rtol=0, atol=1e-5)
    assert (a1[0] - b1[0]).abs().amax() > 1e-3


def test_same_seed_same_images_and_another_sampler_still_gives_four_images(model, cond):
    a = sample_views(model, cond, method="ddim", steps=3, seed=23, resolution=32)
    b = sample_views(model, cond, method="ddim", steps=3, seed=23, resolution=32)
    assert torch.equal(a.images, b.images) and a.seed == 23
    c = sample_views(model, cond, method="euler", steps=3, seed=23, resolution=32, sigma_schedule="normal")
    for s in (a, c):
        assert s.images.shape == (4, 3, 32, 32) and s.images.dtype == torch.float32
        assert float(s.images.min()) >= 0.0 and float(s.images.max()) <= 1.0
    assert not torch.allclose(a.latents, c.latents)


def test_partial_edit_starts_from_the_encoded_views(model, cond):
    rgb = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    init = model.encode_images(rgb)
    steps = []
    from dreamedit3d_core.progress import CallbackProgress

    out = sample_views(model, cond, method="ddim", steps=2, seed=0, init_latents=init, denoise=0.2,
                       progress=CallbackProgress(on_update=lambda s, t, p, i: steps.append(s)))
    # the last 2 of a 10-step MVDream schedule: timesteps 101 and 1
    table = sigmas_from_alphas_cumprod(model.alphas_cumprod)
    assert sigma_to_t(out.sigmas[:-1], table, quantize=True).tolist() == [101.0, 1.0] and steps == [1, 2]
    assert out.images.shape == (4, 3, 32, 32)


def test_objects_in_one_batch_stay_independent(model):
    """B = 2 objects: the joint attention groups each object's 4 views and never mixes objects."""
    cond2 = compose_prompt(model, "a dog wearing a hat\na red car")
    noise = unit_noise(5, (8, 4, 4, 4))
    other = noise.clone()
    other[1] = -other[1]  # object 0, view 1
    a = sample_views(model, cond2, method="euler", steps=2, noise=noise).latents
    b = sample_views(model, cond2, method="euler", steps=2, noise=other).latents
    assert (a[[0, 2, 3]] - b[[0, 2, 3]]).abs().amax() > 1e-3  # object 0's other views see the change
    torch.testing.assert_close(a[4:], b[4:], rtol=0, atol=1e-5)  # object 1 does not
