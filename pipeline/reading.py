"""Holding everything that only reads the graph to its promise, with one signature per stage boundary.

Between two stages only readers run: the conditions checked after one stage
and before the next, the next stages' ``skip_reason``, and the
instrumentations. A change made there would belong to no stage's audit, so
the engine proves that none happened. Signing the graph around each reader
would cost a walk over every node per condition; instead the readers are
noted as they run, and the graph is signed once, just before the next stage
(and at the end of the run), and compared with the signature the previous
stage left. A difference names every reader since, in the order they ran:
the one that wrote is among them, alone when it ran alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch.fx

from pipeline.errors import StageFailedError
from pipeline.signature import IdentitySignature


@attrs.frozen
class Reader:
    """Something that read the graph between two stages: ``who`` reads as English in an error."""

    who: str
    stage: str
    plugin: str


class ReadOnlyProof:
    """The graph's signature at the last point it was known, and the readers that ran since.

    ``writers`` names the instrumentations that do not promise to only read
    (``reads_only``): they are suspects at every boundary.
    """

    def __init__(self, writers: Sequence[str] = ()) -> None:
        self._writers = tuple(writers)
        self._graph_module: torch.fx.GraphModule | None = None
        self._signature: IdentitySignature | None = None
        self._readers: list[Reader] = []

    def signed(self, graph_module: torch.fx.GraphModule | None, signature: IdentitySignature) -> None:
        """The graph is known to be ``signature`` now (a stage just left it, or the run just began)."""
        self._graph_module = graph_module
        self._signature = signature
        self._readers = []

    def read_by(self, reader: Reader) -> None:
        """``reader`` read the graph, promising to change nothing."""
        self._readers.append(reader)

    def verify(self, graph_module: torch.fx.GraphModule | None, *, upcoming: Reader | None) -> None:
        """Raise :class:`~pipeline.errors.StageFailedError` if the graph changed since it was signed.

        Nothing is signed when nobody could have changed it. ``upcoming`` is
        the stage about to run (``None`` at the end of the run); it is blamed
        when no reader ran, only writers.
        """
        if self._signature is None or not (self._readers or self._writers):
            return
        unchanged = graph_module is self._graph_module and self._signature.holds_for(graph_module)
        readers, self._readers = self._readers, []
        if not unchanged:
            raise self._failure(readers, upcoming)

    def _failure(self, readers: Sequence[Reader], upcoming: Reader | None) -> StageFailedError:
        blamed = readers[-1] if readers else upcoming
        until = upcoming.who if upcoming is not None else "the end of the run"
        suspects = [reader.who for reader in readers] + [
            f"instrumentation {name} (not reads_only)" for name in self._writers
        ]
        if len(suspects) == 1 and readers:
            message = f"{suspects[0]} changed the graph, which it must only read"
        else:
            message = (
                f"the graph changed before {until}, outside any stage; one of these changed it: "
                f"{'; '.join(suspects)}. Conditions and skip_reason() must only read and "
                f"instrumentations only observe; the engine signs the graph once between two stages, "
                f"so it cannot say which one wrote"
            )
        return StageFailedError(
            message,
            stage=blamed.stage if blamed is not None else "",
            plugin=blamed.plugin if blamed is not None else "",
        )
