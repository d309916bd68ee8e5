"""What the audit trail looks at beyond a node's structure: metadata keys and target details.

The engine knows nothing of quantization, yet a quantization audit must say when
a node's annotation changed and which scale a quantize node carries. Plugins
declare both: a :class:`MetaField` names a ``node.meta`` key to watch and how to
snapshot it; a :class:`NodeDescriber` adds details to the events of nodes with
given targets.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import attrs
import torch
import torch.fx

from pipeline.naming import target_name


def freeze(value: Any) -> Hashable:
    """A hashable, JSON-friendly snapshot of ``value`` that later mutations cannot reach.

    Containers are copied recursively (dicts become tuples of pairs), classes
    become their qualified names, tensors their shape and dtype; any other object
    becomes its ``repr``. A plain dict of hashable items (``nn_module_stack``)
    takes the fast way: the tuple of its items.
    """
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if type(value) is dict:
        items = tuple(value.items())
        try:
            hash(items)
        except TypeError:
            return tuple((freeze(key), freeze(item)) for key, item in value.items())
        return items
    if isinstance(value, dict):
        return tuple((freeze(key), freeze(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(freeze(item) for item in value)
    if isinstance(value, (set, frozenset)):
        return tuple(sorted(repr(freeze(item)) for item in value))
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if isinstance(value, torch.Tensor):
        return f"tensor({list(value.shape)}, {value.dtype})"
    if isinstance(value, torch.fx.Node):
        return f"%{value.name}"
    return repr(value)


@attrs.frozen
class MetaField:
    """A ``node.meta`` key whose changes become ``node.meta_changed`` events.

    ``snapshot`` turns the live value into a value that stays put when the
    live one is mutated in place; two snapshots that differ mean the field
    changed. Strings (and ``None``) are immutable and are their own snapshot.
    Snapshots must be JSON-serializable once tuples read as lists.
    ``holds_nodes`` says the value refers to other nodes (as an annotation
    does), which a copy of the graph must re-point at its own nodes.
    """

    key: str = attrs.field(validator=attrs.validators.instance_of(str))
    snapshot: Callable[[Any], Hashable] = attrs.field(
        default=freeze, validator=attrs.validators.is_callable()
    )
    holds_nodes: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))


ENGINE_META_FIELDS: tuple[MetaField, ...] = (
    MetaField("stack_trace"),
    MetaField("nn_module_stack"),
)
"""The metadata every graph produced by ``torch.export`` carries, watched by default."""


@attrs.frozen
class NodeDescriber:
    """Adds details to the audit events of nodes whose target is one of ``targets``.

    ``describe`` reads the node and returns JSON-serializable details, such as
    the scale and zero point of a quantize node. It must not change the node.
    """

    targets: tuple[Any, ...] = attrs.field(converter=tuple)
    describe: Callable[[torch.fx.Node], Mapping[str, Any]] = attrs.field(
        validator=attrs.validators.is_callable()
    )

    @property
    def target_names(self) -> tuple[str, ...]:
        """The targets by name, for messages."""
        return tuple(target_name(target) for target in self.targets)
