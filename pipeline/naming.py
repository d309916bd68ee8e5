"""How nodes, op targets and the user's source lines are named in messages and events.

``torch.export`` records the Python stack that produced each node, from the
user's ``forward`` down into ``torch.nn`` internals. An error is only useful if
it points at the line the user wrote, so the innermost frame that lies outside
the torch package is the one reported.
"""

from __future__ import annotations

import os
import re

import torch
import torch.fx

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)\s*$')
_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def user_frame(stack_trace: str | None) -> str | None:
    """The innermost frame of ``stack_trace`` in the user's code, as two lines.

    Returns ``'File "model.py", line 12, in forward\\n    x = self.conv(x)'``,
    or ``None`` when the trace is empty. Falls back to the innermost frame when
    every frame lies inside torch.
    """
    if not stack_trace:
        return None
    frames: list[tuple[str, str]] = []
    lines = stack_trace.splitlines()
    for index, line in enumerate(lines):
        match = _FRAME.match(line)
        if match is None:
            continue
        code = ""
        if index + 1 < len(lines) and _FRAME.match(lines[index + 1]) is None:
            code = lines[index + 1].strip()
        frames.append((line.strip(), code))
    if not frames:
        return stack_trace.strip().splitlines()[-1]
    own = [frame for frame in frames if not _in_torch(frame[0])]
    location, code = (own or frames)[-1]
    return f"{location}\n    {code}" if code else location


def _in_torch(location: str) -> bool:
    match = _FRAME.match(location)
    return match is not None and match.group("file").startswith(_TORCH_DIR)


def node_label(node: torch.fx.Node) -> str:
    """``name (target)``, the way node references read in every message."""
    if node.op in ("call_function", "call_method", "call_module", "get_attr"):
        return f"{node.name} ({node.op} {target_name(node.target)})"
    return f"{node.name} ({node.op})"


def describe_node(node: torch.fx.Node) -> str:
    """A node's label followed by the user's source line, indented, when known."""
    frame = user_frame(node.meta.get("stack_trace"))
    if frame is None:
        return node_label(node)
    indented = "\n".join("    " + line for line in frame.splitlines())
    return f"{node_label(node)}\n{indented}"


def target_name(target: object) -> str:
    """A stable, readable name for a node target: ``aten.linear.default``, ``_operator.getitem``."""
    if isinstance(target, str):
        return target
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return str(target)
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order.{target.name()}"  # type: ignore[no-untyped-call]
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    if qualname is None:
        return repr(target)
    return f"{module}.{qualname}" if module else qualname
