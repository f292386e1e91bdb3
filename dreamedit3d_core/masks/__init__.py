"""ComponentMask: one mask per named component in every view, exact from part ids or from Segment Anything.

* ``spec.py``: component specs (``"hat: Hat, Brim; dog: *"``) resolved against an asset's part names.
* ``parts.py``: exact masks from the part ids a render carries.
* ``sam.py``: Segment Anything prompted on one view and carried to the others (``segment-anything`` is imported only
  when it runs).
* ``reproject.py``: pixels carried between views through the render's depth (lift, project with occlusion, cross-view
  disagreement), on ``MVCameras.project`` / ``unproject``.
"""

from .parts import masks_from_parts
from .reproject import DEFAULT_DEPTH_TOLERANCE, lift_pixels, mask_disagreement, project_visible
from .sam import SamPrompt, load_sam, masks_from_sam, parse_sam_prompts, view_prompts
from .spec import component_part_ids, parse_component_spec

__all__ = ["masks_from_parts", "masks_from_sam", "parse_component_spec", "component_part_ids", "lift_pixels",
           "project_visible", "mask_disagreement", "DEFAULT_DEPTH_TOLERANCE", "SamPrompt", "load_sam",
           "parse_sam_prompts", "view_prompts"]
