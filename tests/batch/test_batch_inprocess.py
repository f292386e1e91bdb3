"""The batch in this process (``--workers 0``) on the tiny model: stop and resume, bad inputs, re-runs, the CLI."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import trimesh

from _batch_helpers import COMPONENTS, fast_settings, output_hashes
from dreamedit3d_core.batch import run_batch
from dreamedit3d_core.batch.cli import run as batch_cli
from dreamedit3d_core.errors import Interrupted

pytestmark = pytest.mark.slow


def test_stopped_personalisation_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(
        tiny_checkpoint, catalogue, tmp_path):
    lamp = tmp_path / "in" / "lamp.glb"
    lamp.parent.mkdir()
    shutil.copy(catalogue / "lamp.glb", lamp)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a <body> with a golden <top>\n", encoding="utf-8")
    args = ["--prompts", str(prompts), "--checkpoint", str(tiny_checkpoint), "--components", "top: top; body: *",
            "--resolution", "64", "--ti-steps", "3", "--ft-steps", "3", "--checkpoint-every", "1", "--steps", "2",
            "--grid", "32", "--texture-size", "64", "--quiet"]
    reference = tmp_path / "uninterrupted"
    assert batch_cli([str(lamp), "--out", str(reference), *args]) == 0

    calls = []

    def stop_in_phase_two():  # polled before every training step: 3 of phase 1, then phase 2
        calls.append(1)
        return len(calls) == 5

    stopped = tmp_path / "stopped"
    settings = fast_settings(ti_steps=3, ft_steps=3)
    with pytest.raises(Interrupted, match="re-run"):
        run_batch([lamp], [prompts.read_text().strip()], tiny_checkpoint, stopped, components="top: top; body: *",
                  settings=settings, show_progress=False, should_stop=stop_in_phase_two)
    asset_dir = next((stopped / "assets").iterdir())
    assert (asset_dir / "tokens_phase1.safetensors").is_file()
    assert [p.name for p in (asset_dir / "train").glob("phase2-step*.pt")] == ["phase2-step000001.pt"]
    assert not list(stopped.rglob("*.glb"))
    # what a writer killed at that moment would have left: temporary files of atomic writes
    (asset_dir / ".unet_lora.safetensors.0badc0ffee00.tmp").write_bytes(b"half a file")
    (asset_dir / ".tmp-killed").mkdir()
    (asset_dir / ".tmp-killed" / "image.png").write_bytes(b"half an image")

    result = run_batch([lamp], prompts, tiny_checkpoint, stopped, components="top: top; body: *", settings=settings,
                       show_progress=False)
    assert result.ok and len(result.computed) == 2 and len(result.glbs) == 1
    record = next(r["record"] for r in result.results if r["kind"] == "personalize")
    assert record["steps_run"] == {"textual_inversion": 0, "finetune": 2}  # phase 1 kept, phase 2 from step 1
    assert record["resumed_from_step"] == {"finetune": 1}  # (phase 1 was not run again at all)
    assert not (asset_dir / "train").exists()  # finished training leaves no state (nor its folder) behind
    assert output_hashes(stopped) == output_hashes(reference)  # byte-identical to the run that never stopped


def test_broken_assets_are_reported_and_the_others_done_and_nothing_is_redone(tiny_checkpoint, catalogue, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(catalogue / "mushroom.glb", folder / "mushroom.glb")
    shutil.copy(catalogue / "lamp.glb", folder / "lamp.glb")  # its spec below names a part it lacks
    (folder / "crate.glb").write_bytes(b"glTF\x02\x00\x00\x00 this is not a mesh")
    manifest = {"default": "body: *", "assets": {"mushroom.glb": COMPONENTS["assets"]["mushroom.glb"],
                                                 "lamp.glb": "top: lid; body: *"}}
    out = tmp_path / "out"
    prompts = ["a <body> with a golden <top>"]
    kwargs = dict(component_manifest=manifest, settings=fast_settings(ti_steps=1, ft_steps=1), show_progress=False)
    result = run_batch(folder, prompts, tiny_checkpoint, out, **kwargs)

    mushroom_edit = next(e.unit_id for e in result.plan.edits if e.parent.asset.name == "mushroom")
    assert sorted(result.computed) == sorted(["mushroom", mushroom_edit])
    assert len(result.glbs) == 1 and "mushroom" in result.glbs[0]
    assert set(result.failed) == {"crate", "lamp"}
    assert "crate.glb" in result.failed["crate"]
    assert "lid" in result.failed["lamp"] and "available parts" in result.failed["lamp"]
    assert len(result.skipped) == 2  # the failed assets' edits
    scene = trimesh.load(out / result.glbs[0].split(str(out) + "/")[1], force="scene")
    assert sum(len(g.faces) for g in scene.geometry.values()) > 0
    with open(out / "report.csv", newline="", encoding="utf-8") as f:
        rows = {r["asset"]: r for r in csv.DictReader(f)}
    assert rows["mushroom"]["status"] == "done" and rows["mushroom"]["glb"].endswith("edited.glb")
    assert rows["crate"]["status"] == "skipped" and "crate.glb" in rows["crate"]["message"]
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## Failed assets" in report and "**lamp**" in report and "lid" in report
    assert (out / "sheets" / "mushroom.png").is_file()

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name not in ("manifest.json",
                                                                                                  "report.md", "report.csv")}
    again = run_batch(folder, prompts, tiny_checkpoint, out, **kwargs)
    assert again.computed == [] and len(again.reused) == 2
    assert set(again.failed) == {"crate", "lamp"} and "earlier run" in again.failed["crate"]
    assert {p: p.stat().st_mtime_ns for p in before} == before  # not one output file rewritten
    retried = run_batch(folder, prompts, tiny_checkpoint, out, retry_failed=True, **kwargs)
    assert retried.computed == [] and "earlier run" not in retried.failed["crate"]


def test_url_output_with_metrics_lands_in_the_fsspec_store(tiny_checkpoint, catalogue, tmp_path):
    import fsspec

    from _metrics_helpers import write_tiny_clip_folder, write_tiny_dino_folder

    clip = write_tiny_clip_folder(tmp_path / "clip")
    dino = write_tiny_dino_folder(tmp_path / "dino")
    root = f"memory://batch-url-{tmp_path.name}"
    result = run_batch([catalogue / "mushroom.glb"], ["a <body> with a golden <top>"], tiny_checkpoint, root,
                       components=COMPONENTS["assets"]["mushroom.glb"]["components"],
                       settings=fast_settings(ti_steps=1, ft_steps=1), scratch=tmp_path / "scratch", clip=str(clip),
                       dino=str(dino), show_progress=False)
    assert result.ok and result.glbs == [f"{root}/{result.plan.edits[0].folder}/edited.glb"]
    fs = fsspec.filesystem("memory")
    base = root[len("memory://"):]
    edit = f"{base}/{result.plan.edits[0].folder}"
    assert fs.exists(f"{edit}/edited.glb") and fs.exists(f"{base}/report.md") and fs.exists(f"{base}/sheets/mushroom.png")
    assert fs.find(f"{base}/{result.plan.personalizations[0].folder}/train") == []  # states mirrored, then removed
    evidence = f"{base}/{result.plan.personalizations[0].folder}/token_evidence"  # the token report lands there too
    assert {Path(p).name for p in fs.find(evidence)} == {"done.json", "mushroom_tokens.json", "mushroom_tokens_heatmap.png"}
    token_rows = list(csv.DictReader(io.StringIO(fs.cat(f"{base}/tokens.csv").decode())))
    table = json.loads(fs.cat(f"{evidence}/mushroom_tokens.json"))
    assert {r["token"]: float(r["isolation"]) for r in token_rows} == {
        t: e["own"]["mean"] for t, e in table["attention"]["tokens"].items()}
    metrics = json.loads(fs.cat(f"{edit}/metrics.json"))["metrics"]
    assert set(metrics) == {"clip_directional", "clip_score", "clip_image", "dino_identity"}
    bounds = {"clip_directional": (-1, 1), "clip_score": (0, 100), "clip_image": (-1, 1), "dino_identity": (-1, 1)}
    assert all(bounds[k][0] <= m["mean"] <= bounds[k][1] for k, m in metrics.items())
    rows = list(csv.DictReader(io.StringIO(fs.cat(f"{base}/report.csv").decode())))
    assert rows[0]["status"] == "done" and "dino_identity=" in rows[0]["metrics"]
    again = run_batch([catalogue / "mushroom.glb"], ["a <body> with a golden <top>"], tiny_checkpoint, root,
                      components=COMPONENTS["assets"]["mushroom.glb"]["components"],
                      settings=fast_settings(ti_steps=1, ft_steps=1), scratch=tmp_path / "scratch2", show_progress=False)
    assert again.computed == [] and len(again.reused) == 2  # finished units found in the store from another scratch
