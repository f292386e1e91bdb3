"""The README's architecture tree names exactly the modules on disk (tools/module_tree.py prints it)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _readme_tree() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Architecture"):]
    section = section[:section.index("\n## ", 5)]
    return re.search(r"```text\n(.*?)```", section, flags=re.S).group(1)


def _paths(tree: str) -> set:
    """'root/sub/module.py' for every line of a tree printed by tools/module_tree.py."""
    out, stack = set(), []
    for line in tree.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.strip().split()[0]
        stack = stack[:depth]
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
            if depth:
                out.add("/".join(stack) + "/__init__.py")
        else:
            out.add("/".join(stack + [name]))
    return out


def test_the_readme_tree_lists_every_module_on_disk_and_no_other():
    sys.path.insert(0, str(REPO / "tools"))
    from module_tree import ROOTS, package_modules, tree

    on_disk = {p.as_posix() for root in ROOTS for p in package_modules(root)}
    assert _paths(tree()) == on_disk  # the tool itself reads the tree right
    listed = _paths(_readme_tree())
    assert listed == on_disk, (f"missing in README: {sorted(on_disk - listed)}; gone from disk: "
                               f"{sorted(listed - on_disk)} - rerun python tools/module_tree.py")
