"""Convert between ComfyUI's UI workflow format (what templates and "Save" produce) and the API format POST /prompt takes.

The node schemas come from a running server's ``/object_info`` (ours and core nodes alike), so the conversion follows
the same rules as the frontend's graphToPrompt for the widget kinds our workflows use: widget values are positional in
``widgets_values`` over the node's widget inputs (required, then optional, in ``input_order``); an INT or COMBO with
``control_after_generate`` carries one extra value (``"fixed"``, ``"randomize"``, ...); a widget input that has a link
takes the link. Only the legacy ``version: 0.4`` layout (nodes + link arrays) is written and read.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


class WorkflowError(ValueError):
    """A workflow refers to an unknown node type or does not match the node's inputs."""


def _ordered_inputs(info: dict) -> list[tuple[str, str, Any, dict]]:
    """(name, category, type, options) of every input of a node type, in definition order."""
    out = []
    order = info.get("input_order") or {c: list(info.get("input", {}).get(c, {})) for c in ("required", "optional")}
    for cat in ("required", "optional"):
        specs = info.get("input", {}).get(cat, {})
        for name in order.get(cat, []):
            spec = specs[name]
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, cat, typ, opts))
    return out


def _is_widget(typ: Any, opts: dict) -> bool:
    return (isinstance(typ, list) or typ in WIDGET_TYPES) and not opts.get("forceInput", False)


def _has_control(typ: Any, opts: dict) -> bool:
    return bool(opts.get("control_after_generate")) and (typ == "INT" or typ == "COMBO" or isinstance(typ, list))


def _type_name(typ: Any) -> str:
    return "COMBO" if isinstance(typ, list) else str(typ)


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """API-format prompt of a UI workflow (muted/bypassed nodes and UI-only nodes such as notes are dropped)."""
    links = {int(l[0]): l for l in ui.get("links", [])}  # id -> [id, src, src_slot, dst, dst_slot, type]
    api = {}
    for node in ui.get("nodes", []):
        ntype = node["type"]
        if node.get("mode", 0) in (2, 4) or ntype in ("Note", "MarkdownNote", "Reroute", "PrimitiveNode"):
            continue
        info = object_info.get(ntype)
        if info is None:
            raise WorkflowError(f"node {node['id']} has unknown type {ntype!r} (not in /object_info)")
        linked = {i["name"]: i.get("link") for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        pos = 0
        inputs = {}
        for name, _cat, typ, opts in _ordered_inputs(info):
            if _is_widget(typ, opts):
                if pos >= len(values):
                    raise WorkflowError(f"node {node['id']} ({ntype}) has too few widgets_values for input {name!r}")
                value = values[pos]
                pos += 1 + int(_has_control(typ, opts))
                if name not in linked:
                    if value is not None:
                        inputs[name] = value
                    continue
            if name in linked:
                link = links[int(linked[name])]
                inputs[name] = [str(link[1]), int(link[2])]
        if pos != len(values):
            raise WorkflowError(f"node {node['id']} ({ntype}) has {len(values)} widgets_values, its inputs use {pos}")
        api[str(node["id"])] = {"class_type": ntype, "inputs": inputs,
                                "_meta": {"title": node.get("title") or info.get("display_name", ntype)}}
    return api


def _depths(api: dict) -> dict:
    depth: dict = {}

    def visit(nid: str, stack=()) -> int:
        if nid in depth:
            return depth[nid]
        if nid in stack:
            raise WorkflowError(f"the workflow has a cycle through node {nid}")
        srcs = [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list)]
        depth[nid] = 1 + max((visit(s, stack + (nid,)) for s in srcs), default=-1)
        return depth[nid]

    for nid in api:
        visit(nid)
    return depth


def api_to_ui(api: dict, object_info: dict, control_value: str = "fixed") -> dict:
    """A UI-format (version 0.4) workflow of an API prompt, laid out left to right by graph depth."""
    depth = _depths(api)
    columns = defaultdict(list)
    for nid in sorted(api, key=lambda n: (depth[n], int(n) if n.isdigit() else n)):
        columns[depth[nid]].append(nid)
    links, out_links = [], defaultdict(list)
    link_id = 0
    nodes = []
    for nid, node in api.items():
        info = object_info.get(node["class_type"])
        if info is None:
            raise WorkflowError(f"node {nid} has unknown type {node['class_type']!r}")
    for order, nid in enumerate(sorted(api, key=lambda n: (depth[n], int(n) if n.isdigit() else n))):
        node = api[nid]
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, cat, typ, opts in _ordered_inputs(info):
            value = node["inputs"].get(name)
            is_link = isinstance(value, list)
            if is_link:
                link_id += 1
                src, slot = value
                links.append([link_id, int(src), int(slot), int(nid), len(inputs), _type_name(typ)])
                out_links[(src, int(slot))].append(link_id)
            if _is_widget(typ, opts):
                default = opts.get("default", typ[0] if isinstance(typ, list) and typ else None)
                if default is None and _type_name(typ) == "COMBO":
                    default = (opts.get("options") or [None])[0]
                widgets.append(default if is_link or value is None else value)
                if _has_control(typ, opts):
                    widgets.append(control_value)
                if is_link:
                    inputs.append({"name": name, "type": _type_name(typ), "widget": {"name": name}, "link": link_id})
            elif is_link or cat == "required":
                inputs.append({"name": name, "type": _type_name(typ), "link": link_id if is_link else None})
            elif cat == "optional":
                inputs.append({"name": name, "type": _type_name(typ), "link": None, "shape": 7})
        col = depth[nid]
        row = columns[col].index(nid)
        nodes.append({
            "id": int(nid), "type": node["class_type"], "pos": [40 + 400 * col, 40 + 330 * row],
            "size": [340, 80 + 26 * len(widgets) + 22 * len(inputs)], "flags": {}, "order": order, "mode": 0,
            "inputs": inputs, "outputs": [], "properties": {"Node name for S&R": node["class_type"]},
            "widgets_values": widgets, "title": node.get("_meta", {}).get("title"),
        })
    for n in nodes:
        info = object_info[n["type"]]
        names = info.get("output_name") or info.get("output", [])
        n["outputs"] = [{"name": names[i], "type": _type_name(t), "links": out_links.get((str(n["id"]), i), []),
                         "slot_index": i} for i, t in enumerate(info.get("output", []))]
        if n["title"] is None:
            del n["title"]
    return {"last_node_id": max(int(n) for n in api), "last_link_id": link_id, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}
