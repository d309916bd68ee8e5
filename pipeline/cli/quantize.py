"""``pt2e-pipeline quantize``: a model in, a quantized ``.pt2`` and its audit log out."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import click
import torch
import torch.fx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipeline.audit.sinks import JsonLinesSink
from pipeline.cli import reproducer
from pipeline.cli.changes import PrintAfterChange
from pipeline.cli.errors import reported_errors
from pipeline.cli.inputs import InputError, calibration_batches, load_model, parse_options
from pipeline.cli.inspect import no_plugins_option, plugin_filters, plugins_option
from pipeline.cli.reproducer import Invocation
from pipeline.engine import Pipeline
from pipeline.errors import PipelineError, StageFailedError
from pipeline.options import CHECK_MODES
from pipeline.report import COLUMNS, RunResult


@click.command()
@click.argument("source", required=False, metavar="[MODEL.pt2 | package.module:factory]")
@click.option(
    "--model",
    "model_name",
    default="demo-cnn",
    show_default=True,
    help="Built-in or plugin model to use when no SOURCE is given.",
)
@click.option(
    "--quantizer",
    "quantizer_name",
    default="symmetric",
    show_default=True,
    help="Quantizer by name (list them with `pt2e-pipeline stages --quantizers`).",
)
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="NAME=VALUE",
    help="Quantizer option, e.g. per_channel=false (repeatable).",
)
@click.option(
    "--calibration",
    default="random:8",
    show_default=True,
    metavar="random:N | FILE",
    help="N random batches shaped like the example inputs, or a torch.save'd list of batches.",
)
@click.option(
    "-o",
    "--output",
    default="quantized.pt2",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where to write the quantized program.",
)
@click.option(
    "--audit",
    "audit_path",
    type=click.Path(dir_okay=False),
    help="Where to write the audit log (default: OUTPUT with .audit.jsonl).",
)
@click.option(
    "--check",
    type=click.Choice(CHECK_MODES),
    default="strict",
    show_default=True,
    help="How to treat a broken condition.",
)
@click.option(
    "--stop-after",
    metavar="STAGE",
    help="Stop after this stage (no program is written unless the run converted).",
)
@click.option("--skip", multiple=True, metavar="STAGE", help="Skip an optional stage (repeatable).")
@click.option(
    "--bisect", type=click.IntRange(min=0), metavar="N", help="Run only the first N optional stages."
)
@click.option(
    "--print-after-change",
    "print_after",
    multiple=True,
    metavar="STAGE",
    help="After this stage (repeatable; 'all' for every stage), print what it changed as a graph diff.",
)
@click.option(
    "--reproducer",
    "reproducer_dir",
    type=click.Path(file_okay=False),
    help="Where a failed run writes its reproducer (default: OUTPUT with .repro).",
)
@plugins_option
@no_plugins_option
@click.pass_context
def quantize(
    ctx: click.Context,
    source: str | None,
    model_name: str,
    quantizer_name: str,
    options: tuple[str, ...],
    calibration: str,
    output: str,
    audit_path: str | None,
    check: str,
    stop_after: str | None,
    skip: tuple[str, ...],
    bisect: int | None,
    print_after: tuple[str, ...],
    reproducer_dir: str | None,
    plugins_spec: str | None,
    no_plugins: bool,
) -> None:
    """Quantize a model: capture, annotate, prepare, calibrate, convert, and every plugin stage.

    With no SOURCE, quantizes the built-in demo model.
    """
    console = Console()
    stem = os.path.splitext(output)[0]
    audit_path = audit_path or stem + ".audit.jsonl"
    invocation = Invocation(
        quantizer_name,
        options,
        check,
        skip,
        stop_after,
        bisect,
        plugins_spec,
        no_plugins,
        source,
        model_name,
    )
    sink = JsonLinesSink(audit_path, mode="w")
    with reported_errors(ctx), contextlib.closing(sink):
        pipeline = pipeline_for(invocation, audit=sink)
        quantizer = quantizer_for(invocation, pipeline)
        model, example, origin = load_model(source, model_name, pipeline.registry)
        batches = calibration_batches(calibration, example)
        offered_by = pipeline.registry.factory("quantizer", quantizer_name).plugin
        console.print(f"quantizing {origin} with {quantizer_name} ({offered_by})")
        try:
            result = run_invocation(pipeline, quantizer, model, example, batches, console, print_after)
        except StageFailedError as failure:
            sink.flush()
            directory = Path(reproducer_dir or stem + ".repro")
            before = _graph_before(invocation, pipeline, failure.stage, model, example, batches)
            reproducer.write(
                directory, invocation, pipeline, model, example, batches, failure, audit_path, before
            )
            raise PipelineError(
                f"{failure}\nreproducer: {directory} (run it again with `pt2e-pipeline replay {directory}`)"
            ) from failure
        written = _save(result, example, output)
    console.print(_report_table(result))
    console.print(_op_summary(result))
    if written:
        console.print(f"quantized program: {output}")
    console.print(f"audit log: {audit_path}  (read it with `pt2e-pipeline audit {audit_path}`)")


def pipeline_for(invocation: Invocation, audit: Any = None) -> Pipeline:
    """The pipeline ``invocation`` asks for, writing its audit trail to ``audit``."""
    return Pipeline.default(
        **plugin_filters(invocation.plugins, invocation.no_plugins),
        check=invocation.check,
        skip=invocation.skip,
        stop_after=invocation.stop_after,
        bisect=invocation.bisect,
        audit=audit,
    )


def quantizer_for(invocation: Invocation, pipeline: Pipeline) -> Any:
    """A new quantizer as ``invocation`` names it (quantizers keep state: one per run)."""
    factory = pipeline.registry.factory("quantizer", invocation.quantizer)
    options = parse_options(invocation.options)
    if options.get("qat"):
        raise InputError(
            "quantization-aware training needs a training loop, which the command line does not run: "
            "use pipeline.pt2e.prepare_qat_pt2e from Python, train, then convert_pt2e"
        )
    try:
        return factory.item(**options)
    except (TypeError, ValueError) as error:
        raise InputError(f"quantizer {invocation.quantizer!r}: {error}") from error


def run_invocation(
    pipeline: Pipeline,
    quantizer: Any,
    model: torch.nn.Module,
    example: tuple[Any, ...],
    batches: list[tuple[Any, ...]],
    console: Console,
    print_after: tuple[str, ...] = (),
) -> RunResult:
    """One whole run of ``pipeline`` with ``quantizer``, with a progress bar over calibration."""
    with _progress(console) as progress:
        task = progress.add_task("calibrating", total=len(batches))
        return pipeline.run(
            model,
            example,
            quantizer=quantizer,
            calibration=batches,
            progress=lambda done, total: progress.update(task, completed=done),
            instrumentations=_printers(pipeline, print_after, progress.console),
        )


def _graph_before(
    invocation: Invocation,
    pipeline: Pipeline,
    stage: str,
    model: torch.nn.Module,
    example: tuple[Any, ...],
    batches: list[tuple[Any, ...]],
) -> torch.fx.GraphModule | None:
    """The graph as it entered ``stage``: the same run again, stopped just before it."""
    names = [row["stage"] for row in pipeline.plan.describe()]
    if stage not in names or names.index(stage) == 0:
        return None
    earlier = attrs.evolve(invocation, stop_after=names[names.index(stage) - 1])
    pipeline = pipeline_for(earlier, audit=False)
    try:
        result = run_invocation(
            pipeline, quantizer_for(earlier, pipeline), model, example, batches, Console(quiet=True)
        )
    except PipelineError:
        return None
    return result.graph_module


def _printers(pipeline: Pipeline, stages: tuple[str, ...], console: Console) -> list[PrintAfterChange]:
    if not stages:
        return []
    known = [row["stage"] for row in pipeline.plan.describe()]
    unknown = sorted(set(stages) - {"all", *known})
    if unknown:
        raise InputError(
            f"--print-after-change: no stage named {', '.join(map(repr, unknown))}; "
            f"the stages: all, {', '.join(known)}"
        )

    def write(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    return [PrintAfterChange(stages, write)]


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _save(result: RunResult, example: tuple[Any, ...], output: str) -> bool:
    module = result.graph_module
    if module is None or "convert" not in result.report.ran_names():
        return False
    try:
        program = torch.export.export(module, example)
    except Exception as error:
        raise InputError(
            f"the quantized graph could not be re-exported for saving: {type(error).__name__}: {error}"
        ) from error
    directory = os.path.dirname(output)
    if directory:
        os.makedirs(directory, exist_ok=True)
    torch.export.save(program, output)
    return True


def _report_table(result: RunResult) -> Table:
    table = Table(title=f"run {result.report.run_id}")
    for index, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if index < 3 else "right")
    for stage in result.report.stages:
        table.add_row(*stage.cells())
    return table


def _op_summary(result: RunResult) -> str:
    """Operator counts by library: how many Q/DQ ops the run left, whatever library they come from."""
    module = result.graph_module
    if module is None:
        return "no graph"
    counts: Counter[str] = Counter()
    for submodule in module.modules():
        if isinstance(submodule, torch.fx.GraphModule):
            for node in submodule.graph.nodes:
                if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
                    counts[node.target.namespace] += 1
    listed = ", ".join(f"{namespace} {count}" for namespace, count in counts.most_common())
    return (
        f"operators by library: {listed} (total {sum(counts.values())}); total {result.report.seconds:.2f} s"
    )
