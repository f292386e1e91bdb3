"""One declared range per input: every registered node refuses what its own schema rules out (nodes/checks.py).

The expected limits are read from each node's schema and compared with values just outside them, so a node added
later is covered by the same loop; the values the issue found accepted are checked by name as well.
"""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.nodes


def _widgets(cls, kind):
    from comfy_api.latest import io

    return [i for i in cls.define_schema().inputs if isinstance(i, kind)]


def _validate(cls, **values):
    return cls.PREPARE_CLASS_CLONE({}).validate_inputs(**values)


def test_every_node_refuses_numbers_outside_its_schema_range_and_non_finite_floats(pack):
    from comfy_api.latest import io

    checked = 0
    for cls in pack.NODE_LIST:
        for inp in _widgets(cls, (io.Int.Input, io.Float.Input)):
            is_float = isinstance(inp, io.Float.Input)
            assert _validate(cls, **{inp.id: inp.default}) is True, (cls.__name__, inp.id)
            bad = []
            if inp.min is not None:
                bad.append(inp.min - (0.5 if is_float else 1))
            if inp.max is not None:
                bad.append(inp.max + (0.5 if is_float else 1))
            if is_float:
                bad += [math.nan, math.inf, -math.inf]
            for value in bad:
                message = _validate(cls, **{inp.id: value})
                assert isinstance(message, str) and message.startswith(inp.id), (cls.__name__, inp.id, value, message)
                checked += 1
    assert checked > 60


def test_the_values_found_accepted_before_are_refused_at_their_node(pack):
    cases = [
        ("DreamEdit3D_MVScheduler", "steps", 0, "below its minimum 1"),
        ("DreamEdit3D_MVScheduler", "steps", 1001, "above its maximum 1000"),
        ("DreamEdit3D_MVScheduler", "denoise", float("nan"), "finite"),
        ("DreamEdit3D_MVScheduler", "denoise", float("inf"), "finite"),
        ("DreamEdit3D_MVScheduler", "denoise", -1.0, "below its minimum"),
        ("DreamEdit3D_MVScheduler", "denoise", 2.0, "above its maximum"),
        ("DreamEdit3D_OrthoRender", "elevation_deg", -60.0, "below its minimum"),
        ("DreamEdit3D_OrthoRender", "fov_deg", 120.0, "above its maximum"),
        ("DreamEdit3D_LiftToMesh", "face_budget", 2_000_001, "above its maximum"),
        ("DreamEdit3D_LiftToMesh", "texture_size", 4097, "above its maximum"),
    ]
    for node_id, key, value, fragment in cases:
        message = _validate(pack.NODES[node_id], **{key: value})
        assert isinstance(message, str) and fragment in message and key in message, (node_id, key, value, message)


def test_every_combo_refuses_a_value_not_among_its_choices(pack):
    from comfy_api.latest import io

    checked = 0
    for cls in pack.NODE_LIST:
        for inp in _widgets(cls, io.Combo.Input):
            if inp.upload is not None:
                continue  # file uploads: the node's own check (annotated names, traversal) - tested below
            message = _validate(cls, **{inp.id: "no-such-choice"})
            assert isinstance(message, str) and "no-such-choice" in message, (cls.__name__, inp.id, message)
            checked += 1
    assert checked >= 10


def test_own_validators_still_run_and_linked_inputs_are_not_checked(pack):
    render = pack.NODES["DreamEdit3D_OrthoRender"]
    assert "multiple of 8" in _validate(render, resolution=68)
    assert "outside the input folder" in _validate(render, asset="../x.glb")
    assert _validate(render, resolution=None, lighting=None) is True  # linked inputs arrive as None
    lift = pack.NODES["DreamEdit3D_LiftToMesh"]
    assert "not one of" in _validate(lift, mode="melt")


def test_a_node_without_its_own_validator_is_checked_too(pack):
    sheet = pack.NODES["DreamEdit3D_ContactSheet"]
    assert "padding" in _validate(sheet, padding=65)
    compose = pack.NODES["DreamEdit3D_ComposePrompt"]
    assert _validate(compose, prompt="a <robot>", mvdream_suffix=True) is True


