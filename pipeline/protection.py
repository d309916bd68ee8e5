"""The guard over what the caller owns: their tensors and their graph.

The pipeline shares the caller's tensors with its private copy instead of
copying them, so a stage that writes into a weight in place would change the
caller's model. Every tensor has a version counter that in-place writes bump;
the guard reads them after every stage and fails the stage that bumped one.
At the end of the run it also compares the caller's graph with its state at
the start (its nodes, their wiring and the metadata values they hold), which
catches a stage that reached into the caller's model directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.fx

from pipeline.errors import PipelineError
from pipeline.instrumentation import Instrumentation
from pipeline.signature import IdentitySignature

if TYPE_CHECKING:
    from pipeline.run_state import RunState
    from pipeline.stage_run import StageRun


def _owned_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor the model's modules hold (parameters, buffers, plain attributes), by qualified name.

    Modules in ``named_modules(remove_duplicate=False)`` order, walked with a
    plain stack: a prepared model has an observer module per observed edge.
    """
    tensors: dict[str, torch.Tensor] = {}
    tensor = torch.Tensor
    stack: list[tuple[str, torch.nn.Module]] = [("", model)]
    while stack:
        prefix, module = stack.pop()
        for table in (module._parameters, module._buffers, vars(module)):
            for name, value in table.items():
                if isinstance(value, tensor):
                    tensors.setdefault(prefix + name, value)
        stack.extend(
            (f"{prefix}{name}.", child)
            for name, child in reversed(module._modules.items())
            if child is not None
        )
    return tensors


def _version(tensor: torch.Tensor) -> int | None:
    try:
        return int(tensor._version)
    except RuntimeError:
        return None


class CallerGuard(Instrumentation):
    """Fails the stage that wrote into a caller's tensor, and the run that changed the caller's graph."""

    reads_only = True

    def __init__(self, model: object) -> None:
        self._versions: dict[str, tuple[torch.Tensor, int]] = {}
        self._graph: torch.fx.GraphModule | None = None
        self._signature = IdentitySignature.of(None)
        if isinstance(model, torch.nn.Module):
            for name, tensor in _owned_tensors(model).items():
                version = _version(tensor)
                if version is not None:
                    self._versions[name] = (tensor, version)
        if isinstance(model, torch.fx.GraphModule):
            self._graph = model
            self._signature = IdentitySignature.of(model)

    def after_stage(self, step: StageRun) -> None:
        try:
            written = sorted(
                name for name, (tensor, version) in self._versions.items() if tensor._version != version
            )
        except RuntimeError:
            written = sorted(
                name for name, (tensor, version) in self._versions.items() if _version(tensor) != version
            )
        if written:
            for name in written:
                tensor = self._versions[name][0]
                self._versions[name] = (tensor, _version(tensor) or 0)
            shown = ", ".join(written[:8]) + (f" and {len(written) - 8} more" if len(written) > 8 else "")
            raise step.failure(
                f"stage {step.stage.name!r} (plugin {step.plugin}) wrote in place into the caller's "
                f"tensor(s) {shown}; stages share the caller's tensors and must make new ones to "
                f"change them"
            )

    def run_finished(self, run: RunState, error: BaseException | None) -> None:
        if self._graph is None:
            return
        if not self._signature.holds_for(self._graph):
            raise PipelineError(
                "the run changed the caller's graph module (stages that ran: "
                f"{', '.join(run.report.ran_names()) or 'none'}): a stage rewrote the caller's "
                "nodes or their metadata instead of working on ctx.graph_module"
            )
