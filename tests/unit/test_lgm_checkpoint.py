"""LGM weight files: released layout round trip, the two rotation variants, foreign and damaged files, listing."""

from __future__ import annotations

import pytest
import torch

from dreamedit3d_core.errors import CheckpointError, ConfigError, ShapeError
from dreamedit3d_core.lifting.lgm import (LEGACY_FILE, RELEASED_FILE, LGMConfig, LGMNetwork, RotationNormalization,
                                          infer_config, list_lgm_files, load_lgm, rotation_normalization_for, save_lgm)
from dreamedit3d_core.testing.lgm import tiny_lgm, tiny_lgm_state_dict

#: Three encoder and two decoder levels (the released key layout itself is checked in test_lgm_original_golden.py).
SMALL = LGMConfig(down_channels=(32, 64, 64), down_attention=(False, True, True), mid_attention=True,
                  up_channels=(64, 64), up_attention=(True, False), input_size=16)


@pytest.fixture(scope="module")
def tiny_state():
    return tiny_lgm_state_dict(3, SMALL)


def _write(path, state, metadata=None):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def test_released_layout_file_loads_bit_identical_and_saves_back_identical(tmp_path, tiny_state):
    # a file as released: fp16, no metadata of ours
    fp16 = {k: v.half() for k, v in tiny_state.items()}
    src = _write(tmp_path / RELEASED_FILE, fp16, {"format": "pt"})
    net = load_lgm(src)
    assert next(net.parameters()).dtype == torch.float32
    got = net.state_dict()
    assert set(got) == set(fp16)
    assert all(torch.equal(got[k], fp16[k].float()) for k in fp16)  # every parameter filled from the file
    assert net.config.down_channels == SMALL.down_channels and net.config.up_attention == SMALL.up_attention
    out = save_lgm(net, tmp_path / "saved.safetensors", dtype=torch.float16)
    from safetensors.torch import load_file

    again = load_file(str(out))
    assert set(again) == set(fp16) and all(torch.equal(again[k], fp16[k]) for k in fp16)
    with pytest.raises(ConfigError, match="already exists"):
        save_lgm(net, out)


def test_saved_fp32_file_round_trips_exactly_with_its_input_size_and_variant(tmp_path):
    net = tiny_lgm(5, SMALL, RotationNormalization.ACROSS_GAUSSIANS)
    path = save_lgm(net, tmp_path / "mine.safetensors")
    back = load_lgm(path)
    assert back.config == net.config  # input size 16 restored from the metadata
    assert back.rotation_normalization is RotationNormalization.ACROSS_GAUSSIANS
    a, b = net.state_dict(), back.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(1, 4, 9, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net(x).packed(), back(x).packed())


def test_the_old_and_new_released_files_are_told_apart(tmp_path, tiny_state):
    new = _write(tmp_path / RELEASED_FILE, tiny_state)
    old = _write(tmp_path / LEGACY_FILE, tiny_state)
    assert load_lgm(new).rotation_normalization is RotationNormalization.PER_GAUSSIAN
    assert load_lgm(old).rotation_normalization is RotationNormalization.ACROSS_GAUSSIANS
    assert rotation_normalization_for("x/renamed.safetensors") is RotationNormalization.PER_GAUSSIAN
    assert load_lgm(old, rotation_normalization="per_gaussian").rotation_normalization is \
        RotationNormalization.PER_GAUSSIAN
    with pytest.raises(CheckpointError, match="unknown dreamedit3d.lgm.rotation_normalization 'sideways'"):
        rotation_normalization_for("a.safetensors", {"dreamedit3d.lgm.rotation_normalization": "sideways"})
    with pytest.raises(ConfigError, match="rotation_normalization must be one of"):
        load_lgm(new, rotation_normalization="sideways")


def test_mvdream_or_sd_checkpoint_in_the_lgm_folder_is_refused(tmp_path):
    sd = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
          "first_stage_model.encoder.conv_in.weight": torch.zeros(2, 3, 3, 3)}
    path = _write(tmp_path / "sd-v2.1-base-4view.safetensors", sd)
    with pytest.raises(CheckpointError, match="Stable Diffusion / MVDream checkpoint.*not LGM.*model_fp16_fixrot"):
        load_lgm(path)
    pt = tmp_path / "sd-v2.1-base-4view.pt"
    torch.save(sd, pt)
    with pytest.raises(CheckpointError, match=r"\.pt file, not \.safetensors.*model_fp16_fixrot\.safetensors"):
        load_lgm(pt)


def test_truncated_empty_and_missing_files_are_refused(tmp_path, tiny_state):
    good = _write(tmp_path / "good.safetensors", tiny_state)
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors .*(truncated|could not be read)"):
        load_lgm(cut)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty \\(0 bytes\\)"):
        load_lgm(empty)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_lgm(tmp_path / "nope.safetensors")


def test_missing_or_extra_keys_and_wrong_shapes_are_refused(tmp_path, tiny_state):
    drop = dict(tiny_state)
    drop.pop("unet.mid_block.nets.1.conv2.weight")
    with pytest.raises(CheckpointError, match="1 keys missing .*mid_block.nets.1.conv2.weight"):
        load_lgm(_write(tmp_path / "drop.safetensors", drop))
    extra = dict(tiny_state, **{"lpips_loss.net.0.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="1 left over .*lpips_loss"):
        load_lgm(_write(tmp_path / "extra.safetensors", extra))
    wrong = dict(tiny_state)
    wrong["conv.bias"] = torch.zeros(15)
    with pytest.raises(CheckpointError, match="wrong shape .*conv.bias \\[15\\] vs \\[14\\]"):
        load_lgm(_write(tmp_path / "wrong.safetensors", wrong))


def test_config_is_inferred_from_shapes(tiny_state):
    cfg = infer_config(tiny_state, input_size=16)
    assert cfg == SMALL
    assert cfg.splat_size == 8


def test_dtype_rules(tmp_path, tiny_state):
    path = _write(tmp_path / RELEASED_FILE, tiny_state)
    with pytest.raises(ConfigError, match="float32 on the CPU, got 'fp16'"):
        load_lgm(path, dtype="fp16")
    with pytest.raises(ConfigError, match="float32, float16 or bfloat16"):
        load_lgm(path, dtype=torch.int8)
    assert next(load_lgm(path, dtype="auto").parameters()).dtype == torch.float32


def test_list_lgm_files_finds_only_lgm_weights(tmp_path, tiny_state):
    _write(tmp_path / RELEASED_FILE, tiny_state)
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "mine.safetensors", tiny_state)
    _write(tmp_path / "other.safetensors", {"model.diffusion_model.x": torch.zeros(1)})
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    (tmp_path / "notes.txt").write_text("hi")
    assert list_lgm_files(tmp_path) == [RELEASED_FILE, "sub/mine.safetensors"]
    assert list_lgm_files(tmp_path / "absent") == []


def test_network_input_checks():
    net = LGMNetwork(SMALL)
    with pytest.raises(ShapeError, match=r"LGM input must be \[B, 4, 9, 16, 16\].*got \[1, 3, 9, 16, 16\]"):
        net(torch.zeros(1, 3, 9, 16, 16))
    with pytest.raises(ShapeError, match="must be divisible by 4"):
        net(torch.zeros(1, 4, 9, 18, 18))
    with pytest.raises(ConfigError, match="divisible by 32 \\(group norm\\)"):
        LGMConfig(down_channels=(48,) * 6, up_channels=(48,) * 5)
