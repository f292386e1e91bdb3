"""Tiny, seeded CLIP and DINO models of the real architectures, saved as users keep the real ones.

* ``write_tiny_clip_folder``: a transformers ``CLIPModel`` folder (config.json + model.safetensors), optionally with
  tokenizer files (vocab.json + merges.txt) written from open_clip's bundled OpenAI BPE, like the openai/clip-vit-large-patch14
  repository holds them.
* ``write_tiny_clip_file``: one safetensors file with the full CLIPModel keys (config inferred by the loader), or only the
  image tower (``CLIPVisionModelWithProjection``, ComfyUI's clip_vision layout).
* ``write_tiny_dino_folder``: a transformers ``ViTModel`` folder like facebook/dino-vits16.

Sizes differ on every axis so a swapped axis fails loudly. The vocabulary is the real 49408-token CLIP one.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import torch

CLIP_VOCAB = 49408


def _seeded(seed: int):
    torch.manual_seed(seed)


def tiny_clip_config(head_dim64: bool = False):
    """A tiny CLIPConfig. ``head_dim64`` makes widths multiples of 64 (what the single-file loader infers)."""
    from transformers import CLIPConfig

    if head_dim64:
        text = dict(hidden_size=128, num_attention_heads=2, intermediate_size=96, num_hidden_layers=2)
        vision = dict(hidden_size=64, num_attention_heads=1, intermediate_size=80, num_hidden_layers=3)
    else:
        text = dict(hidden_size=40, num_attention_heads=2, intermediate_size=56, num_hidden_layers=2)
        vision = dict(hidden_size=48, num_attention_heads=3, intermediate_size=72, num_hidden_layers=3)
    text.update(vocab_size=CLIP_VOCAB, max_position_embeddings=77, projection_dim=24, hidden_act="quick_gelu")
    vision.update(image_size=32, patch_size=8, projection_dim=24, hidden_act="quick_gelu")
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)


def _perturbed(model, seed: int):
    """``model`` with every parameter moved by 0.05·N(0, 1) from a generator seeded ``seed + 1``: random init gives
    near-identical layer norms, and a tiny metric model should depend on all of its parameters."""
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@functools.lru_cache(maxsize=4)
def tiny_clip_model(seed: int = 0, head_dim64: bool = False):
    """A tiny seeded CLIPModel (cached: treat it as read-only)."""
    from transformers import CLIPModel

    _seeded(seed)
    return _perturbed(CLIPModel(tiny_clip_config(head_dim64)).eval(), seed)


def write_clip_tokenizer_files(folder: Path) -> None:
    """vocab.json + merges.txt of the OpenAI CLIP BPE, built from open_clip's bundled bpe_simple_vocab_16e6.txt.gz."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    tok = SimpleTokenizer()
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    # open_clip names the special tokens <start_of_text>/<end_of_text>; the HF files use OpenAI's names
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in tok.encoder.items()}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "model_max_length": 77, "do_lower_case": True}), encoding="utf-8")


def write_tiny_clip_folder(folder: Path, seed: int = 0, tokenizer_files: bool = True) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tiny_clip_model(seed).save_pretrained(str(folder), safe_serialization=True)
    if tokenizer_files:
        write_clip_tokenizer_files(folder)
    return folder


def write_tiny_clip_file(path: Path, seed: int = 0, vision_only: bool = False) -> Path:
    """A single safetensors file: the full CLIPModel keys, or only the image tower (ComfyUI clip_vision layout)."""
    from safetensors.torch import save_file

    sd = tiny_clip_model(seed, head_dim64=True).state_dict()
    if vision_only:
        sd = {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


@functools.lru_cache(maxsize=2)
def tiny_dino_model(seed: int = 0):
    """A tiny seeded ViTModel like DINO ViT-S/16 (cached: treat it as read-only)."""
    from transformers import ViTConfig, ViTModel

    _seeded(seed)
    config = ViTConfig(hidden_size=36, num_hidden_layers=2, num_attention_heads=3, intermediate_size=52, image_size=32,
                       patch_size=8, qkv_bias=True, layer_norm_eps=1e-6)
    return _perturbed(ViTModel(config, add_pooling_layer=False).eval(), seed)


def write_tiny_dino_folder(folder: Path, seed: int = 0) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tiny_dino_model(seed).save_pretrained(str(folder), safe_serialization=True)
    return folder


def random_views(seed: int, num_views: int = 4, height: int = 40, width: int = 44) -> torch.Tensor:
    """float32 [V, 3, H, W] in 0..1: smooth colour blobs (so resizing keeps them distinct) plus noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_views, 3, 5, 6, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return (0.8 * smooth + 0.2 * torch.rand(num_views, 3, height, width, generator=g)).clamp(0, 1)
