"""Moved to dreamedit3d_core.testing.examples: this re-export goes once every import uses the new home."""
from .testing.examples import *  # noqa: F401,F403
