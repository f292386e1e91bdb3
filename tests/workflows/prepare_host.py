"""Make the files the example workflows need, in a folder that is then linked into a ComfyUI host.

Usage (with the host's Python, i.e. the one that runs ComfyUI)::

    python tests/workflows/prepare_host.py FIXDIR [--asset PATH] [--personalized]

writes
    FIXDIR/models/mvdream/dreamedit3d-tiny-random-4view.pt   a tiny seeded RANDOM MVDream checkpoint in the released key
                                                            layout and file format (torch pickle); outputs are noise
    FIXDIR/input/dreamedit3d/<asset>                        the example asset (+ the textures/buffers it refers to)
    FIXDIR/models/sams/dreamedit3d-tiny-random-sam.pth      a tiny seeded RANDOM SAM (ComponentMask's SAM path)
    FIXDIR/models/mvdream/dreamedit3d-example-finetuned.safetensors, FIXDIR/models/mvdream_tokens/dreamedit3d-example.safetensors,
    FIXDIR/models/embeddings/dreamedit3d-example_*.safetensors
                                                            what the sample-only workflow loads (a 2-step personalisation
                                                            of the tiny model on the asset, through the core library)
    FIXDIR/workflows/<name>.api.json                        the API workflows of tests/workflows/, adapted to the asset:
                                                            its file name, a component spec made from its own parts and
                                                            an edit prompt with those components' tokens
Link ``FIXDIR/models/*`` into the host's ``models/`` and ``FIXDIR/input`` as its ``input/`` (tools/comfy_host.py does).
The workflows in tests/workflows/*.api.json refer to exactly these names for the default asset; **with ``--asset`` POST
the adapted copies in ``FIXDIR/workflows/``** (the asset's smallest named part becomes the component ``part``, the rest
``object``; a single-part asset is one component ``object``). Without ``../shared`` the default asset is the pack's own
built-in toy figure.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TINY_CHECKPOINT = "dreamedit3d-tiny-random-4view.pt"
FINETUNED_CHECKPOINT = "dreamedit3d-example-finetuned.safetensors"
TOKENS_NAME = "dreamedit3d-example"
TINY_SAM = "dreamedit3d-tiny-random-sam.pth"
ASSET_SUBFOLDER = "dreamedit3d"
SHARED_ASSET = REPO.parent / "shared" / "assets" / "kenney_character.glb"
DEFAULT_ASSET = SHARED_ASSET  # else the built-in toy (dreamedit3d_core.examples), written on demand
# the example's components: one token per component; "*" takes every part not named before
EXAMPLE_COMPONENTS = "antenna: antenna; robot: *"
EXAMPLE_TOKENS = ("<antenna>", "<robot>")


def asset_companions(path: Path) -> list[Path]:
    """Relative paths of the files an asset refers to (glTF buffers/images, OBJ mtllib and maps), that exist beside it."""
    path = Path(path)
    from dreamedit3d_core.lifting.export import read_glb_json

    refs: list[str] = []
    suffix = path.suffix.lower()
    if suffix in (".glb", ".gltf"):
        doc = read_glb_json(path) if suffix == ".glb" else json.loads(path.read_text())
        refs += [b.get("uri", "") for b in doc.get("buffers", [])] + [i.get("uri", "") for i in doc.get("images", [])]
    elif suffix == ".obj":
        text = path.read_text(errors="replace")
        mtls = re.findall(r"^\s*mtllib\s+(.+?)\s*$", text, flags=re.M)
        refs += mtls
        for mtl in mtls:
            mtl_path = path.parent / mtl.replace("\\", "/")
            if mtl_path.is_file():
                refs += [m.split()[-1] for m in re.findall(r"^\s*map_\w+\s+(.+?)\s*$", mtl_path.read_text(errors="replace"), flags=re.M)]
    out = []
    for ref in refs:
        if not ref or ref.startswith("data:"):
            continue
        rel = Path(ref.replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts:
            continue  # never copy anything outside the asset's folder
        if (path.parent / rel).is_file():
            out.append(rel)
    return sorted(set(out))


def copy_asset(asset: Path, input_dir: Path) -> Path:
    """Copy ``asset`` and its companions into ``input_dir/dreamedit3d/``. Returns the name relative to ``input_dir``."""
    dest = input_dir / ASSET_SUBFOLDER
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(asset, dest / asset.name)
    for rel in asset_companions(asset):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(asset.parent / rel, dest / rel)
    return Path(ASSET_SUBFOLDER) / asset.name


def write_checkpoint(models_dir: Path) -> Path:
    from dreamedit3d_core.tiny import write_tiny_checkpoint

    path = models_dir / "mvdream" / TINY_CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        write_tiny_checkpoint(path, seed=0)
    return path


def write_sam(models_dir: Path) -> Path:
    """A tiny seeded RANDOM Segment Anything checkpoint (segment-anything's own classes, released state-dict format)."""
    import torch

    sys.path.insert(0, str(REPO / "tests"))
    from _render_helpers import tiny_sam

    path = models_dir / "sams" / TINY_SAM
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        torch.save(tiny_sam(seed=1).state_dict(), path)
    return path


def write_personalized(models_dir: Path, asset: Path, steps: int = 1, resolution: int = 64,
                       components: str = EXAMPLE_COMPONENTS) -> None:
    """A short personalisation of the tiny model on ``asset`` through the core library (no ComfyUI): the fine-tuned
    model, our token file and the ComfyUI embeddings that the sample-only workflow loads."""
    from dreamedit3d_core.assets import load_asset
    from dreamedit3d_core.masks import masks_from_parts
    from dreamedit3d_core.mvdream.checkpoint import load_mvdream, save_mvdream
    from dreamedit3d_core.personalize import finetune as ft
    from dreamedit3d_core.personalize import textual_inversion as ti
    from dreamedit3d_core.render import render_views
    from dreamedit3d_core.tokens import save_comfy_embeddings, save_tokens

    finetuned = models_dir / "mvdream" / FINETUNED_CHECKPOINT
    tokens_path = models_dir / "mvdream_tokens" / f"{TOKENS_NAME}.safetensors"
    if finetuned.exists() and tokens_path.exists():
        return
    model = load_mvdream(models_dir / "mvdream" / TINY_CHECKPOINT)
    render = render_views(load_asset(asset), resolution=resolution)
    masks = masks_from_parts(render, components)
    tokens = ti.train_textual_inversion(model, render, masks, ti.TIConfig(steps=steps, seed=0, resolution=resolution))
    model, tokens = ft.finetune(model, render, masks, tokens, ft.FTConfig(steps=steps, seed=0, resolution=resolution))
    save_mvdream(model, finetuned, overwrite=True)
    save_tokens(tokens, tokens_path, overwrite=True)
    save_comfy_embeddings(tokens, models_dir / "embeddings", prefix=TOKENS_NAME + "_", overwrite=True)


_SPEC_CHARS = re.compile(r"[:;,\n*]")


def components_for(asset: Path) -> tuple[str, str]:
    """A component spec and an edit prompt that fit ``asset``'s own parts: ``(spec, prompt)``."""
    from dreamedit3d_core.assets import load_asset

    loaded = load_asset(asset)
    if asset.resolve() == SHARED_ASSET.resolve():
        return EXAMPLE_COMPONENTS, "a <robot> with a <antenna> made of gold"
    counts = {name: int((loaded.part_ids == i).sum()) for i, name in enumerate(loaded.part_names)}
    usable = [n for n in counts if counts[n] > 0 and not _SPEC_CHARS.search(n) and n.strip() == n and n]
    if len(counts) < 2 or not usable:
        return "object: *", "a <object> made of gold"
    part = min(usable, key=lambda n: counts[n])  # the smallest part: most often the accessory
    return f"part: {part}; object: *", "a <object> with a <part> made of gold"


def write_adapted_workflows(fixdir: Path, asset_name: str, spec: str, prompt: str) -> list[Path]:
    """The API twins with this asset's file name, component spec and edit prompt (tokens replaced)."""
    out = []
    for twin in sorted((REPO / "tests" / "workflows").glob("*.api.json")):
        graph = json.loads(twin.read_text())
        for node in graph.values():
            inputs = node.get("inputs", {})
            if node.get("class_type") == "DreamEdit3D_OrthoRender" and isinstance(inputs.get("asset"), str):
                inputs["asset"] = asset_name
            if node.get("class_type") == "DreamEdit3D_ComponentMask" and inputs.get("source", "parts") == "parts":
                inputs["components"] = spec
            if node.get("class_type") == "DreamEdit3D_ComposePrompt" and any(
                    t in str(inputs.get("prompt", "")) for t in EXAMPLE_TOKENS):
                inputs["prompt"] = prompt
        target = fixdir / "workflows" / twin.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(graph, indent=2))
        out.append(target)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fixdir", type=Path)
    ap.add_argument("--asset", type=Path, default=DEFAULT_ASSET, help="the asset to copy into input/ (default: %(default)s)")
    ap.add_argument("--personalized", action="store_true",
                    help="also write the sample-only workflow's fine-tuned model and tokens (else the full edit saves them)")
    ap.add_argument("--components", default=None,
                    help="component spec (default: the example's for the default asset, else made from the asset's parts)")
    ap.add_argument("--no-personalized", action="store_true", help=argparse.SUPPRESS)  # the default; kept for old scripts
    args = ap.parse_args(argv)
    if args.asset == DEFAULT_ASSET and not DEFAULT_ASSET.is_file():
        from dreamedit3d_core.examples import write_example_asset

        args.asset = args.fixdir / "example_asset" / "dreamedit3d_toy.glb"
        if not args.asset.is_file():
            write_example_asset(args.asset)
    if not args.asset.is_file():
        print(f"prepare_host: asset {args.asset} not found; pass --asset PATH (glb/gltf/obj/ply)", file=sys.stderr)
        return 2
    models = args.fixdir / "models"
    ckpt = write_checkpoint(models)
    name = copy_asset(args.asset, args.fixdir / "input")
    sam = write_sam(models)
    print(f"prepare_host: SAM {sam}")
    print(f"prepare_host: checkpoint {ckpt}")
    print(f"prepare_host: asset input/{name.as_posix()}")
    spec, prompt = components_for(args.asset)
    spec = args.components or spec
    adapted = write_adapted_workflows(args.fixdir, name.as_posix(), spec, prompt)
    print(f"prepare_host: components {spec!r}, edit prompt {prompt!r}")
    print(f"prepare_host: workflows for this asset: {', '.join(str(p) for p in adapted)}")
    if args.personalized:
        write_personalized(models, args.fixdir / "input" / name, components=spec)
        print(f"prepare_host: fine-tuned model + tokens in {models}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
