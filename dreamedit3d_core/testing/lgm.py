"""Tiny seeded LGM networks in the released key layout, for tests, benchmarks and CI only.

No LGM weights exist where this is tested, so the loader, the reconstructor and the node run on small random networks
saved exactly as the released files are (:func:`~dreamedit3d_core.lifting.lgm.save_lgm`).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

from ..lifting.lgm.checkpoint import fill_network
from ..lifting.lgm.network import LGMConfig, LGMNetwork, RotationNormalization

#: A tiny configuration with the released module tree (the same keys: widths change where the released ones do).
LGM_TINY = LGMConfig(down_channels=(32, 64, 96, 128, 160, 160), up_channels=(160, 160, 128, 96, 64), input_size=64)


def tiny_lgm_state_dict(seed: int = 0, config: LGMConfig = LGM_TINY) -> "OrderedDict[str, torch.Tensor]":
    """Seeded random weights in the released layout for ``config`` (tests, benchmarks and CI only; float32).

    Convolution / linear weights ~ N(0, 1 / fan_in), biases ~ N(0, 0.05^2), norm scales ~ 1 + N(0, 0.1^2) and shifts
    ~ N(0, 0.1^2), drawn in key order from one generator, so the same seed gives the same tensors on any machine.
    """
    with torch.device("meta"):
        shapes = [(k, tuple(v.shape)) for k, v in LGMNetwork(config).state_dict().items()]
    gen = torch.Generator().manual_seed(int(seed))
    out = OrderedDict()
    for key, shape in shapes:
        x = torch.randn(shape, generator=gen, dtype=torch.float32)
        if key.endswith(".weight") and len(shape) > 1:
            out[key] = x / math.sqrt(math.prod(shape[1:]))
        elif ".norm" in key and key.endswith(".weight"):
            out[key] = 1.0 + 0.1 * x
        elif ".norm" in key:
            out[key] = 0.1 * x
        else:
            out[key] = 0.05 * x
    return out


def tiny_lgm(seed: int = 0, config: LGMConfig = LGM_TINY,
             rotation_normalization: RotationNormalization = RotationNormalization.PER_GAUSSIAN) -> LGMNetwork:
    """An :class:`LGMNetwork` holding :func:`tiny_lgm_state_dict` (float32, CPU, eval mode)."""
    with torch.device("meta"):
        net = LGMNetwork(config, rotation_normalization)
    fill_network(net, tiny_lgm_state_dict(seed, config), "tiny LGM")
    return net.eval().requires_grad_(False)
