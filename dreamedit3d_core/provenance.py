"""Provenance: what made a file we write (prompt, seed, sampler, sigmas, model and token hashes, pack version).

One record per written file, a plain JSON-able dict (:func:`build_record`). It goes

* into a PNG as a ``tEXt``/``iTXt`` chunk named :data:`PNG_KEY` (:func:`save_png`, :func:`read_png_provenance`), next to
  any other chunks the caller passes (ComfyUI's own ``prompt`` / ``workflow`` chunks, so a dropped PNG reopens its graph);
* into a GLB's ``asset.extras`` under :data:`GLB_KEY` (through :func:`dreamedit3d_core.lifting.export.export_mesh`'s
  ``extras``), where :func:`dreamedit3d_core.lifting.export.read_provenance` finds it.

:func:`read_file_provenance` reads either kind back. Files are written atomically and never over an existing file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from .cameras import VIEW_NAMES
from .errors import AssetError, ConfigError
from .storage import save_new_bytes

#: PNG text chunk / GLB ``asset.extras`` key holding the record.
PNG_KEY = "dreamedit3d"
GLB_KEY = "dreamedit3d"
GENERATOR = "DreamEdit3D"
#: Our view order (MVDream azimuths 90, 180, 270, 0).


def _plain(value: Any) -> Any:
    """``value`` as JSON types (tensors/arrays -> lists of floats, tuples -> lists, paths -> str)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.ndim else _plain(value.item())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer, bool, int)) or value is None or isinstance(value, str):
        return value.item() if isinstance(value, np.integer) else value
    return str(value)


def build_record(
    prompt: Optional[str] = None,
    negative_prompt: Optional[str] = None,
    seed: Optional[int] = None,
    sampler: Optional[str] = None,
    sigmas: Optional[Sequence[float] | torch.Tensor] = None,
    cfg: Optional[float] = None,
    base_model_hash: Optional[str] = None,
    token_files: Optional[Mapping[str, str]] = None,
    **extra: Any,
) -> dict:
    """A provenance record: the given facts (None ones left out) + generator name and pack version.

    Args:
        prompt: the positive prompt as encoded (suffixes included); negative_prompt: the CFG negative text.
        seed: initial-noise seed; sampler: core sampler name (e.g. "dpmpp_2m"); sigmas: the noise levels stepped
            through, float [S+1] (stored as a list of floats, exactly); cfg: guidance scale.
        base_model_hash: ``MVDreamModel.model_hash`` of the checkpoint.
        token_files: token file name -> sha256 hex of the files the tokens were loaded from.
        extra: more JSON-able facts (tokens, batch index, view name, steps, ...).

    Raises:
        ConfigError: a value that cannot be stored as JSON (NaN, inf).
    """
    from . import __version__

    record = {"generator": GENERATOR, "version": __version__}
    given = dict(prompt=prompt, negative_prompt=negative_prompt, seed=seed, sampler=sampler, sigmas=sigmas, cfg=cfg,
                 base_model_hash=base_model_hash, token_files=token_files, **extra)
    record.update({k: _plain(v) for k, v in given.items() if v is not None})
    try:
        json.dumps(record, allow_nan=False)
    except ValueError as err:
        raise ConfigError(f"provenance holds a value JSON cannot store ({err}); check the sigmas and cfg") from None
    return record


def item_record(record: Mapping[str, Any], index: int, num_views: int = 4) -> dict:
    """The record of one edit of a batch: ``prompt`` = its own line of ``prompts``, plus ``edit`` index and count.

    ``record`` may hold ``prompts`` (one per edit); an index past them keeps the record's own ``prompt``.
    """
    out = {k: v for k, v in record.items() if k != "prompts"}
    prompts = list(record.get("prompts") or [])
    if prompts:
        out["prompt"] = prompts[index] if index < len(prompts) else out.get("prompt")
        out["edit_count"] = len(prompts)
    out["edit_index"] = int(index)
    return {k: v for k, v in out.items() if v is not None}


def view_record(record: Mapping[str, Any], image_index: int, num_views: int = 4) -> dict:
    """The record of image ``image_index`` of a view-contiguous batch: its edit's record + ``view`` name and index."""
    edit, view = divmod(int(image_index), int(num_views))
    out = item_record(record, edit, num_views)
    out["view"] = VIEW_NAMES[view] if num_views == len(VIEW_NAMES) else f"view {view}"
    out["view_index"] = view
    return out


