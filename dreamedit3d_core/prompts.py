"""Prompts with learned ``<tokens>`` → multi-view text + camera conditioning (``MVConditioning``).

Defaults follow the papers' own scripts (``../shared/design/mvdream.md`` §5):

* MVDream ``scripts/t2i.py`` appends ``", 3d asset"`` to every prompt.
* DreamEdit3D ``scripts/inference.py`` appends a quality suffix and uses a fixed negative prompt (CFG 7.5, 50 DDIM steps).
* Cameras: elevation 15°, our view order front, right, back, left = MVDream azimuths 90, 180, 270, 0.

The suffixes go after the user's text, MVDream's first: when the 77-token window overflows, what falls off is the
quality suffix, never the edit itself. Overflow is handled exactly as MVDream does (``open_clip.tokenize``: cut to 77
tokens, last one forced to end-of-text) and reported in ``MVConditioning.truncated`` plus one warning.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any, Optional, Sequence

import torch

from .cameras import MVCameras, camera_embedding_for_batch, get_camera
from .errors import ConfigError, TokenError
from .types import MVConditioning, TokenSet

log = logging.getLogger(__name__)

MVDREAM_SUFFIX = ", 3d asset"
DREAMEDIT3D_QUALITY_SUFFIX = (
    ", high quality, detailed, sharp focus, professional lighting, good contrast, studio lighting, well-lit, crisp details"
)
DEFAULT_NEGATIVE = "blurry, low quality, bad anatomy, distorted, ugly, noisy, artifacts, poorly rendered"
TEXT_WINDOW = 77
#: A placeholder is ``<name>`` with no spaces or angle brackets inside.
PLACEHOLDER = re.compile(r"<[^<>\s]+>")


class PromptTruncatedWarning(UserWarning):
    """A prompt was longer than the text tower's 77-token window and was cut as MVDream cuts it."""


def split_prompts(prompt: str) -> list[str]:
    """One prompt per non-empty line (B objects); an empty text is one empty prompt."""
    if not isinstance(prompt, str):
        raise ConfigError(f"prompt must be a string (one prompt per line), got {type(prompt).__name__}")
    lines = [line.strip() for line in prompt.splitlines()]
    lines = [line for line in lines if line]
    return lines or [""]


def find_placeholders(text: str) -> list[str]:
    """The ``<name>`` placeholders in ``text``, in order of appearance, without repeats."""
    return list(dict.fromkeys(PLACEHOLDER.findall(text)))


def with_suffixes(prompt: str, mvdream_suffix: bool = True, quality_suffix: bool = True) -> str:
    """``prompt`` + MVDream's ``", 3d asset"`` + DreamEdit3D's quality suffix (each only once)."""
    text = prompt.rstrip()
    for on, suffix in ((mvdream_suffix, MVDREAM_SUFFIX), (quality_suffix, DREAMEDIT3D_QUALITY_SUFFIX)):
        if on and not text.endswith(suffix):
            text = text + suffix if text else suffix.lstrip(", ")
    return text


def known_tokens(model: Any, tokens: Optional[TokenSet] = None) -> list[str]:
    """Placeholders the prompt may use: those of ``tokens`` and those already added to the model's tokenizer.

    The extra strings of multi-vector tokens (``<hat>_1``) are not placeholders of their own.
    """
    names = list(tokens.tokens) if tokens is not None else []
    tokenizer = getattr(model, "tokenizer", None)
    added = getattr(tokenizer, "added_tokens", None)
    if callable(added):
        added = added()
    for name in added or ():
        if PLACEHOLDER.fullmatch(str(name)) and name not in names:
            names.append(str(name))
    return names


def expand_multi_vector(prompt: str, source: Any) -> str:
    """Write each multi-vector placeholder as the strings its vectors occupy: ``<hat>`` -> ``<hat> <hat>_1 <hat>_2``.

    The one home of this rule (``dreamedit3d_core.tokens.vector_names`` convention). ``source`` says how many vectors
    each token has: a :class:`TokenSet` (its ``embeddings`` [K, n, D]), or a model whose tokenizer holds the added
    vector strings. Placeholders it does not know, and single-vector tokens, are left as written.
    """
    from .tokens import vector_names

    if isinstance(source, TokenSet):
        n = int(source.embeddings.shape[1])
        counts = {t.lower(): n for t in source.tokens}
    else:
        added = set(getattr(getattr(source, "tokenizer", None), "added_tokens", ()) or ())
        counts = None

    def expand(match: re.Match) -> str:
        token = match.group(0).lower()
        if counts is not None:
            if counts.get(token, 1) == 1:
                return match.group(0)
            return " ".join(vector_names(token, counts[token]))
        names = [token]
        while f"{token}_{len(names)}" in added:
            names.append(f"{token}_{len(names)}")
        return " ".join(names)

    return PLACEHOLDER.sub(expand, prompt)


