"""What the engine's services cost on a 1,000-node graph: audit trail and checks on and off.

Three stages of ordinary rewriting run over an exported MLP: one inserts a node
after every linear, one retargets every relu, one takes the inserted nodes out
again. The same run is timed with the trail in memory, to a file, and off, and
with checks strict and off; each configuration is the best of several rounds.

    python benchmarks/engine_overhead.py [--layers 120] [--rounds 5]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import torch

from pipeline import Condition, Context, Pipeline, Stage, Violation, condition, hookimpl


class Tower(torch.nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(torch.nn.Linear(16, 16) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x)) + x
        return x


def linears(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    return list(graph.find_nodes(op="call_function", target=torch.ops.aten.linear.default))


@condition("graph", "a graph exists")
def has_graph(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    return [] if graph_module is not None else [Violation("no graph")]


@condition("marked", "every linear feeds a clone")
def marked(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    assert graph_module is not None
    return [
        Violation("no clone", node=node)
        for node in linears(graph_module.graph)
        if not any(user.target == torch.ops.aten.clone.default for user in node.users)
    ]


@condition("unmarked", "no clone remains")
def unmarked(graph_module: torch.fx.GraphModule | None) -> list[Violation]:
    assert graph_module is not None
    clones = graph_module.graph.find_nodes(op="call_function", target=torch.ops.aten.clone.default)
    return [Violation("clone remains", node=node) for node in clones]


@attrs.frozen
class Mark(Stage):
    """Puts a clone after every linear."""

    name: str = "mark"
    requires: tuple[str, ...] = ("graph",)
    ensures: tuple[str, ...] = ("marked",)

    def run(self, ctx: Context) -> None:
        graph = ctx.graph
        for node in linears(graph):
            with graph.inserting_after(node), ctx.origin(node):
                clone = graph.call_function(torch.ops.aten.clone.default, (node,))
            node.replace_all_uses_with(clone, delete_user_cb=lambda user, c=clone: user is not c)


@attrs.frozen
class Retarget(Stage):
    """Turns every relu into a hardtanh-free relu6 by retargeting in place."""

    name: str = "retarget"
    requires: tuple[str, ...] = ("marked",)

    def run(self, ctx: Context) -> None:
        for node in ctx.graph.find_nodes(op="call_function", target=torch.ops.aten.relu.default):
            node.target = torch.ops.aten.relu6.default


@attrs.frozen
class Unmark(Stage):
    """Takes the clones out again."""

    name: str = "unmark"
    requires: tuple[str, ...] = ("marked",)
    after: tuple[str, ...] = ("retarget",)
    ensures: tuple[str, ...] = ("unmarked",)

    def run(self, ctx: Context) -> None:
        graph = ctx.graph
        for node in list(graph.find_nodes(op="call_function", target=torch.ops.aten.clone.default)):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)


class Bench:
    @hookimpl
    def pt2e_pipeline_stages(self) -> Sequence[Stage]:
        return [Mark(), Retarget(), Unmark()]

    @hookimpl
    def pt2e_pipeline_conditions(self) -> Sequence[Condition]:
        return [has_graph, marked, unmarked]


def best_of(rounds: int, run) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    graph_module = torch.export.export(Tower(args.layers).eval(), (torch.randn(4, 16),)).module()
    nodes = len(graph_module.graph.nodes)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "audit.jsonl"
        configurations = {
            "trail off, checks off": dict(audit=False, check="off"),
            "trail off, checks strict": dict(audit=False, check="strict"),
            "trail in memory, checks strict": dict(audit=None, check="strict"),
            "trail to file, checks strict": dict(audit=path, check="strict"),
        }
        timings = {}
        for label, options in configurations.items():
            pipeline = Pipeline(plugins=[Bench()], assumes=("graph",), **options)
            timings[label] = best_of(args.rounds, functools.partial(pipeline.run, graph_module))
        events = sum(1 for _ in path.open()) // args.rounds
    baseline = timings["trail off, checks off"]
    print(f"graph: {nodes} nodes; 3 stages rewriting {nodes // 4} nodes each; best of {args.rounds}")
    print(f"{'configuration':<34}{'seconds':>10}{'x bare':>9}{'us/node':>10}")
    for label, seconds in timings.items():
        print(f"{label:<34}{seconds:>10.4f}{seconds / baseline:>9.2f}{seconds / nodes * 1e6:>10.1f}")
    print(f"audit events per run: {events}")


if __name__ == "__main__":
    main()
