"""The one place the pack touches ComfyUI: ``comfy*``, ``comfy_api`` and ``folder_paths`` are imported here only.

Everything host-specific is feature-detected so the pack runs on the CI floor (ComfyUI 0.3.75) and on newer hosts:
the V3 node API (``comfy_api.latest.io``), the core MESH class (moved between releases), model folders, progress and
interruption, devices, the eps model-sampling object the sampler bridge hands to core samplers, VRAM management, and
safe resolution of files the user picks from the input folder.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

import comfy.model_management as _mm
import comfy.utils as _cu
import folder_paths
from comfy_api.latest import io, ui  # noqa: F401  (re-exported for the node modules)

from ..dreamedit3d_core.errors import AssetError, CheckpointError, ConfigError

# --------------------------------------------------------------------------------------------- model folders
MODEL_EXTENSIONS = {".pt", ".safetensors", ".ckpt"}
TOKEN_EXTENSIONS = {".safetensors"}
SAM_EXTENSIONS = {".pth", ".pt", ".safetensors"}
FOLDER_MVDREAM = "mvdream"  # MVDream checkpoints (released .pt, or our .safetensors, fine-tuned ones too)
FOLDER_TOKENS = "mvdream_tokens"  # our learned-token files (token strings -> vectors + base model hash)
FOLDER_SAMS = "sams"  # Segment Anything checkpoints, as ComfyUI users keep them
FOLDER_EMBEDDINGS = "embeddings"  # ComfyUI's textual-inversion folder (core CLIPTextEncode reads it)


def _register_folder(name: str, extensions: set) -> None:
    """Register ``models/<name>`` (users may add more paths with a ``<name>:`` key in extra_model_paths.yaml)."""
    folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name), is_default=False)
    paths, exts = folder_paths.folder_names_and_paths[name]
    if not exts:  # a new key gets an empty extension set, which would list every file
        folder_paths.folder_names_and_paths[name] = (paths, set(extensions))


def register_folders() -> None:
    _register_folder(FOLDER_MVDREAM, MODEL_EXTENSIONS)
    _register_folder(FOLDER_TOKENS, TOKEN_EXTENSIONS)
    _register_folder(FOLDER_SAMS, SAM_EXTENSIONS)


register_folders()


def model_files(kind: str) -> list[str]:
    """File names (relative, '/'-separated) in every folder registered for ``kind``."""
    return sorted(folder_paths.get_filename_list(kind))


def model_path(kind: str, name: str) -> Path:
    """Full path of ``name`` from the ``kind`` model folders; a clear error when it is not there."""
    path = folder_paths.get_full_path(kind, name) if name else None
    if path is None:
        where = ", ".join(folder_paths.get_folder_paths(kind))
        have = ", ".join(model_files(kind)[:12]) or "none"
        raise CheckpointError(f"{kind} file {name!r} not found in {where} (files there: {have}); "
                              f"put it into models/{kind}/ and refresh")
    return Path(path)


def model_folder(kind: str) -> Path:
    """The first (default) folder registered for ``kind``: where the pack writes new files of that kind."""
    return Path(folder_paths.get_folder_paths(kind)[0])


def embeddings_folder() -> Path:
    return Path(folder_paths.get_folder_paths(FOLDER_EMBEDDINGS)[0])


def output_folder() -> Path:
    return Path(folder_paths.get_output_directory())


def input_folder() -> Path:
    return Path(folder_paths.get_input_directory())


def save_target(prefix: str) -> tuple[Path, str, int, str]:
    """Where to save under the output folder: (folder, file stem, counter, subfolder), as ComfyUI's SaveImage does."""
    folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, folder_paths.get_output_directory())
    return Path(folder), stem, int(counter), subfolder


def output_relative(path: Path) -> str:
    """``path`` relative to the output folder, '/'-separated (what Preview3D and /view expect)."""
    return Path(os.path.relpath(path, output_folder())).as_posix()


