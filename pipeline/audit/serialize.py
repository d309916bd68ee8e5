"""Turning node arguments and metadata snapshots into JSON values for audit events.

Node references read as ``"%name"`` (FX's own notation) and string literals as
their ``repr``, so the two can never be confused; anything JSON cannot hold
becomes a short readable string.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx
from torch.fx.immutable_collections import immutable_dict, immutable_list

_MAX_REPR = 200
_JSON_LEAVES = frozenset({str, int, bool, type(None)})
"""Leaf types that are already plain JSON: containers copy them without a call per element."""
_NAMED_CONSTANTS = frozenset({torch.dtype, torch.device, torch.layout, torch.memory_format})
"""Argument types written as their ``str`` (``torch.int8``), as FX's own printout shows them."""


class PlainList(list):  # type: ignore[type-arg]
    """A list its maker knows to be plain JSON already (say, a tensor's finite values).

    Serialization passes it through untouched instead of visiting every element.
    """


def argument(value: Any) -> Any:
    """A node argument (possibly nested) as a JSON value."""
    kind = type(value)
    if kind is torch.fx.Node:
        return "%" + value.name
    if kind is int or kind is bool or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else repr(value)
    if kind is tuple or kind is immutable_list or kind is list:
        return [argument(item) for item in value]
    if kind is immutable_dict or kind is dict:
        return {key if type(key) is str else str(key): argument(item) for key, item in value.items()}
    if kind in _NAMED_CONSTANTS:
        return str(value)
    return _any_argument(value)


def _any_argument(value: Any) -> Any:
    if isinstance(value, torch.fx.Node):
        return f"%{value.name}"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [argument(item) for item in value]
    if isinstance(value, dict):
        return {str(key): argument(item) for key, item in value.items()}
    if isinstance(value, torch.Tensor):
        return f"tensor({list(value.shape)}, {value.dtype})"
    return _short(value)


def detail(value: Any) -> Any:
    """A detail a stage or describer attached to an event: plain JSON, nodes as ``"%name"``."""
    kind = type(value)
    if kind is PlainList:
        return value
    if kind is float:
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, torch.fx.Node):
        return f"%{value.name}"
    if isinstance(value, (list, tuple)):
        return [item if type(item) in _JSON_LEAVES else detail(item) for item in value]
    if isinstance(value, dict):
        return {str(key): item if type(item) in _JSON_LEAVES else detail(item) for key, item in value.items()}
    return snapshot(value)


def snapshot(value: Any) -> Any:
    """A metadata snapshot (see :class:`~pipeline.audit.fields.MetaField`) as a JSON value."""
    if type(value) is PlainList:
        return value
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [item if type(item) in _JSON_LEAVES else snapshot(item) for item in value]
    if isinstance(value, dict):
        return {
            str(key): item if type(item) in _JSON_LEAVES else snapshot(item) for key, item in value.items()
        }
    return _short(value)


def fresh(value: Any) -> Any:
    """A copy of plain JSON data that shares no list or dict with ``value``.

    For one serialized value that several events carry: each event gets
    containers of its own, as if it had been serialized for it alone.
    """
    kind = type(value)
    if kind is PlainList:
        return PlainList(value)
    if kind is dict:
        return {key: item if type(item) in _SCALARS else fresh(item) for key, item in value.items()}
    if kind is list:
        return [item if type(item) in _SCALARS else fresh(item) for item in value]
    return value


_SCALARS = _JSON_LEAVES | {float}


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def fallback(value: Any) -> Any:
    """``default=`` for :func:`json.dumps`: whatever a stage put in an event's details."""
    return snapshot(value) if isinstance(value, (list, tuple, dict)) else _short(value)


def plain(value: Any) -> Any:
    """``value`` as plain JSON data: what a JSON round trip would give, without the text.

    Tuples become lists, keys strings (as JSON writes them), non-finite floats
    their repr, anything else its short string. Every sink sees events in this
    form, so an in-memory trail holds exactly what a file trail would.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None or kind is PlainList:
        return value
    if kind is float:
        return value if math.isfinite(value) else repr(value)
    if kind is dict:
        return {
            key if type(key) is str else _key(key): item if type(item) in _JSON_LEAVES else plain(item)
            for key, item in value.items()
        }
    if kind is list or kind is tuple:
        return [item if type(item) in _JSON_LEAVES else plain(item) for item in value]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return plain(float(value))
    if isinstance(value, dict):
        return {_key(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return _short(value)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return str(key)
    if key is True or key is False or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    if isinstance(key, float):
        return repr(key)
    return str(key)
