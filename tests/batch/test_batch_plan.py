"""Batch planning, content keys, done records, the output store and canonical safetensors (fast, no model)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from dreamedit3d_core.batch import BatchSettings, build_plan, read_prompts
from dreamedit3d_core.batch.manifest import finished_record, make_record
from dreamedit3d_core.batch.plan import asset_specs, find_assets, read_component_manifest
from dreamedit3d_core.batch.store import OutputStore, canonical_safetensors
from dreamedit3d_core.errors import ConfigError


def _files(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(f"asset {i} {name}".encode())
    return folder


def test_prompts_file_skips_blank_and_comment_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# catalogue\n a <body> made of gold \n\n# skip\na <body> with a <top>\n", encoding="utf-8")
    assert read_prompts(path) == ["a <body> made of gold", "a <body> with a <top>"]
    path.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="holds no prompt"):
        read_prompts(path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")


def test_assets_found_in_folders_named_uniquely_with_manifest_specs(tmp_path):
    root = _files(tmp_path / "cat", ["a/chair.glb", "b/chair.glb", "lamp.obj", "notes.txt", "c/truck.gltf"])
    files = find_assets([root])
    assert [f.name for f in files] == ["chair.glb", "chair.glb", "truck.gltf", "lamp.obj"]
    manifest = {"default": "body: *", "assets": {"lamp.obj": "shade: Shade; body: *", "truck": {
        "components": "wheels: Wheels; truck: *", "front_axis": "+x"}, "b/chair.glb": "seat: Seat; chair: *"}}
    specs = asset_specs(files, None, manifest, roots=[root])
    by_path = {s.path.split("cat/")[1]: s for s in specs}
    assert len({s.name for s in specs}) == 4  # the two chairs get different names
    assert by_path["a/chair.glb"].components == "body: *"
    assert by_path["b/chair.glb"].components == "seat: Seat; chair: *"
    assert by_path["lamp.obj"].components == "shade: Shade; body: *"
    assert by_path["c/truck.gltf"].front_axis == "+x" and by_path["c/truck.gltf"].components.startswith("wheels")
    with pytest.raises(ConfigError, match="unknown keys"):
        asset_specs(files, None, {"assets": {"lamp.obj": {"parts": "x"}}}, roots=[root])
    with pytest.raises(ConfigError, match="does not exist"):
        find_assets([tmp_path / "nowhere"])
    with pytest.raises(ConfigError, match="no asset"):
        find_assets([_files(tmp_path / "empty", ["readme.md"])])


def test_component_manifest_json_and_errors(tmp_path):
    good = tmp_path / "c.json"
    good.write_text(json.dumps({"default": "x: *", "assets": {"a.glb": "y: Y; x: *"}}), encoding="utf-8")
    assert read_component_manifest(good)["assets"]["a.glb"] == "y: Y; x: *"
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("default: 'x: *'\nassets:\n  a.glb:\n    components: 'y: Y; x: *'\n    up_axis: '+z'\n",
                         encoding="utf-8")
    assert read_component_manifest(yaml_file)["assets"]["a.glb"] == {"components": "y: Y; x: *", "up_axis": "+z"}
    yaml_file.write_text("assets: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="c.yaml cannot be parsed"):
        read_component_manifest(yaml_file)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        read_component_manifest(bad)
    bad.write_text(json.dumps({"default": "x: *", "extra": 1}), encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown keys"):
        read_component_manifest(bad)


def test_content_keys_change_exactly_with_their_inputs(tmp_path):
    root = _files(tmp_path / "cat", ["chair.glb", "lamp.glb"])
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"weights")
    settings = BatchSettings()
    specs = asset_specs(find_assets([root]), "body: *")
    base = build_plan(specs, ["a <body> of gold", "a <body> of wood"], ckpt, settings)
    assert base.num_units == 2 + 4
    def keys_of(plan):  # unit identity (asset, edit index) -> content key
        return {**{(u.asset.name, None): u.key for u in plan.personalizations},
                **{(e.parent.asset.name, e.index): e.key for e in plan.edits}}

    keys = keys_of(base)
    assert len(set(keys.values())) == 6
    assert all(e.folder.startswith(e.parent.folder + "/edits/") for e in base.edits)

    # another prompt text: only that edit's key changes
    other = keys_of(build_plan(specs, ["a <body> of gold", "a <body> of stone"], ckpt, settings))
    assert {k for k in keys if keys[k] != other[k]} == {("chair", 1), ("lamp", 1)}

    # the chair's bytes: its personalisation and both its edits change, the lamp's units do not
    (root / "chair.glb").write_bytes(b"another chair")
    moved = build_plan(specs, ["a <body> of gold", "a <body> of wood"], ckpt, settings)
    assert {k for k, v in keys_of(moved).items() if keys[k] != v} == {("chair", None), ("chair", 0), ("chair", 1)}

    # a sampling setting reaches only the edits; a training setting reaches everything
    sampled = build_plan(specs, ["a <body> of gold", "a <body> of wood"], ckpt, BatchSettings(cfg=5.0))
    assert all(u.key == moved.personalizations[i].key for i, u in enumerate(sampled.personalizations))
    assert all(u.key != moved.edits[i].key for i, u in enumerate(sampled.edits))
    trained = build_plan(specs, ["a <body> of gold"], ckpt, BatchSettings(ti_steps=10))
    assert all(u.key != moved.personalizations[i].key for i, u in enumerate(trained.personalizations))
    # the checkpoint's bytes
    ckpt.write_bytes(b"other weights")
    assert build_plan(specs, ["a <body> of gold"], ckpt, BatchSettings()).personalizations[0].key != moved.personalizations[0].key


def test_gltf_companion_files_are_part_of_the_asset_key(tmp_path):
    folder = tmp_path / "cat"
    folder.mkdir()
    (folder / "box.gltf").write_text(json.dumps({"buffers": [{"uri": "box.bin"}], "images": [{"uri": "tex.png"}]}))
    (folder / "box.bin").write_bytes(b"\x00" * 16)
    (folder / "tex.png").write_bytes(b"png")
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"w")
    specs = asset_specs(find_assets([folder]), None)
    first = build_plan(specs, ["a <object>"], ckpt, BatchSettings()).personalizations[0].key
    (folder / "box.bin").write_bytes(b"\x01" * 16)
    second = build_plan(specs, ["a <object>"], ckpt, BatchSettings()).personalizations[0].key
    (folder / "tex.png").write_bytes(b"other png")
    third = build_plan(specs, ["a <object>"], ckpt, BatchSettings()).personalizations[0].key
    assert len({first, second, third}) == 3


@pytest.mark.parametrize("change, match", [
    (dict(resolution=60), "multiple of 8"), (dict(ft_mode="dora"), "ft_mode"), (dict(sampler="plms"), "sampler"),
    (dict(lift_mode="nerf"), "lift_mode"), (dict(ti_steps=0), "ti_steps"), (dict(mixed_precision="fp8"), "mixed_precision"),
])
def test_settings_are_checked(change, match):
    with pytest.raises(ConfigError, match=match):
        BatchSettings(**change)
    with pytest.raises(ConfigError, match="unknown BatchSettings keys"):
        BatchSettings.from_dict({"resolution": 64, "stepz": 3})
    assert BatchSettings(ft_mode="full").finetune_lr == 2e-6 and BatchSettings().finetune_lr == 1e-4


def test_done_record_counts_only_with_every_file_intact(tmp_path):
    store = OutputStore(tmp_path / "out")
    unit = {"kind": "edit", "unit_id": "chair/00-gold", "key": "k" * 64, "folder": "assets/chair/edits/00"}
    store.write_bytes("assets/chair/edits/00/edited.glb", b"glb bytes")
    outputs = {"assets/chair/edits/00/edited.glb": store.sha256("assets/chair/edits/00/edited.glb")}
    store.write_json("assets/chair/edits/00/done.json", make_record(unit, outputs, times_s={"sample_s": 1.0}))

    class Unit:
        folder, key = unit["folder"], unit["key"]

    assert finished_record(store, Unit)["outputs"] == outputs
    Unit.key = "other" * 10  # inputs changed: a record of other inputs is not this unit's
    assert finished_record(store, Unit) is None
    Unit.key = unit["key"]
    (tmp_path / "out/assets/chair/edits/00/edited.glb").write_bytes(b"damaged")
    assert finished_record(store, Unit) is None
    (tmp_path / "out/assets/chair/edits/00/edited.glb").unlink()
    assert finished_record(store, Unit) is None
    (tmp_path / "out/assets/chair/edits/00/done.json").write_text("{torn", encoding="utf-8")
    assert finished_record(store, Unit) is None


def test_leftovers_of_killed_writers_are_cleared_and_nothing_else(tmp_path):
    store = OutputStore(tmp_path / "out")
    folder = tmp_path / "out" / "assets" / "a"
    folder.mkdir(parents=True)
    (folder / "edited.glb").write_bytes(b"kept")
    (folder / ".hidden").write_bytes(b"kept")
    (folder / "notes.tmp").write_bytes(b"kept: not one of our temporary names")
    (folder / ".edited.glb.a1b2c3d4e5f6.tmp").write_bytes(b"torn")
    (folder / ".tmp-x1").mkdir()
    (folder / ".tmp-x1" / "image.png").write_bytes(b"torn")
    (folder / "sub").mkdir()
    (folder / "sub" / ".x.glb.000000000000.tmp").write_bytes(b"another folder: not touched")
    store.clear_leftovers("assets/a")
    assert sorted(p.name for p in folder.iterdir()) == [".hidden", "edited.glb", "notes.tmp", "sub"]
    assert (folder / "sub" / ".x.glb.000000000000.tmp").exists()
    store.clear_leftovers("assets/missing")  # nothing there: nothing to do


def test_store_keeps_inside_its_folder(tmp_path):
    store = OutputStore(tmp_path / "out")
    for rel in ("../x.json", "/etc/x", "a/../../x"):
        with pytest.raises(ConfigError, match="inside the output folder"):
            store.path(rel)


def test_url_output_goes_through_fsspec_with_a_local_scratch_copy(tmp_path):
    import fsspec

    root = f"memory://batch-{tmp_path.name}"
    store = OutputStore(root, scratch=tmp_path / "scratch")
    store.write_json("assets/a/done.json", {"x": 1})
    assert store.read_json("assets/a/done.json") == {"x": 1}
    fs = fsspec.filesystem("memory")
    assert json.loads(fs.cat(f"{root[len('memory://'):]}/assets/a/done.json")) == {"x": 1}
    # training state mirrored both ways: new files uploaded, files gone locally removed remotely
    train = store.path("assets/a/train")
    train.mkdir(parents=True)
    (train / "phase1-step000001.pt").write_bytes(b"state 1")
    store.sync_folder("assets/a/train")
    assert store.listdir("assets/a/train") == ["phase1-step000001.pt"]
    (train / "phase1-step000001.pt").unlink()
    (train / "phase1-step000002.pt").write_bytes(b"state 2")
    store.sync_folder("assets/a/train")
    assert store.listdir("assets/a/train") == ["phase1-step000002.pt"]
    # another machine (another scratch folder) gets the remote files
    other = OutputStore(root, scratch=tmp_path / "scratch2")
    local = other.fetch_folder("assets/a/train")
    assert (local / "phase1-step000002.pt").read_bytes() == b"state 2"
    assert other.sha256("assets/a/done.json") == store.sha256("assets/a/done.json")
    assert other.fetch("assets/a/missing.png") is None


def _safetensors_bytes(metadata_items, tensors):
    """A safetensors file written by hand (header JSON in the given order), as an independent reference."""
    header, data, offset = {"__metadata__": dict(metadata_items)}, b"", 0
    for name, array in tensors.items():
        raw = array.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def test_canonical_safetensors_makes_equal_content_equal_bytes(tmp_path):
    from safetensors import safe_open

    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.full((1, 5), 0.25, dtype=np.float32)}
    meta = [("format", "dreamedit3d.tokens"), ("tokens", '["<a>", "<b>"]'), ("base_model_hash", "abc")]
    first, second = tmp_path / "1.safetensors", tmp_path / "2.safetensors"
    first.write_bytes(_safetensors_bytes(meta, tensors))
    second.write_bytes(_safetensors_bytes(list(reversed(meta)), tensors))
    assert first.read_bytes() != second.read_bytes()
    canonical_safetensors(first)
    canonical_safetensors(second)
    assert first.read_bytes() == second.read_bytes()
    with safe_open(str(first), framework="pt") as f:
        assert f.metadata() == dict(meta)
        for name, array in tensors.items():
            assert torch.equal(f.get_tensor(name), torch.from_numpy(array))


def test_cli_plugs_into_a_parent_parser_and_reports_bad_input_in_one_line(tmp_path, capsys):
    import argparse

    from dreamedit3d_core.batch import cli

    parent = argparse.ArgumentParser(prog="python -m dreamedit3d_core")
    cli.add_subparser(parent.add_subparsers(dest="command", required=True))
    args = parent.parse_args(["batch", "a.glb", "folder", "--prompts", "p.txt", "--checkpoint", "m.pt", "--out", "o",
                              "--workers", "2", "--ray-address", "auto", "--ft-mode", "full", "--ti-steps", "7",
                              "--mixed-precision", "bf16"])
    assert args.func is cli.main and args.assets == ["a.glb", "folder"] and args.workers == 2
    settings = cli.settings_from_args(args)
    assert (settings.ft_mode, settings.ti_steps, settings.finetune_lr, settings.mixed_precision) == ("full", 7, 2e-6, "bf16")
    assert args.token_report == "full"  # every personalisation carries its token evidence unless asked otherwise
    cheap = parent.parse_args(["batch", "a.glb", "--prompts", "p.txt", "--checkpoint", "m.pt", "--out", "o",
                               "--token-report", "attention"])
    assert cheap.token_report == "attention"
    with pytest.raises(SystemExit):
        parent.parse_args(["batch", "a.glb", "--prompts", "p.txt", "--checkpoint", "m.pt", "--out", "o",
                           "--token-report", "sometimes"])
    assert "--token-report" in capsys.readouterr().err  # argparse names the bad choice

    asset = tmp_path / "a.glb"
    asset.write_bytes(b"x")
    code = cli.run([str(asset), "--prompts", str(tmp_path / "none.txt"), "--checkpoint", str(tmp_path / "m.pt"),
                    "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "none.txt" in err and "\n" not in err


def test_a_checkpoint_that_is_not_mvdream_stops_the_batch_with_one_line(tmp_path, capsys):
    from dreamedit3d_core.batch import cli

    asset = tmp_path / "a.glb"
    asset.write_bytes(b"x")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a <object> made of gold\n", encoding="utf-8")
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"not a checkpoint at all")
    code = cli.run([str(asset), "--prompts", str(prompts), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                    "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and "model.safetensors" in err and "\n" not in err
    assert not list((tmp_path / "o").rglob("*.glb"))
