"""The capture stage: the caller's model as an ATen-level graph from ``torch.export``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
import torch.fx

from pipeline import Context, Stage, StageError, Violation, condition
from plugins.annotation import ANNOTATION_KEY
from plugins.observers import is_observer
from plugins.subgraphs import quantizable_graph_modules

_PYTHON_OPERATOR_MODULES = frozenset({"_operator", "operator", "math", "builtins"})


def _is_aten_level(target: object) -> bool:
    if isinstance(target, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
        return True
    module = getattr(target, "__module__", None)
    if module in _PYTHON_OPERATOR_MODULES:
        return True
    name = getattr(target, "__name__", "")
    return module in ("torch", "torch.fx.experimental.sym_node") and name.startswith(("sym_", "_sym_"))


def _is_export_module(module: torch.nn.Module) -> bool:
    """Modules an exported graph may call: nested graphs, export's own guards, observers."""
    return (
        isinstance(module, torch.fx.GraphModule)
        or type(module).__module__.startswith("torch.export")
        or is_observer(module)
    )


@condition("captured", "the model is an ATen-level graph from torch.export")
def captured(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    if graph_module is None:
        return [Violation("no graph: the model has not been captured")]
    found = []
    for path, module in quantizable_graph_modules(graph_module):
        for node in module.graph.nodes:
            if node.op == "call_function" and not _is_aten_level(node.target):
                found.append(
                    Violation(
                        f"calls {node.target!r}, which is not an ATen operator: capture the model "
                        f"with torch.export.export(...).module()",
                        node=node,
                        graph=path,
                    )
                )
            elif node.op == "call_method":
                found.append(
                    Violation("calls a Python method: not a graph from torch.export", node=node, graph=path)
                )
            elif node.op == "call_module" and not _is_export_module(module.get_submodule(str(node.target))):
                found.append(
                    Violation(
                        "calls a torch.nn module: not an ATen-level graph from torch.export",
                        node=node,
                        graph=path,
                    )
                )
    return found


@condition("unannotated", "no node carries a quantization annotation yet")
def unannotated(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    if graph_module is None:
        return []
    return [
        Violation("already annotated for quantization", node=node, graph=path)
        for path, module in quantizable_graph_modules(graph_module)
        for node in module.graph.nodes
        if ANNOTATION_KEY in node.meta
    ]


@attrs.frozen
class Capture(Stage):
    """Exports the model with torch.export, or adopts a graph module that already was."""

    name: str = "capture"
    ensures: tuple[str, ...] = ("captured", "unannotated")
    required: bool = True
    strict: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))

    def skip_reason(self, ctx: Context) -> str | None:
        if ctx.graph_module is not None:
            return "the model is a graph module already"
        return None

    def run(self, ctx: Context) -> bool:
        if self.skip_reason(ctx) is not None:
            return False
        model = ctx.inputs.get("model")
        if not isinstance(model, torch.nn.Module):
            raise StageError(
                f"the model must be a torch.nn.Module (or a graph module from torch.export), "
                f"got {type(model).__name__}"
            )
        args, kwargs = _example_arguments(ctx.inputs.get("example_inputs"), type(model).__name__)
        try:
            program = torch.export.export(
                model,
                args,
                kwargs,
                dynamic_shapes=ctx.inputs.get("dynamic_shapes"),
                strict=bool(ctx.inputs.get("strict", self.strict)),
            )
        except Exception as error:
            raise StageError(
                f"torch.export could not capture {type(model).__name__}: {type(error).__name__}: {error}"
            ) from error
        ctx.graph_module = program.module()
        return True


def _example_arguments(example: Any, model_name: str) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    if example is None:
        raise StageError(f"capturing {model_name} needs example inputs: pass example_inputs=(tensor, ...)")
    if isinstance(example, torch.Tensor):
        return (example,), None
    if isinstance(example, Mapping):
        return (), dict(example)
    if isinstance(example, (tuple, list)):
        return tuple(example), None
    raise StageError(
        f"example_inputs must be a tuple of model arguments, a dict of keyword arguments or one "
        f"tensor, got {type(example).__name__}"
    )
