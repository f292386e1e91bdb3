"""DreamEdit3D: a ComfyUI node pack for text-guided, object-level 3D editing with a personalised MVDream.

ComfyUI imports this folder as a package (by path) and registers ``NODE_CLASS_MAPPINGS``; the classes are V3
``io.ComfyNode`` nodes, which ComfyUI 0.3.75 and later accept there. Relative imports only: the package name is the
folder's path. The pure-torch library is ``dreamedit3d_core`` (no ComfyUI import); ``nodes/`` holds the thin adapters.

Outside ComfyUI (e.g. pytest treating the repository root as a package while collecting tests) the host's modules are
not loaded, and nothing is registered.
"""

import sys

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
WEB_DIRECTORY = "web"

# ComfyUI has imported (and configured) its model management before it loads any custom node
if "comfy.model_management" in sys.modules:
    from .nodes.contact_sheet import ContactSheet
    from .nodes.lifting import LiftToMesh
    from .nodes.load import MVDreamLoader, SaveMVDream
    from .nodes.masks import ComponentMask
    from .nodes.metrics import EditMetrics
    from .nodes.personalize import LoadTokens, MultiViewTextualInversion, MVFineTune, SaveTokens
    from .nodes.prompts import ComposePrompt
    from .nodes.provenance import ReadProvenance, SaveViews
    from .nodes.render import OrthoRender
    from .nodes.sampling import MVSample, MVScheduler

    NODE_LIST = [
        MVDreamLoader, OrthoRender, ComponentMask, MultiViewTextualInversion, MVFineTune, ComposePrompt, MVScheduler,
        MVSample, LiftToMesh, SaveMVDream, SaveTokens, LoadTokens, EditMetrics, ContactSheet, SaveViews, ReadProvenance,
    ]
    NODE_CLASS_MAPPINGS = {cls.define_schema().node_id: cls for cls in NODE_LIST}
    NODE_DISPLAY_NAME_MAPPINGS = {cls.define_schema().node_id: cls.define_schema().display_name for cls in NODE_LIST}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