def test_installation_is_idempotent_and_keeps_the_nodes_own_check(pack):
    from dreamedit3d_pack.nodes.checks import install_schema_checks

    cls = pack.NODES["DreamEdit3D_MVScheduler"]
    before = cls.validate_inputs
    assert install_schema_checks(cls) is cls and cls.validate_inputs == before


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "..\\..\\x.glb", "C:/x", "sub/x", "", ".hidden"])
def test_save_nodes_refuse_names_that_leave_their_folder(pack, name):
    for node_id, key in (("DreamEdit3D_SaveMVDream", "filename"), ("DreamEdit3D_SaveTokens", "name"),
                         ("DreamEdit3D_MultiViewTextualInversion", "run_name"), ("DreamEdit3D_MVFineTune", "run_name")):
        message = _validate(pack.NODES[node_id], **{key: name})
        assert isinstance(message, str) and key in message and (repr(name) in message or not name), (node_id, name, message)
    assert _validate(pack.NODES["DreamEdit3D_SaveMVDream"], filename="my-model") is True


@pytest.mark.parametrize("prefix", ["../../x", "/tmp/x", "..\\..\\x", "C:/x"])
def test_every_filename_prefix_stays_in_the_output_folder(pack, prefix):
    nodes = [cls for cls in pack.NODE_LIST if any(i.id == "filename_prefix" for i in cls.define_schema().inputs)]
    assert {cls.define_schema().node_id for cls in nodes} >= {"DreamEdit3D_LiftToMesh", "DreamEdit3D_SaveViews"}
    for cls in nodes:
        message = _validate(cls, filename_prefix=prefix)
        assert isinstance(message, str) and "leaves the output folder" in message, (cls.__name__, message)
        assert _validate(cls, filename_prefix="dreamedit3d/sub/edit") is True


def test_save_mvdream_execute_refuses_traversal_and_writes_nothing(pack):
    from dreamedit3d_pack.nodes import folders

    cls = pack.NODES["DreamEdit3D_SaveMVDream"].PREPARE_CLASS_CLONE({})
    before = set(folders.model_folder("mvdream").parent.parent.rglob("*"))
    with pytest.raises(ValueError, match="tries to leave its folder"):
        cls.execute(model=object(), filename="../../escape")
    assert set(folders.model_folder("mvdream").parent.parent.rglob("*")) == before


def test_nodes_that_read_files_run_again_when_the_file_is_overwritten(pack):
    """fingerprint_inputs (ComfyUI's IS_CHANGED) follows the file's content stamp, so a cached result is not reused
    after a user replaces a file under the same name."""
    import os

    from dreamedit3d_pack.nodes import folders

    asset = folders.input_folder() / "fp" / "thing.obj"
    asset.parent.mkdir(parents=True, exist_ok=True)
    ckpt = folders.model_folder("mvdream") / "fp.safetensors"
    tokens = folders.model_folder("mvdream_tokens") / "fp.safetensors"
    glb = folders.output_folder() / "fp" / "x.glb"
    glb.parent.mkdir(parents=True, exist_ok=True)
    cases = [(pack.NODES["DreamEdit3D_OrthoRender"], asset, {"asset": "fp/thing.obj", "resolution": 64}),
             (pack.NODES["DreamEdit3D_MVDreamLoader"], ckpt, {"ckpt_name": "fp.safetensors", "dtype": "auto"}),
             (pack.NODES["DreamEdit3D_LoadTokens"], tokens, {"tokens_name": "fp.safetensors"}),
             (pack.NODES["DreamEdit3D_ReadProvenance"], glb, {"path": "fp/x.glb", "file": "none"})]
    for cls, path, inputs in cases:
        path.write_bytes(b"first")
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
        before = cls.fingerprint_inputs(**inputs)
        assert cls.fingerprint_inputs(**inputs) == before, cls  # unchanged file: ComfyUI may reuse the result
        path.write_bytes(b"second, longer")
        assert cls.fingerprint_inputs(**inputs) != before, cls
        path.unlink()
        assert cls.fingerprint_inputs(**inputs) == "missing", cls


