"""``pt2e-pipeline replay DIR``: run a failed ``quantize`` again from its reproducer."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from pipeline.cli import reproducer
from pipeline.cli.errors import reported_errors
from pipeline.cli.inputs import load_model
from pipeline.cli.quantize import pipeline_for, quantizer_for, run_invocation
from pipeline.errors import PipelineError, StageFailedError


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.pass_context
def replay(ctx: click.Context, directory: str) -> None:
    """Run a failed quantize again from the reproducer it wrote: same model, options and batches.

    Exit status 1 with the error when the failure comes back, 0 when the run now succeeds.
    """
    console = Console()
    with reported_errors(ctx):
        found = reproducer.read(Path(directory))
        invocation = found.invocation
        pipeline = pipeline_for(invocation, audit=str(Path(directory) / "replay.audit.jsonl"))
        model, example = found.model, found.example
        if model is None or example is None:
            model, example, _ = load_model(invocation.source, invocation.model, pipeline.registry)
        console.print(f"replaying {directory}: stage {found.failed_stage!r} failed with:\n{found.error}")
        try:
            run_invocation(
                pipeline, quantizer_for(invocation, pipeline), model, example, found.batches, console
            )
        except StageFailedError as failure:
            same = "the same stage" if failure.stage == found.failed_stage else f"stage {failure.stage!r}"
            raise PipelineError(f"reproduced: {same} failed again: {failure}") from failure
    console.print(f"did not reproduce: the run succeeded (stage {found.failed_stage!r} passed)")
