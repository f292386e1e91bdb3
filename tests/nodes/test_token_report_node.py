"""DreamEdit3D_TokenReport against the real comfy_api in-process: the node is a thin adapter over token_report.

The chain Loader -> OrthoRender -> ComponentMask -> MultiViewTextualInversion runs as ComfyUI runs it (inference
mode), then the report node; its JSON must equal the core function's on the same inputs, its heat map must be an
IMAGE, and the model it measured must come back unchanged (the swap puts the vectors back).
"""

from __future__ import annotations

import json

import pytest
import torch

from _comfy_pack import comfy_root, import_comfy_tree, import_pack, install_robot_asset, node, point_folders_at
from conftest import skip_or_fail

pytestmark = pytest.mark.nodes


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = comfy_root()
    if root is None:
        skip_or_fail("no ComfyUI tree: run tools/setup_env.sh or set COMFYUI_PATH")
    import_comfy_tree(root)
    point_folders_at(tmp_path_factory.mktemp("comfy_base"))
    pack = import_pack()
    import importlib

    from dreamedit3d_pack.dreamedit3d_core.testing.tiny import write_tiny_checkpoint
    from dreamedit3d_pack.nodes import _compat

    write_tiny_checkpoint(_compat.model_folder("mvdream") / "tiny-report-test.safetensors", seed=0)
    install_robot_asset(_compat.input_folder())
    get = pack.NODES.get
    with torch.inference_mode():
        (base,) = node(get("DreamEdit3D_MVDreamLoader")).execute(ckpt_name="tiny-report-test.safetensors").result
        views = node(get("DreamEdit3D_OrthoRender")).execute(asset="robot/kenney_character.glb", resolution=64).result[-1]
        views = node(get("DreamEdit3D_ComponentMask")).execute(views=views, components="antenna: antenna; robot: *").result[-1]
        ti = node(get("DreamEdit3D_MultiViewTextualInversion")).PREPARE_CLASS_CLONE({"unique_id": "7"})
        model, tokens = ti.execute(model=base, views=views, init_words="", steps=2, learning_rate=5e-2,
                                   attention_loss_weight=0.01, seed=0, run_name="token-report-test", resume=False,
                                   checkpoint_every=1000, preview_every=0).result
    module = importlib.import_module("dreamedit3d_pack.nodes.token_report")
    return module, base, model, views, tokens


def test_report_node_outputs_the_core_report_a_heatmap_and_one_verdict_per_token(chain):
    module, base, model, views, tokens = chain
    from dreamedit3d_pack.dreamedit3d_core import token_report as core

    before = model.token_embedding.weight.detach().clone()
    report_node = node(module.TokenReport).PREPARE_CLASS_CLONE({"unique_id": "9"})
    with torch.inference_mode():
        out = report_node.execute(model=model, views=views, tokens=tokens, measure_images=True, sample_steps=2, cfg=5.0,
                                  seed=3, base_model=base, init_words="antenna: antenna")
    text, heat, verdicts = out.result
    table = json.loads(text)
    assert table["tokens"] == ["<antenna>", "<robot>"] and table["components"] == ["antenna", "robot"]
    assert table["views"] == ["front", "right", "back", "left"]
    for token in table["tokens"]:
        entry = table["attention"]["tokens"][token]
        assert len(entry["own"]["per_view"]) == 4 and set(entry["leakage"]) == {"antenna", "robot"}
        shares = [entry["leakage"][c]["mean"] for c in ("antenna", "robot")] + [entry["outside_all"]["mean"]]
        assert sum(shares) == pytest.approx(1.0, abs=2e-3)  # disjoint masks: own + other + outside = all the mass
    assert table["reference"]["words"] == ["antenna", "robot"]
    assert set(table["omission"]) == {"<antenna>", "<robot>"} and table["swap"][0]["tokens"] == ["<antenna>", "<robot>"]
    assert set(table["reconstruction"]["components"]["robot"]) == {"psnr"}
    lines = verdicts.splitlines()
    assert len(lines) == 2 and lines[0].startswith("<antenna>: ") and lines[1].startswith("<robot>: ")
    assert heat.ndim == 4 and heat.shape[0] == 1 and heat.shape[-1] == 3
    assert out.ui["text"] == (verdicts,) and len(out.ui["images"]) == 1  # shown on the node: heat map + verdicts
    assert torch.equal(model.token_embedding.weight.detach(), before), "the swap must put the vectors back"

    # the node adds nothing of its own to the numbers: the core function on the same inputs gives the same table
    config = core.TokenReportConfig(sample_steps=2, cfg=5.0, seed=3)
    with torch.inference_mode():
        direct = core.token_report(model, tokens, views.render, views.masks, config, reference_model=base,
                                   reference_words=("antenna", ""))
    assert json.loads(core.report_to_json(direct.table)) == table
    assert torch.allclose(heat[0].permute(2, 0, 1).cpu(), direct.heatmap, atol=1e-6)


def test_report_node_refuses_an_ablation_without_a_base_model(chain):
    module, base, model, views, tokens = chain
    from dreamedit3d_pack.dreamedit3d_core.errors import ConfigError

    report_node = node(module.TokenReport).PREPARE_CLASS_CLONE({"unique_id": "10"})
    with pytest.raises(ConfigError, match="ablation needs the base model"):
        report_node.execute(model=model, views=views, tokens=tokens, measure_images=False, sample_steps=2, cfg=5.0,
                            seed=3, ablation=True)
    assert module.TokenReport.define_schema().node_id == "DreamEdit3D_TokenReport"
    assert module.TokenReport.define_schema().is_output_node  # it runs with nothing wired to its outputs
    module.TokenReport.define_schema().validate()


def test_report_node_ablation_compares_lambda_zero_with_the_attention_loss(chain):
    module, base, model, views, tokens = chain
    report_node = node(module.TokenReport).PREPARE_CLASS_CLONE({"unique_id": "11"})
    with torch.inference_mode():
        out = report_node.execute(model=model, views=views, tokens=tokens, measure_images=False, sample_steps=2,
                                  cfg=5.0, seed=3, base_model=base, ablation=True, ablation_steps=2,
                                  ablation_learning_rate=5e-2, attention_loss_weight=1.0)
    ablation = json.loads(out.result[0])["ablation"]
    assert ablation["steps"] == 2 and ablation["attention_loss_weight"] == 1.0
    for token in ("<antenna>", "<robot>"):
        row = ablation["tokens"][token]
        assert row["gain"] == pytest.approx(row["own_with"] - row["own_without"], abs=1e-4)
        assert len(row["per_view_with"]) == 4
    assert "<robot>" not in base.tokenizer.added_tokens, "the ablation trains copies, never the base model"
