"""Architecture rules, checked statically: the source is parsed with ``ast``, nothing is imported.

* no module imports another module's private name (``from .x import _y``, or ``x._y`` on an imported module);
* no import cycle among the ``dreamedit3d_core`` modules (the imports that run when a module is imported);
* ``dreamedit3d_core`` never imports ``comfy*`` / ``folder_paths``;
* in ``nodes/`` and the pack's ``__init__.py`` only ``nodes/_compat.py`` imports them.

Each rule first proves itself on small crafted sources (it must report the bad example and pass the good one), then
runs on the tree, one test per module, so a known offender can be marked on its own and a new one still fails.

Module names: the repository root is the pack ComfyUI imports by path, so it has no fixed name; here it is the
empty name, ``nodes/_compat.py`` is ``nodes._compat`` and ``dreamedit3d_core/masks/sam.py`` is
``dreamedit3d_core.masks.sam`` (the name its absolute imports use).
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
CORE = "dreamedit3d_core"
#: the only file that may import the host (``comfy*``, ``folder_paths``)
HOST_BOUNDARY = "nodes/_compat.py"


# --------------------------------------------------------------------------------------------------- the parser
@dataclass(frozen=True)
class Module:
    """One source file: its dotted name (``""`` for the repository root package) and parsed tree."""

    name: str
    path: str
    tree: ast.Module
    is_package: bool


@dataclass(frozen=True)
class Import:
    """One name an import statement brings in, resolved to an absolute dotted module name.

    ``target`` is the module the statement names (``x`` in ``from x import y``; the whole ``a.b`` in ``import a.b``),
    ``None`` when a relative import climbs above the repository root; ``name`` is ``y`` (``None`` for ``import a.b``
    and for ``importlib.import_module("a.b")``); ``at_import`` says whether it runs when the importer is imported
    (not inside a function body, not under ``if TYPE_CHECKING:``).
    """

    importer: Module
    line: int
    target: Optional[str]
    name: Optional[str]
    alias: Optional[str]
    at_import: bool


def module_name(path: str) -> Tuple[str, bool]:
    """``'nodes/_compat.py'`` -> ``('nodes._compat', False)``; ``'dreamedit3d_core/masks/__init__.py'`` ->
    ``('dreamedit3d_core.masks', True)``; the root ``'__init__.py'`` -> ``('', True)``."""
    parts = path[:-len(".py")].split("/")
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def parse_sources(sources: Dict[str, str]) -> Dict[str, Module]:
    """``{relative path: source}`` -> ``{dotted name: Module}``."""
    modules = {}
    for path, source in sources.items():
        name, is_package = module_name(path)
        modules[name] = Module(name, path, ast.parse(source, filename=path), is_package)
    return modules


def resolve(importer: Module, level: int, target: Optional[str]) -> Optional[str]:
    """The absolute dotted name a (possibly relative) import names, ``None`` above the repository root."""
    if level == 0:
        return target
    package = importer.name.split(".") if importer.name else []
    if not importer.is_package:
        package = package[:-1]
    if level - 1 > len(package):
        return None
    base = package[:len(package) - (level - 1)]
    return ".".join(base + (target.split(".") if target else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _dynamic_import_target(call: ast.Call) -> Optional[str]:
    """``importlib.import_module("x")`` / ``import_module("x")`` / ``__import__("x")`` with a literal absolute name."""
    func = call.func
    called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if called not in ("import_module", "__import__") or not call.args:
        return None
    first = call.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("."):
        return first.value
    return None


def imports_of(module: Module) -> List[Import]:
    """Every import in ``module``: statements anywhere (function bodies included) and literal dynamic imports."""
    found: List[Import] = []

    def visit(node: ast.AST, at_import: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, node.lineno, alias.name, None, alias.asname, at_import))
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node.level, node.module)
            for alias in node.names:
                found.append(Import(module, node.lineno, target, alias.name, alias.asname, at_import))
        elif isinstance(node, ast.Call) and _dynamic_import_target(node):
            found.append(Import(module, node.lineno, _dynamic_import_target(node), None, None, at_import))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, at_import)
            return
        inside_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, at_import and not inside_function)

    visit(module.tree, True)
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


# ---------------------------------------------------------------------------------------------------- the rules
def _may_use_private_module(importer: str, private_module: str) -> bool:
    """A private module (``pkg/_impl.py``) serves its own package, and the packages above it (the pack's
    ``__init__.py`` registers through ``nodes/_compat.py``)."""
    package = private_module.rpartition(".")[0]
    return _within(importer, package) or importer == "" or _within(package, importer)


def private_name_uses(module: Module, modules: Dict[str, Module]) -> List[str]:
    """Where ``module`` takes a private name from another of ``modules``: ``from x import _y``, ``m._y`` where ``m``
    is a module it imported, or a private module from outside its package (:func:`_may_use_private_module`)."""
    found: List[Tuple[int, str]] = []

    def check_module_path(line: int, target: str, how: str) -> None:
        parts = target.split(".")
        for i, part in enumerate(parts):
            private_module = ".".join(parts[:i + 1])
            if is_private(part) and private_module in modules and not _may_use_private_module(module.name,
                                                                                               private_module):
                found.append((line, f"{module.path}:{line} {how} private module {private_module} from outside its package"))
                return

    def check(line: int, owner: str, attr: str, how: str) -> None:
        if f"{owner}.{attr}" in modules:
            check_module_path(line, f"{owner}.{attr}", how)
        elif is_private(attr) and owner != module.name:
            found.append((line, f"{module.path}:{line} {how} private name {attr} of {modules[owner].path}"))

    bound: Dict[str, str] = {}  # local name -> module (of ``modules``) it is bound to
    for imp in imports_of(module):
        if imp.target is None or imp.target not in modules and not any(_within(m, imp.target) for m in modules):
            continue
        check_module_path(imp.line, imp.target, "imports")
        if imp.name is None:  # import a.b.c [as m]
            if imp.alias:
                bound[imp.alias] = imp.target
            else:
                bound[imp.target.split(".")[0]] = imp.target.split(".")[0]
        elif imp.name != "*":
            if imp.target in modules:
                check(imp.line, imp.target, imp.name, "imports")
            if f"{imp.target}.{imp.name}" in modules:
                bound[imp.alias or imp.name] = f"{imp.target}.{imp.name}"

    inner = set()
    for node in ast.walk(module.tree):  # outer attributes come first: a.b._c is read once, from ``a``
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        chain, value = [node.attr], node.value
        while isinstance(value, ast.Attribute):
            inner.add(id(value))
            chain.append(value.attr)
            value = value.value
        if not isinstance(value, ast.Name) or value.id not in bound:
            continue
        owner = bound[value.id]
        for attr in reversed(chain):
            if owner not in modules:
                break
            check(node.lineno, owner, attr, "uses")
            owner = f"{owner}.{attr}"
    return [text for _, text in sorted(found, key=lambda line_text: line_text[0])]


def import_graph(modules: Dict[str, Module]) -> Dict[str, Dict[str, int]]:
    """module -> {module it imports when it is imported: line}. ``from p import n`` names the submodule ``p.n``
    when there is one, else ``p`` itself; a package's implicit import of its parents is left out (every
    submodule would otherwise close a loop with a package that imports it)."""
    graph: Dict[str, Dict[str, int]] = {name: {} for name in modules}
    for name, module in modules.items():
        for imp in imports_of(module):
            if not imp.at_import or imp.target is None:
                continue
            if imp.name is not None and f"{imp.target}.{imp.name}" in modules:
                target = f"{imp.target}.{imp.name}"
            elif imp.target in modules:
                target = imp.target
            else:
                continue
            if target != name:
                graph[name].setdefault(target, imp.line)
    return graph


def import_cycles(graph: Dict[str, Dict[str, int]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack = set()
    cycles = []

    def strongconnect(v: str) -> None:  # recursion depth is bounded by the module count (~100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return cycles


def cycle_edges(name: str, modules: Dict[str, Module], graph, cycles) -> List[str]:
    """The imports of ``name`` that keep it in an import cycle, as ``path:line -> module``."""
    for component in cycles:
        if name in component:
            return [f"{modules[name].path}:{line} -> {target}" for target, line in sorted(graph[name].items())
                    if target in component]
    return []


def host_imports(module: Module) -> List[str]:
    """Where ``module`` imports ComfyUI (``comfy``, ``comfy_extras``, ``comfy_api``, ...) or ``folder_paths``."""
    found = []
    for imp in imports_of(module):
        top = (imp.target or "").split(".")[0]
        if top.startswith("comfy") or top == "folder_paths":
            found.append(f"{module.path}:{imp.line} imports {imp.target}")
    return found


def pack_imports(module: Module) -> List[str]:
    """Where a core module reaches out of the core into the pack (``nodes/``, the root ``__init__.py``) or above it:
    the library must run without the node pack around it."""
    return [f"{module.path}:{imp.line} imports {imp.target if imp.target is not None else 'above the repository'}"
            for imp in imports_of(module)
            if imp.target is None or imp.target == "" or _within(imp.target, "nodes")]


# ------------------------------------------------------------------------------------------------- the tree
@functools.lru_cache(maxsize=None)
def tree_modules() -> Dict[str, Module]:
    """Every module of ``dreamedit3d_core/``, ``nodes/`` and the pack's root ``__init__.py``."""
    paths = [REPO / "__init__.py"] + sorted((REPO / CORE).rglob("*.py")) + sorted((REPO / "nodes").rglob("*.py"))
    return parse_sources({p.relative_to(REPO).as_posix(): p.read_text() for p in paths})


