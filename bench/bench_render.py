"""Milliseconds per 4-view set (OrthoRender: colour with SSAA, alpha, depth, normals, part ids) on the shared assets.

Every asset in ``../shared/assets`` that loads (the two deliberately broken ones are skipped), plus a synthetic
~1M-face sphere, at 256 and 512 px, default SSAA 2, on the CPU and (when present) on CUDA. Loading is not timed.
Each row is the median (and p90) wall time of ``--repeats`` timed renders after one warm-up; CUDA is synchronised.
On the CPU the process CPU time per render (``cpu_ms``) is printed too: on a shared machine wall time includes waiting
for cores, CPU time does not.

    python -m bench.bench_render                       # CPU (+ CUDA when available)
    python -m bench.bench_render --devices cpu --resolutions 256 --repeats 3 --json out.json
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

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dreamedit3d_core.assets import asset_from_arrays, load_asset  # noqa: E402
from dreamedit3d_core.errors import AssetError  # noqa: E402
from dreamedit3d_core.render import render_views  # noqa: E402

SHARED_ASSETS = REPO.parent / "shared" / "assets"
#: extra load arguments for assets whose colour map ships separately
LOAD_KWARGS = {
    "spot.obj": {"texture": "spot_texture.png"},
    "lee_perry_smith_head.glb": {"texture": "lee_perry_smith_color.jpg", "texture_flip_y": True},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    p.add_argument("--resolutions", nargs="+", type=int, default=[256, 512])
    p.add_argument("--ssaa", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--assets", type=Path, default=SHARED_ASSETS)
    p.add_argument("--no-million", action="store_true", help="skip the synthetic 1M-face sphere")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return p.parse_args(argv)


def million_face_sphere():
    n = 708  # 2 * 707^2 = 999,698 triangles
    g = np.stack(np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, n), indexing="ij"), -1).reshape(-1, 2)
    verts = np.stack([np.sin(g[:, 0]) * np.cos(g[:, 1]), np.cos(g[:, 0]), np.sin(g[:, 0]) * np.sin(g[:, 1])], -1)
    i = np.arange(n * n).reshape(n, n)
    a, b, c, d = i[:-1, :-1].ravel(), i[1:, :-1].ravel(), i[1:, 1:].ravel(), i[:-1, 1:].ravel()
    return asset_from_arrays(verts, np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]))


def load_all(folder: Path, million: bool):
    assets = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in (".glb", ".gltf", ".obj", ".ply"):
            continue
        kwargs = {k: (str(folder / v) if k == "texture" else v) for k, v in LOAD_KWARGS.get(path.name, {}).items()}
        try:
            assets[path.name] = load_asset(path, **kwargs)
        except AssetError as exc:
            print(f"# skipped {path.name}: {exc}")
    if million:
        assets["sphere_1M_faces"] = million_face_sphere()
    return assets


def time_render(asset, device: str, resolution: int, ssaa: int, repeats: int) -> list:
    asset = asset.to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    render_views(asset, resolution=resolution, ssaa=ssaa)  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        render_views(asset, resolution=resolution, ssaa=ssaa)
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu


def header(devices) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=False).stdout.strip()
    except OSError:
        commit = "?"
    names = []
    for d in devices:
        names.append(torch.cuda.get_device_name(torch.device(d)) if d.startswith("cuda")
                     else f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} torch threads)")
    return f"# bench_render  devices: {', '.join(names)}  torch {torch.__version__}  commit {commit}  dtype fp32"


def main(argv=None):
    args = parse_args(argv)
    print(header(args.devices))
    assets = load_all(args.assets, not args.no_million)
    rows = []
    print(f"{'asset':28s} {'faces':>8s} {'device':>6s} {'res':>5s} {'ssaa':>4s} {'median_ms':>10s} {'p90_ms':>8s} "
          f"{'cpu_ms':>8s}")
    for device in args.devices:
        for name, asset in assets.items():
            for res in args.resolutions:
                times, cpu = time_render(asset, device, res, args.ssaa, args.repeats)
                times = sorted(times)
                row = dict(asset=name, faces=int(asset.faces.shape[0]), device=device, resolution=res, ssaa=args.ssaa,
                           median_ms=1000 * statistics.median(times),
                           p90_ms=1000 * times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))],
                           cpu_ms=1000 * statistics.median(cpu) if device == "cpu" else None)
                rows.append(row)
                cpu_txt = f"{row['cpu_ms']:8.1f}" if row["cpu_ms"] is not None else f"{'-':>8s}"
                print(f"{name:28s} {row['faces']:8d} {device:>6s} {res:5d} {args.ssaa:4d} {row['median_ms']:10.1f} "
                      f"{row['p90_ms']:8.1f} {cpu_txt}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
