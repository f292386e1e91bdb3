"""ComfyUI's REAL samplers and schedulers (the tree in .host/comfyui, in-process) on the multi-view denoiser."""

from __future__ import annotations

import pytest
import torch
from _sampling_helpers import (
    KnownX0Model,
    comfy_model_sampling,
    comfy_root,
    import_comfy,
    load_sampler_bridge,
    toy_conditioning,
)
from conftest import skip_or_fail

from dreamedit3d_core.errors import ConfigError, ShapeError
from dreamedit3d_core.schedule import (
    MVDenoiser,
    karras_sigmas,
    normal_sigmas,
    sd21_alphas_cumprod,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    t_to_sigma,
)

pytestmark = pytest.mark.nodes

SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc", "euler_cfg_pp", "dpmpp_2m_cfg_pp"]
LATENT = (4, 4, 3, 5)


@pytest.fixture(scope="session")
def comfy():
    if comfy_root() is None:
        skip_or_fail("no ComfyUI tree at .host/comfyui (run tools/setup_env.sh) and COMFYUI_PATH unset")
    samplers, model_sampling, k_sampling = import_comfy()
    return {"samplers": samplers, "ms": comfy_model_sampling(model_sampling, sd21_alphas_cumprod()),
            "ms_module": model_sampling, "bridge": load_sampler_bridge()}


def run(comfy, name, sigmas, denoiser, noise, seed=0, callback=None, latent_image=None):
    bridge = comfy["bridge"]
    wrap = bridge.MVSamplerModel(denoiser, comfy["ms"])
    sampler = comfy["samplers"].sampler_object(name)
    return bridge.run_comfy_sampler(sampler, sigmas, wrap, noise, latent_image=latent_image, callback=callback,
                                    seed=seed)


def test_our_schedule_equals_comfys_model_sampling(comfy):
    ms = comfy["ms"]
    table = sigmas_from_alphas_cumprod(sd21_alphas_cumprod())
    torch.testing.assert_close(ms.sigmas, table.float())
    # ComfyUI's default SD schedule is the same one
    torch.testing.assert_close(comfy["ms_module"].ModelSamplingDiscrete().sigmas, table.float(), rtol=2e-6, atol=0)
    t = torch.tensor([0.0, 3.3, 250.5, 998.2])
    torch.testing.assert_close(t_to_sigma(t, table).float(), ms.sigma(t), rtol=2e-6, atol=0)
    sig = torch.tensor([0.03, 0.5, 2.0, 14.0])
    assert sigma_to_t(sig, table, quantize=True).tolist() == ms.timestep(sig).float().tolist()


@pytest.mark.parametrize("steps", [1, 7, 30])
def test_our_karras_and_normal_sigmas_equal_comfys_schedulers(comfy, steps):
    table = sigmas_from_alphas_cumprod(sd21_alphas_cumprod())
    calc = comfy["samplers"].calculate_sigmas
    torch.testing.assert_close(karras_sigmas(steps, float(table[0]), float(table[-1])),
                               calc(comfy["ms"], "karras", steps).float(), rtol=1e-5, atol=0)
    torch.testing.assert_close(normal_sigmas(steps, table), calc(comfy["ms"], "normal", steps).float(),
                               rtol=1e-5, atol=0)


@pytest.mark.parametrize("scheduler", ["karras", "normal"])
@pytest.mark.parametrize("name", SAMPLERS)
def test_comfy_sampler_lands_on_the_known_x0_and_is_deterministic(comfy, name, scheduler):
    target = torch.randn(LATENT, generator=torch.Generator().manual_seed(5))
    model, cond = KnownX0Model(target), toy_conditioning()
    expected = model.x0_for(cond.uncond) + 4.0 * (model.x0_for(cond.cond) - model.x0_for(cond.uncond))
    sigmas = comfy["samplers"].calculate_sigmas(comfy["ms"], scheduler, 10)
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(6))
    steps = []
    out = run(comfy, name, sigmas, MVDenoiser(model, cond, cfg=4.0), noise, seed=3,
              callback=lambda i, x0, x, total: steps.append((i, total, x0.shape)))
    # uni_pc stops at σ = 0.001 by design (comfy/extra_samplers/uni_pc.py), so 1e-3-sized residue stays
    tol = 1e-2 if name == "uni_pc" else 2e-4
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=tol)
    assert steps[0] == (0, 10, LATENT) and steps[-1][0] == 9
    assert set(model.calls) == {8}  # uncond and cond of all views in every UNet call
    again = run(comfy, name, sigmas, MVDenoiser(model, cond, cfg=4.0), noise, seed=3)
    assert torch.equal(out, again)