@functools.lru_cache(maxsize=None)
def tree_graph():
    graph = import_graph(tree_modules())
    return graph, import_cycles(graph)


def _paths(where: str) -> List[str]:
    files = [p for p in (REPO / where).rglob("*.py") if "__pycache__" not in p.parts]
    return sorted(p.relative_to(REPO).as_posix() for p in files)


def _module(path: str) -> Module:
    return tree_modules()[module_name(path)[0]]


def _known(cases: Dict[str, str], path: str):
    """``path`` as a test parameter, marked as a known offender (strict xfail: fixing it fails the test until the
    mark goes) when ``cases`` names it."""
    if path in cases:
        return pytest.param(path, marks=pytest.mark.xfail(strict=True, reason=cases[path]))
    return path


# the offenders on the tree when these rules were written: exactly the lines, and whose file it is
KNOWN_PRIVATE_IMPORTS: Dict[str, str] = {}
KNOWN_PRIVATE_IMPORTS_NODES: Dict[str, str] = {}
KNOWN_IMPORT_CYCLES: Dict[str, str] = {}


# ------------------------------------------------------------------------------------- the rules prove themselves
def _sources(files: Dict[str, str]) -> Dict[str, Module]:
    return parse_sources({path: source for path, source in files.items()})


def test_module_names_and_relative_imports_resolve_like_python():
    modules = _sources({"__init__.py": "from .nodes._compat import X\n",
                        "nodes/sampling.py": "from ..dreamedit3d_core.errors import ConfigError\nfrom . import sockets\n",
                        "dreamedit3d_core/masks/__init__.py": "from .sam import load_sam\nfrom .. import errors\n",
                        "dreamedit3d_core/masks/sam.py": "from ...nodes import x\nfrom .... import y\n"})
    assert sorted(modules) == ["", "dreamedit3d_core.masks", "dreamedit3d_core.masks.sam", "nodes.sampling"]
    assert modules["dreamedit3d_core.masks"].is_package and not modules["nodes.sampling"].is_package
    targets = {name: [(i.target, i.name) for i in imports_of(m)] for name, m in modules.items()}
    assert targets[""] == [("nodes._compat", "X")]
    assert targets["nodes.sampling"] == [("dreamedit3d_core.errors", "ConfigError"), ("nodes", "sockets")]
    assert targets["dreamedit3d_core.masks"] == [("dreamedit3d_core.masks.sam", "load_sam"),
                                                 ("dreamedit3d_core", "errors")]
    assert targets["dreamedit3d_core.masks.sam"] == [("nodes", "x"), (None, "y")]


