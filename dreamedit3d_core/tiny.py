from .testing.tiny import *  # noqa: F401,F403  (moved to dreamedit3d_core.testing.tiny; this re-export goes later)
