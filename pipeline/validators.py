"""Small attrs validators and converters for the fields of stages and conditions.

A bad declaration fails when the object is built, with a message that names the
class, the field and what was wrong, rather than when a plan or a run trips on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import attrs

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def _owner(instance: Any, field: attrs.Attribute[Any]) -> str:
    return f"{type(instance).__name__}.{field.name}"


def identifier(instance: Any, field: attrs.Attribute[Any], value: Any) -> None:
    """A stage, condition or phase name: lower-case words joined by ``-``, ``_`` or ``.``."""
    if not isinstance(value, str) or _NAME.match(value) is None:
        raise ValueError(
            f"{_owner(instance, field)} must be a lower-case name such as 'fold-bn' "
            f"(letters, digits, '-', '_', '.'), got {value!r}"
        )


def to_names(value: Any, instance: Any, field: attrs.Attribute[Any]) -> tuple[str, ...]:
    """Any iterable of names as a tuple; a bare string, a non-name or a repeat is refused."""
    if isinstance(value, str):
        raise TypeError(
            f"{_owner(instance, field)} must be a sequence of names, not the string {value!r}; "
            f"did you mean ({value!r},)?"
        )
    if not isinstance(value, Iterable):
        raise TypeError(f"{_owner(instance, field)} must be a sequence of names, got {value!r}")
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or _NAME.match(name) is None:
            raise ValueError(
                f"{_owner(instance, field)} holds {name!r}, which is not a lower-case name such as 'captured'"
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{_owner(instance, field)} names {', '.join(duplicates)} twice")
    return names


names: Any = attrs.Converter(to_names, takes_self=True, takes_field=True)
"""Converter: any iterable of names becomes a tuple; a bare string is refused."""


def is_callable_or_none(instance: Any, field: attrs.Attribute[Any], value: Any) -> None:
    """Optional callbacks must be callable when given."""
    if value is not None and not callable(value):
        raise TypeError(f"{_owner(instance, field)} must be callable or None, got {value!r}")
