"""Sampling four consistent views without ComfyUI: one Euler loop over a sigma schedule, one denoiser.

* ``ddim``: MVDream's ``DDIMSampler`` (``../shared/design/mvdream.md`` §5, η = 0) is one Euler step in sigma space
  per timestep (``schedule.py``), so it runs as :func:`sample_euler` over :func:`~dreamedit3d_core.schedule.ddim_sigmas`:
  the σ of timesteps 981, 961, …, 1 for 50 steps (diffusers' "leading" spacing, ``steps_offset=1``), ending at σ(ᾱ_0)
  (``set_alpha_to_one=False``); the result is the DDPM latent there. The table is the checkpoint's own
  ``alphas_cumprod`` buffer, and the UNet sees the integer timesteps. For step counts that do not divide 1000,
  MVDream's ``range(0, 1000, 1000 // S) + 1`` yields more than S timesteps; we run exactly S.
* ``euler``: Karras et al. (2022) Algorithm 2 without churn, in k-diffusion's contract ``sample_euler(model, x,
  sigmas)`` with ``model(x, sigma) -> x0`` (:class:`~dreamedit3d_core.schedule.MVDenoiser`), on ``karras`` or
  ``normal`` sigmas from the same table.

Both run the UNet once per step on ``[uncond, cond]`` for all views of every object together (CFG inside the
denoiser), report to a :class:`~dreamedit3d_core.progress.Progress` after each step and check for interruption
before it. ``steps`` is always the number of steps run: a partial edit (``denoise < 1``) runs the last ``steps`` of a
``int(steps / denoise)``-step schedule (:func:`~dreamedit3d_core.schedule.full_schedule_steps`, ComfyUI's rule).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from .errors import ConfigError, ShapeError
from .progress import Progress, as_progress
from .schedule import SIGMA_SCHEDULES, MVDenoiser, ddpm_latent, full_schedule_steps, make_sigmas
from .types import MultiViewSamples, MVConditioning

METHODS = ("ddim", "euler")
LATENT_CHANNELS = 4
#: SD VAE downsampling factor.
VAE_SCALE = 8


@dataclass(frozen=True)
class StepInfo:
    """What a sampler reports after a step (k-diffusion's callback dict, typed).

    Attributes:
        step: index of the finished step, 0-based; total: number of steps.
        sigma: noise level the step started from; x: float [N, 4, h, w] latents before the step;
        denoised: float [N, 4, h, w] the x0 estimate of this step (a live preview).
    """

    step: int
    total: int
    sigma: float
    x: torch.Tensor
    denoised: torch.Tensor


# ------------------------------------------------------------------------------------------- k-diffusion samplers


@torch.no_grad()
def sample_euler(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Optional[dict] = None,
                 callback: Optional[Callable[[dict], Any]] = None, disable: Optional[bool] = None) -> torch.Tensor:
    """Euler steps of the probability-flow ODE (Karras et al. 2022, Alg. 2 with no churn); k-diffusion contract.

    Args:
        model: ``model(x, sigma_batch, **extra_args) -> x0``.
        x: float [N, ...] latents at ``sigmas[0]`` (noise already scaled by it).
        sigmas: float [S + 1] decreasing noise levels, usually ending in 0.
        callback: called after each step with ``{"x", "i", "sigma", "sigma_hat", "denoised"}``.

    Returns:
        float [N, ...] latents at ``sigmas[-1]``.
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        d = (x - denoised) / sigmas[i]  # dx/dsigma of the probability-flow ODE
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


# ----------------------------------------------------------------------------------------------------- noise


def initial_noise(shape: tuple, seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                  device: Any = "cpu", dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, int]:
    """Standard normal noise drawn on the CPU (the same on every device), then moved; returns (noise, seed)."""
    if generator is None:
        if seed is None:
            seed = int(torch.seed() % (2**63))
        generator = torch.Generator("cpu").manual_seed(int(seed))
    elif seed is None:
        seed = int(generator.initial_seed())
    gen_device = generator.device
    noise = torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype), int(seed)


