"""The registry: which plugins take part, and everything they declare.

Plugins are found in the ``pt2e_pipeline`` entry-point group (the built-ins
too), or given explicitly, in which case nothing else is loaded (hermetic
mode). An allow list and a deny list filter discovered plugins by plugin or
distribution name before anything is imported, so a broken plugin can be
switched off. Every declaration is kept with the plugin that made it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import pluggy

from pipeline import hookspecs
from pipeline.audit.fields import MetaField, NodeDescriber
from pipeline.condition import Condition
from pipeline.errors import PluginError
from pipeline.factory import Factory
from pipeline.instrumentation import Instrumentation
from pipeline.plugin_info import PluginInfo, Provided, info_for_object, matches
from pipeline.stage import Stage

T = TypeVar("T")


class Registry:
    """The loaded plugins and their declarations, each tagged with its :class:`PluginInfo`."""

    def __init__(self, plugins: Sequence[tuple[object, PluginInfo]]) -> None:
        self._manager = pluggy.PluginManager(hookspecs.PROJECT)
        self._manager.add_hookspecs(hookspecs)
        self.plugins: tuple[PluginInfo, ...] = tuple(info for _, info in plugins)
        self._infos: dict[str, PluginInfo] = {}
        for plugin, info in plugins:
            try:
                self._manager.register(plugin, name=info.name)
            except ValueError as error:
                raise PluginError(f"plugin {info} could not be registered: {error}") from error
            self._infos[info.name] = info
        for provided in self._collect("pt2e_pipeline_hookspecs", object):
            self._manager.add_hookspecs(provided.item)  # type: ignore[arg-type]
        try:
            self._manager.check_pending()
        except pluggy.PluginValidationError as error:
            name = self._manager.get_name(error.plugin)
            culprit = self._infos.get(name or "", error.plugin)
            raise PluginError(
                f"plugin {culprit} implements a hook the pipeline does not define "
                f"(a misspelt hook name?): {error}"
            ) from error
        self.stages = self._collect("pt2e_pipeline_stages", Stage)
        self.conditions = self._collect("pt2e_pipeline_conditions", Condition)
        self.quantizers = self._collect("pt2e_pipeline_quantizers", Factory)
        self.models = self._collect("pt2e_pipeline_models", Factory)
        self.instrumentations = self._collect("pt2e_pipeline_instrumentations", Instrumentation)
        self.meta_fields = self._collect("pt2e_pipeline_meta_fields", MetaField)
        self.describers = self._collect("pt2e_pipeline_node_describers", NodeDescriber)

    @classmethod
    def hermetic(cls, plugins: Iterable[object]) -> Registry:
        """Exactly ``plugins`` (modules or objects with hook implementations), nothing discovered."""
        return cls([(plugin, info_for_object(plugin)) for plugin in plugins])

    @classmethod
    def discover(
        cls,
        *,
        allow: Iterable[str] | None = None,
        deny: Iterable[str] = (),
        extra: Iterable[object] = (),
    ) -> Registry:
        """The plugins of the entry-point group, filtered, plus ``extra`` objects."""
        allowed = None if allow is None else frozenset(allow)
        denied = frozenset(deny)
        loaded: list[tuple[object, PluginInfo]] = []
        found = [(entry_point, _info(entry_point)) for entry_point in _entry_points()]
        unknown = sorted(
            name for name in allowed or () if not any(matches(info, frozenset({name})) for _, info in found)
        )
        if unknown:
            installed = ", ".join(sorted(str(info) for _, info in found)) or "none"
            raise PluginError(
                f"allow names no installed plugin or distribution: {', '.join(map(repr, unknown))}; "
                f"installed: {installed}"
            )
        for entry_point, info in found:
            if allowed is not None and not matches(info, allowed):
                continue
            if matches(info, denied):
                continue
            try:
                plugin = entry_point.load()
            except Exception as error:
                raise PluginError(
                    f"plugin {info.name!r} from distribution {info.distribution or '(unknown)'} "
                    f"{info.version or ''} failed to import ({entry_point.value}): "
                    f"{type(error).__name__}: {error}. Deny it with deny=[{info.name!r}] or "
                    f"--plugins=-{info.name} to run without it."
                ) from error
            loaded.append((plugin, info))
        loaded.extend((plugin, info_for_object(plugin)) for plugin in extra)
        return cls(loaded)

    def factory(self, kind: str, name: str) -> Provided[Factory]:
        """The quantizer or model factory called ``name``; an error lists what there is."""
        offered = {"quantizer": self.quantizers, "model": self.models}[kind]
        matching = [provided for provided in offered if provided.item.name == name]
        if len(matching) > 1:
            raise PluginError(
                f"{kind} {name!r} is offered by more than one plugin: "
                + "; ".join(str(provided.plugin) for provided in matching)
            )
        if not matching:
            names = ", ".join(sorted(provided.item.name for provided in offered)) or "none"
            raise PluginError(f"no {kind} named {name!r}; installed: {names}")
        return matching[0]

    def collect(self, hook_name: str, kind: type[T]) -> tuple[Provided[T], ...]:
        """Every item of type ``kind`` that any plugin returns from ``hook_name``, with its plugin.

        ``hook_name`` may be a hook that a plugin defined through
        ``pt2e_pipeline_hookspecs``; an unknown hook is an error.
        """
        if not hasattr(self._manager.hook, hook_name):
            raise PluginError(f"no plugin defines the hook {hook_name!r}")
        return self._collect(hook_name, kind)

    def _collect(self, hook_name: str, kind: type[T]) -> tuple[Provided[T], ...]:
        collected: list[Provided[T]] = []
        caller = getattr(self._manager.hook, hook_name)
        implementations = sorted(caller.get_hookimpls(), key=lambda impl: impl.plugin_name)
        for implementation in implementations:
            info = self._infos[implementation.plugin_name]
            if implementation.hookwrapper or implementation.wrapper:
                raise PluginError(
                    f"plugin {info} implements {hook_name} as a wrapper; declaration hooks are "
                    f"collect-all and take plain implementations"
                )
            function: Callable[[], Any] = implementation.function
            try:
                declared = function()
            except Exception as error:
                raise PluginError(
                    f"plugin {info} raised in {hook_name}: {type(error).__name__}: {error}"
                ) from error
            if declared is None:
                continue
            if isinstance(declared, (str, bytes)) or not isinstance(declared, Iterable):
                raise PluginError(
                    f"plugin {info} returned {declared!r} from {hook_name}; expected a list of "
                    f"{kind.__name__}"
                )
            for item in declared:
                if not isinstance(item, kind):
                    raise PluginError(
                        f"plugin {info} returned {item!r} from {hook_name}; expected "
                        f"{kind.__name__} instances"
                    )
                collected.append(Provided(item, info))
        return tuple(collected)


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    found = importlib.metadata.entry_points(group=hookspecs.PROJECT)
    unique = {(ep.dist.name if ep.dist else "", ep.name, ep.value): ep for ep in found}
    return [unique[key] for key in sorted(unique)]


def _info(entry_point: Any) -> PluginInfo:
    distribution = entry_point.dist
    return PluginInfo(
        name=entry_point.name,
        distribution=distribution.name if distribution is not None else None,
        version=distribution.version if distribution is not None else None,
    )
