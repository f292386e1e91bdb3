"""Personalisation losses against values computed by hand on small crafted tensors."""

from __future__ import annotations

import math

import pytest
import torch

from dreamedit3d_core.errors import ConfigError, ShapeError
from dreamedit3d_core.personalize.losses import (
    attention_alignment_loss,
    attention_mass_inside,
    average_attention_maps,
    downsample_mask,
    map_size,
    masked_diffusion_loss,
)


def test_downsample_mask_picks_the_top_left_pixel_of_each_cell_like_nearest_interpolation():
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[0, 0] = True  # picked for output (0, 0)
    mask[1, 1] = True  # never picked (odd row/col)
    mask[2, 4] = True  # picked for output (1, 2)
    out = downsample_mask(mask, (2, 3))
    assert out.dtype == torch.float32
    assert out.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]


def test_masked_diffusion_loss_is_mean_over_all_elements_of_the_masked_difference():
    # 2 views, 2 channels, 2x2 latents; masks at 4x4 downsample to [[1,0],[0,1]] (view 0) and [[0,0],[0,0]] (view 1)
    eps_pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.5], [2.0, -2.0]]],
                             [[[9.0, 9.0], [9.0, 9.0]], [[9.0, 9.0], [9.0, 9.0]]]])
    eps = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]],
                        [[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 0, 0] = True
    mask[0, 2, 2] = True
    mask[1, 1, 1] = True  # not sampled by nearest: view 1 contributes nothing
    # view 0, ch 0: kept (1-0)^2 = 1 and (4-1)^2 = 9; ch 1: (-1-1)^2 = 4 and (-2-0)^2 = 4 -> 18 over 16 elements
    expected = 18.0 / 16.0
    got = masked_diffusion_loss(eps_pred, eps, mask)
    assert got.item() == pytest.approx(expected, abs=1e-7)
    assert masked_diffusion_loss(eps_pred, eps, mask[:, None]).item() == pytest.approx(expected, abs=1e-7)


def test_masked_diffusion_loss_with_a_full_mask_is_the_plain_mse():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 4, 3, 5, generator=g), torch.randn(4, 4, 3, 5, generator=g)
    full = torch.ones(4, 24, 40, dtype=torch.bool)
    assert masked_diffusion_loss(a, b, full).item() == pytest.approx(torch.nn.functional.mse_loss(a, b).item(), rel=1e-6)


def test_masked_diffusion_loss_rejects_a_mask_with_the_wrong_number_of_views():
    with pytest.raises(ShapeError, match=r"mask must be \[N=4"):
        masked_diffusion_loss(torch.zeros(4, 4, 2, 2), torch.zeros(4, 4, 2, 2), torch.ones(3, 8, 8))


def test_average_attention_maps_averages_heads_in_batch_major_layout_then_layers():
    # layer a: 2 images x 2 heads, layer b: 2 images x 1 head; HW = 1, T = 2
    a = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.2, 0.8]], [[0.4, 0.6]]])  # (n=0,h0) (n=0,h1) (n=1,h0) (n=1,h1)
    b = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])
    out = average_attention_maps({"a": a, "b": b}, batch=2)
    # image 0: heads mean [0.5, 0.5]; with b [0, 1] -> [0.25, 0.75]; image 1: [0.3, 0.7] and [1, 0] -> [0.65, 0.35]
    assert out.shape == (2, 1, 2)
    assert torch.allclose(out[:, 0], torch.tensor([[0.25, 0.75], [0.65, 0.35]]), atol=1e-7)


def test_attention_alignment_loss_matches_the_hand_computed_value():
    # one view, 2x2 map, T = 3; token A at position 1, token B at position 2
    attn = torch.zeros(1, 2, 2, 3)
    attn[0, :, :, 1] = torch.tensor([[0.2, 0.4], [0.1, 0.0]])  # max-normalised: [[.5, 1], [.25, 0]]
    attn[0, :, :, 2] = torch.tensor([[0.0, 0.0], [0.3, 0.3]])  # max-normalised: [[0, 0], [1, 1]]
    masks = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    masks[0, 0, 0, :] = True  # A: top row -> errors (-.5, 0, .25, 0) -> mean of squares 0.3125/4
    masks[1, 0, :, 1] = True  # B: right column -> errors (0, -1, 1, 0) -> 2/4
    got = attention_alignment_loss(attn, [1, 2], masks, normalisation="max")
    assert got.item() == pytest.approx(0.078125 + 0.5, abs=1e-7)


def test_attention_alignment_loss_normalises_each_view_by_its_own_max():
    attn = torch.zeros(2, 1, 2, 2)
    attn[0, 0, :, 1] = torch.tensor([0.5, 0.25])
    attn[1, 0, :, 1] = torch.tensor([0.01, 0.02])  # a weak view still reaches 1 at its peak
    masks = torch.zeros(1, 2, 1, 2, dtype=torch.bool)
    masks[0, 0, 0, 0] = True  # view 0: target [1, 0] vs [1, .5] -> 0.25/2
    masks[0, 1, 0, 1] = True  # view 1: target [0, 1] vs [.5, 1] -> 0.25/2
    got = attention_alignment_loss(attn, [1], masks, normalisation="max")
    assert got.item() == pytest.approx(0.125, abs=1e-7)  # mean over both views and pixels


def test_attention_alignment_loss_is_zero_when_the_map_equals_the_mask():
    attn = torch.zeros(3, 4, 4, 5)
    masks = torch.zeros(1, 3, 8, 8, dtype=torch.bool)
    masks[0, :, :4, :] = True
    attn[:, :2, :, 3] = 0.7
    assert attention_alignment_loss(attn, [3], masks, normalisation="max").item() == 0.0
    assert attention_alignment_loss(attn, [3], masks).item() == 0.0  # the default (KL) is zero there too


