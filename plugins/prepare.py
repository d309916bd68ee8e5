"""The prepare stage: observers on every annotated edge and output.

For each graph quantization visits, the annotations are grouped into sharing
groups (see :mod:`plugins.sharing`), each group gets one observer, and the
observers are inserted node by node in graph order: a node's input edges in
argument order, then its output. An input observer goes right after the value
it observes; an output observer right after its node, and every user of the
node then reads the observer. An edge whose producer's output observer is the
same instance needs nothing more. This is torchao 0.18's placement, so
calibration sees the same tensors and computes the same qparams.

Observers are named ``activation_post_process_<i>`` with ``i`` counted up from
the first free number, so names match torchao's while insertion stays
constant-time (torchao probes every name from 0 on each insertion).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import torch
import torch.fx
from torch._subclasses import FakeTensor
from torchao.quantization.pt2e.graph_utils import collect_producer_nodes
from torchao.quantization.pt2e.quantizer import QuantizationSpecBase

from pipeline import Context, Stage, StageError, Violation, condition
from plugins import observers, sharing
from plugins.annotation import annotation_of
from plugins.node_insertion import insert_node
from plugins.observer_copies import ObserverMaker
from plugins.subgraphs import quantizable_graph_modules

OBSERVER_PREFIX = "activation_post_process_"
OBSERVED_KEY = "pt2e_pipeline_observes"
"""Observer node metadata: the annotated edges and outputs the observer stands for, by name."""


class AttributeNamer:
    """Hands out ``<prefix><i>`` attribute names not yet used on a module, in increasing order."""

    def __init__(self, module: torch.nn.Module, prefix: str) -> None:
        self._module = module
        self._prefix = prefix
        taken = [
            name[len(prefix) :]
            for name in (*vars(module), *module._modules, *module._parameters, *module._buffers)
            if name.startswith(prefix)
        ]
        self._next = 0
        self._skip = {int(suffix) for suffix in taken if suffix.isdigit()}

    def __call__(self) -> str:
        while self._next in self._skip or hasattr(self._module, f"{self._prefix}{self._next}"):
            self._next += 1
        name = f"{self._prefix}{self._next}"
        self._next += 1
        return name


@attrs.frozen
class Prepare(Stage):
    """Inserts an observer on every annotated edge and output, shared as the annotations say.

    With ``is_qat``, fake-quantize modules where the specs ask for them, and on
    the top-level graph only (torchao's ``prepare_qat_pt2e`` leaves loop bodies alone).
    """

    name: str = "prepare"
    requires: tuple[str, ...] = ("annotated",)
    ensures: tuple[str, ...] = ("observed",)
    required: bool = True

    def run(self, ctx: Context) -> None:
        quantizer = ctx.inputs.get("quantizer")
        is_qat = bool(ctx.inputs.get("is_qat", False))
        callback = getattr(quantizer, "prepare_obs_or_fq_callback", None)
        assert ctx.graph_module is not None
        graphs = [("", ctx.graph_module)] if is_qat else quantizable_graph_modules(ctx.graph_module)
        for _, module in graphs:
            _prepare_graph(ctx, module, is_qat=is_qat, callback=callback)


def _prepare_graph(ctx: Context, module: torch.fx.GraphModule, *, is_qat: bool, callback: Any) -> int:
    specs = sharing.specs_of(module.graph)
    if not specs:
        return 0
    instances = _observers_for(specs, is_qat=is_qat)
    if callback is not None:
        callback(module, instances)
    inserter = _Inserter(ctx, module, instances)
    for node in list(module.graph.nodes):
        if annotation_of(node) is not None:
            inserter.observe(node)
    return inserter.count


def _observers_for(
    specs: dict[sharing.EdgeOrNode, QuantizationSpecBase | None], *, is_qat: bool
) -> dict[sharing.EdgeOrNode, torch.nn.Module | None]:
    """One observer per group, built from the group's deciding spec; derived groups after their sources."""
    groups = sharing.group(specs)
    maker = ObserverMaker()
    by_group: dict[int, torch.nn.Module | None] = {}
    instances: dict[sharing.EdgeOrNode, torch.nn.Module | None] = {}
    pending = list(groups.members)
    while pending:
        waiting = []
        for number in pending:
            member, spec = groups.deciding_spec(number, specs)
            sources = list(sharing.derived_sources(spec))
            missing = [source for source in sources if source not in specs]
            if missing:
                raise StageError(
                    f"the DerivedQuantizationSpec of {sharing.describe(member)} derives from "
                    f"{', '.join(sharing.describe(m) for m in missing)}, which no annotation quantizes",
                    node=sharing.owner(member),
                )
            if any(groups.group_of[source] not in by_group for source in sources):
                waiting.append(number)
                continue
            built = {key: by_group[groups.group_of[key]] for key in sources}
            by_group[number] = observers.build(spec, built, is_qat=is_qat, maker=maker)
            for key in groups.members[number]:
                instances[key] = by_group[number]
        if len(waiting) == len(pending):
            stuck = ", ".join(sharing.describe(groups.members[n][0]) for n in waiting)
            raise StageError(
                f"derived quantization specs depend on each other in a cycle: {stuck}",
                node=sharing.owner(groups.members[waiting[0]][0]),
            )
        pending = waiting
    return {key: instances[key] for key in specs}


class _Inserter:
    """Inserts observer nodes into one graph module."""

    def __init__(
        self,
        ctx: Context,
        module: torch.fx.GraphModule,
        instances: dict[sharing.EdgeOrNode, torch.nn.Module | None],
    ) -> None:
        self.ctx = ctx
        self.module = module
        self.graph = module.graph
        self.instances = instances
        self.count = 0
        self.device = _unique_device(module)
        self.buffer_names = {name for name, _ in module.named_buffers(remove_duplicate=False)}
        self.observer_of: dict[torch.fx.Node, torch.nn.Module] = {}
        self.name = AttributeNamer(module, OBSERVER_PREFIX)

    def observe(self, node: torch.fx.Node) -> None:
        _refuse_node_kwargs(node)
        node.args = tuple(self._argument(node, argument) for argument in node.args)
        value = node.meta.get("val")
        if node not in self.instances:
            return
        if not isinstance(value, FakeTensor):
            if self.instances[node] is not None:
                self.ctx.note(
                    "output not observed: the node has no single tensor value (as torchao)",
                    node=node,
                )
            return
        instance = self.instances[node]
        if instance is None:
            return
        observer = self._insert(node, instance, [f"output of {node.name}"], source=node)
        if "from_node" in node.meta:
            observer.meta["from_node"] = node.meta["from_node"]
        for user in list(node.users):
            if user is not observer:
                user.replace_input_with(node, observer)

    def _argument(self, node: torch.fx.Node, argument: Any) -> Any:
        if isinstance(argument, (list, tuple)):
            return type(argument)(self._argument(node, inner) for inner in argument)
        if not isinstance(argument, torch.fx.Node):
            return argument
        original = argument
        while original in self.observer_of:
            original = original.args[0]  # type: ignore[assignment]
        edge = (original, node)
        instance = self.instances.get(edge)
        if instance is None or self._is_mutated_buffer(node, original):
            return argument
        if self.instances.get(original) is instance:
            return argument
        for user in argument.users:
            if self.observer_of.get(user) is instance:
                return user
        return self._insert(
            argument, instance, [f"{original.name} -> {node.name}"], source=original, consumer=node
        )

    def _insert(
        self,
        after: torch.fx.Node,
        instance: torch.nn.Module,
        observes: list[str],
        *,
        source: torch.fx.Node,
        consumer: torch.fx.Node | None = None,
    ) -> torch.fx.Node:
        if self.device is not None:
            instance.to(self.device)
        name = self.name()
        setattr(self.module, name, instance)
        sources = (source,) if consumer is None else (source, consumer)
        with (
            self.graph.inserting_after(after),
            self.ctx.origin(*sources, observes=observes, **observers.summary(instance)),
        ):
            observer = insert_node(self.graph, "call_module", name, (after,))
        observer.meta[OBSERVED_KEY] = observes
        self.observer_of[observer] = instance
        self.count += 1
        return observer

    def _is_mutated_buffer(self, node: torch.fx.Node, argument: torch.fx.Node) -> bool:
        """An in-place op's destination that is a module buffer keeps its float value (as torchao)."""
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None or not node.args or node.args[0] is not argument:
            return False
        first = schema.arguments[0] if schema.arguments else None
        if first is None or first.alias_info is None or not first.alias_info.is_write:
            return False
        producers = collect_producer_nodes(argument)
        if producers is None:
            return False
        return any(p.op == "get_attr" and str(p.target) in self.buffer_names for p in producers)


def _refuse_node_kwargs(node: torch.fx.Node) -> None:
    def nodes_in(value: Any) -> Iterator[torch.fx.Node]:
        if isinstance(value, torch.fx.Node):
            yield value
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from nodes_in(item)
        elif isinstance(value, dict):
            for item in value.values():
                yield from nodes_in(item)

    for name, value in node.kwargs.items():
        for found in nodes_in(value):
            raise StageError(
                f"keyword argument {name!r} holds the tensor {found.name}; quantization annotates "
                f"positional tensor arguments only, so this input would silently stay float",
                node=node,
            )


def _unique_device(module: torch.nn.Module) -> torch.device | None:
    devices = {p.device for p in module.parameters()} | {b.device for b in module.buffers()}
    if len(devices) > 1:
        raise StageError(
            f"the model's parameters and buffers are on several devices ({sorted(map(str, devices))}); "
            f"observers need one device"
        )
    return next(iter(devices), None)


def observer_nodes(graph_module: torch.fx.GraphModule) -> Iterator[tuple[str, torch.fx.Node]]:
    """Every observer ``call_module`` node in the graphs quantization visits."""
    for path, module in quantizable_graph_modules(graph_module):
        for node in module.graph.find_nodes(op="call_module"):
            if observers.is_observer(module.get_submodule(str(node.target))):
                yield path, node


@condition("observed", "every annotated edge and output with a spec is read through an observer")
def observed(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    if graph_module is None:
        return [Violation("there is no graph")]
    found: list[Violation] = []
    for path, module in quantizable_graph_modules(graph_module):
        modules = dict(module.named_modules(remove_duplicate=False))

        def is_observer_node(value: object, modules: dict[str, torch.nn.Module] = modules) -> bool:
            return (
                isinstance(value, torch.fx.Node)
                and value.op == "call_module"
                and observers.is_observer(modules.get(str(value.target)))
            )

        for node in module.graph.nodes:
            annotation = annotation_of(node)
            if annotation is None:
                continue
            inputs = node.all_input_nodes
            for producer, spec in annotation.input_qspec_map.items():
                if spec is None or not isinstance(producer.meta.get("val"), FakeTensor):
                    continue
                if producer in inputs and node.args and node.args[0] is producer and _writes_first(node):
                    continue
                if not any(is_observer_node(i) and _observes(i, producer) for i in inputs):
                    found.append(
                        Violation(
                            f"input {producer.name} is annotated but not observed", node=node, graph=path
                        )
                    )
    return found


def _writes_first(node: torch.fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    first = schema.arguments[0] if schema is not None and schema.arguments else None
    return first is not None and first.alias_info is not None and bool(first.alias_info.is_write)


def _observes(observer: torch.fx.Node, producer: torch.fx.Node) -> bool:
    value: Any = observer
    while isinstance(value, torch.fx.Node) and value.op == "call_module":
        value = value.args[0]
    return value is producer
