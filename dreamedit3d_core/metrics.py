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
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .cameras import view_names
from .errors import CheckpointError, ConfigError, ShapeError
from .storage import read_state_dict
from .types import ComponentMasks

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_RESIZE_RATIO = 256 / 224  # DreamBooth: Resize(256) -> CenterCrop(224)
CLIP_HEAD_DIM = 64  # every OpenAI/LAION CLIP except bigG uses 64-dim heads
_HEADS_BY_WIDTH = {1664: 16}  # ViT-bigG/14: 104-dim heads
_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))
_RANGE_TOL = 1e-3

ImageMask = Union[torch.Tensor, None]


# ----------------------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class ViewScores:
    """One metric for every view of one edit.

    Attributes:
        name: metric key ("clip_directional", "clip_score", "clip_image", "dino_identity", ...).
        per_view: one float per view (NaN where a view has no score, e.g. an empty protected mask).
        mean: mean over the views that have a score.
    """

    name: str
    per_view: tuple
    mean: float

    @staticmethod
    def from_tensor(name: str, values: torch.Tensor) -> "ViewScores":
        vals = [float(v) for v in values.detach().float().cpu()]
        valid = [v for v in vals if not math.isnan(v)]
        return ViewScores(name, tuple(vals), sum(valid) / len(valid) if valid else float("nan"))


# ----------------------------------------------------------------------------------------------------------------
# models


class _ModelOnDevice:
    """``device``/``dtype`` of a metric model's ``model`` (where its parameters live)."""

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


