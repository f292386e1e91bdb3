"""Exact component masks from the part ids a render carries (``MaskSource.PARTS``)."""

from __future__ import annotations

from typing import Mapping, Union

import torch

from ..types import ComponentMasks, MaskSource, MultiViewRender
from .spec import component_part_ids, require_covered


def masks_from_parts(render: MultiViewRender, spec: Union[str, Mapping]) -> ComponentMasks:
    """Exact component masks from the render's part-id images.

    Args:
        render: from ``render_views`` (its ``part_id`` [V, H, W] and ``part_names``).
        spec: ``"hat: Hat, Brim; dog: *"`` or ``{"hat": ["Hat", "Brim"], "dog": "*"}``.

    Returns:
        ComponentMasks with masks bool [K, V, H, W] (a component may be empty in some views: occluded),
        source PARTS, disagreement zeros [K] (consistent by construction).

    Raises:
        ConfigError: unknown or doubly used parts (listing the available ones), or a component empty in every view.
    """
    ids = component_part_ids(spec, render.part_names)
    pid = render.part_id
    masks = torch.stack([torch.isin(pid, torch.tensor(v, dtype=pid.dtype, device=pid.device)) for v in ids.values()])
    names = tuple(ids)
    require_covered(masks, names, "its parts are hidden in all views or too small at this resolution (or '*' "
                                  "had no parts left)")
    return ComponentMasks(masks=masks, names=names, source=MaskSource.PARTS,
                          disagreement=torch.zeros(len(names), dtype=torch.float32, device=masks.device))
