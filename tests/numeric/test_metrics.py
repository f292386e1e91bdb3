"""Edit metrics on tiny seeded CLIP/DINO models of the real architectures, against independent references.

The references run the in-memory reference models through their plain transformers forward (``CLIPModel(...)``'s
``image_embeds``/``text_embeds``, ``ViTModel(...).last_hidden_state[:, 0]``), tokenise with ``open_clip.tokenize``,
preprocess with their own interpolate/crop lines and take cosines by hand. The library loads the same weights from
disk, as users keep them.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from _metrics_helpers import (random_views, tiny_clip_model, tiny_dino_model, write_tiny_clip_file,
                              write_tiny_clip_folder, write_tiny_dino_folder)
from dreamedit3d_core import metrics as M

pytestmark = pytest.mark.numeric

ATOL = 2e-5
SRC_CAPTION = "a 3D render of a dog"
EDIT_CAPTION = "a 3D render of a dog wearing a red party hat"
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("metric_models")
    write_tiny_clip_folder(root / "clip_vision" / "clip-tiny", seed=0)
    write_tiny_clip_folder(root / "clip_vision" / "clip-tiny-notok", seed=0, tokenizer_files=False)
    write_tiny_clip_file(root / "clip_vision" / "clip_full.safetensors", seed=3)
    write_tiny_clip_file(root / "clip_vision" / "clip_vision_only.safetensors", seed=3, vision_only=True)
    write_tiny_dino_folder(root / "dino" / "dino-tiny", seed=5)
    return root


@pytest.fixture(scope="module")
def clip(model_dir):
    return M.load_metric_clip(model_dir / "clip_vision" / "clip-tiny")


@pytest.fixture(scope="module")
def dino(model_dir):
    return M.load_metric_dino(model_dir / "dino" / "dino-tiny" / "model.safetensors")


@pytest.fixture(scope="module")
def views():
    return random_views(10), random_views(11)


# ---------------------------------------------------------------- independent references

def ref_resize_crop(x, short, crop):
    """Short side -> ``short`` (bicubic, antialiased, as PIL), centre crop ``crop``, clamp."""
    h, w = x.shape[-2:]
    nh, nw = (short, round(w * short / h)) if h <= w else (round(h * short / w), short)
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - crop) // 2, (nw - crop) // 2
    return x[:, :, top:top + crop, left:left + crop].clamp(0, 1)


def ref_clip_embeds(ref_model, images, captions):
    import open_clip

    pixels = (ref_resize_crop(images, 32, 32) - CLIP_MEAN) / CLIP_STD
    ids = open_clip.tokenize(captions)
    with torch.no_grad():
        out = ref_model(input_ids=ids, pixel_values=pixels)
    img = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    txt = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
    return img, txt


def ref_cos(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def ref_dino_cls(ref_model, images):
    pixels = (ref_resize_crop(images, 37, 32) - IMAGENET_MEAN) / IMAGENET_STD  # 32 * 256/224 = 36.6 -> 37
    with torch.no_grad():
        return ref_model(pixel_values=pixels).last_hidden_state[:, 0]


def assert_scores(scores, expected, atol=ATOL):
    got = torch.tensor(scores.per_view, dtype=torch.float64)
    expected = expected.double()
    assert torch.allclose(got, expected, atol=atol), f"max diff {(got - expected).abs().max():.3g}: {got} vs {expected}"
    assert scores.mean == pytest.approx(float(expected.mean()), abs=atol)


# ---------------------------------------------------------------- values

def test_clip_directional_equals_reference(clip, views):
    src, edit = views
    img, txt = ref_clip_embeds(tiny_clip_model(0), torch.cat([src, edit]), [SRC_CAPTION, EDIT_CAPTION])
    expected = ref_cos(img[4:] - img[:4], (txt[1] - txt[0]).expand(4, -1))
    scores = M.clip_directional_similarity(src, edit, SRC_CAPTION, EDIT_CAPTION, clip)
    assert scores.name == "clip_directional" and len(scores.per_view) == 4
    assert_scores(scores, expected)
    assert float(expected.abs().min()) > 1e-3  # the check is not on near-zero numbers


def test_clip_score_and_clip_image_equal_reference(clip, views):
    src, edit = views
    img, txt = ref_clip_embeds(tiny_clip_model(0), torch.cat([src, edit]), [EDIT_CAPTION])
    cos_text = (img[4:] * txt[0]).sum(-1)
    assert float(cos_text.min()) > 0  # so the clamp at 0 does not hide a sign error
    assert_scores(M.clip_text_image_score(edit, EDIT_CAPTION, clip), (100 * cos_text).clamp_min(0), atol=2e-3)
    assert_scores(M.clip_image_similarity(src, edit, clip), ref_cos(img[4:], img[:4]))


def test_clip_score_is_zero_for_negative_cosines(model_dir, views):
    """CLIPScore = max(100 cos, 0): with the text projection negated every cosine turns negative and scores 0."""
    flipped = M.load_metric_clip(model_dir / "clip_vision" / "clip-tiny")
    with torch.no_grad():
        flipped.model.text_projection.weight.neg_()
    _, edit = views
    img, txt = ref_clip_embeds(tiny_clip_model(0), edit, [EDIT_CAPTION])
    cos = -(img * txt[0]).sum(-1)
    assert float(cos.max()) < 0
    scores = M.clip_text_image_score(edit, EDIT_CAPTION, flipped)
    assert scores.per_view == (0.0, 0.0, 0.0, 0.0) and scores.mean == 0.0


def test_dino_identity_equals_reference(dino):
    src, edit = random_views(20, height=40, width=40), random_views(21, height=40, width=40)
    ref = tiny_dino_model(5)
    expected = ref_cos(ref_dino_cls(ref, edit), ref_dino_cls(ref, src))
    scores = M.dino_identity(src, edit, dino)
    assert scores.name == "dino_identity"
    assert_scores(scores, expected)
    assert float(expected.max()) < 0.9999


def test_dino_identity_with_protected_mask_equals_reference(dino):
    """Both images keep only the protected pixels (the rest becomes the background) before embedding."""
    src, edit = random_views(22, height=40, width=40), random_views(23, height=40, width=40)
    g = torch.Generator().manual_seed(4)
    mask = torch.zeros(4, 40, 40, dtype=torch.bool)
    mask[:, 8:30, 5:33] = torch.rand(4, 22, 28, generator=g) > 0.3
    bg = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    m = mask[:, None].float()
    ref = tiny_dino_model(5)
    expected = ref_cos(ref_dino_cls(ref, edit * m + bg * (1 - m)), ref_dino_cls(ref, src * m + bg * (1 - m)))
    scores = M.dino_identity(src, edit, dino, mask=mask, background=(0.2, 0.5, 0.9))
    assert scores.name == "dino_identity_protected"
    assert_scores(scores, expected)
    unmasked = M.dino_identity(src, edit, dino)
    assert max(abs(a - b) for a, b in zip(scores.per_view, unmasked.per_view)) > 1e-3  # the mask changed the score


def test_edits_outside_the_protected_mask_do_not_change_masked_identity(dino):
    src = random_views(24, height=40, width=40)
    mask = torch.zeros(4, 40, 40, dtype=torch.bool)
    mask[:, :, :20] = True
    edit = src.clone()
    edit[:, :, :, 20:] = random_views(25, height=40, width=40)[:, :, :, 20:]  # change only unprotected pixels
    assert M.dino_identity(src, edit, dino, mask=mask).per_view == pytest.approx([1.0] * 4, abs=1e-5)
    assert min(M.dino_identity(src, edit, dino).per_view) < 0.9999


def test_view_with_empty_protected_mask_has_no_score_and_is_left_out_of_the_mean(dino):
    src, edit = random_views(26, height=40, width=40), random_views(27, height=40, width=40)
    mask = torch.ones(4, 40, 40, dtype=torch.bool)
    mask[2] = False
    scores = M.dino_identity(src, edit, dino, mask=mask)
    assert math.isnan(scores.per_view[2])
    valid = [v for i, v in enumerate(scores.per_view) if i != 2]
    assert scores.mean == pytest.approx(sum(valid) / 3)
    table = M.evaluate_edit(src, edit, dino=dino, mask=mask)
    assert table["metrics"]["dino_identity_protected"]["per_view"][2] is None
    M.metrics_to_json(table)  # no NaN in the JSON


# ---------------------------------------------------------------- properties from the definitions

def test_identical_images_give_identity_one_and_no_direction(clip, dino, views):
    src, _ = views
    assert M.dino_identity(src, src.clone(), dino).per_view == pytest.approx([1.0] * 4, abs=1e-5)
    assert M.clip_image_similarity(src, src.clone(), clip).per_view == pytest.approx([1.0] * 4, abs=1e-5)
    # the image direction is the zero vector: cos is defined as 0 (torch cosine_similarity, IP2P sim_direction)
    assert M.clip_directional_similarity(src, src.clone(), SRC_CAPTION, EDIT_CAPTION, clip).per_view == \
        pytest.approx([0.0] * 4, abs=1e-6)


def test_swapping_the_captions_flips_the_sign_of_the_directional_score(clip, views):
    src, edit = views
    forward = M.clip_directional_similarity(src, edit, SRC_CAPTION, EDIT_CAPTION, clip)
    swapped = M.clip_directional_similarity(src, edit, EDIT_CAPTION, SRC_CAPTION, clip)
    assert swapped.per_view == pytest.approx([-v for v in forward.per_view], abs=1e-6)
    assert swapped.mean == pytest.approx(-forward.mean, abs=1e-6)
    assert max(abs(v) for v in forward.per_view) > 1e-3


def test_metrics_do_not_depend_on_batching(clip, dino, views):
    """A view's score is the same when it is scored alone."""
    src, edit = views
    full = M.clip_directional_similarity(src, edit, SRC_CAPTION, EDIT_CAPTION, clip)
    alone = M.clip_directional_similarity(src[2:3], edit[2:3], SRC_CAPTION, EDIT_CAPTION, clip)
    assert alone.per_view[0] == pytest.approx(full.per_view[2], abs=1e-5)
    assert M.dino_identity(src[1:2], edit[1:2], dino).per_view[0] == \
        pytest.approx(M.dino_identity(src, edit, dino).per_view[1], abs=1e-5)