def test_attention_alignment_loss_default_is_the_kl_from_the_mask_to_the_attention_distribution():
    # one view, 2x2 map, T = 3; token A at position 1, token B at position 2
    attn = torch.zeros(1, 2, 2, 3)
    attn[0, :, :, 1] = torch.tensor([[0.1, 0.3], [0.2, 0.4]])  # sums to 1: p = the map itself
    attn[0, :, :, 2] = torch.tensor([[0.2, 0.2], [0.2, 0.6]])  # sums to 1.2: p = [1/6, 1/6, 1/6, 1/2]
    masks = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    masks[0, 0, 0, :] = True  # A: top row, q = [.5, .5, 0, 0]: KL = .5·ln(.5/.1) + .5·ln(.5/.3) = .5·ln 5 + .5·ln(5/3)
    masks[1, 0, :, 1] = True  # B: right column, q = [0, .5, 0, .5]: KL = .5·ln(.5/(1/6)) + .5·ln(.5/.5) = .5·ln 3
    got = attention_alignment_loss(attn, [1, 2], masks)
    expected = 0.5 * math.log(5) + 0.5 * math.log(5 / 3) + 0.5 * math.log(3)  # = ln 5
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert attention_alignment_loss(attn, [1, 2], masks, normalisation="distribution").item() == got.item()
    scaled = attn.clone()
    scaled[..., 1] *= 40.0  # the scale of a map does not matter, only where its mass is
    assert attention_alignment_loss(scaled, [1, 2], masks).item() == pytest.approx(expected, abs=1e-6)


def test_attention_alignment_loss_default_averages_only_views_where_the_mask_is_present():
    attn = torch.zeros(2, 1, 2, 2)
    attn[0, 0, :, 1] = torch.tensor([0.5, 0.5])
    attn[1, 0, :, 1] = torch.tensor([0.2, 0.8])
    masks = torch.zeros(1, 2, 1, 2, dtype=torch.bool)
    masks[0, 1, 0, 1] = True  # view 0: empty (the component is hidden there); view 1: q = [0, 1] -> KL = ln(1/.8)
    got = attention_alignment_loss(attn, [1], masks)
    assert got.item() == pytest.approx(math.log(1 / 0.8), abs=1e-6)
    assert attention_alignment_loss(attn, [1], torch.zeros(1, 2, 1, 2)).item() == 0.0


def test_max_normalised_loss_prefers_a_peak_outside_a_small_mask_and_the_default_does_not():
    # Why one token lagged (issue 18): an 8x8 map, a mask of 9 pixels (area 9/64). A map with one sharp peak outside
    # the mask vs a map spread evenly over the whole image.
    masks = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    masks[0, 0, :3, :3] = True
    peak = torch.full((1, 8, 8, 1), 1e-3)
    peak[0, 7, 7, 0] = 1.0
    even = torch.full((1, 8, 8, 1), 0.5)
    # max: peak -> (9·(1 − 1e-3)² + 1 + 54·1e-6) / 64; even -> 55 / 64 (every pixel outside the mask errs by 1)
    assert attention_alignment_loss(peak, [0], masks, normalisation="max").item() == pytest.approx(
        (9 * 0.999 ** 2 + 1 + 54e-6) / 64, abs=1e-6)
    assert attention_alignment_loss(even, [0], masks, normalisation="max").item() == pytest.approx(55 / 64, abs=1e-6)
    # KL: peak -> ln((1/9) / (1e-3 / (1 + 63e-3))); even -> ln((1/9) / (1/64)) = ln(64/9)
    peak_kl = math.log((1 / 9) / (1e-3 / (1 + 63e-3)))
    assert attention_alignment_loss(peak, [0], masks).item() == pytest.approx(peak_kl, abs=1e-5)
    assert attention_alignment_loss(even, [0], masks).item() == pytest.approx(math.log(64 / 9), abs=1e-6)
    # the max form scores the misplaced peak far better than the even map; the default scores it worse
    assert peak_kl > math.log(64 / 9) and (9 * 0.999 ** 2 + 1) / 64 < 55 / 64


def test_attention_alignment_loss_refuses_an_unknown_normalisation():
    with pytest.raises(ConfigError, match="normalisation must be one of"):
        attention_alignment_loss(torch.ones(1, 2, 2, 3), [1], torch.ones(1, 1, 2, 2), normalisation="sum")


def test_attention_alignment_loss_rejects_masks_that_do_not_match_the_tokens():
    with pytest.raises(ShapeError, match=r"masks must be \[k=2"):
        attention_alignment_loss(torch.zeros(4, 2, 2, 7), [1, 2], torch.zeros(1, 4, 2, 2))
    with pytest.raises(ShapeError, match="outside the 7 text positions"):
        attention_alignment_loss(torch.zeros(4, 2, 2, 7), [9], torch.zeros(1, 4, 2, 2))


def test_attention_mass_inside_is_the_fraction_of_the_map_inside_the_mask():
    attn = torch.zeros(1, 2, 2, 2)
    attn[0, :, :, 1] = torch.tensor([[0.1, 0.3], [0.2, 0.4]])
    mask = torch.tensor([[[True, True], [False, False]]])
    assert attention_mass_inside(attn, 1, mask).tolist() == pytest.approx([0.4])


def test_map_size_unflattens_square_and_wide_maps():
    assert map_size(256, (256, 256)) == (16, 16)
    assert map_size(32, (64, 128)) == (4, 8)
    with pytest.raises(ShapeError):
        map_size(30, (64, 64))
