"""DreamEdit3D_TokenReport inside the real ComfyUI server, in the full-edit workflow (issue 18).

The full edit's API twin plus one TokenReport node wired to the fine-tuned model, its tokens, the masked views and
the base model: the run must succeed, the heat map must come back as an image output and the verdicts as text.
"""

from __future__ import annotations

import copy

import pytest

from _host import load_api_workflow
from conftest import skip_or_fail

pytestmark = pytest.mark.host

REPORT = "90"
#: the report's own training run: its training nodes must not share ComfyUI's cache (nor the training folder) with the
#: full edit that tests/host/test_host_workflows.py runs later in the same server, whose progress events it asserts
RUN_NAME = "dreamedit3d-token-report-test"


def only_what_feeds(prompt: dict, output: str) -> dict:
    """The nodes ``output`` depends on, and it: no other output node runs (nothing else is saved)."""
    keep, todo = set(), [output]
    while todo:
        nid = todo.pop()
        if nid in keep:
            continue
        keep.add(nid)
        todo += [v[0] for v in prompt[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)]
    return {nid: node for nid, node in prompt.items() if nid in keep}


def test_token_report_runs_in_the_full_edit_and_shows_its_heatmap_and_verdicts(comfy_host):
    from PIL import Image

    info = comfy_host.object_info()
    if "DreamEdit3D_TokenReport" not in info:
        skip_or_fail("DreamEdit3D_TokenReport is not registered (nodes/__init__.py: add nodes.token_report.TokenReport)")
    prompt = copy.deepcopy(load_api_workflow("full_edit"))
    finetune = next(n for n, node in prompt.items() if node["class_type"] == "DreamEdit3D_MVFineTune")
    loader = next(n for n, node in prompt.items() if node["class_type"] == "DreamEdit3D_MVDreamLoader")
    masks = next(n for n, node in prompt.items() if node["class_type"] == "DreamEdit3D_ComponentMask")
    views_slot = prompt[finetune]["inputs"]["views"]
    assert views_slot[0] == masks
    prompt[REPORT] = {"class_type": "DreamEdit3D_TokenReport", "inputs": {
        "model": [finetune, 0], "views": views_slot, "tokens": [finetune, 1], "base_model": [loader, 0],
        "init_words": "", "measure_images": True, "sample_steps": 2, "cfg": 5.0, "seed": 23}}
    prompt = only_what_feeds(prompt, REPORT)
    for node in prompt.values():
        if "run_name" in node["inputs"]:
            node["inputs"]["run_name"] = RUN_NAME
    assert {node["class_type"] for node in prompt.values()} >= {"DreamEdit3D_MultiViewTextualInversion",
                                                                "DreamEdit3D_MVFineTune"}
    assert not any(node["class_type"].startswith(("Save", "DreamEdit3D_Save")) for node in prompt.values())
    result = comfy_host.run(prompt, timeout=900)
    assert result.status == "success", (result.error, comfy_host.log_tail())
    shown = result.outputs[REPORT]
    images = shown.get("images", [])
    assert len(images) == 1
    heat = Image.open(comfy_host.output_file(images[0]))
    assert heat.width > heat.height > 0  # one row per token (antenna, robot), 4 + 4 + 4 tiles wide
    lines = shown["text"][0].splitlines()
    assert [line.split(":")[0] for line in lines] == ["<antenna>", "<robot>"]
