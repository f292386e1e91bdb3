"""A metric model file that is not in its models/ folder is refused before the graph runs, with one line naming the
folder and the files there (folders.model_choice_problem; ComfyUI 0.3.75 does not check V3 combo values itself)."""

from __future__ import annotations


def test_metric_model_choices_outside_their_folders_are_refused_naming_the_files_there(pack):
    from dreamedit3d_pack.nodes import folders

    sam = folders.model_folder(folders.FOLDER_SAMS) / "mc_sam.pth"
    dino = folders.model_folder(folders.FOLDER_DINO) / "mc_dino.safetensors"
    for path in (sam, dino):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    try:
        metrics = pack.NODES["DreamEdit3D_EditMetrics"].validate_inputs
        report = pack.NODES["DreamEdit3D_TokenReport"].validate_inputs
        masks = pack.NODES["DreamEdit3D_ComponentMask"].validate_inputs

        refused = metrics(clip_model="(none)", dino_model="gone.safetensors")
        assert refused.startswith("dino_model 'gone.safetensors' is not in models/dino (files there: ")
        assert "mc_dino.safetensors" in refused and refused.endswith("put it there and refresh")
        assert metrics(clip_model="(none)", dino_model="mc_dino.safetensors") is True
        assert report(clip_model="gone.safetensors").startswith("clip_model 'gone.safetensors' is not in models/clip_vision")
        assert report() is True and report(clip_model=None, dino_model="mc_dino.safetensors") is True  # linked / chosen

        # ComponentMask has no folder-specific check: the schema check (nodes/checks.py) refuses any file not listed
        assert "not one of the choices" in masks(source="sam", sam_model="gone.pth")
        sam.unlink()  # removed after the list was shown: the metric nodes name the folder and what is there
        gone = folders.model_choice_problem(folders.FOLDER_SAMS, "mc_sam.pth", "sam_model")
        assert gone.startswith("sam_model 'mc_sam.pth' is not in models/sams (files there: ")
        assert gone.endswith("); put it there and refresh") and gone.count("mc_sam.pth") == 1  # not listed any more
        assert folders.model_choice_problem(folders.FOLDER_SAMS, None, "sam_model") is None  # a linked input
        assert folders.model_choice_problem("no_such_kind", "x.pt", "model").startswith("model 'x.pt' is not in models/")
    finally:
        for path in (sam, dino):
            path.unlink(missing_ok=True)