def test_private_name_rule_catches_imports_and_attribute_access_but_not_own_or_public_names():
    modules = _sources({
        "dreamedit3d_core/__init__.py": "",
        "dreamedit3d_core/masks/__init__.py": "",
        "dreamedit3d_core/masks/_impl.py": "def run(): pass\n",
        "dreamedit3d_core/masks/sam.py": "def _reproject(): pass\ndef lift(): pass\nlift()\n_reproject()\n",
        "dreamedit3d_core/masks/parts.py": "from ._impl import run\nfrom .sam import lift\n",
        "dreamedit3d_core/render.py": (
            "from .masks.sam import _reproject, lift\n"              # line 1: private name
            "from .masks import sam\n"
            "from . import masks as m\n"
            "import dreamedit3d_core.masks.sam\n"
            "import torch\n"
            "def f(x):\n"
            "    from .masks.sam import _reproject as r\n"           # line 7: inside a function too
            "    x._shape, torch._C, sam.lift()\n"                   # a value's and a third party's: not ours
            "    return sam._reproject(), m.sam._reproject()\n"      # line 9: twice, through module aliases
            "y = dreamedit3d_core.masks.sam._reproject\n"            # line 10: through the full dotted name
            "from .masks._impl import run\n"),                       # line 11: a private module from outside
    })
    assert private_name_uses(modules["dreamedit3d_core.render"], modules) == [
        "dreamedit3d_core/render.py:1 imports private name _reproject of dreamedit3d_core/masks/sam.py",
        "dreamedit3d_core/render.py:7 imports private name _reproject of dreamedit3d_core/masks/sam.py",
        "dreamedit3d_core/render.py:9 uses private name _reproject of dreamedit3d_core/masks/sam.py",
        "dreamedit3d_core/render.py:9 uses private name _reproject of dreamedit3d_core/masks/sam.py",
        "dreamedit3d_core/render.py:10 uses private name _reproject of dreamedit3d_core/masks/sam.py",
        "dreamedit3d_core/render.py:11 imports private module dreamedit3d_core.masks._impl from outside its package",
    ]
    assert private_name_uses(modules["dreamedit3d_core.masks.sam"], modules) == []  # its own private names
    assert private_name_uses(modules["dreamedit3d_core.masks.parts"], modules) == []  # its package's _impl


