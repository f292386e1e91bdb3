"""Token report measures against hand computations on crafted maps, masks and images, and the recorded attention
against an independent recomputation from the attention modules' own projections on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from dreamedit3d_core.errors import ConfigError, ShapeError, TokenError
from dreamedit3d_core.token_report import (
    MAX_PSNR_DB,
    TokenReportConfig,
    attention_shares,
    change_shares,
    mask_area_shares,
    masked_psnr,
    recorded_attention,
    render_heatmap,
    swapped,
    verdict,
)
from dreamedit3d_core.types import TokenSet

pytestmark = pytest.mark.numeric


def test_attention_shares_is_the_leakage_matrix_of_hand_computed_fractions():
    # one view, 2x2 map, T = 3; token A at position 1, token B at position 2
    attn = torch.zeros(1, 2, 2, 3)
    attn[0, :, :, 1] = torch.tensor([[0.2, 0.4], [0.1, 0.0]])  # total 0.7
    attn[0, :, :, 2] = torch.tensor([[0.0, 0.0], [0.3, 0.3]])  # total 0.6
    masks = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    masks[0, 0, 0, :] = True  # component 0: top row
    masks[1, 0, :, 1] = True  # component 1: right column
    got = attention_shares(attn, [1, 2], masks)
    assert got.shape == (2, 2, 1)
    # A: top row (0.2 + 0.4) / 0.7, right column (0.4 + 0.0) / 0.7; B: top row 0, right column 0.3 / 0.6
    expected = torch.tensor([[[6 / 7], [4 / 7]], [[0.0], [0.5]]])
    assert torch.allclose(got, expected, atol=1e-6)


def test_attention_shares_downsample_the_masks_nearest_like_the_loss_and_keep_views_apart():
    attn = torch.zeros(2, 2, 2, 1)
    attn[0, ..., 0] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    attn[1, ..., 0] = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    mask = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    mask[0, :, 0, 0] = True  # picked for cell (0, 0) in both views
    mask[0, :, 1, 3] = True  # never picked (odd row)
    mask[0, 1, 2, 2] = True  # picked for cell (1, 1) in view 1
    got = attention_shares(attn, [0], mask)[0, 0]
    # view 0: only cell (0, 0): 1 / 4; view 1: cells (0, 0) and (1, 1): (3 + 1) / 4
    assert torch.allclose(got, torch.tensor([0.25, 1.0]), atol=1e-7)
    assert torch.allclose(mask_area_shares(mask, (2, 2))[0], torch.tensor([0.25, 0.5]))


def test_change_shares_per_view_and_over_all_views_by_hand():
    ref = torch.zeros(2, 3, 2, 2)
    changed = torch.zeros(2, 3, 2, 2)
    changed[0, :, 0, 0] = 0.3  # view 0: |diff| mean over RGB 0.3 at (0,0) ...
    changed[0, 0, 1, 1] = 0.6  # ... and 0.2 at (1,1)
    # view 1 unchanged
    region = torch.zeros(2, 2, 2, dtype=torch.bool)
    region[:, 0, 0] = True
    per_view, overall = change_shares(ref, changed, region)
    assert per_view[0].item() == pytest.approx(0.3 / 0.5, abs=1e-6)
    assert math.isnan(per_view[1].item())
    assert overall == pytest.approx(0.6, abs=1e-6)
    per_view, overall = change_shares(ref, ref, region)
    assert torch.isnan(per_view).all() and math.isnan(overall)
    with pytest.raises(ShapeError, match="images must both be"):
        change_shares(ref, changed[:1], region)


def test_masked_psnr_by_hand():
    ref = torch.zeros(3, 3, 2, 2)
    img = torch.zeros(3, 3, 2, 2)
    img[0, :, 0, 0] = 0.1  # inside: squared error 0.01 in every channel -> 20 dB
    img[0, :, 1, 1] = 0.5  # outside the mask: ignored
    img[1, 0, 0, 0] = 0.1  # one channel of two mask pixels: mse 0.01 / 6 -> 10·log10(600)
    mask = torch.zeros(3, 2, 2, dtype=torch.bool)
    mask[0, 0, 0] = True
    mask[1, 0, :] = True
    # view 2: empty mask -> NaN
    got = masked_psnr(ref, img, mask)
    assert got[0].item() == pytest.approx(20.0, abs=1e-4)
    assert got[1].item() == pytest.approx(10 * math.log10(600), abs=1e-4)
    assert math.isnan(got[2].item())
    assert masked_psnr(ref, ref, mask)[0].item() == MAX_PSNR_DB


def test_verdicts_name_isolated_leaking_and_weak_tokens():
    comps = ["hat", "dog", "scarf"]
    isolated = torch.tensor([[0.7, 0.6], [0.1, 0.2], [0.05, 0.05]])  # own mean 0.65, largest leak dog 0.15
    assert verdict("<hat>", isolated, 0, comps) == "<hat>: isolated; own share 0.65, largest leak dog 0.15"
    leaking = torch.tensor([[0.4, 0.4], [0.3, 0.3], [0.25, 0.27]])
    assert verdict("<hat>", leaking, 0, comps) == "<hat>: leaking into dog (0.30), scarf (0.26); own share 0.40"
    weak = torch.tensor([[0.2, 0.3], [0.1, 0.1], [0.0, 0.1]])
    assert verdict("<hat>", weak, 0, comps).startswith("<hat>: weak; own share 0.25")


def test_swapped_exchanges_two_tokens_vectors_only():
    emb = torch.arange(12.0).reshape(3, 1, 4)
    tokens = TokenSet(tokens=("<a>", "<b>", "<c>"), embeddings=emb, components=("a", "b", "c"))
    out = swapped(tokens, 0, 2)
    assert out.tokens == tokens.tokens
    assert torch.equal(out.embeddings[0], emb[2]) and torch.equal(out.embeddings[2], emb[0])
    assert torch.equal(out.embeddings[1], emb[1]) and torch.equal(tokens.embeddings, torch.arange(12.0).reshape(3, 1, 4))


def test_heatmap_rows_show_each_tokens_peak_where_its_map_peaks_and_its_mask_beside_it():
    attn = torch.zeros(2, 4, 2, 2)
    attn[0, :, 0, 0] = 1.0  # token 0 peaks top-left in every view
    attn[1, :, 1, 1] = 2.0  # token 1 bottom-right
    masks = torch.zeros(2, 4, 8, 8, dtype=torch.bool)
    masks[0, :, :4, :4] = True
    img = render_heatmap(attn, masks, ["<a>", "<b>"], tile=16)
    label, gap = 14, 4
    assert img.shape == (3, 2 * (16 + label), 8 * 16 + gap)
    row0 = img[:, label:label + 16]
    assert torch.allclose(row0[:, 2, 2], torch.ones(3)) and torch.allclose(row0[:, 12, 12], torch.zeros(3))
    # the mask's outline in cyan over the heat: mask pixels 0..7 of the tile, its inner edge at row 7 and column 7
    assert torch.allclose(row0[:, 7, 3], torch.tensor([0.0, 1.0, 1.0])) and torch.allclose(row0[:, 3, 7], row0[:, 7, 3])
    assert torch.allclose(row0[:, 6, 6], torch.ones(3))
    mask_tile = row0[:, :, 4 * 16 + gap: 5 * 16 + gap]
    assert mask_tile[:, 2, 2].min() == 1.0 and mask_tile[:, 12, 12].max() == 0.0
    row1 = img[:, 2 * label + 16: 2 * label + 32]
    assert torch.allclose(row1[:, 12, 12], torch.ones(3)) and row1[:, :, 5 * 16 + gap:].max() == 0.0  # empty mask


def test_config_refuses_bad_values():
    with pytest.raises(ConfigError, match="timesteps must be"):
        TokenReportConfig(timesteps=(1000,))
    with pytest.raises(ConfigError, match="sample_steps"):
        TokenReportConfig(sample_steps=0)
    with pytest.raises(ConfigError, match="isolated_share"):
        TokenReportConfig(isolated_share=0.0)


# ------------------------------------------------------------------------------------------------ tiny model
def _independent_maps(model, latents, cameras, prompt, layers, t, noise):
    """softmax(q·kᵀ·scale) from each attn2 module's own to_q/to_k, captured by forward hooks (no processor code)."""
    from dreamedit3d_core.personalize.losses import map_size

    modules = dict(model.unet.named_modules())
    maps = {}

    def hook(name):
        def fn(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            ctx = kwargs.get("encoder_hidden_states")
            q, k = module.to_q(x), module.to_k(ctx)
            n, heads = q.shape[0], module.heads
            q = q.reshape(n, q.shape[1], heads, -1).permute(0, 2, 1, 3)
            k = k.reshape(n, k.shape[1], heads, -1).permute(0, 2, 1, 3)
            probs = torch.einsum("nhqd,nhkd->nhqk", q.double(), k.double()).mul(module.scale).softmax(-1)
            maps[name] = probs.mean(dim=1)  # heads
        return fn

    handles = [modules[n].register_forward_hook(hook(n), with_kwargs=True) for n in layers]
    try:
        ids = model.tokenizer.encode([prompt])
        text = model.encode_text_ids(ids).repeat_interleave(latents.shape[0], 0)
        ac = model.alphas_cumprod.double()[t].float()
        noisy = ac.sqrt() * latents + (1 - ac).sqrt() * noise
        with torch.no_grad():
            model.predict_noise(noisy, torch.full((latents.shape[0],), t), text, cameras)
    finally:
        for h in handles:
            h.remove()
    avg = sum(maps.values()) / len(maps)
    h, w = map_size(avg.shape[1], tuple(latents.shape[-2:]))
    return avg.reshape(latents.shape[0], h, w, -1).float(), ids[0]


def test_recorded_attention_equals_an_independent_recomputation_averaged_over_timesteps():
    from _personalize_helpers import fresh_tiny_model, two_component_scene

    from dreamedit3d_core.personalize.objective import attention_layers_for
    from dreamedit3d_core.personalize.textual_inversion import initial_embeddings

    render, masks = two_component_scene(64)
    model = fresh_tiny_model()
    ids = model.add_tokens(["<hat>", "<dog>"], initial_embeddings(model, ("hat", ""), 2))
    with torch.no_grad():
        latents = model.encode_images(render.rgb, sample=False).float()
    cameras = render.cameras.embedding()
    layers = attention_layers_for(model.unet, latents.shape[-2:], 16)
    prompt = "a photo of <hat> and <dog>"
    got, positions = recorded_attention(model, latents, cameras, prompt, ["<hat>", "<dog>"], layers, (150, 650),
                                        noise_seed=4)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(4))
    a, row = _independent_maps(model, latents, cameras, prompt, layers, 150, noise)
    b, _ = _independent_maps(model, latents, cameras, prompt, layers, 650, noise)
    assert positions == [int((row == ids[0]).nonzero()), int((row == ids[1]).nonzero())]
    assert torch.allclose(got, (a + b) / 2, atol=1e-5)
    with pytest.raises(TokenError, match="appears 2 times"):
        recorded_attention(model, latents, cameras, "a photo of <hat> and <hat>", ["<hat>"], layers, (1,))


