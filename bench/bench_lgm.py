"""Benchmark LGM as a reconstructor: the network's forward at 256 px, the Gaussians -> mesh extraction, and the whole
reconstruction + bake through ``lift_to_mesh``. Prints; never asserts.

Scenarios (one row each):

* ``forward``: ``LGMNetwork`` on one object's four views ``[1, 4, 9, 256, 256]`` (the released ``big`` U-Net with
  ``--weights``, else random weights of ``--config``).
* ``mesh``: ``gaussians_to_mesh`` at ``--grid`` on 4 x 128 x 128 = 65536 flat splats sampled on the asset's surface (what
  LGM predicts for a good input: pixel-sized splats on the surface), cut by the asset's visual hull.
* ``reconstruct+bake``: ``lift_to_mesh(reconstructor=...)`` with ``--texture``: forward, mesh, cleanup, UVs and bake. With
  random weights the network still runs, but its (meaningless) Gaussians are replaced by the surface splats above so the
  mesh and bake work on a real shape; with ``--weights`` LGM's own Gaussians are used.

Memory: CUDA rows give ``torch.cuda.max_memory_allocated`` (reset per scenario, weights included); CPU rows give the
process's peak resident set so far (``ru_maxrss``, monotone over the run). Issue 14 targets on one H100: forward <= 0.3 s,
reconstruction + bake <= 3 s, peak <= 10 GB.

    python -m bench.bench_lgm --device cpu --config tiny
    python -m bench.bench_lgm --device cuda --dtype fp16 --config big
    python -m bench.bench_lgm --device cuda --dtype bf16 --weights models/lgm/model_fp16_fixrot.safetensors
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SHARED_ASSET = REPO.parent / "shared" / "assets" / "cesium_milk_truck.glb"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _header(device: torch.device, dtype: str, config: str, weights) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    model = f"real weights {Path(weights).name}" if weights else f"random weights, config {config}"
    return (f"# bench_lgm  device={name}  torch={torch.__version__}  dtype={dtype}  threads={torch.get_num_threads()}  "
            f"commit={commit}  model={model}")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def _timed(fn, device, repeats: int, warmup: int = 1):
    for _ in range(warmup):
        out = fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return out, times


def _asset_views(device, res: int):
    from dreamedit3d_core.cameras import MVCameras
    from dreamedit3d_core.render import render_views

    if SHARED_ASSET.is_file():
        from dreamedit3d_core.assets import load_asset

        asset, name = load_asset(str(SHARED_ASSET)), SHARED_ASSET.name
    else:
        import trimesh

        from _lift_helpers import asset_from_trimesh, box_with_nose

        mesh, colors = box_with_nose()
        asset = asset_from_trimesh(trimesh.Trimesh(mesh.vertices, mesh.faces), face_colors=colors)
        name = "box_with_nose"
    cams = MVCameras.mvdream_default()
    views = render_views(asset, cams, resolution=res)
    return asset, name, views, cams


def surface_splats(asset, count: int = 4 * 128 * 128, seed: int = 0):
    """``count`` flat splats on the asset's surface (tangent std about a 128 px pixel's footprint), coloured grey."""
    import numpy as np
    import trimesh

    from dreamedit3d_core.lifting.lgm import Gaussians

    mesh = trimesh.Trimesh(asset.vertices.numpy(), asset.faces.numpy(), process=False)
    pts, face = trimesh.sample.sample_surface(mesh, count, seed=seed)
    nrm = torch.from_numpy(np.asarray(mesh.face_normals[face])).double()
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).expand(count, 3).clone()
    helper[nrm[:, 0].abs() > 0.9] = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    t1 = torch.nn.functional.normalize(torch.cross(nrm, helper, dim=-1), dim=-1)
    axes = torch.stack([t1, torch.cross(nrm, t1, dim=-1), nrm], -1)
    footprint = 1.8 / 128  # our frame shows +-0.9 at the origin
    scales = torch.tensor([footprint, footprint, footprint / 10]).expand(count, 3).contiguous()
    return Gaussians(torch.from_numpy(np.asarray(pts)).float(), torch.full((count,), 0.9), scales, axes.float(),
                     torch.full((count, 3), 0.6))


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    ap.add_argument("--config", default="big", choices=["big", "tiny"])
    ap.add_argument("--weights", default=None, help="an LGM .safetensors (default: random weights of --config)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grid", type=int, default=128)
    ap.add_argument("--texture", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before each scenario")
    ap.add_argument("--scenarios", nargs="*", default=["forward", "mesh", "reconstruct+bake"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]

    from dreamedit3d_core.lifting import lift_to_mesh, unregister_reconstructor
    from dreamedit3d_core.lifting.lgm import (LGM_BIG, LGMNetwork, LGMReconstructor, RawGaussians, gaussians_to_mesh,
                                              lgm_frame, lgm_input, load_lgm)
    from dreamedit3d_core.testing.lgm import LGM_TINY
    from dreamedit3d_core.lifting.pipeline import register_reconstructor

    print(_header(device, args.dtype, args.config, args.weights))
    if args.weights:
        net = load_lgm(args.weights, device, dtype)
    else:
        config = LGM_BIG if args.config == "big" else _at_256_px(LGM_TINY)
        net = LGMNetwork(config).to(device=device, dtype=dtype).eval().requires_grad_(False)
    asset, asset_name, views, cams = _asset_views(device, 256)
    rgb, alpha = views.rgb.to(device), views.alpha.to(device)
    x = lgm_input(rgb * alpha + (1 - alpha), cams, net.config.input_size).to(device=device, dtype=dtype)
    splats = surface_splats(asset).to(device)
    rows = []
    print(f"# asset {asset_name}, views 4 x 256 px, LGM input {list(x.shape)}, grid {args.grid}, "
          f"texture {args.texture}")
    print(f"{'scenario':<18}{'median_ms':>11}{'best_ms':>10}{'peak_mem_gb':>13}  notes")

    def row(name, times, note=""):
        r = {"scenario": name, "median_ms": 1000 * statistics.median(times), "best_ms": 1000 * min(times),
             "peak_mem_gb": _peak_gb(device), "notes": note}
        rows.append(r)
        print(f"{name:<18}{r['median_ms']:>11.1f}{r['best_ms']:>10.1f}{r['peak_mem_gb']:>13.2f}  {note}")

    if "forward" in args.scenarios:
        _reset_peak(device)
        with torch.inference_mode():
            _, times = _timed(lambda: net(x), device, args.repeats, args.warmup)
        row("forward", times, f"{4 * net.config.splat_size ** 2} Gaussians")
    if "mesh" in args.scenarios:
        _reset_peak(device)
        (verts, faces, stats), times = _timed(lambda: gaussians_to_mesh(splats, args.grid, alpha, cams), device,
                                              args.repeats, args.warmup)
        row("mesh", times, f"{faces.shape[0]} faces, grid {stats['grid_shape']}")
    if "reconstruct+bake" in args.scenarios:
        fr = lgm_frame(cams)

        class SplatsAfterForward(torch.nn.Module):
            """Runs the network, then returns the surface splats in LGM's frame (random weights only)."""

            def __init__(self):
                super().__init__()
                self.net, self.config = net, net.config

            def forward(self, inp):
                self.net(inp)
                g = splats
                axes = fr.rotation.to(device).float() @ g.axes
                from scipy.spatial.transform import Rotation

                xyzw = torch.from_numpy(Rotation.from_matrix(axes.double().cpu().numpy()).as_quat()).float().to(device)
                return RawGaussians(position=fr.to_lgm(g.means)[None], opacity=g.opacity[None, :, None],
                                    scale=(g.scales * fr.scale)[None],
                                    rotation=torch.cat([xyzw[:, 3:], xyzw[:, :3]], -1)[None],
                                    color=g.colors[None])

        model = net if args.weights else SplatsAfterForward()
        rec = LGMReconstructor(model, dtype=dtype)
        register_reconstructor("lgm_bench", rec, overwrite=True)
        _reset_peak(device)
        try:
            mesh, times = _timed(lambda: lift_to_mesh(rgb, cams, alpha=alpha, reconstructor="lgm_bench",
                                                      grid=args.grid, texture_size=args.texture), device, args.repeats,
                                   args.warmup)
        finally:
            unregister_reconstructor("lgm_bench")
        note = "LGM's Gaussians" if args.weights else "network run, surface splats meshed"
        row("reconstruct+bake", times, f"{mesh.faces.shape[0]} faces; {note}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


def _at_256_px(config):
    """``config`` with a 256 px input (the tiny test configuration is defined at 64 px)."""
    from dataclasses import replace

    return replace(config, input_size=256)


if __name__ == "__main__":
    main()
