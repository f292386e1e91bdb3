"""Atomic, never-overwriting writes of the files users keep (safetensors, GLB, PNG, JSON), and the one safe reader of
weight files (:func:`read_state_dict`, :func:`read_safetensors`).

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
import pickle
import secrets
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Type

import torch

from .errors import CheckpointError, ConfigError, short_message


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


def write_state_dict(state: Dict[str, torch.Tensor], path: str | os.PathLike, fmt: Optional[str] = None,
                     overwrite: bool = False) -> Path:
    """Write a flat state dict as users have it: torch pickle (``.pt``/``.ckpt``/``.pth``) or ``.safetensors``.

    ``fmt`` ("pt" or "safetensors") defaults to the suffix's. Atomic, and never over an existing file unless ``overwrite``.
    """
    path = Path(path)
    fmt = fmt or ("safetensors" if path.suffix == ".safetensors" else "pt")
    if fmt == "safetensors":
        return save_safetensors(path, state, overwrite=overwrite)
    if fmt != "pt":
        raise ConfigError(f"unknown checkpoint format {fmt!r}; valid: 'pt', 'safetensors'")
    return atomic_write(path, lambda tmp: torch.save(OrderedDict(state), tmp), overwrite=overwrite)

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


# ------------------------------------------------------------------------------------------------------ reading weights
def read_state_dict(path: str | os.PathLike, expected: str = "a state dict of tensors",
                    wrappers: Sequence[str] = ("state_dict",),
                    error: Type[Exception] = CheckpointError) -> "OrderedDict[str, torch.Tensor]":
    """The flat tensor dict of a weight file, on the CPU: ``.safetensors`` (told apart by its header too, whatever the
    suffix) or a torch pickle (``.pt``/``.ckpt``/``.pth``/``.bin``) read with ``weights_only=True``, so a file holding
    Python objects is refused instead of run.

    Args:
        path: the file.
        expected: what the caller wants, for the messages ("an MVDream checkpoint such as ...").
        wrappers: keys of a one-level wrapper dict whose value is the state dict (Lightning's ``state_dict``,
            SAM's ``model``); the first present is unwrapped.
        error: the error class raised (a reader of token files raises ``TokenError``).

    Raises:
        ``error`` (CheckpointError by default), one line naming the file: missing, empty, truncated or corrupt, not a
        weight file, holding Python objects, or not a flat dict of tensors.
    """
    path = _existing_weight_file(path, expected, error)
    with open(path, "rb") as f:
        head = f.read(16)
    if path.suffix.lower() in (".safetensors", ".sft") or (head[8:9] == b"{" and not zipfile.is_zipfile(path)):
        state, _ = read_safetensors(path, expected, error)
    else:
        state = _read_torch_pickle(path, expected, error)
    for key in wrappers:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise error(f"{path} holds {type(state).__name__}, not a state dict; expected {expected}")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        more = f", ... ({len(bad)} in all)" if len(bad) > 5 else ""
        raise error(f"{path} is not a flat state dict (non-tensor entries {', '.join(map(str, bad[:5]))}{more}); "
                    f"expected {expected}")
    return OrderedDict(state)


def read_safetensors(path: str | os.PathLike, expected: str = "a safetensors file",
                     error: Type[Exception] = CheckpointError) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """``(tensors on the CPU, metadata)`` of a safetensors file.

    Raises:
        ``error``: missing, empty, truncated or corrupt file (one line naming it).
    """
    path = _existing_weight_file(path, expected, error)
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError types
        raise error(f"{path} is not a readable safetensors file ({short_message(exc)}): it is corrupt or truncated; "
                    f"download or save it again; expected {expected}") from None


def _existing_weight_file(path: str | os.PathLike, expected: str, error: Type[Exception]) -> Path:
    path = Path(path)
    if not path.is_file():
        raise error(f"{path} does not exist; expected {expected}")
    if path.stat().st_size == 0:
        raise error(f"{path} is empty (0 bytes): its download or writing did not finish; expected {expected}")
    return path


def _read_torch_pickle(path: Path, expected: str, error: Type[Exception]):
    is_zip = zipfile.is_zipfile(path)  # torch's own format since 1.6 (memory-mapped, not read whole)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" in text:
            name = text.split("GLOBAL ", 1)[1].split()[0] if "GLOBAL " in text else "a Python object"
            raise error(f"{path} contains Python objects ({name}) that cannot be loaded safely (weights_only); "
                        f"expected {expected}, a plain state dict of tensors") from None
        raise error(f"{path} is not a torch checkpoint ({short_message(exc)}); expected {expected}") from None
    except Exception as exc:  # torch raises RuntimeError/EOFError/KeyError/... from deep inside its readers
        with open(path, "rb") as f:
            zip_header = f.read(4) == b"PK\x03\x04"
        if zip_header:
            raise error(f"{path} is truncated or corrupt ({short_message(exc)}); download it again; "
                        f"expected {expected}") from None
        raise error(f"{path} is not a torch checkpoint ({type(exc).__name__}: {short_message(exc)}); "
                    f"expected {expected}") from None
