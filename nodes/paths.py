"""Sandboxing of the file names users give the nodes: pure path logic, no ComfyUI import.

A ComfyUI server may be reachable by others, so a name picked or typed in a node never leaves its folder: names that
climb out ('..'), absolute paths, drive letters and symlinks pointing outside are refused with a one-line message,
as ComfyUI's own save nodes refuse them. The callers (``nodes/folders.py``) pass the folder; this module only decides.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..dreamedit3d_core.errors import AssetError, ConfigError

#: ComfyUI annotates names picked from a combo with the folder they came from: "file.glb [input]"
ANNOTATIONS = (" [input]", " [output]", " [temp]")
#: folders of the input tree that are never offered (ComfyUI's mask-editor scratch folder, caches)
SKIPPED_FOLDERS = ("__pycache__", "clipspace")


def strip_annotation(name: str) -> str:
    """``name`` without ComfyUI's trailing " [input]" / " [output]" / " [temp]"."""
    for suffix in ANNOTATIONS:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def relative_parts(name: str) -> list[str] | None:
    """The '/'-separated parts of a relative name (``\\`` counts as '/'), or None when the name leaves its folder:
    an absolute path, a drive letter, or any '..' part."""
    rel = strip_annotation(str(name).strip()).replace("\\", "/")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if rel.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
        return None
    return parts


def is_inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or below it (both already resolved)."""
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def resolve_inside(root: Path, name: str, extensions: Iterable[str], what: str = "file", folder: str = "folder") -> Path:
    """The existing file ``name`` (relative to ``root``) as a resolved absolute path, or a one-line error.

    Args:
        root: the folder the name is relative to (ComfyUI's input or output folder).
        name: what the user picked or typed, e.g. 'robot/kenney_character.glb' or 'a.glb [input]'.
        extensions: accepted suffixes, lower case with the dot ('.glb').
        what: the noun used in messages ('asset', 'file').
        folder: the folder's name in messages ('input folder').

    Raises:
        AssetError: empty, escaping, wrong extension, a symlink out of ``root``, or missing.
    """
    if not isinstance(name, str) or not name.strip():
        raise AssetError(f"no {what} chosen: pick a file from the {folder}")
    parts = relative_parts(name)
    if parts is None or not parts:
        raise AssetError(f"{what} {name!r} is outside the {folder}: only files inside the {folder} can be used")
    exts = sorted({e.lower() for e in extensions})
    if Path(parts[-1]).suffix.lower() not in exts:
        kinds = " or ".join(e.lstrip(".").upper() for e in exts)
        raise AssetError(f"{what} {name!r} has an unsupported extension (not a {kinds} file): use one of {exts}")
    real_root = Path(root).resolve()
    real = (Path(root) / "/".join(parts)).resolve()
    if not is_inside(real, real_root):
        raise AssetError(f"{what} {name!r} resolves outside the {folder} (symlink?); copy the file into the {folder}")
    if not real.is_file():
        raise AssetError(f"{what} {name!r} not found in the {folder} {root}; upload it or refresh the list")
    return real


def list_inside(root: Path, extensions: Iterable[str]) -> list[str]:
    """Files under ``root`` (subfolders included) with one of ``extensions``: sorted '/'-separated relative names.

    Hidden folders, ComfyUI's scratch folders and symlinks or folders that lead outside ``root`` are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    real_root = root.resolve()
    exts = {e.lower() for e in extensions}
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIPPED_FOLDERS)
        for f in filenames:
            p = Path(dirpath) / f
            if p.suffix.lower() in exts and is_inside(p.resolve(), real_root):
                found.append(p.relative_to(root).as_posix())
    return sorted(found)


def plain_file_stem(name: str, suffix: str = "", what: str = "file name") -> str:
    """A file name typed into a save node as a plain stem in its folder, or a one-line error.

    Like ComfyUI's own save nodes, a name that tries to leave its folder ('../../x', '/abs/x', '..\\\\..\\\\x.glb',
    'C:/x') is refused rather than quietly rewritten; so are empty and hidden names. ``suffix`` (e.g.
    '.safetensors') is dropped when the user typed it.

    Raises:
        ConfigError: the name is not a plain file name.
    """
    text = str(name).strip()
    parts = relative_parts(text)
    if parts is None:
        raise ConfigError(f"{what} {name!r} tries to leave its folder: give a plain name such as 'my-model' "
                          "(no '..', no absolute path)")
    if not parts:
        raise ConfigError(f"{what} is empty: give a plain name such as 'my-model'")
    if len(parts) != 1:
        raise ConfigError(f"{what} {name!r} has folders in it: give a plain name such as 'my-model'")
    stem = parts[0]
    if suffix and stem.lower().endswith(suffix.lower()):
        stem = stem[: -len(suffix)]
    if not stem or stem.startswith("."):
        raise ConfigError(f"{what} {name!r} is not usable: give a plain name such as 'my-model'")
    return stem


def name_problem(name, suffix: str = "", what: str = "file name") -> bool | str:
    """:func:`plain_file_stem` as a validator answer: True for a usable name (or None, a linked input), else the
    message."""
    if name is None:
        return True
    try:
        plain_file_stem(name, suffix, what=what)
    except ConfigError as exc:
        return str(exc)
    return True


def check_save_prefix(prefix: str, what: str = "filename_prefix") -> str:
    """A save prefix ('dreamedit3d/edit') that stays inside the output folder (subfolders allowed), or an error."""
    parts = relative_parts(str(prefix))
    if parts is None or not parts:
        raise ConfigError(f"{what} {prefix!r} leaves the output folder: give a relative prefix such as "
                          "'dreamedit3d/edit' (no '..', no absolute path)")
    return "/".join(parts)
