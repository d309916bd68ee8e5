"""The calibrate stage: runs calibration batches through the prepared model so observers see data.

Optional, in its own phase: callers of ``prepare``/``convert`` calibrate (or
train) the prepared model themselves; a whole run calibrates here. Batches run
under ``torch.no_grad()``: observers need no gradients, and torch 2.13 cannot
calibrate through a ``scan`` body with autograd on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import torch
import torch.fx

from pipeline import Context, Stage, StageError, Violation, condition
from plugins import observers
from plugins.prepare import observer_nodes

Progress = Callable[[int, int | None], None]


@attrs.frozen
class Calibrate(Stage):
    """Runs the calibration batches (or the example inputs) through the prepared model."""

    name: str = "calibrate"
    phase: str = "calibrate"
    requires: tuple[str, ...] = ("observed",)
    ensures: tuple[str, ...] = ("calibrated",)

    def run(self, ctx: Context) -> bool:
        module = ctx.graph_module
        assert module is not None
        batches = ctx.inputs.get("calibration")
        if batches is None:
            example = ctx.inputs.get("example_inputs")
            if example is None:
                raise StageError("nothing to calibrate with: pass calibration=[batch, ...] or example_inputs")
            ctx.note("no calibration data given: calibrating on the example inputs once")
            batches = [example]
        progress: Progress | None = ctx.inputs.get("progress")
        total = len(batches) if hasattr(batches, "__len__") else None
        count = 0
        with torch.no_grad():
            for count, batch in enumerate(_iterate(batches), 1):
                args, kwargs = _as_arguments(batch, count)
                module(*args, **kwargs)
                if progress is not None:
                    progress(count, total)
        if count == 0:
            raise StageError("the calibration data held no batch")
        ctx.note(f"calibrated on {count} batch(es)", batches=count)
        return False


def _iterate(batches: Any) -> Iterable[Any]:
    if isinstance(batches, (torch.Tensor, Mapping)) or not isinstance(batches, Iterable):
        raise StageError(
            f"calibration must be an iterable of batches (tuples of inputs), got {type(batches).__name__}"
        )
    return batches


def _as_arguments(batch: Any, number: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    raise StageError(
        f"calibration batch {number} is a {type(batch).__name__}; a batch is a tuple of model "
        f"inputs, a dict of keyword inputs, or one tensor"
    )


@condition("calibrated", "every observer has seen the data it needs to compute qparams")
def calibrated(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    if graph_module is None:
        return [Violation("there is no graph")]
    found = []
    for path, node in observer_nodes(graph_module):
        owner = graph_module.get_submodule(path) if path else graph_module
        if not observers.has_seen_data(owner.get_submodule(str(node.target))):
            found.append(
                Violation(
                    "observer has seen no data: its qparams would be meaningless",
                    node=node,
                    graph=path,
                )
            )
    return found