# --------------------------------------------------------------------------------------------- input files
def list_input_files(extensions: Iterable[str]) -> list[str]:
    """Files under the input folder (subfolders included) with one of ``extensions``; '/'-separated relative names.

    Symlinks and folders that lead outside the input folder are not followed.
    """
    root = input_folder()
    if not root.is_dir():
        return []
    real_root = root.resolve()
    exts = {e.lower() for e in extensions}
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in ("__pycache__", "clipspace"))
        for f in filenames:
            p = Path(dirpath) / f
            if p.suffix.lower() in exts and _inside(p.resolve(), real_root):
                found.append(p.relative_to(root).as_posix())
    return sorted(found)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def resolve_input_file(name: str, extensions: Iterable[str]) -> Path:
    """The file ``name`` (relative to the input folder) as an absolute path, refusing anything that leaves the folder.

    A ComfyUI server may be reachable by others, so '..' parts, absolute paths, drive letters and symlinks that point
    out of the input folder are refused with an error (the core library itself takes any path).

    Raises:
        AssetError: unsafe, unsupported or missing file.
    """
    if not isinstance(name, str) or not name.strip():
        raise AssetError("no asset chosen: pick a file from the input folder or connect a MESH")
    rel = name.replace("\\", "/").strip()
    # ComfyUI annotates uploaded names as "file.glb [input]"
    if rel.endswith(" [input]"):
        rel = rel[: -len(" [input]")]
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if rel.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
        raise AssetError(f"asset {name!r} is outside the input folder: only files inside ComfyUI's input folder can be used")
    exts = {e.lower() for e in extensions}
    if Path(rel).suffix.lower() not in exts:
        raise AssetError(f"asset {name!r} has an unsupported extension: use one of {sorted(exts)}")
    root = input_folder().resolve()
    path = (input_folder() / "/".join(parts))
    real = path.resolve()
    if not _inside(real, root):
        raise AssetError(f"asset {name!r} resolves outside the input folder (symlink?); copy the file into the input folder")
    if not real.is_file():
        raise AssetError(f"asset {name!r} not found in the input folder {input_folder()}; upload it or refresh the list")
    return real


# --------------------------------------------------------------------------------------------- devices
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
def throw_if_interrupted() -> None:
    _mm.throw_exception_if_processing_interrupted()


def interrupt_exception_type() -> type:
    return _mm.InterruptProcessingException


def _preview_views(preview: Any) -> Optional[torch.Tensor]:
    """An image tensor [N,3,H,W] / [N,H,W,3] / [3,H,W] in 0..1 as a CPU IMAGE float32 [N,H,W,3]; None if not one."""
    if preview is None:
        return None
    t = torch.as_tensor(preview).detach().float().cpu()
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4:
        return None
    if t.shape[1] in (1, 3) and t.shape[-1] not in (1, 3):
        t = t.permute(0, 2, 3, 1)  # -> [N,H,W,C]
    if t.shape[-1] == 1:
        t = t.expand(*t.shape[:-1], 3)
    return t[..., :3].clamp(0, 1).contiguous()


def _preview_image(preview: Any, max_size: int = 512):
    """A preview for the websocket: PIL from an image tensor [N,3,H,W] / [N,H,W,3] / [3,H,W] in 0..1 (grid for N>1)."""
    from PIL import Image

    if preview is None:
        return None
    if isinstance(preview, Image.Image):
        return ("JPEG", preview, max_size)
    t = _preview_views(preview)
    if t is None:
        return None
    n, h, w, _ = t.shape
    cols = 2 if n == 4 else n
    rows = (n + cols - 1) // cols
    grid = torch.ones(rows * h, cols * w, 3)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = t[i, ..., :3]
    arr = (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return ("JPEG", Image.fromarray(arr), max_size)


class ComfyProgress:
    """:class:`dreamedit3d_core.progress.Progress` on ComfyUI: the node's progress bar, previews and interruption.

    ``update`` drives ``comfy.utils.ProgressBar.update_absolute`` (websocket ``progress`` events + previews; the server's
    hook also checks interruption); ``check_interrupt`` raises ComfyUI's own InterruptProcessingException so the run
    ends with ``execution_interrupted``. ``info`` values (loss, ...) are kept in ``last_info`` for the node's UI text,
    and the last image preview in ``last_preview`` (IMAGE [N,H,W,3] on the CPU, or None) for the node's UI images.
    """

    def __init__(self, total: int = 1, node_id: Optional[str] = None):
        self.bar = _cu.ProgressBar(max(int(total), 1), node_id=node_id)
        self.last_info: dict = {}
        self.last_preview: Optional[torch.Tensor] = None

    def update(self, step: int, total: int, preview: Optional[Any] = None, **info: Any) -> None:
        self.last_info = dict(info)
        views = None if preview is None or _is_pil(preview) else _preview_views(preview)
        if views is not None:
            self.last_preview = views
        self.bar.update_absolute(int(step), int(total), _preview_image(preview))

    def check_interrupt(self) -> None:
        throw_if_interrupted()


def _is_pil(obj: Any) -> bool:
    from PIL import Image

    return isinstance(obj, Image.Image)


def latent_preview_rgb(latents: torch.Tensor) -> torch.Tensor:
    """Cheap RGB preview of SD latents [N,4,h,w] (the SD1/SD2 latent->RGB factors ComfyUI uses), float [N,3,h,w] in 0..1."""
    import comfy.latent_formats

    factors = torch.tensor(comfy.latent_formats.SD15().latent_rgb_factors, dtype=torch.float32)
    rgb = torch.einsum("nchw,cr->nrhw", latents.detach().float().cpu(), factors)
    return ((rgb + 1.0) / 2.0).clamp(0, 1)


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


def sampler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.SAMPLER_NAMES)


