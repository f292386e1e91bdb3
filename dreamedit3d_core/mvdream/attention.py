"""Attention processors for MVDream on a stock diffusers ``UNet2DConditionModel``.

MVDream (bytedance/MVDream ``mvdream/ldm/modules/attention.py``, ``BasicTransformerBlock3D``) changes one thing in
the SD transformer block: self-attention (``attn1``) runs jointly over the ``F`` views of one object, by regrouping
the view-contiguous batch ``(b f) l c -> b (f l) c`` around it. Cross-attention (``attn2``), the feed-forward block
and everything outside the transformer stay per view. Here that is a diffusers attention processor on ``attn1``
(:class:`MultiViewAttnProcessor`); ``attn2`` gets :class:`PerViewCrossAttnProcessor`, ordinary SDPA attention that
also accepts the ``num_views`` keyword, so both can be driven by ``cross_attention_kwargs={"num_views": V}``.

:func:`record_cross_attention` swaps the chosen ``attn2`` processors for recording ones that compute the softmax
probabilities explicitly and keep them (with their autograd graph) for the attention-alignment loss.
"""

from __future__ import annotations

import contextlib
import fnmatch
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError

#: Cross-attention layers at 16×16 when the UNet sees 256 px views (latent 32×32): the 640-channel level,
#: Break-a-Scene's "res 16" (``../shared/design/mvdream.md`` §6).
DEFAULT_RECORD_LAYERS = (
    "down_blocks.1.attentions.*.transformer_blocks.0.attn2",
    "up_blocks.2.attentions.*.transformer_blocks.0.attn2",
)


