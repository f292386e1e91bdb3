"""Component masks from part ids, the multi-view prompt geometry, cross-view disagreement, and the SAM path on a tiny
random SAM built from segment-anything's own classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from _render_helpers import lumpy_scene
from dreamedit3d_core.testing.sam import tiny_sam
from dreamedit3d_core.assets import asset_from_arrays
from dreamedit3d_core.cameras import MVCameras
from dreamedit3d_core.errors import CheckpointError, ConfigError
from dreamedit3d_core.masks import (SamPrompt, lift_pixels, load_sam, mask_disagreement, masks_from_parts, masks_from_sam,
                                    parse_component_spec, project_visible)
from dreamedit3d_core.render import render_views
from dreamedit3d_core.types import MaskSource

pytestmark = pytest.mark.numeric
RES = 64


@pytest.fixture(scope="module")
def three_part_render():
    """Body (lumpy sphere), Hat (box on top, seen from every view), Badge (small box on the +x front only)."""
    verts, faces, parts = lumpy_scene()
    badge = trimesh.creation.box((0.1, 0.12, 0.12))
    bv = badge.vertices + np.array([0.5, 0.0, 0.0])
    core = trimesh.creation.box((0.05, 0.05, 0.05))  # hidden inside the body in every view
    v = np.concatenate([verts, bv, core.vertices])
    f = np.concatenate([faces, badge.faces + len(verts), core.faces + len(verts) + len(bv)])
    p = np.concatenate([parts, np.full(len(badge.faces), 2), np.full(len(core.faces), 3)])
    asset = asset_from_arrays(v, f, part_ids=p, part_names=("Body", "Hat", "Badge", "Core"), normalise=False)
    return render_views(asset, resolution=RES, ssaa=1)


def test_part_masks_follow_the_spec_case_insensitively(three_part_render):
    r = three_part_render
    m = masks_from_parts(r, "hat: HAT; <body>: *")
    assert m.names == ("hat", "body") and m.source == MaskSource.PARTS and m.masks.shape == (2, 4, RES, RES)
    assert torch.equal(m.masks[0], r.part_id == 1)
    assert torch.equal(m.masks[1], (r.part_id == 0) | (r.part_id == 2) | (r.part_id == 3))
    same = masks_from_parts(r, {"hat": ["hat"], "body": "*"})
    assert torch.equal(same.masks, m.masks)
    # empty in some views is fine: the badge on the front (+x) is hidden from the back view
    badge = masks_from_parts(r, "badge: Badge")
    assert badge.masks[0, 0].any() and not badge.masks[0, 2].any()
    assert float(m.disagreement.abs().max()) == 0.0


def test_bad_specs_give_clear_errors(three_part_render):
    r = three_part_render
    with pytest.raises(ConfigError, match=r"names part 'Brim', which this asset does not have; available parts: "
                                          r"Body, Hat, Badge, Core"):
        masks_from_parts(r, "hat: Hat, Brim; body: *")
    with pytest.raises(ConfigError, match=r"component\(s\) 'core' cover no pixel in any view"):
        masks_from_parts(r, "core: Core")
    with pytest.raises(ConfigError, match="given to both 'a' and 'b'"):
        masks_from_parts(r, "a: Hat; b: hat")
    with pytest.raises(ConfigError, match="only one component may take"):
        parse_component_spec("a: *; b: *")
    with pytest.raises(ConfigError, match="has no ':'"):
        parse_component_spec("hat Hat")
    with pytest.raises(ConfigError, match="is empty"):
        parse_component_spec(" ; ")
    with pytest.raises(ConfigError, match="named twice"):
        parse_component_spec("hat: Hat; HAT: Body")
    with pytest.raises(ConfigError, match="not valid"):
        parse_component_spec("my hat: Hat")


def test_named_entries_read_the_per_component_text_form():
    from dreamedit3d_core.masks.spec import named_entries

    text = " hat : Hat, Brim ;\n\n dog:*; ;cat:"
    assert named_entries(text, "component", "'c: P'") == [("hat", "Hat, Brim"), ("dog", "*"), ("cat", "")]
    assert named_entries(" ; \n ", "component", "'c: P'") == []
    with pytest.raises(ConfigError, match=r"^init_words entry 'hat hat' has no ':'; write 'component: word'$"):
        named_entries("dog: puppy; hat hat", "init_words", "'component: word'")
    # the spec parser reads its text through it: same parts, same order, as from the equivalent dict
    assert parse_component_spec("hat: Hat, Brim\ndog: *") == parse_component_spec({"hat": "Hat, Brim", "dog": "*"}) \
        == {"hat": ["Hat", "Brim"], "dog": "*"}


def test_disagreement_is_small_for_consistent_masks_and_large_for_inconsistent_ones(three_part_render):
    r = three_part_render
    m = masks_from_parts(r, "hat: Hat; body: Body")
    d = mask_disagreement(r, m.masks)
    assert float(d.max()) < 0.06, d
    swapped = m.masks.clone()
    swapped[:, 1:] = m.masks.flip(0)[:, 1:]  # views 1..3 show the other component's mask
    d_bad = mask_disagreement(r, swapped)
    assert float(d_bad.min()) > 0.25, d_bad


def _cube_render(elevation=15.0, res=RES):
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    asset = asset_from_arrays(box.vertices, box.faces, normalise=False)
    return render_views(asset, MVCameras.mvdream_default(elevation_deg=elevation), resolution=res, ssaa=1)


def _ray_hits_plane(cams, view, xy, res, axis, value):
    """Analytic hit of the ray through pixel coordinates ``xy`` with the plane world[axis] = value."""
    c2w = cams.c2w(torch.float64)[view].numpy()
    f = cams.focal_px(res)
    d_cam = np.array([(xy[0] - res / 2) / f, -(xy[1] - res / 2) / f, -1.0])
    d = c2w[:3, :3] @ d_cam
    o = c2w[:3, 3]
    return o + (value - o[axis]) / d[axis] * d


def test_a_point_on_the_front_view_lands_on_the_same_surface_point_in_the_other_views():
    r = _cube_render()
    cams = r.cameras
    # the top face (y = 0.5) is seen by every view at elevation 15: pick a front-view pixel on it
    top = np.array([0.1, 0.5, -0.15])
    xy0 = cams.project(torch.tensor(top[None]), RES, RES)[0][0, 0].numpy()
    xy0 = np.floor(xy0) + 0.5  # a pixel centre
    expect = _ray_hits_plane(cams, 0, xy0, RES, 1, 0.5)
    world, valid = lift_pixels(r, 0, torch.tensor(xy0[None]))
    assert bool(valid[0])
    np.testing.assert_allclose(world[0].numpy(), expect, atol=1e-5)
    xy, visible = project_visible(r, world)
    assert visible[:, 0].all(), "a top-face point is visible in all four views"
    # one pixel on the top face, seen 15 degrees above its plane, is stretched by 1/sin(15) along the view direction
    footprint = (cams.radius + 0.7) / cams.focal_px(RES) / np.sin(np.radians(15.0))
    for v in range(4):
        col, row = (int(c) for c in xy[v, 0].floor())
        assert torch.allclose(r.normals[v, :, row, col], torch.tensor([0.0, 1.0, 0.0])), f"view {v}: not the top face"
        back, ok = lift_pixels(r, v, xy[v])
        assert bool(ok[0])
        assert float((back[0] - world[0]).norm()) < footprint, f"view {v} lands elsewhere"
    # the centre of the front face (x = 0.5) is hidden from the back view and edge-on for the side views
    front = cams.project(torch.tensor([[0.5, 0.0, 0.0]]), RES, RES)[0][0]
    world, valid = lift_pixels(r, 0, front)
    _, visible = project_visible(r, world)
    assert visible[:, 0].tolist() == [True, False, False, False]


def test_sam_checkpoint_loads_with_its_architecture_read_from_the_weights(tmp_path):
    sam = tiny_sam(seed=3)
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    loaded = load_sam(path)
    assert loaded.image_encoder.img_size == 64 and len(loaded.image_encoder.blocks) == 2
    assert loaded.image_encoder.blocks[0].window_size == 3 and loaded.image_encoder.blocks[1].window_size == 0
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.image_encoder(x), sam.image_encoder(x), atol=1e-5, rtol=1e-5)
    torch.save({"foo": torch.zeros(1)}, tmp_path / "not_sam.pth")
    with pytest.raises(CheckpointError, match=r"not_sam\.pth: is not a Segment Anything checkpoint"):
        load_sam(tmp_path / "not_sam.pth")
    with pytest.raises(CheckpointError, match="SAM checkpoint not found"):
        load_sam(tmp_path / "missing.pth")
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match=r"cut\.pth: cannot be read as a SAM checkpoint"):
        load_sam(tmp_path / "cut.pth")


def test_sam_is_prompted_in_every_view_with_the_reprojected_points(tmp_path):
    """Our path (file -> load_sam -> lifted prompts -> SamPredictor) equals SamPredictor on the same model prompted
    with points computed here from the analytic cube geometry."""
    from segment_anything import SamPredictor

    r = _cube_render()
    cams = r.cameras
    sam = tiny_sam(seed=1)
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    # two points on the top face picked on the front view, one negative point on the front face (hidden elsewhere)
    on_top = [np.array([0.1, 0.5, -0.15]), np.array([-0.2, 0.5, 0.2])]
    on_front = np.array([0.5, -0.1, 0.1])
    xy0 = [np.floor(cams.project(torch.tensor(p[None]), RES, RES)[0][0, 0].numpy()) + 0.5
           for p in on_top + [on_front]]
    got = masks_from_sam(r, path, [SamPrompt("top", 0, tuple(map(tuple, xy0)), (1, 1, 0))])
    assert got.source == MaskSource.SAM and got.names == ("top",) and got.masks.shape == (1, 4, RES, RES)
    predictor = SamPredictor(sam)
    alpha = (r.alpha[:, 0] > 0.5).numpy()
    for v in range(4):
        if v == 0:
            pts, labels = np.stack(xy0), np.array([1, 1, 0])
        else:  # analytic 3D points of the picked pixels, projected; the front-face point is hidden from views 1..3
            world = [_ray_hits_plane(cams, 0, xy0[0], RES, 1, 0.5), _ray_hits_plane(cams, 0, xy0[1], RES, 1, 0.5)]
            pts = cams.project(torch.tensor(np.stack(world)), RES, RES)[0][v].numpy()
            labels = np.array([1, 1])
        img = (r.rgb[v].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        predictor.set_image(img)
        ref, _, _ = predictor.predict(point_coords=pts - 0.5, point_labels=labels, multimask_output=False)
        assert np.array_equal(got.masks[0, v].numpy(), ref[0] & alpha[v]), f"view {v} differs from direct SAM"
    assert got.disagreement.shape == (1,) and 0.0 <= float(got.disagreement[0]) <= 1.0


def test_sam_box_prompts_and_bad_prompts(tmp_path):
    r = _cube_render()
    sam = tiny_sam(seed=1)
    m = masks_from_sam(r, sam, {"cube": {"view": 0, "box": [10, 10, 54, 54]}})
    assert m.masks.shape == (1, 4, RES, RES) and m.masks[0].any()
    with pytest.raises(ConfigError, match=r"point\(s\) \[\(1\.5, 1\.5\)\] on view 0 are not on the object"):
        masks_from_sam(r, sam, {"cube": {"view": 0, "points": [[1.5, 1.5]]}})
    with pytest.raises(ConfigError, match="view 7 does not exist"):
        masks_from_sam(r, sam, [SamPrompt("cube", 7, ((32.5, 32.5),))])
    with pytest.raises(ConfigError, match="unknown keys"):
        masks_from_sam(r, sam, {"cube": {"pts": [[1, 1]]}})
    with pytest.raises(ConfigError, match="one label"):
        SamPrompt("cube", 0, ((1, 1),), (1, 0))
    with pytest.raises(ConfigError, match="not valid JSON"):
        masks_from_sam(r, sam, "{cube")


def test_sam_one_component_form_with_the_rest_of_the_object(tmp_path):
    """What the node passes: components spec + points on one view; '*' gets the object minus the SAM component."""
    r = _cube_render()
    sam = tiny_sam(seed=1)
    xy = tuple(float(c) for c in r.cameras.project(torch.tensor([[0.1, 0.5, -0.15]]), RES, RES)[0][0, 0])
    single = masks_from_sam(r, sam, [SamPrompt("top", 0, (xy,))])
    both = masks_from_sam(r, sam, components="rest: *; top: Top", view=0, points=[xy])
    assert both.names == ("rest", "top")
    assert torch.equal(both.masks[1], single.masks[0])
    assert torch.equal(both.masks[0], (r.alpha[:, 0] > 0.5) & ~single.masks[0])
    assert both.disagreement.shape == (2,)
    with pytest.raises(ConfigError, match="segments one component"):
        masks_from_sam(r, sam, components="a: A; b: B", points=[xy])


@pytest.mark.assets
def test_parts_of_a_real_asset_make_component_masks(shared_assets):
    from dreamedit3d_core.assets import load_asset

    r = render_views(load_asset(shared_assets / "kenney_character.glb"), resolution=RES, ssaa=1)
    m = masks_from_parts(r, "antenna: Antenna; arms: arm-left, ARM-RIGHT; robot: *")
    assert m.names == ("antenna", "arms", "robot")
    assert m.masks.any(dim=(2, 3)).all(), "every component is seen in every view"
    assert not (m.masks.sum(0) > 1).any() and torch.equal(m.masks.any(0), r.part_id >= 0)
    assert float(mask_disagreement(r, m.masks).max()) < 0.1


def test_masks_package_modules_import_alone_and_the_old_sam_path_is_the_same_objects():
    """spec, parts, reproject and sam each import in a fresh interpreter (no cycle between them), and
    ``dreamedit3d_core.masks_sam`` (the path before the package) names the very same functions."""
    import subprocess
    import sys
    from pathlib import Path

    import dreamedit3d_core.masks as pkg
    import dreamedit3d_core.masks_sam as old

    root = str(Path(pkg.__file__).resolve().parents[2])
    for mod in ("spec", "parts", "reproject", "sam"):
        code = f"import sys; sys.path.insert(0, {root!r}); import dreamedit3d_core.masks.{mod}"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, f"dreamedit3d_core.masks.{mod} does not import alone: {done.stderr[-400:]}"
    assert old.masks_from_sam is pkg.masks_from_sam and old.SamPrompt is pkg.SamPrompt and old.load_sam is pkg.load_sam
