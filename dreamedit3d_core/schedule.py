"""MVDream's noise schedule in sigma space, and the multi-view CFG denoiser every sampler calls.

Conventions (``../shared/design/mvdream.md`` §5, k-diffusion ``external.DiscreteEpsDDPMDenoiser``):

* Training schedule: LDM "linear" betas, ``linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2`` in float64
  (diffusers ``beta_schedule="scaled_linear"``), eps parameterisation. The checkpoint's own ``alphas_cumprod``
  buffer is the source of truth; :func:`sd21_alphas_cumprod` only recomputes it.
* Sigma space: ``sigma_t = sqrt((1 - ᾱ_t) / ᾱ_t)``; a noisy latent is ``x = x0 + sigma · eps`` (variance-exploding
  form), and the eps model sees ``c_in · x`` with ``c_in = 1 / sqrt(sigma² + 1)``, which is the DDPM latent
  ``sqrt(ᾱ) x0 + sqrt(1 - ᾱ) eps``. The denoised estimate is ``x0 = x − sigma · eps``.
* Timestep ↔ sigma: linear interpolation of ``log sigma`` over the 1000 training timesteps (k-diffusion
  ``sigma_to_t`` / ``t_to_sigma``; ComfyUI's ``ModelSamplingDiscrete.sigma``). ComfyUI's own ``timestep()`` rounds to
  the nearest training step instead: :class:`MVDenoiser` offers both (``quantize_timesteps``).
* DDIM with η = 0 is one Euler step in sigma space: ``x_{σ'} = x0 + σ'·(x − x0)/σ`` is DDIM's update divided by
  ``sqrt(ᾱ)``. MVDream's DDIMSampler is therefore :func:`ddim_sigmas` (its timesteps' σ, ending at σ(ᾱ_0)) run by
  the same Euler loop as every other schedule.
* Batches are view-contiguous (``index = b·V + v``): the V views of one object are always evaluated together in
  one UNet call, so the joint multi-view self-attention sees all of them.
* Guidance is plain CFG on x0; a caller may replace the rule or add post-CFG steps with typed
  :data:`GuidanceHook` functions. Translating ComfyUI's ``model_options`` dicts into them is ``nodes/sampler_bridge.py``'s job.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

import torch

from .errors import ConfigError, ShapeError
from .types import MVConditioning

#: LDM/MVDream ``sd-v2-base.yaml`` schedule.
SD21_LINEAR_START = 0.00085
SD21_LINEAR_END = 0.0120
NUM_TRAIN_TIMESTEPS = 1000
#: Karras et al. (2022) default rho.
KARRAS_RHO = 7.0



@dataclass(frozen=True)
class GuidanceStep:
    """What a guidance hook sees at one denoiser call (all float [N, 4, h, w] unless said).

    Attributes:
        x: the noisy latents in sigma space; sigma: float [N] their noise level per row.
        cond_x0 / uncond_x0: the x0 estimates for the prompt and the negative prompt (``uncond_x0`` None when the
            denoiser skipped the unconditional half: cfg 1 and no hook).
        cfg: the guidance scale s.
        denoised: the guided x0 so far (plain CFG, or the previous hook's result).
    """

    x: torch.Tensor
    sigma: torch.Tensor
    cond_x0: torch.Tensor
    uncond_x0: Optional[torch.Tensor]
    cfg: float
    denoised: torch.Tensor


#: A guidance hook returns the new guided x0 for a :class:`GuidanceStep`; used to replace plain CFG
#: (``cfg_rule``) or after it (``post_cfg_hooks``, CFG++ samplers read ``uncond_x0`` there).
GuidanceHook = Callable[[GuidanceStep], torch.Tensor]


# ----------------------------------------------------------------------------------------------- schedule math


def sd21_betas(
    num_timesteps: int = NUM_TRAIN_TIMESTEPS,
    linear_start: float = SD21_LINEAR_START,
    linear_end: float = SD21_LINEAR_END,
) -> torch.Tensor:
    """LDM "linear" betas (= diffusers "scaled_linear"): float64 [T], ``linspace(√start, √end, T)²``."""
    if num_timesteps < 2:
        raise ConfigError(f"num_timesteps must be at least 2, got {num_timesteps}")
    return torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t} (1 − β_s), float64 [T]."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def sd21_alphas_cumprod(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """MVDream/SD2.1-base ᾱ in float64 [T]: ``[0] = 0.99915``, ``[499] ≈ 0.27767``, ``[999] ≈ 0.0046601``."""
    return alphas_cumprod_from_betas(sd21_betas(num_timesteps))


def schedule_buffers(timesteps: int = NUM_TRAIN_TIMESTEPS, linear_start: float = SD21_LINEAR_START,
                     linear_end: float = SD21_LINEAR_END) -> "OrderedDict[str, torch.Tensor]":
    """The 12 schedule buffers a released LDM/MVDream checkpoint stores (``register_schedule``), float32 [T] each.

    Float64 maths on the "linear" (= scaled linear) betas, stored as float32 as the released files hold them.
    """
    betas = sd21_betas(timesteps, linear_start, linear_end)
    alphas = 1.0 - betas
    ac = alphas_cumprod_from_betas(betas)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    values = OrderedDict(
        betas=betas, alphas_cumprod=ac, alphas_cumprod_prev=ac_prev, sqrt_alphas_cumprod=ac.sqrt(),
        sqrt_one_minus_alphas_cumprod=(1.0 - ac).sqrt(), log_one_minus_alphas_cumprod=(1.0 - ac).log(),
        sqrt_recip_alphas_cumprod=(1.0 / ac).sqrt(), sqrt_recipm1_alphas_cumprod=(1.0 / ac - 1.0).sqrt(),
        posterior_variance=post_var, posterior_log_variance_clipped=post_var.clamp(min=1e-20).log(),
        posterior_mean_coef1=betas * ac_prev.sqrt() / (1.0 - ac),
        posterior_mean_coef2=(1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac),
    )
    return OrderedDict((k, v.to(torch.float32)) for k, v in values.items())


def check_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Validate a ᾱ table (1-D, strictly decreasing, inside (0, 1)) and return it as float64 on its device."""
    ac = torch.as_tensor(alphas_cumprod)
    if ac.ndim != 1 or ac.shape[0] < 2:
        raise ShapeError(f"alphas_cumprod must be a 1-D table of at least 2 values, got shape {list(ac.shape)}")
    ac = ac.to(torch.float64)
    if not bool(torch.isfinite(ac).all()) or float(ac.min()) <= 0.0 or float(ac.max()) >= 1.0:
        raise ShapeError(
            f"alphas_cumprod must lie strictly inside (0, 1), got min {float(ac.min()):.3g} max {float(ac.max()):.3g}; "
            "is this the checkpoint's 'alphas_cumprod' buffer?"
        )
    if not bool((ac[1:] < ac[:-1]).all()):
        raise ShapeError("alphas_cumprod must decrease strictly with the timestep (noise grows with t)")
    return ac


def betas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Invert :func:`alphas_cumprod_from_betas`: float64 [T] with β_0 = 1 − ᾱ_0, β_t = 1 − ᾱ_t / ᾱ_{t−1}."""
    ac = check_alphas_cumprod(alphas_cumprod)
    prev = torch.cat([ac.new_ones(1), ac[:-1]])
    return 1.0 - ac / prev


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """σ_t = sqrt((1 − ᾱ_t) / ᾱ_t), float64 [T], increasing with t."""
    ac = check_alphas_cumprod(alphas_cumprod)
    return ((1.0 - ac) / ac).sqrt()


def sigma_to_t(sigma: torch.Tensor, sigma_table: torch.Tensor, quantize: bool = False) -> torch.Tensor:
    """Continuous training timestep for ``sigma`` by linear interpolation in log σ (k-diffusion ``sigma_to_t``).

    Args:
        sigma: float, any shape, > 0. Values outside the table clamp to t = 0 or T − 1.
        sigma_table: float [T] increasing σ of the training timesteps (:func:`sigmas_from_alphas_cumprod`).
        quantize: round to the nearest training step in log σ (ComfyUI ``ModelSamplingDiscrete.timestep``).

    Returns:
        float64 timesteps shaped like ``sigma``, in [0, T − 1].
    """
    sigma = torch.as_tensor(sigma)
    log_table = sigma_table.to(device=sigma.device, dtype=torch.float64).log()
    log_sigma = sigma.to(torch.float64).clamp_min(torch.finfo(torch.float64).tiny).log()
    dists = log_sigma.reshape(-1)[None, :] - log_table[:, None]  # [T, N]
    if quantize:
        return dists.abs().argmin(dim=0).to(torch.float64).reshape(sigma.shape)
    num = log_table.shape[0]
    low = (dists >= 0).cumsum(dim=0).argmax(dim=0).clamp(max=num - 2)
    high = low + 1
    w = (log_table[low] - log_sigma.reshape(-1)) / (log_table[low] - log_table[high])
    w = w.clamp(0.0, 1.0)
    return ((1.0 - w) * low + w * high).reshape(sigma.shape)


def t_to_sigma(t: torch.Tensor, sigma_table: torch.Tensor) -> torch.Tensor:
    """σ at continuous timestep ``t`` by linear interpolation in log σ (k-diffusion ``t_to_sigma``); float64."""
    t = torch.as_tensor(t, dtype=torch.float64)
    log_table = sigma_table.to(device=t.device, dtype=torch.float64).log()
    t = t.clamp(0, log_table.shape[0] - 1)
    low, high = t.floor().long(), t.ceil().long()
    w = t - low
    return ((1.0 - w) * log_table[low] + w * log_table[high]).exp()


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = KARRAS_RHO) -> torch.Tensor:
    """Karras et al. (2022) eq. (5) noise levels, float32 [num_steps + 1], decreasing, ending with 0.

    Same as k-diffusion ``get_sigmas_karras`` (ComfyUI's ``karras`` scheduler).
    """
    _check_steps(num_steps)
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def normal_sigmas(num_steps: int, sigma_table: torch.Tensor) -> torch.Tensor:
    """Noise levels at timesteps evenly spaced from T − 1 down to 0, float32 [num_steps + 1], ending with 0.

    k-diffusion ``DiscreteSchedule.get_sigmas`` / ComfyUI's ``normal`` scheduler: σ at ``linspace(T−1, 0, n)``
    interpolated in log σ.
    """
    _check_steps(num_steps)
    ts = torch.linspace(sigma_table.shape[0] - 1, 0, num_steps, dtype=torch.float64)
    sigmas = t_to_sigma(ts, sigma_table.cpu())
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def ddim_timesteps(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """MVDream's ``DDIMSampler`` timesteps, int64 [num_steps], decreasing: 50 steps are 981, 961, …, 1.

    diffusers ``DDIMScheduler`` "leading" spacing with ``steps_offset=1``: ``arange(S)·(T // S) + 1``, reversed.
    MVDream's own ``range(0, T, T // S) + 1`` yields more than S timesteps when S does not divide T; this runs exactly S.
    """
    _check_steps(num_steps)
    if num_steps > num_train_timesteps:
        raise ConfigError(f"DDIM runs at most {num_train_timesteps} steps (one per training timestep), got {num_steps}; "
                          "use fewer steps or a larger denoise")
    return (torch.arange(num_steps, dtype=torch.int64) * (num_train_timesteps // num_steps) + 1).flip(0)


def ddim_sigmas(num_steps: int, sigma_table: torch.Tensor) -> torch.Tensor:
    """DDIM (η = 0) as a sigma schedule: σ at :func:`ddim_timesteps`, then σ(ᾱ_0), float32 [num_steps + 1].

    The last value is not 0: MVDream's sampler (``set_alpha_to_one=False``) ends on ᾱ_0, the least noisy training
    step; the sampler returns the DDPM latent there (:func:`ddpm_latent`).
    """
    timesteps = ddim_timesteps(num_steps, sigma_table.shape[0])
    table = sigma_table.detach().cpu()
    return torch.cat([table[timesteps], table[:1]]).to(torch.float32)


def ddpm_latent(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The DDPM latent ``sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·eps`` of a sigma-space latent ``x`` at ``sigma`` (= x at σ = 0)."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    return x / (sigma**2 + 1.0).sqrt()


SIGMA_SCHEDULES = ("karras", "normal", "ddim")


def make_sigmas(kind: str, num_steps: int, sigma_table: torch.Tensor) -> torch.Tensor:
    """Sigmas for ``num_steps`` steps: ``kind`` is one of :data:`SIGMA_SCHEDULES`; float32 [num_steps + 1]."""
    if kind == "karras":
        return karras_sigmas(num_steps, float(sigma_table.min()), float(sigma_table.max()))
    if kind == "normal":
        return normal_sigmas(num_steps, sigma_table)
    if kind == "ddim":
        return ddim_sigmas(num_steps, sigma_table)
    raise ConfigError(f"unknown sigma schedule {kind!r}; choose one of {list(SIGMA_SCHEDULES)}")


def full_schedule_steps(steps: int, denoise: float = 1.0) -> int:
    """Length of the schedule whose last ``steps`` steps a partial edit runs: ``int(steps / denoise)``.

    ComfyUI's one rule (``comfy_extras/nodes_custom_sampler.BasicScheduler`` and ``comfy/samplers.KSampler.set_steps``):
    ``denoise`` 1 gives ``steps``; below 1 the schedule is stretched to ``int(steps / denoise)`` steps (floor, not round)
    and only its tail ``sigmas[-(steps + 1):]`` is run, so the edit starts below σ_max.

    Args:
        steps: steps actually run, ≥ 1.
        denoise: fraction of the schedule to run, in (0, 1].

    Returns:
        int ≥ ``steps``.
    """
    _check_steps(steps)
    if not (0.0 < denoise <= 1.0):  # also refuses NaN
        raise ConfigError(f"denoise must be in (0, 1], got {denoise}; use 1.0 to sample from pure noise")
    return steps if denoise >= 1.0 else int(steps / denoise)


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {num_steps!r}")


# ----------------------------------------------------------------------------------------------- the denoiser


class MVDenoiser:
    """MVDream's eps UNet as a sigma-space multi-view denoiser with classifier-free guidance.

    ``denoiser(x, sigma)`` returns the CFG'd x0 estimate, the k-diffusion model contract (``sample_*(model, x, sigmas)``).
    One call evaluates uncond and cond in ONE UNet batch, ``[uncond (B·V), cond (B·V)]``: every block of V consecutive
    rows is one object's views, so the joint attention always sees all of them.

    Args:
        model: an object with ``predict_noise(latents, timesteps, text_embeddings, cameras)``, ``alphas_cumprod``
            (float [T]) and ``num_views`` (``MVDreamModel``).
        conditioning: text + cameras for B objects (:func:`~dreamedit3d_core.prompts.compose_prompt`).
        cfg: guidance scale s in ``uncond + s·(cond − uncond)`` (on x0, which equals CFG on eps at fixed x, σ).
        post_cfg_hooks: :data:`GuidanceHook` functions applied after CFG at every call, in order.
        quantize_timesteps: feed the UNet the nearest integer training timestep (ComfyUI's behaviour) instead of
            the log-σ interpolated one (k-diffusion's default).
    """

    def __init__(
        self,
        model: Any,
        conditioning: MVConditioning,
        cfg: float = 7.5,
        post_cfg_hooks: Sequence[GuidanceHook] = (),
        quantize_timesteps: bool = False,
    ):
        if not math.isfinite(cfg):
            raise ConfigError(f"cfg must be a finite number, got {cfg}")
        model_views = int(getattr(model, "num_views", conditioning.num_views))
        if conditioning.num_views != model_views:
            raise ConfigError(
                f"conditioning was made for {conditioning.num_views} views but the model denoises {model_views} "
                "jointly; compose the prompt with this model"
            )
        self.model = model
        self.conditioning = conditioning
        self.cfg = float(cfg)
        self.post_cfg_hooks = tuple(post_cfg_hooks)
        self.quantize_timesteps = quantize_timesteps
        self.sigma_table = sigmas_from_alphas_cumprod(torch.as_tensor(model.alphas_cumprod).detach().cpu())
        self._tables = {}  # sigma table per device: no host-to-device copy (and no sync) per step

    @property
    def num_views(self) -> int:
        return self.conditioning.num_views

    @property
    def sigma_min(self) -> float:
        return float(self.sigma_table[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigma_table[-1])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Training timestep (float64) for ``sigma``, interpolated or quantized per ``quantize_timesteps``."""
        table = self._tables.get(sigma.device)
        if table is None:
            table = self._tables[sigma.device] = self.sigma_table.to(sigma.device)
        return sigma_to_t(sigma, table, quantize=self.quantize_timesteps)

    def predict_eps(self, x_in: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor, cameras: torch.Tensor):
        """One UNet call: eps for already-scaled inputs ``x_in`` [N, 4, h, w] at per-row ``sigma`` [N]."""
        dtype = getattr(self.model, "dtype", x_in.dtype)
        t = self.timestep(sigma.detach()).to(device=x_in.device, dtype=torch.float32)
        eps = self.model.predict_noise(x_in.to(dtype), t, text.to(device=x_in.device, dtype=dtype),
                                       cameras.to(device=x_in.device, dtype=dtype))
        return eps.to(x_in.dtype)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cfg_rule: Optional[GuidanceHook] = None,
                 post_cfg_hooks: Sequence[GuidanceHook] = (), needs_uncond: bool = False, **_: Any) -> torch.Tensor:
        """Guided x0 for noisy latents.

        Args:
            x: float [B·V, 4, h, w] noisy latents in sigma space (x0 + σ·noise), view-contiguous.
            sigma: float scalar or [B·V] noise level per row (the V rows of one object share it).
            cfg_rule: replaces plain CFG for this call (its ``GuidanceStep.denoised`` is the plain CFG result).
            post_cfg_hooks: run after those given at construction, in order.
            needs_uncond: evaluate the unconditional half even at cfg 1 without hooks (ComfyUI's
                ``disable_cfg1_optimization``). Other keyword arguments (k-diffusion ``extra_args``) are ignored.

        Returns:
            float [B·V, 4, h, w] denoised x0, dtype of ``x``.
        """
        cond = self.conditioning
        n = cond.cond.shape[0]
        if x.ndim != 4 or x.shape[0] != n:
            raise ShapeError(
                f"latents must be [{n}, C, h, w] ({cond.batch_size} object(s) × {cond.num_views} views), "
                f"got {list(x.shape)}"
            )
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        sigma = sigma.reshape(-1).expand(n) if sigma.numel() == 1 else sigma.reshape(n)
        sig4 = sigma.to(x.dtype)[:, None, None, None]
        x_in = x / (sig4**2 + 1.0).sqrt()  # c_in: the DDPM latent sqrt(ᾱ)x0 + sqrt(1−ᾱ)eps
        hooks = self.post_cfg_hooks + tuple(post_cfg_hooks)
        if not math.isclose(self.cfg, 1.0) or hooks or cfg_rule is not None or needs_uncond:
            eps = self.predict_eps(torch.cat([x_in, x_in]), torch.cat([sigma, sigma]),
                                   torch.cat([cond.uncond, cond.cond]), torch.cat([cond.cameras, cond.cameras]))
            uncond_x0, cond_x0 = x - sig4 * eps[:n], x - sig4 * eps[n:]
            denoised = uncond_x0 + (cond_x0 - uncond_x0) * self.cfg
        else:
            cond_x0 = x - sig4 * self.predict_eps(x_in, sigma, cond.cond, cond.cameras)
            uncond_x0, denoised = None, cond_x0
        step = GuidanceStep(x=x, sigma=sigma, cond_x0=cond_x0, uncond_x0=uncond_x0, cfg=self.cfg, denoised=denoised)
        for hook in ((cfg_rule,) if cfg_rule is not None else ()) + hooks:
            step = replace(step, denoised=hook(step))
        return step.denoised
