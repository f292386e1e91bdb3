"""Run ComfyUI's real samplers (``KSAMPLER.sample``) on the multi-view denoiser, without importing comfy.

The caller (``nodes/_compat.py``) passes ComfyUI's classes in; this module only duck-types the object ComfyUI's
samplers expect as ``model_wrap`` (``../shared/design/comfyui.md`` §4, ``comfy/samplers.py`` ``KSAMPLER.sample`` and
``KSamplerX0Inpaint``; ``comfy/k_diffusion/sampling.py``):

* ``model_wrap(x, sigma, model_options={}, seed=None) -> x0`` (CFG inside, post-CFG hooks honoured: the CFG++
  samplers install one through ``model_options["sampler_post_cfg_function"]`` and crash without it);
  :func:`guidance_from_model_options` is the one place where ComfyUI's ``sampler_cfg_function`` /
  ``sampler_post_cfg_function`` argument dicts (``comfy/samplers.py`` ``cfg_function``) are built: the core
  denoiser only knows its typed ``GuidanceHook``/``GuidanceStep``;
* ``model_wrap.inner_model.model_sampling`` (noise scaling, sigma_min/max; an EPS ``ModelSamplingDiscrete`` built by
  ``nodes/_compat.make_model_sampling`` from the checkpoint's ``alphas_cumprod``);
* ``model_wrap.inner_model.scale_latent_inpaint`` (used with a denoise mask);
* ``model_wrap.model_patcher.get_model_object("model_sampling")`` (er_sde, sa_solver, seeds_*, res_multistep,
  *_cfg_pp read it as ``model.inner_model.model_patcher`` where ``model`` is ComfyUI's ``KSamplerX0Inpaint``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

try:  # inside ComfyUI the pack is a package imported by path: relative import; tests load this file on its own
    from ..dreamedit3d_core.errors import ConfigError
    from ..dreamedit3d_core.sampling import initial_noise, latent_shape
    from ..dreamedit3d_core.schedule import GuidanceHook, GuidanceStep, MVDenoiser
except ImportError:
    from dreamedit3d_core.errors import ConfigError
    from dreamedit3d_core.sampling import initial_noise, latent_shape
    from dreamedit3d_core.schedule import GuidanceHook, GuidanceStep, MVDenoiser


def guidance_from_model_options(model_options: dict, model: Any) -> dict:
    """ComfyUI's guidance entries of ``model_options`` as the core denoiser's typed keyword arguments.

    Args:
        model_options: ComfyUI's dict; ``sampler_cfg_function`` replaces plain CFG, ``sampler_post_cfg_function``
            (a list) runs after it in order, ``disable_cfg1_optimization`` keeps the uncond half at cfg 1.
        model: what the hooks see as ``args["model"]`` (the stand-in ``BaseModel``).

    Returns:
        ``{"cfg_rule", "post_cfg_hooks", "needs_uncond"}`` for :meth:`MVDenoiser.__call__`.
    """
    cfg_function = model_options.get("sampler_cfg_function")
    cfg_rule: Optional[GuidanceHook] = None
    if cfg_function is not None:
        def cfg_rule(step: GuidanceStep) -> torch.Tensor:
            # ComfyUI's contract: "cond"/"uncond" are x − x0 and the function returns the guided x − x0
            args = {"cond": step.x - step.cond_x0, "uncond": step.x - step.uncond_x0, "cond_scale": step.cfg,
                    "timestep": step.sigma, "input": step.x, "sigma": step.sigma, "cond_denoised": step.cond_x0,
                    "uncond_denoised": step.uncond_x0, "model": model, "model_options": model_options,
                    "input_cond": None, "input_uncond": None}
            return step.x - cfg_function(args)

    def post_cfg(function: Callable[[dict], torch.Tensor]) -> GuidanceHook:
        def hook(step: GuidanceStep) -> torch.Tensor:
            return function({"denoised": step.denoised, "cond": None, "uncond": None, "cond_scale": step.cfg,
                             "model": model, "uncond_denoised": step.uncond_x0, "cond_denoised": step.cond_x0,
                             "sigma": step.sigma, "model_options": model_options, "input": step.x})
        return hook

    return {"cfg_rule": cfg_rule,
            "post_cfg_hooks": tuple(post_cfg(f) for f in model_options.get("sampler_post_cfg_function", ())),
            "needs_uncond": bool(model_options.get("disable_cfg1_optimization", False))}


class _ModelPatcherView:
    """The one ModelPatcher method ComfyUI's samplers call on a sampling model."""

    def __init__(self, model_sampling: Any, model_patcher: Any = None):
        self._model_sampling = model_sampling
        self._patcher = model_patcher

    def get_model_object(self, name: str) -> Any:
        if name == "model_sampling":
            return self._model_sampling
        if self._patcher is not None:
            return self._patcher.get_model_object(name)
        raise AttributeError(f"the multi-view sampler model has no object {name!r} (only 'model_sampling')")