def test_cycle_rule_finds_a_loop_through_a_package_and_ignores_function_level_and_type_checking_imports():
    looped = _sources({
        "dreamedit3d_core/__init__.py": "",
        "dreamedit3d_core/masks/__init__.py": "from .sam import load_sam\nfrom .parts import masks_from_parts\n",
        "dreamedit3d_core/masks/sam.py": "from . import reproject\n",
        "dreamedit3d_core/masks/reproject.py": "from ..masks import masks_from_parts\n",  # -> the package -> sam
        "dreamedit3d_core/masks/parts.py": "import torch\n",
        "dreamedit3d_core/render.py": "from .masks import parts\n",
    })
    graph = import_graph(looped)
    assert graph["dreamedit3d_core.masks.sam"] == {"dreamedit3d_core.masks.reproject": 1}
    assert graph["dreamedit3d_core.render"] == {"dreamedit3d_core.masks.parts": 1}
    cycles = import_cycles(graph)
    assert cycles == [["dreamedit3d_core.masks", "dreamedit3d_core.masks.reproject", "dreamedit3d_core.masks.sam"]]
    assert cycle_edges("dreamedit3d_core.masks.reproject", looped, graph, cycles) == [
        "dreamedit3d_core/masks/reproject.py:1 -> dreamedit3d_core.masks"]
    assert cycle_edges("dreamedit3d_core.render", looped, graph, cycles) == []

    deferred = _sources({
        "dreamedit3d_core/a.py": "from typing import TYPE_CHECKING\nfrom . import b\nif TYPE_CHECKING:\n"
                                 "    from .c import C\n",
        "dreamedit3d_core/b.py": "def f():\n    from . import a\n    return a\n",
        "dreamedit3d_core/c.py": "from .a import thing\n",
    })
    assert import_cycles(import_graph(deferred)) == []
    deferred["dreamedit3d_core.b"] = _sources({"dreamedit3d_core/b.py": "from . import a\n"})["dreamedit3d_core.b"]
    assert import_cycles(import_graph(deferred)) == [["dreamedit3d_core.a", "dreamedit3d_core.b"]]


