"""LGM (3DTopia/LGM, Tang et al. 2024) as a lifting reconstructor, in pure torch (no CUDA extension).

Modules: ``network`` (the multi-view U-Net and its Gaussian head), ``checkpoint`` (the published safetensors, both
rotation variants; save in the same layout; find LGM files), ``rays`` (our cameras in LGM's convention, Plücker rays,
lens resampling), ``gaussians`` (Gaussians in our frame, density grid, mesh), ``reconstructor`` (the
``register_reconstructor`` plug-in). Facts: ``../shared/design/lgm.md``.

Typical use::

    from dreamedit3d_core.lifting import lift_to_mesh
    from dreamedit3d_core.lifting.lgm import register_lgm
    register_lgm("models/lgm/model_fp16_fixrot.safetensors")       # name "lgm"
    mesh = lift_to_mesh(views.images, cameras, reconstructor="lgm")
"""

from .checkpoint import (LEGACY_FILE, RELEASED_FILE, infer_config, is_lgm_file, list_lgm_files, load_lgm,
                         released_state_dict, rotation_normalization_for, save_lgm)
from .gaussians import (Gaussians, density_grid, fit_gaussian_grid, gaussian_colors_at, gaussians_from_lgm,
                        gaussians_to_mesh, quaternion_matrix, surface_occupancy)
from .network import LGM_BIG, LGMConfig, LGMNetwork, RawGaussians, RotationNormalization
from .rays import (LGM_CAMERA_RADIUS, LGM_FOV_DEG, LGMFrame, lgm_camera_poses, lgm_frame, lgm_input, plucker_rays,
                   resample_to_lgm_lens)
from .reconstructor import (LGMReconstructor, bake_vertex_colors_with_gaussians, cached_lgm_reconstructor,
                            register_lgm)

__all__ = [
    "LGMNetwork", "LGMConfig", "LGM_BIG", "RawGaussians", "RotationNormalization",
    "load_lgm", "save_lgm", "list_lgm_files", "is_lgm_file", "infer_config", "released_state_dict",
    "rotation_normalization_for", "RELEASED_FILE", "LEGACY_FILE",
    "LGMFrame", "lgm_frame", "lgm_camera_poses", "plucker_rays", "resample_to_lgm_lens", "lgm_input",
    "LGM_FOV_DEG", "LGM_CAMERA_RADIUS",
    "Gaussians", "gaussians_from_lgm", "quaternion_matrix", "fit_gaussian_grid", "density_grid", "surface_occupancy",
    "gaussians_to_mesh", "gaussian_colors_at",
    "LGMReconstructor", "register_lgm", "cached_lgm_reconstructor", "bake_vertex_colors_with_gaussians",
]
