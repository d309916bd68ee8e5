"""Makes the shared test helpers (``support``, ``zoo``) importable from every test directory.

Every graph the suite compiles through :mod:`pipeline.codegen` is also written
by FX, and the two must agree to the character: the suite is the generator's
differential test.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="session")
def _codegen_writes_what_fx_writes():
    from support.codegen_check import compared_with_fx

    with compared_with_fx():
        yield
