"""Regenerate ``lgm_original_tiny.safetensors``: 3DTopia/LGM's own code run on the tiny LGM weights.

The golden file freezes what the original code computes, so ``test_lgm_original_golden.py`` compares the pack with it
without needing the original code at test time:

* ``LGM.forward_gaussians`` with ``tiny_lgm_state_dict(0)`` loaded by the original's strict ``load_state_dict``, on
  seeded inputs (B 2, 32 px), with the released rotation activation and with the pre-fix one (``F.normalize`` on its
  default dim, commit 0162cb8..9a0797c of the original history);
* ``LGM.prepare_default_rays`` (kiui ``orbit_camera`` + ``core.utils.get_rays``) at elevations 0 and -15 (kiui sign), and
  the training loader's first-view normalisation (``core/provider_objaverse.py``) of four kiui orbit cameras at
  elevation -15 (our +15), all at 16 px;
* the ``big`` configuration's key -> shape table (built on the meta device), in the file's metadata.

Usage (a checkout of https://github.com/3DTopia/LGM and an unpacked ``kiui`` wheel; the renderer module core/gs.py,
tyro, roma and cv2 are stubbed in-process here because only the network and ray code run)::

    python tests/numeric/golden/make_lgm_golden.py /tmp/LGM [/tmp/kiui_pkg]

Made with 3DTopia/LGM @fe8d12c and kiui 0.3.5, torch 2.14 CPU, fp32.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
OUT = HERE / "lgm_original_tiny.safetensors"
BATCH, SIZE, RAY_SIZE, SEED = 2, 32, 16, 0


def _stub(name: str, **attrs) -> None:
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    sys.modules[name] = mod


def _import_original(checkout: Path, kiui_dir: Path | None):
    if kiui_dir is not None:
        sys.path.insert(0, str(kiui_dir))
    sys.path.insert(0, str(checkout))
    # only the network and the ray helpers run: stub what the imports pull in for rendering and the CLI
    import core  # noqa: F401  (the checkout's package, before its gs module is replaced)
    # core/gs.py (the CUDA rasterizer's renderer, which also allocates on CUDA in __init__) is not needed
    _stub("core.gs", GaussianRenderer=lambda opt: None)
    _stub("tyro", extras=types.SimpleNamespace(subcommand_type_from_defaults=lambda *a, **k: None))
    _stub("roma")
    if "cv2" not in sys.modules:
        try:
            import cv2  # noqa: F401
        except ImportError:
            _stub("cv2")
    import typing

    # kiui 0.3.5's wheel ships an empty kiui/typing.py that its own modules star-import type names from
    _stub("kiui.typing", Tensor=torch.Tensor, ndarray=np.ndarray,
          **{n: getattr(typing, n) for n in typing.__all__})
    from kiui.cam import orbit_camera
    from core.models import LGM
    from core.options import Options, config_defaults
    from core.utils import get_rays

    return LGM, Options, config_defaults, orbit_camera, get_rays


def main(checkout: str, kiui_dir: str | None = None) -> None:
    sys.path.insert(0, str(REPO))
    from dreamedit3d_core.testing.lgm import LGM_TINY, tiny_lgm_state_dict

    LGM, Options, config_defaults, orbit_camera, get_rays = _import_original(Path(checkout),
                                                                              Path(kiui_dir) if kiui_dir else None)
    cfg = LGM_TINY
    splat = SIZE // cfg.downscale * 2 ** (len(cfg.up_channels) - 1)
    opt = Options(input_size=SIZE, down_channels=cfg.down_channels, down_attention=cfg.down_attention,
                  mid_attention=cfg.mid_attention, up_channels=cfg.up_channels, up_attention=cfg.up_attention,
                  splat_size=splat, lambda_lpips=0.0)
    model = LGM(opt).eval()
    model.load_state_dict(tiny_lgm_state_dict(SEED), strict=True)

    gen = torch.Generator().manual_seed(1234)
    views = torch.randn(BATCH, 4, 9, SIZE, SIZE, generator=gen)
    out = {}
    with torch.no_grad():
        out["gaussians_fixrot"] = model.forward_gaussians(views)
        model.rot_act = F.normalize  # the activation before "fix rotation normalization"
        out["gaussians_legacy"] = model.forward_gaussians(views)

    model.opt.input_size = RAY_SIZE
    out["rays_elev0"] = model.prepare_default_rays("cpu", elevation=0)
    out["rays_elev_minus15"] = model.prepare_default_rays("cpu", elevation=-15)
    # the training loader's normalisation: first input camera -> identity at (0, 0, cam_radius)
    poses = torch.from_numpy(np.stack([orbit_camera(-15, a, radius=opt.cam_radius) for a in (0, 90, 180, 270)]))
    transform = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, opt.cam_radius], [0, 0, 0, 1]],
                             dtype=torch.float32) @ torch.inverse(poses[0])
    poses = transform.unsqueeze(0) @ poses
    rays = []
    for pose in poses:
        o, d = get_rays(pose, RAY_SIZE, RAY_SIZE, opt.fovy)
        rays.append(torch.cat([torch.cross(o, d, dim=-1), d], dim=-1))
    out["rays_first_view_elev15"] = torch.stack(rays).permute(0, 3, 1, 2).contiguous()

    big = config_defaults["big"]
    big.lambda_lpips = 0.0
    with torch.device("meta"):
        big_model = LGM(big)
    table = {k: list(v.shape) for k, v in big_model.state_dict().items()}

    from safetensors.torch import save_file

    save_file({k: v.detach().float().contiguous() for k, v in out.items()}, str(OUT),
              metadata={"big_state_dict_shapes": json.dumps(table), "splat_size": str(splat),
                        # the inputs are regenerated by the test from this seed; their sum catches generator drift
                        "views_seed": "1234", "views_sum": repr(float(views.double().sum())),
                        "source": "3DTopia/LGM@fe8d12c, kiui 0.3.5"})
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(table)} big-config keys)")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: make_lgm_golden.py /path/to/LGM-checkout [/path/to/unpacked-kiui]")
    main(*sys.argv[1:])
