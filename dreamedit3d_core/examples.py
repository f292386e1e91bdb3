from .testing.examples import *  # noqa: F401,F403  (moved to dreamedit3d_core.testing.examples; this re-export goes later)
