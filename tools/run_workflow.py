"""Run an example workflow headless in a real ComfyUI and print where the results are (the README's first command).

    python tools/run_workflow.py [--workflow full_edit] [--asset PATH] [--out DIR] [--comfyui PATH]

* ComfyUI: ``--comfyui`` or ``$COMFYUI_PATH`` (your own ComfyUI), else the host tools/setup_env.sh installs
  (``.host/comfyui``). The server runs with a base directory under ``--out`` (your ComfyUI's folders are not written),
  the pack linked into its ``custom_nodes/``, on 127.0.0.1 and a free port, and is stopped when the run ends.
* Every failure (a missing or broken asset, a refused workflow, a failed node) ends in one line on stderr and a
  non-zero exit, never a Python traceback.
* Model: a real MVDream checkpoint (``sd-v2.1-base-4view.pt`` or ``.safetensors``) found in ``<ComfyUI>/models/mvdream``,
  ``--out``'s ``models/mvdream`` or ``$DREAMEDIT3D_CHECKPOINT`` runs the UI template (``workflows/<name>.json``) at full
  size. Without one, the tiny RANDOM checkpoint of the tests runs the tiny test twin (64 px views, 2 training steps
  per phase, 3 sampling steps): the pipeline works end to end but the images and the mesh's texture are noise.
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
WORKFLOWS = ("full_edit", "full_edit_swapped_sampler", "sample_only", "batch_edits")


class RunError(Exception):
    """A failure reported to the user as one line (exit code ``code``)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def one_line(text) -> str:
    return " ".join(str(text).split())


def refusal_summary(body) -> str:
    """ComfyUI's 400 answer to a prompt as one line: each refused node with its first error's details."""
    if not isinstance(body, dict):
        return one_line(body)[:500]
    parts = []
    for nid, entry in (body.get("node_errors") or {}).items():
        errors = entry.get("errors") or [{}]
        parts.append(f"node {nid} {entry.get('class_type', '')}: {errors[0].get('details') or errors[0].get('message')}")
    if not parts:
        err = body.get("error") or {}
        parts.append(f"{err.get('message', '')} {err.get('details', '')}")
    return one_line("; ".join(parts))


def find_real_checkpoint(comfy: Path, out: Path) -> Path | None:
    env = os.environ.get("DREAMEDIT3D_CHECKPOINT")
    if env:
        if not Path(env).is_file():
            raise RunError(f"DREAMEDIT3D_CHECKPOINT={env} is not a file: give the path of sd-v2.1-base-4view.pt", 2)
        return Path(env)
    for folder in (comfy / "models" / "mvdream", out / "models" / "mvdream"):
        for name in REAL_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def main(argv=None) -> int:
    try:
        return run(argv)
    except RunError as exc:
        print(f"[run] error: {one_line(exc)}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("[run] error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the README's first command: one line, never a traceback
        print(f"[run] error: {type(exc).__name__}: {one_line(exc)[:800]}", file=sys.stderr)
        return 1


def run(argv=None) -> int:
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
        raise RunError(f"no ComfyUI at {comfy}: run tools/setup_env.sh or set COMFYUI_PATH", 2)
    if args.asset is not None and not args.asset.is_file():
        raise RunError(f"asset {args.asset} not found: pass --asset PATH to a GLB, GLTF, OBJ or PLY file", 2)
    if args.workflow not in WORKFLOWS:
        raise RunError(f"--workflow {args.workflow!r} is not one of {', '.join(WORKFLOWS)}", 2)
    out = args.out.resolve()
    fixdir = out / "fixtures"
    if args.asset is None and not DEFAULT_SHARED_ASSET.is_file():
        # no ../shared beside the clone (a user's machine): the pack's own example, built on the fly
        try:
            from dreamedit3d_core.testing.examples import EXAMPLE_COMPONENTS, EXAMPLE_PROMPT, write_example_asset
        except ImportError:  # before the test helpers moved into dreamedit3d_core.testing
            from dreamedit3d_core.testing.examples import EXAMPLE_COMPONENTS, EXAMPLE_PROMPT, write_example_asset

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
    if args.components is not None:
        prep += ["--components", args.components]
    if args.prompt is not None:
        prep += ["--prompt", args.prompt]
    real = find_real_checkpoint(comfy, out)
    if real is not None:  # sample-only then loads what your full edit saved, not the tiny stand-ins
        prep.append("--no-stand-ins")
    print(f"[run] preparing the asset and checkpoints in {fixdir}", flush=True)
    done = subprocess.run(prep, capture_output=True, text=True)
    if done.returncode != 0:  # prepare_host says what is wrong in its last line (a missing or broken asset, ...)
        lines = [line for line in done.stderr.splitlines() if line.strip()] or ["prepare_host.py failed"]
        raise RunError(lines[-1].replace("prepare_host: error: ", ""), 2)
    print(done.stdout, end="", flush=True)

    base = prepare_base_directory(out / "comfy_base", REPO, fixdir)
    if real is not None:
        target = base / "models" / "mvdream" / real.name
        if not target.exists():
            link_or_copy(real, target)
        print(f"[run] MVDream checkpoint: {real}")
    else:
        print(BANNER)
        print("!! NO REAL MVDream CHECKPOINT FOUND: running the TINY RANDOM model. The pipeline runs end to end, but the")
        print("!! images and the mesh texture are NOISE. It also runs at toy settings (64 px views, 2 training steps per")
        print("!! phase, 3 sampling steps). Put sd-v2.1-base-4view.pt into models/mvdream of your ComfyUI")
        print(f"!! ({comfy / 'models' / 'mvdream'}) or set DREAMEDIT3D_CHECKPOINT=/path/to/it: the run then uses the")
        print("!! shipped workflow at real settings (256 px, 400 + 400 training steps, 30 sampling steps).")
        print(BANNER, flush=True)

    host = ComfyHost(comfy, base, python=sys.executable)
    print(f"[run] starting ComfyUI ({comfy}) on {host.url}, log: {host.log_path}", flush=True)
    host.start()
    try:
        failures = host.pack_import_failures()
        if failures:
            raise RunError(f"the pack failed to import in ComfyUI: {one_line(failures[0])} (log: {host.log_path})")
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
            body = getattr(exc, "body", None)
            raise RunError(f"ComfyUI refused the workflow: {refusal_summary(body) if body else one_line(exc)[:800]}")
        if result.status != "success":
            err = result.error or {}
            raise RunError(f"the run ended with {result.status} at node {err.get('node_id')} {err.get('node_type')}: "
                           f"{one_line(err.get('exception_message', ''))}")
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
