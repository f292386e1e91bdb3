"""Learned placeholder tokens: naming rules, files users keep, and putting them into a model.

Two file forms (``../shared/design/mvdream.md`` §6, ``comfyui.md`` §6):

* ours (:func:`save_tokens`): one safetensors file, one key per token string (``"<hat>"``) holding float32
  ``[n_vectors, D]``, with metadata ``format = dreamedit3d.tokens``, the token order, the component names and the
  base model's hash. A file with a single token is also what diffusers' ``load_textual_inversion`` reads.
* ComfyUI's embedding form for SD2 (:func:`save_comfy_embeddings`): one file per token in ComfyUI's ``embeddings``
  folder, with the single key ``"clip_h"`` → float32 ``[n_vectors, 1024]``. ``comfy/sd1_clip.py load_embed`` reads
  ``embed["clip_h"]`` for the SD2 text encoder, so a core ``CLIPTextEncode`` prompt ``embedding:<file stem>`` uses it.

Token strings look like ``<word>`` in lower case (the tokenizers lower-case prompts before matching them).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from .errors import TokenError
from .storage import read_safetensors, save_safetensors
from .types import TokenSet

FORMAT = "dreamedit3d.tokens"
#: what a token file is, for the messages of a file that is not one
TOKEN_FILE = "a token file (DreamEdit3D tokens, a ComfyUI embedding or a diffusers learned_embeds.safetensors)"
FORMAT_VERSION = "1"
#: The key ComfyUI's SD2 (OpenCLIP ViT-H) text encoder reads from an embedding file.
COMFY_SD2_KEY = "clip_h"
TOKEN_PATTERN = re.compile(r"^<[a-z0-9][a-z0-9_\-]*>$")


def token_for_component(name: str) -> str:
    """The default token of a component: ``"Hat Brim"`` → ``"<hat_brim>"``."""
    word = re.sub(r"[^a-z0-9_\-]+", "_", str(name).strip().lower()).strip("_-")
    if not word:
        raise TokenError(f"cannot make a token from component name {name!r}: give the component a name with letters or digits")
    return f"<{word}>"


def validate_token_names(tokens: Sequence[str]) -> tuple:
    """Check token strings: at least one, each like ``<word>`` (lower case, digits, ``_``, ``-``), all different.

    Returns:
        the tokens as a tuple.

    Raises:
        TokenError: naming the offending token and the rule.
    """
    tokens = tuple(tokens)
    if not tokens:
        raise TokenError("no tokens given: name at least one component to learn a token for")
    for tok in tokens:
        if not isinstance(tok, str) or not TOKEN_PATTERN.match(tok):
            raise TokenError(
                f"token {tok!r} is malformed: tokens must look like <word> in lower case letters, digits, '_' or '-' (e.g. <hat>)"
            )
    seen = set()
    for tok in tokens:
        if tok in seen:
            raise TokenError(f"token {tok} is given twice: every component needs its own token")
        seen.add(tok)
    return tokens


def vector_names(token: str, num_vectors: int) -> list[str]:
    """Strings a multi-vector token occupies in the tokenizer: ``<hat>``, ``<hat>_1``, ... (diffusers' convention)."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def _metadata(tokens: TokenSet, extra: Optional[dict] = None) -> dict:
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tokens": json.dumps(list(tokens.tokens)),
        "components": json.dumps(list(tokens.components)),
        "base_model_hash": tokens.base_model_hash,
        "num_vectors": str(int(tokens.embeddings.shape[1])),
        "dim": str(int(tokens.embeddings.shape[2])),
    }
    meta.update({str(k): str(v) for k, v in (extra or {}).items()})
    return meta


def save_tokens(tokens: TokenSet, path: str | os.PathLike, overwrite: bool = False, metadata: Optional[dict] = None) -> Path:
    """Write ``tokens`` in our form (one key per token string), atomically.

    Args:
        tokens: the learned tokens.
        path: destination ``.safetensors`` file.
        overwrite: replace an existing file (otherwise an existing file raises and is left untouched).
        metadata: extra string metadata (e.g. training settings).

    Returns:
        the path written.
    """
    validate_token_names(tokens.tokens)
    path = Path(path)
    if path.suffix != ".safetensors":
        raise TokenError(f"token files are safetensors: give a path ending in .safetensors, got {path.name}")
    tensors = {tok: tokens.embeddings[i].detach().to(torch.float32) for i, tok in enumerate(tokens.tokens)}
    return save_safetensors(path, tensors, _metadata(tokens, metadata), overwrite=overwrite)


def comfy_embedding_name(token: str, prefix: str = "") -> str:
    """The file stem (and ``embedding:<name>`` reference) of a token in ComfyUI's embeddings folder."""
    return f"{prefix}{token.strip('<>')}"


def save_comfy_embeddings(tokens: TokenSet, directory: str | os.PathLike, prefix: str = "",
                          overwrite: bool = False) -> list[Path]:
    """Write each token as a ComfyUI SD2 embedding ``<directory>/<prefix><word>.safetensors`` = {"clip_h": [n, D]}.

    A prompt ``embedding:<prefix><word>`` in core ``CLIPTextEncode`` then uses the vectors. Nothing is written when any
    target exists and ``overwrite`` is False (all-or-nothing check first).

    Returns:
        the paths written, in token order.
    """
    validate_token_names(tokens.tokens)
    directory = Path(directory)
    paths = [directory / f"{comfy_embedding_name(tok, prefix)}.safetensors" for tok in tokens.tokens]
    if not overwrite:
        taken = [p.name for p in paths if p.exists()]
        if taken:
            raise TokenError(f"embedding files already exist in {directory}: {taken}; choose another prefix or allow overwriting")
    written = []
    for i, (tok, p) in enumerate(zip(tokens.tokens, paths)):
        meta = {"format": "pt", "dreamedit3d.token": tok, "base_model_hash": tokens.base_model_hash,
                "component": tokens.components[i] if tokens.components else ""}
        written.append(save_safetensors(p, {COMFY_SD2_KEY: tokens.embeddings[i].detach().to(torch.float32)}, meta,
                                        overwrite=overwrite))
    return written


