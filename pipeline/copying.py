"""The pipeline's private copy of a caller's graph module.

Stages rewrite graphs freely, so they must never see the caller's own: the
engine hands them a copy whose modules, graphs, nodes and metadata containers
are its own while every tensor stays shared, so a model's memory is never
doubled. A stage that changes a weight therefore builds a new tensor (the
engine detects in-place writes to the caller's tensors through their version
counters, see :mod:`pipeline.protection`).

The copy is built module by module rather than with ``copy.deepcopy``: every
module gets a new object with its own attribute, parameter, buffer and
submodule tables (so a stage may set or delete attributes freely), every
graph a node-by-node copy, while the values in those tables, tensors above all,
stay shared. A graph module's generated code is a pure function of its graph,
so the copy reuses the original's compiled ``forward`` rather than generating
and compiling the same code again; each copy still gets its own class, so
recompiling the copy never touches the original.
"""

from __future__ import annotations

import copy
import types
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, TypeVar

import torch
import torch.fx
from torch.fx.graph import _illegal_names, _name_regex
from torch.fx.graph_module import _WrappedCall
from torch.fx.node import map_arg

from pipeline.relink import relink

GM = TypeVar("GM", bound=torch.fx.GraphModule)

_OWN_TABLES = ("_parameters", "_buffers", "_modules")
_COPIED_BY_METHOD = frozenset({OrderedDict, dict, set, list})
"""Exact types whose ``copy()`` is a shallow copy of the same type, much faster than ``copy.copy``."""
_OWN_COLLECTIONS = (
    "_non_persistent_buffers_set",
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
    "_replace_hooks",
    "_create_node_hooks",
    "_erase_node_hooks",
    "_deepcopy_hooks",
)


def private_copy(graph_module: GM, node_keys: Iterable[str] = ()) -> GM:
    """A copy of ``graph_module`` that stages may rewrite without touching the original.

    Modules, graphs, nodes, ``node.meta`` dicts and the dicts and lists inside
    them are new, and every node's users keep their order (passes that walk
    users, such as implicit sharing, see what they would see in the original);
    tensors and every other attribute value are the original objects (methods
    bound to an original module, such as export's ``train``/``eval`` guards,
    are bound to its copy).
    Metadata under ``node_keys`` refers to nodes and is re-pointed at the
    copy's nodes (see :mod:`pipeline.relink`).
    """
    copies: dict[int, torch.nn.Module] = {}
    duplicate = _copy_module(graph_module, copies, tuple(node_keys))
    return duplicate  # type: ignore[return-value]


def _copy_module(
    module: torch.nn.Module, copies: dict[int, torch.nn.Module], node_keys: tuple[str, ...]
) -> torch.nn.Module:
    if id(module) in copies:
        return copies[id(module)]
    if isinstance(module, torch.fx.GraphModule):
        duplicate: torch.nn.Module = torch.fx.GraphModule.__new__(type(module))
    else:
        duplicate = type(module).__new__(type(module))
    copies[id(module)] = duplicate
    state = module.__dict__.copy()
    for name in _OWN_TABLES:
        state[name] = dict(state[name])
    for name in _OWN_COLLECTIONS:
        collection = state.get(name)
        if collection is not None:
            kind = type(collection)
            state[name] = collection.copy() if kind in _COPIED_BY_METHOD else copy.copy(collection)
    state["_modules"] = {
        name: None if child is None else _copy_module(child, copies, node_keys)
        for name, child in state["_modules"].items()
    }
    for name in [
        name for name, value in state.items() if type(value) is types.MethodType and value.__self__ is module
    ]:
        state[name] = types.MethodType(state[name].__func__, duplicate)
    duplicate.__dict__.update(state)
    if isinstance(module, torch.fx.GraphModule) and isinstance(duplicate, torch.fx.GraphModule):
        graph = _copy_graph(module.graph, node_keys)
        duplicate.__dict__["_graph"] = graph
        duplicate.__dict__["meta"] = copy.deepcopy(module.meta)
        graph.owning_module = duplicate
        _share_compiled_code(module, duplicate)
    return duplicate


def _share_compiled_code(original: torch.fx.GraphModule, duplicate: torch.fx.GraphModule) -> None:
    """Give the copy's own class the original's generated ``forward`` (same graph, same code)."""
    source, target = type(original), type(duplicate)
    if "forward" not in vars(source):
        duplicate.recompile()
        return
    target.forward = source.forward
    if "__call__" in vars(source):
        target.__call__ = source.__call__  # type: ignore[method-assign]
    target._wrapped_call = _WrappedCall(target, None)  # type: ignore[attr-defined]


def _copy_graph(graph: torch.fx.Graph, node_keys: tuple[str, ...]) -> torch.fx.Graph:
    """A node-by-node copy, built as ``Graph.graph_copy`` builds it but without its per-node checks.

    ``create_node`` scans every argument for symbolic scalars and runs the
    graph's hooks; a copy of an existing valid graph needs neither, and on a
    small graph those checks were most of the cost of a run's copy. Names go
    through the new graph's namespace exactly as ``graph_copy`` sends them, so
    the copy names later nodes as a ``deepcopy`` of the graph would; a name the
    namespace keeps as it is is entered as its ``create_name`` would enter it,
    without parsing it again.
    """
    duplicate = torch.fx.Graph(tracer_cls=graph._tracer_cls, tracer_extras=graph._tracer_extras)
    namespace = duplicate._graph_namespace
    insert = duplicate._insert
    index = duplicate._find_nodes_lookup_table.insert
    copies: dict[torch.fx.Node, torch.fx.Node] = {}
    lookup = copies.__getitem__
    new_node = torch.fx.Node
    used, counts = namespace._used_names, namespace._base_count
    for old in graph.nodes:
        name = old.name
        parsed = _parsed_name(name)
        if parsed is None or name in used or name in _illegal_names:
            name = namespace.create_name(name, None)
        else:
            used.add(name)
            base, number = parsed
            counts[base] = counts.get(base, 0) if number is None else number
        new = new_node(
            duplicate,
            name,
            old.op,
            old.target,
            map_arg(old._args, lookup),
            map_arg(old._kwargs, lookup),
            old.type,
        )
        namespace.associate_name_with_obj(name, new)
        insert(new)
        index(new)
        copies[old] = new
    duplicate._len = len(copies)
    for old, new in copies.items():
        if len(old.users) > 1:
            new.users = dict.fromkeys(copies[user] for user in old.users)
    duplicate._codegen = graph._codegen
    by_name = {node.name: node for node in copies.values()}
    relinked: dict[int, tuple[Any, Any]] = {}
    for old, new in copies.items():
        meta = new.meta
        meta.update(old.meta)
        for key, item in meta.items():
            if key in node_keys:
                meta[key] = relink(item, copies, by_name, relinked)
            elif type(item) is dict or type(item) is list:
                meta[key] = item.copy()
    return duplicate


_PARSED_NAMES: dict[str, tuple[str, int | None] | None] = {}
_MAX_PARSED_NAMES = 1 << 16


def _parsed_name(name: str) -> tuple[str, int | None] | None:
    """``name``'s base and numeric suffix as FX's namespace splits them; ``None`` if it would rewrite it."""
    try:
        return _PARSED_NAMES[name]
    except KeyError:
        pass
    match = _name_regex.match(name)
    parsed = None
    if match is not None:
        base, number = match.group(1, 2)
        parsed = (base, None if number is None else int(number))
    if len(_PARSED_NAMES) >= _MAX_PARSED_NAMES:
        _PARSED_NAMES.clear()
    _PARSED_NAMES[name] = parsed
    return parsed
