"""Edit metrics: CLIP directional similarity, CLIP text-image score (CLIPScore), CLIP-I and DINO identity.

Definitions (users.md §7, the field's standard ones). ``E_I``/``E_T`` are L2-normalised CLIP image/text embeddings
(the projected ``image_embeds``/``text_embeds`` of a CLIP ViT-L/14). Every score is computed per view: the source
renders and the edited views share cameras, so view ``v`` of one is compared with view ``v`` of the other, and the
mean over views is reported.

* CLIP directional: ``cos(E_I(x_edit) - E_I(x_src), E_T(t_edit) - E_T(t_src))`` (StyleGAN-NADA, arXiv 2108.00946;
  ``sim_direction`` of instruct-pix2pix ``metrics/clip_similarity.py``). Like ``torch.nn.functional.cosine_similarity``
  it is 0, not NaN, when one difference is the zero vector (identical views or identical captions).
* CLIPScore: ``max(100 * cos(E_I(x_edit), E_T(t_edit)), 0)`` in [0, 100] (torchmetrics ``CLIPScore``).
* CLIP-I: ``cos(E_I(x_edit), E_I(x_src))`` (instruct-pix2pix ``sim_image``).
* DINO identity: cosine of the [CLS] embeddings (final layer norm applied) of self-supervised DINO ViT-S/16 between
  the edited view and the source view (DreamBooth's "DINO"). Optionally restricted to the protected components: both
  images are composited ``x * m + background * (1 - m)`` with the protected mask ``m`` (1 = a pixel of a component the
  edit must not touch) before embedding, so only those pixels can differ. A view whose mask is empty has no score
  (NaN, JSON null) and is left out of the mean.

Preprocessing runs in torch on the images' device. CLIP: bicubic resize of the short side to the model's image size
(antialiased, as PIL's resize in ``CLIPImageProcessor``), centre crop, clamp to [0, 1], OpenAI CLIP mean/std.
DINO: bicubic resize of the short side to ``round(image_size * 256 / 224)``, centre crop ``image_size`` (256 -> 224
for ViT-S/16), ImageNet mean/std (google/dreambooth#3).

Accepted model files:
* CLIP (``models/clip_vision``): (a) a transformers folder holding a full ``CLIPModel`` (``config.json`` with
  ``model_type: clip`` + ``model.safetensors``/``pytorch_model.bin``, e.g. openai/clip-vit-large-patch14), given as
  the folder or any file inside it; (b) one ``.safetensors``/``.bin`` file with the full ``CLIPModel`` keys
  (``text_model.*``, ``vision_model.*``, ``visual_projection.weight``, ``text_projection.weight``), config inferred
  from the shapes (OpenAI layout: 64-dim heads, quick_gelu); (c) ComfyUI's usual clip_vision file (the image tower of
  ``CLIPVisionModelWithProjection``: ``vision_model.*`` + ``visual_projection.weight``), which only gives CLIP-I: the
  text-based scores need (a) or (b). Tokenizer: the folder's ``vocab.json`` + ``merges.txt``/``tokenizer.json`` when
  present, else open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz`` (the same OpenAI CLIP vocabulary).
* DINO (``models/dino``): a transformers ``ViTModel`` folder (``config.json`` with ``model_type: vit`` + weights, e.g.
  facebook/dino-vits16), given as the folder or any file inside it.

Modules: ``models`` (the CLIP / DINO models, preprocessing, loading), ``scores`` (each metric per view, masked PSNR),
``table`` (every metric of an edit as a JSON table, and its chart).
"""

from ..errors import CheckpointError, ConfigError, ShapeError
from ..types import ComponentMasks
from .models import (CLIP_HEAD_DIM, CLIP_MEAN, CLIP_STD, DINO_RESIZE_RATIO, IMAGENET_MEAN, IMAGENET_STD, ClipMetricModel,
                     DinoMetricModel, OpenClipTokenize, clip_config_from_state_dict, load_metric_clip, load_metric_dino,
                     preprocess_clip, preprocess_dino)
from .scores import (MAX_PSNR_DB, ImageMask, ViewScores, apply_protected_mask, check_caption, check_images, check_pair,
                     clip_directional_similarity, clip_image_similarity, clip_text_image_score, dino_identity,
                     masked_psnr, protected_mask)
from .table import METRIC_INFO, evaluate_edit, evaluate_edits, metrics_to_json, render_metrics_chart

__all__ = [
    "CLIP_HEAD_DIM", "CLIP_MEAN", "CLIP_STD", "DINO_RESIZE_RATIO", "IMAGENET_MEAN", "IMAGENET_STD", "ClipMetricModel",
    "DinoMetricModel", "OpenClipTokenize", "clip_config_from_state_dict", "load_metric_clip", "load_metric_dino",
    "preprocess_clip", "preprocess_dino",
    "MAX_PSNR_DB", "ImageMask", "ViewScores", "apply_protected_mask", "check_caption", "check_images", "check_pair",
    "clip_directional_similarity", "clip_image_similarity", "clip_text_image_score", "dino_identity", "masked_psnr",
    "protected_mask",
    "METRIC_INFO", "evaluate_edit", "evaluate_edits", "metrics_to_json", "render_metrics_chart",
    "CheckpointError", "ConfigError", "ShapeError", "ComponentMasks",
]
