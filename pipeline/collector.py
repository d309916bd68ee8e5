"""Sparing the cyclic garbage collector the objects a run starts with."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def spared() -> Iterator[None]:
    """Keep the cyclic garbage collector off the objects that existed before the block.

    A large exported graph means hundreds of thousands of objects (nodes,
    metadata, fake tensors); every full collection would walk them all while
    a run allocates. Freezing them for the block (``gc.freeze``) leaves the
    collector to what the block itself allocates; they are handed back
    afterwards (``gc.unfreeze``), as they were.
    """
    if not gc.isenabled():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
