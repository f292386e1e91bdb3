"""The schema-derived input check on a real server: every widget of the shipped workflows, set just outside the range
its own /object_info declares (or NaN/inf, or a choice not offered), is refused at its node with HTTP 400 naming the
input, and the server stays up. Escaping save names are refused the same way."""

from __future__ import annotations

import copy
import json
import math

import pytest

from _host import load_api_workflow

pytestmark = pytest.mark.host


def _bad_values(kind: str, spec: dict) -> list:
    values = []
    if kind in ("INT", "FLOAT"):
        step = 0.5 if kind == "FLOAT" else 1
        if spec.get("min") is not None:
            values.append(spec["min"] - step)
        if spec.get("max") is not None:
            values.append(spec["max"] + step)
        if kind == "FLOAT":
            values += [math.nan, math.inf, -math.inf]
    elif kind == "COMBO" or isinstance(kind, list):
        if not any(k in spec for k in ("file_upload", "image_upload")):
            values.append("no-such-choice")
    return values


def _widget_specs(object_info: dict, class_type: str) -> dict:
    info = object_info[class_type]["input"]
    out = {}
    for section in ("required", "optional"):
        for name, entry in info.get(section, {}).items():
            kind = entry[0]
            spec = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            out[name] = ("COMBO" if isinstance(kind, list) else kind, spec)
    return out


def _ancestors(prompt: dict, nid: str) -> set:
    seen, todo = set(), [nid]
    while todo:
        cur = todo.pop()
        if cur in seen:
            continue
        seen.add(cur)
        todo += [v[0] for v in prompt[cur]["inputs"].values() if isinstance(v, list) and len(v) == 2]
    return seen


def _only_through(prompt: dict, nid: str, object_info: dict) -> dict:
    """The part of ``prompt`` whose every output node depends on node ``nid`` (ComfyUI queues the outputs that do not
    depend on an invalid node and refuses the prompt only when none is left)."""
    for node in prompt.values():  # SaveTokens' tokens output passes its input through: link the input instead, so
        for key, value in node["inputs"].items():  # that output node is no ancestor of everything downstream
            if isinstance(value, list) and prompt[value[0]]["class_type"] == "DreamEdit3D_SaveTokens":
                node["inputs"][key] = prompt[value[0]]["inputs"]["tokens"]
    outputs = [o for o, node in prompt.items() if object_info[node["class_type"]].get("output_node")
               and nid in _ancestors(prompt, o)]
    keep = set().union(*(_ancestors(prompt, o) for o in outputs))
    return {k: v for k, v in prompt.items() if k in keep}


def _refusal(host, prompt) -> dict:
    status, body = host.post_prompt(prompt)
    assert status == 400, (status, body)  # refused at validation: nothing was queued
    return body


@pytest.mark.parametrize("workflow", ["full_edit", "batch_edits"])
def test_every_out_of_range_widget_is_refused_at_its_node(comfy_host, workflow):
    base = load_api_workflow(workflow)
    object_info = comfy_host.object_info()
    checked = 0
    for nid, node in base.items():
        if not node["class_type"].startswith("DreamEdit3D_"):
            continue
        for name, (kind, spec) in _widget_specs(object_info, node["class_type"]).items():
            if name not in node["inputs"] or isinstance(node["inputs"][name], list):
                continue
            for value in _bad_values(kind, spec):
                prompt = _only_through(copy.deepcopy(base), nid, object_info)
                prompt[nid]["inputs"][name] = value
                body = _refusal(comfy_host, prompt)
                errors = body.get("node_errors", {}).get(nid, {}).get("errors", [])
                assert errors and name in json.dumps(errors), (node["class_type"], name, value, body)
                checked += 1
    assert checked >= 20
    assert comfy_host.alive()


def test_the_values_found_accepted_before_are_refused(comfy_host):
    object_info = comfy_host.object_info()
    cases = [("9", "steps", 0), ("9", "steps", 1001), ("9", "denoise", math.nan), ("9", "denoise", -1.0),
             ("9", "denoise", 2.0), ("2", "elevation_deg", -60.0), ("2", "fov_deg", 120.0),
             ("12", "face_budget", 2_000_001), ("12", "texture_size", 4097)]
    for nid, name, value in cases:
        prompt = _only_through(load_api_workflow("full_edit"), nid, object_info)
        prompt[nid]["inputs"][name] = value
        body = _refusal(comfy_host, prompt)
        assert name in json.dumps(body["node_errors"][nid]), (name, value, body)
    assert comfy_host.alive()


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "..\\..\\x.glb"])
def test_save_names_that_leave_their_folder_are_refused(comfy_host, name):
    object_info = comfy_host.object_info()
    for nid, key in (("18", "filename"), ("6", "name"), ("4", "run_name"), ("12", "filename_prefix")):
        prompt = _only_through(load_api_workflow("full_edit"), nid, object_info)
        prompt[nid]["inputs"][key] = name
        body = _refusal(comfy_host, prompt)
        assert key in json.dumps(body["node_errors"][nid]), (key, name, body)
    assert comfy_host.alive()
