"""Test harness for the real ComfyUI host: find the tree, prepare fixtures, start one server per session.

The server logic lives in ``tools/comfy_host.py`` (shared with the README's run command); this module adds what
pytest needs: where the host is (``COMFYUI_PATH`` or the project's ``.host/comfyui``), the fixture folder made by
``tests/workflows/prepare_host.py``, and loading the API-format workflows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "tests" / "workflows"
UI_WORKFLOWS = REPO / "workflows"
if str(REPO / "tools") not in sys.path:
    sys.path.insert(0, str(REPO / "tools"))

from comfy_host import ComfyHost, HostError, RunResult, prepare_base_directory  # noqa: E402,F401


def comfy_path() -> Optional[Path]:
    """The ComfyUI tree to test against: ``$COMFYUI_PATH``, else the host tools/setup_env.sh installs; None if neither exists."""
    for cand in (os.environ.get("COMFYUI_PATH"), REPO / ".host" / "comfyui"):
        if cand and (Path(cand) / "main.py").is_file():
            return Path(cand)
    return None


def prepare_fixtures(fixdir: Path, *extra: str) -> str:
    """Run ``tests/workflows/prepare_host.py FIXDIR`` with this interpreter (the host's). Returns its output."""
    proc = subprocess.run([sys.executable, str(WORKFLOWS / "prepare_host.py"), str(fixdir), *extra],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise HostError(f"prepare_host.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def start_host(root: Path, fixdir: Path, comfy: Path) -> ComfyHost:
    base = prepare_base_directory(root / "base", REPO, fixdir)
    return ComfyHost(comfy, base, python=sys.executable).start()


def load_api_workflow(name: str) -> dict:
    """An API-format workflow from tests/workflows (``name`` with or without ``.api.json``)."""
    path = WORKFLOWS / (name if name.endswith(".json") else f"{name}.api.json")
    return json.loads(path.read_text())


def api_workflow_names() -> list[str]:
    return sorted(p.name[: -len(".api.json")] for p in WORKFLOWS.glob("*.api.json"))


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [nid for nid, node in prompt.items() if node["class_type"] == class_type]


# The UI templates (workflows/*.json) are what users open: real-size settings and the released checkpoint's name.
# Their API twins (tests/workflows/*.api.json) are the same graphs with tiny settings so CI runs them in seconds on a
# tiny random checkpoint. These are the only values allowed to differ (per node type: input -> template value).
TEMPLATE_VALUES = {
    "DreamEdit3D_MVDreamLoader": {"ckpt_name": "sd-v2.1-base-4view.pt"},
    "DreamEdit3D_OrthoRender": {"resolution": 256},
    "DreamEdit3D_MultiViewTextualInversion": {"steps": 400, "checkpoint_every": 50, "preview_every": 25},
    "DreamEdit3D_MVFineTune": {"steps": 400, "checkpoint_every": 50, "preview_every": 25},
    "DreamEdit3D_MVScheduler": {"steps": 30},
    "KarrasScheduler": {"steps": 30},
    "DreamEdit3D_MVSample": {"resolution": 256},
    "DreamEdit3D_LiftToMesh": {"grid": 128, "texture_size": 1024},
}
# the sample-only template loads what the full edit saved (SaveMVDream / SaveTokens add a counter when taken)
SAMPLE_ONLY_TEMPLATE_VALUES = {"DreamEdit3D_MVDreamLoader": {"ckpt_name": "dreamedit3d-example-finetuned.safetensors"}}


def template_values(name: str) -> dict:
    values = {k: dict(v) for k, v in TEMPLATE_VALUES.items()}
    if name == "sample_only":
        values.update(SAMPLE_ONLY_TEMPLATE_VALUES)
    return values


def with_template_values(api: dict, name: str) -> dict:
    """The API twin ``api`` with the template's real-size values (what the UI template converts to)."""
    values = template_values(name)
    out = {}
    for nid, node in api.items():
        inputs = dict(node["inputs"])
        for key, value in values.get(node["class_type"], {}).items():
            if key in inputs and not isinstance(inputs[key], list):
                inputs[key] = value
        out[nid] = {**node, "inputs": inputs}
    return out


def without_meta(api: dict) -> dict:
    return {nid: {"class_type": n["class_type"], "inputs": n["inputs"]} for nid, n in api.items()}
