"""The OpenCLIP tokenizer MVDream uses, built offline from the vocabulary file open_clip ships.

MVDream tokenises with ``open_clip.tokenize`` (``FrozenOpenCLIPEmbedder``). We rebuild the same BPE as a
transformers ``CLIPTokenizer`` (so placeholder tokens such as ``<hat>`` can be added and stay whole) from
``open_clip/bpe_simple_vocab_16e6.txt.gz``, never from a hub (``../shared/design/mvdream.md`` §4):

* vocabulary order: the 256 ``bytes_to_unicode`` characters, the same with ``</w>``, the 48,894 merges joined,
  then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407): 49,408 entries, ``!`` is id 0;
* text is cleaned exactly as open_clip does (ftfy, HTML unescape twice, whitespace collapse, lower case);
* ``[SOT] tokens [EOT]`` truncated to 77 with the last id forced to EOT, then **zero**-padded. ``!`` is *not*
  registered as a pad token (SD2's hub tokenizer does that, and then every ``!`` in a prompt becomes id 0).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from ..errors import ConfigError, MissingDependencyError, TokenError

CONTEXT_LENGTH = 77
BASE_VOCAB_SIZE = 49408
SOT_ID = 49406
EOT_ID = 49407
PAD_ID = 0
#: number of BPE merges open_clip reads from its file (lines 1..48894)
NUM_MERGES = 49152 - 256 - 2


def default_bpe_path() -> Path:
    """open_clip's shipped ``bpe_simple_vocab_16e6.txt.gz`` (found without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("the MVDream tokenizer", "open_clip", "open-clip-torch")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise ConfigError(f"open_clip is installed but {path} is missing; reinstall open-clip-torch")
    return path


def _bytes_to_unicode() -> List[str]:
    """GPT-2/CLIP byte-to-printable-character table, in byte order of its construction."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


@functools.lru_cache(maxsize=4)
def _read_bpe(path: str):
    try:
        lines = gzip.open(path).read().decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the BPE vocabulary {path}: {exc}; reinstall open-clip-torch") from None
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ConfigError(f"{path} is not open_clip's BPE file (expected {NUM_MERGES} merge lines)")
    chars = _bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}, merges


def clean_text(text: str) -> str:
    """open_clip's cleaning: ftfy ``fix_text``, HTML unescape twice, collapse whitespace, lower case."""
    try:
        import ftfy
    except ImportError:  # pragma: no cover - ftfy is a requirement
        raise MissingDependencyError("prompt cleaning", "ftfy") from None
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).strip().lower()


class MVTokenizer:
    """Tokenizer whose ids equal ``open_clip.tokenize`` and that can learn new whole-word placeholder tokens.

    Args:
        bpe_path: open_clip's BPE file; default: the one open_clip ships.
        context_length: sequence length (77).
        pad_id: id written after EOT (0 for OpenCLIP/SD2, as ``open_clip.tokenize``).
    """

    def __init__(self, bpe_path: Optional[str | os.PathLike] = None, context_length: int = CONTEXT_LENGTH,
                 pad_id: int = PAD_ID):
        from transformers import CLIPTokenizer

        vocab, merges = _read_bpe(str(bpe_path or default_bpe_path()))
        # truncation is done by encode(); a huge model_max_length keeps transformers from warning about long prompts
        self._hf = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=1 << 30)
        self.context_length = int(context_length)
        self.pad_id = int(pad_id)
        self.sot_id = SOT_ID
        self.eot_id = EOT_ID
        self.added_tokens: List[str] = []

    @property
    def vocab_size(self) -> int:
        """Number of ids, base vocabulary plus added placeholder tokens."""
        return len(self._hf)

    def _ids(self, text: str) -> List[int]:
        return self._hf(clean_text(text), add_special_tokens=False)["input_ids"]

    def encode(self, prompts: Sequence[str] | str) -> torch.Tensor:
        """Token ids, int64 [B, 77]: SOT, tokens, EOT, then ``pad_id`` (equal to ``open_clip.tokenize``)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = torch.full((len(prompts), self.context_length), self.pad_id, dtype=torch.long)
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ConfigError(f"prompts must be strings, got {type(prompt).__name__} at index {i}")
            ids = [self.sot_id] + self._ids(prompt) + [self.eot_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_id
            rows[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return rows

    __call__ = encode

    def truncated(self, prompts: Sequence[str] | str) -> List[bool]:
        """Whether each prompt is longer than the 75 tokens that fit between SOT and EOT."""
        if isinstance(prompts, str):
            prompts = [prompts]
        return [len(self._ids(p)) + 2 > self.context_length for p in prompts]

    def token_ids(self, text: str) -> List[int]:
        """The ids of ``text`` without SOT/EOT/padding (a placeholder such as ``<hat>`` gives one id once added)."""
        return list(self._ids(text))

    def add_tokens(self, tokens: Sequence[str]) -> List[int]:
        """Add whole-word placeholder tokens; returns their new ids (49408, 49409, ...).

        Raises:
            TokenError: a token is empty, contains whitespace, is not lower case (prompts are lower-cased before
                tokenising, so it could never match), repeats, or already exists.
        """
        tokens = list(tokens)
        seen = set()
        for token in tokens:
            if not isinstance(token, str) or not token or token != token.strip() or any(c.isspace() for c in token):
                raise TokenError(f"placeholder token {token!r} must be one non-empty word without spaces, like '<hat>'")
            if clean_text(token) != token:
                raise TokenError(f"placeholder token {token!r} must be lower case and plain text (prompts are "
                                 f"lower-cased first); use {clean_text(token)!r}")
            if token in seen:
                raise TokenError(f"placeholder token {token!r} is given twice")
            seen.add(token)
            if token in self._hf.get_vocab():
                raise TokenError(f"placeholder token {token!r} already exists in the vocabulary; choose another name "
                                 "such as '<my_hat>'")
        first = len(self._hf)
        added = self._hf.add_tokens(tokens)
        if added != len(tokens):  # pragma: no cover - guarded by the checks above
            raise TokenError(f"could not add all of {tokens}")
        self.added_tokens.extend(tokens)
        ids = [self._hf.convert_tokens_to_ids(t) for t in tokens]
        if ids != list(range(first, first + len(tokens))):  # pragma: no cover
            raise TokenError(f"added tokens got unexpected ids {ids}")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, dropping SOT/EOT and the zero padding after EOT."""
        ids = [int(i) for i in ids]
        if self.eot_id in ids:
            ids = ids[: ids.index(self.eot_id)]
        return self._hf.decode([i for i in ids if i != self.sot_id]).strip()
