"""Lifting: four views and their cameras -> a textured triangle mesh, and its export (``../shared/design/render-lift.md``).

Modules: ``views`` (checks, background keying), ``hull`` (occupancy grids), ``surface`` (marching cubes, cleanup, UVs),
``bake`` (texture / vertex colours / refinement), ``export`` (GLB, OBJ, provenance), ``pipeline`` (``lift_to_mesh``).
"""

from .export import export_mesh, read_glb_json, read_provenance
from .pipeline import (MODES, LiftMode, best_mode, lift_alpha, list_reconstructors, lift_to_mesh, register_reconstructor,
                       unregister_reconstructor)

__all__ = ["lift_to_mesh", "export_mesh", "read_provenance", "read_glb_json", "register_reconstructor",
           "unregister_reconstructor", "list_reconstructors", "MODES", "LiftMode",
           "best_mode", "lift_alpha"]