# ---------------------------------------------------------------- loading as users keep the files

def test_clip_folder_without_tokenizer_files_uses_the_bundled_bpe_and_scores_the_same(model_dir, clip, views):
    """The folder's HF tokenizer and open_clip's bundled BPE give the same ids (up to padding) and the same scores."""
    other = M.load_metric_clip(model_dir / "clip_vision" / "clip-tiny-notok" / "config.json")
    captions = [SRC_CAPTION, "Naïve café: a HAT!!  3d-render " * 12]  # long: truncation keeps the EOT
    a, b = clip.tokenize(captions), other.tokenize(captions)
    eot = 49407
    assert int(a[1, -1]) == eot and int(b[1, -1]) == eot
    real = b != 0
    assert torch.equal(a[real], b[real]) and bool((a[~real] == eot).all())
    src, edit = views
    assert M.clip_directional_similarity(src, edit, SRC_CAPTION, EDIT_CAPTION, other).per_view == pytest.approx(
        M.clip_directional_similarity(src, edit, SRC_CAPTION, EDIT_CAPTION, clip).per_view, abs=1e-6)


def test_single_full_clip_file_infers_its_config_and_equals_reference(model_dir, views):
    single = M.load_metric_clip(model_dir / "clip_vision" / "clip_full.safetensors")
    assert single.has_text and single.image_size == 32
    src, edit = views
    img, txt = ref_clip_embeds(tiny_clip_model(3, head_dim64=True), torch.cat([src, edit]), [SRC_CAPTION, EDIT_CAPTION])
    expected = ref_cos(img[4:] - img[:4], (txt[1] - txt[0]).expand(4, -1))
    assert_scores(M.clip_directional_similarity(src, edit, SRC_CAPTION, EDIT_CAPTION, single), expected)


