"""Shared fixtures. Area-specific fixtures live in the area's own test modules/helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
for _p in (str(REPO), str(REPO / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def skip_or_fail(reason: str):
    """Skip with ``reason`` on a developer's machine; fail in CI, where nothing may be skipped."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "assets").is_dir():
        skip_or_fail(f"../shared is absent ({SHARED}); clone the project beside shared/ to run asset tests")
    return SHARED


@pytest.fixture(scope="session")
def shared_assets(shared_dir) -> Path:
    return shared_dir / "assets"


@pytest.fixture(scope="session")
def kenney(shared_assets):
    """The shared kenney character: 550 faces, 6 parts (legs, torso, arms, antenna), a palette texture."""
    from dreamedit3d_core.assets import load_asset

    return load_asset(shared_assets / "kenney_character.glb")


@pytest.fixture(scope="session")
def spot(shared_assets):
    """The shared spot cow, one part, with its texture."""
    from dreamedit3d_core.assets import load_asset

    return load_asset(shared_assets / "spot.obj", texture=str(shared_assets / "spot_texture.png"))


@pytest.fixture
def rng():
    import torch

    return torch.Generator("cpu").manual_seed(0)
