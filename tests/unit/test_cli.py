"""The command line runs the core pipeline without ComfyUI."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh
from PIL import Image

from dreamedit3d_core.cli import main


def test_render_writes_four_views_and_lists_parts(shared_assets, tmp_path, capsys):
    code = main(["render", str(shared_assets / "kenney_character.glb"), "--out", str(tmp_path), "--resolution", "64",
                 "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "antenna" in printed
    views = np.asarray(Image.open(tmp_path / "views.png"))
    assert views.shape == (64, 4 * 64, 3)
    alpha = np.asarray(Image.open(tmp_path / "alpha.png"))[..., 0]
    for v in range(4):  # every view sees the object, with background around it
        coverage = (alpha[:, v * 64:(v + 1) * 64] > 127).mean()
        assert 0.05 < coverage < 0.9


def test_edit_runs_every_stage_on_the_tiny_model(shared_assets, tmp_path):
    from dreamedit3d_core.tiny import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    code = main(["edit", str(shared_assets / "kenney_character.glb"), "--checkpoint", str(ckpt), "--out", str(out),
                 "--components", "antenna: antenna; body: *", "--prompt", "a <body> with a golden <antenna>",
                 "--resolution", "64", "--ti-steps", "2", "--ft-steps", "1", "--steps", "2", "--grid", "32",
                 "--texture-size", "64", "--lift-mode", "keep_source", "--device", "cpu"])
    assert code == 0
    assert (out / "embeddings" / "antenna.safetensors").is_file()
    scene = trimesh.load(out / "edited.glb", force="scene")
    assert sum(len(g.faces) for g in scene.geometry.values()) > 0


def test_bad_asset_is_a_one_line_error_not_a_traceback(tmp_path, capsys):
    missing = tmp_path / "nope.glb"
    assert main(["render", str(missing), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope.glb" in err and "\n" not in err
