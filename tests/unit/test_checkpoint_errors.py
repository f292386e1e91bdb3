"""Every way a user's file can be wrong gives one clear CheckpointError naming the file and what is expected."""

from __future__ import annotations

import pytest
import torch

from dreamedit3d_core.errors import CheckpointError, ConfigError
from dreamedit3d_core.mvdream.checkpoint import load_mvdream
from dreamedit3d_core.storage import write_state_dict
from dreamedit3d_core.testing.tiny import tiny_state_dict, write_tiny_checkpoint


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.mark.parametrize("variant,match", [
    ("sd21", r"plain Stable Diffusion 2\.x checkpoint \(no camera_embed\.\* keys\), not MVDream"),
    ("sd15", r"plain Stable Diffusion 1\.x checkpoint"),
    ("imagedream", r"ImageDream .* does not support"),
])
def test_other_kinds_of_checkpoint_are_refused(tmp_path, variant, match):
    path = write_tiny_checkpoint(tmp_path / f"{variant}.safetensors", variant=variant)
    with pytest.raises(CheckpointError, match=match) as exc:
        load_mvdream(path)
    assert str(path) in _one_line(exc) and "sd-v2.1-base-4view.pt" in str(exc.value)


def test_truncated_files_are_reported(tmp_path):
    for suffix in (".pt", ".safetensors"):
        good = write_tiny_checkpoint(tmp_path / f"good{suffix}")
        data = good.read_bytes()
        bad = tmp_path / f"bad{suffix}"
        bad.write_bytes(data[: len(data) // 3])
        with pytest.raises(CheckpointError, match="truncated") as exc:
            load_mvdream(bad)
        _one_line(exc)


@pytest.mark.parametrize("content,match", [
    (b"", r"is empty \(0 bytes\)"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "is not a torch checkpoint"),
    (b"just some text, not a model", "is not a torch checkpoint"),
])
def test_non_checkpoint_files_are_reported(tmp_path, content, match):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as exc:
        load_mvdream(path)
    _one_line(exc)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_mvdream(tmp_path / "nope.pt")


def test_pickled_python_objects_are_not_loaded(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(CheckpointError, match=r"Python objects \(torch\.nn\.modules\.linear\.Linear\) that cannot be loaded safely"):
        load_mvdream(path)


def test_non_tensor_entries_are_reported(tmp_path):
    path = tmp_path / "mixed.pt"
    torch.save({"a.b": torch.zeros(1), "note": "hello"}, path)
    with pytest.raises(CheckpointError, match=r"not a flat state dict \(non-tensor entries note\)"):
        load_mvdream(path)


def test_missing_and_unexpected_keys_name_the_file_and_first_keys(tmp_path):
    state = tiny_state_dict(0)
    del state["model.diffusion_model.middle_block.1.proj_out.weight"]
    state["model.diffusion_model.extra_adapter.weight"] = torch.zeros(3)
    path = write_state_dict(state, tmp_path / "edited.safetensors")
    with pytest.raises(CheckpointError) as exc:
        load_mvdream(path)
    text = _one_line(exc)
    assert str(path) in text
    assert "missing 1 parameters (unet.mid_block.attentions.0.proj_out.weight)" in text
    assert "unexpected keys (model.diffusion_model.extra_adapter.weight)" in text


def test_missing_component_is_reported(tmp_path):
    state = {k: v for k, v in tiny_state_dict(0).items() if not k.startswith("first_stage_model.")}
    path = write_state_dict(state, tmp_path / "no_vae.pt")
    with pytest.raises(CheckpointError, match=r"incomplete \(missing key first_stage_model\.encoder\.conv_in\.weight\)"):
        load_mvdream(path)


def test_wrong_shape_is_reported(tmp_path):
    state = tiny_state_dict(0)
    state["model.diffusion_model.camera_embed.2.weight"] = torch.zeros(128, 64)
    path = write_state_dict(state, tmp_path / "bad_shape.pt")
    with pytest.raises(CheckpointError, match=r"camera_embed\.2\.weight has shape \(128, 64\)"):
        load_mvdream(path)


def test_diffusers_and_unet_only_files_are_refused(tmp_path):
    path = tmp_path / "diffusers_unet.safetensors"
    write_state_dict({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="diffusers-format UNet"):
        load_mvdream(path)
    bare = {k[len("model.diffusion_model."):]: v for k, v in tiny_state_dict(0).items()
            if k.startswith("model.diffusion_model.")}
    with pytest.raises(CheckpointError, match="bare UNet without the VAE and text tower"):
        load_mvdream(write_state_dict(bare, tmp_path / "unet.pt"))


def test_bad_dtype_argument(tmp_path):
    with pytest.raises(ConfigError, match="dtype must be a torch.dtype"):
        load_mvdream(write_tiny_checkpoint(tmp_path / "m.pt"), dtype="fp16")
