"""Provenance records in PNG and GLB files, and the contact sheet's layout (pure, no ComfyUI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import dreamedit3d_core
from dreamedit3d_core.contact_sheet import contact_sheet, sheet_layout, strip_suffixes
from dreamedit3d_core.errors import AssetError, ConfigError, ShapeError
from dreamedit3d_core.lifting.export import export_mesh, read_provenance
from dreamedit3d_core.provenance import (GLB_KEY, PNG_KEY, build_record, glb_extras, item_record, read_file_provenance,
                                         read_png_provenance, save_png, view_record)
from dreamedit3d_core.types import LiftedMesh

SIGMAS = torch.tensor([14.614642, 3.2174, 0.91337, 0.0291675, 0.0], dtype=torch.float32)


def _record(**more):
    return build_record(prompt="a <dog> wearing a <hat>, 3d asset", negative_prompt="blurry", seed=123456789012,
                        sampler="dpmpp_2m", sigmas=SIGMAS, cfg=7.5, base_model_hash="ab" * 32,
                        token_files={"dog.safetensors": "cd" * 32}, **more)


def test_record_holds_every_fact_exactly_and_the_pack_version():
    rec = _record(steps=4)
    assert rec["version"] == dreamedit3d_core.__version__ and rec["generator"] == "DreamEdit3D"
    assert rec["seed"] == 123456789012 and rec["sampler"] == "dpmpp_2m" and rec["cfg"] == 7.5
    # float32 sigmas are stored as the exact same numbers (float32 -> float64 is exact)
    assert torch.equal(torch.tensor(rec["sigmas"], dtype=torch.float32), SIGMAS)
    assert rec["token_files"] == {"dog.safetensors": "cd" * 32} and rec["steps"] == 4
    assert "prompts" not in rec and json.loads(json.dumps(rec)) == rec
    with pytest.raises(ConfigError, match="JSON"):
        build_record(cfg=float("nan"))


def test_batch_records_give_each_edit_its_own_prompt_and_each_image_its_view():
    rec = build_record(seed=1, prompts=["a red <dog>", "a blue <dog>"])
    assert item_record(rec, 1)["prompt"] == "a blue <dog>" and item_record(rec, 1)["edit_index"] == 1
    assert "prompts" not in item_record(rec, 0) and item_record(rec, 0)["edit_count"] == 2
    v = view_record(rec, 6)
    assert (v["prompt"], v["view"], v["view_index"], v["edit_index"]) == ("a blue <dog>", "back", 2, 1)


def test_png_round_trip_keeps_record_pixels_and_other_chunks_and_never_overwrites(tmp_path):
    rec = _record()
    img = torch.rand(3, 9, 7, generator=torch.Generator().manual_seed(0))
    first = save_png(img, tmp_path / "view", rec, chunks={"prompt": json.dumps({"1": {"class_type": "X"}})})
    second = save_png(img, tmp_path / "view.png", dict(rec, seed=5))
    assert first.name == "view.png" and second.name == "view_00001.png"
    assert read_png_provenance(first) == rec and read_png_provenance(second)["seed"] == 5
    assert read_file_provenance(first) == rec
    with Image.open(first) as im:
        assert im.text["prompt"] == json.dumps({"1": {"class_type": "X"}}) and PNG_KEY in im.text
        pixels = np.asarray(im)
    expected = (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    assert pixels.shape == (9, 7, 3) and np.array_equal(pixels, expected)
    # a PNG written by someone else: its chunks come back under "other", nothing invented
    plain = tmp_path / "plain.png"
    Image.new("RGB", (2, 2)).save(plain)
    assert read_png_provenance(plain) == {} and read_file_provenance(plain) == {}
    with pytest.raises(AssetError, match="not a readable PNG"):
        (tmp_path / "bad.png").write_bytes(b"nope")
        read_png_provenance(tmp_path / "bad.png")
    with pytest.raises(AssetError, match="only"):
        read_file_provenance(tmp_path / "x.jpg")


def test_glb_round_trip_through_export_mesh_and_read_provenance(tmp_path):
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    mesh = LiftedMesh(vertices=v, faces=f, vertex_colors=torch.full((4, 3), 0.5), stats={"grid": 32})
    rec = item_record(_record(prompts=["one", "two"]), 1)
    path = export_mesh(mesh, tmp_path / "edit.glb", extras=glb_extras(rec, workflow={"7:X": {"seed": 1}}))
    extras = read_provenance(path)
    assert extras[GLB_KEY] == rec and extras["workflow"] == {"7:X": {"seed": 1}}
    assert extras["dreamedit3d_lift"] == {"grid": 32}
    back = read_file_provenance(path)
    assert back == rec and back["prompt"] == "two" and back["sigmas"] == [float(s) for s in SIGMAS]
    # a GLB with someone else's extras (ComfyUI SaveGLB's prompt) comes back under "other"
    other = export_mesh(mesh, tmp_path / "core.glb", extras={"prompt": "{}"})
    assert read_file_provenance(other) == {"other": {"prompt": "{}", "dreamedit3d_lift": {"grid": 32}}}


def test_sheet_layout_numbers():
    lay = sheet_layout(3, (64, 48), pad=4, label_height=14)
    assert (lay.width, lay.height) == (4 * 48 + 5 * 4, 4 + 14 + 3 * (14 + 64 + 4))
    assert lay.headers[0] == (4, 4, 52, 18) and lay.headers[3] == (4 + 3 * 52, 4, 4 + 3 * 52 + 48, 18)
    assert lay.labels[0] == (4, 18, lay.width - 4, 32)
    assert lay.cells[0][0] == (4, 32, 52, 96)  # front view of edit 1
    assert lay.cells[0][1] == (56, 32, 104, 96)  # right view of edit 1
    assert lay.cells[2][3] == (160, 18 + 2 * 82 + 14, 208, 18 + 2 * 82 + 14 + 64)  # left view of edit 3
    assert lay.cells[2][3][3] == lay.height - 4


def test_contact_sheet_puts_each_view_exactly_at_its_cell_and_draws_labels():
    n, h, w = 2, 20, 30
    images = torch.rand(n * 4, 3, h, w, generator=torch.Generator().manual_seed(1))
    sheet, lay = contact_sheet(images, ["a <dog> in a red hat", "a <dog> in a blue hat"], pad=3)
    assert sheet.shape == (3, lay.height, lay.width) == (3, 3 + 14 + 2 * (14 + 20 + 3), 4 * 30 + 5 * 3)
    for r in range(n):
        for c in range(4):
            x0, y0, x1, y1 = lay.cells[r][c]
            assert torch.equal(sheet[:, y0:y1, x0:x1], images[r * 4 + c])
    # labels are ink on the white background, inside their strips; the padding stays white
    x0, y0, x1, y1 = lay.labels[1]
    assert float(sheet[:, y0:y1, x0:x1].min()) < 0.5
    x0, y0, x1, y1 = lay.headers[2]
    assert float(sheet[:, y0:y1, x0:x1].min()) < 0.5
    assert torch.all(sheet[:, :, : lay.cells[0][0][0]] == 1.0)
    with pytest.raises(ShapeError, match="whole number"):
        contact_sheet(images[:6])
    with pytest.raises(ShapeError, match="3 labels for 2 rows"):
        contact_sheet(images, ["a", "b", "c"])


def test_labels_drop_the_prompt_suffixes():
    from dreamedit3d_core.prompts import with_suffixes

    assert strip_suffixes(with_suffixes("a <dog> with a hat")) == "a <dog> with a hat"


def test_loaded_tokens_carry_their_file_hash_into_the_conditioning_provenance(tmp_path):
    import hashlib
    from types import SimpleNamespace

    from dreamedit3d_core.prompts import conditioning_provenance
    from dreamedit3d_core.tokens import load_tokens, save_tokens
    from dreamedit3d_core.types import TokenSet

    tokens = TokenSet(tokens=("<hat>",), embeddings=torch.randn(1, 1, 8, generator=torch.Generator().manual_seed(2)),
                      base_model_hash="ef" * 32)
    assert tokens.source_files == ()
    path = save_tokens(tokens, tmp_path / "hat.safetensors")
    loaded = load_tokens(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.source_files == (("hat.safetensors", sha),)
    rec = conditioning_provenance(SimpleNamespace(model_hash="12" * 32), loaded)
    assert rec == {"base_model_hash": "12" * 32, "tokens": ["<hat>"], "token_files": {"hat.safetensors": sha}}
    assert conditioning_provenance(SimpleNamespace()) == {"base_model_hash": ""}
