"""Observers of torchao's own min/max and histogram classes, constructed once per spec and copied after.

prepare builds an observer for every group of annotated edges: dozens to
thousands, from a handful of specs. Constructing one runs ``nn.Module``'s
constructor and the observer's own (its tables, argument checks and buffers),
about 40 us. Fresh from the constructor, an observer of one of torchao's own
classes below is plain state: buffers, empty hook tables, and immutable
settings. A copy with its own tensors and its own tables is therefore the
object the constructor would build again from the same arguments, made in a
quarter of the time.

Anything else is constructed every time: another class (a subclass or a
user's observer may do more in its constructor), a constructor with callable
arguments (evaluated anew on each call), an observer holding parameters,
tensor subclasses or state of any other kind, and any observer while global
module, buffer or parameter registration hooks are installed (the
constructor would call them).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from torch.nn.modules import module as nn_module
from torchao.quantization.pt2e.observer import (
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PartialWrapper,
    PerChannelMinMaxObserver,
    PlaceholderObserver,
)

_COPIED_CLASSES = frozenset(
    {
        HistogramObserver,
        MinMaxObserver,
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
        PerChannelMinMaxObserver,
        PlaceholderObserver,
    }
)
_SETTINGS = frozenset({bool, int, float, str, type(None), torch.dtype, torch.qscheme, torch.device})
_TABLES = frozenset({dict, OrderedDict, set})


class ObserverMaker:
    """Makes observers from a constructor and spec arguments, copying the first one made for each pair.

    One maker serves one prepare of one graph; it keeps a pristine copy of
    the first observer of each pair, never an observer it handed out.
    """

    def __init__(self) -> None:
        self._pristine: dict[Hashable, tuple[Any, torch.nn.Module]] = {}

    def make(self, constructor: Any, arguments: Mapping[str, Any]) -> torch.nn.Module:
        """``constructor.with_args(**arguments)()``, or a copy of what that made before."""
        key = _key(constructor, arguments)
        known = self._pristine.get(key) if key is not None else None
        if known is not None and known[0] is constructor and not _registration_hooks():
            return _copy(known[1])
        made: torch.nn.Module = constructor.with_args(**arguments)()
        if key is not None and known is None and _copyable(constructor, made):
            self._pristine[key] = (constructor, _copy(made))
        return made


def _key(constructor: Any, arguments: Mapping[str, Any]) -> Hashable | None:
    key = (id(constructor), tuple(arguments.items()))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _registration_hooks() -> bool:
    return bool(
        nn_module._global_module_registration_hooks
        or nn_module._global_buffer_registration_hooks
        or nn_module._global_parameter_registration_hooks
    )


def _copyable(constructor: Any, observer: torch.nn.Module) -> bool:
    """Whether every observer ``constructor`` makes is a copy of ``observer`` (see the module docstring)."""
    if type(observer) not in _COPIED_CLASSES or not _fixed_arguments(constructor) or _registration_hooks():
        return False
    if observer._parameters or observer._modules:
        return False
    if not all(
        type(tensor) is torch.Tensor and not tensor.requires_grad for tensor in observer._buffers.values()
    ):
        return False
    for name, value in vars(observer).items():
        if name in ("_parameters", "_buffers", "_modules"):
            continue
        kind = type(value)
        if kind in _TABLES:
            if value and name != "_non_persistent_buffers_set":
                return False
        elif kind not in _SETTINGS:
            return False
    return True


def constructor_links(constructor: Any) -> list[Any]:
    """``constructor``, then each callable it wraps (a wrapper's partial, a partial's function)."""
    links = [constructor]
    while True:
        if isinstance(constructor, PartialWrapper):
            constructor = constructor.p
        elif hasattr(constructor, "func") and not isinstance(constructor, type):
            constructor = constructor.func
        else:
            return links
        links.append(constructor)


def _fixed_arguments(constructor: Any) -> bool:
    """Whether calling ``constructor`` passes the same arguments each time: partials down to a class."""
    *wrappers, last = constructor_links(constructor)
    return isinstance(last, type) and all(
        isinstance(link, functools.partial) or (isinstance(link, PartialWrapper) and not link.callable_args)
        for link in wrappers
    )


def _copy(observer: torch.nn.Module) -> torch.nn.Module:
    """A copy with its own buffers and tables; the settings are immutable, so they are shared."""
    duplicate = type(observer).__new__(type(observer))
    state = vars(observer).copy()
    for name, value in state.items():
        if type(value) in _TABLES:
            state[name] = value.copy()
    state["_buffers"] = {name: tensor.clone() for name, tensor in observer._buffers.items()}
    vars(duplicate).update(state)
    return duplicate
