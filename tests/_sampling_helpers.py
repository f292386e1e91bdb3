"""Test helpers for prompts and sampling: a toy eps model with a known x0, and the real ComfyUI tree in-process."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from dreamedit3d_core.schedule import sd21_alphas_cumprod, sigmas_from_alphas_cumprod, t_to_sigma
from dreamedit3d_core.types import MVConditioning

REPO = Path(__file__).resolve().parents[1]


class KnownX0Model:
    """An ``MVDreamModel`` stand-in whose eps always implies the same x0 for a given text.

    ``predict_noise(z_t, t, text, cams)`` returns ``eps = (z_t − sqrt(ᾱ_t)·x0) / sqrt(1 − ᾱ_t)`` with
    ``x0 = target + text_shift · mean(text)`` (so cond and uncond disagree and CFG is visible), ᾱ_t from the SD2.1
    table interpolated in log σ like the denoiser. Every sampler that is exact for a constant denoiser must land on
    ``x0_cfg = x0_u + s·(x0_c − x0_u)``.
    """

    num_views = 4
    dtype = torch.float32
    device = torch.device("cpu")

    def __init__(self, target: torch.Tensor, text_shift: float = 1.0):
        self.target = target
        self.text_shift = text_shift
        self.alphas_cumprod = sd21_alphas_cumprod()
        self.sigma_table = sigmas_from_alphas_cumprod(self.alphas_cumprod)
        self.calls = []

    def x0_for(self, text: torch.Tensor) -> torch.Tensor:
        target = self.target.repeat(text.shape[0] // self.target.shape[0], 1, 1, 1)  # both CFG halves
        return target + self.text_shift * text.mean(dim=(1, 2)).to(self.target.dtype)[:, None, None, None]

    def predict_noise(self, latents, timesteps, text_embeddings, cameras):
        self.calls.append(int(latents.shape[0]))
        sigma = t_to_sigma(timesteps.to(torch.float64), self.sigma_table).to(latents.dtype)[:, None, None, None]
        a = 1.0 / (sigma**2 + 1.0)
        x0 = self.x0_for(text_embeddings)
        return (latents - a.sqrt() * x0) / (1.0 - a).sqrt()

    def decode_latents(self, latents):
        rgb = torch.sigmoid(latents[:, :3])
        return torch.nn.functional.interpolate(rgb, scale_factor=8, mode="nearest")


def toy_conditioning(batch: int = 1, views: int = 4, cond_value: float = 0.5, uncond_value: float = -0.25,
                     tokens: int = 77, dim: int = 8) -> MVConditioning:
    from dreamedit3d_core.cameras import get_camera

    n = batch * views
    return MVConditioning(
        cond=torch.full((n, tokens, dim), cond_value), uncond=torch.full((n, tokens, dim), uncond_value),
        cameras=get_camera(views, 15.0, 90.0).repeat(batch, 1), num_views=views,
        prompts=tuple(f"p{i}" for i in range(batch)), negative_prompt="",
    )


def diffusers_ddim_loop(model, cond, noise, steps, cfg):
    """MVDream's sampler written directly on diffusers' DDIMScheduler and the eps model (the reference)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                          timestep_spacing="leading", set_alpha_to_one=False, clip_sample=False)
    sched.set_timesteps(steps)
    z = noise.clone()
    n = z.shape[0]
    text = torch.cat([cond.uncond, cond.cond])
    cams = torch.cat([cond.cameras, cond.cameras])
    for t in sched.timesteps:
        with torch.no_grad():
            eps = model.predict_noise(torch.cat([z, z]), torch.full((2 * n,), int(t)), text, cams)
        eps = eps[:n] + cfg * (eps[n:] - eps[:n])
        z = sched.step(eps, t, z, eta=0.0).prev_sample
    return z


# ------------------------------------------------------------------------------------------ real ComfyUI tree


def comfy_root() -> Path | None:
    root = Path(os.environ.get("COMFYUI_PATH", REPO / ".host" / "comfyui"))
    return root if (root / "comfy" / "samplers.py").is_file() else None


def import_comfy():
    """Import the real ComfyUI tree in-process (comfyui.md §9.5); returns ``(samplers, model_sampling, k_sampling)``."""
    root = comfy_root()
    if root is None:
        raise FileNotFoundError("no ComfyUI tree: set COMFYUI_PATH or run tools/setup_env.sh")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import utils.extra_config  # noqa: F401  (binds the tree's utils package before comfy/utils.py shadows it)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401
    import comfy.k_diffusion.sampling as k_sampling
    import comfy.model_sampling as model_sampling
    import comfy.samplers as samplers

    return samplers, model_sampling, k_sampling


def comfy_model_sampling(model_sampling_module, alphas_cumprod: torch.Tensor):
    """ComfyUI's EPS ModelSamplingDiscrete on ``alphas_cumprod`` (what nodes/_compat.make_model_sampling builds)."""
    from dreamedit3d_core.schedule import betas_from_alphas_cumprod

    cls = type("MVDreamModelSampling", (model_sampling_module.ModelSamplingDiscrete, model_sampling_module.EPS), {})
    sampling = cls()
    sampling._register_schedule(given_betas=betas_from_alphas_cumprod(alphas_cumprod.cpu()))
    return sampling


def load_sampler_bridge():
    """nodes/sampler_bridge.py under its own module name: the ComfyUI tree's top-level ``nodes.py`` owns ``nodes``."""
    import importlib.util

    name = "dreamedit3d_sampler_bridge"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "nodes" / "sampler_bridge.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
