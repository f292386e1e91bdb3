"""Print the package layout as one tree, one line per module, from the files on disk and their docstrings.

    python tools/module_tree.py            # paste into README.md's "Architecture" section

Each line is the module's file name and the first sentence of its docstring (the module says what it is). The test
tests/unit/test_readme_architecture.py checks that the README's tree names exactly the modules on disk.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("dreamedit3d_core", "nodes")
WIDTH = 118


def package_modules(root: str) -> list[Path]:
    """The .py files of ``root`` (recursively), skipping caches; relative to the repository."""
    base = REPO / root
    return sorted(p.relative_to(REPO) for p in base.rglob("*.py") if "__pycache__" not in p.parts)


def summary(path: Path) -> str:
    """The first sentence of the module's docstring, on one line ('' without a docstring)."""
    doc = ast.get_docstring(ast.parse((REPO / path).read_text(encoding="utf-8"))) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
    first = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).split(".")[-1], first)  # :class:`~a.b.C` -> C
    return first.replace("``", "`")


def clip(line: str, width: int = WIDTH) -> str:
    """``line`` cut at a word boundary to ``width`` characters (with an ellipsis)."""
    if len(line) <= width:
        return line
    return line[: width - 1].rsplit(" ", 1)[0].rstrip(",;:(") + " …"


def tree(roots=ROOTS) -> str:
    lines = []
    for root in roots:
        lines.append(f"{root}/")
        mods = package_modules(root)
        for path in mods:
            rel = path.relative_to(root)
            depth = len(rel.parts) - 1
            if rel.name == "__init__.py" and depth:
                label = f"{rel.parts[-2]}/"
                indent = "  " * depth
            else:
                label = rel.name
                indent = "  " * (depth + 1)
            head = f"{indent}{label}"
            text = summary(path)
            line = f"{head:<{max(len(head) + 2, 34)}}{text}" if text else head
            lines.append(clip(line))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(tree() + "\n")
