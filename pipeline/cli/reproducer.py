"""Reproducers: what a failed ``quantize`` needs to fail again, in one directory, and ``replay``.

A directory holds:

- ``invocation.json``: the quantizer, its options, the check mode, skips,
  stop-after, bisect and plugin filters of the run, the model's source, and
  the stage that failed with its message;
- ``model.pt2``: the model the run was given (``torch.export.save``), when it
  can be exported;
- ``calibration.pt``: the calibration batches (``torch.save``, readable with
  ``weights_only=True``);
- ``plan.json``: the plan as ``pt2e-pipeline stages --json`` prints it;
- ``audit.jsonl``: the failed run's audit trail;
- ``before-STAGE.txt``, and ``before-STAGE.pt2`` when it exports: the graph as
  it entered the failing stage, from a second run stopped just before it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import attrs
import torch

from pipeline.cli.inputs import InputError, read_program
from pipeline.engine import Pipeline
from pipeline.errors import StageFailedError
from pipeline.graph_text import graph_lines

INVOCATION = "invocation.json"
MODEL = "model.pt2"
CALIBRATION = "calibration.pt"


@attrs.frozen
class Invocation:
    """What a ``quantize`` run was asked to do: enough to build its pipeline and quantizer again."""

    quantizer: str
    options: tuple[str, ...] = ()
    check: str = "strict"
    skip: tuple[str, ...] = ()
    stop_after: str | None = None
    bisect: int | None = None
    plugins: str | None = None
    no_plugins: bool = False
    source: str | None = None
    model: str = "demo-cnn"

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Invocation:
        fields = {field.name for field in attrs.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise InputError(f"{INVOCATION} has unknown fields: {', '.join(unknown)}")
        for name in ("options", "skip"):
            if name in data:
                data = {**data, name: tuple(data[name])}
        return cls(**data)


def write(
    directory: Path,
    invocation: Invocation,
    pipeline: Pipeline,
    model: torch.nn.Module,
    example: tuple[Any, ...],
    batches: list[tuple[Any, ...]],
    failure: StageFailedError,
    audit_path: str,
    graph_before: torch.fx.GraphModule | None,
) -> None:
    """Write the reproducer of ``failure`` into ``directory`` (replacing what was there)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    record = {**invocation.to_json(), "failed_stage": failure.stage, "error": str(failure)}
    (directory / INVOCATION).write_text(json.dumps(record, indent=2) + "\n")
    (directory / "plan.json").write_text(json.dumps(pipeline.plan.describe(), indent=2) + "\n")
    torch.save([tuple(batch) for batch in batches], directory / CALIBRATION)
    if Path(audit_path).exists():
        shutil.copyfile(audit_path, directory / "audit.jsonl")
    _save_program(model, example, directory / MODEL)
    if graph_before is not None:
        stem = f"before-{failure.stage}"
        (directory / f"{stem}.txt").write_text("\n".join(graph_lines(graph_before)) + "\n")
        _save_program(graph_before, example, directory / f"{stem}.pt2")


def _save_program(module: torch.nn.Module, example: tuple[Any, ...], path: Path) -> bool:
    try:
        torch.export.save(torch.export.export(module, example), path)
    except Exception:
        return False
    return True


@attrs.frozen
class Reproducer:
    """A reproducer directory, read back."""

    directory: Path
    invocation: Invocation
    failed_stage: str
    error: str
    model: torch.nn.Module | None
    example: tuple[Any, ...] | None
    batches: list[tuple[Any, ...]]


def read(directory: Path) -> Reproducer:
    """Read a directory :func:`write` made; a missing or damaged file is an :class:`InputError`."""
    try:
        record = json.loads((directory / INVOCATION).read_text())
    except FileNotFoundError as error:
        raise InputError(f"{directory} is not a reproducer: it has no {INVOCATION}") from error
    except json.JSONDecodeError as error:
        raise InputError(f"{directory / INVOCATION} is not valid JSON: {error}") from error
    failed_stage, message = record.pop("failed_stage", None), record.pop("error", "")
    invocation = Invocation.from_json(record)
    model: torch.nn.Module | None = None
    example: tuple[Any, ...] | None = None
    if (directory / MODEL).exists():
        program = read_program(str(directory / MODEL))
        model, example = program.module(), tuple(program.example_inputs[0])
    try:
        batches = torch.load(directory / CALIBRATION, weights_only=True)
    except Exception as error:
        raise InputError(f"cannot read {directory / CALIBRATION}: {type(error).__name__}: {error}") from error
    return Reproducer(directory, invocation, str(failed_stage), message, model, example, list(batches))
