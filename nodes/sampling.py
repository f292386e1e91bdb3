"""MVScheduler (SIGMAS without a core MODEL) and MVSample (any core SAMPLER + SIGMAS on the four views jointly)."""

from __future__ import annotations

import torch

from ..dreamedit3d_core.errors import ShapeError
from ._compat import (calculate_sigmas, compute_device, intermediate_device, io, make_model_sampling,
                      model_on_compute_device, scheduler_names, throw_if_interrupted, ui)
from .progress import ComfyProgress, latent_preview_rgb
from .sockets import MVConditioningSocket, MVDreamModelSocket, MVSamples, MVSamplesSocket, to_comfy_image

CATEGORY = "DreamEdit3D/sample"


def _alphas_cumprod(model) -> torch.Tensor:
    if model is not None:
        return model.alphas_cumprod
    from ..dreamedit3d_core.schedule import sd21_alphas_cumprod

    return sd21_alphas_cumprod()


class MVScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        names = scheduler_names()
        return io.Schema(
            node_id="DreamEdit3D_MVScheduler",
            display_name="MVDream Scheduler (DreamEdit3D)",
            category=CATEGORY,
            description="SIGMAS for MVSample from the core scheduler names, using the checkpoint's own noise schedule "
                        "(SD2.1-base when no model is connected). Core BasicScheduler needs a MODEL; this does not.",
            inputs=[
                io.Combo.Input("scheduler", options=names, default="karras" if "karras" in names else names[0],
                               tooltip="Core scheduler name."),
                io.Int.Input("steps", default=30, min=1, max=1000, tooltip="Sampling steps."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule to run (below 1 edits an init latent)."),
                MVDreamModelSocket.Input("model", optional=True, tooltip="Use this checkpoint's alphas_cumprod."),
            ],
            outputs=[io.Sigmas.Output("out_sigmas", display_name="sigmas", tooltip="Descending sigmas, steps+1 long, ending at 0.")],
        )

    @classmethod
    def execute(cls, scheduler, steps, denoise=1.0, model=None) -> io.NodeOutput:
        from ..dreamedit3d_core.schedule import full_schedule_steps

        if denoise <= 0.0:  # as ComfyUI's BasicScheduler: nothing to run
            return io.NodeOutput(torch.FloatTensor([]))
        total = full_schedule_steps(int(steps), float(denoise))  # ComfyUI's rule, kept in one place (the core)
        sigmas = calculate_sigmas(make_model_sampling(_alphas_cumprod(model)), scheduler, total)
        return io.NodeOutput(sigmas[-(int(steps) + 1):])


class MVSample(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamEdit3D_MVSample",
            display_name="MVDream Sample 4 Views (DreamEdit3D)",
            category=CATEGORY,
            description="Samples the four views of an object jointly with any core SAMPLER (KSamplerSelect) and SIGMAS "
                        "(MVScheduler, KarrasScheduler, ...), classifier-free guidance and MVDream's cameras.",
            inputs=[
                MVDreamModelSocket.Input("model", tooltip="The (personalised) MVDream model."),
                MVConditioningSocket.Input("positive", tooltip="From ComposePrompt: the prompt (and its negative)."),
                io.Sampler.Input("sampler", tooltip="A core sampler (KSamplerSelect)."),
                io.Sigmas.Input("sigmas", tooltip="The noise levels to step through (MVScheduler or a core scheduler)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise (ignored when a NOISE is connected)."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale (DreamEdit3D uses 7.5)."),
                io.Int.Input("resolution", default=256, min=64, max=1024, step=8,
                             tooltip="View size in pixels when no init latent is given (MVDream: 256)."),
                MVConditioningSocket.Input("negative", optional=True,
                                           tooltip="Another ComposePrompt whose prompt replaces the negative text."),
                io.Noise.Input("noise", optional=True, tooltip="A core NOISE (RandomNoise) instead of the seed."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Init latent [4,4,h,w] for partial edits (start the SIGMAS below the top)."),
            ],
            outputs=[
                io.Latent.Output("out_latent", display_name="latent", tooltip="The sampled latents [4,4,H/8,W/8]."),
                io.Image.Output("out_images", display_name="images", tooltip="The decoded views [4,H,W,3] (front, right, back, left); "
                                                                         "N*4 for N prompts, one edit after another."),
                MVSamplesSocket.Output("out_samples", display_name="samples",
                                       tooltip="The views with the record of what made them (prompts, seed, sampler, "
                                               "sigmas, model and token hashes), for SaveViews / ContactSheet when the "
                                               "images pass through other nodes first."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, model, positive, sampler, sigmas, seed, cfg, resolution=256, negative=None, noise=None,
                latent=None) -> io.NodeOutput:
        from ..dreamedit3d_core.sampling import decode_views
        from . import provenance, sampler_bridge

        conditioning = _with_negative(positive, negative)
        views = conditioning.num_views
        progress = ComfyProgress(max(int(sigmas.numel()) - 1, 1), cls.hidden.unique_id)

        def callback(step, x0, x, total_steps):
            throw_if_interrupted()
            progress.update(step + 1, total_steps, preview=latent_preview_rgb(x0))

        # the UNet and the VAE on the compute device through ComfyUI (it may have offloaded either since the loader)
        with model_on_compute_device(model, ("unet", "vae")):
            # the latent shape, the seed's noise and the SIGMAS check are the core's and the bridge's, not redone here
            latents, seed = sampler_bridge.sample_with_comfy(
                model, conditioning, sampler, sigmas, float(cfg), make_model_sampling(model.alphas_cumprod),
                compute_device(), seed=int(seed), noise=noise, latent=latent, resolution=int(resolution),
                callback=callback)
            images = to_comfy_image(decode_views(model, latents, views))
        # what made these views travels with them: on the IMAGE itself and on MV_SAMPLES (nodes/provenance.py)
        record = provenance.sample_record(
            conditioning, model, int(seed), provenance.sampler_name(sampler, cls.hidden.prompt, cls.hidden.unique_id),
            sigmas, float(cfg))
        provenance.attach(images, record)
        # LATENTs live on ComfyUI's intermediate device (the CPU, or the GPU under --gpu-only), as core KSampler's do
        out_latent = {"samples": latents.detach().to(device=intermediate_device(), dtype=torch.float32)}
        return io.NodeOutput(out_latent, images, MVSamples(images=images, record=record),
                             ui=ui.PreviewImage(images, cls=cls))


def _with_negative(positive, negative):
    """``positive``, with ``negative``'s prompt as its unconditional half when a negative conditioning is connected."""
    if negative is None:
        return positive
    from dataclasses import replace

    if negative.cond.shape != positive.cond.shape:
        raise ShapeError(f"negative conditioning {list(negative.cond.shape)} does not match positive "
                         f"{list(positive.cond.shape)}: use the same number of prompts and views")
    return replace(positive, uncond=negative.cond.to(positive.cond), negative_prompt=" | ".join(negative.prompts))
