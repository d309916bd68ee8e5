"""The hook through which plugins add op annotators to the symmetric quantizer.

The built-in plugin hands this module to the engine from
``pt2e_pipeline_hookspecs``; from then on any plugin may implement
``pt2e_pipeline_annotators``, and :func:`plugins.quantizer.collect_annotators`
gathers every answer, collect-all like the engine's own hooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pipeline import hookspec

if TYPE_CHECKING:
    from plugins.quantizer.annotator import Annotator

ANNOTATORS_HOOK = "pt2e_pipeline_annotators"


@hookspec
def pt2e_pipeline_annotators() -> Sequence[Annotator]:
    """Op annotators this plugin adds. Annotator names are unique across all plugins.

    ``SymmetricQuantizer`` built without an explicit annotator list uses the
    built-ins plus every annotator installed plugins return here; an
    annotator runs only for configs whose mode is in its ``modes``, in the
    order its ``tier``, ``pattern_size`` and ``name`` give (see
    :mod:`plugins.quantizer.annotator`).
    """
    raise NotImplementedError