def _project_heads(attn, hidden_states: torch.Tensor, context: torch.Tensor):
    """q, k, v as [N, heads, L, d] for a diffusers ``Attention`` module (no masks, no group norm in SD blocks)."""
    if attn.group_norm is not None or attn.spatial_norm is not None:
        raise ConfigError("MVDream attention processors only support the SD transformer blocks (no group/spatial norm)")
    query = attn.to_q(hidden_states)
    if context is not hidden_states and attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    key = attn.to_k(context)
    value = attn.to_v(context)
    n = hidden_states.shape[0]
    head_dim = key.shape[-1] // attn.heads
    query = query.view(n, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(n, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(n, -1, attn.heads, head_dim).transpose(1, 2)
    return query, key, value


def _merge_heads(attn, out: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    n, heads, length, head_dim = out.shape
    out = out.transpose(1, 2).reshape(n, length, heads * head_dim).to(dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    return out / attn.rescale_output_factor


def _check_views(batch: int, num_views: int) -> None:
    if num_views < 1 or batch % num_views != 0:
        raise ShapeError(
            f"the UNet batch ({batch}) must be a whole number of objects of num_views={num_views} views "
            "(view-contiguous, index = b*V + v)"
        )


class MultiViewAttnProcessor:
    """Joint self-attention over the views of one object (MVDream's ``attn1``).

    Input ``hidden_states`` float [B·V, L, C], view-contiguous (index = b·V + v). The V views of one object are
    concatenated along the token axis, ``[B, V·L, C]``, attended with ``F.scaled_dot_product_attention``, and split
    back. With ``num_views=1`` this is plain SD self-attention ("2D mode").

    Args:
        num_views: views per object; the call's ``num_views`` keyword (``cross_attention_kwargs``) overrides it.
    """

    def __init__(self, num_views: int = 4):
        if not hasattr(F, "scaled_dot_product_attention"):
            raise ImportError("MultiViewAttnProcessor needs torch>=2.0 (F.scaled_dot_product_attention)")
        if num_views < 1:
            raise ConfigError(f"num_views must be at least 1, got {num_views}")
        self.num_views = int(num_views)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 num_views: Optional[int] = None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ConfigError("MultiViewAttnProcessor is for self-attention (attn1) without a mask")
        views = self.num_views if num_views is None else int(num_views)
        batch, length, channels = hidden_states.shape
        _check_views(batch, views)
        joint = hidden_states.reshape(batch // views, views * length, channels)  # (b f) l c -> b (f l) c
        query, key, value = _project_heads(attn, joint, joint)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        out = _merge_heads(attn, out, query.dtype)
        return out.reshape(batch, length, -1)  # b (f l) c -> (b f) l c


class PerViewCrossAttnProcessor:
    """Ordinary cross-attention (``attn2``), one view at a time: each row attends only to its own context row.

    Accepts (and ignores) ``num_views`` so one ``cross_attention_kwargs`` dict serves attn1 and attn2.
    """

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 num_views: Optional[int] = None) -> torch.Tensor:
        query, key, value = self._heads(attn, hidden_states, encoder_hidden_states, attention_mask)
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        return _merge_heads(attn, out, query.dtype)

    def _heads(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor],
               attention_mask: Optional[torch.Tensor]) -> tuple:
        """(query, key, value) split into heads; the context is the text (or the hidden states themselves)."""
        if attention_mask is not None:
            raise ConfigError(f"{type(self).__name__} does not take an attention mask")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return _project_heads(attn, hidden_states, context)


@dataclass
class CrossAttentionStore:
    """Cross-attention probabilities recorded during forward passes.

    Attributes:
        maps: ``{layer_name: probs}`` with probs float [(B·V)·heads, HW, T] (T = 77 text tokens), diffusers'
            batch-major head layout ``(b v h)``; still attached to the autograd graph. A later forward pass
            replaces the entry of each layer it runs.
        heads: ``{layer_name: number of heads}``, to reshape ``maps`` to [B·V, heads, HW, T].
    """

    maps: Dict[str, torch.Tensor] = field(default_factory=dict)
    heads: Dict[str, int] = field(default_factory=dict)

    def clear(self) -> None:
        self.maps.clear()

    def per_view(self, layer_name: str) -> torch.Tensor:
        """``maps[layer_name]`` reshaped to float [B·V, heads, HW, T]."""
        probs = self.maps[layer_name]
        heads = self.heads[layer_name]
        return probs.reshape(-1, heads, *probs.shape[1:])


class RecordingCrossAttnProcessor(PerViewCrossAttnProcessor):
    """Cross-attention that computes ``softmax(q·kᵀ·scale)`` explicitly and stores it in a :class:`CrossAttentionStore`.

    The output is ``probs @ v``, mathematically the same as SDPA, so recording changes the result only by
    rounding; the probabilities keep their gradient so a loss on them trains the text tokens (and the UNet).
    """

    def __init__(self, store: CrossAttentionStore, layer_name: str):
        self.store = store
        self.layer_name = layer_name

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 num_views: Optional[int] = None) -> torch.Tensor:
        query, key, value = self._heads(attn, hidden_states, encoder_hidden_states, attention_mask)
        # Under torch.autocast (mixed-precision training) matmul is re-cast to fp16/bf16 whatever its inputs are, so
        # `.float()` alone would not keep the scores in fp32: fp16 q·kᵀ can overflow before the scale, and the maps the
        # attention loss uses would be rounded. Autocast is switched off for the scores and the softmax only.
        with torch.autocast(device_type=query.device.type, enabled=False):
            scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * attn.scale
            probs = scores.softmax(dim=-1)
        n, heads, length, tokens = probs.shape
        self.store.maps[self.layer_name] = probs.reshape(n * heads, length, tokens)
        self.store.heads[self.layer_name] = heads
        out = torch.matmul(probs.to(value.dtype), value)
        return _merge_heads(attn, out, query.dtype)


def set_multiview_attention(unet, num_views: int = 4) -> None:
    """Install MVDream attention on every transformer block of ``unet``: joint ``attn1``, per-view ``attn2``."""
    processors = {}
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            processors[name] = MultiViewAttnProcessor(num_views)
        elif name.endswith("attn2.processor"):
            processors[name] = PerViewCrossAttnProcessor()
        else:
            raise ConfigError(f"unexpected attention layer {name} in the UNet; expected only attn1/attn2")
    unet.set_attn_processor(processors)


def cross_attention_layers(unet) -> List[str]:
    """Names of the UNet's cross-attention layers (``...transformer_blocks.0.attn2``), in module order."""
    return [n[: -len(".processor")] for n in unet.attn_processors if n.endswith("attn2.processor")]


def _select_layers(unet, layer_names: Optional[Sequence[str]]) -> List[str]:
    available = cross_attention_layers(unet)
    patterns = list(DEFAULT_RECORD_LAYERS if layer_names is None else layer_names)
    chosen: List[str] = []
    for pattern in patterns:
        hits = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ConfigError(
                f"no cross-attention layer matches {pattern!r}; layers are e.g. {available[:3]} "
                f"({len(available)} in all, see cross_attention_layers(unet))"
            )
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


@contextlib.contextmanager
def record_cross_attention(unet, layer_names: Optional[Sequence[str]] = None,
                           store: Optional[CrossAttentionStore] = None) -> Iterator[CrossAttentionStore]:
    """Record the ``attn2`` probabilities of the chosen layers during forward passes inside the block.

    Only the chosen layers compute explicit probabilities; the others keep their processors. On exit the
    previous processors come back, even after an exception.

    Args:
        unet: the diffusers UNet (``MVDreamModel.unet``).
        layer_names: cross-attention layer names or ``fnmatch`` patterns (``"up_blocks.2.attentions.*..."``);
            None records :data:`DEFAULT_RECORD_LAYERS` (16×16 at 256 px).
        store: reuse this store instead of a new one.

    Yields:
        :class:`CrossAttentionStore` whose ``maps[layer]`` is float [(B·V)·heads, HW, 77], differentiable.
    """
    chosen = _select_layers(unet, layer_names)
    store = CrossAttentionStore() if store is None else store
    modules = dict(unet.named_modules())
    previous = {name: modules[name].processor for name in chosen}
    try:
        for name in chosen:
            modules[name].set_processor(RecordingCrossAttnProcessor(store, name))
        yield store
    finally:
        for name, processor in previous.items():
            modules[name].set_processor(processor)
