"""The UI templates in the real ComfyUI frontend: they load, and the frontend's own graphToPrompt gives our API twins.

This checks the templates against the frontend itself (not only against tools/comfy_workflow.py): widget order,
control_after_generate values and links are read by the same code that queues a user's prompt.
"""

from __future__ import annotations

import json

import pytest

from _browser import frontend_page
from _host import UI_WORKFLOWS, api_workflow_names, load_api_workflow, with_template_values, without_meta

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def frontend(comfy_host):
    with frontend_page(comfy_host.url + "/") as page:
        yield page


def server_inputs(prompt: dict, object_info: dict) -> dict:
    """Only what the server reads: inputs its node schemas declare, with a value. The frontend adds widgets of its own
    (the 3D nodes' 'image' preview) and sends null for an optional combo with no choices (no SAM file installed)."""
    out = {}
    for nid, node in prompt.items():
        spec = object_info[node["class_type"]]["input"]
        declared = set(spec.get("required", {})) | set(spec.get("optional", {}))
        out[nid] = {"class_type": node["class_type"],
                    "inputs": {k: v for k, v in node["inputs"].items() if k in declared and v is not None}}
    return out


@pytest.mark.parametrize("name", ["full_edit", "full_edit_swapped_sampler", "sample_only", "batch_edits"])
def test_frontend_turns_each_template_into_its_api_twin(frontend, comfy_host, name):
    assert name in api_workflow_names()
    ui = json.loads((UI_WORKFLOWS / f"{name}.json").read_text())
    prompt = frontend.evaluate(f"""(async () => {{
        await app.loadGraphData({json.dumps(ui)}, true, true, "dreamedit3d-{name}");
        const p = await app.graphToPrompt();
        return JSON.stringify(p.output);
    }})()""")
    info = comfy_host.object_info()
    got = server_inputs(json.loads(prompt), info)
    expected = server_inputs(without_meta(with_template_values(load_api_workflow(name), name)), info)
    assert got == expected
