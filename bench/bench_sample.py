"""Seconds per 4-view sample at real size: our multi-view sampling path vs the stock diffusers UNet on the same batch.

Model: the full SD2.1-base UNet config that MVDream sd-v2.1-base-4view uses (865 M parameters, camera MLP, random
weights: no real weights exist here; speed does not depend on their values). One UNet evaluation is the CFG batch of
8 images ([uncond × 4 views, cond × 4 views], 4×32×32 latents for 256 px views).

Scenarios (same weights, same noise, same conditioning, same DDIM timesteps):
  ours   ``dreamedit3d_core.sampling.sample_latents`` (MVDenoiser: CFG in one batch, joint attn1 over the 4 views
         via MultiViewAttnProcessor, per-view attn2) — what MVSample and the CLI run.
  stock  a bare loop over diffusers' DDIMScheduler calling the same UNet with diffusers' default AttnProcessor2_0
         (every image attends only to itself): the floor our wrapper and the joint attention are measured against.
  decode the SD VAE decoding the 4 views (full SD2.1 VAE config, random weights), once per sample.

CPU runs are truncated (few steps, printed) and extrapolated to the requested steps; CUDA runs the full schedule in
bf16 with SDPA, channels-last, and optionally torch.compile (``--compile reduce-overhead`` adds CUDA graphs).

    python -m bench.bench_sample                       # CPU: 2 timed steps, extrapolated to 30
    python -m bench.bench_sample --device cuda --steps 50 --compile max-autotune --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NUM_VIEWS = 4
TEXT_DIM = 1024  # OpenCLIP ViT-H width
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--steps", type=int, default=30, help="DDIM steps per sample (the figure reported)")
    p.add_argument("--cpu-steps", type=int, default=2, help="steps actually timed on CPU (then extrapolated)")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--repeats", type=int, default=5, help="timed samples per scenario on CUDA (median reported)")
    p.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead", "max-autotune"],
                   help="torch.compile mode for the UNet (CUDA); reduce-overhead uses CUDA graphs")
    p.add_argument("--no-channels-last", action="store_true", help="keep NCHW weights on CUDA")
    p.add_argument("--no-decode", action="store_true", help="skip the VAE decode row")
    p.add_argument("--tiny", action="store_true", help="tiny UNet/VAE (plumbing check only; numbers mean nothing)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return p.parse_args(argv)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(args, device: torch.device, dtype: torch.dtype):
    """An ``MVDreamModel`` around a real-size (or tiny) UNet + VAE with random weights; no text tower needed."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dreamedit3d_core.mvdream.attention import set_multiview_attention
    from dreamedit3d_core.mvdream.model import MVDreamModel
    from dreamedit3d_core.schedule import sd21_alphas_cumprod
    from dreamedit3d_core.testing.tiny import SD21_UNET, SD21_VAE, TINY_UNET, TINY_VAE

    unet_arch, vae_arch = (TINY_UNET, TINY_VAE) if args.tiny else (SD21_UNET, SD21_VAE)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_arch.diffusers_config(sample_size=args.resolution // 8))
    vae = None if args.no_decode else AutoencoderKL(**vae_arch.diffusers_config(sample_size=args.resolution))
    for module in (unet, vae):
        if module is not None:
            torch.nn.Module.to(module, device=device, dtype=dtype)
            module.eval().requires_grad_(False)
            if device.type == "cuda" and not args.no_channels_last:
                module.to(memory_format=torch.channels_last)
    set_multiview_attention(unet, NUM_VIEWS)
    model = MVDreamModel(unet, vae, None, None, sd21_alphas_cumprod(), num_views=NUM_VIEWS, source="random")
    return model, unet_arch.context_dim


def conditioning(device, dtype, text_dim: int):
    from dreamedit3d_core.cameras import get_camera
    from dreamedit3d_core.types import MVConditioning

    g = torch.Generator().manual_seed(1)
    cond = torch.randn(1, 77, text_dim, generator=g).repeat(NUM_VIEWS, 1, 1)
    uncond = torch.randn(1, 77, text_dim, generator=g).repeat(NUM_VIEWS, 1, 1)
    return MVConditioning(cond=cond, uncond=uncond, cameras=get_camera(NUM_VIEWS, 15.0, 90.0), num_views=NUM_VIEWS,
                          prompts=("bench",)).to(device=device, dtype=dtype)


def stock_loop(unet, cond, noise, steps: int, cfg: float, alphas_cumprod):
    """The floor: diffusers' DDIMScheduler + the bare UNet with its default attention, one CFG batch per step."""
    from diffusers import DDIMScheduler

    from dreamedit3d_core.schedule import betas_from_alphas_cumprod

    # MVDream's DDIMSampler as diffusers config (mvdream.md §5), on the same ᾱ table
    sched = DDIMScheduler(num_train_timesteps=alphas_cumprod.shape[0],
                          trained_betas=betas_from_alphas_cumprod(alphas_cumprod.cpu()).numpy(), steps_offset=1,
                          timestep_spacing="leading", set_alpha_to_one=False, clip_sample=False)
    sched.set_timesteps(steps)
    text = torch.cat([cond.uncond, cond.cond])
    cams = torch.cat([cond.cameras, cond.cameras])
    z = noise
    n = z.shape[0]
    dtype = next(unet.parameters()).dtype
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(torch.cat([z, z]).to(dtype), t.to(z.device), encoder_hidden_states=text,
                       class_labels=cams, return_dict=False)[0].float()
            eps = eps[:n] + cfg * (eps[n:] - eps[:n])
            z = sched.step(eps, t, z, eta=0.0).prev_sample
    return z


def set_attention(unet, stock: bool) -> None:
    from diffusers.models.attention_processor import AttnProcessor2_0

    from dreamedit3d_core.mvdream.attention import set_multiview_attention

    base = unet._orig_mod if hasattr(unet, "_orig_mod") else unet
    if stock:
        base.set_attn_processor(AttnProcessor2_0())
    else:
        set_multiview_attention(base, NUM_VIEWS)


def time_it(fn, device, repeats: int) -> tuple[list[float], list[float]]:
    """Wall seconds and this process's CPU seconds per call (CPU time shows the work on a shared, loaded machine)."""
    wall, cpu = [], []
    for _ in range(repeats):
        sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if args.resolution % 8:
        raise SystemExit(f"--resolution must be a multiple of 8, got {args.resolution}")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    import diffusers

    from dreamedit3d_core.sampling import decode_views, sample_latents

    model, text_dim = build_model(args, device, dtype)
    if args.compile != "none":
        model.unet = torch.compile(model.unet, mode=None if args.compile == "default" else args.compile)
    cond = conditioning(device, dtype, text_dim)
    h = args.resolution // 8
    noise = torch.randn(NUM_VIEWS, 4, h, h, generator=torch.Generator().manual_seed(2)).to(device)
    truncated = device.type == "cpu" and args.cpu_steps < args.steps
    run_steps = args.cpu_steps if truncated else args.steps
    repeats = 1 if device.type == "cpu" else args.repeats
    params = sum(p.numel() for p in model.unet.parameters()) / 1e6

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# device={device} ({name}) threads={torch.get_num_threads()} torch={torch.__version__} "
          f"diffusers={diffusers.__version__} dtype={str(dtype).replace('torch.', '')} commit={git_commit()} "
          f"model={'tiny' if args.tiny else 'real-size'} UNet ({params:.0f} M params, random weights) "
          f"compile={args.compile} channels_last={device.type == 'cuda' and not args.no_channels_last}")
    print(f"# 4 views x {args.resolution}px, CFG {args.cfg} (UNet batch 8), DDIM {args.steps} steps"
          + (f"; TRUNCATED on CPU: {run_steps} steps timed, figures extrapolated to {args.steps}" if truncated else ""))

    def ours(steps):
        sample_latents(model, cond, "ddim", steps, args.cfg, noise=noise)

    def stock(steps):
        stock_loop(model.unet, cond, noise, steps, args.cfg, model.alphas_cumprod)

    rows = []
    baseline = None
    for label, fn, is_stock in (("stock", stock, True), ("ours", ours, False)):
        set_attention(model.unet, stock=is_stock)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fn(run_steps if device.type == "cuda" else 1)  # warm-up (CUDA: whole schedule, for compile/autotune)
        times, cpu_times = time_it(lambda: fn(run_steps), device, repeats)
        per_step = statistics.median(times) / run_steps
        per_sample = per_step * args.steps
        baseline = per_sample if is_stock else baseline
        rows.append({
            "scenario": label, "steps_timed": run_steps, "steps_reported": args.steps,
            "median_s_per_sample": per_sample, "ms_per_step": per_step * 1e3,
            "cpu_s_per_sample": statistics.median(cpu_times) / run_steps * args.steps,
            "unet_evals_per_s": 1.0 / per_step,
            "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan"),
            "vs_stock": per_sample / baseline if baseline else float("nan"),
            "extrapolated": truncated,
        })
    if not args.no_decode:
        latents = torch.randn(NUM_VIEWS, 4, h, h, generator=torch.Generator().manual_seed(3)).to(device)
        decode_views(model, latents, NUM_VIEWS)  # warm-up
        times, cpu_times = time_it(lambda: decode_views(model, latents, NUM_VIEWS), device, repeats)
        rows.append({"scenario": "decode", "steps_timed": 0, "steps_reported": 0,
                     "median_s_per_sample": statistics.median(times), "ms_per_step": float("nan"),
                     "cpu_s_per_sample": statistics.median(cpu_times),
                     "unet_evals_per_s": float("nan"), "peak_mem_gb": float("nan"), "vs_stock": float("nan"),
                     "extrapolated": False})

    print(f"{'scenario':<8} {'s_per_sample':>12} {'cpu_s_per_sample':>16} {'ms_per_step':>11} {'unet_evals_per_s':>16} "
          f"{'peak_mem_gb':>11} {'vs_stock':>8}")
    for r in rows:
        print(f"{r['scenario']:<8} {r['median_s_per_sample']:>12.4g} {r['cpu_s_per_sample']:>16.4g} {r['ms_per_step']:>11.4g} "
              f"{r['unet_evals_per_s']:>16.3g} {r['peak_mem_gb']:>11.3g} {r['vs_stock']:>8.3f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
