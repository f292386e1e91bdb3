"""Batch throughput vs number of workers, and the overhead Ray adds per unit (``run_batch``, tiny model).

Scenarios: ``--workers 0`` (in-process), then 1, 2, ... Ray actors on a local Ray started by ``run_batch``, each on a
fresh output folder with the same catalogue (N synthetic multi-part assets × P prompts) and settings. Per scenario:

* ``wall_s``: the whole ``run_batch`` call (Ray start and actor start included);
* ``startup_s``: time until the first unit was handed out (Ray start + actors constructed, i.e. the base model loaded);
* ``units_per_min``: units finished per minute after start-up (the steady-state throughput);
* ``unit_median_s``: median time a unit spends inside its worker;
* ``overhead_median_ms``: median of (submit → result seen by the driver) − (time inside the worker): what Ray's task
  submission, scheduling and result transfer cost per unit;
* ``evidence_median_s``: median time of an asset's token evidence (``--token-report``: full, attention or off; it is
  part of its personalisation unit's time).

It prints, never asserts. The numbers scale only up to the machine's cores (each actor declares one CPU).

Usage::

    python -m bench.bench_batch                     # 4 assets x 2 prompts, workers 0,1,2
    python -m bench.bench_batch --assets 6 --prompts 3 --workers 0,1,2,4 --json rows.json
    python -m bench.bench_batch --workers 0 --token-report attention   # the evidence's cost per asset
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PROMPTS = ["a <body> with a golden <top>", "a <body> made of wood", "a <top> made of glass on a <body>",
           "a marble <body>"]


def write_assets(folder: Path, count: int) -> dict:
    """``count`` two-part assets (a body and a top, sizes varied) and their component specs."""
    import numpy as np
    import trimesh

    folder.mkdir(parents=True, exist_ok=True)
    specs = {}
    for i in range(count):
        scene = trimesh.Scene()
        body = trimesh.creation.box((0.6 + 0.05 * i, 0.5, 0.4 + 0.03 * i))
        top = trimesh.creation.icosphere(subdivisions=2, radius=0.2 + 0.02 * (i % 5))
        top.apply_translation((0.0, 0.45 + 0.02 * i, 0.0))
        for name, mesh, rgb in (("body", body, (200, 80 + 10 * i % 150, 60)), ("top", top, (60, 60, 200))):
            material = trimesh.visual.material.PBRMaterial(baseColorFactor=[*rgb, 255])
            mesh.visual = trimesh.visual.TextureVisuals(material=material)
            scene.add_geometry(mesh, node_name=name, geom_name=name)
        scene.export(folder / f"asset_{i:02d}.glb")
        specs[f"asset_{i:02d}.glb"] = "top: top; body: *"
    np.random.seed(0)
    return {"default": "body: *", "assets": specs}


def header() -> str:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = "not installed"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"# device cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load:.1f}), "
            f"torch {torch.__version__}, ray {ray_version}, tiny model, fp32, commit {commit}")


def run_scenario(workers: int, assets: Path, manifest: dict, prompts: list, checkpoint: Path, settings, out: Path,
                 token_report: str = "full") -> dict:
    from dreamedit3d_core.batch import run_batch

    t0 = time.perf_counter()
    result = run_batch(assets, prompts, checkpoint, out, component_manifest=manifest, settings=settings,
                       workers=workers, show_progress=False, token_evidence=token_report)
    wall = time.perf_counter() - t0
    done = [r for r in result.results if r.get("status") == "done"]
    inside = [r["wall_s"] for r in done]
    overhead = [1000.0 * (r["driver_s"] - r["wall_s"]) for r in done if "driver_s" in r]
    startup = result.startup_s
    evidence = [r["evidence"]["record"]["times_s"]["token_report_s"] for r in done
                if r.get("evidence", {}).get("status") == "done" and not r["evidence"]["cached"]]
    return {"scenario": "in-process" if workers == 0 else f"ray x{workers}", "units": len(done),
            "failed": len(result.failed), "wall_s": round(wall, 1), "startup_s": round(startup, 1),
            "units_per_min": round(60.0 * len(done) / max(1e-9, wall - startup), 2),
            "unit_median_s": round(statistics.median(inside), 2) if inside else None,
            "overhead_median_ms": round(statistics.median(overhead), 1) if overhead else None,
            "model_load_s": round(statistics.median(w["load_s"] for w in result.workers), 1) if result.workers else None,
            "evidence_median_s": round(statistics.median(evidence), 2) if evidence else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--assets", type=int, default=4)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--workers", default="0,1,2", help="comma list; 0 = in-process")
    p.add_argument("--steps", type=int, default=4, help="training steps per phase (sampling uses 4 DDIM steps)")
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--token-report", choices=("full", "attention", "off"), default="full",
                   help="each asset's token evidence (the batch's default: full)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)

    from dreamedit3d_core.batch import BatchSettings
    from dreamedit3d_core.testing.tiny import write_tiny_checkpoint

    settings = BatchSettings(resolution=args.resolution, ti_steps=args.steps, ft_steps=args.steps,
                             checkpoint_every=max(1, args.steps // 2), steps=4, grid=32, texture_size=64)
    print(header())
    print(f"# {args.assets} assets x {args.prompts} prompts = {args.assets * (args.prompts + 1)} units; {args.steps}+{args.steps} "
          f"training steps, 4 DDIM steps, {args.resolution} px, token evidence {args.token_report}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        tmp = Path(tmp)
        checkpoint = write_tiny_checkpoint(tmp / "tiny.safetensors")
        manifest = write_assets(tmp / "assets", args.assets)
        prompts = (PROMPTS * (1 + args.prompts // len(PROMPTS)))[: args.prompts]
        columns = ("scenario", "units", "failed", "wall_s", "startup_s", "units_per_min", "unit_median_s",
                   "overhead_median_ms", "model_load_s", "evidence_median_s")
        print("  ".join(f"{c:>18}" for c in columns))
        for workers in (int(w) for w in args.workers.split(",")):
            row = run_scenario(workers, tmp / "assets", manifest, prompts, checkpoint, settings, tmp / f"out{workers}",
                               args.token_report)
            rows.append(row)
            print("  ".join(f"{str(row[c]):>18}" for c in columns), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
