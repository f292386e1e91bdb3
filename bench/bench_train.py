"""Step time and peak memory of personalisation at real size: phase 1 (token rows) and phase 2 (full FT vs LoRA,
with and without gradient checkpointing).

Model: the real MVDream sd-v2.1-base-4view configuration (UNet 865 M, OpenCLIP-H text tower 23 layers, SD VAE) with
random weights (no real weights exist here; speed and memory do not depend on their values). Data: 4 views at
256 px with two component masks; the attention-alignment loss is on (λ = 1e-2), so the 16×16 cross-attention maps
are recorded in the same forward pass. The timed path is the library's own entry points
(``train_textual_inversion`` / ``finetune``), steps timed through the progress hook.

Each scenario runs in its own subprocess so CPU peak memory (max RSS, model included) is per scenario; on CUDA
peak memory is ``torch.cuda.max_memory_allocated`` over the run (weights, grads, optimiser state, activations).

Usage::

    python -m bench.bench_train                       # CPU: phase 1 + LoRA scenarios, 2 steps each (slow: minutes)
    python -m bench.bench_train --device cuda --mixed-precision bf16 --steps 10
    python -m bench.bench_train --device cuda --scenarios phase2-full-ckpt --optimizer adamw8bit
    python -m bench.bench_train --json rows.json
    python -m bench.bench_train --tiny                # every scenario on the tiny test model (smoke run)

Targets (issue 6): both phases fit a 24 GB GPU (full fine-tuning with checkpointing and an 8-bit or fused
optimiser; far less with LoRA); the default 400 + 400 steps take <= 2 minutes together on one H100.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SCENARIOS = {
    # name: (phase, mode, gradient checkpointing)
    "phase1": (1, None, False),
    "phase2-lora": (2, "lora", False),
    "phase2-lora-ckpt": (2, "lora", True),
    "phase2-full": (2, "full", False),
    "phase2-full-ckpt": (2, "full", True),
}
CPU_DEFAULT = ("phase1", "phase2-lora", "phase2-lora-ckpt")  # full FT needs ~17 GB of RAM for weights+grads+Adam
SIZE, VIEWS = 256, 4


def build_real_size_model(device: str):
    """An MVDreamModel in the released sd-v2.1-base-4view configuration with random weights."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from dreamedit3d_core.mvdream.attention import set_multiview_attention
    from dreamedit3d_core.mvdream.layout import infer_architecture
    from dreamedit3d_core.mvdream.model import MVDreamModel
    from dreamedit3d_core.mvdream.tokenizer import MVTokenizer
    from dreamedit3d_core.schedule import schedule_buffers
    from dreamedit3d_core.testing.tiny import SD21_TEXT, SD21_UNET, SD21_VAE, released_layout

    arch = infer_architecture(released_layout(SD21_UNET, SD21_VAE, SD21_TEXT))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**arch.unet.diffusers_config(sample_size=SIZE // 8))
    vae = AutoencoderKL(**arch.vae.diffusers_config())
    text = CLIPTextModel(arch.text.transformers_config())
    for module in (unet, vae, text):
        torch.nn.Module.to(module, device=device, dtype=torch.float32)
        module.eval().requires_grad_(False)
    set_multiview_attention(unet, VIEWS)
    return MVDreamModel(unet, vae, text, MVTokenizer(), schedule_buffers()["alphas_cumprod"].double(),
                        num_views=VIEWS, model_hash="random-real-size")


def scene():
    """Four 256 px views of two coloured blocks and their masks (hat above, dog below)."""
    import torch

    from dreamedit3d_core.cameras import MVCameras
    from dreamedit3d_core.types import ComponentMasks, MultiViewRender

    hat = torch.zeros(VIEWS, SIZE, SIZE, dtype=torch.bool)
    dog = torch.zeros_like(hat)
    for v in range(VIEWS):
        hat[v, 30:110, 60 + 8 * v:190 + 8 * v] = True
        dog[v, 120:240, 70 - 8 * v:220 - 8 * v] = True
    rgb = torch.ones(VIEWS, 3, SIZE, SIZE)
    rgb = torch.where(hat[:, None], torch.tensor([0.9, 0.1, 0.1])[:, None, None], rgb)
    rgb = torch.where(dog[:, None], torch.tensor([0.1, 0.2, 0.8])[:, None, None], rgb)
    alpha = (hat | dog).float()[:, None]
    part = torch.full((VIEWS, SIZE, SIZE), -1, dtype=torch.long)
    part[hat], part[dog] = 0, 1
    render = MultiViewRender(rgb=rgb, alpha=alpha, depth=alpha, normals=torch.zeros(VIEWS, 3, SIZE, SIZE), part_id=part,
                             part_names=("hat", "dog"), cameras=MVCameras.mvdream_default())
    return render, ComponentMasks(masks=torch.stack([hat, dog]), names=("hat", "dog"))


def _worker(args) -> dict:
    import torch

    from dreamedit3d_core.personalize.finetune import FTConfig, finetune
    from dreamedit3d_core.personalize.textual_inversion import TIConfig, initial_embeddings, train_textual_inversion
    from dreamedit3d_core.progress import CallbackProgress
    from dreamedit3d_core.types import TokenSet

    phase, mode, ckpt = SCENARIOS[args.worker]
    device = args.device
    t0 = time.perf_counter()
    if args.tiny:
        from dreamedit3d_core.testing.tiny import load_tiny_mvdream

        model = load_tiny_mvdream(device=device)
    else:
        model = build_real_size_model(device)
    build_s = time.perf_counter() - t0
    render, masks = scene()
    stamps = []

    def on_update(step, total, preview, info):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    progress = CallbackProgress(on_update=on_update)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if phase == 1:
        train_textual_inversion(model, render, masks, TIConfig(steps=args.steps, mixed_precision=args.mixed_precision),
                                progress=progress)
    else:
        init = initial_embeddings(model, ("hat", "dog"), 2)
        tokens = TokenSet(tokens=("<hat>", "<dog>"), embeddings=init[:, None], components=("hat", "dog"))
        lr = 1e-4 if mode == "lora" else 2e-6
        finetune(model, render, masks, tokens,
                 FTConfig(steps=args.steps, mode=mode, lr=lr, gradient_checkpointing=ckpt,
                          mixed_precision=args.mixed_precision, optimizer=args.optimizer),
                 progress=progress)
    first = stamps[0] - start  # includes VAE encoding of the views and warm-up
    later = [b - a for a, b in zip(stamps, stamps[1:])]
    step_s = statistics.median(later) if later else first
    if device.startswith("cuda"):
        peak_gb = torch.cuda.max_memory_allocated() / 2**30
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        peak_gb = rss * 1024 / 2**30
    return {"scenario": args.worker, "step_s": step_s, "first_step_s": first, "timed_steps": len(later),
            "peak_mem_gb": peak_gb, "build_s": build_s}


def _header(args) -> str:
    import diffusers
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU {platform.processor() or platform.machine()} " \
          f"({torch.get_num_threads()} threads)"
    return (f"# device={dev} torch={torch.__version__} diffusers={diffusers.__version__} precision={args.mixed_precision} "
            f"optimizer={args.optimizer} commit={commit} "
            f"model={'tiny test model' if args.tiny else 'real-size sd-v2.1-base-4view (random weights)'} "
            f"views={VIEWS}x{SIZE}px steps={args.steps}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=None, help="steps per scenario (default 2 on CPU, 10 on CUDA)")
    p.add_argument("--scenarios", default=None, help=f"comma list of {list(SCENARIOS)}")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "adamw8bit"])
    p.add_argument("--json", default=None, help="write the rows to this file")
    p.add_argument("--tiny", action="store_true", help="the tiny test model instead (a smoke run of every scenario)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if args.device == "cpu" else 10
    if args.steps < 2:
        p.error("--steps must be at least 2 (the first step includes encoding and warm-up)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    default = CPU_DEFAULT if args.device == "cpu" and not args.tiny else list(SCENARIOS)
    names = args.scenarios.split(",") if args.scenarios else default
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    print(_header(args))
    if args.device == "cpu" and not args.tiny:
        print("# CPU: each step runs the full-size UNet forward+backward on 4 views; expect minutes per scenario")
    print(f"{'scenario':<18} {'step_s':>9} {'first_step_s':>13} {'timed_steps':>11} {'peak_mem_gb':>12} {'x400_steps_min':>15}")
    rows = []
    for name in names:
        cmd = [sys.executable, "-m", "bench.bench_train", "--worker", name, "--device", args.device, "--steps",
               str(args.steps), "--mixed-precision", args.mixed_precision, "--optimizer", args.optimizer] + (["--tiny"] if args.tiny else [])
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{name:<18} failed: {last}")
            rows.append({"scenario": name, "error": last})
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{name:<18} {row['step_s']:>9.2f} {row['first_step_s']:>13.2f} {row['timed_steps']:>11d} "
              f"{row['peak_mem_gb']:>12.2f} {row['step_s'] * 400 / 60:>15.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
