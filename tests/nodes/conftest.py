"""The pack imported in-process against the real comfy_api, with ComfyUI's folders in a fresh folder per test module."""

from __future__ import annotations

import pytest

from _comfy_pack import comfy_root, import_comfy_tree, import_pack, point_folders_at
from conftest import skip_or_fail


@pytest.fixture(scope="module")
def pack(tmp_path_factory, request):
    """The pack module (``.NODES``, ``.NODE_LIST``); ``pack.base`` holds this module's input/output/models folders."""
    root = comfy_root()
    if root is None:
        skip_or_fail("no ComfyUI tree: run tools/setup_env.sh or set COMFYUI_PATH")
    import_comfy_tree(root)
    base = tmp_path_factory.mktemp(f"comfy_base_{request.module.__name__.rsplit('.', 1)[-1]}")
    point_folders_at(base)
    module = import_pack()
    module.base = base
    return module
