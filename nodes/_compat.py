"""The one place the pack touches ComfyUI: ``comfy*``, ``comfy_api`` and ``folder_paths`` are imported here only.

Imports and feature detection, nothing else: the V3 node API (``comfy_api.latest.io``/``ui``, ``ComfyExtension``
where the host has it), the core MESH class (it moved between releases), optional V3 features (file-upload combos,
advanced inputs), devices and VRAM management, progress bars and interruption, and the host's sampling objects.
What the pack builds on these lives beside its users: folders and sandboxed file names in ``nodes/folders.py`` and
``nodes/paths.py``, progress and previews in ``nodes/progress.py``, MESH conversion in ``nodes/sockets.py``.
Runs on the CI floor (ComfyUI 0.3.75) and newer hosts.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch

import comfy.model_management as _mm
import comfy.utils as _cu
import folder_paths  # noqa: F401  (re-exported for nodes/folders.py)
from comfy_api.latest import io, ui  # noqa: F401  (re-exported for the node modules)

from ..dreamedit3d_core.errors import CheckpointError, ConfigError

try:  # the V3 extension entry point (comfy_entrypoint); hosts without it register NODE_CLASS_MAPPINGS only
    from comfy_api.latest import ComfyExtension
except ImportError:  # pragma: no cover - older hosts
    ComfyExtension = None

# the file-upload flag of combos (ComfyUI 0.3.75: UploadType.model = "file_upload"); None on a host without it
UPLOAD_FILE = getattr(getattr(io, "UploadType", None), "model", None)


def advanced(inp: Any) -> Any:
    """Mark a V3 input as advanced (folded away in the node) where the host knows the flag; else the flag rides in
    the input's extra options, which older frontends ignore. Returns ``inp``."""
    if "advanced" in inspect.signature(type(inp).__init__).parameters:
        inp.advanced = True
    else:
        inp.extra_dict = dict(getattr(inp, "extra_dict", None) or {}, advanced=True)
    return inp


def node_input_type_matches(received: str, expected: Any) -> bool:
    """ComfyUI's own rule for whether an output of type ``received`` may feed an input of type ``expected``."""
    from comfy_execution.validation import validate_node_input

    return bool(validate_node_input(received, expected))


# --------------------------------------------------------------------------------------------- devices and VRAM
def compute_device() -> torch.device:
    return _mm.get_torch_device()


def intermediate_device() -> torch.device:
    return _mm.intermediate_device()


def offload_device() -> torch.device:
    return _mm.unet_offload_device()


def free_memory_for(num_bytes: int, device: torch.device) -> None:
    _mm.free_memory(num_bytes, device)


class _Holder(torch.nn.Module):
    """Holds a module for ModelPatcher, which sets ``.device`` on what it manages (diffusers models make it read-only)."""

    def __init__(self, module: torch.nn.Module, device: torch.device):
        super().__init__()
        self.inner = module
        self.device = device


def managed_load(module: torch.nn.Module):
    """Hand ``module`` to ComfyUI's model management for the duration of a node's work; returns the ModelPatcher.

    ComfyUI frees room (offloading its other models) and loads the whole module on the compute device
    (``force_full_load``: our modules have no ComfyUI low-VRAM casting, so a partial load would split devices).
    Keep the returned patcher alive while the module works; ComfyUI holds it weakly, so nothing leaks afterwards.
    On CPU this costs next to nothing.
    """
    import comfy.model_patcher

    device = next(module.parameters()).device
    patcher = comfy.model_patcher.ModelPatcher(_Holder(module, device), load_device=compute_device(),
                                               offload_device=offload_device())
    _mm.load_models_gpu([patcher], force_full_load=True)
    return patcher


# --------------------------------------------------------------------------------------------- progress / interrupt
def progress_bar(total: int, node_id: Any = None):
    """The host's progress bar for a node (websocket ``progress`` events and previews)."""
    return _cu.ProgressBar(max(int(total), 1), node_id=node_id)


def throw_if_interrupted() -> None:
    _mm.throw_exception_if_processing_interrupted()


def sd_latent_rgb_factors() -> list:
    """The SD1/SD2 latent -> RGB factors [4][3] ComfyUI's cheap previews use."""
    import comfy.latent_formats

    return comfy.latent_formats.SD15().latent_rgb_factors


# --------------------------------------------------------------------------------------------- sampling
def make_model_sampling(alphas_cumprod: torch.Tensor):
    """ComfyUI's eps model-sampling object for a checkpoint's own schedule.

    Core samplers read ``sigma_min/sigma_max``, ``noise_scaling``, ``percent_to_sigma`` etc. from it; the sigmas are
    ``sqrt((1 - alphas_cumprod) / alphas_cumprod)`` of the checkpoint's ``alphas_cumprod`` buffer [1000].
    """
    import comfy.model_sampling as ms

    class MVDreamModelSampling(ms.ModelSamplingDiscrete, ms.EPS):
        pass

    sampling = MVDreamModelSampling()
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten().cpu()
    if ac.numel() < 2 or not bool(torch.isfinite(ac).all()) or float(ac.min()) <= 0 or float(ac.max()) >= 1:
        raise CheckpointError(f"the checkpoint's alphas_cumprod ({ac.numel()} values) is not a valid diffusion schedule")
    sampling.set_sigmas(((1 - ac) / ac) ** 0.5)
    sampling.num_timesteps = int(ac.numel())
    return sampling


def calculate_sigmas(model_sampling, scheduler: str, steps: int) -> torch.Tensor:
    import comfy.samplers

    if scheduler not in scheduler_names():
        raise ConfigError(f"unknown scheduler {scheduler!r}: use one of {scheduler_names()}")
    return comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps).cpu()


def scheduler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.SCHEDULER_NAMES)


# --------------------------------------------------------------------------------------------- 3D
def core_mesh_class() -> type:
    """ComfyUI's MESH class, wherever the running version keeps it."""
    try:
        from comfy_api.latest import Types

        return Types.MESH
    except (ImportError, AttributeError):
        pass
    try:
        from comfy_api.latest._util import MESH

        return MESH
    except ImportError:
        from comfy_extras.nodes_hunyuan3d import MESH

        return MESH


# --------------------------------------------------------------------------------------------- moved names
#: names that lived here before the boundary was cut down, and their new homes (``from ._compat import X`` keeps
#: working for modules not yet updated, e.g. nodes/lifting.py)
_MOVED = {
    **{name: ".folders" for name in (
        "FOLDER_MVDREAM", "FOLDER_TOKENS", "FOLDER_SAMS", "FOLDER_EMBEDDINGS", "FOLDER_DINO", "FOLDER_LGM",
        "MODEL_EXTENSIONS", "TOKEN_EXTENSIONS", "SAM_EXTENSIONS", "register_folders", "model_files", "model_path",
        "model_folder", "embeddings_folder", "output_folder", "input_folder", "save_target", "output_relative",
        "list_input_files", "resolve_input_file", "resolve_output_file")},
    **{name: ".progress" for name in ("ComfyProgress", "latent_preview_rgb")},
    **{name: ".sockets" for name in ("core_mesh", "core_mesh_batch", "mesh_from_core")},
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name], __package__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
