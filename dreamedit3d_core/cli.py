"""Command line: the DreamEdit3D pipeline without ComfyUI.

    python -m dreamedit3d_core render  ASSET --out DIR
    python -m dreamedit3d_core edit    ASSET --checkpoint sd-v2.1-base-4view.pt --components "hat: Hat; body: *" \
                                       --prompt "a <body> wearing a <hat> made of gold" --out DIR

``edit`` runs every stage: render, part masks, textual inversion, fine-tuning, prompt composition, sampling and
lifting, and writes the views, masks, tokens (ours and ComfyUI's ``clip_h`` form) and the GLB into ``--out``.
Nothing is ever overwritten: existing names get a numbered suffix.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import DreamEdit3DError


def _save_png_grid(images: torch.Tensor, path: Path) -> Path:
    """Save float [N, C, H, W] in 0..1 as one row of N images (C = 1 or 3)."""
    from PIL import Image

    from .storage import save_bytes, unique_path
    import io

    x = images.detach().float().cpu().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    row = torch.cat(list(x), dim=2)  # [3, H, N*W]
    array = (row.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return save_bytes(unique_path(path), buffer.getvalue())


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cmd_render(args: argparse.Namespace) -> int:
    from .assets import load_asset
    from .cameras import MVCameras
    from .render import render_views

    device = _device(args.device)
    asset = load_asset(args.asset, front_axis=args.front_axis, up_axis=args.up_axis, device=device)
    cameras = MVCameras.mvdream_default(elevation_deg=args.elevation, fov_deg=args.fov)
    render = render_views(asset, cameras, resolution=args.resolution, device=device)
    out = Path(args.out)
    print(f"parts: {', '.join(render.part_names)}")
    print(f"views: {_save_png_grid(render.rgb, out / 'views.png')}")
    print(f"alpha: {_save_png_grid(render.alpha, out / 'alpha.png')}")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from .assets import load_asset
    from .cameras import MVCameras
    from .lifting import export_mesh, lift_to_mesh
    from .masks import masks_from_parts
    from .mvdream.checkpoint import load_mvdream
    from .personalize.finetune import FTConfig, finetune
    from .personalize.textual_inversion import TIConfig, train_textual_inversion
    from .prompts import compose_prompt
    from .render import render_views
    from .sampling import sample_views
    from .tokens import save_comfy_embeddings, save_tokens

    device = _device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times = {}

    t0 = time.perf_counter()
    model = load_mvdream(args.checkpoint, device=device)
    asset = load_asset(args.asset, front_axis=args.front_axis, up_axis=args.up_axis, device=device)
    cameras = MVCameras.mvdream_default(elevation_deg=args.elevation, fov_deg=args.fov)
    render = render_views(asset, cameras, resolution=args.resolution, device=device)
    masks = masks_from_parts(render, args.components)
    times["load+render+masks_s"] = time.perf_counter() - t0
    _save_png_grid(render.rgb, out / "source_views.png")
    for name, mask in zip(masks.names, masks.masks):
        _save_png_grid(mask[:, None].float(), out / f"mask_{name}.png")

    t0 = time.perf_counter()
    tokens = train_textual_inversion(model, render, masks, TIConfig(steps=args.ti_steps, seed=args.seed))
    times["textual_inversion_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if args.ft_steps > 0:
        model, tokens = finetune(model, render, masks, tokens, FTConfig(steps=args.ft_steps, seed=args.seed,
                                                                       mode=args.ft_mode))
    times["finetune_s"] = time.perf_counter() - t0
    print(f"tokens: {save_tokens(tokens, out / 'tokens.safetensors')}")
    for path in save_comfy_embeddings(tokens, out / "embeddings"):
        print(f"ComfyUI embedding: {path}")

    t0 = time.perf_counter()
    conditioning = compose_prompt(model, args.prompt, tokens=tokens, cameras=cameras)
    samples = sample_views(model, conditioning, method=args.sampler, steps=args.steps, cfg=args.cfg, seed=args.seed,
                           resolution=args.resolution)
    times["sample_s"] = time.perf_counter() - t0
    print(f"edited views: {_save_png_grid(samples.images, out / 'edited_views.png')}")

    t0 = time.perf_counter()
    # an appearance edit keeps the source geometry, so its silhouettes are the source's own
    alpha = render.alpha if args.lift_mode == "keep_source" else None
    mesh = lift_to_mesh(samples.images[: cameras.num_views], cameras, alpha=alpha, source=asset, mode=args.lift_mode,
                        grid=args.grid, texture_size=args.texture_size)
    extras = {"prompt": args.prompt, "seed": args.seed, "sampler": args.sampler, "steps": args.steps,
              "cfg": args.cfg, "tokens": list(tokens.tokens), "base_model_hash": model.model_hash}
    glb = export_mesh(mesh, out / "edited.glb", extras=extras)
    times["lift_s"] = time.perf_counter() - t0
    print(f"mesh: {glb}")
    print("times: " + json.dumps({k: round(v, 2) for k, v in times.items()}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dreamedit3d_core", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("asset", help="GLB, GLTF, OBJ or PLY file")
        p.add_argument("--out", required=True, help="output folder (created; nothing in it is overwritten)")
        p.add_argument("--resolution", type=int, default=256, help="view size in pixels (multiple of 8)")
        p.add_argument("--elevation", type=float, default=15.0, help="camera elevation in degrees (MVDream: 15)")
        p.add_argument("--fov", type=float, default=40.0, help="vertical field of view in degrees (15..60)")
        p.add_argument("--front-axis", default="+z", help="the asset's front axis (glTF: +z)")
        p.add_argument("--up-axis", default="+y", help="the asset's up axis (glTF: +y)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")

    render = sub.add_parser("render", help="render the four MVDream views of an asset")
    common(render)
    render.set_defaults(func=cmd_render)

    edit = sub.add_parser("edit", help="run the whole edit: personalise on the asset's parts, sample, lift")
    common(edit)
    edit.add_argument("--checkpoint", required=True, help="sd-v2.1-base-4view.pt or a .safetensors of it")
    edit.add_argument("--components", required=True, help='component spec, e.g. "hat: Hat, Brim; dog: *"')
    edit.add_argument("--prompt", required=True, help='edit prompt with tokens, e.g. "a <dog> wearing a <hat>"')
    edit.add_argument("--ti-steps", type=int, default=400)
    edit.add_argument("--ft-steps", type=int, default=400)
    edit.add_argument("--ft-mode", choices=("full", "lora"), default="full")
    edit.add_argument("--sampler", choices=("ddim", "euler"), default="ddim")
    edit.add_argument("--steps", type=int, default=50)
    edit.add_argument("--cfg", type=float, default=7.5)
    edit.add_argument("--seed", type=int, default=23)
    edit.add_argument("--lift-mode", choices=("hull", "source_guided", "keep_source"), default="source_guided")
    edit.add_argument("--grid", type=int, default=128)
    edit.add_argument("--texture-size", type=int, default=1024)
    edit.set_defaults(func=cmd_edit)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DreamEdit3DError as exc:  # our errors are one-line, user-facing messages
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
