"""DreamEdit3D: a ComfyUI node pack for text-guided, object-level 3D editing with a personalised MVDream.

ComfyUI imports this folder as a package (by path). Hosts with the V3 extension API (``ComfyExtension``; 0.3.75 and
later) register the nodes through :func:`comfy_entrypoint`; older hosts get ``NODE_CLASS_MAPPINGS`` instead (a host
uses ``NODE_CLASS_MAPPINGS`` whenever a module defines it, so it is defined only where the entry point cannot be
used). Every node gets the input check derived from its own schema (``nodes/checks.py``) before it is registered.
Relative imports only: the package name is the folder's path. The pure-torch library is ``dreamedit3d_core`` (no
ComfyUI import); ``nodes/`` holds the thin adapters.

Outside ComfyUI (e.g. pytest treating the repository root as a package while collecting tests) the host's modules are
not loaded, and nothing is registered.
"""

import sys

WEB_DIRECTORY = "web"
NODE_LIST = []
#: node id -> class, whichever way the host registers them
NODES = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

# ComfyUI has imported (and configured) its model management before it loads any custom node
if "comfy.model_management" in sys.modules:
    from .nodes._compat import ComfyExtension
    from .nodes.checks import install_schema_checks
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
    from .nodes.token_report import TokenReport

    NODE_LIST = [install_schema_checks(cls) for cls in (
        MVDreamLoader, OrthoRender, ComponentMask, MultiViewTextualInversion, MVFineTune, ComposePrompt, MVScheduler,
        MVSample, LiftToMesh, SaveMVDream, SaveTokens, LoadTokens, EditMetrics, TokenReport, ContactSheet, SaveViews,
        ReadProvenance,
    )]
    NODES = {cls.define_schema().node_id: cls for cls in NODE_LIST}
    NODE_DISPLAY_NAME_MAPPINGS = {node_id: cls.define_schema().display_name for node_id, cls in NODES.items()}

    if ComfyExtension is not None:
        class DreamEdit3DExtension(ComfyExtension):
            """The pack as a V3 extension: its node list."""

            async def get_node_list(self):
                return list(NODE_LIST)

        async def comfy_entrypoint():
            return DreamEdit3DExtension()
    else:  # a host without the V3 extension API: the classic mappings (V3 classes work in them)
        NODE_CLASS_MAPPINGS = dict(NODES)

__all__ = ["WEB_DIRECTORY", "NODE_LIST", "NODES", "NODE_DISPLAY_NAME_MAPPINGS"]
