"""A graph's Python code, as FX writes it, without FX's per-node overhead.

Compiling a graph module is most of what a short pipeline costs after its
stages, and generating the source is half of compiling. FX's generator is
general: before writing a line it swaps every node's ``repr`` for one that
names the node in a fresh namespace (two attribute writes per node, each
re-indexing the node in the graph's lookup table), and it formats every
argument through a chain of type checks meant for any Python object.

Most graphs a quantization pipeline produces are simple: ``torch.ops``
calls, ``getitem``, attribute reads, submodule calls, and arguments that are
nodes, numbers, strings, dtypes, devices and lists of them. For such a graph
:func:`python_code` writes exactly the text FX would write (the same source,
globals, line map and prologue position, with the prologue and the return
statement written by the graph's own code generator) and for any other graph
it returns ``None``, so the caller asks FX. Exactly: a name FX would rename,
an argument FX would print another way, a code generator FX would call
differently all send the graph to FX, and so does any graph this module
fails on, so a graph FX cannot write either fails in FX, with FX's error.
The test suite compares the two on every graph it compiles.
"""

from __future__ import annotations

import functools
import os
import re
from typing import Any

import torch
import torch.fx
from torch.fx.graph import (
    CodeGen,
    PythonCode,
    _custom_builtins,
    _illegal_names,
    _is_from_torch,
    _PyTreeCodeGen,
)
from torch.fx.graph import magic_methods as _MAGIC_METHODS
from torch.fx.node import _get_qualified_name

_IDENTIFIER = re.compile(r"[a-zA-Z_][0-9a-zA-Z_]*")
_CODE_GENERATORS = (CodeGen, _PyTreeCodeGen)
_PRINTED_BY_REPR = frozenset({int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout})
_ROOT = "self"


class _Declined(Exception):
    """The graph holds something whose code FX writes in a way this module does not: FX writes it."""


def python_code(graph: torch.fx.Graph) -> PythonCode | None:
    """``graph.python_code(root_module="self")``, or ``None`` when the graph needs FX's own generator."""
    codegen = graph._codegen
    if (
        type(codegen) not in _CODE_GENERATORS
        or getattr(codegen, "_body_transformer", None) is not None
        or getattr(codegen, "_func_name", None) != "forward"
        or os.environ.get("FX_GRAPH_SHOW_META", "0") == "1"
    ):
        return None
    try:
        return _Writer(graph, codegen).code()
    except Exception:
        return None


class _Writer:
    """Writes one graph's code: one line per node, each followed by the values it is the last to use."""

    def __init__(self, graph: torch.fx.Graph, codegen: CodeGen) -> None:
        self.codegen = codegen
        self.nodes = list(graph.nodes)
        self.names = _names(self.nodes)

    def code(self) -> PythonCode:
        released = _last_uses(self.nodes)
        free_vars: list[str] = []
        lines: list[tuple[str, int]] = []
        output: str | None = None
        for index, node in enumerate(self.nodes):
            op = node.op
            if op == "placeholder":
                free_vars.append(self._placeholder(node, lines, index))
                continue
            if op == "output":
                if index != len(self.nodes) - 1 or node.type is not None:
                    raise _Declined
                output = self.codegen.generate_output(node.args[0], descs=None, repr_fn=self.argument)
                if "\n" in output:
                    raise _Declined
                continue
            line = self._statement(node)
            dropped = released.get(node, [])
            if not node.users:
                dropped = [*dropped, node]
            if dropped:
                line += ";  " + " = ".join([self._name(item) for item in dropped] + ["None"])
            lines.append((line, index))
        if output is None:
            raise _Declined
        prologue = self.codegen.gen_fn_def(free_vars, "")
        return _assemble(prologue, lines, output, len(self.nodes) - 1)

    def _name(self, node: torch.fx.Node) -> str:
        name = self.names.get(node)
        if name is None:
            raise _Declined
        return name

    def _placeholder(self, node: torch.fx.Node, lines: list[tuple[str, int]], index: int) -> str:
        target = node.target
        if type(target) is not str or node.args or node.type is not None or "*" in target:
            raise _Declined
        if target != self.names[node]:
            lines.append((f"{self.names[node]} = {target}", index))
        return target

    def _statement(self, node: torch.fx.Node) -> str:
        if node.type is not None:
            raise _Declined
        name, op, target = self.names[node], node.op, node.target
        if op == "call_function":
            return f"{name} = {self._call(node, target)}"
        if type(target) is not str:
            raise _Declined
        if op == "get_attr":
            return f"{name} = {_attribute_path(_ROOT, target)}"
        if op == "call_module":
            return f"{name} = {_attribute_path(_ROOT, target)}({self._arguments(node.args, node.kwargs)})"
        if op == "call_method" and node.args:
            receiver = self.argument(node.args[0])
            return (
                f"{name} = {_attribute_path(receiver, target)}({self._arguments(node.args[1:], node.kwargs)})"
            )
        raise _Declined

    def _call(self, node: torch.fx.Node, target: Any) -> str:
        magic = _magic_method(target)
        if magic is not None:
            return magic.format(*(self.argument(item) for item in node.args))
        if not isinstance(target, torch._ops.OpOverload) or node.meta.get("is_wrapped", False):
            raise _Declined
        return f"{_torch_name(target)}({self._arguments(node.args, node.kwargs)})"

    def _arguments(self, args: Any, kwargs: Any) -> str:
        written = [self.argument(item) for item in args]
        written.extend(f"{key} = {self.argument(value)}" for key, value in kwargs.items())
        return ", ".join(written)

    def argument(self, value: Any) -> str:
        """An argument as FX prints it inside generated code (nodes by their names in the code)."""
        kind = type(value)
        if kind is torch.fx.Node:
            return self._name(value)
        if kind in _PRINTED_BY_REPR or kind is torch.memory_format:
            return repr(value)
        if kind is tuple:
            if len(value) == 1:
                return f"({self.argument(value[0])},)"
            return "(" + ", ".join(self.argument(item) for item in value) + ")"
        if isinstance(value, list) and kind in _LISTS:
            return "[" + ", ".join(self.argument(item) for item in value) + "]"
        raise _Declined


