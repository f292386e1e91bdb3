"""Forward time and peak memory of the full-size MVDream UNet vs the stock diffusers SD2.1-base UNet.

Batch: 4 views x CFG (2 objects: uncond + cond) = 8 latents of 4x32x32 (256 px views), text [8, 77, 1024],
random weights in the real SD2.1-base configuration (865 M parameters). The MVDream UNet is our
``UNet2DConditionModel`` with the camera MLP and joint self-attention over the 4 views (4096 tokens per object);
the baseline is the stock UNet (``AttnProcessor2_0``, per-image attention over 1024 tokens) sharing the same weights.

Each scenario runs in its own subprocess so CPU peak memory (max RSS) is measured per scenario; on CUDA peak
memory is ``torch.cuda.max_memory_allocated`` (weights included) and the activation part (peak minus weights).

Usage::

    python -m bench.bench_unet                          # CPU fp32, 2 iterations (slow: tens of seconds per pass)
    python -m bench.bench_unet --device cuda --dtype bf16 --iters 20
    python -m bench.bench_unet --json rows.json

Target (issue 3, GPU, bf16, SDPA): MVDream time <= 1.15x and peak memory <= 1.1x the stock UNet's.
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

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
VIEWS, OBJECTS, LATENT = 4, 2, 32  # 4 views x (uncond, cond) at 256 px


def _build(kind: str, device: str, dtype_name: str):
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    from dreamedit3d_core.mvdream.attention import set_multiview_attention
    from dreamedit3d_core.mvdream.layout import infer_architecture
    from dreamedit3d_core.testing.tiny import SD21_TEXT, SD21_UNET, SD21_VAE, released_layout

    arch = infer_architecture(released_layout(SD21_UNET, SD21_VAE, SD21_TEXT))  # real config, from shapes
    config = arch.unet.diffusers_config(sample_size=LATENT)
    if kind == "stock":
        config.pop("class_embed_type")
        config.pop("projection_class_embeddings_input_dim")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config)
    if kind == "stock":
        unet.set_attn_processor(AttnProcessor2_0())
    else:
        set_multiview_attention(unet, VIEWS)
    dtype = getattr(torch, DTYPES[dtype_name])
    torch.nn.Module.to(unet, device=device, dtype=dtype)
    return unet.eval(), dtype


def _worker(args) -> dict:
    import torch

    from dreamedit3d_core.cameras import get_camera

    device = args.device
    unet, dtype = _build(args.worker, device, args.dtype)
    n = VIEWS * OBJECTS
    g = torch.Generator("cpu").manual_seed(1)
    latents = torch.randn(n, 4, LATENT, LATENT, generator=g).to(device, dtype)
    timesteps = torch.full((n,), 500, device=device)
    text = torch.randn(n, 77, 1024, generator=g).to(device, dtype)
    kwargs = {}
    if args.worker == "mvdream":
        kwargs = dict(class_labels=get_camera(VIEWS, 15, 90).repeat(OBJECTS, 1).to(device, dtype),
                      cross_attention_kwargs={"num_views": VIEWS})
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    weights_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    with torch.inference_mode():
        for _ in range(args.warmup):
            unet(latents, timesteps, encoder_hidden_states=text, **kwargs)
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.iters):
            start = time.perf_counter()
            unet(latents, timesteps, encoder_hidden_states=text, **kwargs)
            sync()
            times.append(time.perf_counter() - start)
    row = {"scenario": args.worker, "median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times),
           "iters": len(times), "weights_gb": weights_bytes / 2**30}
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        row.update(peak_mem_gb=peak / 2**30, activation_peak_gb=(peak - weights_bytes) / 2**30)
    else:
        row.update(peak_mem_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)  # KiB -> GiB
    return row


def _header(device: str, dtype: str) -> str:
    import diffusers
    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores, "
        name += f"{torch.get_num_threads()} torch threads)"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return (f"# bench_unet | device: {name} | torch {torch.__version__} | diffusers {diffusers.__version__} | "
            f"dtype {dtype} | commit {commit} | model: full-size SD2.1-base UNet, random weights | "
            f"batch {VIEWS} views x CFG = {VIEWS * OBJECTS} latents 4x{LATENT}x{LATENT}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--iters", type=int, default=None, help="timed passes (default 2 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed passes (default 1 on CPU, 5 on CUDA)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--worker", choices=("mvdream", "stock"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.iters = args.iters or (20 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)

    if args.worker:
        print(json.dumps(_worker(args)))
        return 0

    print(_header(args.device, args.dtype), flush=True)
    if not cuda:
        print("# note: fp32 on CPU is slow (the full UNet at batch 8 takes tens of seconds per pass); "
              "peak_mem_gb is the process max RSS (weights included)", flush=True)
    rows = []
    for scenario in ("stock", "mvdream"):
        cmd = [sys.executable, "-m", "bench.bench_unet", "--worker", scenario, "--device", args.device,
               "--dtype", args.dtype, "--iters", str(args.iters), "--warmup", str(args.warmup)]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"# {scenario} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = rows[0]
    for row in rows:
        row["time_vs_stock"] = row["median_ms"] / base["median_ms"]
        row["peak_mem_vs_stock"] = row["peak_mem_gb"] / base["peak_mem_gb"]
        if "activation_peak_gb" in row and base.get("activation_peak_gb", 0) > 0:
            row["activation_vs_stock"] = row["activation_peak_gb"] / base["activation_peak_gb"]
    columns = ["scenario", "median_ms", "min_ms", "iters", "peak_mem_gb", "time_vs_stock", "peak_mem_vs_stock"]
    if cuda:
        columns += ["activation_peak_gb", "activation_vs_stock"]
    print("  ".join(f"{c:>18}" for c in columns))
    for row in rows:
        cells = [row.get(c, float("nan")) for c in columns]
        print("  ".join(f"{c:>18.3f}" if isinstance(c, float) else f"{c!s:>18}" for c in cells))
    mv = rows[1]
    print(f"# MVDream / stock: time x{mv['time_vs_stock']:.3f}, peak memory x{mv['peak_mem_vs_stock']:.3f}"
          + ("  (targets on GPU bf16: <= 1.15 and <= 1.1)" if cuda else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
