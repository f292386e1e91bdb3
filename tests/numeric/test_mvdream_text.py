"""The text tower against open_clip's own model built from the same weights (MVDream's penultimate layer)."""

from __future__ import annotations

import pytest
import torch

from _mvdream_helpers import fresh_tiny_model, shared_tiny_model

pytestmark = pytest.mark.numeric

PREFIX = "cond_stage_model.model."


def _open_clip_reference(seed: int = 0):
    """open_clip's CLIP (tiny vision tower, the tiny text tower) loaded strictly with the checkpoint's text keys."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from dreamedit3d_core.testing.tiny import TINY_TEXT, tiny_state_dict

    clip = CLIP(
        embed_dim=TINY_TEXT.projection_dim,
        vision_cfg=CLIPVisionCfg(layers=1, width=64, patch_size=16, image_size=32, head_width=64),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=TINY_TEXT.width,
                             heads=TINY_TEXT.heads, layers=TINY_TEXT.layers,
                             mlp_ratio=TINY_TEXT.mlp_width / TINY_TEXT.width),
    )
    text = {k[len(PREFIX):]: v for k, v in tiny_state_dict(seed).items() if k.startswith(PREFIX)}
    visual = {k: v for k, v in clip.state_dict().items() if k.startswith("visual.")}
    clip.load_state_dict({**text, **visual}, strict=True)  # the released text keys are exactly open_clip's
    return clip.eval()


def _penultimate(clip, ids: torch.Tensor) -> torch.Tensor:
    """MVDream FrozenOpenCLIPEmbedder.encode_with_transformer: all blocks but the last, then ln_final."""
    x = clip.token_embedding(ids) + clip.positional_embedding
    for block in clip.transformer.resblocks[:-1]:
        x = block(x, attn_mask=clip.attn_mask)
    return clip.ln_final(x)


def test_text_tower_equals_open_clip_penultimate_layer():
    import open_clip

    clip = _open_clip_reference()
    model = shared_tiny_model()
    prompts = ["a photo of a dog wearing a hat, 3d asset", "", "wow!! a red car & a tree " * 4]
    ids = open_clip.tokenize(prompts)
    with torch.no_grad():
        reference = _penultimate(clip, ids)
        ours = model.encode_text(prompts)
        from_ids = model.encode_text_ids(ids)
    assert ours.shape == (3, 77, 128)
    assert (ours - reference).abs().max().item() <= 1e-5
    assert torch.equal(ours, from_ids)


def test_text_tower_runs_one_block_fewer_than_the_file_holds():
    model = shared_tiny_model()
    assert model.text_encoder.config.num_hidden_layers == 2  # 3 OpenCLIP blocks in the tiny file
    clip = _open_clip_reference()
    ids = torch.tensor([[49406, 320, 1929, 49407] + [0] * 73])
    with torch.no_grad():
        x = clip.token_embedding(ids) + clip.positional_embedding
        for block in clip.transformer.resblocks:
            x = block(x, attn_mask=clip.attn_mask)
        last_layer = clip.ln_final(x)
        ours = model.encode_text_ids(ids)
    assert (ours - last_layer).abs().max().item() > 1e-2


def test_added_placeholder_token_stays_whole_and_uses_its_own_row():
    model = fresh_tiny_model()
    g = torch.Generator().manual_seed(2)
    init = torch.randn(2, model.text_dim, generator=g)
    ids = model.add_tokens(["<hat>", "<dog>"], init)
    assert ids == [49408, 49409]
    assert model.token_embedding.num_embeddings == 49410
    assert torch.equal(model.token_embedding.weight[49408:], init)
    tokens = model.tokenizer.encode(["a <hat> on a <dog>"])
    assert tokens[0, :7].tolist() == [49406, 320, 49408, 525, 320, 49409, 49407]
    # the text tower sees the row itself: an independent embedding lookup + open_clip blocks agrees
    clip = _open_clip_reference()
    with torch.no_grad():
        clip.token_embedding = torch.nn.Embedding.from_pretrained(model.token_embedding.weight.clone())
        reference = _penultimate(clip, tokens)
        ours = model.encode_text(["a <hat> on a <dog>"])
    assert (ours - reference).abs().max().item() <= 1e-5


def test_add_tokens_rejects_bad_tokens():
    from dreamedit3d_core.errors import ShapeError, TokenError

    model = fresh_tiny_model()
    with pytest.raises(ShapeError, match=r"init_embeddings must be \[1, 128\]"):
        model.add_tokens(["<hat>"], torch.zeros(1, 7))
    model.add_tokens(["<hat>"], torch.zeros(1, 128))
    with pytest.raises(TokenError, match="already exists"):
        model.add_tokens(["<hat>"], torch.zeros(1, 128))
    with pytest.raises(TokenError, match="lower case"):
        model.add_tokens(["<Hat2>"], torch.zeros(1, 128))
    with pytest.raises(TokenError, match="without spaces"):
        model.add_tokens(["<a hat>"], torch.zeros(1, 128))
    with pytest.raises(TokenError, match="given twice"):
        model.add_tokens(["<x>", "<x>"], torch.zeros(2, 128))
    with pytest.raises(TokenError, match="outside the vocabulary"):
        model.encode_text_ids(torch.full((1, 77), 49999))
