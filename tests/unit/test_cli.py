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
    from dreamedit3d_core.testing.tiny import write_tiny_checkpoint

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


def test_tiny_checkpoint_command_writes_a_checkpoint_the_loader_reads(tmp_path, capsys):
    from dreamedit3d_core.mvdream.checkpoint import load_mvdream

    path = tmp_path / "tiny.safetensors"
    assert main(["tiny-checkpoint", str(path)]) == 0
    assert "tiny random" in capsys.readouterr().out
    model = load_mvdream(path, device="cpu")
    assert model.num_views == 4
    assert main(["tiny-checkpoint", str(path)]) == 2  # never over an existing file
    assert "exists" in capsys.readouterr().err


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if the checkpoint is loaded (cheap inputs must be refused before)."""
    import dreamedit3d_core.mvdream.checkpoint as checkpoint

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the cheap inputs were checked")

    monkeypatch.setattr(checkpoint, "load_mvdream", refuse)


def _edit(asset, out, ckpt, **extra):
    argv = ["edit", str(asset), "--checkpoint", str(ckpt), "--out", str(out), "--components",
            extra.pop("components", "antenna: antenna; body: *"), "--prompt", extra.pop("prompt", "a <body>"),
            "--resolution", "64", "--device", "cpu"]
    for key, value in extra.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return main(argv)


@pytest.mark.parametrize("case, fragment", [
    ("missing_asset", "nope.glb"),
    ("jpeg_renamed", "fake.glb"),
    ("bad_component", "antena"),
    ("unknown_token", "<crown>"),
    ("missing_checkpoint", "not found"),
])
def test_edit_refuses_cheap_inputs_in_one_line_before_loading_and_leaves_no_out_folder(
        shared_assets, tmp_path, capsys, no_model_loading, case, fragment):
    from PIL import Image

    asset, ckpt = shared_assets / "kenney_character.glb", tmp_path / "model.safetensors"
    ckpt.write_bytes(b"never read")
    extra = {}
    if case == "missing_asset":
        asset = tmp_path / "nope.glb"
    elif case == "jpeg_renamed":
        asset = tmp_path / "fake.glb"
        Image.new("RGB", (8, 8)).save(asset, format="JPEG")
    elif case == "bad_component":
        extra["components"] = "antena: antena; body: *"
    elif case == "unknown_token":
        extra["prompt"] = "a <body> with a <crown>"
    else:
        ckpt = tmp_path / "absent.safetensors"
    out = tmp_path / "out"
    assert _edit(asset, out, ckpt, **extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and fragment in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_a_failure_after_loading_removes_the_out_folder_it_made_and_is_one_line(shared_assets, tmp_path, capsys,
                                                                               monkeypatch):
    import dreamedit3d_core.personalize.textual_inversion as ti
    from dreamedit3d_core.testing.tiny import write_tiny_checkpoint

    def crash(*args, **kwargs):
        raise RuntimeError("CUDA out of memory\nwith a second line")

    monkeypatch.setattr(ti, "train_textual_inversion", crash)
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    assert _edit(shared_assets / "kenney_character.glb", out, ckpt) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: RuntimeError: CUDA out of memory with a second line (run with --traceback for details)"
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("user's file")
    assert _edit(shared_assets / "kenney_character.glb", kept, ckpt) == 1
    assert (kept / "mine.txt").read_text() == "user's file"  # a folder the user had is never removed
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        main(["--traceback", "edit", str(shared_assets / "kenney_character.glb"), "--checkpoint", str(ckpt), "--out",
              str(out), "--components", "antenna: antenna; body: *", "--prompt", "a <body>", "--resolution", "64",
              "--device", "cpu"])


@pytest.mark.parametrize("text, expected", [(None, None), ("auto", "auto"), ("1", (1.0, 1.0, 1.0)),
                                            ("0.5, 0.5, 0.4", (0.5, 0.5, 0.4))])
def test_background_option_parses_grey_rgb_or_auto(text, expected):
    from dreamedit3d_core.cli import parse_background

    assert parse_background(text) == expected


@pytest.mark.parametrize("text", ["white", "2", "1,1", "0.5,0.5,-1"])
def test_bad_background_option_is_refused(text):
    from dreamedit3d_core.cli import parse_background
    from dreamedit3d_core.errors import ConfigError

    with pytest.raises(ConfigError, match="--background"):
        parse_background(text)


def test_edit_passes_lift_options_and_training_steps_to_the_library(shared_assets, tmp_path, monkeypatch):
    import dreamedit3d_core.lifting as lifting
    import dreamedit3d_core.personalize.textual_inversion as ti
    from dreamedit3d_core.testing.tiny import write_tiny_checkpoint

    seen, train = {}, ti.train_textual_inversion

    def spy_training(model, render, masks, config, *args, **kwargs):
        seen["ti_steps"], seen["resolution"] = config.steps, render.rgb.shape[-1]
        return train(model, render, masks, config, *args, **kwargs)

    def stop_at_lifting(rgb, cameras, **kwargs):
        seen.update(mode=kwargs["mode"], background=kwargs.get("background"), grid=kwargs["grid"])
        raise KeyboardInterrupt

    monkeypatch.setattr(ti, "train_textual_inversion", spy_training)
    monkeypatch.setattr(lifting, "lift_to_mesh", stop_at_lifting)
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.safetensors")
    code = _edit(shared_assets / "kenney_character.glb", tmp_path / "o", ckpt, ti_steps=1, ft_steps=0, steps=1,
                 lift_mode="hull", background="1", grid=24)
    assert code == 130 and not (tmp_path / "o").exists()
    assert seen == {"ti_steps": 1, "resolution": 64, "mode": "hull", "background": (1.0, 1.0, 1.0), "grid": 24}


def test_batch_is_a_subcommand_of_the_same_command_line(capsys):
    with pytest.raises(SystemExit) as info:
        main(["batch", "--help"])
    assert info.value.code == 0 and "--prompts" in capsys.readouterr().out
