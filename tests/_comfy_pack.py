"""Import the real ComfyUI tree and this pack in-process, for node tests (comfyui.md §9.5).

The pack is imported as a package named ``dreamedit3d_pack`` from the repository root, the way ComfyUI imports it
(by path, relative imports inside), after the tree's folders are pointed at temporary directories.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "dreamedit3d_pack"


def comfy_root() -> Path | None:
    root = Path(os.environ.get("COMFYUI_PATH", REPO / ".host" / "comfyui"))
    return root if (root / "main.py").is_file() and (root / "comfy_api").is_dir() else None


def import_comfy_tree(root: Path) -> None:
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    import utils.extra_config  # noqa: F401  (binds the tree's utils package before comfy/utils.py shadows it)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401


def point_folders_at(base: Path) -> None:
    """Input/output/temp and our model folders in ``base`` (first in the search order)."""
    import folder_paths

    for sub in ("input", "output", "temp", "models/mvdream", "models/mvdream_tokens", "models/embeddings", "models/sams"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(base / "input"))
    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_temp_directory(str(base / "temp"))
    for kind in ("mvdream", "mvdream_tokens", "embeddings", "sams"):
        folder_paths.add_model_folder_path(kind, str(base / "models" / kind), is_default=True)


def import_pack():
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


def node(cls):
    """A V3 node class ready for ``.execute`` outside the executor (hidden inputs set, as ComfyUI does per run)."""
    clone = cls.PREPARE_CLASS_CLONE({})
    return clone


def install_robot_asset(input_folder: Path) -> str:
    """Copy ../shared's kenney_character.glb and its external texture into ``input_folder/robot``; returns the name the
    OrthoRender node takes. Skips (fails in CI) when ../shared is absent."""
    import shutil

    from conftest import SHARED, skip_or_fail

    asset = SHARED / "assets" / "kenney_character.glb"
    if not asset.is_file():
        skip_or_fail(f"{asset} is missing")
    dest = input_folder / "robot"
    (dest / "Textures").mkdir(parents=True, exist_ok=True)
    shutil.copy2(asset, dest / asset.name)
    shutil.copy2(asset.parent / "Textures" / "colormap.png", dest / "Textures" / "colormap.png")
    return f"robot/{asset.name}"