def load_tokens(path: str | os.PathLike) -> TokenSet:
    """Read tokens written by :func:`save_tokens`, a ComfyUI ``clip_h`` embedding, or a diffusers single-token file.

    A ComfyUI embedding ``hat.safetensors`` becomes the token ``<hat>`` (or the token stored in its metadata).

    Raises:
        TokenError: the file is missing, unreadable, or holds no token vectors.
    """
    path = Path(path)
    tensors, meta = read_safetensors(path, TOKEN_FILE, error=TokenError)
    if not tensors:
        raise TokenError(f"{path.name} holds no tensors; it is not a token file")
    for k, v in tensors.items():
        if v.ndim not in (1, 2) or not v.is_floating_point():
            raise TokenError(f"{path.name}: entry {k!r} has shape {list(v.shape)}; token vectors must be [n_vectors, dim]")
    as2d = {k: (v[None] if v.ndim == 1 else v).to(torch.float32) for k, v in tensors.items()}
    if meta.get("format") == FORMAT:
        order = json.loads(meta.get("tokens", "[]")) or sorted(as2d)
        components = tuple(json.loads(meta.get("components", "[]")))
        missing = [t for t in order if t not in as2d]
        if missing:
            raise TokenError(f"{path.name} lists tokens {missing} it does not hold; the file is damaged, re-save it")
    elif set(as2d) == {COMFY_SD2_KEY}:
        tok = meta.get("dreamedit3d.token") or f"<{path.stem.lower()}>"
        as2d = {tok: as2d[COMFY_SD2_KEY]}
        order, components = [tok], ((meta["component"],) if meta.get("component") else ())
    elif len(as2d) == 1:  # diffusers learned_embeds: {placeholder: [n, D]}
        order, components = list(as2d), ()
    else:
        raise TokenError(f"{path.name} has keys {sorted(as2d)[:5]}: not a DreamEdit3D, ComfyUI or diffusers token file")
    shapes = {tuple(as2d[t].shape) for t in order}
    if len(shapes) != 1:
        raise TokenError(f"{path.name}: tokens have different shapes {sorted(shapes)}; they cannot form one token set")
    from .storage import file_sha256

    return TokenSet(tokens=tuple(order), embeddings=torch.stack([as2d[t] for t in order]), components=components,
                    base_model_hash=meta.get("base_model_hash", ""), source_files=((path.name, file_sha256(path)),))


def existing_token_id(tokenizer, token: str) -> Optional[int]:
    """The id of ``token`` if it was added to ``tokenizer`` as a placeholder (by us, earlier), else None."""
    if token not in getattr(tokenizer, "added_tokens", ()):
        return None
    ids = list(tokenizer.token_ids(token))
    return int(ids[0]) if len(ids) == 1 else None


def check_tokens_are_new(model, tokens: Iterable[str]) -> None:
    """Raise TokenError when a token was already added to this model (a base-vocabulary clash is refused by
    the tokenizer's ``add_tokens`` itself)."""
    for tok in tokens:
        tid = existing_token_id(model.tokenizer, tok)
        if tid is not None:
            raise TokenError(
                f"token {tok} already exists in this model's vocabulary (id {tid}, learned earlier); pick another name "
                f"such as <{tok.strip('<>')}2>, or load the base model again"
            )


def apply_tokens(model, tokens: TokenSet) -> list[int]:
    """Put ``tokens`` into ``model``'s tokenizer and text embedding table; returns the first id of each token.

    Tokens already added to this model (e.g. by an earlier call) get their rows overwritten; a token that is a
    word of the base vocabulary is refused by the tokenizer. Multi-vector tokens occupy ``<t>``, ``<t>_1``, ... (see
    :func:`~dreamedit3d_core.prompts.expand_multi_vector`).

    Raises:
        TokenError: malformed tokens, or a width that does not match the text encoder.
    """
    validate_token_names(tokens.tokens)
    emb = model.token_embedding
    dim = int(emb.weight.shape[1])
    if int(tokens.embeddings.shape[2]) != dim:
        raise TokenError(
            f"token vectors are {int(tokens.embeddings.shape[2])} wide but this model's text encoder uses {dim}: "
            "the tokens were learned with another model family"
        )
    if tokens.base_model_hash and getattr(model, "model_hash", "") and tokens.base_model_hash != model.model_hash:
        warnings.warn(
            f"tokens {list(tokens.tokens)} were learned on model {tokens.base_model_hash[:12]}, this is {model.model_hash[:12]}; "
            "they may not reproduce the component", stacklevel=2,
        )
    n = int(tokens.embeddings.shape[1])
    first_ids = []
    new_names, new_vectors = [], []
    for i, tok in enumerate(tokens.tokens):
        for j, name in enumerate(vector_names(tok, n)):
            tid = existing_token_id(model.tokenizer, name)
            if tid is None:
                new_names.append(name)
                new_vectors.append(tokens.embeddings[i, j])
            else:
                with torch.no_grad():
                    emb.weight[tid] = tokens.embeddings[i, j].to(emb.weight)
    if new_names:
        model.add_tokens(new_names, torch.stack(new_vectors).to(model.token_embedding.weight))
    for tok in tokens.tokens:
        first_ids.append(existing_token_id(model.tokenizer, tok))
    return first_ids
