"""One declared range per input: every node's widget values are checked against its own V3 schema.

ComfyUI skips its built-in min/max/combo check for every input a node's ``validate_inputs`` takes (and for all of
them when it takes ``**kwargs``), never refuses NaN or infinity, and 0.3.75 does not check V3 combos. So a node with
a custom validator would accept ``steps=0`` or ``denoise=NaN``. :func:`install_schema_checks` gives every node
(ours, whoever wrote it, with or without a validator) one ``validate_inputs`` that:

1. refuses numbers outside the schema's ``min``/``max`` and NaN/±inf floats (first, so no custom check ever sees them),
   and a ``filename_prefix`` (ComfyUI's save-node input) that leaves the output folder;
2. runs the node's own validator, if it has one (widget-level checks only it knows about);
3. refuses combo values not among the schema's options (file-upload combos are left to the node's own validator,
   as ComfyUI's LoadImage does, since an uploaded name arrives annotated, e.g. 'x.glb [input]').

The ranges come from ``define_schema()`` at validation time, so schema and check can never drift.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Optional

from ._compat import io, node_input_type_matches
from .paths import check_save_prefix

#: the string input by which ComfyUI's save nodes name their files under the output folder
SAVE_PREFIX = "filename_prefix"

#: marks a class whose validate_inputs is already the schema check (installation is idempotent)
_INSTALLED = "_dreamedit3d_schema_checked"


def _combo_is_checked_here(inp: Any) -> bool:
    return getattr(inp, "upload", None) is None and getattr(inp, "options", None) is not None


def schema_problem(schema: Any, values: dict, ranges: bool = True, combos: bool = True) -> Optional[str]:
    """The first widget value in ``values`` that breaks ``schema``'s declared ranges, as a one-line message; None if
    every value is inside. Values that are None (a linked input while validating) or absent are not checked."""
    for inp in schema.inputs or []:
        value = values.get(inp.id)
        if value is None or isinstance(value, list):
            continue
        if ranges and isinstance(inp, (io.Int.Input, io.Float.Input)):
            kind = "integer" if isinstance(inp, io.Int.Input) else "number"
            try:
                number = float(value)
            except (TypeError, ValueError):
                return f"{inp.id} {value!r} is not a {kind}: give a {kind} from {inp.min} to {inp.max}"
            if math.isnan(number) or math.isinf(number):
                return f"{inp.id} is {value!r}: give a finite {kind} from {inp.min} to {inp.max}"
            if inp.min is not None and number < inp.min:
                return f"{inp.id} {value!r} is below its minimum {inp.min}: give a value from {inp.min} to {inp.max}"
            if inp.max is not None and number > inp.max:
                return f"{inp.id} {value!r} is above its maximum {inp.max}: give a value from {inp.min} to {inp.max}"
        elif ranges and isinstance(inp, io.String.Input) and inp.id == SAVE_PREFIX:
            try:
                check_save_prefix(value, what=inp.id)
            except ValueError as exc:
                return str(exc)
        elif combos and isinstance(inp, io.Combo.Input) and _combo_is_checked_here(inp):
            options = list(inp.options)
            if value not in options:
                shown = ", ".join(repr(o) for o in options[:12]) + (" ..." if len(options) > 12 else "")
                return f"{inp.id} {value!r} is not one of the choices ({shown or 'none available'}): pick one of them"
    return None


def link_type_problem(schema: Any, input_types: Optional[dict]) -> Optional[str]:
    """ComfyUI's link type check, done here for a node whose validator asks for ``input_types`` (ComfyUI then skips
    its own check for that node)."""
    for inp in schema.inputs or []:
        received = (input_types or {}).get(inp.id)
        if received is not None and not node_input_type_matches(received, inp.get_io_type()):
            return f"{inp.id} is connected to a {received} output, but takes {inp.get_io_type()}: connect a matching output"
    return None


def _call_own(own: Callable, node_cls: type, kwargs: dict, input_types: Optional[dict]) -> Any:
    """Call a node's own validator (the plain function under its classmethod) on ``node_cls`` with the arguments it
    declares, as ComfyUI would: the named ones, or all of them when it takes ``**kwargs``."""
    params = dict(list(inspect.signature(own).parameters.items())[1:])  # without cls
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    args = dict(kwargs) if takes_all else {k: v for k, v in kwargs.items() if k in params}
    if "input_types" in params:
        args["input_types"] = input_types
    missing = [name for name, p in params.items() if p.default is inspect.Parameter.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in args]
    if missing:  # a required input is absent: ComfyUI reports "required input missing" for it already
        return True
    return own(node_cls, **args)


def install_schema_checks(cls: type) -> type:
    """Give the V3 node class ``cls`` the schema-derived ``validate_inputs`` (keeping its own validator as step 2).

    The replacement takes ``**kwargs``, so ComfyUI hands it every input and leaves the whole check to it; it takes
    ``input_types`` too only when the node's own validator does (and then checks link types itself).
    """
    if cls.__dict__.get(_INSTALLED):
        return cls
    own = _own_validator(cls)
    wants_types = own is not None and "input_types" in inspect.signature(own).parameters

    def check(node_cls, input_types, kwargs):
        schema = node_cls.define_schema()
        problem = schema_problem(schema, kwargs, combos=False) or (
            link_type_problem(schema, input_types) if wants_types else None)
        if problem:
            return problem
        if own is not None:
            result = _call_own(own, node_cls, kwargs, input_types)
            if result is not True:
                return result
        return schema_problem(schema, kwargs, ranges=False) or True

    if wants_types:
        def validate_inputs(node_cls, input_types=None, **kwargs):
            return check(node_cls, input_types, kwargs)
    else:
        def validate_inputs(node_cls, **kwargs):
            return check(node_cls, None, kwargs)

    validate_inputs.__doc__ = "Schema ranges (nodes/checks.py), then the node's own checks."
    cls.validate_inputs = classmethod(validate_inputs)
    setattr(cls, _INSTALLED, True)
    return cls


def _own_validator(cls: type) -> Optional[Callable]:
    """The plain function of the node's own ``validate_inputs`` (first argument ``cls``), or None when it only has
    ComfyNode's placeholder."""
    for klass in cls.__mro__:
        if klass is io.ComfyNode:
            return None
        if "validate_inputs" in klass.__dict__:
            return getattr(cls, "validate_inputs").__func__
    return None
