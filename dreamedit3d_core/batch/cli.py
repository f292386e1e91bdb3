"""``python -m dreamedit3d_core.batch`` (and the ``batch`` subcommand of ``python -m dreamedit3d_core``).

    python -m dreamedit3d_core.batch catalogue/ --prompts prompts.txt --checkpoint sd-v2.1-base-4view.pt \\
        --components "body: *" --out out/ [--workers 4 | --ray-address auto]

Writes per asset its views, masks, tokens, LoRA and token evidence (``token_evidence/``), per edit a GLB and its
views, and ``report.md`` / ``report.csv`` / ``tokens.csv`` / ``sheets/`` / ``manifest.json`` at the root of ``--out``. Re-running the same command finishes only what is missing.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..errors import DreamEdit3DError
from .evidence import LEVELS as EVIDENCE_LEVELS
from .plan import FT_MODES, LIFT_MODES, MIXED_PRECISION, SAMPLERS, BatchSettings

_DEFAULTS = BatchSettings()


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("assets", nargs="+", help="asset files and/or folders (.glb/.gltf/.obj/.ply, folders searched recursively)")
    p.add_argument("--prompts", required=True, help="file with one edit prompt per line, e.g. 'a <body> made of gold'")
    p.add_argument("--checkpoint", required=True, help="sd-v2.1-base-4view.pt (the same path on every machine)")
    p.add_argument("--out", required=True, help="output folder or fsspec URL shared by all machines")
    p.add_argument("--components", default=None, help='default component spec, e.g. "hat: Hat; body: *" (default "object: *")')
    p.add_argument("--components-file", default=None, help="JSON/YAML manifest of per-asset component specs")
    g = p.add_argument_group("workers")
    g.add_argument("--workers", type=int, default=0,
                   help="0: run in this process without Ray (default); N: N Ray actors (one per GPU where there are GPUs)")
    g.add_argument("--ray-address", default=None, help="'auto' or HOST:PORT of a running Ray cluster (default: local Ray)")
    g.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per actor (default 1 with GPUs, else 0)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0)
    g.add_argument("--worker-memory-gb", type=float, default=None, help="memory each actor declares to Ray")
    g.add_argument("--max-retries", type=int, default=3, help="Ray restarts of a lost worker and retries of its unit")
    g.add_argument("--device", default="auto", help="device of an in-process run: auto, cpu, cuda, cuda:1")
    g.add_argument("--scratch", default=None, help="local scratch folder for a URL output")
    t = p.add_argument_group("training, sampling, lifting")
    t.add_argument("--resolution", type=int, default=_DEFAULTS.resolution)
    t.add_argument("--elevation", type=float, default=_DEFAULTS.elevation_deg)
    t.add_argument("--fov", type=float, default=_DEFAULTS.fov_deg)
    t.add_argument("--ti-steps", type=int, default=_DEFAULTS.ti_steps)
    t.add_argument("--ti-lr", type=float, default=_DEFAULTS.ti_lr)
    t.add_argument("--ft-steps", type=int, default=_DEFAULTS.ft_steps)
    t.add_argument("--ft-mode", choices=FT_MODES, default=_DEFAULTS.ft_mode)
    t.add_argument("--ft-lr", type=float, default=None, help="default 1e-4 for LoRA, 2e-6 for full fine-tuning")
    t.add_argument("--lora-rank", type=int, default=_DEFAULTS.lora_rank)
    t.add_argument("--checkpoint-every", type=int, default=_DEFAULTS.checkpoint_every,
                   help="training-state checkpoint period (what an interrupted personalisation resumes from)")
    t.add_argument("--mixed-precision", choices=MIXED_PRECISION, default=_DEFAULTS.mixed_precision,
                   help="training autocast (bf16 recommended on GPUs; weights stay fp32)")
    t.add_argument("--sampler", choices=SAMPLERS, default=_DEFAULTS.sampler)
    t.add_argument("--steps", type=int, default=_DEFAULTS.steps)
    t.add_argument("--cfg", type=float, default=_DEFAULTS.cfg)
    t.add_argument("--negative-prompt", default=None)
    t.add_argument("--seed", type=int, default=_DEFAULTS.seed)
    t.add_argument("--lift-mode", choices=LIFT_MODES, default=_DEFAULTS.lift_mode)
    t.add_argument("--grid", type=int, default=_DEFAULTS.grid)
    t.add_argument("--texture-size", type=int, default=_DEFAULTS.texture_size)
    e = p.add_argument_group("token evidence")
    e.add_argument("--token-report", choices=EVIDENCE_LEVELS, default="full",
                   help="after each personalisation, did each token learn its part: full (attention isolation, "
                        "reconstruction, omission, swap; default), attention (isolation only: cheap), off")
    m = p.add_argument_group("metrics (optional)")
    m.add_argument("--clip", default=None, help="CLIP model file/folder for the edit metrics")
    m.add_argument("--dino", default=None, help="DINO model file/folder for the identity metric")
    p.add_argument("--retry-failed", action="store_true",
                   help="also retry units that failed on the same inputs in an earlier run")
    p.add_argument("--quiet", action="store_true", help="no per-unit lines or progress bar")
    p.set_defaults(func=main)
    return p


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Add ``batch`` to a parent command's subparsers (``python -m dreamedit3d_core batch ...``)."""
    return configure_parser(subparsers.add_parser("batch", help="edit a catalogue: assets x prompts, resumable, on Ray",
                                                  description=__doc__.split("\n\n")[0]))


