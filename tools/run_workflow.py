"""Run an example workflow headless in a real ComfyUI and print where the results are (the README's first command).

    python tools/run_workflow.py [--workflow full_edit] [--asset PATH] [--out DIR] [--comfyui PATH]

* ComfyUI: ``--comfyui`` or ``$COMFYUI_PATH`` (your own ComfyUI), else the host tools/setup_env.sh installs
  (``.host/comfyui``). The server runs with a base directory under ``--out`` (your ComfyUI's folders are not written),
  the pack linked into its ``custom_nodes/``, on 127.0.0.1 and a free port, and is stopped when the run ends.
* Model: a real MVDream checkpoint (``sd-v2.1-base-4view.pt`` or ``.safetensors``) found in ``<ComfyUI>/models/mvdream``,
  ``--out``'s ``models/mvdream`` or ``$DREAMEDIT3D_CHECKPOINT`` runs the UI template (``workflows/<name>.json``) at full
  size. Without one, the tiny RANDOM checkpoint of the tests runs the tiny test twin: the pipeline works end to end but
  the images and the mesh's texture are noise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO))

from comfy_host import ComfyHost, HostError, link_or_copy, prepare_base_directory  # noqa: E402
from comfy_workflow import ui_to_api  # noqa: E402

DEFAULT_SHARED_ASSET = REPO.parent / "shared" / "assets" / "kenney_character.glb"
REAL_NAMES = ("sd-v2.1-base-4view.pt", "sd-v2.1-base-4view.safetensors")
TINY_NAME = "dreamedit3d-tiny-random-4view.pt"
BANNER = "!" * 100


def find_real_checkpoint(comfy: Path, out: Path) -> Path | None:
    env = os.environ.get("DREAMEDIT3D_CHECKPOINT")
    if env:
        if not Path(env).is_file():
            raise SystemExit(f"DREAMEDIT3D_CHECKPOINT={env} is not a file")
        return Path(env)
    for folder in (comfy / "models" / "mvdream", out / "models" / "mvdream"):
        for name in REAL_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run a DreamEdit3D example workflow headless in ComfyUI.")
    ap.add_argument("--workflow", default="full_edit", help="full_edit | full_edit_swapped_sampler | sample_only")
    ap.add_argument("--asset", type=Path, default=None,
                    help="asset to edit (default: ../shared's kenney_character.glb when present, else the pack's own "
                         "built-in toy figure)")
    ap.add_argument("--components", default=None,
                    help='component spec for your asset, e.g. "hat: Hat, Brim; dog: *" (part names as OrthoRender lists them)')
    ap.add_argument("--prompt", default=None, help='edit prompt with the component tokens, e.g. "a <dog> wearing a <hat>"')
    ap.add_argument("--out", type=Path, default=REPO / "out" / "example", help="work folder (default: %(default)s)")
    ap.add_argument("--comfyui", type=Path, default=None, help="ComfyUI folder (default: $COMFYUI_PATH or .host/comfyui)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the run")
    args = ap.parse_args(argv)

    comfy = args.comfyui or Path(os.environ.get("COMFYUI_PATH") or REPO / ".host" / "comfyui")
    if not (comfy / "main.py").is_file():
        print(f"no ComfyUI at {comfy}: run tools/setup_env.sh or set COMFYUI_PATH", file=sys.stderr)
        return 2
    out = args.out.resolve()
    fixdir = out / "fixtures"
    if args.asset is None and not DEFAULT_SHARED_ASSET.is_file():
        # no ../shared beside the clone (a user's machine): the pack's own example, built on the fly
        from dreamedit3d_core.examples import EXAMPLE_COMPONENTS, EXAMPLE_PROMPT, write_example_asset

        toy = out / "example_asset" / "dreamedit3d_toy.glb"
        if not toy.is_file():
            write_example_asset(toy)
        args.asset = toy
        args.components = args.components or EXAMPLE_COMPONENTS
        args.prompt = args.prompt or EXAMPLE_PROMPT
        print(f"[run] example asset: the built-in toy figure {toy} (components {args.components!r})", flush=True)
    prep = [sys.executable, str(REPO / "tests" / "workflows" / "prepare_host.py"), str(fixdir)]
    if args.asset is not None:
        prep += ["--asset", str(args.asset)]
    real = find_real_checkpoint(comfy, out)
    if real is None and args.workflow == "sample_only":
        prep.append("--personalized")
        if args.components is not None:
            prep += ["--components", args.components]
    print(f"[run] preparing the asset and checkpoints in {fixdir}", flush=True)
    subprocess.run(prep, check=True)

    base = prepare_base_directory(out / "comfy_base", REPO, fixdir)
    if real is not None:
        target = base / "models" / "mvdream" / real.name
        if not target.exists():
            link_or_copy(real, target)
        print(f"[run] MVDream checkpoint: {real}")
    else:
        print(BANNER)
        print("!! NO REAL MVDream CHECKPOINT FOUND: running the TINY RANDOM model. The pipeline runs end to end, but the")
        print("!! images and the mesh texture are NOISE. Put sd-v2.1-base-4view.pt into models/mvdream of your ComfyUI")
        print(f"!! ({comfy / 'models' / 'mvdream'}) or set DREAMEDIT3D_CHECKPOINT=/path/to/it for a real edit.")
        print(BANNER, flush=True)

    host = ComfyHost(comfy, base, python=sys.executable)
    print(f"[run] starting ComfyUI ({comfy}) on {host.url}, log: {host.log_path}", flush=True)
    host.start()
    try:
        failures = host.pack_import_failures()
        if failures:
            print("\n".join(failures), file=sys.stderr)
            return 1
        if real is not None:
            ui = json.loads((REPO / "workflows" / f"{args.workflow}.json").read_text())
            prompt = ui_to_api(ui, host.object_info())
            for node in prompt.values():
                if node["class_type"] == "DreamEdit3D_MVDreamLoader" and args.workflow != "sample_only":
                    node["inputs"]["ckpt_name"] = real.name
        else:
            prompt = json.loads((REPO / "tests" / "workflows" / f"{args.workflow}.api.json").read_text())
        for node in prompt.values():
            if args.asset is not None and node["class_type"] == "DreamEdit3D_OrthoRender":
                node["inputs"]["asset"] = f"dreamedit3d/{args.asset.name}"
            if args.components is not None and node["class_type"] == "DreamEdit3D_ComponentMask":
                node["inputs"]["components"] = args.components
            if args.prompt is not None and node["class_type"] == "DreamEdit3D_ComposePrompt":
                node["inputs"]["prompt"] = args.prompt
        last = {}

        def show(_host, kind, data, _result):
            if kind == "executing" and data.get("node"):
                title = prompt.get(data["node"], {}).get("class_type", data["node"])
                print(f"[run] node {data['node']} {title}", flush=True)
            elif kind == "progress":
                key = data.get("node")
                if time.time() - last.get(key, 0) > 5 or data["value"] == data["max"]:
                    last[key] = time.time()
                    print(f"[run]   {data['value']}/{data['max']}", flush=True)

        try:
            result = host.run(prompt, timeout=args.timeout, on_event=show)
        except HostError as exc:
            print(f"[run] ComfyUI refused the workflow: {exc}", file=sys.stderr)
            return 1
        if result.status != "success":
            err = result.error or {}
            print(f"[run] the run ended with {result.status}: {err.get('node_type')} {err.get('exception_message')}",
                  file=sys.stderr)
            return 1
        print(f"[run] done in {result.seconds:.1f} s. Outputs:")
        for nid, out_ui in result.outputs.items():
            kind = prompt.get(nid, {}).get("class_type", nid)
            for item in out_ui.get("3d", []):
                print(f"  GLB    ({kind}): {host.output_file(item)}")
            for item in out_ui.get("images", []):
                if item.get("type") == "output":
                    print(f"  image  ({kind}): {host.output_file(item)}")
            for line in out_ui.get("text", []):
                print(f"  note   ({kind}): {line}")
        if real is None:
            print("[run] reminder: TINY RANDOM model, the images and texture above are noise.")
    finally:
        host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