def sampler_object(name: str):
    import comfy.samplers

    return comfy.samplers.sampler_object(name)


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


def core_mesh(vertices: torch.Tensor, faces: torch.Tensor, **optional: Any):
    """A core MESH with a batch of one: ``vertices`` [N,3] float, ``faces`` [M,3] int.

    ``optional`` (uvs [N,2], texture [T,T,3], vertex_colors [N,3], ...) are passed batched only where the running
    ComfyUI's MESH takes them (newer hosts carry UVs and textures; 0.3.75 takes vertices and faces only).
    """
    cls = core_mesh_class()
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: (v[None] if isinstance(v, torch.Tensor) else v) for k, v in optional.items()
              if v is not None and k in params}
    return cls(vertices[None].float(), faces[None].long(), **kwargs)


def core_mesh_batch(items: list[dict]):
    """A core MESH holding several meshes: each item a dict with ``vertices`` [N_i,3], ``faces`` [M_i,3] and optional
    ``uvs`` [N_i,2], ``texture`` [T,T,3], ``vertex_colors`` [N_i,3].

    Per-item tensors are zero-padded to the largest item ([B,N,3], [B,M,3], ...); padded faces are (0,0,0), i.e.
    degenerate triangles that draw nothing, and padded vertices are unreferenced. The true sizes go to
    ``vertex_counts`` / ``face_counts`` (int64 [B]): passed to the constructor where the host's MESH takes them,
    otherwise set as attributes (``mesh_from_core`` honours them; 0.3.75's SaveGLB writes the padded arrays).
    Optional fields go in only where the running MESH takes them and every item has one of the same shape.
    """
    if not items:
        raise ConfigError("no meshes to put into a MESH batch")
    cls = core_mesh_class()
    params = inspect.signature(cls.__init__).parameters

    def pad(tensors: list, dtype) -> torch.Tensor:
        rows = max(int(t.shape[0]) for t in tensors)
        out = torch.zeros(len(tensors), rows, *tensors[0].shape[1:], dtype=dtype)
        for i, t in enumerate(tensors):
            out[i, : t.shape[0]] = t.to(dtype)
        return out

    vertices = pad([it["vertices"].detach().cpu() for it in items], torch.float32)
    faces = pad([it["faces"].detach().cpu() for it in items], torch.int64)
    kwargs: dict = {}
    for key in ("uvs", "vertex_colors"):
        vals = [it.get(key) for it in items]
        if key in params and all(v is not None for v in vals):
            kwargs[key] = pad([v.detach().cpu() for v in vals], torch.float32)
    textures = [it.get("texture") for it in items]
    if "texture" in params and all(t is not None for t in textures) and len({tuple(t.shape) for t in textures}) == 1:
        kwargs["texture"] = torch.stack([t.detach().cpu().float() for t in textures])
    counts = {"vertex_counts": torch.tensor([int(it["vertices"].shape[0]) for it in items], dtype=torch.int64),
              "face_counts": torch.tensor([int(it["faces"].shape[0]) for it in items], dtype=torch.int64)}
    kwargs.update({k: v for k, v in counts.items() if k in params})
    mesh = cls(vertices, faces, **kwargs)
    for key, value in counts.items():
        if key not in params:
            setattr(mesh, key, value)
    return mesh


def mesh_from_core(mesh: Any, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(vertices [N,3] float32, faces [M,3] int64) of batch item ``index`` of a core MESH, per-item counts honoured."""
    vertices, faces = mesh.vertices, mesh.faces
    if vertices.ndim == 2:
        return vertices.float(), faces.long()
    v, f = vertices[index].float(), faces[index].long()
    vc, fc = getattr(mesh, "vertex_counts", None), getattr(mesh, "face_counts", None)
    if vc is not None:
        v = v[: int(vc[index])]
    if fc is not None:
        f = f[: int(fc[index])]
    return v, f


def has_io_type(name: str) -> bool:
    """Whether the running ComfyUI's V3 ``io`` has ``name`` (e.g. 'File3DAny', 'Autogrow')."""
    return hasattr(io, name)
