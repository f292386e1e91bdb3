"""Lifting rejects bad views, options and results with clear errors, and never writes a broken file."""

from __future__ import annotations

import json

import pytest
import torch

from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.errors import ConfigError, LiftError, ShapeError
from dreamedit3d_core.lifting import (
    export_mesh,
    lift_to_mesh,
    list_reconstructors,
    read_provenance,
    register_reconstructor,
    unregister_reconstructor,
)
from dreamedit3d_core.lifting.views import key_background
from dreamedit3d_core.types import LiftedMesh

CAMS = MVCameras.mvdream_default()
H, W = 48, 40  # different sizes per axis


def _disc_views(radius_px: float = 10.0):
    """A grey disc in the middle of each of the four views on white (a sphere-like object), with its alpha."""
    rows = torch.arange(H).float()[:, None] + 0.5
    cols = torch.arange(W).float()[None, :] + 0.5
    disc = (((rows - H / 2) ** 2 + (cols - W / 2) ** 2) <= radius_px ** 2).float()
    alpha = disc.expand(4, 1, H, W).clone()
    rgb = 0.4 * alpha.expand(4, 3, H, W) + (1 - alpha)
    return rgb.contiguous(), alpha


def test_wrong_view_count_names_both_counts():
    rgb, _ = _disc_views()
    with pytest.raises(ShapeError, match="got 3 views but the cameras have 4"):
        lift_to_mesh(rgb[:3], CAMS)


def test_channels_last_images_get_a_layout_hint():
    rgb, _ = _disc_views()
    with pytest.raises(ShapeError, match="channels-first"):
        lift_to_mesh(rgb.permute(0, 2, 3, 1), CAMS)


def test_too_small_views_are_rejected():
    rgb = torch.ones(4, 3, 16, 16)
    with pytest.raises(ShapeError, match="at least 32x32"):
        lift_to_mesh(rgb, CAMS)


def test_nan_pixels_name_the_view():
    rgb, alpha = _disc_views()
    rgb[2, 1, 5, 5] = float("nan")
    with pytest.raises(ShapeError, match=r"NaN or inf pixels in view\(s\) \[2\]"):
        lift_to_mesh(rgb, CAMS, alpha=alpha)


def test_minus_one_to_one_images_are_rejected():
    rgb, alpha = _disc_views()
    with pytest.raises(ShapeError, match="must be in 0..1"):
        lift_to_mesh(rgb * 2 - 1, CAMS, alpha=alpha)


def test_alpha_of_another_size_is_rejected():
    rgb, alpha = _disc_views()
    with pytest.raises(ShapeError, match=r"alpha must have shape \[4, 1, 48, 40\]"):
        lift_to_mesh(rgb, CAMS, alpha=alpha[..., :20])


def test_empty_alpha_in_one_view_names_that_view():
    rgb, alpha = _disc_views()
    alpha[2] = 0
    with pytest.raises(LiftError, match=r"view 2 \(back\) shows no object: its alpha is empty"):
        lift_to_mesh(rgb, CAMS, alpha=alpha)


def test_keying_a_blank_view_says_to_set_the_background():
    rgb, _ = _disc_views()
    rgb[1] = 1.0
    with pytest.raises(LiftError, match=r"view 1 \(right\) shows no object.*set `background`"):
        lift_to_mesh(rgb, CAMS)


def test_wrong_background_colour_is_detected():
    rgb, _ = _disc_views()
    with pytest.raises(LiftError, match="object everywhere"):
        lift_to_mesh(rgb, CAMS, background=(0.0, 0.0, 0.0))