def test_rarely_changed_training_inputs_are_advanced(pack):
    def advanced(inp):
        return bool(getattr(inp, "advanced", False) or (getattr(inp, "extra_dict", None) or {}).get("advanced"))

    schema = pack.NODES["DreamEdit3D_MVFineTune"].define_schema()
    widgets = [i for i in schema.inputs if i.id not in ("model", "views", "tokens")]
    folded = {i.id for i in widgets if advanced(i)}
    assert len(widgets) == 15 and len(folded) >= 9  # the 15th: the optimizer (adamw / adamw8bit), folded
    assert "optimizer" in folded
    assert {"steps", "learning_rate", "mode", "seed", "run_name"}.isdisjoint(folded)  # what users set every time
    info = pack.NODES["DreamEdit3D_MVFineTune"].INPUT_TYPES()["required"]
    assert info["lora_rank"][1].get("advanced") is True  # reaches /object_info for the frontend


def test_orthorender_keeps_its_id_and_says_it_renders_perspective_views(pack):
    schema = pack.NODES["DreamEdit3D_OrthoRender"].define_schema()
    assert schema.node_id == "DreamEdit3D_OrthoRender" and "Ortho" not in schema.display_name
    assert "perspective" in schema.description and "orthogonal directions" in schema.description


def test_option_lists_are_the_cores(pack):
    from dreamedit3d_pack.dreamedit3d_core.types import MaskSource

    masks = {i.id: i for i in pack.NODES["DreamEdit3D_ComponentMask"].define_schema().inputs}
    assert masks["source"].options == [m.value for m in MaskSource]


def test_inputs_added_since_release_are_optional_so_saved_workflows_still_validate(pack):
    added = {"DreamEdit3D_SaveTokens": "if_exists", "DreamEdit3D_SaveViews": "samples",
             "DreamEdit3D_ContactSheet": "samples"}
    for node_id, input_id in added.items():
        info = pack.NODES[node_id].INPUT_TYPES()
        assert input_id in info.get("optional", {}) and input_id not in info["required"], (node_id, input_id)


def test_a_node_whose_own_check_reads_link_types_still_gets_comfys_link_type_check(pack):
    # ComfyUI skips its link type check for a node whose validator takes input_types (OrthoRender does): ours runs it
    render = pack.NODES["DreamEdit3D_OrthoRender"]
    message = _validate(render, input_types={"mesh": "IMAGE"}, asset="../x.glb")
    assert isinstance(message, str) and "mesh" in message and "IMAGE" in message
    assert _validate(render, input_types={"mesh": "MESH"}, asset="../x.glb") is True


def test_the_pack_registers_its_model_folders_with_comfyui(pack):
    import folder_paths

    for kind, ext in (("mvdream", ".pt"), ("mvdream_tokens", ".safetensors"), ("sams", ".pth"),
                      ("dino", ".safetensors"), ("lgm", ".safetensors")):
        paths, extensions = folder_paths.folder_names_and_paths[kind]
        assert ext in extensions and any(p.replace("\\", "/").endswith(f"models/{kind}") for p in paths), kind


def test_training_nodes_take_their_defaults_from_the_cores_configs(pack):
    from dreamedit3d_pack.dreamedit3d_core.personalize.finetune import FTConfig
    from dreamedit3d_pack.dreamedit3d_core.personalize.textual_inversion import TIConfig

    for node_id, config in (("DreamEdit3D_MultiViewTextualInversion", TIConfig()), ("DreamEdit3D_MVFineTune", FTConfig())):
        inputs = {i.id: i for i in pack.NODES[node_id].define_schema().inputs}
        assert inputs["steps"].default == config.steps and inputs["learning_rate"].default == config.lr
        assert inputs["attention_loss_weight"].default == config.attention_loss_weight