def test_cfg_pp_sampler_uses_the_uncond_prediction_through_the_post_cfg_hook(comfy):
    """euler_cfg_pp steps along the *uncond* direction: with a denoiser whose cond and uncond x0 differ, its path
    differs from plain Euler's by an amount we can compute in closed form for one step."""
    target = torch.zeros(LATENT)
    model, cond = KnownX0Model(target), toy_conditioning()
    x0_u, x0_c = model.x0_for(cond.uncond), model.x0_for(cond.cond)
    x0 = x0_u + 2.0 * (x0_c - x0_u)
    sigmas = torch.tensor([3.0, 1.0])
    noise = torch.ones(LATENT)  # KSAMPLER scales it by sigmas[0] (not sigma_max): x = 3
    x = noise * 3.0
    got = run(comfy, "euler_cfg_pp", sigmas, MVDenoiser(model, cond, cfg=2.0), noise)
    # CFG++ (Chung et al. 2024): x' = x0_cfg + σ' · (x − x0_uncond) / σ
    torch.testing.assert_close(got, x0 + 1.0 * (x - x0_u) / 3.0, rtol=1e-5, atol=1e-5)
    plain = run(comfy, "euler", sigmas, MVDenoiser(model, cond, cfg=2.0), noise)
    torch.testing.assert_close(plain, x + (x - x0) / 3.0 * (1.0 - 3.0), rtol=1e-5, atol=1e-5)


def test_partial_edit_from_a_latent_image_keeps_to_the_schedule_tail(comfy):
    target = torch.randn(LATENT, generator=torch.Generator().manual_seed(8))
    model, cond = KnownX0Model(target), toy_conditioning()
    sigmas = comfy["samplers"].calculate_sigmas(comfy["ms"], "karras", 20)[10:]
    out = run(comfy, "dpmpp_2m", sigmas, MVDenoiser(model, cond, cfg=1.0), torch.randn(LATENT),
              latent_image=torch.full(LATENT, 0.3))
    torch.testing.assert_close(out, model.x0_for(cond.cond)[:4], rtol=1e-4, atol=2e-4)


def test_bridge_exposes_what_comfy_samplers_read(comfy):
    bridge = comfy["bridge"]
    wrap = bridge.MVSamplerModel(MVDenoiser(KnownX0Model(torch.zeros(LATENT)), toy_conditioning()), comfy["ms"])
    assert wrap.model_patcher.get_model_object("model_sampling") is comfy["ms"]
    assert wrap.inner_model.model_patcher.get_model_object("model_sampling") is comfy["ms"]
    with pytest.raises(AttributeError, match="has no object 'diffusion_model'"):
        wrap.model_patcher.get_model_object("diffusion_model")
    kept = wrap.inner_model.scale_latent_inpaint(sigma=torch.tensor([2.0]), noise=torch.ones(LATENT),
                                                 latent_image=torch.zeros(LATENT))
    torch.testing.assert_close(kept, torch.full(LATENT, 2.0))


def _known_denoiser(cfg):
    target = torch.randn(LATENT, generator=torch.Generator().manual_seed(1))
    model, cond = KnownX0Model(target), toy_conditioning()
    return MVDenoiser(model, cond, cfg=cfg), model.x0_for(cond.uncond), model.x0_for(cond.cond)


