"""Model nodes: load an MVDream checkpoint from models/mvdream, save a (fine-tuned) one back there."""

from __future__ import annotations

import torch

from ..dreamedit3d_core.errors import ConfigError
from ..dreamedit3d_core.storage import unique_path
from ._compat import compute_device, io, keeps_models_loaded, load_model, offload_device, register_model
from .folders import FOLDER_MVDREAM, model_files, model_folder, model_path, model_stamp
from .paths import name_problem, plain_file_stem
from .sockets import MVDreamModelSocket

CATEGORY = "DreamEdit3D/model"
DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}: use one of {list(DTYPES)}")
    if DTYPES[name] is not None:
        return DTYPES[name]
    return torch.float16 if device.type == "cuda" else torch.float32


class MVDreamLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamEdit3D_MVDreamLoader",
            display_name="MVDream Loader (DreamEdit3D)",
            category=CATEGORY,
            description="Loads an MVDream multi-view checkpoint (sd-v2.1-base-4view.pt as released, or a .safetensors "
                        "of it, or a fine-tuned one saved by this pack) from models/mvdream.",
            inputs=[
                io.Combo.Input("ckpt_name", options=model_files(FOLDER_MVDREAM),
                               tooltip="Checkpoint file in models/mvdream (add folders with an 'mvdream:' key in "
                                       "extra_model_paths.yaml)."),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="Weights dtype; auto = float16 on CUDA, float32 on CPU."),
            ],
            outputs=[MVDreamModelSocket.Output("out_model", display_name="model", tooltip="The MVDream model.")],
        )

    @classmethod
    def validate_inputs(cls, **kw):
        name = kw.get("ckpt_name")
        if name is not None and name not in model_files(FOLDER_MVDREAM):
            have = ", ".join(model_files(FOLDER_MVDREAM)[:12]) or "none"
            return f"checkpoint {name!r} is not in models/mvdream (files there: {have}); copy it there and refresh"
        return True

    @classmethod
    def fingerprint_inputs(cls, ckpt_name=None, **_):
        # a checkpoint overwritten under the same name loads again
        return model_stamp(FOLDER_MVDREAM, ckpt_name)

    @classmethod
    def execute(cls, ckpt_name, dtype="auto") -> io.NodeOutput:
        from ..dreamedit3d_core.mvdream.checkpoint import load_mvdream

        # read onto the offload device, then handed to ComfyUI's model management: it makes room on the GPU first
        # and may offload the UNet, VAE and text tower later (each is registered on its own); under
        # --lowvram/--novram they stay offloaded until a node of ours needs them
        # (read and moved outside inference mode: the training nodes use the frozen UNet and VAE as they are, without
        # a copy, and inference tensors cannot take part in autograd)
        with torch.inference_mode(False):
            model = load_mvdream(model_path(FOLDER_MVDREAM, ckpt_name), device=offload_device(),
                                 dtype=resolve_dtype(dtype, compute_device()))
            register_model(model)
            if keeps_models_loaded():
                load_model(model)
        return io.NodeOutput(model)


class SaveMVDream(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DreamEdit3D_SaveMVDream",
            display_name="Save MVDream (DreamEdit3D)",
            category=CATEGORY,
            description="Saves a (fine-tuned) MVDream model as .safetensors in models/mvdream, in the released key "
                        "layout, so the loader lists it. Never overwrites: a free name is chosen.",
            is_output_node=True,
            inputs=[
                MVDreamModelSocket.Input("model", tooltip="The model to save (e.g. from MVFineTune)."),
                io.String.Input("filename", default="dreamedit3d-finetuned",
                                tooltip="A plain file name in models/mvdream (without extension; no folders, no '..'); "
                                        "a counter is added if taken."),
            ],
            outputs=[io.String.Output("out_ckpt_name", display_name="ckpt_name", tooltip="The saved file's name in models/mvdream.")],
        )

    @classmethod
    def validate_inputs(cls, filename=None):
        return name_problem(filename, ".safetensors", what="filename")

    @classmethod
    def execute(cls, model, filename) -> io.NodeOutput:
        from ..dreamedit3d_core.personalize.finetune import save_finetuned_model

        stem = plain_file_stem(filename, ".safetensors", what="filename")
        path = unique_path(model_folder(FOLDER_MVDREAM) / f"{stem}.safetensors")
        saved = save_finetuned_model(model, path, overwrite=False)
        name = saved.name
        return io.NodeOutput(name, ui={"text": [f"saved models/mvdream/{name}"]})

