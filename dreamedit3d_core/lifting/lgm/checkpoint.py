"""Read the published LGM weights as they are, save in the same layout, and find LGM files in a folder.

The released files (``ashawkey/LGM`` on the model hub, ``../shared/design/lgm.md``) are flat fp16 safetensors whose keys
start with ``unet.`` and ``conv.``. ``model_fp16_fixrot.safetensors`` goes with per-Gaussian quaternion normalisation; the
older ``model_fp16.safetensors`` predates that fix and is run with the normalisation it was trained with (see
:class:`~.network.RotationNormalization`). The network's shape is read from the tensor shapes, so smaller files in the
same layout (tests, benchmarks) load the same way.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Optional

import torch

from ...errors import CheckpointError, ConfigError, short_message
from ...storage import read_state_dict, save_safetensors
from .network import LGM_BIG, LGMConfig, LGMNetwork, RotationNormalization

EXPECTED = "LGM weights such as model_fp16_fixrot.safetensors (ashawkey/LGM)"
RELEASED_FILE = "model_fp16_fixrot.safetensors"
LEGACY_FILE = "model_fp16.safetensors"
#: Our own metadata keys (the released files carry none of them).
META_INPUT_SIZE = "dreamedit3d.lgm.input_size"
META_ROTATION = "dreamedit3d.lgm.rotation_normalization"

_LEVEL = re.compile(r"^unet\.(down_blocks|up_blocks)\.(\d+)\.")
_FOREIGN_HINTS = (
    ("model.diffusion_model.", "a Stable Diffusion / MVDream checkpoint (model.diffusion_model.* keys)"),
    ("first_stage_model.", "a Stable Diffusion / MVDream checkpoint (first_stage_model.* keys)"),
    ("cond_stage_model.", "a Stable Diffusion / MVDream checkpoint (cond_stage_model.* keys)"),
    ("down_blocks.", "a diffusers UNet (down_blocks.* keys without the unet. prefix)"),
    ("encoder.", "a VAE or image encoder (encoder.* keys)"),
)


def _describe_foreign(keys) -> str:
    for prefix, what in _FOREIGN_HINTS:
        if any(k.startswith(prefix) for k in keys):
            return what
    groups = sorted({k.split(".")[0] for k in keys})
    return f"not an LGM state dict (top-level key groups {groups[:6]})"


def _open_header(path: Path):
    """(keys, metadata) of a safetensors file without reading its tensors."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; expected {EXPECTED}")
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path.name} is a {path.suffix or 'suffix-less'} file, not .safetensors: LGM is "
                              f"published as {RELEASED_FILE}; put that file in models/lgm")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download did not finish; expected {EXPECTED}")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys()), dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError types
        raise CheckpointError(f"{path.name} is not a readable .safetensors file ({short_message(exc)}): it may be truncated; "
                              f"download it again; expected {EXPECTED}") from None


def _check_lgm_keys(path: Path, keys) -> None:
    if not keys:
        raise CheckpointError(f"{path.name} holds no tensors; expected {EXPECTED}")
    if not any(k.startswith("unet.conv_in.") for k in keys) or "conv.weight" not in keys:
        raise CheckpointError(f"{path.name} is {_describe_foreign(keys)}, not LGM (no unet.conv_in / conv keys); "
                              f"expected {EXPECTED} in models/lgm")