@dataclass(frozen=True, eq=False)
class ClipMetricModel(_ModelOnDevice):
    """A loaded CLIP for metrics.

    Attributes:
        model: transformers ``CLIPModel`` (text and image towers) or ``CLIPVisionModelWithProjection`` (image only).
        tokenize: ``list[str] -> LongTensor [B, context]`` or None for an image-only model.
        image_size: the vision tower's input size (224 for ViT-L/14).
        source: the path it was loaded from.
    """

    model: torch.nn.Module
    tokenize: Optional[Callable]
    image_size: int
    source: str = ""

    @property
    def has_text(self) -> bool:
        return self.tokenize is not None

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` float [N, 3, H, W] in 0..1 -> L2-normalised ``E_I`` float32 [N, D]."""
        pixels = preprocess_clip(images.to(self.device, torch.float32), self.image_size).to(self.dtype)
        vision = self.model.vision_model(pixel_values=pixels)
        return F.normalize(self.model.visual_projection(vision.pooler_output).float(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, captions: Sequence[str]) -> torch.Tensor:
        """``captions`` (B strings) -> L2-normalised ``E_T`` float32 [B, D]."""
        if not self.has_text:
            raise CheckpointError(
                f"the CLIP file {self.source} holds only the image tower (a ComfyUI clip_vision file), so it cannot score "
                "captions: use the full openai/clip-vit-large-patch14 folder (config.json, model.safetensors, vocab.json, "
                "merges.txt) in models/clip_vision/")
        ids = self.tokenize(list(captions)).to(self.device)
        text = self.model.text_model(input_ids=ids)
        return F.normalize(self.model.text_projection(text.pooler_output).float(), dim=-1)


@dataclass(frozen=True, eq=False)
class DinoMetricModel(_ModelOnDevice):
    """A loaded DINO ViT (transformers ``ViTModel``) for the identity metric.

    Attributes:
        model: transformers ``ViTModel`` (no pooler).
        image_size: the crop size (224 for ViT-S/16); images are resized to ``round(image_size * 256 / 224)`` first.
        source: the path it was loaded from.
    """

    model: torch.nn.Module
    image_size: int
    source: str = ""

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` float [N, 3, H, W] in 0..1 -> [CLS] embeddings float32 [N, D] (not normalised)."""
        pixels = preprocess_dino(images.to(self.device, torch.float32), self.image_size).to(self.dtype)
        return self.model(pixel_values=pixels).last_hidden_state[:, 0].float()


def _resize_center_crop(images: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    h, w = images.shape[-2:]
    scale = resize / min(h, w)
    size = (max(crop, round(h * scale)), max(crop, round(w * scale)))
    if size != (h, w):
        images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    return images[..., top:top + crop, left:left + crop].clamp(0.0, 1.0)


def _normalise(images: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    m = images.new_tensor(mean).view(1, 3, 1, 1)
    s = images.new_tensor(std).view(1, 3, 1, 1)
    return (images - m) / s


def preprocess_clip(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """CLIP preprocessing in torch: bicubic short-side resize, centre crop, clamp, OpenAI mean/std.

    Args:
        images: float [N, 3, H, W] in 0..1 (any device).
        image_size: the model's input size.

    Returns:
        float [N, 3, image_size, image_size], normalised.
    """
    return _normalise(_resize_center_crop(images, image_size, image_size), CLIP_MEAN, CLIP_STD)


def preprocess_dino(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """DINO preprocessing (DreamBooth protocol): bicubic resize to ``round(image_size*256/224)``, crop, ImageNet mean/std."""
    resize = round(image_size * DINO_RESIZE_RATIO)
    return _normalise(_resize_center_crop(images, resize, image_size), IMAGENET_MEAN, IMAGENET_STD)


def _model_folder(path: Path, what: str, hint: str) -> Optional[Path]:
    """The transformers folder ``path`` names (itself, or the folder of a file inside it), or None for a lone file."""
    if not path.exists():
        raise CheckpointError(f"{what} model not found: {path}; {hint}")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{what} folder {path} has no config.json; {hint}")
        return path
    return path.parent if (path.parent / "config.json").is_file() else None


def _read_config(folder: Path, what: str) -> dict:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{what} config {folder / 'config.json'} cannot be read ({exc}); restore the file") from exc


def _from_pretrained(cls, folder: Path, what: str, **kwargs):
    if not any((folder / n).is_file() for n in _WEIGHT_NAMES):
        raise CheckpointError(f"{what} folder {folder} has a config.json but no weights ({' or '.join(_WEIGHT_NAMES[:2])}); "
                              "download the model's weight file into it")
    try:
        model, info = cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True, **kwargs)
    except Exception as exc:  # safetensors, torch and transformers raise many types for corrupt or foreign files
        raise CheckpointError(f"{what} folder {folder} cannot be loaded ({type(exc).__name__}: {exc}); the weights are "
                              "corrupt, truncated or of another model: download them again") from exc
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    if missing:  # transformers would fill them with random numbers: refuse instead
        raise CheckpointError(f"{what} weights in {folder} lack {len(missing)} tensors (e.g. {missing[0]}); "
                              "the file is truncated or belongs to another model")
    return model


def _read_state_dict(path: Path, what: str) -> dict:
    if path.suffix not in (".safetensors", ".sft", ".bin", ".pt", ".pth", ".ckpt"):
        raise CheckpointError(f"{what} file {path} has an unsupported type {path.suffix!r}; use .safetensors or a "
                              "transformers folder")
    return read_state_dict(path, f"a {what} weight file in the transformers layout")


def _count_layers(sd: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".", 1)[0] for k in sd if k.startswith(prefix)})


def _heads(width: int) -> int:
    return _HEADS_BY_WIDTH.get(width, max(1, width // CLIP_HEAD_DIM))


def _clip_config_from_state_dict(sd: dict, path: Path):
    """Infer a transformers CLIP(Vision)Config from the shapes of a CLIPModel / CLIPVisionModelWithProjection file."""
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    patch = sd["vision_model.embeddings.patch_embedding.weight"]
    width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    positions = int(sd["vision_model.embeddings.position_embedding.weight"].shape[0]) - 1
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise CheckpointError(f"CLIP file {path}: {positions} patch positions is not a square grid; not a CLIP ViT")
    vision = CLIPVisionConfig(
        hidden_size=width, intermediate_size=int(sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=_count_layers(sd, "vision_model.encoder.layers."), num_attention_heads=_heads(width),
        image_size=grid * patch_size, patch_size=patch_size, projection_dim=int(sd["visual_projection.weight"].shape[0]),
        hidden_act="quick_gelu")
    if "text_model.embeddings.token_embedding.weight" not in sd:
        return vision, None
    tok = sd["text_model.embeddings.token_embedding.weight"]
    text_width = int(tok.shape[1])
    text = CLIPTextConfig(
        vocab_size=int(tok.shape[0]), hidden_size=text_width,
        intermediate_size=int(sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=_count_layers(sd, "text_model.encoder.layers."), num_attention_heads=_heads(text_width),
        max_position_embeddings=int(sd["text_model.embeddings.position_embedding.weight"].shape[0]),
        projection_dim=int(sd["text_projection.weight"].shape[0]), hidden_act="quick_gelu")
    if text.projection_dim != vision.projection_dim:
        raise CheckpointError(f"CLIP file {path}: text projection {text.projection_dim} != image projection "
                              f"{vision.projection_dim}; the file mixes two models")
    return vision, CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                              projection_dim=vision.projection_dim)


def _load_clip_file(path: Path):
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    sd = _read_state_dict(path, "CLIP")
    if "vision_model.embeddings.patch_embedding.weight" not in sd or "visual_projection.weight" not in sd:
        layout = "open_clip (visual.*)" if any(k.startswith("visual.") for k in sd) else "unknown"
        raise CheckpointError(
            f"CLIP file {path} is not in the transformers CLIP layout (no vision_model.* / visual_projection.weight; "
            f"layout looks {layout}); use the openai/clip-vit-large-patch14 files from models/clip_vision")
    vision_cfg, full_cfg = _clip_config_from_state_dict(sd, path)
    model = CLIPModel(full_cfg) if full_cfg is not None else CLIPVisionModelWithProjection(vision_cfg)
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        bad = (missing or unexpected)[0]
        raise CheckpointError(f"CLIP file {path} does not match the CLIP layout inferred from its shapes "
                              f"({len(missing)} missing, {len(unexpected)} unexpected tensors, e.g. {bad})")
    return model, full_cfg is not None


class _HFTokenize:
    """transformers CLIP tokenizer -> ids [B, context] (EOS kept when truncating)."""

    def __init__(self, tokenizer, context: int):
        self.tokenizer, self.context = tokenizer, context

    def __call__(self, captions: list) -> torch.Tensor:
        out = self.tokenizer(captions, padding="max_length", max_length=self.context, truncation=True,
                             return_tensors="pt")
        return out["input_ids"]


class _OpenClipTokenize:
    """open_clip's bundled OpenAI CLIP BPE -> ids [B, context] (zero padded, EOT kept when truncating)."""

    def __init__(self, context: int):
        from open_clip.tokenizer import SimpleTokenizer

        self.tokenizer, self.context = SimpleTokenizer(context_length=context), context

    def __call__(self, captions: list) -> torch.Tensor:
        return self.tokenizer(captions, context_length=self.context)


