"""The model-reading evaluation and mask nodes run again when a chosen model file is overwritten (fingerprint_inputs),
and ask nothing of files they were not told to read."""

from __future__ import annotations

import os


def _write(path, data: bytes, stamp_ns: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(stamp_ns, stamp_ns))


def test_metric_mask_and_report_nodes_follow_their_model_files(pack):
    from dreamedit3d_pack.nodes import folders

    clip = folders.model_folder(folders.FOLDER_CLIP_VISION) / "fp_clip.safetensors"
    dino = folders.model_folder(folders.FOLDER_DINO) / "fp_dino.safetensors"
    sam = folders.model_folder(folders.FOLDER_SAMS) / "fp_sam.pth"
    metrics = pack.NODES["DreamEdit3D_EditMetrics"]
    report = pack.NODES["DreamEdit3D_TokenReport"]
    masks = pack.NODES["DreamEdit3D_ComponentMask"]
    cases = [(metrics, clip, {"clip_model": "fp_clip.safetensors", "dino_model": "(none)"}),
             (metrics, dino, {"clip_model": "(none)", "dino_model": "fp_dino.safetensors"}),
             (report, clip, {"clip_model": "fp_clip.safetensors", "dino_model": "(none)"}),
             (masks, sam, {"source": "sam", "sam_model": "fp_sam.pth"})]
    for cls, path, inputs in cases:
        _write(path, b"first", 1_000_000_000)
        before = cls.fingerprint_inputs(**inputs)
        assert before == cls.fingerprint_inputs(**inputs) and "missing" not in before, cls
        _write(path, b"second, longer", 2_000_000_000)
        assert cls.fingerprint_inputs(**inputs) != before, cls
        path.unlink()
        assert "missing" in cls.fingerprint_inputs(**inputs), cls
    # nothing chosen, or SAM not used: no file is looked at
    assert metrics.fingerprint_inputs(clip_model="(none)", dino_model="(none)") == "|"
    assert report.fingerprint_inputs() == "|"
    assert masks.fingerprint_inputs(source="parts", sam_model="fp_sam.pth") == ""
    assert masks.fingerprint_inputs(source="sam", sam_model="(none)") == ""
