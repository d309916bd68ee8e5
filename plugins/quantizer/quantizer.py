"""``SymmetricQuantizer``: the project's XNNPACK-style int8 quantizer, driven by an annotator registry.

It is a torchao ``Quantizer``, so it works in torchao's flow and in this
pipeline alike. What it quantizes is decided by three things:

* the **config** of each node's scope: a module-name override beats a
  module-type override, which beats the global config; within each kind
  the innermost enclosing module wins (``nn_module_stack``). A scope whose
  config is ``None`` stays float. Nodes without a module stack (weights,
  loop bodies) take the global config.
* the **annotators** serving that config's mode (``ptq``, ``qat``,
  ``dynamic``), in the order described in :mod:`plugins.quantizer.annotator`;
* the claim rule: a node is annotated once, by the first annotator that
  matches it, and a pattern never straddles two scopes.

``annotate`` handles the graph it is given; loop bodies (``scan``,
``while_loop``) are separate graph modules that the flow annotates one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.fx
from torchao.quantization.pt2e.quantizer import Quantizer

from plugins.quantizer.annotator import AnnotationContext, Annotator, Tier
from plugins.quantizer.config import SymmetricConfig
from plugins.quantizer.discovery import default_annotators
from plugins.quantizer.scalars import LIFTED_OPS, lift_scalar_operands
from plugins.quantizer.validation import validate_annotations

DEFAULT_CONFIG = SymmetricConfig()
"""Static PTQ, per-channel weights: XNNPACK's usual recipe."""

_SELF_PREFIX = "L['self']."


