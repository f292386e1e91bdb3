"""The offline tokenizer: ids equal open_clip.tokenize, zero padding, whole placeholder tokens."""

from __future__ import annotations

import pytest
import torch

from dreamedit3d_core.mvdream.tokenizer import EOT_ID, SOT_ID, MVTokenizer, default_bpe_path


@pytest.fixture(scope="module")
def tokenizer():
    return MVTokenizer()


PROMPTS = [
    "a photo of a dog wearing a hat, 3d asset",
    "",
    "   ",
    "wow! !! what?!",
    "Café   Über-cool   ROBOT\n\tnumbers 3.14159 and 1,000,000",
    "don't it's we're they've I'm you'll he'd",
    "tom &amp; jerry &lt;3 &#39;quoted&#39;",
    "naïve façade 日本語のテキスト 😀🐶",
    "a " * 100,
    "supercalifragilisticexpialidocious " * 30,
]


def test_ids_equal_open_clip_tokenize(tokenizer):
    import open_clip

    ours = tokenizer.encode(PROMPTS)
    reference = open_clip.tokenize(PROMPTS)
    assert ours.dtype == torch.long and ours.shape == (len(PROMPTS), 77)
    for i, prompt in enumerate(PROMPTS):
        assert ours[i].tolist() == reference[i].tolist(), prompt


def test_reference_ids_from_the_design_notes(tokenizer):
    ids = tokenizer.encode(["a photo of a dog wearing a hat, 3d asset"])[0].tolist()
    assert ids[:8] == [49406, 320, 1125, 539, 320, 1929, 3309, 320]
    end = ids.index(EOT_ID)
    assert ids[0] == SOT_ID and all(i == 0 for i in ids[end + 1:])
    assert tokenizer.vocab_size == 49408


def test_empty_prompt_is_sot_eot_then_zeros(tokenizer):
    assert tokenizer.encode([""])[0].tolist() == [49406, 49407] + [0] * 75


def test_long_prompt_is_truncated_with_eot_last(tokenizer):
    ids = tokenizer.encode(["a " * 100])[0]
    assert ids[-1].item() == EOT_ID and ids[0].item() == SOT_ID and (ids[1:-1] == 320).all()
    assert tokenizer.truncated(["a " * 100, "a dog"]) == [True, False]


def test_exclamation_mark_is_ordinary_bpe_not_padding(tokenizer):
    import open_clip

    wow = tokenizer.token_ids("wow!")
    assert wow == open_clip.tokenize(["wow!"])[0, 1:3].tolist() and wow[-1] == 256 and 0 not in wow
    assert tokenizer.token_ids("!!") == [748]


def test_placeholder_tokens_stay_whole():
    import open_clip

    tok = MVTokenizer()
    assert open_clip.tokenize(["<asset0>"])[0, 1:5].tolist() == [283, 13039, 271, 285]  # split by plain BPE
    assert tok.add_tokens(["<asset0>", "<hat>"]) == [49408, 49409]
    assert tok.token_ids("a <asset0> with a <hat>!") == [320, 49408, 593, 320, 49409, 256]
    assert tok.vocab_size == 49410
    assert tok.decode(tok.encode(["a <hat>"])[0]) == "a <hat>"
    # other text is unchanged by adding tokens
    assert tok.encode(PROMPTS).tolist() == open_clip.tokenize(PROMPTS).tolist()


def test_bpe_file_is_the_one_open_clip_ships():
    path = default_bpe_path()
    assert path.name == "bpe_simple_vocab_16e6.txt.gz" and path.stat().st_size == 1356917


def test_bad_inputs_raise_clear_errors(tokenizer, tmp_path):
    from dreamedit3d_core.errors import ConfigError, TokenError

    with pytest.raises(ConfigError, match="prompts must be strings"):
        tokenizer.encode(["ok", 3])
    with pytest.raises(TokenError, match="must be one non-empty word"):
        MVTokenizer().add_tokens([""])
    bad = tmp_path / "vocab.txt.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ConfigError, match="cannot read the BPE vocabulary"):
        MVTokenizer(bpe_path=bad)
