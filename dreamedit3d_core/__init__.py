"""DreamEdit3D core: a plain torch library (no ComfyUI import) for object-level 3D editing with MVDream.

Heavy modules load on first use, so ``import dreamedit3d_core`` stays cheap.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module (relative) that defines it
_EXPORTS = {
    # cameras
    "get_camera": ".cameras",
    "MVCameras": ".cameras",
    # data types and errors
    "MeshAsset": ".types",
    "MultiViewRender": ".types",
    "ComponentMasks": ".types",
    "MaskSource": ".types",
    "TokenSet": ".types",
    "MVConditioning": ".types",
    "MultiViewSamples": ".types",
    "LiftedMesh": ".types",
    "DreamEdit3DError": ".errors",
    # model core
    "load_mvdream": ".mvdream.checkpoint",
    "MVDreamModel": ".mvdream.model",
    "save_mvdream": ".mvdream.checkpoint",
    "MVTokenizer": ".mvdream.tokenizer",
    "MultiViewAttnProcessor": ".mvdream.attention",
    "record_cross_attention": ".mvdream.attention",
    # render and masks
    "load_asset": ".assets",
    "render_views": ".render",
    "masks_from_parts": ".masks",
    "masks_from_sam": ".masks",
    "asset_from_arrays": ".assets",
    "rasterize": ".raster",
    "rasterize_uv": ".raster",
    "SamPrompt": ".masks",
    "load_sam": ".masks",
    # prompts and sampling
    "compose_prompt": ".prompts",
    "sample_views": ".sampling",
    "MVDenoiser": ".schedule",
    "sample_latents": ".sampling",
    # personalisation
    "train_textual_inversion": ".personalize.textual_inversion",
    "run_textual_inversion": ".personalize.textual_inversion",
    "finetune": ".personalize.finetune",
    "run_finetune": ".personalize.finetune",
    "PersonalizationResult": ".personalize.train",
    "save_tokens": ".tokens",
    "load_tokens": ".tokens",
    "apply_tokens": ".tokens",
    "save_comfy_embeddings": ".tokens",
    "TIConfig": ".personalize.textual_inversion",
    "FTConfig": ".personalize.finetune",
    "save_unet_lora": ".personalize.finetune",
    "load_unet_lora": ".personalize.finetune",
    "save_finetuned_model": ".personalize.finetune",
    "save_finetuned_unet": ".personalize.finetune",
    # lifting
    "lift_to_mesh": ".lifting",
    "export_mesh": ".lifting",
    "read_provenance": ".lifting",
    "register_reconstructor": ".lifting",
    # provenance and contact sheets
    "build_record": ".provenance",
    "save_png": ".provenance",
    "read_png_provenance": ".provenance",
    "read_file_provenance": ".provenance",
    "contact_sheet": ".contact_sheet",
    # edit metrics
    "load_metric_clip": ".metrics",
    "load_metric_dino": ".metrics",
    "clip_directional_similarity": ".metrics",
    "clip_text_image_score": ".metrics",
    "clip_image_similarity": ".metrics",
    "dino_identity": ".metrics",
    "protected_mask": ".metrics",
    "evaluate_edit": ".metrics",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dreamedit3d_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
