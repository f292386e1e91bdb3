"""Atomic, never-overwriting writes of the files users keep (safetensors, GLB, PNG, JSON).

Every file is written to a temporary name in the destination folder and renamed into place, so a crash
never leaves a half-written file, and an existing file is never replaced unless the caller asks for it.
The file gets the ordinary mode of a new file under the user's umask (0644 with the usual 022), like any file
``open(path, "w")`` makes and like ComfyUI's own outputs: the temporary file is created with 0666 and the kernel
applies the umask, and that mode is set again after writing (``tempfile.mkstemp``, and safetensors' writer, make
0600 files, which the rename would keep).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch

from .errors import ConfigError


def free_stem(stem: str | os.PathLike, suffixes: Tuple[str, ...]) -> Path:
    """``stem`` (a path without suffix) or the first ``stem_00001``, ``stem_00002``, ... such that no ``stem + suffix``
    exists for any of ``suffixes`` (files written together, e.g. an OBJ with its MTL and PNG, share one free stem)."""
    stem = Path(stem)
    for i in range(100000):
        candidate = stem if i == 0 else stem.with_name(f"{stem.name}_{i:05d}")
        if not any(candidate.with_name(candidate.name + s).exists() for s in suffixes):
            return candidate
    raise ConfigError(f"no free file name next to {stem}: clean up the folder")


def unique_path(path: str | os.PathLike) -> Path:
    """``path`` if free, else ``stem_00001.ext``, ``stem_00002.ext``, ... (first free)."""
    path = Path(path)
    suffix = "".join(path.suffixes[-1:])
    stem = free_stem(path.with_suffix(""), (suffix,))
    return stem.with_name(stem.name + suffix)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], overwrite: bool = False) -> Path:
    """Write a file through ``write(tmp_path)`` and move it to ``path`` atomically.

    Raises:
        ConfigError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; choose another name or allow overwriting")
    tmp = _new_temp_file(path)
    mode = os.stat(tmp).st_mode & 0o777  # 0666 minus the umask, as the kernel applied it
    try:
        write(tmp)
        os.chmod(tmp, mode)  # writers that replace the file (safetensors does) would leave 0600
        if not overwrite and path.exists():  # someone else took the name meanwhile
            raise ConfigError(f"{path} appeared while writing; nothing was overwritten")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _new_temp_file(path: Path) -> str:
    """Create an empty hidden temporary file next to ``path`` with mode 0666 minus the umask; returns its path."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return str(tmp)
    raise ConfigError(f"could not create a temporary file next to {path}: clean up the folder")


def save_safetensors(path: str | os.PathLike, tensors: Dict[str, torch.Tensor],
                     metadata: Optional[Dict[str, str]] = None, overwrite: bool = False) -> Path:
    """Atomically write ``tensors`` (made contiguous, on CPU) as safetensors with string ``metadata``."""
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=meta), overwrite=overwrite)


def save_bytes(path: str | os.PathLike, data: bytes, overwrite: bool = False) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, _write, overwrite=overwrite)


def save_new_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` at ``path`` or the first free ``stem_0000n`` variant beside it, never over an existing file
    (a name taken by another writer between the check and the rename moves on to the next one). Returns the path."""
    for _ in range(3):
        try:
            return save_bytes(unique_path(path), data)
        except ConfigError:  # taken meanwhile: the next free name
            continue
    raise ConfigError(f"could not find a free file name next to {path}: clean up the folder")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
