"""Token evidence in the batch (issue 18 item 2): every personalisation carries its token report, the catalogue
report lists each token's isolation and verdict, the numbers are the token_report library's for that scene, and a
re-run makes only what is missing."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from _batch_helpers import fast_settings
from dreamedit3d_core.batch import run_batch

pytestmark = pytest.mark.slow

LAMP = "top: top; body: *"
PROMPT = ["a <body> with a golden <top>"]


def _lamp(catalogue, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(catalogue / "lamp.glb", folder / "lamp.glb")
    return folder / "lamp.glb"


def _library_report(checkpoint, asset_folder, lamp, settings, images: bool):
    """The token report made here, by the library alone, from the batch's saved LoRA and tokens."""
    from dreamedit3d_core.assets import load_asset
    from dreamedit3d_core.cameras import MVCameras
    from dreamedit3d_core.masks import masks_from_parts
    from dreamedit3d_core.mvdream.checkpoint import load_mvdream
    from dreamedit3d_core.personalize.finetune import load_unet_lora
    from dreamedit3d_core.render import render_views
    from dreamedit3d_core.token_report import TokenReportConfig, token_report
    from dreamedit3d_core.tokens import apply_tokens, load_tokens

    base = load_mvdream(checkpoint)
    model = load_mvdream(checkpoint)
    load_unet_lora(model, asset_folder / "unet_lora.safetensors")
    tokens = load_tokens(asset_folder / "tokens.safetensors")
    apply_tokens(model, tokens)
    cameras = MVCameras.mvdream_default(elevation_deg=settings.elevation_deg, fov_deg=settings.fov_deg)
    render = render_views(load_asset(lamp), cameras, resolution=settings.resolution)
    masks = masks_from_parts(render, LAMP)
    config = TokenReportConfig(resolution=settings.resolution, images=images, sample_steps=settings.steps,
                               cfg=settings.cfg, seed=settings.seed, method=settings.sampler)
    return token_report(model, tokens, render, masks, config, reference_model=base)


def _png(path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


def _token_csv(out) -> dict:
    with open(out / "tokens.csv", newline="", encoding="utf-8") as f:
        return {(r["asset"], r["token"]): r for r in csv.DictReader(f)}


def test_each_personalisation_carries_the_library_token_report_and_the_catalogue_report_lists_it(
        tiny_checkpoint, catalogue, tmp_path):
    lamp = _lamp(catalogue, tmp_path)
    settings = fast_settings()
    out = tmp_path / "out"
    result = run_batch([lamp], PROMPT, tiny_checkpoint, out, components=LAMP, settings=settings, show_progress=False)
    assert result.ok and len(result.glbs) == 1

    asset_folder = out / result.plan.personalizations[0].folder
    evidence = asset_folder / "token_evidence"
    assert sorted(p.name for p in evidence.iterdir()) == ["done.json", "lamp_tokens.json", "lamp_tokens_heatmap.png"]
    outcome = next(r for r in result.results if r["kind"] == "personalize")
    assert outcome["evidence"]["status"] == "done" and not outcome["evidence"]["cached"]
    assert outcome["evidence"]["record"]["times_s"]["token_report_s"] > 0

    expected = _library_report(tiny_checkpoint, asset_folder, lamp, settings, images=True)
    table = json.loads((evidence / "lamp_tokens.json").read_text(encoding="utf-8"))
    assert table == json.loads(expected.to_json())  # every number, verdict and setting of the library's report
    assert set(table) >= {"attention", "reference", "reconstruction", "omission", "swap", "verdicts"}
    heatmap = (expected.heatmap.clamp(0, 1) * 255).round().byte()
    assert torch.equal(_png(evidence / "lamp_tokens_heatmap.png"), heatmap)

    rows = _token_csv(out)
    assert sorted(rows) == [("lamp", "<body>"), ("lamp", "<top>")]
    report_md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Token evidence" in report_md
    for token in ("<top>", "<body>"):
        entry = expected.table["attention"]["tokens"][token]
        row = rows[("lamp", token)]
        assert row["status"] == "done" and row["component"] == token.strip("<>")
        assert float(row["isolation"]) == entry["own"]["mean"]
        assert float(row["mask_area"]) == expected.table["attention"]["mask_area"][row["component"]]["mean"]
        other = "body" if token == "<top>" else "top"
        assert (row["largest_leak"], float(row["largest_leak_share"])) == (other, entry["leakage"][other]["mean"])
        assert float(row["reference_isolation"]) == entry["reference_own"]
        assert float(row["gain_over_reference"]) == entry["gain_over_reference"]
        assert float(row["omission_inside"]) == expected.table["omission"][token]["overall"]
        psnr = expected.table["reconstruction"]["components"][row["component"]]["psnr"]["mean"]
        assert float(row["reconstruction_psnr"]) == psnr and 0 < psnr < 100
        verdict = expected.verdicts[expected.table["tokens"].index(token)]
        assert row["verdict"] == verdict and row["heatmap"].endswith("lamp_tokens_heatmap.png")
        # the Markdown row: the token, its isolation (2 decimals) and its verdict
        line = next(line for line in report_md.splitlines() if f"| `{token}` |" in line)
        assert f"| {entry['own']['mean']:.2f} |" in line and verdict[len(token) + 2:] in line
    assert "lamp_tokens_heatmap.png)" in report_md
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    entry = manifest["units"][result.plan.personalizations[0].key]["token_evidence"]
    assert entry["status"] == "done" and set(entry["outputs"]) == {
        f"{result.plan.personalizations[0].folder}/token_evidence/{n}" for n in ("lamp_tokens.json",
                                                                                 "lamp_tokens_heatmap.png")}


def test_evidence_is_made_once_added_later_when_it_was_off_and_remade_only_when_incomplete(
        tiny_checkpoint, catalogue, tmp_path):
    lamp = _lamp(catalogue, tmp_path)
    out = tmp_path / "out"
    settings = fast_settings()

    def run(level):
        return run_batch([lamp], PROMPT, tiny_checkpoint, out, components=LAMP, settings=settings,
                         show_progress=False, token_evidence=level)

    first = run("off")
    assert first.ok and len(first.computed) == 2
    folder = out / first.plan.personalizations[0].folder
    assert not (folder / "token_evidence").exists() and not (out / "tokens.csv").exists()
    assert "Token evidence" not in (out / "report.md").read_text(encoding="utf-8")
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
            and p.name not in ("manifest.json", "report.md", "report.csv")}

    # switched on: only the evidence is made; the personalisation and the edit stay as they are
    later = run("attention")
    assert later.computed == ["lamp"] and later.reused == [first.plan.edits[0].unit_id]
    outcome = next(r for r in later.results if r["kind"] == "personalize")
    assert outcome["record"]["steps_run"] == first.results[0]["record"]["steps_run"]  # the old record, not retrained
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    table = json.loads((folder / "token_evidence" / "lamp_tokens.json").read_text(encoding="utf-8"))
    assert "omission" not in table and "reconstruction" not in table  # attention only
    expected = _library_report(tiny_checkpoint, folder, lamp, settings, images=False)
    assert table == json.loads(expected.to_json())
    rows = _token_csv(out)
    assert rows[("lamp", "<top>")]["omission_inside"] == rows[("lamp", "<top>")]["reconstruction_psnr"] == ""
    assert float(rows[("lamp", "<top>")]["isolation"]) == expected.table["attention"]["tokens"]["<top>"]["own"]["mean"]

    # a re-run makes nothing: the complete report is found by its record
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()
             and p.name not in ("manifest.json", "report.md", "report.csv")}
    again = run("attention")
    assert again.computed == [] and len(again.reused) == 2 and again.workers == []
    assert {p: p.stat().st_mtime_ns for p in files} == files
    assert "## Token evidence" in (out / "report.md").read_text(encoding="utf-8")

    # an incomplete report (its heat map lost) is made again, with the same bytes
    heatmap = folder / "token_evidence" / "lamp_tokens_heatmap.png"
    before = heatmap.read_bytes()
    heatmap.unlink()
    repaired = run("attention")
    assert repaired.computed == ["lamp"] and heatmap.read_bytes() == before