def test_image_measures_equal_samples_drawn_independently_with_the_same_noise(tmp_path):
    """Reconstruction, omission and swap on the tiny model against compose_prompt + sample_views run by hand."""
    import copy

    from _personalize_helpers import fresh_tiny_model
    from _token_report_helpers import two_block_scene

    from dreamedit3d_core.errors import ConfigError as _ConfigError
    from dreamedit3d_core.personalize.losses import downsample_mask
    from dreamedit3d_core.prompts import compose_prompt
    from dreamedit3d_core.sampling import sample_views
    from dreamedit3d_core.token_report import save_token_report, token_report
    from dreamedit3d_core.tokens import apply_tokens

    render, masks = two_block_scene(64)
    model = fresh_tiny_model()
    g = torch.Generator().manual_seed(0)
    tokens = TokenSet(tokens=("<top>", "<base>"), embeddings=torch.randn(2, 1, 128, generator=g),
                      components=("top", "base"))
    apply_tokens(model, tokens)
    before = model.token_embedding.weight.detach().clone()
    config = TokenReportConfig(resolution=None, sample_steps=2, cfg=4.0, seed=11, timesteps=(500,))
    # tokens given in the other order: the report follows the masks' component order
    reversed_tokens = TokenSet(tokens=("<base>", "<top>"), embeddings=tokens.embeddings.flip(0),
                               components=("base", "top"))
    report = token_report(model, reversed_tokens, render, masks, config)
    assert torch.equal(model.token_embedding.weight.detach(), before), "token rows must come back after the swap"
    assert report.table["tokens"] == ["<top>", "<base>"]

    noise = torch.randn((4, 4, 8, 8), generator=torch.Generator().manual_seed(11))

    def sample(m, prompt):
        cond = compose_prompt(m, prompt, negative_prompt="", add_mvdream_suffix=False, add_quality_suffix=False,
                              cameras=render.cameras)
        return sample_views(m, cond, method="ddim", steps=2, cfg=4.0, noise=noise).images

    full = sample(model, "a photo of <top> and <base>")
    no_top = sample(model, "a photo of <base>")
    other = copy.deepcopy(model)
    apply_tokens(other, swapped(tokens, 0, 1))
    swap = sample(other, "a photo of <top> and <base>")
    m = masks.masks
    psnr = masked_psnr(render.rgb, full, m[0])
    got = report.table["reconstruction"]["components"]["top"]["psnr"]["per_view"]
    assert got == pytest.approx(psnr.tolist(), abs=2e-3)
    _, overall = change_shares(full, no_top, m[0])
    assert report.table["omission"]["<top>"]["overall"] == pytest.approx(overall, abs=1e-3)
    assert report.table["omission"]["<top>"]["prompt"] == "a photo of <base>"
    _, overall = change_shares(full, swap, m[0] | m[1])
    assert report.table["swap"][0]["overall"] == pytest.approx(overall, abs=1e-3)
    assert report.table["swap"][0]["mask_area"] == pytest.approx(float((m[0] | m[1]).float().mean()), abs=1e-4)
    assert report.table["omission"]["<top>"]["mask_area"] == pytest.approx(
        float(downsample_mask(m[0], (64, 64)).mean()), abs=1e-4)

    paths = save_token_report(report, tmp_path, "blocks")
    assert paths["json"].name == "blocks_tokens.json" and paths["heatmap"].name == "blocks_tokens_heatmap.png"
    import json

    assert json.loads(paths["json"].read_text())["verdicts"] == list(report.verdicts)
    with pytest.raises(_ConfigError, match="already exists"):
        save_token_report(report, tmp_path, "blocks")
