"""MVDream's camera input against the reference vectors of mvdream.md §3 (from bytedance/MVDream get_camera)."""

from __future__ import annotations

import pytest
import torch

from dreamedit3d_core.cameras import get_camera

pytestmark = pytest.mark.numeric

S, C = 0.258819, 0.965926  # sin 15°, cos 15°
AZ90 = [0, -S, C, C, 1, 0, 0, 0, 0, C, S, S, 0, 0, 0, 1]
AZ180 = [-1, 0, 0, 0, 0, -S, C, C, 0, C, S, S, 0, 0, 0, 1]
AZ270 = [0, S, -C, -C, -1, 0, 0, 0, 0, C, S, S, 0, 0, 0, 1]  # az 90 with rows 0 and 1 negated
AZ360 = [1, 0, 0, 0, 0, S, -C, -C, 0, C, S, S, 0, 0, 0, 1]


def test_pack_views_front_right_back_left_match_mvdream_reference_vectors():
    cams = get_camera(4, elevation=15, azimuth_start=90)
    expected = torch.tensor([AZ90, AZ180, AZ270, AZ360], dtype=torch.float32)
    assert cams.shape == (4, 16) and cams.dtype == torch.float32
    assert (cams - expected).abs().max().item() <= 1e-6


def test_mvdream_default_start_is_azimuth_zero():
    cams = get_camera(4)  # MVDream defaults: elevation 15, azimuth_start 0, span 360
    assert (cams[0] - torch.tensor(AZ360)).abs().max().item() <= 1e-6
    assert (cams[1] - torch.tensor(AZ90)).abs().max().item() <= 1e-6


def test_cfg_batch_repeats_the_same_cameras_for_both_halves():
    from dreamedit3d_core.cameras import camera_embedding_for_batch

    cams = get_camera(4, 15, 90)
    batch = camera_embedding_for_batch(cams, 2)  # [uncond x 4, cond x 4]
    assert torch.equal(batch[:4], batch[4:]) and torch.equal(batch[:4], cams)
