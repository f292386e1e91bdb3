"""Command line: the DreamEdit3D pipeline without ComfyUI (``dreamedit3d ...`` once installed, or
``python -m dreamedit3d_core ...`` with the Python that has torch, e.g. ``.venv/bin/python``).

    dreamedit3d tiny-checkpoint tiny.safetensors       # a tiny random model in the released layout (tests, trying it out)
    dreamedit3d render ASSET --out DIR
    dreamedit3d edit   ASSET --checkpoint sd-v2.1-base-4view.pt --components "hat: Hat; body: *" \
                       --prompt "a <body> wearing a <hat> made of gold" --out DIR
    dreamedit3d batch  CATALOGUE/ --prompts prompts.txt --checkpoint ... --out DIR   (see dreamedit3d_core/batch)

``edit`` runs every stage: render, part masks, textual inversion, fine-tuning, prompt composition, sampling and
lifting, and writes the views, masks, tokens (ours and ComfyUI's ``clip_h`` form) and the GLB into ``--out``.
The asset, the components and the prompt's tokens are checked before the (multi-GB) checkpoint is loaded; a run that
fails removes the ``--out`` folder it created. Nothing is ever overwritten: existing names get a numbered suffix.
Every failure ends in one line on stderr and a non-zero exit (``--traceback`` shows Python's traceback instead).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .errors import ConfigError, DreamEdit3DError

#: exit codes: a refused input (our one-line errors), any other failure, Ctrl-C
EXIT_REFUSED, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


def _save_png_grid(images: torch.Tensor, path: Path) -> Path:
    """Save float [N, C, H, W] in 0..1 as one row of N images (C = 1 or 3)."""
    import io

    from PIL import Image

    from .storage import save_new_bytes

    x = images.detach().float().cpu().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    row = torch.cat(list(x), dim=2)  # [3, H, N*W]
    array = (row.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return save_new_bytes(path, buffer.getvalue())


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def parse_background(text: Optional[str]):
    """``--background``: None (the library's default: key the sampled views' own flat background), 'auto', a grey
    level '1', or 'r,g,b' in 0..1."""
    if text is None or text.strip().lower() == "auto":
        return None if text is None else "auto"
    try:
        values = [float(v) for v in text.replace(";", ",").split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(0.0 <= v <= 1.0 for v in values):
        raise ConfigError(f"--background {text!r} is not 'auto', a grey level or 'r,g,b' in 0..1 (white: 1)")
    return tuple(values)


def check_prompt_tokens(prompt: str, component_names: Sequence[str]) -> None:
    """The prompt's <tokens> must be the components' tokens (checked before any model is loaded)."""
    from .prompts import find_placeholders
    from .tokens import token_for_component

    known = [token_for_component(name) for name in component_names]
    unknown = [tok for tok in find_placeholders(prompt) if tok not in known]
    if unknown:
        raise ConfigError(f"the prompt uses {', '.join(unknown)}, but the components give {', '.join(known)}: "
                          "use those tokens in --prompt or name the components in --components")


def cmd_tiny_checkpoint(args: argparse.Namespace) -> int:
    try:
        from .testing.tiny import write_tiny_checkpoint
    except ImportError:  # before the test helpers moved into dreamedit3d_core.testing
        from .testing.tiny import write_tiny_checkpoint

    path = Path(args.path)
    if path.suffix not in (".safetensors", ".pt"):
        raise ConfigError(f"tiny checkpoint path {str(path)!r} must end in .safetensors or .pt")
    written = write_tiny_checkpoint(path, seed=args.seed)
    print(f"tiny random MVDream checkpoint (for trying the pipeline; its images are noise): {written}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from .assets import load_asset
    from .cameras import MVCameras
    from .render import render_views

    device = _device(args.device)
    asset = load_asset(args.asset, front_axis=args.front_axis, up_axis=args.up_axis, device=device)
    cameras = MVCameras.mvdream_default(elevation_deg=args.elevation, fov_deg=args.fov)
    render = render_views(asset, cameras, resolution=args.resolution, device=device)
    with _output_folder(args.out) as out:
        print(f"parts: {', '.join(render.part_names)}")
        print(f"views: {_save_png_grid(render.rgb, out / 'views.png')}")
        print(f"alpha: {_save_png_grid(render.alpha, out / 'alpha.png')}")
    return 0


class _output_folder:
    """``--out`` for one run: created on entry; removed again, with what the run wrote, if the run fails and the
    folder did not exist before (a folder the user already had is never deleted)."""

    def __init__(self, path: str):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out {path!r} is a file: give a folder")
        self.created = not self.path.exists()

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None and self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        return False


def cmd_edit(args: argparse.Namespace) -> int:
    from .assets import load_asset
    from .cameras import MVCameras
    from .lifting import export_mesh, lift_alpha, lift_to_mesh
    from .masks import masks_from_parts
    from .mvdream.checkpoint import load_mvdream
    from .personalize.finetune import FTConfig, finetune
    from .personalize.textual_inversion import TIConfig, train_textual_inversion
    from .prompts import compose_prompt
    from .render import render_views
    from .sampling import sample_views
    from .tokens import save_comfy_embeddings, save_tokens

    device = _device(args.device)
    background = parse_background(args.background)
    times = {}

    # cheap inputs first: asset, components, prompt tokens, checkpoint file; then the model
    t0 = time.perf_counter()
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise ConfigError(f"checkpoint {args.checkpoint!r} not found: give the path of sd-v2.1-base-4view.pt (or "
                          "write a tiny one with 'dreamedit3d tiny-checkpoint tiny.safetensors')")
    asset = load_asset(args.asset, front_axis=args.front_axis, up_axis=args.up_axis, device=device)
    cameras = MVCameras.mvdream_default(elevation_deg=args.elevation, fov_deg=args.fov)
    render = render_views(asset, cameras, resolution=args.resolution, device=device)
    masks = masks_from_parts(render, args.components)
    check_prompt_tokens(args.prompt, masks.names)
    model = load_mvdream(checkpoint, device=device)
    times["load+render+masks_s"] = time.perf_counter() - t0

    with _output_folder(args.out) as out:
        _save_png_grid(render.rgb, out / "source_views.png")
        for name, mask in zip(masks.names, masks.masks):
            _save_png_grid(mask[:, None].float(), out / f"mask_{name}.png")

        # no progress object is passed: the trainers' default shows a tqdm bar (steps, loss, it/s, ETA)
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
        samples = sample_views(model, conditioning, method=args.sampler, steps=args.steps, cfg=args.cfg,
                               seed=args.seed, resolution=args.resolution)
        times["sample_s"] = time.perf_counter() - t0
        print(f"edited views: {_save_png_grid(samples.images, out / 'edited_views.png')}")

        t0 = time.perf_counter()
        # an appearance edit keeps the source geometry, so its silhouettes are the source's own
        alpha = lift_alpha(args.lift_mode, render.alpha)
        options = {} if background is None else {"background": background}
        mesh = lift_to_mesh(samples.images[: cameras.num_views], cameras, alpha=alpha, source=asset,
                            mode=args.lift_mode, grid=args.grid, texture_size=args.texture_size, **options)
        extras = {"prompt": args.prompt, "seed": args.seed, "sampler": args.sampler, "steps": args.steps,
                  "cfg": args.cfg, "tokens": list(tokens.tokens), "base_model_hash": model.model_hash}
        glb = export_mesh(mesh, out / "edited.glb", extras=extras)
        times["lift_s"] = time.perf_counter() - t0
        print(f"mesh: {glb}")
        print("times: " + json.dumps({k: round(v, 2) for k, v in times.items()}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .lifting import MODES as LIFT_MODES
    from .personalize.finetune import MODES as FT_MODES

    parser = argparse.ArgumentParser(prog="dreamedit3d", description=__doc__.split("\n\n")[0])
    parser.add_argument("--traceback", action="store_true", help="show Python's traceback on failure")
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("tiny-checkpoint", help="write a tiny random MVDream checkpoint in the released layout")
    tiny.add_argument("path", help="where to write it (.safetensors or .pt); never overwritten")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_tiny_checkpoint)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("asset", help="GLB, GLTF, OBJ or PLY file")
        p.add_argument("--out", required=True, help="output folder (created; nothing in it is overwritten)")
        p.add_argument("--resolution", type=int, default=256, help="view size in pixels (multiple of 8; MVDream: 256)")
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
    edit.add_argument("--ti-steps", type=int, default=400, help="phase 1 (textual inversion) training steps")
    edit.add_argument("--ft-steps", type=int, default=400, help="phase 2 (fine-tuning) training steps; 0 skips it")
    edit.add_argument("--ft-mode", choices=FT_MODES, default="full", help="phase 2: full fine-tuning or lora")
    edit.add_argument("--sampler", choices=("ddim", "euler"), default="ddim")
    edit.add_argument("--steps", type=int, default=50, help="sampling steps")
    edit.add_argument("--cfg", type=float, default=7.5)
    edit.add_argument("--seed", type=int, default=23)
    edit.add_argument("--lift-mode", choices=LIFT_MODES, default="source_guided",
                      help="hull: geometry from the silhouettes; source_guided: the source where the edit keeps it; "
                           "keep_source: the source mesh, re-textured (uses the source's silhouettes)")
    edit.add_argument("--background", default=None,
                      help="background of the sampled views, keyed out when lifting: 'auto' (default: read from each "
                           "view's border), a grey level such as 1, or 'r,g,b' in 0..1")
    edit.add_argument("--grid", type=int, default=128, help="lifting voxels along the longest side")
    edit.add_argument("--texture-size", type=int, default=1024, help="texture side in texels (0: vertex colours)")
    edit.set_defaults(func=cmd_edit)

    from .batch.cli import add_subparser as add_batch

    add_batch(sub)  # `batch`: a catalogue of assets x edit prompts (dreamedit3d_core/batch)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the command line's last word: one line, never a traceback
        if args.traceback:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, DreamEdit3DError):  # our errors are one-line, user-facing messages
            print(f"error: {message}", file=sys.stderr)
            return EXIT_REFUSED
        print(f"error: {type(exc).__name__}: {message} (run with --traceback for details)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
