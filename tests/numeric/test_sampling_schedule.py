"""Schedule math, the CFG denoiser and the core samplers on a model whose x0 is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from _sampling_helpers import KnownX0Model, diffusers_ddim_loop, toy_conditioning

from dreamedit3d_core.errors import ConfigError, Interrupted, ShapeError
from dreamedit3d_core.progress import CallbackProgress
from dreamedit3d_core.sampling import sample_euler, sample_views
from dreamedit3d_core.schedule import (
    GuidanceStep,
    MVDenoiser,
    betas_from_alphas_cumprod,
    check_alphas_cumprod,
    ddim_sigmas,
    ddim_timesteps,
    full_schedule_steps,
    karras_sigmas,
    make_sigmas,
    normal_sigmas,
    sd21_alphas_cumprod,
    sd21_betas,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    t_to_sigma,
)

pytestmark = pytest.mark.numeric

# a different size on every axis: B 1, V 4, C 4, h 3, w 5
LATENT = (4, 4, 3, 5)


@pytest.fixture
def known():
    target = torch.randn(LATENT, generator=torch.Generator().manual_seed(1))
    model = KnownX0Model(target)
    cond = toy_conditioning()
    x0_u, x0_c = model.x0_for(cond.uncond), model.x0_for(cond.cond)
    return model, cond, x0_u, x0_c


def cfg_x0(x0_u, x0_c, s):
    return x0_u + s * (x0_c - x0_u)


# ----------------------------------------------------------------------------------------------- schedule


def test_sd21_schedule_matches_mvdream_reference_values():
    ac = sd21_alphas_cumprod()
    assert ac.dtype == torch.float64 and ac.shape == (1000,)
    assert ac[0].item() == pytest.approx(0.99915, abs=1e-12)
    assert ac[499].item() == pytest.approx(0.2776697, abs=1e-7)
    assert ac[999].item() == pytest.approx(0.0046601, abs=1e-7)


def test_betas_recovered_from_alphas_cumprod_equal_the_linear_betas():
    torch.testing.assert_close(betas_from_alphas_cumprod(sd21_alphas_cumprod()), sd21_betas(), rtol=1e-9, atol=1e-12)


def test_sigma_and_timestep_interpolate_in_log_sigma_and_invert_each_other():
    table = sigmas_from_alphas_cumprod(sd21_alphas_cumprod())
    assert table[0].item() == pytest.approx(math.sqrt(0.00085 / 0.99915))
    t = torch.tensor([0.0, 0.25, 17.5, 500.0, 998.9, 999.0], dtype=torch.float64)
    sig = t_to_sigma(t, table)
    # half-way between two steps is the geometric mean of their sigmas
    assert sig[2].item() == pytest.approx(math.sqrt(table[17].item() * table[18].item()), rel=1e-12)
    torch.testing.assert_close(sigma_to_t(sig, table), t, rtol=0, atol=1e-9)
    assert sigma_to_t(torch.tensor([1e-6, 1e6]), table).tolist() == [0.0, 999.0]  # clamps outside the table
    assert sigma_to_t(sig, table, quantize=True).tolist() == [0.0, 0.0, 18.0, 500.0, 999.0, 999.0]


def test_karras_sigmas_match_diffusers_euler_scheduler():
    from diffusers import EulerDiscreteScheduler

    ref = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                 use_karras_sigmas=True)
    ref.set_timesteps(12)
    table = sigmas_from_alphas_cumprod(sd21_alphas_cumprod())
    ours = karras_sigmas(12, float(table[0]), float(table[-1]))
    assert ours[-1].item() == 0.0 and ours.shape == (13,)
    torch.testing.assert_close(ours, ref.sigmas.to(torch.float32), rtol=2e-5, atol=0)


def test_normal_sigmas_at_integer_timesteps_are_the_table_values():
    table = sigmas_from_alphas_cumprod(sd21_alphas_cumprod())
    four = normal_sigmas(4, table)  # timesteps 999, 666, 333, 0
    torch.testing.assert_close(four, torch.cat([table[[999, 666, 333, 0]], torch.zeros(1, dtype=torch.float64)]).float())
    torch.testing.assert_close(normal_sigmas(1000, table)[:-1], table.flip(0).float())


def test_denoise_stretches_the_schedule_by_comfys_floor_rule():
    # ComfyUI BasicScheduler / KSampler.set_steps: int(steps / denoise); 7 / 0.4 = 17.5 floors to 17 (round() gave 18)
    assert full_schedule_steps(7, 0.4) == 17
    assert full_schedule_steps(5, 0.5) == 10 and full_schedule_steps(30, 1.0) == 30 and full_schedule_steps(3, 0.3) == 10
    for bad in (0.0, -1.0, 2.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="denoise must be in \\(0, 1\\]"):
            full_schedule_steps(10, bad)
    with pytest.raises(ConfigError, match="steps must be a positive integer"):
        full_schedule_steps(0, 0.5)


def test_partial_edit_runs_the_tail_of_the_floor_stretched_schedule(known):
    model, cond, _, _ = known
    out = sample_views(model, cond, method="euler", steps=7, cfg=2.0, init_latents=torch.ones(LATENT), denoise=0.4,
                       noise=torch.randn(LATENT))
    table = sigmas_from_alphas_cumprod(model.alphas_cumprod)
    torch.testing.assert_close(out.sigmas, karras_sigmas(17, float(table[0]), float(table[-1]))[-8:])


def test_bad_schedule_inputs_raise_clear_errors():
    with pytest.raises(ShapeError, match="strictly inside"):
        check_alphas_cumprod(torch.tensor([1.0, 0.5]))
    with pytest.raises(ShapeError, match="decrease strictly"):
        check_alphas_cumprod(torch.tensor([0.5, 0.6]))
    with pytest.raises(ConfigError, match="unknown sigma schedule 'cosine'"):
        make_sigmas("cosine", 10, sigmas_from_alphas_cumprod(sd21_alphas_cumprod()))
    with pytest.raises(ConfigError, match="steps must be a positive integer"):
        karras_sigmas(0, 0.03, 14.6)


# ----------------------------------------------------------------------------------------------- denoiser


def test_denoiser_applies_cfg_in_one_unet_batch_of_uncond_then_cond(known):
    model, cond, x0_u, x0_c = known
    den = MVDenoiser(model, cond, cfg=7.5)
    x = torch.randn(LATENT, generator=torch.Generator().manual_seed(2)) * 3.0
    out = den(x, torch.tensor(2.5))
    torch.testing.assert_close(out, cfg_x0(x0_u, x0_c, 7.5), rtol=1e-5, atol=1e-4)
    assert model.calls == [8]  # [uncond × 4 views, cond × 4 views] in one call


def test_denoiser_with_cfg_one_skips_the_uncond_half(known):
    model, cond, _, x0_c = known
    out = MVDenoiser(model, cond, cfg=1.0)(torch.zeros(LATENT), torch.full((4,), 0.7))
    torch.testing.assert_close(out, x0_c, rtol=1e-5, atol=1e-5)
    assert model.calls == [4]


def test_post_cfg_hooks_see_the_guidance_step_and_replace_denoised(known):
    model, cond, x0_u, x0_c = known
    seen = []

    def hook(step: GuidanceStep):
        seen.append(step)
        return step.denoised * 0.0 + step.uncond_x0

    den = MVDenoiser(model, cond, cfg=3.0, post_cfg_hooks=[hook])
    x = torch.randn(LATENT)
    out = den(x, torch.tensor(1.5), post_cfg_hooks=[lambda s: s.denoised + 1.0])
    step = seen[0]
    torch.testing.assert_close(step.denoised, cfg_x0(x0_u, x0_c, 3.0), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(step.cond_x0, x0_c, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out, x0_u + 1.0, rtol=1e-5, atol=1e-4)  # construction hooks first, then the call's
    assert step.x is x and step.cfg == 3.0 and step.sigma.tolist() == [1.5] * 4


def test_cfg_rule_replaces_plain_cfg(known):
    model, cond, x0_u, x0_c = known
    x = torch.randn(LATENT)
    out = MVDenoiser(model, cond, cfg=9.0)(x, torch.tensor(1.0),
                                           cfg_rule=lambda s: s.uncond_x0 + 2.0 * (s.cond_x0 - s.uncond_x0))
    torch.testing.assert_close(out, cfg_x0(x0_u, x0_c, 2.0), rtol=1e-5, atol=1e-4)


def test_needs_uncond_evaluates_both_halves_at_cfg_one(known):
    model, cond, _, x0_c = known
    out = MVDenoiser(model, cond, cfg=1.0)(torch.zeros(LATENT), torch.tensor(0.7), needs_uncond=True)
    torch.testing.assert_close(out, x0_c, rtol=1e-5, atol=1e-5)
    assert model.calls == [8]


def test_denoiser_refuses_latents_of_the_wrong_batch(known):
    model, cond, _, _ = known
    with pytest.raises(ShapeError, match=r"latents must be \[4, C, h, w\] \(1 object\(s\) × 4 views\), got \[3, 4, 3, 5\]"):
        MVDenoiser(model, cond)(torch.zeros(3, 4, 3, 5), torch.tensor(1.0))
    with pytest.raises(ConfigError, match="conditioning was made for 2 views"):
        MVDenoiser(model, toy_conditioning(batch=2, views=2))


# ----------------------------------------------------------------------------------------------- samplers


@pytest.mark.parametrize("schedule", ["karras", "normal"])
def test_euler_lands_on_the_known_x0(known, schedule):
    model, cond, x0_u, x0_c = known
    out = sample_views(model, cond, method="euler", steps=8, cfg=5.0, seed=3, sigma_schedule=schedule,
                       noise=torch.randn(LATENT))
    torch.testing.assert_close(out.latents, cfg_x0(x0_u, x0_c, 5.0), rtol=1e-5, atol=1e-4)
    assert out.sigmas.shape == (9,) and out.sigmas[-1] == 0
    assert out.images.shape == (4, 3, 24, 40) and 0.0 <= out.images.min() and out.images.max() <= 1.0


def test_sample_euler_follows_the_k_diffusion_contract():
    """A closed form: for D(x, σ) = c the ODE solution is x_σ' = c + (x − c)·σ'/σ, and Euler is exact on it."""
    c = torch.tensor([[1.0, -2.0]])
    sigmas = torch.tensor([10.0, 4.0, 1.0, 0.5])
    got = sample_euler(lambda x, s: c.expand_as(x), torch.tensor([[11.0, 8.0]]), sigmas)
    torch.testing.assert_close(got, c + (torch.tensor([[11.0, 8.0]]) - c) * 0.05)


def test_partial_euler_edit_starts_below_sigma_max_and_still_lands_on_x0(known):
    model, cond, x0_u, x0_c = known
    out = sample_views(model, cond, method="euler", steps=5, cfg=2.0, seed=0, init_latents=torch.ones(LATENT),
                       denoise=0.5)
    assert out.sigmas.shape == (6,) and out.sigmas[0] < 14.0
    torch.testing.assert_close(out.latents, cfg_x0(x0_u, x0_c, 2.0), rtol=1e-5, atol=1e-4)


def test_ddim_schedule_has_mvdreams_timesteps():
    table = sigmas_from_alphas_cumprod(sd21_alphas_cumprod())
    timesteps = ddim_timesteps(50)
    assert timesteps[0].item() == 981 and timesteps[-1].item() == 1 and len(timesteps) == 50
    sigmas = ddim_sigmas(50, table)
    # set_alpha_to_one=False: the last step lands on ᾱ_0 (σ = sqrt((1 − ᾱ_0) / ᾱ_0)), not on a clean latent
    assert sigmas.shape == (51,) and sigmas[-1].item() == pytest.approx(math.sqrt((1 - 0.99915) / 0.99915), rel=1e-6)
    torch.testing.assert_close(sigmas[:-1], table[timesteps].float())


@pytest.mark.parametrize("steps", [1, 7, 10, 30, 50, 333])
def test_ddim_timesteps_equal_diffusers_mvdream_config(steps):
    from diffusers import DDIMScheduler

    ref = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                        timestep_spacing="leading", set_alpha_to_one=False, clip_sample=False)
    ref.set_timesteps(steps)
    assert ddim_timesteps(steps).tolist() == ref.timesteps.tolist()


def test_core_ddim_equals_a_diffusers_ddim_loop_on_the_known_model(known):
    model, cond, _, _ = known
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(7))
    ref = diffusers_ddim_loop(model, cond, noise, steps=10, cfg=7.5)
    out = sample_views(model, cond, method="ddim", steps=10, cfg=7.5, noise=noise)
    torch.testing.assert_close(out.latents, ref, rtol=1e-4, atol=1e-4)
    # the schedule run is sigmas now (was its timesteps): the σ of timesteps 901, 801, ..., 1, then σ(ᾱ_0)
    table = sigmas_from_alphas_cumprod(sd21_alphas_cumprod())
    assert sigma_to_t(out.sigmas[:-1], table, quantize=True).tolist() == list(range(901, 0, -100))
    assert out.sigmas.shape == (11,) and out.sigmas[-1].item() == pytest.approx(table[0].item(), rel=1e-6)


def test_progress_reports_every_step_and_interrupt_stops_sampling():
    model, cond = KnownX0Model(torch.zeros(4, 4, 2, 2)), toy_conditioning()
    updates = []
    sample_views(model, cond, method="ddim", steps=6, seed=0, resolution=16,
                 progress=CallbackProgress(on_update=lambda s, t, p, i: updates.append((s, t, p.shape, i["sigma"]))))
    assert [u[:3] for u in updates] == [(s, 6, (4, 4, 2, 2)) for s in range(1, 7)]
    assert updates[0][3] > updates[-1][3]
    calls = []
    stop = CallbackProgress(should_stop=lambda: len(calls) >= 3, on_update=lambda *a: calls.append(1))
    with pytest.raises(Interrupted):
        sample_views(model, cond, method="euler", steps=6, seed=0, resolution=16, progress=stop)
    assert len(calls) == 3


def test_same_seed_same_result_other_seed_other_result():
    model, cond = KnownX0Model(torch.zeros(4, 4, 2, 2)), toy_conditioning()
    a = sample_views(model, cond, method="ddim", steps=3, seed=11, resolution=16)
    b = sample_views(model, cond, method="ddim", steps=3, seed=11, resolution=16)
    c = sample_views(model, cond, method="ddim", steps=3, seed=12, resolution=16)
    assert a.seed == 11 and torch.equal(a.latents, b.latents) and torch.equal(a.images, b.images)
    assert not torch.allclose(a.latents, c.latents)


def test_sampling_arguments_are_checked(known):
    model, cond, _, _ = known
    with pytest.raises(ConfigError, match="unknown sampling method 'plms'"):
        sample_views(model, cond, method="plms")
    with pytest.raises(ConfigError, match="denoise 0.5 < 1 edits existing latents: pass init_latents"):
        sample_views(model, cond, denoise=0.5)
    with pytest.raises(ShapeError, match=r"noise must be \[4, 4, h, w\]"):
        sample_views(model, cond, noise=torch.zeros(2, 4, 8, 8))
    with pytest.raises(ConfigError, match="resolution must be a positive multiple of 8"):
        sample_views(model, cond, resolution=100)


def test_the_core_speaks_no_comfyui_guidance_dicts():
    """ComfyUI's model_options / cfg-function argument dicts are translated only in nodes/sampler_bridge.py: no name
    or dict key of the core's code (docstrings aside) is one of theirs."""
    import ast
    from pathlib import Path

    import dreamedit3d_core

    root = Path(dreamedit3d_core.__file__).parent
    words = {"model_options", "sampler_cfg_function", "sampler_post_cfg_function", "cond_scale"}
    hits = []
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in words or isinstance(node, ast.arg) and node.arg in words:
                hits.append(f"{path.relative_to(root)}:{node.lineno}")
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                  and node.value in words):
                hits.append(f"{path.relative_to(root)}:{node.lineno}")
    assert hits == []
