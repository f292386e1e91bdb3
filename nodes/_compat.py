"""The one place the pack touches ComfyUI: ``comfy*``, ``comfy_api`` and ``folder_paths`` are imported here only.

Imports and feature detection, nothing else: the V3 node API (``comfy_api.latest.io``/``ui``, ``ComfyExtension``
where the host has it), the core MESH class (it moved between releases), optional V3 features (file-upload combos,
advanced inputs), devices and VRAM management, progress bars and interruption, and the host's sampling objects.
What the pack builds on these lives beside its users: folders and sandboxed file names in ``nodes/folders.py`` and
``nodes/paths.py``, progress and previews in ``nodes/progress.py``, MESH conversion in ``nodes/sockets.py``.
Runs on the CI floor (ComfyUI 0.3.75) and newer hosts.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import weakref
from typing import Any

import torch

import comfy.model_management as _mm
import comfy.utils as _cu
import folder_paths  # noqa: F401  (re-exported for nodes/folders.py)
from comfy_api.latest import io, ui  # noqa: F401  (re-exported for the node modules)

from ..dreamedit3d_core.errors import CheckpointError, ConfigError
from ..dreamedit3d_core.personalize.autograd import MODEL_PARTS  # the parts of an MVDreamModel, each registered on its own

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


#: where ComfyUI offloads each part (its own choice for UNets, VAEs and text encoders)
_OFFLOAD = {"unet": "unet_offload_device", "vae": "vae_offload_device", "text_encoder": "text_encoder_offload_device"}
#: the attribute of a module naming its patcher (a weak reference: the module must not keep its patcher alive)
_PATCHER_REF = "_dreamedit3d_comfy_patcher"


def _whole_module_patcher_class():
    """ModelPatcher for modules without ComfyUI's weight casting: offloaded whole or not at all.

    ComfyUI frees room by partially unloading models (moving some submodules to the offload device); its own models
    stream those weights back while they run, ours cannot, so a partial unload would leave a module split across
    devices (a device-mismatch error in the next node that uses it). Refusing it (0 bytes freed) makes ComfyUI
    unload the module whole instead.
    """
    global _WholeModulePatcher
    if _WholeModulePatcher is None:
        import comfy.model_patcher

        class WholeModulePatcher(comfy.model_patcher.ModelPatcher):
            def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
                return 0

        _WholeModulePatcher = WholeModulePatcher
    return _WholeModulePatcher


_WholeModulePatcher = None


def patcher_for(module: torch.nn.Module, part: str = "unet"):
    """The ModelPatcher ComfyUI manages ``module`` through: the one already made for this module object, else a new one.

    One patcher per module object, so a module shared by several model objects (the VAE a training node's output
    shares with the loader's model) is counted and moved once. The module names its patcher only weakly; whoever
    holds the module for a node's output holds the patcher too (:func:`register_model`), and ComfyUI's own list holds
    it weakly, so both go when the output does.
    """
    ref = module.__dict__.get(_PATCHER_REF)
    patcher = ref() if ref is not None else None
    if patcher is not None and patcher.model.inner is module:
        return patcher
    device = next(module.parameters()).device
    offload = getattr(_mm, _OFFLOAD.get(part, "unet_offload_device"), _mm.unet_offload_device)()
    patcher = _whole_module_patcher_class()(_Holder(module, device), load_device=compute_device(),
                                            offload_device=offload)
    module.__dict__[_PATCHER_REF] = weakref.ref(patcher)
    return patcher


def register_model(model) -> dict:
    """Register the UNet, VAE and text tower of an MVDreamModel with ComfyUI's model management; returns the patchers.

    The model object keeps them (``model.comfy_patchers``), so ComfyUI can offload each part while the model is
    cached and forgets it when the model is dropped. Parts shared with another model object keep their patcher.
    """
    patchers = {part: patcher_for(getattr(model, part), part) for part in MODEL_PARTS}
    model.comfy_patchers = patchers
    return patchers


def keeps_models_loaded() -> bool:
    """False under ``--lowvram``/``--novram``: our modules then go back to their offload device after each node.

    ComfyUI's own models stream their weights from the CPU in those modes (partial loads); ours cannot (no ComfyUI
    weight casting), so they are loaded whole for a node's work only, as ComfyUI's own nodes treat such models.
    """
    state = getattr(getattr(_mm, "vram_state", None), "name", "NORMAL_VRAM")
    return state not in ("LOW_VRAM", "NO_VRAM")


def _load_whole(patchers: list, memory_required: float = 0) -> None:
    """Load each module whole on the compute device through ComfyUI (it unloads other models to make room).

    ``force_full_load``: a partial load would split a module across devices. Under --novram ComfyUI loads 0 bytes of
    any model (its own stream their weights); there room is made and the modules are loaded whole, as ComfyUI does
    for models without weight streaming, and registered so ComfyUI can offload them again.
    """
    no_vram = getattr(getattr(_mm, "vram_state", None), "name", "") == "NO_VRAM"
    if not no_vram or not all(hasattr(_mm, n) for n in ("LoadedModel", "current_loaded_models", "free_memory")):
        _mm.load_models_gpu(patchers, memory_required=memory_required, force_full_load=True)
        return
    device = compute_device()
    need = sum(p.model_size() - p.loaded_size() for p in patchers)
    _mm.free_memory(need * 1.1 + memory_required + _mm.minimum_inference_memory(), device,
                    keep_loaded=[_mm.LoadedModel(p) for p in patchers])
    for patcher in patchers:
        loaded = _mm.LoadedModel(patcher)
        if loaded in _mm.current_loaded_models:
            _mm.current_loaded_models.remove(loaded)
        loaded.model_load(0)
        _mm.current_loaded_models.insert(0, loaded)


def unload(patchers) -> None:
    """Offload these patchers' modules now (ComfyUI's own unload: weights to their offload device)."""
    targets = [p for p in patchers if p is not None]
    for loaded in list(getattr(_mm, "current_loaded_models", [])):
        if any(loaded.model is p for p in targets):
            loaded.model_unload()
            _mm.current_loaded_models.remove(loaded)
    _mm.soft_empty_cache()


def free_all_but(patchers) -> None:
    """Ask ComfyUI to unload every other model from the compute device (as its own training node does before training)."""
    if compute_device().type == "cpu":
        return
    keep = [_mm.LoadedModel(p) for p in patchers]
    _mm.free_memory(1e30, compute_device(), keep_loaded=keep)


def load_model(model, parts=MODEL_PARTS, exclusive: bool = False, memory_required: float = 0) -> list:
    """Load ``parts`` of an MVDreamModel whole on the compute device through ComfyUI (registering the model with
    :func:`register_model`); returns their patchers. ComfyUI makes room first, and may offload them later.

    ``exclusive``: first unload every other model from the device (training: the optimizer needs the room).
    """
    patchers = register_model(model)
    wanted = [patchers[part] for part in parts]
    if exclusive:
        free_all_but(wanted)
    _load_whole(wanted, memory_required)
    return wanted


@contextlib.contextmanager
def model_on_compute_device(model, parts=MODEL_PARTS, exclusive: bool = False, memory_required: float = 0):
    """:func:`load_model` for a node's work; under --lowvram/--novram the parts are offloaded again when the work
    ends (also on an error or interruption). Yields the patchers."""
    wanted = load_model(model, parts, exclusive, memory_required)
    try:
        yield wanted
    finally:
        if not keeps_models_loaded():
            unload(wanted)


def managed_load(module: torch.nn.Module):
    """Hand ``module`` to ComfyUI's model management for the duration of a node's work; returns the ModelPatcher.

    ComfyUI frees room (offloading its other models) and loads the whole module on the compute device. The patcher
    is the module's own (:func:`patcher_for`): a module of a registered model is the model ComfyUI already knows.
    Keep the returned patcher alive while the module works. On CPU this costs next to nothing. (Nodes that can
    should use :func:`model_on_compute_device`, which also honours --lowvram/--novram after the work.)
    """
    patcher = patcher_for(module)
    _load_whole([patcher])
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
