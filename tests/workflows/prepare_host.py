"""Make the files the example workflows need, in a folder that is then linked into a ComfyUI host.

Usage (with the host's Python, i.e. the one that runs ComfyUI; no test tools are needed)::

    python tests/workflows/prepare_host.py FIXDIR [--asset PATH] [--components SPEC] [--prompt TEXT]

writes
    FIXDIR/models/mvdream/dreamedit3d-tiny-random-4view.pt   a tiny seeded RANDOM MVDream checkpoint in the released key
                                                            layout and file format (torch pickle); outputs are noise
    FIXDIR/input/dreamedit3d/<asset>                        the example asset (+ the textures/buffers it refers to)
    FIXDIR/models/sams/dreamedit3d-tiny-random-sam.pth      a tiny seeded RANDOM SAM (ComponentMask's SAM path; written
                                                            when the test helpers can be imported, i.e. pytest is there)
    FIXDIR/models/mvdream/dreamedit3d-example-finetuned.safetensors, FIXDIR/models/mvdream_tokens/dreamedit3d-example.safetensors,
    FIXDIR/models/embeddings/dreamedit3d-example_*.safetensors
                                                            what the sample-only workflow loads: a second tiny RANDOM
                                                            model standing in for a fine-tuned one, and seeded random
                                                            tokens for the asset's components (no training)
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
DEFAULT_ASSET = SHARED_ASSET  # else the built-in toy (dreamedit3d_core.testing.examples), written on demand
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


def write_checkpoint(models_dir: Path, name: str = TINY_CHECKPOINT, seed: int = 0) -> Path:
    path = models_dir / "mvdream" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        from dreamedit3d_core.testing.tiny import write_tiny_checkpoint

        write_tiny_checkpoint(path, seed=seed)
    return path


def write_sam(models_dir: Path) -> Path:
    """A tiny seeded RANDOM Segment Anything checkpoint (segment-anything's own classes, released state-dict format);
    needs no test tool, so a plain ComfyUI Python writes it too."""
    import torch

    from dreamedit3d_core.testing.sam import tiny_sam

    path = models_dir / "sams" / TINY_SAM
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        torch.save(tiny_sam(seed=1).state_dict(), path)
    return path


def write_personalized(models_dir: Path, components: str = EXAMPLE_COMPONENTS) -> tuple[Path, Path]:
    """What the sample-only workflow loads, written directly (no training): a second tiny RANDOM checkpoint standing
    in for the fine-tuned model, and seeded random tokens, one per component of ``components``, as our token file and
    as ComfyUI embeddings. Returns (model path, token file path); existing files are kept."""
    import torch

    from dreamedit3d_core.masks import parse_component_spec
    from dreamedit3d_core.tokens import save_comfy_embeddings, save_tokens, token_for_component
    from dreamedit3d_core.types import TokenSet

    finetuned = write_checkpoint(models_dir, FINETUNED_CHECKPOINT, seed=1)
    tokens_path = models_dir / "mvdream_tokens" / f"{TOKENS_NAME}.safetensors"
    if not tokens_path.exists():
        names = tuple(parse_component_spec(components))
        text_dim = _tiny_text_dim(finetuned)
        gen = torch.Generator().manual_seed(0)
        tokens = TokenSet(tokens=tuple(token_for_component(n) for n in names), components=names,
                          embeddings=torch.randn(len(names), 1, text_dim, generator=gen) * 0.01)
        save_tokens(tokens, tokens_path)
        save_comfy_embeddings(tokens, models_dir / "embeddings", prefix=TOKENS_NAME + "_", overwrite=True)
    return finetuned, tokens_path


def _tiny_text_dim(checkpoint: Path) -> int:
    """The text width of a tiny checkpoint (its token embedding's columns), read from the file."""
    from dreamedit3d_core.mvdream.checkpoint import load_mvdream

    return int(load_mvdream(checkpoint, device="cpu").text_dim)


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


def prompt_for(spec: str) -> str:
    """An edit prompt with the tokens of ``spec``'s components: 'a <object> with a <part> made of gold'."""
    from dreamedit3d_core.masks import parse_component_spec
    from dreamedit3d_core.tokens import token_for_component

    tokens = [token_for_component(n) for n in parse_component_spec(spec)]
    return f"a {tokens[-1]} with a {tokens[0]} made of gold" if len(tokens) > 1 else f"a {tokens[0]} made of gold"


def prepare(fixdir: Path, asset: Path, components: str | None = None, prompt: str | None = None,
            stand_ins: bool = True) -> None:
    """Write every fixture (see the module docstring) into ``fixdir`` and print what was written."""
    if asset == DEFAULT_ASSET and not DEFAULT_ASSET.is_file():
        from dreamedit3d_core.testing.examples import write_example_asset

        asset = fixdir / "example_asset" / "dreamedit3d_toy.glb"
        if not asset.is_file():
            write_example_asset(asset)
    if not asset.is_file():
        raise FileNotFoundError(f"asset {asset} not found; pass --asset PATH (glb/gltf/obj/ply)")
    spec, default_prompt = components_for(asset)  # also loads the asset: a broken file stops here, before any write
    if components:
        spec, default_prompt = components, prompt_for(components)
    prompt = prompt or default_prompt
    models = fixdir / "models"
    ckpt = write_checkpoint(models)
    name = copy_asset(asset, fixdir / "input")
    print(f"prepare_host: checkpoint {ckpt}")
    print(f"prepare_host: asset input/{name.as_posix()}")
    sam = write_sam(models)
    print(f"prepare_host: SAM {sam}")
    if stand_ins:
        finetuned, tokens = write_personalized(models, spec)
        print(f"prepare_host: sample-only model {finetuned} and tokens {tokens} (random stand-ins)")
    adapted = write_adapted_workflows(fixdir, name.as_posix(), spec, prompt)
    print(f"prepare_host: components {spec!r}, edit prompt {prompt!r}")
    print(f"prepare_host: workflows for this asset: {', '.join(str(p) for p in adapted)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fixdir", type=Path)
    ap.add_argument("--asset", type=Path, default=DEFAULT_ASSET, help="the asset to copy into input/ (default: %(default)s)")
    ap.add_argument("--components", default=None,
                    help="component spec (default: the example's for the default asset, else made from the asset's parts)")
    ap.add_argument("--prompt", default=None, help="edit prompt (default: one with the components' tokens)")
    ap.add_argument("--no-stand-ins", action="store_true",
                    help="do not write the sample-only workflow's random stand-in model and tokens (with a real "
                         "checkpoint, sample-only loads what your full edit saved)")
    # the sample-only fixtures are written by default now; kept so older scripts still run
    ap.add_argument("--personalized", "--no-personalized", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        prepare(args.fixdir, args.asset, args.components, args.prompt, stand_ins=not args.no_stand_ins)
    except (ValueError, OSError) as exc:  # the core's errors are ValueErrors with one-line messages
        print(f"prepare_host: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