class _InnerModel:
    """Stands in for ComfyUI's ``BaseModel`` as far as samplers look at it."""

    def __init__(self, model_sampling: Any, patcher_view: _ModelPatcherView):
        self.model_sampling = model_sampling
        self.model_patcher = patcher_view

    def scale_latent_inpaint(self, sigma, noise, latent_image, **kwargs):
        """Re-noise the kept region of an inpaint latent to ``sigma`` (ComfyUI ``BaseModel.scale_latent_inpaint``)."""
        return self.model_sampling.noise_scaling(sigma.reshape([sigma.shape[0]] + [1] * (len(noise.shape) - 1)),
                                                 noise, latent_image)


class MVSamplerModel:
    """The ``model_wrap`` ComfyUI's ``KSAMPLER.sample`` drives: our CFG'd multi-view denoiser in sigma space.

    Args:
        denoiser: the :class:`~dreamedit3d_core.schedule.MVDenoiser` (model, conditioning, cfg).
        model_sampling: ComfyUI's EPS ``ModelSamplingDiscrete`` on the same ᾱ table (``nodes/_compat.make_model_sampling``).
        model_patcher: optional real ModelPatcher (for any other object a sampler may ask for).
        model_options: the model's own ComfyUI options (as a ModelPatcher carries them): their guidance hooks run
            at every call, before those a sampler passes in its call's ``model_options``.
    """

    def __init__(self, denoiser: MVDenoiser, model_sampling: Any, model_patcher: Any = None,
                 model_options: Optional[dict] = None):
        self.denoiser = denoiser
        self.model_patcher = _ModelPatcherView(model_sampling, model_patcher)
        self.inner_model = _InnerModel(model_sampling, self.model_patcher)
        self.model_options: dict = {"transformer_options": {}, **(model_options or {})}

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, model_options: Optional[dict] = None,
                 seed: Optional[int] = None, **_: Any) -> torch.Tensor:
        own = guidance_from_model_options(self.model_options, self.inner_model)
        call = guidance_from_model_options(model_options or {}, self.inner_model)
        return self.denoiser(x, sigma, cfg_rule=call["cfg_rule"] or own["cfg_rule"],
                             post_cfg_hooks=own["post_cfg_hooks"] + call["post_cfg_hooks"],
                             needs_uncond=own["needs_uncond"] or call["needs_uncond"])


