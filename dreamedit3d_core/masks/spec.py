"""Component specs: which parts of an asset each named component takes.

A component spec names each component and the parts it takes::

    "hat: Hat, Brim; dog: *"        # '*' = every part no other component names
    {"hat": ["Hat", "Brim"], "dog": "*"}

Part names match case-insensitively and exactly.
"""

from __future__ import annotations

from typing import Mapping, Union

import torch

from ..errors import ConfigError


def named_entries(text: str, what: str, example: str) -> list[tuple[str, str]]:
    """``"name: value; name: value"`` (entries split by ';' or new lines) as ``[(name, value)]``, both stripped, in
    order; empty entries are skipped. The one reader of this per-component text form (component specs here, the
    nodes' ``init_words``).

    Args:
        what: the entry's noun in the message (``"component"``); example: how to write one (quoted for the message).

    Raises:
        ConfigError: an entry without ':'.
    """
    entries = []
    for entry in (e.strip() for e in str(text).replace("\n", ";").split(";")):
        if not entry:
            continue
        name, sep, value = entry.partition(":")
        if not sep:
            raise ConfigError(f"{what} entry {entry!r} has no ':'; write {example}")
        entries.append((name.strip(), value.strip()))
    return entries


def clean_component_name(name: str) -> str:
    name = str(name).strip()
    if name.startswith("<") and name.endswith(">"):
        name = name[1:-1].strip()
    if not name or any(c in name for c in ":;,<>*") or any(c.isspace() for c in name):
        raise ConfigError(f"component name {name!r} is not valid: use one word without spaces, ':', ';', ',', '<', '>' "
                          f"or '*' (e.g. 'hat')")
    return name


def parse_component_spec(spec: Union[str, Mapping]) -> dict:
    """Parse ``"hat: Hat, Brim; dog: *"`` (or a dict) into ``{component: [part names] or "*"}``, keeping order.

    Components are separated by ';' or new lines; each is ``name: part, part, ...`` or ``name: *``.

    Raises:
        ConfigError: empty spec, an entry without ':', a component without parts, a repeated component, two '*'.
    """
    if isinstance(spec, Mapping):
        items = list(spec.items())
    elif isinstance(spec, str):
        items = named_entries(spec, "component", "'component: Part, Part' (e.g. 'hat: Hat, Brim; dog: *')")
    else:
        raise ConfigError(f"component spec must be a string like 'hat: Hat; dog: *' or a dict, got {type(spec).__name__}")
    if not items:
        raise ConfigError("component spec is empty; write e.g. 'hat: Hat, Brim; dog: *'")
    out: dict = {}
    for name, parts in items:
        name = clean_component_name(name)
        if name.lower() in {k.lower() for k in out}:
            raise ConfigError(f"component '{name}' is named twice in the spec")
        if isinstance(parts, str):
            parts = [p.strip() for p in parts.split(",") if p.strip()]
        parts = [str(p).strip() for p in parts]
        if parts == ["*"]:
            parts = "*"
        elif not parts or "*" in parts:
            raise ConfigError(f"component '{name}' needs part names, or '*' alone for all remaining parts; got {parts}")
        out[name] = parts
    if sum(1 for p in out.values() if p == "*") > 1:
        raise ConfigError("only one component may take '*' (all remaining parts)")
    return out


def component_part_ids(spec: Union[str, Mapping], part_names) -> dict:
    """Resolve a spec against the asset's part names: ``{component: [part indices]}``.

    Raises:
        ConfigError: a part that does not exist (the message lists the available parts), or one taken twice.
    """
    parsed = parse_component_spec(spec)
    lookup = {str(n).lower(): i for i, n in enumerate(part_names)}
    available = ", ".join(str(n) for n in part_names)
    taken: dict = {}
    resolved: dict = {}
    for comp, parts in parsed.items():
        if parts == "*":
            continue
        ids = []
        for part in parts:
            idx = lookup.get(part.lower())
            if idx is None:
                raise ConfigError(f"component '{comp}' names part '{part}', which this asset does not have; "
                                  f"available parts: {available}")
            if idx in taken:
                raise ConfigError(f"part '{part_names[idx]}' is given to both '{taken[idx]}' and '{comp}'")
            taken[idx] = comp
            ids.append(idx)
        resolved[comp] = ids
    for comp, parts in parsed.items():
        if parts == "*":
            resolved[comp] = [i for i in range(len(part_names)) if i not in taken]
    return {comp: resolved[comp] for comp in parsed}


def require_covered(masks: torch.Tensor, names, hint: str) -> None:
    """Refuse components whose masks [K, V, H, W] are empty in every view (one ConfigError naming them, with ``hint``)."""
    empty = [n for n, m in zip(names, masks) if not bool(m.any())]
    if empty:
        raise ConfigError(f"component(s) {', '.join(repr(n) for n in empty)} cover no pixel in any view; {hint}")
