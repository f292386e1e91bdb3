"""Private model objects for training nodes: copy only the modules a phase changes, share the rest.

A node graph keeps every node's output (ComfyUI caches them), so a training node must never change the model it was
given; copying the whole model for that (UNet 865 M + VAE 83 M + text tower 340 M parameters) leaves one more full
model on the GPU per training node. Each phase changes only some modules:

* phase 1 (textual inversion) adds rows to the text tower's token-embedding table and words to the tokenizer: the copy
  gets its own text tower and tokenizer and *shares* the UNet and VAE module objects (frozen during the phase; the
  phase only attaches temporary hooks and processors, removed when it ends);
* phase 2 (fine-tuning) changes the UNet (every weight, or a LoRA adapter added to its modules) and writes the tokens
  into the table: the copy gets its own UNet and text tower and shares the VAE. Weights that train are float32 masters
  (fp16 cannot hold 2e-6 steps; mixed precision autocasts them); the VAE and frozen modules keep the loaded dtype.

Modules are copied whole, never as a new module tree over shared parameter objects: a host that moves one module tree
to another device (ComfyUI offloading a model) moves shared parameters with it, which would split the other tree
across devices.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch

__all__ = ["copy_module", "copy_bytes", "model_for_token_training", "model_for_finetuning"]

def _plan(phase: str, mode: str = "full", train_text_encoder: bool = False) -> dict:
    """{module attribute: dtype of its copy (None keeps the loaded dtype)} for ``phase`` ("token" or "finetune").

    Full fine-tuning gets a float32 UNet (the master weights), LoRA a UNet in the loaded dtype (the adapter it receives
    is float32); the text tower is float32 only when it trains, else it keeps the loaded dtype (phase 2 writes the
    learned token rows into its table). Phase 1 copies the text tower only.
    """
    if phase == "token":
        return {"text_encoder": None}
    if phase == "finetune":
        return {"unet": torch.float32 if mode == "full" else None,
                "text_encoder": torch.float32 if train_text_encoder else None}
    raise ValueError(f"phase must be 'token' or 'finetune', got {phase!r}")


def copy_module(module: torch.nn.Module, dtype: Optional[torch.dtype] = None) -> torch.nn.Module:
    """A copy of ``module`` with its own parameters and buffers (floating ones cast to ``dtype`` when given).

    The copies are made directly in their final dtype, so an upcast never holds the module twice in the old dtype.
    They are normal tensors even when the originals are inference tensors (made under ``torch.inference_mode``).
    """
    memo: dict = {}
    with torch.inference_mode(False), torch.no_grad():
        for t in (*module.parameters(), *module.buffers()):
            if id(t) in memo:
                continue
            want = dtype if dtype is not None and t.is_floating_point() else t.dtype
            data = t.detach().to(dtype=want, copy=True)
            memo[id(t)] = torch.nn.Parameter(data, requires_grad=t.requires_grad) if isinstance(t, torch.nn.Parameter) else data
        return copy.deepcopy(module, memo)


def copy_bytes(model, phase: str, mode: str = "full", train_text_encoder: bool = False) -> int:
    """Bytes the copies of ``phase`` (see :func:`model_for_token_training`, :func:`model_for_finetuning`) allocate,
    on the devices the copied modules are on: what a host must make room for before copying."""
    total = 0
    for part, dtype in _plan(phase, mode, train_text_encoder).items():
        module = getattr(model, part)
        seen = set()
        for t in (*module.parameters(), *module.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                size = torch.empty((), dtype=dtype).element_size() if dtype is not None and t.is_floating_point() else t.element_size()
                total += t.numel() * size
    return total


def _with_copies(model, plan: dict):
    """A shallow copy of the MVDreamModel ``model`` with the ``plan``'s modules copied and its own tokenizer (the rest
    shared)."""
    out = copy.copy(model)
    for part, dtype in plan.items():
        setattr(out, part, copy_module(getattr(model, part), dtype))
    out.tokenizer = copy.deepcopy(model.tokenizer)
    return out


def model_for_token_training(model):
    """``model`` with its own text tower and tokenizer, sharing the UNet and VAE (phase 1 adds tokens to the copy)."""
    return _with_copies(model, _plan("token"))


def model_for_finetuning(model, mode: str = "full", train_text_encoder: bool = False):
    """``model`` with its own UNet and text tower (and tokenizer), sharing the VAE, for phase 2 in ``mode`` (dtypes:
    see :func:`_plan`)."""
    return _with_copies(model, _plan("finetune", mode, train_text_encoder))