_LISTS = (list, torch.fx.immutable_collections.immutable_list)


def _names(nodes: list[torch.fx.Node]) -> dict[torch.fx.Node, str]:
    """Each node's name in the code: its own, when FX's code namespace would keep it unchanged.

    FX names the code's variables in a fresh namespace that already holds its
    builtins; a unique identifier that is no keyword or builtin (FX's
    ``_illegal_names`` holds both) passes through it unchanged, so anything
    else is left to FX.
    """
    names = {node: node.name for node in nodes}
    if len(set(names.values())) != len(names):
        raise _Declined
    for name in names.values():
        if _IDENTIFIER.fullmatch(name) is None or name in _illegal_names:
            raise _Declined
    return names


def _last_uses(nodes: list[torch.fx.Node]) -> dict[torch.fx.Node, list[torch.fx.Node]]:
    """For each node, the values no later node reads, in the order FX frees them."""
    seen: set[torch.fx.Node] = set()
    released: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    for node in reversed(nodes):
        for used in node._input_nodes:
            if used not in seen:
                seen.add(used)
                released.setdefault(node, []).append(used)
    return released


def _assemble(prologue: str, lines: list[tuple[str, int]], output: str, output_index: int) -> PythonCode:
    """The function's source from its lines, with FX's line map (generated line -> node index)."""
    first_line = prologue.count("\n") + 1
    body: list[str] = []
    line_map: dict[int, int | None] = {}
    for text, index in [*lines, (output, output_index), ("", output_index)]:
        line_map[len(body) + first_line] = index
        body.append(text)
    source = "\n".join(body).lstrip("\n")
    indented = "\n".join("    " + line for line in source.split("\n"))
    return PythonCode(
        f"\n\n\n{prologue}\n{indented}",
        _builtins(),
        _lineno_map=line_map,
        _prologue_start=4,
    )


def _builtins() -> dict[str, Any]:
    return {name: builtin.obj for name, builtin in _custom_builtins.items()}


def _attribute_path(base: str, target: str) -> str:
    path = base
    for part in target.split("."):
        path = f"{path}.{part}" if part.isidentifier() else f'getattr({path}, "{part}")'
    return path


@functools.lru_cache(maxsize=1024)
def _torch_name(target: torch._ops.OpOverload) -> str:
    if not _is_from_torch(target):
        raise _Declined
    return _get_qualified_name(target)


def _magic_method(target: Any) -> str | None:
    if getattr(target, "__module__", "") != "_operator":
        return None
    return _MAGIC_METHODS.get(getattr(target, "__name__", ""))
