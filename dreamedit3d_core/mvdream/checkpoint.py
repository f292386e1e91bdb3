"""Load the released MVDream checkpoint as users have it, and save a (fine-tuned) model back in that layout.

``load_mvdream`` reads ``sd-v2.1-base-4view.pt`` (a torch pickle, opened with ``weights_only=True``) or a
``.safetensors`` holding the same flat state dict, refuses other kinds of files in one sentence, infers the sizes
from the tensor shapes, maps the LDM names with diffusers' single-file converters (:mod:`.layout`) and checks that
every key of the file is consumed and every parameter filled. ``save_mvdream`` applies the same map backwards, so
a saved model loads again with ``load_mvdream`` (and with MVDream's own ``load_state_dict``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Mapping, Tuple

import torch

from .. import storage
from ..errors import CheckpointError, ConfigError
from ..schedule import schedule_buffers
from ..storage import write_state_dict
from . import layout as L
from .attention import set_multiview_attention
from .model import NUM_VIEWS, MVDreamModel
from .tokenizer import EOT_ID, PAD_ID, MVTokenizer

EXPECTED = "an MVDream checkpoint such as sd-v2.1-base-4view.pt (or a .safetensors of the same state dict)"
_KIND_MESSAGES = {
    "sd2": "a plain Stable Diffusion 2.x checkpoint (no camera_embed.* keys), not MVDream",
    "sd1": "a plain Stable Diffusion 1.x checkpoint (CLIP-L text tower, no camera_embed.* keys), not MVDream",
    "imagedream": "an ImageDream (image-prompt MVDream) checkpoint, which this pack does not support",
    "diffusers": "a diffusers-format UNet (down_blocks.* keys), not the released LDM layout",
    "unet-only": "a bare UNet without the VAE and text tower",
    "unknown": "not a Stable Diffusion/MVDream state dict",
}
SUPPORTED_KINDS = ("mvdream-sd21", "mvdream-sd15")


# ------------------------------------------------------------------------------------------------- reading
def _first_keys(keys, n: int = 5) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def read_state_dict(path: str | os.PathLike) -> "OrderedDict[str, torch.Tensor]":
    """The flat tensor dict of a ``.pt``/``.ckpt``/``.pth`` (safe unpickling) or ``.safetensors`` file, on CPU
    (:func:`~dreamedit3d_core.storage.read_state_dict`, its messages naming what an MVDream file is).

    Raises:
        CheckpointError: missing, empty, truncated, not a checkpoint, or holding Python objects.
    """
    return storage.read_state_dict(path, EXPECTED)


def _key_groups(keys) -> str:
    groups = []
    for key in keys:
        parts = key.split(".")
        if len(parts) < 2:
            continue  # schedule buffers say nothing about the kind of model
        group = ".".join(parts[:2]) + ".*" if len(parts) > 2 else key
        if group not in groups:
            groups.append(group)
    return _first_keys(groups, 6)


# ------------------------------------------------------------------------------------------------- building
@contextlib.contextmanager
def _empty_weights():
    """Build modules with parameters on the meta device when accelerate is installed (no 1.3 B random inits)."""
    try:
        from accelerate import init_empty_weights
    except ImportError:
        yield
        return
    with init_empty_weights(include_buffers=False):
        yield


def _text_name(name: str, model_keys) -> str:
    """diffusers emits ``text_model.``-prefixed names; some transformers versions drop that prefix."""
    if name in model_keys:
        return name
    stripped = name[len("text_model."):] if name.startswith("text_model.") else name
    return stripped if stripped in model_keys else name


def _module_state(module_keys, key_map: Mapping[str, L.Source], state: Mapping[str, torch.Tensor],
                  targets: Mapping[str, torch.Size], rename=None) -> Tuple[Dict[str, torch.Tensor], list, list]:
    """Tensors for one module from the file through ``key_map``; also (missing params, unmapped map entries)."""
    out, unmapped = {}, []
    for name, source in key_map.items():
        param = rename(name) if rename else name
        if param not in targets:
            unmapped.append(source.key)
            continue
        tensor = state[source.key]
        if source.chunk is not None:
            tensor = tensor.chunk(3, dim=0)[source.chunk]
        if tensor.numel() != targets[param].numel():
            raise CheckpointError(f"{source.key} has shape {tuple(state[source.key].shape)} but the model expects "
                                  f"{tuple(targets[param])} for {param}")
        out[param] = tensor.reshape(targets[param])
    missing = [k for k in module_keys if k not in out]
    return out, missing, unmapped


def _fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """Format-independent hash of the weights: key names, shapes and a sample of every tensor's values."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        flat = t.reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)][:64]
        h.update(sample.detach().to(torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]


def load_mvdream(path: str | os.PathLike, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, num_views: int = NUM_VIEWS) -> MVDreamModel:
    """Load a released MVDream checkpoint.

    Args:
        path: ``sd-v2.1-base-4view.pt`` (torch pickle, loaded with ``weights_only=True``), a ``.safetensors`` of
            the same flat state dict, or ``sd-v1.5-4view.pt``.
        device: where the modules go.
        dtype: parameter dtype (fp32 for training; fp16/bf16 for inference on a GPU).
        num_views: views per object the UNet's joint attention groups (MVDream: 4).

    Returns:
        :class:`~.model.MVDreamModel` in eval mode, gradients off.

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint, another kind of model (plain SD 2.x/1.x,
            ImageDream), or its keys do not fill the model exactly (names the file and the first keys).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    path = Path(path)
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"dtype must be a torch.dtype such as torch.float16, got {dtype!r}")
    state = read_state_dict(path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    kind = L.identify(shapes)
    if kind not in SUPPORTED_KINDS:
        raise CheckpointError(f"{path} is {_KIND_MESSAGES[kind]}; expected {EXPECTED} "
                              f"(key groups: {_key_groups(shapes)})")
    try:
        arch = L.infer_architecture(shapes, kind)
    except L.LayoutError as exc:
        raise CheckpointError(f"{path} looks like {kind} but is incomplete ({exc}); the file may be damaged; "
                              f"expected {EXPECTED}") from None
    key_map = L.derive_key_map(shapes, arch)

    with _empty_weights():
        unet = UNet2DConditionModel(**arch.unet.diffusers_config())
        vae = AutoencoderKL(**arch.vae.diffusers_config())
        text_encoder = CLIPTextModel(arch.text.transformers_config())

    passthrough_keys = L.passthrough_keys(shapes, arch)
    missing, unmapped, loaded = [], [], {}
    for name, module in (("unet", unet), ("vae", vae), ("text", text_encoder)):
        targets = {k: v.shape for k, v in module.state_dict().items()}
        # non-persistent buffers (e.g. position_ids in some transformers versions) are not in state_dict
        rename = (lambda n, keys=targets: _text_name(n, keys)) if name == "text" else None
        tensors, miss, extra = _module_state(list(targets), key_map[name], state, targets, rename)
        missing += [f"{name}.{k}" for k in miss]
        unmapped += extra
        loaded[name] = tensors
    used = {s.key for m in key_map.values() for s in m.values()} | set(passthrough_keys)
    unexpected = [k for k in state if k not in used] + unmapped
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} parameters ({_first_keys(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_first_keys(unexpected)})")
        raise CheckpointError(f"{path} does not match the {kind} layout: {'; '.join(parts)}; "
                              f"expected {EXPECTED} as released")

    for name, module in (("unet", unet), ("vae", vae), ("text", text_encoder)):
        module.load_state_dict(loaded[name], strict=True, assign=True)
        torch.nn.Module.to(module, device=device, dtype=dtype)  # skip diffusers' keep-in-fp32 warning wrapper
        module.eval()
        module.requires_grad_(False)
    set_multiview_attention(unet, num_views)

    if "alphas_cumprod" in state:
        alphas_cumprod = state["alphas_cumprod"].to(torch.float64)
    else:  # a state dict without schedule buffers (never a released file): SD's own schedule, as files store it
        alphas_cumprod = schedule_buffers()["alphas_cumprod"].to(torch.float64)
    tokenizer = MVTokenizer(pad_id=PAD_ID if arch.text.kind == "open_clip" else EOT_ID)
    layout = OrderedDict((k, (tuple(v.shape), v.dtype)) for k, v in state.items())
    passthrough = OrderedDict((k, state[k].clone()) for k in passthrough_keys)
    return MVDreamModel(unet, vae, text_encoder, tokenizer, alphas_cumprod, num_views=num_views,
                        model_hash=_fingerprint(state), source=str(path), kind=kind, layout=layout,
                        passthrough=passthrough, key_map=key_map)


# --------------------------------------------------------------------------------------------------- saving
def released_state_dict(model: MVDreamModel) -> "OrderedDict[str, torch.Tensor]":
    """The model's weights in the released key layout (CPU, the file's dtypes), the inverse of the loader's map.

    Placeholder rows added with ``add_tokens`` are not part of the released layout: the token table is cut to the
    file's vocabulary (save the tokens with :func:`dreamedit3d_core.tokens.save_tokens`).
    """
    if not model.file_layout:
        raise ConfigError("this MVDreamModel was not built by load_mvdream, so its released layout is unknown")
    parts: Dict[str, Dict] = {}
    for ldm_key in model.file_layout:
        parts[ldm_key] = {}
    modules = {"unet": model.unet, "vae": model.vae, "text": model.text_encoder}
    for name, module in modules.items():
        params = module.state_dict()
        for diffusers_name, source in model.key_map[name].items():
            param = _text_name(diffusers_name, params) if name == "text" else diffusers_name
            if param not in params:
                raise ConfigError(f"the {name} has no parameter {param} (is it wrapped by an adapter such as LoRA?); "
                                  "fuse or remove adapters before save_mvdream")
            parts[source.key][source.chunk] = params[param]
    out = OrderedDict()
    for ldm_key, (shape, dtype) in model.file_layout.items():
        if ldm_key in model.passthrough:
            out[ldm_key] = model.passthrough[ldm_key].detach().to("cpu", dtype)
            continue
        pieces = parts[ldm_key]
        if not pieces:
            raise ConfigError(f"no parameter of the model maps to {ldm_key}; the model no longer matches its file")
        tensor = torch.cat([pieces[i] for i in range(3)], dim=0) if None not in pieces else pieces[None]
        tensor = tensor.detach().to("cpu", dtype)
        if ldm_key.endswith("token_embedding.weight") and tensor.shape[0] > shape[0]:
            tensor = tensor[: shape[0]].clone()  # drop added placeholder rows (clone: torch.save keeps whole storages)
        out[ldm_key] = tensor.reshape(shape).contiguous()
    return out


def save_mvdream(model: MVDreamModel, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``model`` in the full released layout (``.safetensors``, or a torch pickle for ``.pt``/``.ckpt``/``.pth``).

    The write is atomic and never replaces an existing file unless ``overwrite``. The result loads with
    :func:`load_mvdream` (bit-identical parameters) and with MVDream's own ``LatentDiffusionInterface``.
    """
    path = Path(path)
    if path.suffix not in (".safetensors", ".pt", ".ckpt", ".pth"):
        raise ConfigError(f"cannot tell the format of {path.name}: use a .safetensors or .pt file name")
    return write_state_dict(released_state_dict(model), path, overwrite=overwrite)
