"""The hook implementations that register the quantizer's hook and built-in annotators.

``plugins/builtin.py`` imports both functions, so the built-in annotators
reach the engine through the same hook a third-party plugin implements.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline import hookimpl
from plugins.quantizer import hookspecs
from plugins.quantizer.annotator import Annotator
from plugins.quantizer.builtin_annotators import BUILTIN_ANNOTATORS


@hookimpl
def pt2e_pipeline_hookspecs() -> Sequence[object]:
    """Defines ``pt2e_pipeline_annotators``."""
    return [hookspecs]


@hookimpl
def pt2e_pipeline_annotators() -> Sequence[Annotator]:
    """The built-in annotators."""
    return list(BUILTIN_ANNOTATORS)
