"""One personalization -> many edits on the real server: a two-line prompt gives 8 views, 2 GLBs with their own
provenance, a 2x4 contact sheet, PNGs with provenance chunks, and ReadProvenance returning the record.

Runs tests/workflows/batch_edits.api.json (the twin of workflows/batch_edits.json) on the session's server.
"""

from __future__ import annotations

import json

import pytest

from _host import load_api_workflow

pytestmark = pytest.mark.host

NEW_NODES = ("DreamEdit3D_ContactSheet", "DreamEdit3D_SaveViews", "DreamEdit3D_ReadProvenance")


@pytest.fixture(scope="module")
def batch_run(comfy_host):
    workflow = load_api_workflow("batch_edits")
    result = comfy_host.run(workflow, timeout=600)
    assert result.status == "success", (result.error, comfy_host.log_tail())
    return workflow, result


def test_new_nodes_are_registered_with_tooltips(comfy_host):
    info = comfy_host.object_info()
    for name in NEW_NODES:
        assert name in info, f"{name} not registered"
        assert info[name]["category"].startswith("DreamEdit3D/") and info[name]["description"]
        for cat in ("required", "optional"):
            for inp, spec in info[name]["input"].get(cat, {}).items():
                assert (spec[1] if len(spec) > 1 else {}).get("tooltip"), f"{name}.{inp} has no tooltip"


def test_two_prompts_give_eight_views_two_glbs_with_their_own_provenance_and_a_contact_sheet(comfy_host, batch_run):
    from PIL import Image

    from dreamedit3d_core import __version__
    from dreamedit3d_core.contact_sheet import sheet_layout
    from dreamedit3d_core.prompts import split_prompts, with_suffixes
    from dreamedit3d_core.provenance import read_file_provenance

    workflow, result = batch_run
    out = result.outputs
    prompts = [with_suffixes(p) for p in split_prompts(workflow["3"]["inputs"]["prompt"])]
    assert len(prompts) == 2
    # MVSample: 8 views
    views = [Image.open(comfy_host.output_file(i)) for i in out["6"]["images"]]
    assert len(views) == 8 and all(v.size == (64, 64) for v in views)
    # LiftToMesh: one GLB per edit, each with its own prompt and the exact seed / sampler / steps
    glbs = out["7"]["3d"]
    assert len(glbs) == 2
    records = [read_file_provenance(comfy_host.output_file(g)) for g in glbs]
    for n, rec in enumerate(records):
        assert rec["prompt"] == prompts[n] and rec["edit_index"] == n and rec["edit_count"] == 2
        assert rec["negative_prompt"] == workflow["3"]["inputs"]["negative_prompt"]
        assert rec["seed"] == 11 and rec["sampler"] == "euler" and rec["cfg"] == 7.5 and rec["steps"] == 2
        assert len(rec["sigmas"]) == 3 and rec["sigmas"][-1] == 0.0 and rec["version"] == __version__
        assert len(rec["base_model_hash"]) >= 16
    assert records[0]["sigmas"] == records[1]["sigmas"]
    # core SaveGLB writes both meshes of the MESH batch
    assert len(out["12"]["3d"]) == 2
    # ContactSheet: one image, 2 rows x 4 views of 64 px
    sheets = [Image.open(comfy_host.output_file(i)) for i in out["9"]["images"]]
    lay = sheet_layout(2, (64, 64))
    assert len(sheets) == 1 and sheets[0].size == (lay.width, lay.height)
    # SaveViews: 8 PNGs, each recording its edit's prompt and its view
    pngs = out["10"]["images"]
    assert len(pngs) == 8
    recs = [read_file_provenance(comfy_host.output_file(i)) for i in pngs]
    assert [r["view"] for r in recs[4:]] == ["front", "right", "back", "left"]
    assert all(r["prompt"] == prompts[i // 4] and r["seed"] == 11 for i, r in enumerate(recs))
    # ReadProvenance: the first GLB's record as JSON
    assert json.loads(out["11"]["text"][0]) == records[0]
