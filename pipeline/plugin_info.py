"""Who declared something: the plugin and the distribution it came from.

Every stage, condition and instrumentation the registry collects carries its
:class:`PluginInfo`, so that plans, errors and audit logs can say which
installed package is responsible.
"""

from __future__ import annotations

import functools
import importlib.metadata
import sys
from typing import Generic, TypeVar

import attrs

from pipeline.hookspecs import PROJECT

OWN_DISTRIBUTION = "pt2e-pipeline"

T = TypeVar("T")


@attrs.frozen
class PluginInfo:
    """A plugin's name (entry-point name, or module path for objects passed in) and origin."""

    name: str
    distribution: str | None = None
    version: str | None = None

    @property
    def builtin(self) -> bool:
        """Whether the plugin ships with pt2e-pipeline itself."""
        return self.distribution is not None and _normalized(self.distribution) == _normalized(
            OWN_DISTRIBUTION
        )

    def __str__(self) -> str:
        if self.distribution is None:
            return self.name
        version = f" {self.version}" if self.version else ""
        return f"{self.name} ({self.distribution}{version})"


@attrs.frozen
class Provided(Generic[T]):
    """An item a plugin declared through a hook, with the plugin that declared it."""

    item: T
    plugin: PluginInfo


def _normalized(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def matches(info: PluginInfo, names: frozenset[str]) -> bool:
    """Whether an allow/deny list entry names this plugin or its distribution."""
    wanted = {_normalized(name) for name in names}
    return _normalized(info.name) in wanted or (
        info.distribution is not None and _normalized(info.distribution) in wanted
    )


@functools.cache
def _distributions_by_package() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def info_for_object(plugin: object) -> PluginInfo:
    """The :class:`PluginInfo` of a plugin object passed in directly rather than discovered."""
    module_name = plugin.__name__ if isinstance(plugin, type(sys)) else type(plugin).__module__
    if isinstance(plugin, type(sys)):
        name = module_name
    elif isinstance(plugin, type):
        name = f"{plugin.__module__}.{plugin.__qualname__}"
        module_name = plugin.__module__
    else:
        name = f"{module_name}.{type(plugin).__qualname__}"
    top_level = module_name.split(".")[0]
    distribution = _distribution_of(top_level)
    if distribution is None:
        return PluginInfo(name=name)
    return PluginInfo(name=name, distribution=distribution.name, version=distribution.version)


def _distribution_of(top_level: str) -> importlib.metadata.Distribution | None:
    """The installed distribution that ships package ``top_level``, if exactly one does.

    Editable installs do not always list their packages, so the distributions
    registering an entry point in the plugin group under that package count too.
    """
    names = set(_distributions_by_package().get(top_level, []))
    if not names:
        for entry_point in importlib.metadata.entry_points(group=PROJECT):
            if entry_point.module.split(".")[0] == top_level and entry_point.dist is not None:
                names.add(entry_point.dist.name)
    if len(names) != 1:
        return None
    try:
        return importlib.metadata.distribution(names.pop())
    except importlib.metadata.PackageNotFoundError:
        return None
