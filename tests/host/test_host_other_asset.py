"""The example workflows run on an asset they were not written for, as an independent check would run them:
prepare_host.py adapts the API twins to the asset (file name, components from its own parts, edit prompt)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from _host import REPO

pytestmark = pytest.mark.host


def _prepare_host_module():
    spec = importlib.util.spec_from_file_location("prepare_host", REPO / "tests" / "workflows" / "prepare_host.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rename_runs(graph: dict, suffix: str) -> dict:
    """Own run/save names, so this run neither resumes nor collides with the example's files on the shared server."""
    for node in graph.values():
        inputs = node["inputs"]
        for key in ("run_name", "name", "filename"):
            if isinstance(inputs.get(key), str):
                inputs[key] = f"{inputs[key]}-{suffix}"
    return graph


@pytest.mark.parametrize("asset", ["Fox.gltf", "spider.obj"])
def test_full_edit_runs_on_an_asset_the_workflow_was_not_written_for(comfy_host, host_fixdir, shared_assets, tmp_path,
                                                                     asset):
    prep = _prepare_host_module()
    name = prep.copy_asset(shared_assets / asset, host_fixdir / "input").as_posix()
    spec, prompt = prep.components_for(shared_assets / asset)
    workflows = prep.write_adapted_workflows(tmp_path, name, spec, prompt)
    graph = _rename_runs(json.loads(next(p for p in workflows if p.name == "full_edit.api.json").read_text()),
                         asset.split(".")[0].lower())

    result = comfy_host.run(graph, timeout=900)
    assert result.status == "success", (result.error, comfy_host.log_tail())

    render = next(nid for nid, n in graph.items() if n["class_type"] == "DreamEdit3D_OrthoRender")
    assert graph[render]["inputs"]["asset"] == name
    glbs = [item for out in result.outputs.values() for item in out.get("3d", [])]
    assert glbs, result.outputs
    import trimesh

    scene = trimesh.load(comfy_host.output_file(glbs[0]), force="scene")
    assert sum(len(g.faces) for g in scene.geometry.values()) > 0
    masks_node = next(nid for nid, n in graph.items() if n["class_type"] == "SaveImage"
                      and "masks" in n["inputs"].get("filename_prefix", ""))
    expected = 4 * (1 if spec.startswith("object") else 2)
    assert len(result.outputs[masks_node]["images"]) == expected