def run_comfy_sampler(
    sampler: Any,
    sigmas: torch.Tensor,
    model_wrap: MVSamplerModel,
    noise: torch.Tensor,
    latent_image: Optional[torch.Tensor] = None,
    callback: Optional[Callable[[int, torch.Tensor, torch.Tensor, int], Any]] = None,
    disable_pbar: bool = True,
    seed: Optional[int] = None,
    denoise_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Sample with a ComfyUI ``SAMPLER`` (``KSAMPLER``) over ``SIGMAS``, all views jointly.

    Args:
        sampler: a ComfyUI ``SAMPLER`` (``KSamplerSelect`` / ``sampler_object(name)``).
        sigmas: float [S + 1] from any scheduler node (a partial edit passes a tail of the schedule).
        model_wrap: :class:`MVSamplerModel`.
        noise: float [B·V, 4, h, w] unit noise (ComfyUI ``NOISE.generate_noise``).
        latent_image: float [B·V, 4, h, w] latents to edit, zeros for text-to-3D (ComfyUI's empty latent).
        callback: ``callback(step, x0, x, total_steps)`` after each step (preview, progress, interrupt).
        seed: passed to the samplers that draw noise (ancestral, SDE).
        denoise_mask: optional float [B·V, 1, h, w]; 1 = regenerate, 0 = keep ``latent_image``.

    Returns:
        float [B·V, 4, h, w] denoised latents.
    """
    if latent_image is None:
        latent_image = torch.zeros_like(noise)
    sigmas = sigmas.to(device=noise.device, dtype=torch.float32)
    extra_args = {"model_options": {"transformer_options": {}}, "seed": seed}
    with torch.no_grad():
        return sampler.sample(model_wrap, sigmas, extra_args, callback, noise, latent_image=latent_image,
                              denoise_mask=denoise_mask, disable_pbar=disable_pbar)


def sample_with_comfy(
    model: Any,
    conditioning: Any,
    sampler: Any,
    sigmas: torch.Tensor,
    cfg: float,
    model_sampling: Any,
    device: Any,
    seed: int = 0,
    noise: Any = None,
    latent: Optional[dict] = None,
    resolution: int = 256,
    callback: Optional[Callable[[int, torch.Tensor, torch.Tensor, int], Any]] = None,
) -> tuple:
    """MVSample's whole sampling step: ComfyUI's SAMPLER/SIGMAS/NOISE/LATENT in, our latents out.

    The latent shape and the seed's noise come from the core (:func:`~dreamedit3d_core.sampling.latent_shape`,
    :func:`~dreamedit3d_core.sampling.initial_noise`: a CPU draw, the same on every device), so the node and the
    library never disagree on either.

    Args:
        model: ``MVDreamModel``; conditioning: ``MVConditioning`` (B objects × V views).
        sampler, sigmas: ComfyUI's ``SAMPLER`` and ``SIGMAS`` (float [S + 1], at least 2 values).
        cfg: guidance scale; model_sampling: EPS ``ModelSamplingDiscrete`` on ``model.alphas_cumprod``.
        device: where to sample (ComfyUI's compute device).
        seed: noise seed when no ``noise`` is given; noise: a ComfyUI ``NOISE`` (``generate_noise``, ``seed``).
        latent: ComfyUI ``LATENT`` dict to edit (``samples`` [B·V, 4, h, w]); None: text-to-3D at ``resolution`` px.
        callback: ``callback(step, x0, x, total_steps)`` after each step.

    Returns:
        ``(latents float32 [B·V, 4, h, w] on device, seed used)``.
    """
    if sigmas.numel() < 2:
        raise ConfigError(f"SIGMAS has {sigmas.numel()} value(s): give at least 1 step (2 values)")
    init = None if latent is None else latent["samples"].float()
    shape = latent_shape(conditioning, init, None, int(resolution))
    if init is None:
        init = torch.zeros(shape)  # ComfyUI's empty latent: text-to-3D
    if noise is not None:
        start = noise.generate_noise({"samples": init}).float()
        seed = int(getattr(noise, "seed", seed) or 0)
    else:
        start, seed = initial_noise(shape, int(seed))
    denoiser = MVDenoiser(model, conditioning.to(device=device), float(cfg), quantize_timesteps=True)
    wrap = MVSamplerModel(denoiser, model_sampling)
    latents = run_comfy_sampler(sampler, sigmas.to(device), wrap, start.to(device), latent_image=init.to(device),
                                callback=callback, seed=int(seed))
    return latents, int(seed)