def test_vision_only_clip_file_gives_clip_i_and_refuses_text_scores(model_dir, views):
    vision = M.load_metric_clip(model_dir / "clip_vision" / "clip_vision_only.safetensors")
    assert not vision.has_text
    src, edit = views
    img, _ = ref_clip_embeds(tiny_clip_model(3, head_dim64=True), torch.cat([src, edit]), ["x"])
    assert_scores(M.clip_image_similarity(src, edit, vision), ref_cos(img[4:], img[:4]))
    with pytest.raises(M.CheckpointError, match="only the image tower"):
        M.clip_directional_similarity(src, edit, SRC_CAPTION, EDIT_CAPTION, vision)
    table = M.evaluate_edit(src, edit, SRC_CAPTION, EDIT_CAPTION, clip=vision)
    assert list(table["metrics"]) == ["clip_image"]


# The published configs of the models users keep (openai/clip-vit-large-patch14, laion ViT-bigG-14 image tower).
VIT_L14 = dict(text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         vocab_size=49408, max_position_embeddings=77, projection_dim=768),
               vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, projection_dim=768))
VIT_BIGG14_VISION = dict(hidden_size=1664, intermediate_size=8192, num_hidden_layers=48, num_attention_heads=16,
                         image_size=224, patch_size=14, projection_dim=1280)


