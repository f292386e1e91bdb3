"""ComfyUI's folders as the pack uses them: model folders it registers, input files it lists, outputs it writes.

Every name a user gives resolves inside its folder (``nodes/paths.py`` decides); nodes never see an absolute path
they were not given by ComfyUI itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Optional

from ..dreamedit3d_core.errors import CheckpointError
from . import paths
from ._compat import folder_paths

MODEL_EXTENSIONS = {".pt", ".safetensors", ".ckpt"}
TOKEN_EXTENSIONS = {".safetensors"}
SAM_EXTENSIONS = {".pth", ".pt", ".safetensors"}
SAFETENSORS = {".safetensors"}
FOLDER_MVDREAM = "mvdream"  # MVDream checkpoints (released .pt, or our .safetensors, fine-tuned ones too)
FOLDER_TOKENS = "mvdream_tokens"  # our learned-token files (token strings -> vectors + base model hash)
FOLDER_SAMS = "sams"  # Segment Anything checkpoints, as ComfyUI users keep them
FOLDER_DINO = "dino"  # DINO ViT-S/16 for the identity metric (a transformers folder; its model.safetensors is listed)
FOLDER_LGM = "lgm"  # LGM large multi-view reconstruction weights (.safetensors)
FOLDER_EMBEDDINGS = "embeddings"  # ComfyUI's textual-inversion folder (core CLIPTextEncode reads it)
FOLDER_CLIP_VISION = "clip_vision"  # ComfyUI's own folder (the metrics node's CLIP)
#: the first choice of an optional model file widget: no model
NONE_CHOICE = "(none)"

#: the folders the pack adds to ComfyUI, with the file extensions each lists
REGISTERED = {FOLDER_MVDREAM: MODEL_EXTENSIONS, FOLDER_TOKENS: TOKEN_EXTENSIONS, FOLDER_SAMS: SAM_EXTENSIONS,
              FOLDER_DINO: SAFETENSORS, FOLDER_LGM: SAFETENSORS}


def _register_folder(name: str, extensions: set) -> None:
    """Register ``models/<name>`` (users may add more paths with a ``<name>:`` key in extra_model_paths.yaml)."""
    folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name), is_default=False)
    found, exts = folder_paths.folder_names_and_paths[name]
    if not exts:  # a new key gets an empty extension set, which would list every file
        folder_paths.folder_names_and_paths[name] = (found, set(extensions))


def register_folders() -> None:
    """Add the pack's model folders to ComfyUI (at import of the pack, before any node lists files)."""
    for name, extensions in REGISTERED.items():
        _register_folder(name, extensions)


register_folders()


# --------------------------------------------------------------------------------------------- model folders
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
    return model_folder(FOLDER_EMBEDDINGS)


def file_stamp(path: Path) -> str:
    """What changes when a file is overwritten (size and modification time), for nodes' ``fingerprint_inputs``."""
    try:
        st = Path(path).stat()
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def optional_model_choices(kind: str, none: str = NONE_CHOICE) -> list[str]:
    """``none`` and the files of the ``kind`` model folders, for an optional model widget; only ``none`` where the
    host has no such folder (a folder kind this ComfyUI does not register)."""
    try:
        return [none] + model_files(kind)
    except KeyError:
        return [none]


def model_choice_problem(kind: str, name, what: str, none: Iterable[str] = (NONE_CHOICE,)) -> Optional[str]:
    """Why ``name`` is not a file of the ``kind`` model folders, as one line naming the files there, or None when it
    is one, is one of ``none``, or is not given (a linked input). ComfyUI 0.3.75 does not check V3 combo values, so
    the nodes' ``validate_inputs`` ask this before the graph runs."""
    if name is None or name in tuple(none):
        return None
    try:
        files = model_files(kind)
    except KeyError:  # a folder kind this host does not register
        files = []
    if name in files:
        return None
    have = ", ".join(files[:12]) or "none"
    return f"{what} {name!r} is not in models/{kind} (files there: {have}); put it there and refresh"


def stamp_of(resolve: Callable[[], Path]) -> str:
    """:func:`file_stamp` of the file ``resolve()`` names, or "missing" when it names none (validation says why).

    The one body of the nodes' ``fingerprint_inputs``: a file overwritten under the same name changes the stamp, so
    ComfyUI runs the node again instead of reusing its cached output.
    """
    try:
        return file_stamp(resolve())
    except (ValueError, KeyError):  # our errors are ValueErrors; KeyError: a folder kind the host lacks
        return "missing"


def model_stamp(kind: str, name, none: Iterable[str] = (NONE_CHOICE,)) -> str:
    """The fingerprint of the model file ``name`` in the ``kind`` folders: "" when no file is chosen (empty or one of
    ``none``), else :func:`stamp_of` the file."""
    if not name or name in tuple(none):
        return ""
    return stamp_of(lambda: model_path(kind, name))


def input_stamp(name, extensions: Iterable[str], what: str = "asset") -> str:
    """The fingerprint of the input-folder file ``name``: "" when none is chosen, else :func:`stamp_of` the file."""
    if not name:
        return ""
    return stamp_of(lambda: resolve_input_file(name, extensions, what=what))


# --------------------------------------------------------------------------------------------- input / output
def output_folder() -> Path:
    return Path(folder_paths.get_output_directory())


def input_folder() -> Path:
    return Path(folder_paths.get_input_directory())


def save_target(prefix: str) -> tuple[Path, str, int, str]:
    """Where to save under the output folder: (folder, file stem, counter, subfolder), as ComfyUI's SaveImage does.

    A prefix that leaves the output folder is refused with a one-line ConfigError (before ComfyUI's own check)."""
    prefix = paths.check_save_prefix(prefix)
    folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, folder_paths.get_output_directory())
    return Path(folder), stem, int(counter), subfolder


def output_relative(path: Path) -> str:
    """``path`` relative to the output folder, '/'-separated (what Preview3D and /view expect)."""
    return Path(os.path.relpath(path, output_folder())).as_posix()


def list_input_files(extensions: Iterable[str]) -> list[str]:
    """Files under the input folder (subfolders included) with one of ``extensions``; '/'-separated relative names."""
    return paths.list_inside(input_folder(), extensions)


def resolve_input_file(name: str, extensions: Iterable[str], what: str = "asset") -> Path:
    """The file ``name`` (relative to the input folder) as an absolute path, refusing anything that leaves the folder.

    Raises:
        AssetError: unsafe, unsupported or missing file.
    """
    return paths.resolve_inside(input_folder(), name, extensions, what=what, folder="input folder")


def resolve_output_file(name: str, extensions: Iterable[str], what: str = "path") -> Path:
    """The file ``name`` (relative to the output folder) as an absolute path, refusing anything that leaves it."""
    return paths.resolve_inside(output_folder(), name, extensions, what=what, folder="output folder")
