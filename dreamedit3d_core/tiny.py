"""Moved to dreamedit3d_core.testing.tiny: this re-export goes once every import uses the new home."""
from .testing.tiny import *  # noqa: F401,F403
