"""The batch's output folder: a local path or any fsspec URL the cluster shares (``s3://``, ``gs://``, ``file://``, ...).

Every stage of the library writes local files (atomic temp + rename, ``storage.py``). For a local output folder they
are written in place. For a URL they are written into a local *scratch* copy of the output's layout and then
uploaded (:meth:`OutputStore.publish`); reading a file that is only remote downloads it into the scratch copy first
(:meth:`OutputStore.fetch`). Paths given to this class are always relative to the output root, with ``/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

from ..errors import ConfigError
from ..storage import atomic_write, file_sha256


def canonical_safetensors(path: str | os.PathLike) -> Path:
    """Rewrite a safetensors file's header with its metadata keys sorted, in place (atomically).

    The safetensors writer stores the metadata in hash-map order, which changes from process to process, so the
    same tensors and metadata give different bytes (and hashes) in two runs. The batch promises identical files for
    identical inputs, so it normalises the files it writes. The tensor data and its offsets are untouched.
    """
    import struct

    path = Path(path)
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length].decode("utf-8"))
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the format pads the header to 8-byte alignment with spaces
    if text == data[8:8 + length]:
        return path
    body = struct.pack("<Q", len(text)) + text + data[8 + length:]

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(body)

    return atomic_write(path, _write, overwrite=True)


def _is_url(root: str) -> bool:
    return "://" in str(root)


class OutputStore:
    """Relative-path file access to the output root.

    Args:
        root: a local folder, or an fsspec URL.
        scratch: local folder for the scratch copy of a URL output (default: a new temporary folder).
    """

    def __init__(self, root: str | os.PathLike, scratch: Optional[str | os.PathLike] = None):
        self.root = str(root)
        self.remote = _is_url(self.root)
        if self.remote:
            try:
                import fsspec
            except ImportError as exc:
                from ..errors import MissingDependencyError

                raise MissingDependencyError("an output URL", "fsspec") from exc
            self.fs, self._base = fsspec.core.url_to_fs(self.root)
            self._base = self._base.rstrip("/")
            self.local_root = Path(scratch) if scratch else Path(tempfile.mkdtemp(prefix="dreamedit3d-batch-"))
        else:
            self.fs = None
            self.local_root = Path(self.root)
        self.local_root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"OutputStore({self.root!r})"

    # ----------------------------------------------------------------------------------------- paths
    @staticmethod
    def _check(rel: str) -> str:
        rel = str(rel).replace("\\", "/")
        if not rel.strip("/") or rel.startswith("/") or ".." in rel.split("/"):
            raise ConfigError(f"output path {rel!r} must stay inside the output folder")
        return rel.strip("/")

    def path(self, rel: str) -> Path:
        """The local file for ``rel`` (the real file, or its scratch copy for a URL output)."""
        return self.local_root / self._check(rel)

    def url(self, rel: str) -> str:
        """Where ``rel`` lives for users: a local path or the URL."""
        rel = self._check(rel)
        return f"{self.root.rstrip('/')}/{rel}" if self.remote else str(self.local_root / rel)

    def _remote(self, rel: str) -> str:
        return f"{self._base}/{self._check(rel)}"

    # ----------------------------------------------------------------------------------------- queries
    def exists(self, rel: str) -> bool:
        if self.remote:
            return bool(self.fs.exists(self._remote(rel)))
        return self.path(rel).is_file()

    def listdir(self, rel_dir: str) -> list:
        """Names of the files directly inside ``rel_dir`` ([] when it does not exist)."""
        if self.remote:
            target = self._remote(rel_dir)
            if not self.fs.exists(target):
                return []
            return sorted(Path(p).name for p in self.fs.ls(target, detail=False) if self.fs.isfile(p))
        folder = self.path(rel_dir)
        return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def sha256(self, rel: str) -> Optional[str]:
        """Content hash of the stored file, None when it is absent."""
        if self.remote:
            if not self.exists(rel):
                return None
            h = hashlib.sha256()
            with self.fs.open(self._remote(rel), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()
        p = self.path(rel)
        return file_sha256(p) if p.is_file() else None

    # ----------------------------------------------------------------------------------------- transfer
    def fetch(self, rel: str) -> Optional[Path]:
        """The local copy of ``rel`` (downloaded for a URL output), or None when the file does not exist."""
        local = self.path(rel)
        if not self.remote:
            return local if local.is_file() else None
        if not self.exists(rel):
            return None
        local.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get(self._remote(rel), str(local))
        return local

    def publish(self, rel: str) -> str:
        """Make the local file ``rel`` visible in the output (upload it for a URL output). Returns its location."""
        local = self.path(rel)
        if not local.is_file():
            raise ConfigError(f"{local} was not written; nothing to publish")
        if self.remote:
            self.fs.makedirs(str(Path(self._remote(rel)).parent), exist_ok=True)
            self.fs.put(str(local), self._remote(rel))
        return self.url(rel)

    def remove(self, rel: str) -> None:
        """Delete ``rel`` (ours: an unfinished attempt's file or a finished training state), locally and remotely."""
        local = self.path(rel)
        if local.is_file():
            local.unlink()
        if self.remote and self.exists(rel):
            self.fs.rm(self._remote(rel))

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write (or replace) one of the batch's own files atomically and publish it."""
        local = self.path(rel)

        def _write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                f.write(data)

        atomic_write(local, _write, overwrite=True)
        return self.publish(rel)

    def write_with(self, rel: str, write: Callable[[Path], Path]) -> str:
        """Put a file made by a library writer that never overwrites (``save_png``, ``export_mesh``) under a fixed
        name: ``write(folder)`` writes into an empty temporary folder and returns the path; it then replaces ``rel``
        unless that already holds the same bytes."""
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-") as tmp:
            written = write(Path(tmp))
            if target.is_file() and file_sha256(written) == file_sha256(target):
                return self.url(rel)  # the same bytes are there already: leave the file (and its time) alone
            os.replace(written, target)
        return self.publish(rel)

    def clear_leftovers(self, rel_dir: str = "") -> None:
        """Delete what a killed writer left in ``rel_dir`` (local side): the temporary files of atomic writes
        (``.<name>.<hex>.tmp``) and of :meth:`write_with` (``.tmp-*`` folders). Only the one worker running a unit
        writes into its folder, and the driver alone into the root, so nothing live is touched."""
        import shutil

        folder = self.path(rel_dir) if rel_dir else self.local_root
        if not folder.is_dir():
            return
        for entry in folder.iterdir():
            if entry.is_dir() and entry.name.startswith(".tmp-"):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_file() and entry.name.startswith(".") and entry.name.endswith(".tmp"):
                entry.unlink()

    def write_json(self, rel: str, data) -> str:
        return self.write_bytes(rel, (json.dumps(data, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8"))

    def read_json(self, rel: str):
        """The parsed JSON file, or None when it is absent or unreadable (a torn record counts as not written)."""
        try:
            if self.remote:
                if not self.exists(rel):
                    return None
                with self.fs.open(self._remote(rel), "rb") as f:
                    return json.loads(f.read().decode("utf-8"))
            p = self.path(rel)
            return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
        except (OSError, ValueError):
            return None

    def sync_folder(self, rel_dir: str) -> None:
        """Mirror a local folder's files to the output: upload new or changed ones, drop remote ones gone locally.

        Used for training checkpoints of a URL output, so another machine can resume them.
        """
        if not self.remote:
            return
        local_dir = self.path(rel_dir)
        local = {p.name for p in local_dir.iterdir() if p.is_file() and not p.name.startswith(".")} if local_dir.is_dir() else set()
        remote = set(self.listdir(rel_dir))
        for name in sorted(local):
            rel = f"{rel_dir}/{name}"
            if name not in remote or self.fs.size(self._remote(rel)) != self.path(rel).stat().st_size:
                self.publish(rel)
        for name in sorted(remote - local):
            self.fs.rm(self._remote(f"{rel_dir}/{name}"))

    def fetch_folder(self, rel_dir: str) -> Path:
        """The local copy of a folder (its remote files downloaded first for a URL output)."""
        if self.remote:
            for name in self.listdir(rel_dir):
                if not self.path(f"{rel_dir}/{name}").is_file():
                    self.fetch(f"{rel_dir}/{name}")
        folder = self.path(rel_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return folder
