"""attribute() and has_attribute() answer as getattr() and hasattr() do, for every kind of module attribute."""

from __future__ import annotations

import pytest
import torch

from pipeline.module_tree import attribute, has_attribute


class _Holder(torch.nn.Module):
    scale_of_class = 2.0

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))
        self.register_buffer("running", torch.zeros(2))
        self.register_buffer("empty", None)
        self.child = torch.nn.Linear(2, 2)
        self.note = "plain"
        self.nothing = None

    @property
    def doubled(self) -> torch.Tensor:
        return self.weight * 2


class _Dynamic(_Holder):
    """A module whose own ``__getattr__`` makes names up: only getattr knows them."""

    def __getattr__(self, name: str) -> object:
        if name.startswith("made_"):
            return name
        return super().__getattr__(name)


NAMES = [
    "weight",
    "running",
    "empty",
    "child",
    "note",
    "nothing",
    "scale_of_class",
    "doubled",
    "missing",
    "made_up",
]


@pytest.mark.parametrize("module", [_Holder(), _Dynamic()], ids=["plain", "own-getattr"])
@pytest.mark.parametrize("name", NAMES)
def test_attribute_agrees_with_getattr(module: torch.nn.Module, name: str) -> None:
    assert has_attribute(module, name) is hasattr(module, name)
    expected = getattr(module, name, "absent")
    found = attribute(module, name, "absent")
    if isinstance(expected, torch.Tensor):
        assert torch.equal(found, expected)
    else:
        assert found == expected
    if not hasattr(module, name):
        with pytest.raises(AttributeError):
            attribute(module, name)