def test_bridge_passes_post_cfg_functions_comfys_argument_dicts():
    """(Moved from the core's tests: the ComfyUI dicts are built only in nodes/sampler_bridge.py now.)"""
    bridge = load_sampler_bridge()
    den, x0_u, x0_c = _known_denoiser(cfg=3.0)
    seen = {}

    def hook(args):
        seen.update(args)
        return args["denoised"] * 0.0 + args["uncond_denoised"]

    wrap = bridge.MVSamplerModel(den, model_sampling=None, model_options={"sampler_post_cfg_function": [hook]})
    x = torch.randn(LATENT)
    out = wrap(x, torch.tensor(1.5), model_options={"sampler_post_cfg_function": [lambda a: a["denoised"] + 1.0]})
    assert {"denoised", "cond_denoised", "uncond_denoised", "sigma", "input", "model_options", "model",
            "cond_scale"} <= set(seen)
    torch.testing.assert_close(seen["denoised"], x0_u + 3.0 * (x0_c - x0_u), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out, x0_u + 1.0, rtol=1e-5, atol=1e-4)  # the model's own hooks first, then the call's
    assert seen["input"] is x and seen["cond_scale"] == 3.0 and seen["model"] is wrap.inner_model


def test_bridge_sampler_cfg_function_replaces_plain_cfg():
    bridge = load_sampler_bridge()
    den, x0_u, x0_c = _known_denoiser(cfg=9.0)
    x = torch.randn(LATENT)
    # ComfyUI's contract: args["cond"] / ["uncond"] are x - x0; the function returns the guided "x - x0"
    opts = {"sampler_cfg_function": lambda a: a["uncond"] + 2.0 * (a["cond"] - a["uncond"])}
    out = bridge.MVSamplerModel(den, model_sampling=None)(x, torch.tensor(1.0), model_options=opts)
    torch.testing.assert_close(out, x0_u + 2.0 * (x0_c - x0_u), rtol=1e-5, atol=1e-4)


def test_bridge_disable_cfg1_optimization_keeps_the_uncond_half():
    bridge = load_sampler_bridge()
    den, _, x0_c = _known_denoiser(cfg=1.0)
    wrap = bridge.MVSamplerModel(den, model_sampling=None)
    out = wrap(torch.zeros(LATENT), torch.tensor(0.7), model_options={"disable_cfg1_optimization": True})
    torch.testing.assert_close(out, x0_c, rtol=1e-5, atol=1e-5)
    wrap(torch.zeros(LATENT), torch.tensor(0.7), model_options={})
    assert den.model.calls == [8, 4]  # uncond + cond when asked, cond only otherwise


# ------------------------------------------------------------------------------------- tiny MVDream model


