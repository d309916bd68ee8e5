"""Sparing the cyclic garbage collector the objects a run starts with."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_YOUNG_THRESHOLD = 1_000_000
_OLDER_THRESHOLD = 1000


@contextlib.contextmanager
def spared() -> Iterator[None]:
    """Keep the cyclic garbage collector off the objects that existed before the block.

    A large exported graph means hundreds of thousands of objects (nodes,
    metadata, fake tensors); every full collection would walk them all while
    a run allocates. Freezing them for the block (``gc.freeze``) leaves the
    collector to what the block itself allocates; they are handed back
    afterwards (``gc.unfreeze``), as they were. The block allocates in bursts
    of thousands of short-lived objects per rewritten node (snapshots and
    signatures live for a stage), so the youngest generation is collected
    every ``_YOUNG_THRESHOLD`` allocations rather than every 700: most of those
    objects are gone before a collection would walk them. The older
    generations are left for after the block: what survives a young
    collection is mostly the run's own graph and trail, which older
    collections would walk again and again to find nothing; cycles that die
    young are still collected. The thresholds are restored afterwards.
    """
    if not gc.isenabled():
        yield
        return
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(
        max(thresholds[0], _YOUNG_THRESHOLD),
        max(thresholds[1], _OLDER_THRESHOLD),
        max(thresholds[2], _OLDER_THRESHOLD),
    )
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