def infer_config(state: Mapping[str, torch.Tensor], input_size: int = LGM_BIG.input_size) -> LGMConfig:
    """The U-Net shape a state dict in the released layout was made for (widths from tensor shapes, attention from keys).

    Raises:
        CheckpointError: levels missing or numbered with gaps.
    """
    levels = {"down_blocks": {}, "up_blocks": {}}
    for key in state:
        m = _LEVEL.match(key)
        if m:
            levels[m.group(1)].setdefault(int(m.group(2)), []).append(key)
    down, up = levels["down_blocks"], levels["up_blocks"]
    if not down or not up or sorted(down) != list(range(len(down))) or sorted(up) != list(range(len(up))):
        raise CheckpointError(f"LGM state dict has encoder levels {sorted(down)} and decoder levels {sorted(up)}; "
                              "expected consecutive levels from 0 (a damaged or foreign file)")

    def width(kind: str, i: int) -> int:
        key = f"unet.{kind}.{i}.nets.0.conv1.weight"
        if key not in state:
            raise CheckpointError(f"LGM state dict lacks {key}; the file is damaged or not LGM; expected {EXPECTED}")
        return int(state[key].shape[0])

    def has_attention(kind: str, i: int) -> bool:
        return any(".attns." in k for k in levels[kind][i])

    layers = len({k.split(".")[4] for k in down[0] if k.split(".")[3] == "nets"})
    return LGMConfig(
        down_channels=tuple(width("down_blocks", i) for i in range(len(down))),
        down_attention=tuple(has_attention("down_blocks", i) for i in range(len(down))),
        mid_attention=any(k.startswith("unet.mid_block.attns.") for k in state),
        up_channels=tuple(width("up_blocks", i) for i in range(len(up))),
        up_attention=tuple(has_attention("up_blocks", i) for i in range(len(up))),
        input_size=int(input_size),
        layers_per_block=layers,
    )


def rotation_normalization_for(path: str | os.PathLike, metadata: Optional[Mapping[str, str]] = None
                               ) -> RotationNormalization:
    """Which quaternion normalisation a weights file goes with.

    Our own files record it in their metadata. The released files are told apart by name: ``model_fp16.safetensors``
    (before the fix) normalises across Gaussians; ``model_fp16_fixrot.safetensors`` and any other name use the current
    per-Gaussian normalisation (rename a copy of the old file, or pass ``rotation_normalization``, to override).
    """
    meta = dict(metadata or {})
    if META_ROTATION in meta:
        try:
            return RotationNormalization(meta[META_ROTATION])
        except ValueError:
            raise CheckpointError(f"{Path(path).name}: unknown {META_ROTATION} {meta[META_ROTATION]!r} in its "
                                  f"metadata; expected one of {[r.value for r in RotationNormalization]}") from None
    if Path(path).name == LEGACY_FILE:
        return RotationNormalization.ACROSS_GAUSSIANS
    return RotationNormalization.PER_GAUSSIAN


def as_rotation_normalization(value) -> RotationNormalization:
    try:
        return RotationNormalization(value)
    except ValueError:
        raise ConfigError(f"rotation_normalization must be one of {[r.value for r in RotationNormalization]}, got "
                          f"{value!r}") from None


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    names = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    resolved = names.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if resolved not in (torch.float32, torch.float16, torch.bfloat16):
        raise ConfigError(f"LGM dtype must be float32, float16 or bfloat16 (or 'auto'), got {dtype!r}")
    if device.type == "cpu" and resolved != torch.float32:
        raise ConfigError(f"LGM runs in float32 on the CPU, got {dtype!r}; use float32 there (fp16/bf16 need CUDA)")
    return resolved


