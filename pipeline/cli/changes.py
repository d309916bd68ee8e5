"""What a stage changed, as graph text: ``pt2e-pipeline diff`` and ``quantize --print-after-change``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import click
import torch
import torch.ao.quantization.fx._decomposed
import torch.fx

from pipeline.cli.errors import reported_errors
from pipeline.cli.inputs import read_program
from pipeline.graph_text import graph_lines, unified_diff
from pipeline.instrumentation import Instrumentation
from pipeline.stage_run import StageRun


class PrintAfterChange(Instrumentation):
    """After each chosen stage, writes what it changed as a unified diff (or that it changed nothing,
    or why it was skipped).

    ``stages`` names the stages to watch; ``("all",)`` watches every stage.
    """

    reads_only = True

    def __init__(self, stages: Sequence[str], write: Callable[[str], None]) -> None:
        self._stages = frozenset(stages)
        self._write = write
        self._before: list[str] | None = None

    def _watched(self, step: StageRun) -> bool:
        return "all" in self._stages or step.stage.name in self._stages

    def before_stage(self, step: StageRun) -> None:
        graph_module = step.ctx.graph_module
        watched = self._watched(step) and graph_module is not None
        self._before = graph_lines(graph_module) if watched and graph_module is not None else None

    def after_stage(self, step: StageRun) -> None:
        graph_module = step.ctx.graph_module
        if not self._watched(step):
            return
        before = self._before or []
        after = graph_lines(graph_module) if graph_module is not None else []
        name = step.stage.name
        lines = list(unified_diff(before, after, f"before {name}", f"after {name}"))
        self._write(
            "\n".join(lines) if lines else f"--- {name} left the graph unchanged ({len(after)} lines)"
        )

    def stage_skipped(self, step: StageRun, reason: str) -> None:
        if self._watched(step):
            self._write(f"--- {step.stage.name} skipped: {reason}")


@click.command()
@click.argument("before", type=click.Path(exists=True, dir_okay=False))
@click.argument("after", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def diff(ctx: click.Context, before: str, after: str) -> None:
    """Show how two saved programs (.pt2) differ, node by node, as a unified diff."""
    with reported_errors(ctx):
        texts = [graph_lines(_load(path)) for path in (before, after)]
    lines = list(unified_diff(texts[0], texts[1], before, after))
    click.echo("\n".join(lines) if lines else f"the graphs are the same ({len(texts[0])} lines)")


def _load(path: str) -> torch.fx.GraphModule:
    module = read_program(path).module()
    assert isinstance(module, torch.fx.GraphModule)
    return module