# ------------------------------------------------------------------------------------------------------ PNG
def _png_bytes(image: np.ndarray, record: Mapping[str, Any], chunks: Optional[Mapping[str, str]], compress: int) -> bytes:
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, text in (chunks or {}).items():
        if key == PNG_KEY:
            raise ConfigError(f"extra PNG chunk {key!r} would hide the provenance chunk; use another name")
        info.add_text(str(key), text if isinstance(text, str) else json.dumps(_plain(text)))
    info.add_text(PNG_KEY, json.dumps(dict(record), allow_nan=False, separators=(",", ":")))
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=info, compress_level=int(compress))
    return buf.getvalue()


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An image float [H,W,3] / [3,H,W] in 0..1 (or uint8 [H,W,3]) -> uint8 [H,W,3] (rounded, clamped)."""
    arr = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ConfigError(f"an image must be [H, W, 3] or [3, H, W], got shape {list(arr.shape)}")
    arr = arr[..., :3] if arr.shape[-1] != 1 else np.repeat(arr, 3, axis=-1)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_png(image: torch.Tensor | np.ndarray, path, record: Mapping[str, Any],
             chunks: Optional[Mapping[str, str]] = None, compress: int = 4) -> Path:
    """Write ``image`` as a PNG carrying ``record`` in its :data:`PNG_KEY` text chunk; never over an existing file.

    Args:
        image: float [H,W,3] or [3,H,W] in 0..1, or uint8 [H,W,3].
        path: file path (".png" added when missing); a taken name gets ``_00001``, ``_00002``, ...
        record: the provenance (:func:`build_record`).
        chunks: more text chunks (e.g. ComfyUI's ``prompt`` and ``workflow``): str, or JSON-able values.
        compress: zlib level 0..9.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        path = path.with_name(path.name + ".png")
    return save_new_bytes(path, _png_bytes(to_uint8(image), record, chunks, compress))


def read_png_text(path) -> dict:
    """All text chunks of a PNG (name -> str)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path} does not exist")
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                raise AssetError(f"{path.name} is a {im.format} image, not a PNG")
            im.load()
            return {str(k): v for k, v in getattr(im, "text", {}).items() if isinstance(v, str)}
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise AssetError(f"{path.name} is not a readable PNG ({err})") from None


def read_png_provenance(path) -> dict:
    """The record :func:`save_png` stored in a PNG; {} when it holds none.

    Raises:
        AssetError: missing or unreadable file, or a damaged provenance chunk.
    """
    text = read_png_text(path).get(PNG_KEY)
    if text is None:
        return {}
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise AssetError(f"{Path(path).name} has a damaged {PNG_KEY!r} chunk: {err}") from None
    return record if isinstance(record, dict) else {"value": record}


# ------------------------------------------------------------------------------------------------------ any file
def glb_extras(record: Mapping[str, Any], **more: Any) -> dict:
    """The ``extras`` for :func:`~dreamedit3d_core.lifting.export.export_mesh`: the record under :data:`GLB_KEY`."""
    return {GLB_KEY: dict(record), **{k: _plain(v) for k, v in more.items()}}


PROVENANCE_SUFFIXES = (".png", ".glb", ".obj")


def read_file_provenance(path) -> dict:
    """The DreamEdit3D record of a PNG, GLB or OBJ we wrote; {} when the file holds none.

    Files written by others: a GLB's whole ``asset.extras`` (e.g. ComfyUI SaveGLB's prompt) and a PNG's text chunks
    are returned under ``"other"`` so nothing the file says is hidden.

    Raises:
        AssetError: missing, unreadable or unsupported file.
    """
    from .lifting.export import read_provenance

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PROVENANCE_SUFFIXES:
        raise AssetError(f"{path.name}: provenance is read from {list(PROVENANCE_SUFFIXES)} files only")
    if suffix == ".png":
        record = read_png_provenance(path)
        if record:
            return record
        other = read_png_text(path)
    else:
        extras = read_provenance(path)
        if isinstance(extras.get(GLB_KEY), dict):
            return dict(extras[GLB_KEY])
        other = extras
    return {"other": other} if other else {}