def test_silhouettes_that_do_not_intersect_report_an_empty_hull():
    rgb = torch.ones(4, 3, H, W)
    alpha = torch.zeros(4, 1, H, W)
    alpha[0, :, :8, :8] = 1  # top-left corner of the front view
    alpha[1, :, -8:, -8:] = 1  # bottom-right corner of the right view
    alpha[2, :, :8, -8:] = 1
    alpha[3, :, -8:, :8] = 1
    rgb = rgb * (1 - alpha) + 0.3 * alpha
    with pytest.raises(LiftError, match="visual hull is empty"):
        lift_to_mesh(rgb, CAMS, alpha=alpha, grid=32, texture_size=0)


def test_key_background_fills_white_details_inside_the_object():
    rgb, alpha = _disc_views()
    rgb[:, :, 22:26, 18:22] = 1.0  # a white patch inside the disc: still object
    rgb[:, :, 2, 2] = 0.0  # a single dark speck on the background: not object
    mask = key_background(rgb, (1, 1, 1))
    assert torch.equal(mask, alpha)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="carve"), r"unknown lift mode 'carve'; valid modes are \['hull', 'source_guided', 'keep_source', 'component_aware'\]"),
        (dict(mode="source_guided"), "needs the source asset"),
        (dict(grid=8), "grid must be within 16..512"),
        (dict(texture_size=32), "texture_size must be 0"),
        (dict(face_budget=10), "face_budget must be 0"),
        (dict(texture_size=0, refine_steps=5), "set texture_size > 0"),
        (dict(reconstructor="nope"), "unknown reconstructor 'nope'"),
    ],
)
def test_bad_options_raise_config_errors(kwargs, match):
    rgb, alpha = _disc_views()
    with pytest.raises(ConfigError, match=match):
        lift_to_mesh(rgb, CAMS, alpha=alpha, **kwargs)


def _tetra() -> LiftedMesh:
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float32)
    f = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    return LiftedMesh(vertices=v, faces=f, vertex_colors=torch.rand(4, 3, generator=torch.Generator().manual_seed(0)))


def test_export_refuses_an_empty_mesh_and_writes_nothing(tmp_path):
    empty = LiftedMesh(vertices=torch.zeros(0, 3), faces=torch.zeros(0, 3, dtype=torch.int64))
    with pytest.raises(LiftError, match="empty"):
        export_mesh(empty, tmp_path / "out.glb")
    assert list(tmp_path.iterdir()) == []


