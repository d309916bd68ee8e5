"""Sparing the cyclic garbage collector the objects a run keeps.

A large exported graph means hundreds of thousands of objects (nodes,
metadata, fake tensors), and a run adds as many again: its private graph,
the snapshots around each stage, the audit trail. Nearly all of them live
until the run ends, and nearly all of what dies is freed by reference
counting the moment it is dropped: a whole Llama convert leaves a few dozen
objects in reference cycles. Every collection that walks the live objects
is thus wasted work, and CPython walks the youngest generation every 700
new objects.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_YOUNG_THRESHOLD = 1_000_000
_OLDER_THRESHOLD = 1000
_depth = 0


@contextlib.contextmanager
def spared() -> Iterator[None]:
    """Keep the cyclic garbage collector off the objects the block keeps alive.

    On entry the objects that exist are frozen (``gc.freeze``), so that no
    collection walks them; during the block the youngest generation is
    collected every ``_YOUNG_THRESHOLD`` new objects rather than every 700,
    which still bounds the cycles a stage leaves (calibration runs the
    user's model over and over), and the older generations not at all; at
    every stage boundary :func:`settle` freezes what survived. On exit
    everything is handed back to the collector as its oldest generation
    (``gc.unfreeze``), without being walked, and the thresholds are restored.
    The cycles left among the run's objects are collected by the next full
    collection. Nested blocks (a stage running a pipeline of its own) leave
    all this to the outermost.
    """
    global _depth
    if not gc.isenabled() or _depth:
        yield
        return
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(
        max(thresholds[0], _YOUNG_THRESHOLD),
        max(thresholds[1], _OLDER_THRESHOLD),
        max(thresholds[2], _OLDER_THRESHOLD),
    )
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        gc.freeze()
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def settle() -> None:
    """Freeze what survived so far inside :func:`spared`: at a stage boundary that is the run's state."""
    if _depth:
        gc.freeze()