def test_host_import_rule_catches_every_spelling_and_not_our_own_names():
    modules = _sources({"nodes/x.py": (
        "import comfy.model_management\n"
        "from comfy_api.latest import io\n"
        "import folder_paths as fp\n"
        "def f():\n"
        "    from comfy_extras.nodes_hunyuan3d import MESH\n"
        "    return importlib.import_module('comfy.samplers')\n"
        "from . import comfy_names\n"                       # our own module, relative: fine
        "import torch, comfyui_frontend_package\n"
        "ok = 'comfy.model_management' in sys.modules\n")})
    assert host_imports(modules["nodes.x"]) == [
        "nodes/x.py:1 imports comfy.model_management", "nodes/x.py:2 imports comfy_api.latest",
        "nodes/x.py:3 imports folder_paths", "nodes/x.py:5 imports comfy_extras.nodes_hunyuan3d",
        "nodes/x.py:6 imports comfy.samplers", "nodes/x.py:8 imports comfyui_frontend_package"]


def test_pack_import_rule_catches_the_core_reaching_into_nodes_or_the_root():
    modules = _sources({"dreamedit3d_core/masks/sam.py": ("from ...nodes._compat import io\n"
                                                          "from ... import NODES\n"
                                                          "from .... import outside\n"
                                                          "from ..errors import ConfigError\n"
                                                          "import nodes_helper\n")})
    assert pack_imports(modules["dreamedit3d_core.masks.sam"]) == [
        "dreamedit3d_core/masks/sam.py:1 imports nodes._compat", "dreamedit3d_core/masks/sam.py:2 imports ",
        "dreamedit3d_core/masks/sam.py:3 imports above the repository"]


# --------------------------------------------------------------------------------------------- the rules on the tree
@pytest.mark.parametrize("path", [_known(KNOWN_PRIVATE_IMPORTS, p) for p in _paths(CORE)])
def test_no_core_module_takes_another_modules_private_name(path):
    assert private_name_uses(_module(path), tree_modules()) == []


@pytest.mark.parametrize("path", [_known(KNOWN_PRIVATE_IMPORTS_NODES, p) for p in ["__init__.py"] + _paths("nodes")])
def test_no_node_module_takes_another_modules_private_name(path):
    assert private_name_uses(_module(path), tree_modules()) == []


@pytest.mark.parametrize("path", [_known(KNOWN_IMPORT_CYCLES, p) for p in _paths(CORE) + ["__init__.py"]
                                  + _paths("nodes")])
def test_no_module_is_in_an_import_cycle(path):
    """The core's modules, and the node pack's too (the graph holds both: a loop through either side is found)."""
    graph, cycles = tree_graph()
    assert cycle_edges(module_name(path)[0], tree_modules(), graph, cycles) == []


@pytest.mark.parametrize("path", _paths(CORE))
def test_the_core_never_imports_comfyui(path):
    assert host_imports(_module(path)) == []


@pytest.mark.parametrize("path", _paths(CORE))
def test_the_core_never_imports_the_node_pack(path):
    assert pack_imports(_module(path)) == []


@pytest.mark.parametrize("path", [p for p in ["__init__.py"] + _paths("nodes") if p != HOST_BOUNDARY])
def test_only_the_compat_module_imports_comfyui_in_the_pack(path):
    assert host_imports(_module(path)) == []


def test_the_tree_graph_holds_the_real_imports():
    """The cycle test above is only as good as the graph: it holds imports that run at import time, and not the
    ones deferred into functions."""
    graph, _ = tree_graph()
    assert {"dreamedit3d_core.masks.sam", "dreamedit3d_core.masks.parts"} <= set(graph["dreamedit3d_core.masks"])
    assert {"dreamedit3d_core.cameras", "dreamedit3d_core.raster"} <= set(graph["dreamedit3d_core.render"])
    assert "nodes._compat" in graph[""] and len(graph) == len(tree_modules()) > 60


def test_the_compat_module_is_where_the_host_is_imported():
    """The boundary rule above has its one exception in a file that really is the boundary."""
    assert host_imports(_module(HOST_BOUNDARY)), f"{HOST_BOUNDARY} imports no comfy*/folder_paths: update HOST_BOUNDARY"
