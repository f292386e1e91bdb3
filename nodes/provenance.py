"""Provenance in the graph: what made MVSample's views travels with them; SaveViews writes it; ReadProvenance reads it.

The record (prompts, seed, sampler, sigmas, model and token hashes) is carried on the data itself, never in a
registry: MVSample's IMAGE tensor carries it as an attribute (:func:`attach`; ComfyUI hands that same object to every
node downstream), and its MV_SAMPLES output carries it as a value (:class:`~nodes.sockets.MVSamples`). A core image
node in between (a resize, a sharpen) makes a new tensor without the attribute; then connect MV_SAMPLES to the
``samples`` input of SaveViews / ContactSheet and the record still arrives. Without either, the files carry what the
workflow's widgets say (:func:`workflow_values`), as they always do.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import torch

from ..dreamedit3d_core.errors import ConfigError
from ._compat import UPLOAD_FILE, io
from .folders import (input_folder, list_input_files, output_relative, resolve_input_file, resolve_output_file,
                      save_target, stamp_of)
from .sockets import MVSamplesSocket

CATEGORY = "DreamEdit3D/output"
#: the attribute of an IMAGE tensor that carries its record
ATTRIBUTE = "dreamedit3d_provenance"


def attach(images: torch.Tensor, record: dict) -> torch.Tensor:
    """Carry ``record`` on the IMAGE tensor ``images`` itself (returned, for chaining)."""
    setattr(images, ATTRIBUTE, dict(record))
    return images


def carried(images: Any, samples: Any = None) -> dict:
    """The record carried by ``samples`` (an MV_SAMPLES value) or else by the tensor ``images``; {} when neither."""
    record = getattr(samples, "record", None) or getattr(images, ATTRIBUTE, None)
    return dict(record or {})


# the names nodes used before the record moved onto the data (nodes/lifting.py reads with image_record)
remember = attach
recall = carried


# widget values worth recording from the running workflow
_WORKFLOW_KEYS = {"prompt", "negative_prompt", "seed", "noise_seed", "tokens_name", "ckpt_name", "sampler_name",
                  "scheduler", "steps", "cfg", "denoise", "components", "mode"}


def workflow_values(prompt: Any) -> dict:
    """The DreamEdit3D (and core sampler/noise) nodes' widget values in the running workflow: {"id:class": {...}}."""
    if not isinstance(prompt, dict):
        return {}
    nodes = {}
    for nid, node in prompt.items():
        ct = node.get("class_type", "") if isinstance(node, dict) else ""
        if ct.startswith("DreamEdit3D_") or ct in ("KSamplerSelect", "RandomNoise"):
            vals = {k: v for k, v in node.get("inputs", {}).items() if k in _WORKFLOW_KEYS and not isinstance(v, list)}
            if vals:
                nodes[f"{nid}:{ct}"] = vals
    return json.loads(json.dumps(nodes, default=str))


def sampler_name(sampler: Any, prompt: Any = None, node_id: Optional[str] = None, input_name: str = "sampler") -> str:
    """The core sampler's name: the KSamplerSelect widget feeding ``input_name`` of node ``node_id`` when the graph
    shows one, else the sampler function's name (``sample_euler`` -> ``euler``)."""
    try:
        link = prompt[str(node_id)]["inputs"][input_name]
        source = prompt[str(link[0])]
        name = source["inputs"].get("sampler_name")
        if source.get("class_type") == "KSamplerSelect" and isinstance(name, str):
            return name
    except (KeyError, TypeError, IndexError):
        pass
    fn = getattr(sampler, "sampler_function", None)
    fn = getattr(fn, "func", fn)  # functools.partial
    name = getattr(fn, "__name__", "") or type(sampler).__name__
    return name[len("sample_"):] if name.startswith("sample_") else name


def sample_record(conditioning, model, seed: int, sampler: str, sigmas: torch.Tensor, cfg: float) -> dict:
    """MVSample's record: every prompt of the batch (``prompts``), negative, seed, sampler, sigmas, cfg, hashes."""
    from ..dreamedit3d_core.provenance import build_record

    facts = dict(getattr(conditioning, "provenance", None) or {})
    return build_record(
        negative_prompt=conditioning.negative_prompt, seed=int(seed), sampler=sampler,
        sigmas=sigmas.detach().cpu().double(), cfg=float(cfg), steps=int(sigmas.numel()) - 1,
        base_model_hash=facts.pop("base_model_hash", "") or str(getattr(model, "model_hash", "") or ""),
        token_files=facts.pop("token_files", None), prompts=list(conditioning.prompts),
        num_views=int(conditioning.num_views), **facts)


def image_record(images: Any, prompt: Any, samples: Any = None) -> dict:
    """What made ``images``: MVSample's record (from ``samples``, an MV_SAMPLES value, or carried by the tensor),
    always with the workflow's widget values."""
    from ..dreamedit3d_core.provenance import build_record

    record = carried(images, samples) or build_record()
    record["workflow"] = workflow_values(prompt)
    return record


