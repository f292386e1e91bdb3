"""LiftToMesh's component-aware options against the real comfy_api in-process (no server): ``keep`` and ``components``
widgets, the edit prompt read from MVSample's samples, "auto" = component_aware with an asset."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from _comfy_pack import install_robot_asset

pytestmark = pytest.mark.nodes

#: kenney_character.glb's faces per part, in part order (legs, torso, arms, antenna).
PART_FACES = {"leg-left": 44, "leg-right": 44, "torso": 182, "arm-left": 80, "arm-right": 80, "antenna": 120}


def run(pack, node_id, hidden=None, **inputs):
    cls = pack.NODES[node_id]
    return cls.PREPARE_CLASS_CLONE(hidden or {}).execute(**inputs)


@pytest.fixture(scope="module")
def rendered(pack):
    from dreamedit3d_pack.nodes import folders

    install_robot_asset(folders.input_folder())
    with torch.inference_mode():
        out = run(pack, "DreamEdit3D_OrthoRender", asset="robot/kenney_character.glb", resolution=96).result
    return dict(images=out[0], alpha=out[1], views=out[-1])


def lift(pack, rendered, **inputs):
    from comfy_api.latest import io

    hidden = {io.Hidden.prompt: {}, io.Hidden.unique_id: "7"}
    options = dict(images=rendered["images"], views=rendered["views"], grid=32, texture_size=0, face_budget=0,
                   filename_prefix="dreamedit3d/component_node")
    options.update(inputs)
    with torch.inference_mode():
        return run(pack, "DreamEdit3D_LiftToMesh", hidden, **options)


def faces_of(out) -> int:
    return int(out.result[0].faces.shape[1])


def test_the_node_offers_keep_and_components_and_checks_keep(pack):
    cls = pack.NODES["DreamEdit3D_LiftToMesh"]
    schema = cls.define_schema()
    inputs = {i.id: i for i in schema.inputs}
    assert inputs["keep"].options == ["all_but_edited", "listed", "none"] and inputs["keep"].default == "all_but_edited"
    assert inputs["keep"].optional and inputs["components"].optional and inputs["samples"].optional
    assert "component_aware" in inputs["mode"].options
    assert "keep 'some' is not one of" in cls.validate_inputs(keep="some")
    assert cls.validate_inputs(keep="listed") is True


def test_auto_with_an_asset_keeps_every_face_of_an_unedited_asset(pack, rendered):
    from dreamedit3d_pack.nodes.lifting import lift_plan

    assert lift_plan("auto", True, False) == ("component_aware", None)
    out = lift(pack, rendered, mode="auto")
    assert faces_of(out) == sum(PART_FACES.values())  # the source, face for face


def test_a_listed_keep_rebuilds_the_other_components(pack, rendered):
    out = lift(pack, rendered, mode="component_aware", keep="listed", components="torso, <antenna>")
    # torso and antenna kept face for face; legs and arms rebuilt from the views (marching cubes: other faces)
    assert faces_of(out) > PART_FACES["torso"] + PART_FACES["antenna"]
    assert faces_of(out) != sum(PART_FACES.values())
    from dreamedit3d_pack.dreamedit3d_core.errors import ConfigError

    with pytest.raises(ConfigError, match="'hat'.*components are"):
        lift(pack, rendered, mode="component_aware", keep="listed", components="hat")


def test_the_prompt_from_the_samples_names_what_the_edit_touches(pack, rendered):
    from dreamedit3d_pack.dreamedit3d_core.render import render_views
    from dreamedit3d_pack.nodes.sockets import MVSamples, to_comfy_image

    views = rendered["views"]
    asset = views.asset
    arm = asset.part_names.index("arm-right")
    keep = asset.part_ids != arm
    per_face = {k: getattr(asset, k)[keep] for k in ("faces", "part_ids", "face_base_color", "face_textures")
                if getattr(asset, k) is not None}
    edited = dataclasses.replace(asset, **per_face)  # the right arm removed
    images = to_comfy_image(render_views(edited, views.render.cameras, resolution=96, lighting="unlit").rgb)
    plain = lift(pack, rendered, images=images, mode="component_aware", keep="all_but_edited",
                 samples=MVSamples(images, {"prompts": ["a robot without its right arm"]}))
    # no <token> in the prompt: every face but the removed arm's kept as it is, nothing rebuilt
    assert faces_of(plain) == sum(PART_FACES.values()) - PART_FACES["arm-right"]
    told = lift(pack, rendered, images=images, mode="component_aware", keep="all_but_edited",
                samples=MVSamples(images, {"prompts": ["a robot, <torso> and <antenna> as they are"]}))
    # the components the prompt leaves out (legs, the left arm) are rebuilt from the views: other faces
    assert faces_of(told) != faces_of(plain)


def test_a_reconstructor_shapes_component_aware_new_parts_and_is_refused_by_whole_source_modes(pack, rendered):
    from dreamedit3d_pack.dreamedit3d_core.errors import ConfigError
    from dreamedit3d_pack.nodes.lifting import lift_plan

    assert lift_plan("component_aware", True, True) == ("component_aware", "lgm")
    for mode in ("source_guided", "keep_source"):
        with pytest.raises(ConfigError, match="reconstructor to 'none'"):
            lift_plan(mode, True, True)
