"""The audit trail of a stage that mutates the graph with raw FX equals the true difference.

The mutating stage knows nothing of tracing. It records, itself and by node
identity, how the graph looked before and after its edits; the test derives
from those two records which nodes were added, removed, re-wired, renamed,
re-targeted, moved or had metadata changed, and requires the audit events to
say exactly that.
"""

from __future__ import annotations

import random
from typing import Any

import attrs
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.toyflow import TAG_FIELD, ToyPlugin

from pipeline import Pipeline, Stage
from pipeline.naming import target_name

OPERATIONS = (
    "insert",
    "copy",
    "reassign",
    "bypass",
    "meta",
    "meta-in-place",
    "rename",
    "retarget",
    "move",
    "transient",
    "rewrite",
)
WATCHED = ("stack_trace", "nn_module_stack", "quantization_tag")


class DeeperNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(6, 6) for _ in range(4))
        self.norm = torch.nn.LayerNorm(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x)) + x
        return self.norm(x).neg()


def exported_net() -> torch.fx.GraphModule:
    torch.manual_seed(1)
    return torch.export.export(DeeperNet().eval(), (torch.randn(3, 6),)).module()


def state(graph: torch.fx.Graph) -> list[dict[str, Any]]:
    return [
        {
            "node": node,
            "name": node.name,
            "op": node.op,
            "target": target_name(node.target),
            "args": node.args,
            "kwargs": dict(node.kwargs),
            "meta": {key: repr(node.meta.get(key)) for key in WATCHED},
        }
        for node in graph.nodes
    ]


def relu_pattern(x):
    return torch.ops.aten.relu.default(x)


def clamp_replacement(x):
    return torch.ops.aten.hardtanh.default(x, 0.0, 6.0)


@attrs.frozen
class RawMutator(Stage):
    """Edits the graph with raw FX calls chosen by the test, recording before and after itself."""

    name: str = "raw-mutate"
    operations: tuple[tuple[str, int], ...] = ()
    records: list = attrs.field(factory=list, eq=False)

    def run(self, ctx):
        graph = ctx.graph
        self.records.append(state(graph))
        for index, (operation, seed) in enumerate(self.operations):
            apply(operation, random.Random(seed), ctx.graph_module, index)
        self.records.append(state(graph))


def calls(graph, *, with_users=True):
    return [node for node in graph.nodes if node.op == "call_function" and (node.users or not with_users)]


def apply(operation: str, rng: random.Random, gm: torch.fx.GraphModule, index: int) -> None:
    graph = gm.graph
    candidates = calls(graph)
    if not candidates:
        return
    node = rng.choice(candidates)
    user = next(iter(node.users))
    if operation == "insert":
        with graph.inserting_after(node):
            neg = graph.call_function(torch.ops.aten.neg.default, (node,))
        user.replace_input_with(node, neg)
    elif operation == "copy":
        with graph.inserting_after(node):
            duplicate = graph.node_copy(node)
        user.replace_input_with(node, duplicate)
    elif operation == "reassign":
        earlier = [n for n in graph.nodes if n.op in ("placeholder", "call_function") and n is not node]
        earlier = earlier[: earlier.index(node)] if node in earlier else []
        earlier = [n for n in earlier if n.op != "call_function" or n in calls(graph, with_users=False)]
        if earlier and isinstance(node.args[0], torch.fx.Node):
            node.args = (rng.choice(earlier), *node.args[1:])
    elif operation == "bypass":
        source = node.args[0]
        if isinstance(source, torch.fx.Node) and node.target != torch.ops.aten.linear.default:
            node.replace_all_uses_with(source)
            graph.erase_node(node)
    elif operation == "meta":
        key = rng.choice(["stack_trace", "quantization_tag"])
        node.meta[key] = f"edited {index}"
    elif operation == "meta-in-place":
        stack = node.meta.get("nn_module_stack")
        if isinstance(stack, dict):
            stack[f"extra_{index}"] = ("somewhere", "Somewhere")
    elif operation == "rename":
        node._rename(f"renamed_{index}")
    elif operation == "retarget":
        if node.target == torch.ops.aten.relu.default:
            node.target = torch.ops.aten.sigmoid.default
        elif node.target == torch.ops.aten.neg.default:
            node.target = torch.ops.aten.abs.default
    elif operation == "move":
        attributes = [n for n in graph.nodes if n.op == "get_attr" and n.users]
        if attributes:
            attribute = rng.choice(attributes)
            first_user = min(attribute.users, key=lambda u: list(graph.nodes).index(u))
            first_user.prepend(attribute)
    elif operation == "transient":
        with graph.inserting_after(node):
            scratch = graph.call_function(torch.ops.aten.abs.default, (node,))
        graph.erase_node(scratch)
    elif operation == "rewrite":
        torch.fx.subgraph_rewriter.replace_pattern(gm, relu_pattern, clamp_replacement)


