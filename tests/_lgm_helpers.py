"""Test helpers for LGM: analytic Gaussian shells."""

from __future__ import annotations

import math

import torch

from dreamedit3d_core.lifting.lgm import Gaussians


def sphere_shell(radius: float, centre=(0.05, -0.03, 0.02), sigma_t: float = 0.02, sigma_n: float = 0.002,
                 spacing: float = 1.2) -> Gaussians:
    """Flat splats (tangent std ``sigma_t``, normal std ``sigma_n``) on a Fibonacci lattice of the sphere, coloured by
    their normal."""
    n = int(4 * math.pi * radius ** 2 / (sigma_t * spacing) ** 2)
    i = torch.arange(n, dtype=torch.float64) + 0.5
    phi, theta = torch.acos(1 - 2 * i / n), math.pi * (1 + 5 ** 0.5) * i
    nrm = torch.stack([torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], -1)
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).expand(n, 3).clone()
    helper[nrm[:, 0].abs() > 0.9] = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    t1 = torch.nn.functional.normalize(torch.cross(nrm, helper, dim=-1), dim=-1)
    axes = torch.stack([t1, torch.cross(nrm, t1, dim=-1), nrm], -1)
    scales = torch.tensor([sigma_t, sigma_t, sigma_n]).expand(n, 3).contiguous()
    return Gaussians(means=(torch.tensor(centre, dtype=torch.float64) + radius * nrm).float(),
                     opacity=torch.full((n,), 0.8), scales=scales, axes=axes.float(), colors=(0.5 + 0.5 * nrm).float())
