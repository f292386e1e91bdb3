"""Training from inside ``torch.inference_mode``: the one place that leaves it.

ComfyUI runs every node under ``torch.inference_mode()``. Tensors made there ("inference tensors": the loaded
model's weights, a render, masks) can never take part in autograd, not even as frozen inputs, and the mode itself
turns autograd off. Training therefore needs two things, both here:

* :func:`grad_enabled` — a context that leaves inference mode and turns autograd on;
* :func:`usable_by_autograd` — the object with normal tensors: a tensor is cloned, a frozen dataclass copied with
  its tensors cloned, a model (``nn.Module``, or an object with ``unet``/``vae``/``text_encoder`` modules) has its
  parameters and buffers re-created in place. Objects without inference tensors come back unchanged (no copy).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Iterator, TypeVar

import torch

T = TypeVar("T")

#: The module attributes of an MVDreamModel-like object.
MODEL_PARTS = ("unet", "vae", "text_encoder")


@contextlib.contextmanager
def grad_enabled() -> Iterator[None]:
    """Leave inference mode and enable autograd for the duration."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def usable_by_autograd(obj: T) -> T:
    """``obj`` with every inference tensor replaced by a normal one (see the module docstring).

    Tensors and frozen dataclasses are copied only when they hold inference tensors; modules are fixed in place
    (copying a multi-GB model to train it would double its memory) and returned.
    """
    if isinstance(obj, torch.Tensor):
        if not obj.is_inference():
            return obj
        with torch.inference_mode(False):
            return obj.clone()
    if isinstance(obj, torch.nn.Module):
        _renew_module(obj)
        return obj
    if any(isinstance(getattr(obj, part, None), torch.nn.Module) for part in MODEL_PARTS):
        for part in MODEL_PARTS:
            module = getattr(obj, part, None)
            if module is not None:
                _renew_module(module)
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, torch.Tensor) and value.is_inference():
                changes[f.name] = usable_by_autograd(value)
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                renewed = usable_by_autograd(value)
                if renewed is not value:
                    changes[f.name] = renewed
        return dataclasses.replace(obj, **changes) if changes else obj
    return obj


def _renew_module(root: torch.nn.Module) -> None:
    with torch.inference_mode(False), torch.no_grad():
        for module in root.modules():
            for name, p in list(module._parameters.items()):
                if p is not None and p.is_inference():
                    module._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=p.requires_grad)
            for name, b in list(module._buffers.items()):
                if b is not None and b.is_inference():
                    module._buffers[name] = b.clone()