def true_difference(before: list[dict], after: list[dict]) -> dict[str, Any]:
    old = {entry["node"]: entry for entry in before}
    new = {entry["node"]: entry for entry in after}
    survivors = [node for node in new if node in old]

    def changed(key):
        return sorted(new[n]["name"] for n in survivors if old[n][key] != new[n][key])

    order = [list(old).index(n) for n in [e["node"] for e in after] if n in old]
    longest = [1] * len(order)
    for i in range(len(order)):
        for j in range(i):
            if order[j] < order[i]:
                longest[i] = max(longest[i], longest[j] + 1)
    return {
        "added": sorted(new[n]["name"] for n in new if n not in old),
        "removed": sorted(old[n]["name"] for n in old if n not in new),
        "rewired": sorted(
            new[n]["name"]
            for n in survivors
            if old[n]["args"] != new[n]["args"] or old[n]["kwargs"] != new[n]["kwargs"]
        ),
        "renamed": sorted(
            (old[n]["name"], new[n]["name"]) for n in survivors if old[n]["name"] != new[n]["name"]
        ),
        "retargeted": changed("target"),
        "meta": sorted(
            (new[n]["name"], key)
            for n in survivors
            for key in WATCHED
            if old[n]["meta"][key] != new[n]["meta"][key]
        ),
        "moved": len(order) - max(longest, default=0),
    }


def audited_difference(events: list[dict], before_names: set[str]) -> dict[str, Any]:
    by_kind: dict[str, list[dict]] = {}
    for event in events:
        by_kind.setdefault(event["event"], []).append(event)
    return {
        "added": sorted(e["node"] for e in by_kind.get("node.created", []) if not e.get("transient")),
        "removed": sorted(e["node"] for e in by_kind.get("node.erased", []) if e["node"] in before_names),
        "rewired": sorted(e["node"] for e in by_kind.get("node.rewired", [])),
        "renamed": sorted((e["before"], e["node"]) for e in by_kind.get("node.renamed", [])),
        "retargeted": sorted(e["node"] for e in by_kind.get("node.retargeted", [])),
        "meta": sorted((e["node"], e["key"]) for e in by_kind.get("node.meta_changed", [])),
        "moved": len(by_kind.get("node.moved", [])),
    }


def audit_of(operations):
    stage = RawMutator(operations=tuple(operations))
    plugin = ToyPlugin(stages=(stage,))
    result = Pipeline(plugins=[plugin], check="off").run(exported_net())
    before, after = stage.records
    events = [
        e for e in result.audit.events if e.get("stage") == "raw-mutate" and e["event"].startswith("node.")
    ]
    return result, before, after, events


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(OPERATIONS), st.integers(0, 2**16)), min_size=1, max_size=8))
def test_the_audit_of_raw_fx_edits_equals_the_true_difference(operations):
    result, before, after, events = audit_of(operations)
    expected = true_difference(before, after)
    assert audited_difference(events, {e["name"] for e in before}) == expected
    report = result.report["raw-mutate"]
    assert (report.added, report.removed, report.rewired) == (
        len(expected["added"]),
        len(expected["removed"]),
        len(expected["rewired"]),
    )


