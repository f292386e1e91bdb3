"""compose_prompt on the tiny MVDream model (real tokenizer and text tower, released layout)."""

from __future__ import annotations

import warnings

import pytest
import torch

from dreamedit3d_core.cameras import MVCameras, get_camera
from dreamedit3d_core.errors import ConfigError, TokenError
from dreamedit3d_core.prompts import (
    DEFAULT_NEGATIVE,
    DREAMEDIT3D_QUALITY_SUFFIX,
    PromptTruncatedWarning,
    compose_prompt,
    split_prompts,
    with_suffixes,
)
from dreamedit3d_core.testing.tiny import load_tiny_mvdream
from dreamedit3d_core.types import TokenSet

EOT = 49407


@pytest.fixture(scope="module")
def model():
    return load_tiny_mvdream(0)


@pytest.fixture
def fresh_model():
    """A model of its own, for tests that add tokens to it."""
    return load_tiny_mvdream(0)


def token_set(model, names, vectors=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TokenSet(tokens=tuple(names), embeddings=torch.randn(len(names), vectors, model.text_dim, generator=g))


def test_default_prompt_gets_mvdream_and_quality_suffixes_and_the_default_negative(model):
    c = compose_prompt(model, "a dog")
    text = ("a dog, 3d asset, high quality, detailed, sharp focus, professional lighting, good contrast, "
            "studio lighting, well-lit, crisp details")
    assert c.prompts == (text,) and c.truncated == (False,)
    assert c.negative_prompt == "blurry, low quality, bad anatomy, distorted, ugly, noisy, artifacts, poorly rendered"
    ref = model.encode_text([text])[0]
    assert c.cond.shape == (4, 77, model.text_dim)
    for v in range(4):
        torch.testing.assert_close(c.cond[v], ref)
        torch.testing.assert_close(c.uncond[v], model.encode_text([DEFAULT_NEGATIVE])[0])
    # our front, right, back, left = MVDream azimuths 90, 180, 270, 0 at elevation 15
    torch.testing.assert_close(c.cameras, get_camera(4, 15.0, 90.0))


def test_each_line_is_one_object_and_views_are_contiguous(model):
    c = compose_prompt(model, "a red car\n\n  a blue boat  ", negative_prompt="", add_quality_suffix=False)
    assert c.batch_size == 2 and c.prompts == ("a red car, 3d asset", "a blue boat, 3d asset")
    ref = model.encode_text(list(c.prompts))
    torch.testing.assert_close(c.cond, ref.repeat_interleave(4, dim=0))  # index b·V + v
    torch.testing.assert_close(c.cameras, get_camera(4, 15.0, 90.0).repeat(2, 1))
    torch.testing.assert_close(c.uncond, model.encode_text([""]).expand(8, -1, -1))


def test_learned_tokens_enter_the_vocabulary_and_the_embedding_table(fresh_model):
    tokens = token_set(fresh_model, ["<dog>", "<hat>"])
    c = compose_prompt(fresh_model, "a <dog> wearing a <hat> made of gold", tokens=tokens, add_quality_suffix=False)
    ids = fresh_model.tokenizer.encode(list(c.prompts))[0].tolist()
    dog, hat = fresh_model.tokenizer.token_ids("<dog>")[0], fresh_model.tokenizer.token_ids("<hat>")[0]
    assert dog >= 49408 and hat >= 49408 and ids[1:4] == [320, dog, 3309]  # "a <dog> wearing"
    torch.testing.assert_close(fresh_model.token_embedding.weight[dog], tokens.embeddings[0, 0])
    other = compose_prompt(fresh_model, "a <dog> wearing a <hat> made of gold",
                           tokens=token_set(fresh_model, ["<dog>", "<hat>"], seed=1), add_quality_suffix=False)
    assert not torch.allclose(c.cond, other.cond)  # the learned vectors reach the text embedding
    # tokens stay known to the model for later prompts (one personalisation, many edits); case is ignored
    compose_prompt(fresh_model, "a <Dog> on a beach")


def test_multi_vector_tokens_use_all_their_vectors(fresh_model):
    tokens = token_set(fresh_model, ["<hat>"], vectors=3)
    c = compose_prompt(fresh_model, "a <hat>", tokens=tokens, add_mvdream_suffix=False, add_quality_suffix=False)
    ids = fresh_model.tokenizer.encode(["a <hat> <hat>_1 <hat>_2"])[0]
    torch.testing.assert_close(c.cond[0], fresh_model.encode_text_ids(ids[None])[0])
    assert len(set(ids[2:5].tolist())) == 3 and int(ids[5]) == EOT


def test_multi_vector_expansion_from_a_token_set_is_the_same_rule():
    from dreamedit3d_core.prompts import expand_multi_vector
    from dreamedit3d_core.types import TokenSet

    three = TokenSet(tokens=("<hat>", "<dog>"), embeddings=torch.zeros(2, 3, 4), components=("hat", "dog"))
    assert (expand_multi_vector("a <hat> on a <dog> by a <cat>", three)
            == "a <hat> <hat>_1 <hat>_2 on a <dog> <dog>_1 <dog>_2 by a <cat>")
    one = TokenSet(tokens=("<hat>",), embeddings=torch.zeros(1, 1, 4), components=("hat",))
    assert expand_multi_vector("a <hat>", one) == "a <hat>"


def test_unknown_token_is_an_error_listing_the_known_ones(fresh_model):
    tokens = token_set(fresh_model, ["<dog>", "<hat>"])
    with pytest.raises(TokenError, match=r"unknown token\(s\) <cat> in the prompt; known tokens: <dog>, <hat>"):
        compose_prompt(fresh_model, "a <cat> wearing a <hat>", tokens=tokens)
    assert fresh_model.tokenizer.added_tokens == []  # a refused prompt leaves the model untouched
    with pytest.raises(TokenError, match=r"unknown token\(s\) <dgo> in the prompt"):
        compose_prompt(fresh_model, "a dog", negative_prompt="<dgo>", tokens=tokens)


def test_unknown_token_without_any_learned_tokens_says_how_to_get_some(model):
    with pytest.raises(TokenError, match=r"unknown token\(s\) <hat>.*known tokens: none \(learn tokens"):
        compose_prompt(model, "a dog wearing a <hat>")


def test_long_prompt_is_cut_like_open_clip_and_reported(model):
    import open_clip

    long = "a small dog " * 40
    with pytest.warns(PromptTruncatedWarning,
                      match=r"prompt 2 \(126 tokens; dropped: 'a small dog a small dog.*longer than the text window of 77"):
        c = compose_prompt(model, "short cat\n" + long, add_quality_suffix=False)
    assert c.truncated == (False, True)
    ids = model.tokenizer.encode([c.prompts[1]])
    assert torch.equal(ids, open_clip.tokenize([c.prompts[1]])) and int(ids[0, -1]) == EOT
    torch.testing.assert_close(c.cond[4], model.encode_text_ids(ids)[0])


def test_short_prompts_do_not_warn(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = compose_prompt(model, "a dog wearing a hat made of gold")
    assert c.truncated == (False,)


def test_suffixes_are_options_and_never_doubled():
    assert with_suffixes("a dog", False, False) == "a dog"
    assert with_suffixes("a dog, 3d asset", True, False) == "a dog, 3d asset"
    assert with_suffixes("a dog", False, True) == "a dog" + DREAMEDIT3D_QUALITY_SUFFIX
    assert with_suffixes("", True, False) == "3d asset"
    assert split_prompts("  \n ") == [""]
    with pytest.raises(ConfigError, match="prompt must be a string"):
        split_prompts(["a", "b"])


def test_cameras_must_match_the_models_views_and_custom_cameras_are_used(model):
    with pytest.raises(ConfigError, match="2 cameras given but the model denoises 4 views jointly"):
        compose_prompt(model, "a dog", num_views=2)
    cams = MVCameras.mvdream_default(elevation_deg=30.0)
    c = compose_prompt(model, "a dog\na cat", cameras=cams)
    torch.testing.assert_close(c.cameras, cams.embedding().repeat(2, 1))
    torch.testing.assert_close(compose_prompt(model, "a dog", elevation_deg=0.0, azimuth_start=0.0).cameras,
                               get_camera(4, 0.0, 0.0))
