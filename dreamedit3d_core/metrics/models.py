"""The models the edit metrics embed with: CLIP (image and text towers) and DINO ViT-S/16, their preprocessing, and
loading them from the files users have (see the package docstring for the accepted layouts).

Preprocessing runs in torch on the images' device. CLIP: bicubic resize of the short side to the model's image size
(antialiased, as PIL's resize in ``CLIPImageProcessor``), centre crop, clamp to [0, 1], OpenAI CLIP mean/std.
DINO: bicubic resize of the short side to ``round(image_size * 256 / 224)``, centre crop ``image_size`` (256 -> 224
for ViT-S/16), ImageNet mean/std (google/dreambooth#3).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..errors import CheckpointError
from ..storage import read_state_dict

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_RESIZE_RATIO = 256 / 224  # DreamBooth: Resize(256) -> CenterCrop(224)
CLIP_HEAD_DIM = 64  # every OpenAI/LAION CLIP except bigG uses 64-dim heads
_HEADS_BY_WIDTH = {1664: 16}  # ViT-bigG/14: 104-dim heads
_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))

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


def clip_config_from_state_dict(sd: dict, path: Path):
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
    vision_cfg, full_cfg = clip_config_from_state_dict(sd, path)
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


class OpenClipTokenize:
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
    tokenize = OpenClipTokenize(context)
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
