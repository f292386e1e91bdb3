"""Fixtures of the batch tests: a tiny checkpoint and a catalogue of three small multi-part assets."""

from __future__ import annotations

from pathlib import Path

import pytest

from _batch_helpers import write_catalogue


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from dreamedit3d_core.testing.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("batch_ckpt") / "tiny.safetensors")


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory) -> Path:
    return write_catalogue(tmp_path_factory.mktemp("batch_assets") / "catalogue")
