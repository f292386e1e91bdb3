"""Kept for imports written before masks became a package: the SAM path lives in ``dreamedit3d_core.masks.sam``."""

from .masks.sam import SAM_DECODER_HEADS, SamPrompt, load_sam, masks_from_sam, parse_sam_prompts, view_prompts

__all__ = ["SAM_DECODER_HEADS", "SamPrompt", "load_sam", "masks_from_sam", "parse_sam_prompts", "view_prompts"]
