"""Gathering annotators from plugins, with one name per annotator across all of them.

Order never comes from here: the quantizer orders annotators by tier,
pattern size and name (see :mod:`plugins.quantizer.annotator`), so which
plugin loaded first cannot change a model's annotations.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline import PluginError, PluginInfo, Provided
from pipeline.plugin_info import OWN_DISTRIBUTION
from pipeline.registry import Registry
from plugins.quantizer.annotator import Annotator
from plugins.quantizer.builtin_annotators import BUILTIN_ANNOTATORS
from plugins.quantizer.hookspecs import ANNOTATORS_HOOK

_BUILTIN = PluginInfo(name="plugins.quantizer (built-in annotators)", distribution=OWN_DISTRIBUTION)


def collect_annotators(registry: Registry) -> tuple[Annotator, ...]:
    """Every annotator the registry's plugins declare, by name.

    A registry where no plugin defines the annotator hook has none (no plugin
    could implement it: the registry refuses implementations of unknown hooks).
    Two annotators with one name are an error naming both plugins.
    """
    return tuple(provided.item for provided in _unique(_declared(registry)))


def default_annotators(registry: Registry | None = None) -> tuple[Annotator, ...]:
    """The built-in annotators plus those of every plugin in ``registry`` (default: discovered).

    The built-in plugin declares the built-ins itself once registered; they
    are added here too so that a registry without it (a deny list, a pinned
    plugin set) still gets them, and they are not counted twice.
    """
    declared = _declared(Registry.discover() if registry is None else registry)
    builtins = [Provided(annotator, _BUILTIN) for annotator in BUILTIN_ANNOTATORS]
    builtin_items = {id(annotator) for annotator in BUILTIN_ANNOTATORS}
    others = [provided for provided in declared if id(provided.item) not in builtin_items]
    return tuple(provided.item for provided in _unique([*builtins, *others]))


def _declared(registry: Registry) -> tuple[Provided[Annotator], ...]:
    defined = any(
        hasattr(provided.item, ANNOTATORS_HOOK)
        for provided in registry.collect("pt2e_pipeline_hookspecs", object)
    )
    return registry.collect(ANNOTATORS_HOOK, Annotator) if defined else ()


def _unique(provided: Iterable[Provided[Annotator]]) -> list[Provided[Annotator]]:
    by_name: dict[str, Provided[Annotator]] = {}
    for candidate in provided:
        earlier = by_name.get(candidate.item.name)
        if earlier is not None:
            if earlier.plugin == candidate.plugin:
                raise PluginError(
                    f"plugin {candidate.plugin} declares the annotator {candidate.item.name!r} twice"
                )
            raise PluginError(
                f"annotator name {candidate.item.name!r} is declared by two plugins: "
                f"{earlier.plugin} and {candidate.plugin}; annotator names are unique across "
                f"plugins, so one of them must rename it (or deny one plugin)"
            )
        by_name[candidate.item.name] = candidate
    return [by_name[name] for name in sorted(by_name)]