def _clip_tokenizer(folder: Optional[Path], text_config) -> Callable:
    context = int(text_config.max_position_embeddings)
    if folder is not None and any(all((folder / f).is_file() for f in group) for group in _TOKENIZER_FILES):
        from transformers import AutoTokenizer  # the fast tokenizer when only tokenizer.json is there

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"the tokenizer files in {folder} cannot be read ({exc}); restore vocab.json and "
                                  "merges.txt (or tokenizer.json), or remove them to use the bundled CLIP vocabulary") from exc
        if len(tokenizer) > int(text_config.vocab_size):
            raise CheckpointError(f"the tokenizer files in {folder} have {len(tokenizer)} tokens but the CLIP text tower "
                                  f"has {text_config.vocab_size}; the tokenizer belongs to another model")
        return _HFTokenize(tokenizer, context)
    tokenize = _OpenClipTokenize(context)
    vocab = len(tokenize.tokenizer.encoder)
    if vocab != int(text_config.vocab_size):
        raise CheckpointError(f"the CLIP text tower has {text_config.vocab_size} tokens but the bundled OpenAI CLIP "
                              f"vocabulary has {vocab}; put the model's vocab.json and merges.txt next to its weights")
    return tokenize


def load_metric_clip(path, device="cpu", dtype: torch.dtype = torch.float32) -> ClipMetricModel:
    """Load a CLIP (ViT-L/14 for the standard metrics) as users keep it; see the module docstring for what is accepted.

    Args:
        path: a transformers CLIP folder, a file inside one, or a single weight file.
        device, dtype: where and in which precision to run the model.

    Raises:
        CheckpointError: missing, unreadable, truncated or foreign files.
    """
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    path = Path(path)
    hint = ("put the openai/clip-vit-large-patch14 folder (config.json, model.safetensors, vocab.json, merges.txt) "
            "in models/clip_vision/")
    folder = _model_folder(path, "CLIP", hint)
    if folder is not None:
        kind = _read_config(folder, "CLIP").get("model_type")
        classes = {"clip": CLIPModel, "clip_vision_model": CLIPVisionModelWithProjection}
        if kind not in classes:
            raise CheckpointError(f"{folder} holds a {kind!r} model, not CLIP (model_type 'clip'); {hint}")
        model = _from_pretrained(classes[kind], folder, "CLIP")
        has_text = kind == "clip"
    else:
        model, has_text = _load_clip_file(path)
    model = model.to(device=device, dtype=dtype).eval()
    vision_config = model.config.vision_config if has_text else model.config
    tokenize = _clip_tokenizer(folder, model.config.text_config) if has_text else None
    return ClipMetricModel(model, tokenize, int(vision_config.image_size), str(path))