# ---------------------------------------------------------------------------------------------------- driver


def sample_views(model: Any, conditioning: MVConditioning, *args: Any, **options: Any) -> MultiViewSamples:
    """Sample the views of every object in ``conditioning`` jointly and decode them.

    Takes exactly :func:`sample_latents`'s arguments (method, steps, cfg, seed, ... — documented there).

    Returns:
        ``MultiViewSamples`` with latents [B·V, 4, h, w], images float32 [B·V, 3, 8h, 8w] in 0..1, the seed and the
        sigmas run.
    """
    latents, sigmas, seed = sample_latents(model, conditioning, *args, **options)
    images = decode_views(model, latents, conditioning.num_views)
    return MultiViewSamples(latents=latents, images=images, seed=int(seed), sigmas=sigmas)


def sample_latents(
    model: Any,
    conditioning: MVConditioning,
    method: str = "ddim",
    steps: int = 50,
    cfg: float = 7.5,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    init_latents: Optional[torch.Tensor] = None,
    denoise: float = 1.0,
    progress: Optional[Progress] = None,
    sigma_schedule: str = "karras",
    noise: Optional[torch.Tensor] = None,
    resolution: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sample the latents of every object in ``conditioning`` jointly (:func:`sample_views` without the VAE).

    Args:
        model: ``MVDreamModel`` (``predict_noise``, ``alphas_cumprod``, ``decode_latents``, ``num_views``, ``device``).
        conditioning: B objects × V views of text + cameras.
        method: ``"ddim"`` (MVDream's, eta 0) or ``"euler"``.
        steps: number of denoising steps run (≥ 1).
        cfg: classifier-free guidance scale (DreamEdit3D uses 7.5).
        seed / generator: where the initial noise comes from (CPU draw; ``seed`` None and no generator: a fresh seed,
            returned in the result).
        init_latents: float [B·V, 4, h, w] latents to edit (``0.18215·E(x)``); needed when ``denoise < 1``.
        denoise: fraction of the noise schedule to run, in (0, 1]; 1 starts from pure noise.
        progress: receives ``update(step, total, preview=StepInfo.denoised, sigma=…)`` per step; its
            ``check_interrupt()`` runs before every step.
        sigma_schedule: ``"karras"``, ``"normal"`` or ``"ddim"`` (Euler only; ``method="ddim"`` is Euler on ``"ddim"``).
        noise: float [B·V, 4, h, w] standard normal noise to use instead of drawing it (tests, ComfyUI NOISE).
        resolution: image side in pixels when neither ``init_latents`` nor ``noise`` fixes it (multiple of 8).

    Returns:
        ``(latents float32 [B·V, 4, h, w], sigmas, seed)``: ``sigmas`` is the float32 [S + 1] schedule run (CPU);
        ``seed`` is -1 when ``noise`` was given without a seed.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown sampling method {method!r}; choose one of {list(METHODS)}")
    if sigma_schedule not in SIGMA_SCHEDULES:
        raise ConfigError(f"unknown sigma schedule {sigma_schedule!r}; choose one of {list(SIGMA_SCHEDULES)}")
    total_steps = full_schedule_steps(steps, denoise)  # checks steps and denoise
    if denoise < 1.0 and init_latents is None:
        raise ConfigError(f"denoise {denoise} < 1 edits existing latents: pass init_latents (or use denoise 1.0)")
    progress = as_progress(progress)
    device = torch.device(getattr(model, "device", conditioning.cond.device))
    conditioning = conditioning.to(device=device)
    shape = latent_shape(conditioning, init_latents, noise, resolution)
    if noise is None:
        noise, seed = initial_noise(shape, seed, generator, device)
    else:
        noise = noise.to(device=device, dtype=torch.float32)
        seed = -1 if seed is None else int(seed)
    init = None if init_latents is None else init_latents.to(device=device, dtype=torch.float32)

    def report(info: StepInfo) -> None:
        progress.update(info.step + 1, info.total, preview=info.denoised, sigma=info.sigma)

    kind = "ddim" if method == "ddim" else sigma_schedule
    # DDIM feeds the UNet its integer timesteps, exactly as MVDream's sampler does
    denoiser = MVDenoiser(model, conditioning, cfg, quantize_timesteps=kind == "ddim")
    sigmas = make_sigmas(kind, total_steps, denoiser.sigma_table)[-(steps + 1):]
    latents = _run_schedule(denoiser, noise, init, sigmas.to(device), progress, report)
    return latents, sigmas, int(seed)


def decode_views(model: Any, latents: torch.Tensor, num_views: int) -> torch.Tensor:
    """Decode latents one object (V views) at a time to float32 [N, 3, H, W] in 0..1."""
    with torch.no_grad():
        dtype = getattr(model, "dtype", latents.dtype)
        chunks = [model.decode_latents(chunk.to(dtype)).float() for chunk in latents.split(num_views)]
    return torch.cat(chunks).clamp(0.0, 1.0)


def latent_shape(conditioning: MVConditioning, init: Optional[torch.Tensor] = None,
                 noise: Optional[torch.Tensor] = None, resolution: int = 256) -> tuple:
    """Shape ``(B·V, 4, h, w)`` of the latents to sample for ``conditioning``, checking ``init``/``noise`` against it.

    ``init`` (latents to edit) or ``noise`` fix ``h, w`` when given (and must agree); otherwise ``resolution`` (pixels,
    a positive multiple of 8) does. Raises ``ShapeError``/``ConfigError`` naming the bad input.
    """
    n = conditioning.cond.shape[0]
    for name, t in (("init_latents", init), ("noise", noise)):
        if t is not None and (t.ndim != 4 or t.shape[0] != n or t.shape[1] != LATENT_CHANNELS):
            raise ShapeError(f"{name} must be [{n}, {LATENT_CHANNELS}, h, w] for {conditioning.batch_size} object(s) × "
                             f"{conditioning.num_views} views, got {list(t.shape)}")
    if init is not None and noise is not None and init.shape != noise.shape:
        raise ShapeError(f"noise {list(noise.shape)} and init_latents {list(init.shape)} must have the same shape")
    if init is not None:
        return tuple(init.shape)
    if noise is not None:
        return tuple(noise.shape)
    if resolution < VAE_SCALE or resolution % VAE_SCALE:
        raise ConfigError(f"resolution must be a positive multiple of {VAE_SCALE}, got {resolution}")
    return (n, LATENT_CHANNELS, resolution // VAE_SCALE, resolution // VAE_SCALE)


_latent_shape = latent_shape  # old private name, kept until nodes/sampling.py switches

# help() and IDEs show sample_latents' parameters for sample_views too
sample_views.__signature__ = inspect.signature(sample_latents).replace(return_annotation=MultiViewSamples)


def _run_schedule(denoiser: MVDenoiser, noise, init, sigmas: torch.Tensor, progress: Progress, report):
    sigma0 = sigmas[0]
    if init is None:  # pure noise: the DDPM prior N(0, 1) at t = T, i.e. sqrt(1 + σ²) in sigma space
        x = noise * (1.0 + sigma0**2).sqrt()
    else:
        x = init + noise * sigma0
    total = len(sigmas) - 1

    def model_with_interrupt(x_, sigma_, **kw):
        progress.check_interrupt()
        return denoiser(x_, sigma_, **kw)

    sigmas_cpu = sigmas.cpu()  # report without a device sync per step

    def on_step(d: dict) -> None:
        report(StepInfo(int(d["i"]), total, float(sigmas_cpu[d["i"]]), d["x"], d["denoised"]))

    x = sample_euler(model_with_interrupt, x, sigmas, callback=on_step)
    return ddpm_latent(x, sigmas_cpu[-1])  # x itself when the schedule ends at 0; DDIM ends at σ(ᾱ_0)
