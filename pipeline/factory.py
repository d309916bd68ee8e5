"""Named factories that plugins offer: quantizers, and models to run the pipeline on.

The command line and embedding toolchains pick a quantizer or a model by name;
plugins declare what is on offer through the ``pt2e_pipeline_quantizers`` and
``pt2e_pipeline_models`` hooks, each entry a :class:`Factory`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from pipeline import validators


@attrs.frozen
class Factory:
    """Something built on demand by name.

    ``build(**options)`` makes it; ``options`` documents the keyword options
    ``build`` accepts (name to one-line meaning), which the command line lists
    and passes as ``--option name=value``.
    """

    name: str = attrs.field(validator=validators.identifier)
    build: Callable[..., Any] = attrs.field(validator=attrs.validators.is_callable())
    description: str = ""
    options: Mapping[str, str] = attrs.field(factory=dict, converter=dict)

    def __call__(self, **options: Any) -> Any:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise TypeError(
                f"{self.name} has no option {', '.join(map(repr, unknown))}; "
                f"its options: {', '.join(sorted(self.options)) or 'none'}"
            )
        return self.build(**options)