@pytest.fixture(scope="module")
def tiny():
    from dreamedit3d_core.prompts import compose_prompt
    from dreamedit3d_core.testing.tiny import load_tiny_mvdream

    model = load_tiny_mvdream(0)
    return model, compose_prompt(model, "a dog wearing a hat made of gold")


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_2m_sde", "dpmpp_2m_cfg_pp"])
def test_real_samplers_on_the_tiny_model_are_deterministic_for_a_seed(comfy, tiny, name):
    from dreamedit3d_core.sampling import decode_views

    model, cond = tiny
    sigmas = comfy["samplers"].calculate_sigmas(comfy["ms"], "karras", 4)
    noise = torch.randn((4, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    a = run(comfy, name, sigmas, MVDenoiser(model, cond, cfg=7.5), noise, seed=1)
    b = run(comfy, name, sigmas, MVDenoiser(model, cond, cfg=7.5), noise, seed=1)
    assert torch.equal(a, b)
    if name != "dpmpp_2m_cfg_pp":  # the stochastic ones draw fresh noise from the seed
        c = run(comfy, name, sigmas, MVDenoiser(model, cond, cfg=7.5), noise, seed=2)
        assert not torch.allclose(a, c)
    images = decode_views(model, a, 4)
    assert images.shape == (4, 3, 32, 32) and float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_real_sampler_denoises_the_four_views_jointly(comfy, tiny):
    model, cond = tiny
    sigmas = comfy["samplers"].calculate_sigmas(comfy["ms"], "normal", 3)
    noise = torch.randn((4, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    other = noise.clone()
    other[2] = -other[2]
    a = run(comfy, "dpmpp_2m", sigmas, MVDenoiser(model, cond, cfg=7.5), noise)
    b = run(comfy, "dpmpp_2m", sigmas, MVDenoiser(model, cond, cfg=7.5), other)
    assert all((a[v] - b[v]).abs().amax() > 1e-3 for v in (0, 1, 3))


@pytest.mark.parametrize("steps", [1, 3, 7, 20])
@pytest.mark.parametrize("denoise", [0.1, 0.33, 0.4, 0.5, 0.77, 1.0])
def test_the_cores_denoise_rule_is_comfys_basic_scheduler(comfy, steps, denoise):
    """schedule.full_schedule_steps against ComfyUI's own BasicScheduler node (the tail of a stretched schedule)."""
    from comfy_extras.nodes_custom_sampler import BasicScheduler

    from dreamedit3d_core.schedule import full_schedule_steps

    class Patcher:  # the one method BasicScheduler calls on a MODEL
        def get_model_object(self, name):
            return comfy["ms"]

    theirs = BasicScheduler.execute(Patcher(), "karras", steps, denoise)[0]
    ours = comfy["samplers"].calculate_sigmas(comfy["ms"], "karras", full_schedule_steps(steps, denoise))[-(steps + 1):]
    torch.testing.assert_close(ours.cpu(), theirs, rtol=0, atol=0)


def test_sample_with_comfy_draws_the_cores_noise_and_lands_on_the_known_x0(comfy):
    bridge = comfy["bridge"]
    target = torch.randn(LATENT, generator=torch.Generator().manual_seed(5))
    model, cond = KnownX0Model(target), toy_conditioning()
    expected = model.x0_for(cond.uncond) + 4.0 * (model.x0_for(cond.cond) - model.x0_for(cond.uncond))
    sigmas = comfy["samplers"].calculate_sigmas(comfy["ms"], "karras", 10)
    sampler = comfy["samplers"].sampler_object("euler")
    out, seed = bridge.sample_with_comfy(model, cond, sampler, sigmas, 4.0, comfy["ms"], "cpu", seed=9,
                                         latent={"samples": torch.zeros(LATENT)})
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=2e-4)
    # the seed's noise is the core's CPU draw: the same run by hand with torch.randn gives the same latents
    by_hand = run(comfy, "euler", sigmas, MVDenoiser(model, cond, cfg=4.0, quantize_timesteps=True),
                  torch.randn(LATENT, generator=torch.Generator().manual_seed(9)), latent_image=torch.zeros(LATENT))
    assert seed == 9 and torch.equal(out, by_hand)

    class Noise:  # a core NOISE: its own draw and seed win over the widget's
        seed = 4

        def generate_noise(self, latent):
            return torch.full(latent["samples"].shape, 0.5)

    _, used = bridge.sample_with_comfy(model, cond, sampler, sigmas, 4.0, comfy["ms"], "cpu", seed=9, noise=Noise(),
                                       latent={"samples": torch.zeros(LATENT)})
    assert used == 4
    blank = KnownX0Model(torch.zeros(4, 4, 3, 3))  # text-to-3D: no LATENT, the resolution sets the size
    sampled, _ = bridge.sample_with_comfy(blank, cond, sampler, sigmas, 1.0, comfy["ms"], "cpu", resolution=24)
    assert sampled.shape == (4, 4, 3, 3)
    with pytest.raises(ShapeError, match=r"init_latents must be \[4, 4, h, w\]"):
        bridge.sample_with_comfy(model, cond, sampler, sigmas, 4.0, comfy["ms"], "cpu",
                                 latent={"samples": torch.zeros(3, 4, 3, 5)})
    with pytest.raises(ConfigError, match="SIGMAS has 1 value"):
        bridge.sample_with_comfy(model, cond, sampler, sigmas[:1], 4.0, comfy["ms"], "cpu")
