"""tools/comfy_workflow.py on a hand-written /object_info: widget order, control_after_generate, linked widgets.

Pure (no ComfyUI); the host tests check the same conversion against the real server and frontend.
"""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
from comfy_workflow import WorkflowError, api_to_ui, ui_to_api  # noqa: E402

pytestmark = pytest.mark.nodes

INFO = {
    "Loader": {"input": {"required": {"ckpt": [["a.pt", "b.pt"], {}], "dtype": ["COMBO", {"options": ["auto", "fp16"]}]}},
               "input_order": {"required": ["ckpt", "dtype"]}, "output": ["MODEL"], "output_name": ["model"]},
    "Sample": {"input": {"required": {"model": ["MODEL", {}], "seed": ["INT", {"default": 0, "control_after_generate": True}],
                                      "cfg": ["FLOAT", {"default": 7.5}], "text": ["STRING", {"forceInput": True}]},
                         "optional": {"note": ["STRING", {"default": ""}], "latent": ["LATENT", {}]}},
               "input_order": {"required": ["model", "seed", "cfg", "text"], "optional": ["note", "latent"]},
               "output": ["IMAGE"], "output_name": ["images"]},
    "Text": {"input": {"required": {"value": ["STRING", {"default": "x"}]}}, "input_order": {"required": ["value"]},
             "output": ["STRING"], "output_name": ["text"]},
    "Save": {"input": {"required": {"images": ["IMAGE", {}], "prefix": ["STRING", {"default": "out"}]}},
             "input_order": {"required": ["images", "prefix"]}, "output": [], "output_name": []},
}
API = {
    "1": {"class_type": "Loader", "inputs": {"ckpt": "b.pt", "dtype": "fp16"}},
    "2": {"class_type": "Text", "inputs": {"value": "hello"}},
    "3": {"class_type": "Sample", "inputs": {"model": ["1", 0], "seed": 42, "cfg": ["2", 0], "text": ["2", 0],
                                             "note": "n"}},
    "4": {"class_type": "Save", "inputs": {"images": ["3", 0], "prefix": "p"}},
}


def strip(api):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}


def test_api_to_ui_and_back_is_the_identity():
    ui = api_to_ui(API, INFO)
    assert strip(ui_to_api(ui, INFO)) == API


def test_ui_layout_follows_comfyui_conventions():
    ui = api_to_ui(API, INFO)
    sample = next(n for n in ui["nodes"] if n["id"] == 3)
    # seed carries its control_after_generate value; a linked widget keeps a placeholder value
    assert sample["widgets_values"] == [42, "fixed", 7.5, "n"]
    cfg = next(i for i in sample["inputs"] if i["name"] == "cfg")
    assert cfg["widget"] == {"name": "cfg"} and cfg["link"] is not None
    links = {tuple(link[1:5]) for link in ui["links"]}
    assert (1, 0, 3, 0) in links  # model: Loader slot 0 -> Sample input slot 0
    loader = next(n for n in ui["nodes"] if n["id"] == 1)
    assert loader["outputs"][0]["links"] and loader["pos"][0] < sample["pos"][0]


def test_wrong_widget_counts_and_unknown_nodes_are_reported():
    ui = api_to_ui(API, INFO)
    next(n for n in ui["nodes"] if n["id"] == 3)["widgets_values"].append("extra")
    with pytest.raises(WorkflowError, match=r"node 3 \(Sample\) has 5 widgets_values, its inputs use 4"):
        ui_to_api(ui, INFO)
    with pytest.raises(WorkflowError, match="unknown type 'Nope'"):
        api_to_ui({"1": {"class_type": "Nope", "inputs": {}}}, INFO)
    with pytest.raises(WorkflowError, match="cycle"):
        api_to_ui({"1": {"class_type": "Text", "inputs": {"value": ["2", 0]}},
                   "2": {"class_type": "Text", "inputs": {"value": ["1", 0]}}}, INFO)


def test_muted_and_note_nodes_are_dropped():
    ui = api_to_ui(API, INFO)
    ui["nodes"].append({"id": 9, "type": "Note", "widgets_values": ["hi"], "mode": 0})
    next(n for n in ui["nodes"] if n["id"] == 4)["mode"] = 2
    assert set(ui_to_api(ui, INFO)) == {"1", "2", "3"}