def test_every_kind_of_raw_edit_is_recorded_with_its_details():
    operations = [(name, seed) for seed, name in enumerate(OPERATIONS)]
    events = audit_of(operations)[3]
    kinds = {event["event"] for event in events}
    assert {
        "node.created",
        "node.erased",
        "node.replaced",
        "node.rewired",
        "node.renamed",
        "node.meta_changed",
        "node.moved",
    } <= kinds
    transient = [e for e in events if e.get("transient")]
    assert transient and transient[0]["target"] == "aten.abs.default"
    assert any(e["event"] == "node.erased" and e["node"] == transient[0]["node"] for e in events)


def test_a_swapped_graph_is_diffed_by_name():
    @attrs.frozen
    class Swapper(Stage):
        """Replaces the module's graph by a rebuilt copy with one node retargeted."""

        name: str = "swap"

        def run(self, ctx):
            rebuilt = torch.fx.Graph()
            values = {}
            for node in ctx.graph.nodes:
                if node.op == "output":
                    rebuilt.output(torch.fx.node.map_arg(node.args[0], values.get))
                    continue
                values[node] = rebuilt.node_copy(node, values.get)
                if node.target == torch.ops.aten.neg.default:
                    values[node].target = torch.ops.aten.abs.default
            ctx.graph_module.graph = rebuilt

    result = Pipeline(plugins=[ToyPlugin(stages=(Swapper(),))], check="off").run(exported_net())
    events = [e for e in result.audit.events if e.get("stage") == "swap" and e["event"].startswith("node.")]
    assert [(e["event"], e["node"], e["target_before"], e["target"]) for e in events] == [
        ("node.retargeted", "neg", "aten.neg.default", "aten.abs.default")
    ]


def test_created_nodes_carry_their_origin_and_a_plugin_meta_field():
    from support.toyflow import ToyCapture, ToyClamp, ToyTag

    torch.manual_seed(1)
    model = DeeperNet().eval()
    result = Pipeline(plugins=[ToyPlugin(stages=(ToyCapture(), ToyTag(), ToyClamp()))]).run(
        model, (torch.randn(3, 6),)
    )
    created = result.audit.select(stage="toy-clamp", action="created")
    assert len(created) == 4
    assert created[0]["sources"] == ["relu"] and created[0]["details"] == {"reason": "clamp"}
    assert created[0]["target"] == "aten.hardtanh.default"
    assert created[0]["args"] == ["%linear", 0.0, 6.0]
    assert created[0]["meta"]["quantization_tag"] == "toy"
    tags = result.audit.select(stage="toy-tag", action="meta_changed")
    assert {(e["key"], e["before"], e["after"]) for e in tags} == {("quantization_tag", None, "toy")}
    assert TAG_FIELD.key == "quantization_tag"
    assert result.audit.origin(created[0]["node"]).sources == ("relu",)


def test_one_replacement_of_a_node_with_several_users_is_one_event_naming_them_all():
    @attrs.frozen
    class Bypass(Stage):
        """Hands the uses of the first residual add to its input."""

        name: str = "bypass"

        def run(self, ctx):
            add = next(iter(ctx.graph.find_nodes(op="call_function", target=torch.ops.aten.add.Tensor)))
            assert len(add.users) == 2
            add.replace_all_uses_with(add.args[1])
            ctx.graph.erase_node(add)

    result = Pipeline(plugins=[ToyPlugin(stages=(Bypass(),))], check="off").run(exported_net())
    replaced = result.audit.select(stage="bypass", action="replaced")
    assert [(e["node"], e["by"], e["users"]) for e in replaced] == [("add", "x", ["add_1", "linear_1"])]
    erased = result.audit.select(stage="bypass", action="erased")
    assert erased[0]["replaced_by"] == "x"