def load_lgm(path: str | os.PathLike, device: str | torch.device = "cpu", dtype=None,
             rotation_normalization: Optional[str] = None) -> LGMNetwork:
    """Load LGM weights as published (or saved by :func:`save_lgm`) into an :class:`LGMNetwork` in eval mode.

    Args:
        path: the ``.safetensors`` file.
        device: where the network runs.
        dtype: float32 / float16 / bfloat16 (CUDA), float32 (CPU); None or "auto": float16 on CUDA, float32 otherwise.
        rotation_normalization: override :func:`rotation_normalization_for` ("per_gaussian" / "across_gaussians").

    Raises:
        CheckpointError: missing, empty, truncated or foreign file (SD/MVDream, ...), keys missing or left over, shapes
            that do not fit the inferred network.
        ConfigError: a dtype the device cannot run.
    """
    path = Path(path)
    device = torch.device(device)
    dtype = resolve_dtype(dtype, device)
    if rotation_normalization is not None:
        as_rotation_normalization(rotation_normalization)
    keys, metadata = _open_header(path)
    _check_lgm_keys(path, keys)
    state = read_state_dict(path, EXPECTED)
    input_size = int(metadata.get(META_INPUT_SIZE, LGM_BIG.input_size))
    try:
        config = infer_config(state, input_size)
    except ConfigError as exc:
        raise CheckpointError(f"{path.name}: the tensor shapes give no valid LGM network ({exc})") from None
    rot = (as_rotation_normalization(rotation_normalization) if rotation_normalization is not None
           else rotation_normalization_for(path, metadata))
    with torch.device("meta"):
        net = LGMNetwork(config, rot)
    fill_network(net, state, path.name)
    return net.to(device=device, dtype=dtype).eval().requires_grad_(False)


def fill_network(net: LGMNetwork, state: Mapping[str, torch.Tensor], name: str = "state dict") -> None:
    """Copy every tensor of ``state`` into ``net`` (which may live on the meta device), checking keys and shapes.

    Raises:
        CheckpointError: a key missing or left over, or a shape that does not fit.
    """
    expected = net.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{name} does not match the LGM network {net.config.down_channels}/"
                              f"{net.config.up_channels}: {len(missing)} keys missing (e.g. {missing[:3]}), "
                              f"{len(unexpected)} left over (e.g. {unexpected[:3]}); the file is damaged or another "
                              f"model; expected {EXPECTED}")
    wrong = [f"{k} {list(state[k].shape)} vs {list(p.shape)}" for k, p in expected.items() if state[k].shape != p.shape]
    if wrong:
        raise CheckpointError(f"{name}: {len(wrong)} tensors have the wrong shape ({wrong[:2]}); the file is damaged "
                              f"or another model; expected {EXPECTED}")
    net.load_state_dict({k: v for k, v in state.items()}, strict=True, assign=True)


def released_state_dict(net: LGMNetwork) -> "OrderedDict[str, torch.Tensor]":
    """The network's tensors under the released key names, on the CPU, in their current dtype."""
    return OrderedDict((k, v.detach().to("cpu").contiguous()) for k, v in net.state_dict().items())


def save_lgm(net: LGMNetwork, path: str | os.PathLike, dtype: Optional[torch.dtype] = None,
             overwrite: bool = False) -> Path:
    """Write ``net`` in the released layout (loadable by :func:`load_lgm` and by the original code), atomically.

    ``dtype`` converts the tensors (the released files are float16); None keeps them as they are. The input size and
    rotation normalisation are recorded in the metadata. Never overwrites an existing file unless ``overwrite``.
    """
    state = released_state_dict(net)
    if dtype is not None:
        state = OrderedDict((k, v.to(dtype)) for k, v in state.items())
    meta = {"format": "pt", META_INPUT_SIZE: str(net.config.input_size),
            META_ROTATION: net.rotation_normalization.value}
    return save_safetensors(path, state, metadata=meta, overwrite=overwrite)


def is_lgm_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a readable safetensors file in LGM's key layout (reads the header only)."""
    try:
        keys, _ = _open_header(Path(path))
        _check_lgm_keys(Path(path), keys)
    except CheckpointError:
        return False
    return True


def list_lgm_files(folder: str | os.PathLike) -> list:
    """Names (relative to ``folder``, with ``/``, sorted) of the LGM weight files in it and its subfolders.

    Files that are not LGM (other models, truncated downloads) are left out; symlinks are not followed out of the folder.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    found = []
    real_root = root.resolve()
    for p in sorted(root.rglob("*.safetensors")):
        if not p.resolve().is_relative_to(real_root):
            continue
        if is_lgm_file(p):
            found.append(p.relative_to(root).as_posix())
    return found
