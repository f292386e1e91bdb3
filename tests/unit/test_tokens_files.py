"""Token naming rules and the two token file forms (ours and ComfyUI's SD2 embedding)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import skip_or_fail
from dreamedit3d_core.errors import ConfigError, TokenError
from dreamedit3d_core.tokens import (
    COMFY_SD2_KEY,
    load_tokens,
    save_comfy_embeddings,
    save_tokens,
    token_for_component,
    validate_token_names,
)
from dreamedit3d_core.types import TokenSet

REPO = Path(__file__).resolve().parents[2]
COMFY = REPO / ".host" / "comfyui"


def _tokens(dim=1024, n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TokenSet(tokens=("<hat>", "<dog>"), embeddings=torch.randn(2, n, dim, generator=g),
                    components=("hat", "dog"), base_model_hash="abc123")


def test_token_for_component_makes_lower_case_words():
    assert token_for_component("Hat Brim") == "<hat_brim>"
    assert token_for_component("dog") == "<dog>"
    with pytest.raises(TokenError, match="cannot make a token"):
        token_for_component("  !! ")


@pytest.mark.parametrize("bad", ["hat", "<Hat>", "<a b>", "<>", "<hat", "<<x>>", ""])
def test_malformed_token_names_are_rejected_with_the_rule(bad):
    with pytest.raises(TokenError, match="must look like <word>"):
        validate_token_names([bad])


def test_duplicate_and_empty_token_lists_are_rejected():
    with pytest.raises(TokenError, match="given twice"):
        validate_token_names(["<hat>", "<dog>", "<hat>"])
    with pytest.raises(TokenError, match="no tokens given"):
        validate_token_names([])


def test_save_then_load_gives_identical_vectors_order_and_metadata(tmp_path):
    tokens = _tokens(dim=24, n=2)
    path = save_tokens(tokens, tmp_path / "scene.safetensors")
    back = load_tokens(path)
    assert back.tokens == ("<hat>", "<dog>")
    assert back.components == ("hat", "dog")
    assert back.base_model_hash == "abc123"
    assert torch.equal(back.embeddings, tokens.embeddings)


def test_save_tokens_never_overwrites_an_existing_file(tmp_path):
    target = tmp_path / "mine.safetensors"
    target.write_bytes(b"user data")
    with pytest.raises(ConfigError, match="already exists"):
        save_tokens(_tokens(dim=8), target)
    assert target.read_bytes() == b"user data"
    assert [p.name for p in tmp_path.iterdir()] == ["mine.safetensors"]  # no temp file left behind


def test_comfy_embeddings_are_single_clip_h_tensors_one_file_per_token(tmp_path):
    tokens = _tokens()
    paths = save_comfy_embeddings(tokens, tmp_path, prefix="scene_")
    assert [p.name for p in paths] == ["scene_hat.safetensors", "scene_dog.safetensors"]
    from safetensors.torch import load_file

    data = load_file(str(paths[0]))
    assert list(data) == [COMFY_SD2_KEY]
    assert data[COMFY_SD2_KEY].dtype == torch.float32 and data[COMFY_SD2_KEY].shape == (1, 1024)
    assert torch.equal(data[COMFY_SD2_KEY], tokens.embeddings[0])
    back = load_tokens(paths[1])  # our loader reads them back too
    assert back.tokens == ("<dog>",) and torch.equal(back.embeddings[0], tokens.embeddings[1])
    with pytest.raises(TokenError, match="already exist"):
        save_comfy_embeddings(tokens, tmp_path, prefix="scene_")


def test_comfy_embedding_loads_through_comfyuis_own_load_embed(tmp_path):
    """Run comfy/sd1_clip.py load_embed (SD2 settings: size 1024, key clip_h) in a subprocess on our file."""
    if not (COMFY / "comfy" / "sd1_clip.py").is_file():
        skip_or_fail(f"no ComfyUI tree at {COMFY} (tools/setup_env.sh installs it)")
    tokens = _tokens()
    save_comfy_embeddings(tokens, tmp_path / "embeddings")
    script = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "import comfy.cli_args as a; a.args.cpu = True;"
        "from comfy.sd1_clip import load_embed;"
        "e = load_embed('hat', [sys.argv[2]], 1024, 'clip_h');"
        "print(json.dumps({'shape': list(e.shape), 'values': e.flatten()[:8].tolist(), 'sum': float(e.double().sum())}))"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", script, str(COMFY), str(tmp_path / "embeddings")],
                         capture_output=True, text=True, timeout=120, env=env, cwd=str(COMFY))
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["shape"] == [1, 1024]
    assert got["values"] == pytest.approx(tokens.embeddings[0, 0, :8].tolist(), abs=0)
    assert got["sum"] == pytest.approx(float(tokens.embeddings[0].double().sum()), abs=1e-9)


def test_load_tokens_reports_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(TokenError, match="does not exist"):
        load_tokens(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(TokenError, match="not a readable safetensors"):
        load_tokens(bad)
    from safetensors.torch import save_file

    foreign = tmp_path / "unet.safetensors"
    save_file({"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(2, 3)}, str(foreign))
    with pytest.raises(TokenError, match="not a DreamEdit3D, ComfyUI or diffusers token file"):
        load_tokens(foreign)


def test_expand_prompt_spells_out_multi_vector_tokens():
    # one home for the rule: prompts.expand_multi_vector (tokens.expand_prompt was its copy)
    from dreamedit3d_core.prompts import expand_multi_vector as expand_prompt

    tokens = _tokens(dim=4, n=3)
    assert expand_prompt("a <hat> on a <dog>", tokens) == "a <hat> <hat>_1 <hat>_2 on a <dog> <dog>_1 <dog>_2"
    assert expand_prompt("a <hat>", _tokens(dim=4, n=1)) == "a <hat>"