def _meta_state_dict(model_cls, config):
    with torch.device("meta"):  # shapes only: no memory, no time
        return model_cls(config).state_dict()


def test_config_inferred_from_a_single_vit_l14_file_is_the_published_one():
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPConfig(text_config=VIT_L14["text"], vision_config=VIT_L14["vision"], projection_dim=768)
    vision, full = M.clip_config_from_state_dict(_meta_state_dict(CLIPModel, config), "vit-l-14.safetensors")
    for key, value in VIT_L14["vision"].items():
        assert getattr(vision, key) == value, key
    for key, value in VIT_L14["text"].items():
        assert getattr(full.text_config, key) == value, key
    assert vision.hidden_act == "quick_gelu" and full.projection_dim == 768
    # ComfyUI's clip_vision_g.safetensors: the bigG image tower (104-dim heads)
    sd = _meta_state_dict(CLIPVisionModelWithProjection, CLIPVisionConfig(**VIT_BIGG14_VISION))
    vision, full = M.clip_config_from_state_dict(sd, "clip_vision_g.safetensors")
    assert full is None
    for key, value in VIT_BIGG14_VISION.items():
        assert getattr(vision, key) == value, key


def test_clip_folder_with_only_tokenizer_json_loads_its_fast_tokenizer(model_dir, tmp_path, clip):
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "clip-tokenizer-json"
    shutil.copytree(model_dir / "clip_vision" / "clip-tiny", folder)
    AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))
    for name in ("vocab.json", "merges.txt"):
        (folder / name).unlink(missing_ok=True)
    assert (folder / "tokenizer.json").is_file()
    other = M.load_metric_clip(folder)
    captions = [SRC_CAPTION, EDIT_CAPTION]
    assert torch.equal(other.tokenize(captions), clip.tokenize(captions))