def compose_prompt(
    model: Any,
    prompt: str,
    negative_prompt: str = DEFAULT_NEGATIVE,
    tokens: Optional[TokenSet] = None,
    add_mvdream_suffix: bool = True,
    add_quality_suffix: bool = True,
    num_views: int = 4,
    elevation_deg: float = 15.0,
    azimuth_start: float = 90.0,
    cameras: Optional[MVCameras] = None,
) -> MVConditioning:
    """Encode prompt(s) with learned tokens for every view of every object.

    Args:
        model: ``MVDreamModel`` (``tokenizer``, ``encode_text``, ``num_views``, ``device``).
        prompt: one prompt per line; each line is one object (B = number of non-empty lines), e.g.
            ``"a <dog> wearing a <hat> made of gold"``.
        negative_prompt: the unconditional text of CFG, shared by all objects ("" is MVDream's own default).
        tokens: learned placeholders to use; they are added to the model if it lacks them.
        add_mvdream_suffix: append ``", 3d asset"`` (MVDream's t2i does).
        add_quality_suffix: append DreamEdit3D's quality suffix.
        num_views, elevation_deg, azimuth_start: MVDream cameras ``get_camera(num_views, elevation, azimuth_start)``
            when ``cameras`` is None (ours: 4 views from azimuth 90 = front, right, back, left).
        cameras: use these orientations instead (e.g. the render's cameras).

    Returns:
        ``MVConditioning`` with cond/uncond [B·V, 77, D] (each object's text repeated for its V views,
        view-contiguous), cameras [B·V, 16] (the same for both CFG halves), the encoded prompts, and a truncation flag
        per prompt.

    Raises:
        TokenError: a ``<placeholder>`` is unknown (the message lists the known ones).
        ConfigError: the camera count differs from the number of views the model denoises jointly.
    """
    prompts = split_prompts(prompt)
    if not isinstance(negative_prompt, str):
        raise ConfigError(f"negative_prompt must be a string, got {type(negative_prompt).__name__}")
    _check_placeholders(prompts, negative_prompt, known_tokens(model, tokens))  # before touching the model
    if tokens is not None:
        from .tokens import apply_tokens

        apply_tokens(model, tokens)

    if cameras is not None:
        camera_views = cameras.embedding()
    else:
        camera_views = get_camera(num_views, elevation_deg, azimuth_start)
    views = int(camera_views.shape[0])
    model_views = int(getattr(model, "num_views", views))
    if views != model_views:
        raise ConfigError(f"{views} cameras given but the model denoises {model_views} views jointly; "
                          f"use num_views={model_views}")

    texts = [with_suffixes(p, add_mvdream_suffix, add_quality_suffix) for p in prompts]
    negative = negative_prompt.strip()
    encoded = [expand_multi_vector(t, model) for t in texts + [negative]]
    truncated = tuple(bool(t) for t in model.tokenizer.truncated(encoded))
    _report_truncation(model.tokenizer, texts + [negative], encoded, truncated)

    with torch.no_grad():
        cond = model.encode_text(encoded[:-1])  # [B, 77, D]
        uncond = model.encode_text(encoded[-1:])  # [1, 77, D]
    batch = len(texts)
    device = cond.device
    return MVConditioning(
        cond=cond.repeat_interleave(views, dim=0),  # index b·V + v
        uncond=uncond.expand(batch * views, -1, -1).clone(),
        cameras=camera_embedding_for_batch(camera_views.to(device=device, dtype=cond.dtype), batch),
        num_views=views,
        prompts=tuple(texts),
        negative_prompt=negative,
        truncated=truncated[:-1],
        provenance=conditioning_provenance(model, tokens),
    )


def conditioning_provenance(model: Any, tokens: Optional[TokenSet] = None) -> dict:
    """What the conditioning was made with: the base checkpoint's hash, the tokens used and their files' sha256."""
    record = {"base_model_hash": str(getattr(model, "model_hash", "") or "")}
    if tokens is not None:
        record["tokens"] = list(tokens.tokens)
        record["token_files"] = {name: sha for name, sha in getattr(tokens, "source_files", ())}
    return record


def _check_placeholders(prompts: Sequence[str], negative: str, known: Sequence[str]) -> None:
    used = find_placeholders("\n".join(list(prompts) + [negative]).lower())  # prompts are lower-cased when tokenised
    unknown = [t for t in used if t not in known]
    if unknown:
        have = ", ".join(known) if known else "none (learn tokens with MultiViewTextualInversion, or load a token file)"
        raise TokenError(f"unknown token(s) {', '.join(unknown)} in the prompt; known tokens: {have}")


def _report_truncation(tokenizer: Any, texts: Sequence[str], encoded: Sequence[str], truncated: Sequence[bool]) -> None:
    cut = [i for i, t in enumerate(truncated) if t]
    if not cut:
        return
    parts = []
    for i in cut:
        name = "negative prompt" if i == len(texts) - 1 else f"prompt {i + 1}"
        ids = list(tokenizer.token_ids(encoded[i]))
        dropped = tokenizer.decode(ids[TEXT_WINDOW - 2:]) if hasattr(tokenizer, "decode") else ""
        dropped = dropped if len(dropped) <= 60 else dropped[:57] + "..."
        parts.append(f"{name} ({len(ids) + 2} tokens; dropped: {dropped!r})")
    message = (f"{'; '.join(parts)}: longer than the text window of {TEXT_WINDOW} tokens, cut to {TEXT_WINDOW} "
               "(last token end-of-text) as MVDream does; shorten it or turn off the quality suffix to keep the rest")
    log.warning(message)
    warnings.warn(message, PromptTruncatedWarning, stacklevel=3)
