"""The one helper that takes tensors, dataclasses and models out of torch.inference_mode for training."""

from __future__ import annotations

import torch

from dreamedit3d_core.personalize.autograd import grad_enabled, usable_by_autograd
from dreamedit3d_core.types import ComponentMasks


def any_inference_tensor(obj) -> bool:
    if isinstance(obj, torch.Tensor):
        return obj.is_inference()
    if isinstance(obj, torch.nn.Module):
        return any(t.is_inference() for t in list(obj.parameters()) + list(obj.buffers()))
    return any_inference_tensor(obj.masks)  # ComponentMasks


def test_tensors_dataclasses_and_modules_made_in_inference_mode_can_train():
    with torch.inference_mode():
        t = torch.ones(2, 3)
        masks = ComponentMasks(masks=torch.ones(1, 4, 6, 10, dtype=torch.bool), names=("hat",))
        net = torch.nn.Linear(3, 2)
    assert any_inference_tensor(t) and any_inference_tensor(masks) and any_inference_tensor(net)
    with torch.inference_mode():  # as ComfyUI runs a node
        with grad_enabled():
            assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
            x = usable_by_autograd(t)
            m = usable_by_autograd(masks)
            same_net = usable_by_autograd(net)
            assert same_net is net  # fixed in place, not copied
            assert not any_inference_tensor(x) and not any_inference_tensor(m) and not any_inference_tensor(net)
            assert torch.equal(x, t) and torch.equal(m.masks, masks.masks) and m.names == ("hat",)
            net.weight.requires_grad_(True)
            (net(x * m.masks.float().mean()).sum()).backward()
            assert net.weight.grad is not None


def test_objects_without_inference_tensors_come_back_unchanged():
    t = torch.ones(3)
    masks = ComponentMasks(masks=torch.ones(1, 4, 6, 10, dtype=torch.bool), names=("hat",))
    assert usable_by_autograd(t) is t and usable_by_autograd(masks) is masks and usable_by_autograd("text") == "text"