def load_metric_dino(path, device="cpu", dtype: torch.dtype = torch.float32) -> DinoMetricModel:
    """Load DINO ViT-S/16 from a transformers ``ViTModel`` folder (or a file inside one), as in ``models/dino``.

    Raises:
        CheckpointError: missing folder/config/weights, a non-ViT model, or truncated weights.
    """
    from transformers import ViTModel

    path = Path(path)
    hint = "put the facebook/dino-vits16 folder (config.json, model.safetensors or pytorch_model.bin) in models/dino/"
    folder = _model_folder(path, "DINO", hint)
    if folder is None:
        raise CheckpointError(f"DINO file {path} has no config.json beside it; DINO loads from a transformers folder: {hint}")
    kind = _read_config(folder, "DINO").get("model_type")
    if kind != "vit":
        raise CheckpointError(f"{folder} holds a {kind!r} model, not a ViT (model_type 'vit'); {hint}")
    model = _from_pretrained(ViTModel, folder, "DINO", add_pooling_layer=False)
    model = model.to(device=device, dtype=dtype).eval()
    return DinoMetricModel(model, int(model.config.image_size), str(path))


# ----------------------------------------------------------------------------------------------------------------
# checks


def _check_images(name: str, images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor [V, 3, H, W], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1:
        raise ShapeError(f"{name} must have shape [V, 3, H, W] (channels first, RGB), got {list(images.shape)}")
    if not images.is_floating_point():
        raise ShapeError(f"{name} must be a float tensor in 0..1, got {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise ShapeError(f"{name} contains NaN or inf values")
    lo, hi = float(images.min()), float(images.max())
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        raise ShapeError(f"{name} must be in 0..1, got values in [{lo:.3g}, {hi:.3g}]; map -1..1 images with (x + 1) / 2")
    return images


def _check_pair(source_images, edited_images) -> None:
    _check_images("source_images", source_images)
    _check_images("edited_images", edited_images)
    if source_images.shape[0] != edited_images.shape[0]:
        raise ShapeError(f"source_images has {source_images.shape[0]} views but edited_images has "
                         f"{edited_images.shape[0]}; render the source with the same cameras as the edit")


def _check_caption(name: str, caption) -> str:
    if not isinstance(caption, str) or not caption.strip():
        raise ConfigError(f"{name} must be a non-empty string, got {caption!r}")
    return caption


# ----------------------------------------------------------------------------------------------------------------
# metrics


def clip_directional_similarity(source_images: torch.Tensor, edited_images: torch.Tensor, source_caption: str,
                                edit_caption: str, clip: ClipMetricModel) -> ViewScores:
    """CLIP directional similarity per view: ``cos(E_I(edit_v) - E_I(src_v), E_T(t_edit) - E_T(t_src))``.

    Args:
        source_images, edited_images: float [V, 3, H, W] in 0..1, view ``v`` of both seen by the same camera.
        source_caption: a caption of the source; edit_caption: a caption of the intended result.
        clip: from :func:`load_metric_clip` (needs the text tower).

    Returns:
        ViewScores "clip_directional", values in [-1, 1].
    """
    _check_pair(source_images, edited_images)
    texts = clip.embed_texts([_check_caption("source_caption", source_caption), _check_caption("edit_caption", edit_caption)])
    images = clip.embed_images(torch.cat([source_images, edited_images]))
    src, edit = images.chunk(2)
    text_direction = (texts[1] - texts[0]).unsqueeze(0)
    return ViewScores.from_tensor("clip_directional", F.cosine_similarity(edit - src, text_direction, dim=-1))


def clip_text_image_score(edited_images: torch.Tensor, caption: str, clip: ClipMetricModel) -> ViewScores:
    """CLIPScore per view: ``max(100 * cos(E_I(edit_v), E_T(caption)), 0)`` in [0, 100]."""
    _check_images("edited_images", edited_images)
    text = clip.embed_texts([_check_caption("caption", caption)])
    cos = (clip.embed_images(edited_images) * text).sum(-1)
    return ViewScores.from_tensor("clip_score", (100.0 * cos).clamp_min(0.0))


def clip_image_similarity(source_images: torch.Tensor, edited_images: torch.Tensor, clip: ClipMetricModel) -> ViewScores:
    """CLIP-I per view: ``cos(E_I(edit_v), E_I(src_v))`` in [-1, 1]; works with an image-only clip_vision file."""
    _check_pair(source_images, edited_images)
    src, edit = clip.embed_images(torch.cat([source_images, edited_images])).chunk(2)
    return ViewScores.from_tensor("clip_image", (src * edit).sum(-1))


def protected_mask(masks: ComponentMasks, edited_components: Union[str, Sequence[str]]) -> torch.Tensor:
    """The pixels of every component that is *not* edited: bool [V, H, W].

    Args:
        masks: the components' masks (bool [K, V, H, W]).
        edited_components: names (with or without angle brackets) of the components the edit changes, as a list or
            one string separated by commas ("hat, <scarf>").

    Raises:
        ConfigError: no name, an unknown component name, or no component left to protect.
    """
    if isinstance(edited_components, str):
        edited_components = edited_components.replace(";", ",").split(",")
    edited = {n.strip().strip("<>").strip() for n in edited_components} - {""}
    if not edited:
        raise ConfigError(f"name the edited component(s), e.g. 'hat'; the masks have {list(masks.names)}")
    unknown = sorted(edited - set(masks.names))
    if unknown:
        raise ConfigError(f"unknown component(s) {unknown}; the masks have {list(masks.names)}")
    keep = [i for i, n in enumerate(masks.names) if n not in edited]
    if not keep:
        raise ConfigError(f"every component ({list(masks.names)}) is edited: nothing is left to protect")
    return masks.masks[keep].any(dim=0)


def apply_protected_mask(images: torch.Tensor, mask: torch.Tensor, background=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Composite ``images * m + background * (1 - m)``: keep only the protected pixels.

    Args:
        images: float [V, 3, H, W] in 0..1.
        mask: bool or float (0..1) [V, H, W] or [V, 1, H, W], 1 = protected (kept).
        background: RGB in 0..1 that replaces every other pixel (the renders' background).
    """
    if not isinstance(mask, torch.Tensor):
        raise ShapeError(f"mask must be a torch.Tensor [V, H, W], got {type(mask).__name__}")
    m = mask[:, 0] if mask.ndim == 4 and mask.shape[1] == 1 else mask
    if m.ndim != 3 or m.shape[0] != images.shape[0] or tuple(m.shape[1:]) != tuple(images.shape[2:]):
        raise ShapeError(f"mask must have shape [V, H, W] = {[images.shape[0], *images.shape[2:]]} to match the images, "
                         f"got {list(mask.shape)}")
    if len(background) != 3:
        raise ConfigError(f"background must be an RGB triple in 0..1, got {background!r}")
    m = m.to(images.device, images.dtype).unsqueeze(1)
    bg = images.new_tensor(tuple(float(c) for c in background)).view(1, 3, 1, 1)
    return images * m + bg * (1 - m)


def dino_identity(source_images: torch.Tensor, edited_images: torch.Tensor, dino: DinoMetricModel,
                  mask: ImageMask = None, background=(1.0, 1.0, 1.0)) -> ViewScores:
    """DINO identity per view: cosine of the [CLS] embeddings of the source and the edited view.

    Args:
        source_images, edited_images: float [V, 3, H, W] in 0..1, same cameras; same H, W when ``mask`` is given.
        dino: from :func:`load_metric_dino`.
        mask: optional protected mask bool/float [V, H, W] (1 = component the edit must not touch, see
            :func:`protected_mask`); both images keep only those pixels (:func:`apply_protected_mask`).
        background: the colour that replaces unprotected pixels.

    Returns:
        ViewScores "dino_identity" (or "dino_identity_protected" with a mask); NaN for a view whose mask is empty.

    Raises:
        ShapeError: bad shapes or values, or a mask that is empty in every view.
    """
    _check_pair(source_images, edited_images)
    name = "dino_identity"
    empty = None
    if mask is not None:
        if source_images.shape != edited_images.shape:
            raise ShapeError(f"with a mask, source_images {list(source_images.shape)} and edited_images "
                             f"{list(edited_images.shape)} must have the same size")
        source_images = apply_protected_mask(source_images, mask, background)
        edited_images = apply_protected_mask(edited_images, mask, background)
        empty = (mask.reshape(mask.shape[0], -1) > 0).sum(-1) == 0
        if bool(empty.all()):
            raise ShapeError("the protected mask is empty in every view: nothing is left to compare; check which "
                             "components are marked as edited")
        name = "dino_identity_protected"
    src, edit = dino.embed_images(torch.cat([source_images, edited_images])).chunk(2)
    cos = F.cosine_similarity(edit, src, dim=-1)
    if empty is not None:
        cos = cos.masked_fill(empty.to(cos.device), float("nan"))
    return ViewScores.from_tensor(name, cos)


# ----------------------------------------------------------------------------------------------------------------
# table and chart

METRIC_INFO = {  # key: (label, chart axis low, chart axis high (values beyond are drawn clipped), definition)
    "clip_directional": ("CLIP directional", -1.0, 1.0, "cos(E_I(edit)-E_I(src), E_T(t_edit)-E_T(t_src))"),
    "clip_score": ("CLIPScore", 0.0, 100.0, "max(100*cos(E_I(edit), E_T(t_edit)), 0)"),
    "clip_image": ("CLIP-I", 0.0, 1.0, "cos(E_I(edit), E_I(src))"),
    "dino_identity": ("DINO identity", 0.0, 1.0, "cos(DINO_CLS(edit), DINO_CLS(src))"),
    "dino_identity_protected": ("DINO identity (protected parts)", 0.0, 1.0,
                                "cos(DINO_CLS(edit*m+bg*(1-m)), DINO_CLS(src*m+bg*(1-m))), m = protected mask"),
}


def evaluate_edit(source_images: torch.Tensor, edited_images: torch.Tensor, source_caption: str = "",
                  edit_caption: str = "", clip: Optional[ClipMetricModel] = None, dino: Optional[DinoMetricModel] = None,
                  mask: ImageMask = None, background=(1.0, 1.0, 1.0)) -> dict:
    """Every metric the given models allow, as a JSON-ready table.

    CLIP with a text tower gives clip_directional, clip_score and clip_image; an image-only CLIP gives clip_image;
    DINO gives dino_identity, plus dino_identity_protected when ``mask`` is given.

    Returns:
        {"views": [...], "captions": {...}, "models": {...}, "metrics": {key: {"label", "definition", "per_view", "mean"}}}
        with NaN written as None.
    """
    _check_pair(source_images, edited_images)
    if clip is None and dino is None:
        raise ConfigError("no metric model given: pass a CLIP (models/clip_vision) and/or a DINO (models/dino) model")
    if mask is not None and dino is None:
        raise ConfigError("a protected mask only restricts DINO identity: choose a DINO model (models/dino) too")
    results = []
    if clip is not None:
        if clip.has_text:
            results.append(clip_directional_similarity(source_images, edited_images, source_caption, edit_caption, clip))
            results.append(clip_text_image_score(edited_images, edit_caption, clip))
        results.append(clip_image_similarity(source_images, edited_images, clip))
    if dino is not None:
        results.append(dino_identity(source_images, edited_images, dino))
        if mask is not None:
            results.append(dino_identity(source_images, edited_images, dino, mask=mask, background=background))

    def clean(x: float):
        return None if math.isnan(x) else round(x, 6)

    return {
        "views": list(view_names(source_images.shape[0])),
        "captions": {"source": source_caption, "edit": edit_caption},
        "models": {"clip": _short(clip.source) if clip is not None else None,
                   "dino": _short(dino.source) if dino is not None else None},
        "metrics": {r.name: {"label": METRIC_INFO[r.name][0], "definition": METRIC_INFO[r.name][3],
                             "per_view": [clean(v) for v in r.per_view], "mean": clean(r.mean)} for r in results},
    }


def evaluate_edits(source_images: torch.Tensor, edited_images: torch.Tensor, source_caption: str,
                   edit_captions: Sequence[str], clip: Optional[ClipMetricModel] = None,
                   dino: Optional[DinoMetricModel] = None, mask: ImageMask = None, background=(1.0, 1.0, 1.0)) -> dict:
    """Several edits of one source (one personalisation, many edit prompts), each scored like :func:`evaluate_edit`.

    Args:
        source_images: float [V, 3, H, W] in 0..1.
        edited_images: float [N*V, 3, H, W] in 0..1, edit-major (index ``n * V + v``), as MVSample batches them.
        edit_captions: N captions, one per edit, in the same order.

    Returns:
        {"views": [...], "edits": [N tables of :func:`evaluate_edit`], "summary": a table in the chart's format whose
        "views" are the edits and whose values are each edit's mean over views}.
    """
    _check_images("source_images", source_images)
    _check_images("edited_images", edited_images)
    v = source_images.shape[0]
    if edited_images.shape[0] % v:
        raise ShapeError(f"edited_images has {edited_images.shape[0]} views, not a multiple of the source's {v}: "
                         "give every edit the same views as the source")
    n = edited_images.shape[0] // v
    captions = [c for c in edit_captions if isinstance(c, str) and c.strip()]
    if clip is not None and clip.has_text and len(captions) != n:
        raise ConfigError(f"edited_images holds {n} edit(s) ({n}x{v} views) but {len(captions)} edit caption(s) were "
                          "given: write one caption per edit, one per line")
    captions = (captions + [""] * n)[:n]  # without a text tower the captions are only recorded
    edits = [evaluate_edit(source_images, edited_images[i * v:(i + 1) * v], source_caption, captions[i], clip, dino,
                           mask, background) for i in range(n)]
    labels = [f"edit {i + 1}" for i in range(n)]
    summary = {"views": labels, "metrics": {}}
    for key in edits[0]["metrics"]:
        means = [e["metrics"][key]["mean"] for e in edits]
        valid = [m for m in means if m is not None]
        summary["metrics"][key] = {"label": METRIC_INFO[key][0], "definition": METRIC_INFO[key][3] + ", mean over views",
                                   "per_view": means, "mean": round(sum(valid) / len(valid), 6) if valid else None}
    return {"views": edits[0]["views"], "edits": edits, "summary": summary}


def _short(path: str) -> str:
    """The model's folder and file name, not the user's whole path (tables get shared)."""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if parts else ""


def metrics_to_json(table: dict) -> str:
    """The table as indented JSON (NaN already written as null)."""
    return json.dumps(table, indent=2, allow_nan=False)


_BAR_COLOURS = ((76, 114, 176), (221, 132, 82), (85, 168, 104), (196, 78, 82), (129, 114, 179), (147, 120, 96))
_MEAN_COLOUR = (60, 60, 60)


def render_metrics_chart(table: dict, width: int = 640, panel_height: int = 140) -> torch.Tensor:
    """A bar chart of the table (one panel per metric, one bar per view plus the mean), drawn with PIL.

    Returns:
        float32 [3, H, W] in 0..1 (H = panel_height * number of metrics + the legend: 24 px, plus 14 px per extra line).
    """
    from PIL import Image, ImageDraw, ImageFont

    metrics = table.get("metrics", {})
    if not metrics:
        raise ConfigError("the metrics table is empty: nothing to plot")
    views = list(table["views"]) + ["mean"]
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend, x, y = [], 8, 8  # wrap the legend onto as many lines as it needs
    for name in views:
        item = 14 + int(measure.textlength(name, font=font)) + 16
        if x > 8 and x + item > width - 8:
            x, y = 8, y + 14
        legend.append((x, y, name))
        x += item
    legend_h = y + 16
    img = Image.new("RGB", (width, legend_h + panel_height * len(metrics)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    colours = [_BAR_COLOURS[i % len(_BAR_COLOURS)] for i in range(len(views) - 1)] + [_MEAN_COLOUR]
    for (x, y, name), colour in zip(legend, colours):
        draw.rectangle([x, y, x + 10, y + 10], fill=colour)
        draw.text((x + 14, y - 1), name, fill=(0, 0, 0), font=font)
    left, right = 56, width - 12
    for row, (key, entry) in enumerate(metrics.items()):
        top = legend_h + row * panel_height
        lo, hi = METRIC_INFO.get(key, (key, -1.0, 1.0, ""))[1:3]
        draw.text((8, top + 4), f"{entry.get('label', key)}  (mean {_fmt(entry['mean'])})", fill=(0, 0, 0), font=font)
        y0, y1 = top + 34, top + panel_height - 8  # plot area, room for the labels above

        def y_of(v: float) -> float:
            return y1 - (min(max(v, lo), hi) - lo) / (hi - lo) * (y1 - y0)

        draw.rectangle([left, y0, right, y1], outline=(180, 180, 180))
        for tick in (lo, (lo + hi) / 2, hi):
            draw.text((8, y_of(tick) - 6), _fmt(tick), fill=(90, 90, 90), font=font)
        base = y_of(min(max(0.0, lo), hi))
        draw.line([left, base, right, base], fill=(120, 120, 120))
        values = list(entry["per_view"]) + [entry["mean"]]
        slot = (right - left) / len(values)
        for i, (v, colour) in enumerate(zip(values, colours)):
            x0, x1 = left + i * slot + slot * 0.2, left + (i + 1) * slot - slot * 0.2
            if v is None:
                draw.text((x0, base - 14), "n/a", fill=(120, 120, 120), font=font)
                continue
            yv = y_of(v)
            draw.rectangle([x0, min(yv, base), x1, max(yv, base)], fill=colour)
            draw.text((x0, min(yv, base) - 12 if v >= 0 else max(yv, base) + 1), _fmt(v), fill=(0, 0, 0), font=font)
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3)
    return data.permute(2, 0, 1).float() / 255.0


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    return f"{v:.1f}" if abs(v) >= 10 else f"{v:.3f}"
