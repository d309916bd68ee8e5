"""What the command line reads: a model to quantize, factory options, calibration batches.

A model comes from a ``.pt2`` file (``torch.export.save``), from
``package.module:factory`` returning ``(model, example_inputs)``, or from a
model a plugin offers by name. Calibration is ``random:N`` (N batches shaped
like the example inputs) or a file of batches saved with ``torch.save`` (read
with ``weights_only=True``, so a file cannot run code).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from pipeline.errors import PipelineError
from pipeline.registry import Registry


class InputError(PipelineError):
    """A model, option or calibration source the command line cannot use."""


def load_model(
    source: str | None, model_name: str, registry: Registry
) -> tuple[torch.nn.Module, tuple[Any, ...], str]:
    """The model, its example inputs and a label saying where it came from."""
    if source is None:
        factory = registry.factory("model", model_name)
        model, example = _pair(factory.item(), f"model {model_name!r}")
        return model, example, f"built-in model {model_name} ({factory.plugin})"
    if source.endswith(".pt2") or os.path.isfile(source):
        return (*_load_program(source), source)
    if ":" in source:
        model, example = _pair(_call_factory(source), source)
        return model, example, source
    raise InputError(f"cannot read a model from {source!r}: give a .pt2 file or package.module:factory")


def read_program(path: str) -> torch.export.ExportedProgram:
    """``torch.export.load``, failing with one message; torch's logged traceback is held back.

    (``--debug`` shows the traceback of the error itself.)
    """
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return torch.export.load(path)
    except FileNotFoundError as error:
        raise InputError(f"no such file: {path}") from error
    except Exception as error:
        raise InputError(f"{path} is not a torch.export program: {type(error).__name__}: {error}") from error
    finally:
        logger.setLevel(level)


def _load_program(path: str) -> tuple[torch.nn.Module, tuple[Any, ...]]:
    """Plugins are loaded by now, so the operator libraries a saved program uses are registered."""
    program = read_program(path)
    example = program.example_inputs
    if example is None:
        raise InputError(f"{path} holds no example inputs; save it with torch.export.save after export")
    args, kwargs = example
    if kwargs:
        raise InputError(f"{path} takes keyword inputs, which the command line cannot calibrate")
    return program.module(), tuple(args)


def _call_factory(spec: str) -> Any:
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InputError(f"cannot import {module_name!r} for {spec!r}: {error}") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise InputError(f"{spec!r}: {module_name} has no callable {attribute!r}")
    return factory()


def _pair(value: Any, where: str) -> tuple[torch.nn.Module, tuple[Any, ...]]:
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not isinstance(value[0], torch.nn.Module)
        or not isinstance(value[1], (tuple, list))
    ):
        raise InputError(f"{where} must give (model, example_inputs), got {type(value).__name__}")
    return value[0], tuple(value[1])


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``name=value`` pairs, values read as booleans, integers or floats where they look like one."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, separator, text = pair.partition("=")
        if not separator or not name:
            raise InputError(f"--option takes name=value, got {pair!r}")
        options[name.strip().replace("-", "_")] = _value(text.strip())
    return options


def _value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def calibration_batches(spec: str, example: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """``random:N`` batches like ``example``, or the batches saved in a file."""
    if spec.startswith("random:"):
        count_text = spec.partition(":")[2]
        if not count_text.isdigit() or int(count_text) < 1:
            raise InputError(f"--calibration random:N needs a positive count, got {spec!r}")
        generator = torch.Generator().manual_seed(0)
        return [tuple(_like(value, generator) for value in example) for _ in range(int(count_text))]
    try:
        loaded = torch.load(spec, weights_only=True)
    except FileNotFoundError as error:
        raise InputError(f"no such calibration file: {spec}") from error
    except Exception as error:
        raise InputError(
            f"cannot read calibration batches from {spec}: {type(error).__name__}: {error} "
            f"(expected a torch.save'd list of tuples of tensors)"
        ) from error
    if not isinstance(loaded, (list, tuple)) or not loaded:
        raise InputError(f"{spec} must hold a non-empty list of batches, got {type(loaded).__name__}")
    return [tuple(batch) if isinstance(batch, (list, tuple)) else (batch,) for batch in loaded]


def _like(value: Any, generator: torch.Generator) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_floating_point():
        return torch.randn(value.shape, generator=generator, dtype=value.dtype)
    if value.dtype == torch.bool:
        return torch.randint(0, 2, value.shape, generator=generator).bool()
    low, high = int(value.min()), int(value.max())
    return torch.randint(low, high + 1, value.shape, generator=generator, dtype=value.dtype)