class SymmetricQuantizer(Quantizer):
    """Symmetric int8 quantization as XNNPACK runs it, extensible by plugin annotators.

    ``config`` is the global config (``None``: only overridden modules are
    quantized). ``annotators=None`` means the built-ins plus every annotator
    installed plugins declare, looked up when first needed; an explicit
    sequence means exactly those, which makes the quantizer independent of
    what is installed.
    """

    def __init__(
        self,
        config: SymmetricConfig | None = DEFAULT_CONFIG,
        annotators: Iterable[Annotator] | None = None,
    ) -> None:
        super().__init__()
        self._global: SymmetricConfig | None = None
        self._module_types: dict[type[torch.nn.Module], SymmetricConfig | None] = {}
        self._module_names: dict[str, SymmetricConfig | None] = {}
        self._annotators: tuple[Annotator, ...] | None = None
        if annotators is not None:
            self._annotators = _checked_annotators(annotators)
        self.set_global(config)

    def set_global(self, config: SymmetricConfig | None) -> SymmetricQuantizer:
        """Quantize every node outside the overridden modules with ``config`` (``None``: float)."""
        self._check_config(
            config, "the global config", [*self._module_types.values(), *self._module_names.values()]
        )
        self._global = config
        return self

    def set_module_type(
        self, module_type: type[torch.nn.Module], config: SymmetricConfig | None
    ) -> SymmetricQuantizer:
        """Quantize the nodes inside modules of ``module_type`` with ``config`` (``None``: float)."""
        if not isinstance(module_type, type):
            raise TypeError(
                f"set_module_type expects a module class such as torch.nn.Linear, got {module_type!r}"
            )
        others = {**self._module_types}
        others.pop(module_type, None)
        self._check_config(
            config,
            f"module type {module_type.__qualname__}",
            [self._global, *others.values(), *self._module_names.values()],
        )
        self._module_types[module_type] = config
        return self

    def set_module_name(self, module_name: str, config: SymmetricConfig | None) -> SymmetricQuantizer:
        """Quantize the nodes inside the submodule at ``module_name`` (dotted path) with ``config``."""
        if not isinstance(module_name, str) or not module_name:
            raise ValueError(
                f"set_module_name expects a submodule path such as 'blocks.0', got {module_name!r} "
                f"(use set_global for the whole model)"
            )
        others = {**self._module_names}
        others.pop(module_name, None)
        self._check_config(
            config, f"module {module_name!r}", [self._global, *self._module_types.values(), *others.values()]
        )
        self._module_names[module_name] = config
        return self

    @property
    def annotators(self) -> tuple[Annotator, ...]:
        """The annotators in use, in the order they are tried."""
        if self._annotators is None:
            self._annotators = _checked_annotators(default_annotators())
        return self._annotators

    @property
    def is_qat(self) -> bool:
        """Whether this quantizer prepares for QAT (fake-quant modules, conv-bn patterns)."""
        return any(config.qat for config in self._configs())

    def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        """Lift number operands of add/mul into constants, when an active annotator quantizes those ops.

        See :mod:`plugins.quantizer.scalars` for why.
        """
        modes = {config.mode for config in self._configs()}
        targets = frozenset(
            op
            for annotator in self.annotators
            if annotator.modes & modes
            for op in annotator.ops
            if op in LIFTED_OPS
        )
        if targets:
            lift_scalar_operands(model, targets)
        return model

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        """Write torchao annotations into ``model``'s nodes; see the module docs for the order."""
        scopes: dict[torch.fx.Node, SymmetricConfig | None] = {}

        def scope_of(node: torch.fx.Node) -> SymmetricConfig | None:
            if node not in scopes:
                scopes[node] = self._config_for(node)
            return scopes[node]

        operator = [annotator for annotator in self.annotators if annotator.tier is Tier.OPERATOR]
        for annotator in operator:
            for node in list(model.graph.nodes):
                if node.op == "call_function" and node.target in annotator.ops:
                    _try(annotator, node, model, scope_of)
        sharing: dict[object, list[Annotator]] = {}
        for annotator in self.annotators:
            if annotator.tier is Tier.SHARING:
                for op in annotator.ops:
                    sharing.setdefault(op, []).append(annotator)
        for node in list(model.graph.nodes):
            if node.op != "call_function" or not _hashable(node.target):
                continue
            for annotator in sharing.get(node.target, ()):
                if _try(annotator, node, model, scope_of):
                    break
        return model

    def validate(self, model: torch.fx.GraphModule) -> None:
        """Raise ``AnnotationError`` naming the node whose annotation prepare could not honour."""
        validate_annotations(model)

    def _configs(self) -> list[SymmetricConfig]:
        candidates = [self._global, *self._module_types.values(), *self._module_names.values()]
        return [config for config in candidates if config is not None]

    @staticmethod
    def _check_config(config: object, scope: str, others: Iterable[SymmetricConfig | None]) -> None:
        if config is None:
            return
        if not isinstance(config, SymmetricConfig):
            raise TypeError(f"{scope} must be a SymmetricConfig or None, got {config!r}")
        if any(other is not None and other.qat != config.qat for other in others):
            raise ValueError(
                f"{scope} has qat={config.qat} but other scopes have qat={not config.qat}; a model is "
                f"prepared either for QAT or for PTQ, so all configs must agree on qat"
            )

    def _config_for(self, node: torch.fx.Node) -> SymmetricConfig | None:
        frames = list((node.meta.get("nn_module_stack") or {}).values())[::-1]
        for path, _ in frames:
            name = path[len(_SELF_PREFIX) :] if path.startswith(_SELF_PREFIX) else path
            if name in self._module_names:
                return self._module_names[name]
        type_names = {_qualified(module_type): config for module_type, config in self._module_types.items()}
        for _, module_type in frames:
            name = _qualified(module_type) if isinstance(module_type, type) else str(module_type)
            if name in type_names:
                return type_names[name]
        return self._global


def _try(
    annotator: Annotator,
    node: torch.fx.Node,
    model: torch.fx.GraphModule,
    scope_of: Callable[[torch.fx.Node], SymmetricConfig | None],
) -> bool:
    config = scope_of(node)
    if config is None or config.mode not in annotator.modes:
        return False
    return bool(annotator.function(node, AnnotationContext(model, config, scope_of)))


def _checked_annotators(annotators: Iterable[Annotator]) -> tuple[Annotator, ...]:
    checked = tuple(annotators)
    names: set[str] = set()
    for annotator in checked:
        if not isinstance(annotator, Annotator):
            raise TypeError(f"annotators must be Annotator instances, got {annotator!r}")
        if annotator.name in names:
            raise ValueError(f"two annotators are named {annotator.name!r}; annotator names must be unique")
        names.add(annotator.name)
    return tuple(sorted(checked, key=lambda annotator: annotator.sort_key))


def _qualified(module_type: type) -> str:
    return f"{module_type.__module__}.{module_type.__qualname__}"


def _hashable(target: object) -> bool:
    try:
        hash(target)
    except TypeError:
        return False
    return True