def test_preprocessing_matches_the_pil_image_processors():
    """Our torch preprocessing agrees with transformers' PIL-based processors within one 8-bit level."""
    import numpy as np
    from transformers import CLIPImageProcessor

    x = (random_views(30, height=48, width=48) * 255).round() / 255
    arrays = [(xi.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for xi in x]
    clip_proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pil = clip_proc(images=arrays, return_tensors="pt")["pixel_values"]
    assert (pil - M.preprocess_clip(x, 32)).abs().max() < 1.5 / 255 / 0.26
    dino_proc = CLIPImageProcessor(size={"shortest_edge": 37}, crop_size={"height": 32, "width": 32},
                                   image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    pil = dino_proc(images=arrays, return_tensors="pt")["pixel_values"]
    assert (pil - M.preprocess_dino(x, 32)).abs().max() < 1.5 / 255 / 0.224


def test_protected_mask_is_the_union_of_the_components_not_edited():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(3, 4, 6, 10, generator=g) > 0.6
    cm = M.ComponentMasks(masks=masks, names=("dog", "hat", "collar"))
    assert torch.equal(M.protected_mask(cm, ["<hat>"]), masks[0] | masks[2])
    assert torch.equal(M.protected_mask(cm, ["hat", "collar"]), masks[0])
    with pytest.raises(M.ConfigError, match="unknown component"):
        M.protected_mask(cm, ["scarf"])
    with pytest.raises(M.ConfigError, match="nothing is left to protect"):
        M.protected_mask(cm, ["dog", "hat", "collar"])


# ---------------------------------------------------------------- table and chart

def test_table_json_and_chart(clip, dino, views):
    import json

    src, edit = views
    mask = torch.ones(4, 40, 44, dtype=torch.bool)
    table = M.evaluate_edit(src, edit, SRC_CAPTION, EDIT_CAPTION, clip=clip, dino=dino, mask=mask)
    assert table["views"] == ["front", "right", "back", "left"]
    assert list(table["metrics"]) == ["clip_directional", "clip_score", "clip_image", "dino_identity",
                                      "dino_identity_protected"]
    direct = M.clip_directional_similarity(src, edit, SRC_CAPTION, EDIT_CAPTION, clip)
    assert table["metrics"]["clip_directional"]["per_view"] == pytest.approx(direct.per_view, abs=1e-6)
    # an all-ones mask keeps every pixel: same as unmasked
    assert table["metrics"]["dino_identity_protected"]["per_view"] == \
        pytest.approx(table["metrics"]["dino_identity"]["per_view"], abs=1e-6)
    assert json.loads(M.metrics_to_json(table)) == table

    chart = M.render_metrics_chart(table, width=400, panel_height=120)
    assert chart.shape == (3, 24 + 5 * 120, 400) and chart.dtype == torch.float32
    assert 0.0 <= float(chart.min()) and float(chart.max()) <= 1.0


def test_chart_bar_heights_follow_the_values():
    """Bars start at zero and end at their value: measure the front bar's height in pixels."""
    table = {"views": ["front", "right", "back", "left"],
             "metrics": {"dino_identity": {"label": "DINO", "per_view": [1.0, 0.5, 0.25, None], "mean": 0.583}}}
    chart = M.render_metrics_chart(table, width=500, panel_height=200)
    front = torch.tensor([76, 114, 176]) / 255.0
    right = torch.tensor([221, 132, 82]) / 255.0

    def bar_rows(colour):
        hit = ((chart - colour.view(3, 1, 1)).abs().max(0).values < 1e-3)
        return int(hit.any(dim=1)[24:].sum())  # rows below the legend

    full, half = bar_rows(front), bar_rows(right)
    assert full > 100 and abs(half / full - 0.5) < 0.03


def test_a_batch_of_edits_is_scored_edit_by_edit(clip, dino, views):
    """edited [N*V] edit-major: edit n's table equals evaluate_edit on views n*V .. n*V+V-1; summary holds the means."""
    src, edit = views
    other = random_views(12)
    captions = [EDIT_CAPTION, "a 3D render of a golden dog"]
    batch = M.evaluate_edits(src, torch.cat([edit, other]), SRC_CAPTION, captions, clip=clip, dino=dino)
    assert len(batch["edits"]) == 2 and batch["summary"]["views"] == ["edit 1", "edit 2"]
    for table, images, caption in zip(batch["edits"], (edit, other), captions):
        alone = M.evaluate_edit(src, images, SRC_CAPTION, caption, clip=clip, dino=dino)
        assert table == alone
    for key, entry in batch["summary"]["metrics"].items():
        assert entry["per_view"] == [t["metrics"][key]["mean"] for t in batch["edits"]]
    M.render_metrics_chart(batch["summary"])
    with pytest.raises(M.ConfigError, match="holds 2 edit\\(s\\) .* but 1 edit caption"):
        M.evaluate_edits(src, torch.cat([edit, other]), SRC_CAPTION, [EDIT_CAPTION], clip=clip)
    with pytest.raises(M.ShapeError, match="not a multiple of the source's 4"):
        M.evaluate_edits(src, torch.cat([edit, other[:2]]), SRC_CAPTION, captions, clip=clip)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("make, match", [
    (lambda s: s.permute(0, 2, 3, 1), r"\[V, 3, H, W\]"),  # ComfyUI BHWC by mistake
    (lambda s: s[0], r"\[V, 3, H, W\]"),
    (lambda s: s * 2 - 1, "0..1"),
    (lambda s: (s * 255).byte(), "float"),
    (lambda s: s.masked_fill(torch.zeros_like(s, dtype=torch.bool).index_fill_(0, torch.tensor([1]), True), float("nan")),
     "NaN"),
    (lambda s: s[:3], "4 views but edited_images has 3"),
    (lambda s: s.tolist(), "torch.Tensor"),
])
def test_bad_images_are_refused_with_a_clear_message(dino, views, make, match):
    src, _ = views
    with pytest.raises(M.ShapeError, match=match):
        M.dino_identity(src, make(src.clone()), dino)


def test_bad_captions_masks_and_empty_requests_are_refused(clip, dino, views):
    src, edit = views
    with pytest.raises(M.ConfigError, match="edit_caption must be a non-empty string"):
        M.clip_directional_similarity(src, edit, SRC_CAPTION, "  ", clip)
    with pytest.raises(M.ShapeError, match=r"mask must have shape \[V, H, W\] = \[4, 40, 44\]"):
        M.dino_identity(src, edit, dino, mask=torch.ones(4, 32, 32, dtype=torch.bool))
    with pytest.raises(M.ShapeError, match="empty in every view"):
        M.dino_identity(src, edit, dino, mask=torch.zeros(4, 40, 44, dtype=torch.bool))
    with pytest.raises(M.ConfigError, match="no metric model given"):
        M.evaluate_edit(src, edit, SRC_CAPTION, EDIT_CAPTION)


def test_missing_or_wrong_model_files_are_refused(model_dir, tmp_path):
    with pytest.raises(M.CheckpointError, match="CLIP model not found: .*models/clip_vision"):
        M.load_metric_clip(tmp_path / "nowhere")
    with pytest.raises(M.CheckpointError, match="DINO model not found: .*facebook/dino-vits16"):
        M.load_metric_dino(tmp_path / "models" / "dino" / "dino-vits16")
    (tmp_path / "empty").mkdir()
    with pytest.raises(M.CheckpointError, match="has no config.json"):
        M.load_metric_dino(tmp_path / "empty")
    with pytest.raises(M.CheckpointError, match="holds a 'vit' model, not CLIP"):
        M.load_metric_clip(model_dir / "dino" / "dino-tiny")
    with pytest.raises(M.CheckpointError, match="holds a 'clip' model, not a ViT"):
        M.load_metric_dino(model_dir / "clip_vision" / "clip-tiny")
    with pytest.raises(M.CheckpointError, match="no config.json beside it"):
        M.load_metric_dino(model_dir / "clip_vision" / "clip_full.safetensors")

    nocfg = tmp_path / "weights_missing"
    nocfg.mkdir()
    (nocfg / "config.json").write_text((model_dir / "dino" / "dino-tiny" / "config.json").read_text())
    with pytest.raises(M.CheckpointError, match="no weights"):
        M.load_metric_dino(nocfg)


def test_truncated_corrupt_and_foreign_weight_files_are_refused(model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    # a folder whose weights lack tensors: transformers would fill them randomly; we refuse
    folder = tmp_path / "dino-truncated"
    folder.mkdir()
    (folder / "config.json").write_text((model_dir / "dino" / "dino-tiny" / "config.json").read_text())
    sd = load_file(str(model_dir / "dino" / "dino-tiny" / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if "layer.1." not in k}, str(folder / "model.safetensors"))
    with pytest.raises(M.CheckpointError, match="lack .* tensors"):
        M.load_metric_dino(folder)

    broken_folder = tmp_path / "clip-broken"
    broken_folder.mkdir()
    (broken_folder / "config.json").write_text((model_dir / "clip_vision" / "clip-tiny" / "config.json").read_text())
    (broken_folder / "model.safetensors").write_bytes(
        (model_dir / "clip_vision" / "clip-tiny" / "model.safetensors").read_bytes()[:4000])
    with pytest.raises(M.CheckpointError, match="cannot be loaded .*download them again"):
        M.load_metric_clip(broken_folder)
    (broken_folder / "config.json").write_text("{not json")
    with pytest.raises(M.CheckpointError, match="config .* cannot be read"):
        M.load_metric_clip(broken_folder / "model.safetensors")

    corrupt = tmp_path / "clip_broken.safetensors"
    corrupt.write_bytes((model_dir / "clip_vision" / "clip_full.safetensors").read_bytes()[:5000])
    with pytest.raises(M.CheckpointError, match="corrupt or truncated"):
        M.load_metric_clip(corrupt)

    foreign = tmp_path / "open_clip_layout.safetensors"
    save_file({"visual.conv1.weight": torch.zeros(8, 3, 4, 4), "visual.proj": torch.zeros(8, 4)}, str(foreign))
    with pytest.raises(M.CheckpointError, match="not in the transformers CLIP layout .*open_clip"):
        M.load_metric_clip(foreign)

    partial = tmp_path / "clip_partial.safetensors"
    sd = load_file(str(model_dir / "clip_vision" / "clip_full.safetensors"))
    save_file({k: v for k, v in sd.items() if k != "text_model.final_layer_norm.weight"}, str(partial))
    with pytest.raises(M.CheckpointError, match="1 missing"):
        M.load_metric_clip(partial)


@pytest.mark.gpu
def test_metrics_run_on_cuda_and_match_cpu(model_dir, clip, views):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    gpu = M.load_metric_clip(model_dir / "clip_vision" / "clip-tiny", device="cuda")
    src, edit = views
    on_gpu = M.clip_directional_similarity(src.cuda(), edit.cuda(), SRC_CAPTION, EDIT_CAPTION, gpu)
    on_cpu = M.clip_directional_similarity(src, edit, SRC_CAPTION, EDIT_CAPTION, clip)
    assert on_gpu.per_view == pytest.approx(on_cpu.per_view, abs=1e-4)