def settings_from_args(args: argparse.Namespace) -> BatchSettings:
    return BatchSettings(resolution=args.resolution, elevation_deg=args.elevation, fov_deg=args.fov,
                         ti_steps=args.ti_steps, ti_lr=args.ti_lr, ft_steps=args.ft_steps, ft_mode=args.ft_mode,
                         ft_lr=args.ft_lr, lora_rank=args.lora_rank, checkpoint_every=args.checkpoint_every,
                         mixed_precision=args.mixed_precision,
                         sampler=args.sampler, steps=args.steps, cfg=args.cfg, negative_prompt=args.negative_prompt,
                         seed=args.seed, lift_mode=args.lift_mode, grid=args.grid, texture_size=args.texture_size)


def main(args: argparse.Namespace) -> int:
    """Run the batch; prints where the report is. Exit code 0 when every edit is done, 1 when some failed."""
    from .runner import run_batch

    result = run_batch(args.assets, args.prompts, args.checkpoint, args.out, components=args.components,
                       component_manifest=args.components_file, settings=settings_from_args(args),
                       workers=args.workers, ray_address=args.ray_address, gpus_per_worker=args.gpus_per_worker,
                       cpus_per_worker=args.cpus_per_worker, worker_memory_gb=args.worker_memory_gb,
                       max_retries=args.max_retries, device=args.device, scratch=args.scratch, clip=args.clip,
                       dino=args.dino, show_progress=not args.quiet,
                       retry_failed=args.retry_failed, token_evidence=args.token_report)
    print(f"{len(result.computed)} units computed, {len(result.reused)} already done, {len(result.failed)} failed, "
          f"{len(result.skipped)} skipped in {result.wall_s:.1f} s")
    for unit_id, message in result.failed.items():
        print(f"failed: {unit_id}: {message}")
    print(f"report: {result.output.rstrip('/')}/report.md")
    return 0 if result.ok else 1


def run(argv: Optional[Sequence[str]] = None) -> int:
    parser = configure_parser(argparse.ArgumentParser(prog="python -m dreamedit3d_core.batch",
                                                      description=__doc__.split("\n\n")[0]))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DreamEdit3DError as exc:  # our errors are one-line, user-facing messages
        print(f"error: {exc}", file=sys.stderr)
        return 2