def test_evidence_that_cannot_be_made_is_reported_and_the_asset_is_still_edited(tiny_checkpoint, catalogue, tmp_path):
    lamp = _lamp(catalogue, tmp_path)
    out = tmp_path / "out"
    # a component named "photo": its plain word appears twice in the reference prompt "a photo of photo and body"
    kwargs = dict(components="photo: top; body: *", settings=fast_settings(ti_steps=1, ft_steps=1),
                  show_progress=False, token_evidence="attention")
    result = run_batch([lamp], ["a <body> with a golden <photo>"], tiny_checkpoint, out, **kwargs)
    assert result.ok and len(result.glbs) == 1  # the personalisation and its edit are done
    outcome = next(r for r in result.results if r["kind"] == "personalize")
    assert outcome["evidence"]["status"] == "failed" and "'photo'" in outcome["evidence"]["message"]
    assert not list((out / result.plan.personalizations[0].folder).glob("token_evidence/*.json"))
    rows = list(csv.DictReader(open(out / "tokens.csv", newline="", encoding="utf-8")))
    assert [(r["asset"], r["status"]) for r in rows] == [("lamp", "failed")] and "'photo'" in rows[0]["message"]
    assert "failed: " in (out / "report.md").read_text(encoding="utf-8")

    again = run_batch([lamp], ["a <body> with a golden <photo>"], tiny_checkpoint, out, **kwargs)
    assert again.computed == [] and again.workers == []  # the same inputs fail the same way: not tried again
    assert "'photo'" in (out / "report.md").read_text(encoding="utf-8")


def test_a_batch_stopped_during_the_token_report_makes_only_the_report_on_the_rerun(tiny_checkpoint, catalogue, tmp_path):
    from dreamedit3d_core.errors import Interrupted

    lamp = _lamp(catalogue, tmp_path)
    out = tmp_path / "out"
    kwargs = dict(components=LAMP, settings=fast_settings(ti_steps=1, ft_steps=1), show_progress=False,
                  token_evidence="attention")
    # stop as soon as the personalisation's weights are saved: the next poll is the token report's
    with pytest.raises(Interrupted, match="re-run"):
        run_batch([lamp], PROMPT, tiny_checkpoint, out, should_stop=lambda: any(out.glob("assets/*/done.json")), **kwargs)
    folder = next((out / "assets").iterdir())
    assert (folder / "done.json").is_file() and not (folder / "token_evidence" / "done.json").exists()
    trained = (folder / "unet_lora.safetensors").stat().st_mtime_ns

    result = run_batch([lamp], PROMPT, tiny_checkpoint, out, **kwargs)
    assert result.ok and sorted(result.computed) == sorted(["lamp", result.plan.edits[0].unit_id])
    outcome = next(r for r in result.results if r["kind"] == "personalize")
    assert outcome["evidence"]["status"] == "done" and not outcome["evidence"]["cached"]
    assert (folder / "unet_lora.safetensors").stat().st_mtime_ns == trained  # not trained again
    assert (folder / "token_evidence" / "lamp_tokens.json").is_file()