def png_chunks(prompt: Any, extra_pnginfo: Any) -> dict:
    """ComfyUI's own PNG chunks (``prompt``, ``workflow``, ...) so a saved view reopens its graph when dropped."""
    chunks = {}
    if prompt is not None:
        chunks["prompt"] = json.dumps(prompt, default=str)
    if isinstance(extra_pnginfo, dict):
        chunks.update({str(k): json.dumps(v, default=str) for k, v in extra_pnginfo.items()})
    return chunks


class SaveViews(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamEdit3D_SaveViews",
            display_name="Save Views with Provenance (DreamEdit3D)",
            category=CATEGORY,
            description="Saves views as PNGs in the output folder, each with a 'dreamedit3d' text chunk recording the "
                        "prompt, negative prompt, seed, sampler, sigmas, model and token hashes and the pack version "
                        "(plus ComfyUI's workflow). Never overwrites a file.",
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="Views [N*4,H,W,3] (e.g. MVSample's IMAGE; one edit per 4 views)."),
                io.String.Input("filename_prefix", default="dreamedit3d/views",
                                tooltip="PNG path prefix in the output folder."),
                MVSamplesSocket.Input("samples", optional=True,
                                      tooltip="MVSample's samples: their record reaches the PNGs even when the images "
                                              "went through other nodes on the way."),
            ],
            outputs=[io.String.Output("out_paths", display_name="paths",
                                      tooltip="The PNGs written, relative to the output folder, one per line.")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, images, filename_prefix="dreamedit3d/views", samples=None) -> io.NodeOutput:
        from ..dreamedit3d_core.provenance import save_png, view_record

        if images.ndim != 4 or images.shape[-1] < 3:
            raise ConfigError(f"IMAGE must be [N, H, W, 3], got {list(images.shape)}")
        record = image_record(images, cls.hidden.prompt, samples)
        num_views = int(record.get("num_views", 4))
        chunks = png_chunks(cls.hidden.prompt, cls.hidden.extra_pnginfo)
        folder, stem, counter, subfolder = save_target(filename_prefix)
        written, items = [], []
        for i in range(images.shape[0]):
            rec = view_record(record, i, num_views) if images.shape[0] % num_views == 0 else dict(record, image_index=i)
            path = save_png(images[i], folder / f"{stem}_{counter + i:05d}_.png", rec, chunks=chunks)
            written.append(output_relative(path))
            items.append({"filename": path.name, "subfolder": subfolder, "type": "output"})
        return io.NodeOutput("\n".join(written), ui={"images": items})


READ_EXTENSIONS = (".glb", ".png")
NO_FILE = "none"


def output_file(name: str, extensions=READ_EXTENSIONS):
    """``name`` (relative to the output folder) as an absolute path; refuses anything that leaves the folder."""
    return resolve_output_file(name, extensions, what="path")


def _chosen_file(path: str, file: str):
    """The file ReadProvenance reads: ``path`` in the output folder when given (several paths, one per line as
    SaveViews writes them: the first), else ``file`` from the input folder; None when neither is given."""
    if path and str(path).strip():
        return output_file(str(path).strip().splitlines()[0].strip())
    if file and file != NO_FILE:
        return resolve_input_file(file, READ_EXTENSIONS, what="file")
    return None


class ReadProvenance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = [NO_FILE] + list_input_files(READ_EXTENSIONS)
        return io.Schema(
            node_id="DreamEdit3D_ReadProvenance",
            display_name="Read Provenance (DreamEdit3D)",
            category=CATEGORY,
            description="Reads what made a GLB or PNG written by DreamEdit3D (prompt, negative prompt, seed, sampler, "
                        "sigmas, model and token hashes, pack version) and returns it as JSON. Give a path relative to "
                        "the output folder (e.g. LiftToMesh's glb_path), or pick a file from the input folder.",
            is_output_node=True,
            inputs=[
                io.String.Input("path", default="", optional=True,
                                tooltip="A GLB or PNG relative to the output folder; used when not empty."),
                io.Combo.Input("file", options=files, default=NO_FILE, optional=True, upload=UPLOAD_FILE,
                               tooltip="A GLB or PNG from the input folder (upload one there), used when path is empty."),
            ],
            outputs=[io.String.Output("out_json", display_name="json", tooltip="The provenance record as JSON ({} if none).")],
        )

    @classmethod
    def validate_inputs(cls, **kw):
        name = kw.get("file")
        if name not in (None, "", NO_FILE) and name not in list_input_files(READ_EXTENSIONS):
            return f"file {name!r} is not a GLB or PNG in the input folder {input_folder()}"
        return True

    @classmethod
    def fingerprint_inputs(cls, path="", file=NO_FILE, **_):
        # the same name, overwritten, is read again
        chosen = bool(path and str(path).strip()) or file not in (None, "", NO_FILE)
        return stamp_of(lambda: _chosen_file(path, file)) if chosen else ""

    @classmethod
    def execute(cls, path="", file=NO_FILE) -> io.NodeOutput:
        from ..dreamedit3d_core.provenance import read_file_provenance

        target = _chosen_file(path, file)
        if target is None:
            raise ConfigError("ReadProvenance has no file: connect a path (e.g. LiftToMesh's glb_path) or pick a file")
        text = json.dumps(read_file_provenance(target), indent=1, sort_keys=True)
        return io.NodeOutput(text, ui={"text": [text]})
