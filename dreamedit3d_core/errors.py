"""One error hierarchy for the whole library.

Every message says what is wrong, the value seen, and what to do. Value-like errors also inherit
``ValueError`` so callers that catch ``ValueError`` keep working; a missing optional package is an
``ImportError``; an interruption is neither, so nothing swallows it by accident.
"""

from __future__ import annotations

from typing import Iterable, Mapping


class DreamEdit3DError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigError(DreamEdit3DError, ValueError):
    """An option or configuration value is unknown or out of range."""


class ShapeError(DreamEdit3DError, ValueError):
    """A tensor or array has the wrong shape, dtype or contents (NaN/inf)."""


class AssetError(DreamEdit3DError, ValueError):
    """A 3D asset file is missing, unsupported, corrupt or unsafe."""


class CheckpointError(DreamEdit3DError, ValueError):
    """A model file is missing, truncated, of the wrong kind, or does not match the model."""


class TokenError(DreamEdit3DError, ValueError):
    """A placeholder token is malformed, duplicated, unknown or clashes with the vocabulary."""


class TrainingError(DreamEdit3DError, RuntimeError):
    """Training cannot go on (NaN loss, a resume file from another run, ...)."""


class LiftError(DreamEdit3DError, ValueError):
    """The views cannot be lifted to a mesh (empty hull, bad views)."""


class MissingDependencyError(DreamEdit3DError, ImportError):
    """An optional package is needed for the requested feature; the message gives the pip line."""

    def __init__(self, feature: str, package: str, pip_name: str | None = None):
        self.feature = feature
        self.package = package
        super().__init__(
            f"{feature} needs the Python package '{package}', which is not installed: "
            f"pip install {pip_name or package}"
        )


class Interrupted(DreamEdit3DError):
    """The user asked to stop; raised by a :class:`~dreamedit3d_core.progress.Progress` hook."""


def check_keys(kind: str, data: Mapping, known: Iterable[str], required: Iterable[str] = ()) -> None:
    """Refuse a settings dict with keys that ``kind`` does not have, or without the ``required`` ones.

    The one check behind every ``from_dict`` (configs, cameras, source frames): a misspelt key is a
    :class:`ConfigError` naming it and the valid keys, never silently dropped.
    """
    known = set(known)
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown {kind} keys {sorted(unknown)}; valid keys are {sorted(known)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"{kind} settings lack keys {sorted(missing)}; give {sorted(known)}")


def short_message(exc: BaseException, limit: int = 120) -> str:
    """A caught error's message on one line (whitespace collapsed), cut to ``limit`` characters + "...", to quote it
    inside one of our one-line messages."""
    text = " ".join(str(exc).split())
    return (text[:limit] + "...") if len(text) > limit else text