def test_export_checks_format_suffix_and_extras(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown mesh format 'fbx'"):
        export_mesh(_tetra(), tmp_path / "a", fmt="fbx")
    with pytest.raises(ConfigError, match="ends in .obj but fmt is 'glb'"):
        export_mesh(_tetra(), tmp_path / "a.obj", fmt="glb")
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        export_mesh(_tetra(), tmp_path / "a.glb", extras={"seed": object()})
    assert list(tmp_path.iterdir()) == []


def test_export_never_overwrites_and_keeps_provenance(tmp_path):
    first = export_mesh(_tetra(), tmp_path / "lift.glb", extras={"prompt": "a <hat> dog", "seed": 7})
    before = first.read_bytes()
    second = export_mesh(_tetra(), tmp_path / "lift", extras={"prompt": "other"})
    assert first.name == "lift.glb" and second.name == "lift_00001.glb"
    assert first.read_bytes() == before
    prov = read_provenance(first)
    assert prov["prompt"] == "a <hat> dog" and prov["seed"] == 7
    assert read_provenance(second)["prompt"] == "other"
    raw = json.loads(json.dumps(prov))
    assert "dreamedit3d_lift" in raw


def test_obj_export_uses_one_free_stem_for_all_files(tmp_path):
    (tmp_path / "m.mtl").write_text("taken")
    path = export_mesh(_tetra(), tmp_path / "m.obj", fmt="obj", extras={"seed": 3})
    assert path.name == "m_00001.obj"
    assert (tmp_path / "m.mtl").read_text() == "taken"
    assert read_provenance(path) == {"seed": 3, "dreamedit3d_lift": {}}
    lines = path.read_text().splitlines()
    assert sum(line.startswith("v ") for line in lines) == 4 and sum(line.startswith("f ") for line in lines) == 4


def test_read_provenance_rejects_files_that_are_not_glb(tmp_path):
    bad = tmp_path / "x.glb"
    bad.write_bytes(b"not a gltf file at all....")
    from dreamedit3d_core.errors import AssetError

    with pytest.raises(AssetError, match="not a binary glTF"):
        read_provenance(bad)


def test_reconstructor_registry_validates_and_replaces_the_hull():
    rgb, alpha = _disc_views()
    calls = []

    def octahedron(rgb_, alpha_, cameras, *, grid, device):
        calls.append((tuple(rgb_.shape), grid))
        v = torch.tensor([[0.3, 0, 0], [-0.3, 0, 0], [0, 0.3, 0], [0, -0.3, 0], [0, 0, 0.3], [0, 0, -0.3]])
        f = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
        return v, f

    with pytest.raises(ConfigError, match="must be callable"):
        register_reconstructor("octa", 3)
    with pytest.raises(ConfigError, match="other than"):
        register_reconstructor("hull", octahedron)
    register_reconstructor("octa", octahedron)
    try:
        with pytest.raises(ConfigError, match="already registered"):
            register_reconstructor("octa", octahedron)
        assert "octa" in list_reconstructors()
        mesh = lift_to_mesh(rgb, CAMS, alpha=alpha, grid=24, texture_size=0, reconstructor="octa")
        assert calls == [((4, 3, H, W), 24)]
        assert mesh.faces.shape[0] == 8 and mesh.stats["reconstructor"] == "octa"
        # the disc is grey (0.4) in every view, so every vertex the views see comes out grey
        assert torch.allclose(mesh.vertex_colors, torch.full((6, 3), 0.4), atol=0.02)
        register_reconstructor("octa", lambda *a, **k: (torch.zeros(3, 2), torch.zeros(1, 3)), overwrite=True)
        with pytest.raises(LiftError, match="expected a non-empty"):
            lift_to_mesh(rgb, CAMS, alpha=alpha, grid=24, texture_size=0, reconstructor="octa")
    finally:
        unregister_reconstructor("octa")
    assert "octa" not in list_reconstructors()


def test_three_dimensional_alpha_is_checked_for_nan_too():
    rgb, alpha = _disc_views()
    alpha = alpha[:, 0].clone()
    alpha[1, 3, 3] = float("nan")
    with pytest.raises(ShapeError, match="alpha contains NaN"):
        lift_to_mesh(rgb, CAMS, alpha=alpha)


def _sampled_like(rgb: torch.Tensor, alpha: torch.Tensor, backgrounds, noise: float = 0.02, seed: int = 0):
    """Views as a sampler returns them: each composited over its own off-white/grey background with a faint vertical
    gradient and pixel noise, no alpha."""
    g = torch.Generator().manual_seed(seed)
    v, _, h, w = rgb.shape
    ramp = torch.linspace(-0.015, 0.015, h).view(1, 1, h, 1)
    bg = torch.tensor(backgrounds, dtype=torch.float32).view(v, 3, 1, 1) + ramp
    out = rgb * alpha + bg * (1 - alpha) + noise * torch.randn(rgb.shape, generator=g)
    return out.clamp(0, 1)


def test_default_lift_keys_each_sampled_views_own_background():
    # before: the default keyed pure white, and these views stopped with "view 0 (front) is object everywhere"
    rgb, alpha = _disc_views(radius_px=12.0)
    views = _sampled_like(rgb, alpha, [(0.93, 0.94, 0.95), (0.9, 0.9, 0.9), (0.5, 0.5, 0.5), (0.97, 0.96, 0.95)])
    mesh = lift_to_mesh(views, CAMS, grid=24, texture_size=0)
    assert mesh.stats["silhouettes"] == "keyed_auto"
    # the grey disc comes back grey whatever each view's background was (no background mixed into its colour)
    assert torch.allclose(mesh.vertex_colors.mean(0), torch.full((3,), 0.4), atol=0.03), mesh.vertex_colors.mean(0)


def test_estimate_background_reads_each_views_border_even_where_the_object_touches_it():
    from dreamedit3d_core.lifting.views import estimate_background, key_views_auto

    rgb, alpha = _disc_views(radius_px=12.0)
    alpha[:, :, -5:, :] = 1.0  # a ground plate running out of the frame at the bottom (a quarter of the border ring)
    rgb = 0.4 * alpha.expand(4, 3, H, W) + (1 - alpha)
    views = _sampled_like(rgb, alpha, [(0.5, 0.55, 0.6)] * 4)
    est = estimate_background(views)
    assert torch.allclose(est.colors, torch.tensor([0.5, 0.55, 0.6]).expand(4, 3), atol=0.01), est.colors
    assert bool(est.is_flat().all()) and float(est.thresholds.min()) >= 0.06
    masks, _ = key_views_auto(views)
    wrong = (masks != alpha).flatten(1).sum(1)
    assert int(wrong.max()) <= 4, wrong  # a few pixels of the disc's outline at most, of 1920 per view


def test_views_without_a_flat_background_name_the_views_and_what_to_pass():
    rgb, alpha = _disc_views()
    rgb[1] = torch.rand(3, H, W, generator=torch.Generator().manual_seed(1))  # noise, as a tiny random model gives
    with pytest.raises(LiftError, match=r"view\(s\) 1 \(right\) have no flat background to key out.*pass alpha"):
        lift_to_mesh(rgb, CAMS, grid=24, texture_size=0)


def test_views_without_a_flat_background_take_the_source_silhouettes_with_one_warning():
    import trimesh

    from _lift_helpers import asset_from_trimesh

    source = asset_from_trimesh(trimesh.creation.icosphere(subdivisions=2, radius=0.35))
    rgb, _ = _disc_views()
    rgb = torch.rand(4, 3, H, W, generator=torch.Generator().manual_seed(2))
    with pytest.warns(UserWarning, match="using the source's silhouettes"):
        mesh = lift_to_mesh(rgb, CAMS, source=source, mode="source_guided", grid=24, texture_size=0)
    assert mesh.stats["silhouettes"] == "keyed_auto+source" and mesh.stats["source_silhouette_views"] == 4
    radius = mesh.vertices.norm(dim=1)
    assert 0.3 < float(radius.mean()) < 0.38


def test_an_explicit_background_is_keyed_exactly():
    rgb, alpha = _disc_views()
    views = _sampled_like(rgb, alpha, [(0.5, 0.5, 0.5)] * 4, noise=0.0)
    with pytest.raises(LiftError, match=r"view 0 \(front\) is object everywhere.*\(1, 1, 1\)"):
        lift_to_mesh(views, CAMS, background=(1.0, 1.0, 1.0))
    mesh = lift_to_mesh(views, CAMS, background=(0.5, 0.5, 0.5), grid=24, texture_size=0)
    assert mesh.stats["silhouettes"] == "keyed"
    with pytest.raises(ConfigError, match="background must be 'auto' or an RGB triple"):
        lift_to_mesh(views, CAMS, background="white")


def test_lift_mode_enum_and_plain_strings_are_the_same_mode():
    from dreamedit3d_core.lifting import LiftMode

    rgb, alpha = _disc_views()
    assert LiftMode("hull") is LiftMode.HULL and LiftMode.SOURCE_GUIDED == "source_guided"
    a = lift_to_mesh(rgb, CAMS, alpha=alpha, grid=24, texture_size=0, mode=LiftMode.HULL)
    b = lift_to_mesh(rgb, CAMS, alpha=alpha, grid=24, texture_size=0, mode="hull")
    assert a.stats["mode"] == b.stats["mode"] == "hull" and torch.equal(a.vertices, b.vertices)
