"""The audit stream: sinks, library hygiene, the reader, and the event vocabulary."""

from __future__ import annotations

import json
import logging

import attrs
import pytest
import structlog
import torch
from support.toyflow import ToyCapture, ToyClamp, ToyPlugin, ToyTag, exported, small_net

from pipeline import (
    AuditLog,
    AuditLogError,
    AuditSink,
    JsonLinesSink,
    MemorySink,
    NodeDescriber,
    Pipeline,
    Stage,
    hookimpl,
)
from pipeline.audit import events as vocabulary


def run_toy(audit, **options):
    model, inputs = small_net()
    return Pipeline(plugins=[ToyPlugin()], audit=audit, **options).run(model, inputs)


def test_every_event_carries_schema_run_and_sequence():
    result = run_toy(None)
    events = result.audit.events
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {e["run"] for e in events} == {result.report.run_id}
    assert all(e["schema"] == vocabulary.SCHEMA_VERSION for e in events)
    assert all(e["event"] in vocabulary.VOCABULARY for e in events)
    assert list(events[0])[:5] == ["schema", "run", "seq", "event", "time"]


def test_the_header_holds_the_plan_plugins_and_versions():
    header = run_toy(None).audit.header()
    assert [row["stage"] for row in header["plan"]] == ["toy-capture", "toy-tag", "toy-clamp"]
    assert header["plan"][1]["why"] == [
        "after 'toy-capture': 'toy-tag' requires 'captured', which 'toy-capture' ensures"
    ]
    assert header["packages"]["torch"].startswith("2.13")
    assert header["packages"]["torchao"].startswith("0.18")
    assert header["plugins"] == [{"name": "support.toyflow.ToyPlugin", "distribution": None, "version": None}]


def test_stage_events_carry_time_node_counts_and_hashes():
    result = run_toy(None)
    finished = {e["stage"]: e for e in result.audit.select(action="stage.finished")}
    capture, clamp = finished["toy-capture"], finished["toy-clamp"]
    assert capture["nodes_before"] == 0 and capture["nodes_after"] > 0 and capture["hash_before"] is None
    assert clamp["seconds"] >= 0 and clamp["hash_before"] != clamp["hash_after"]
    assert clamp["nodes_before"] == clamp["nodes_after"]
    baseline = result.audit.select(action="graph.baseline")
    assert baseline[0]["stage"] == "toy-capture"
    assert ["relu", "call_function", "aten.relu.default"] in baseline[0]["graphs"][""]


def test_a_json_lines_file_round_trips_through_the_reader(tmp_path):
    path = tmp_path / "trail" / "audit.jsonl"
    result = run_toy(path)
    assert result.audit is None and result.report.audit == str(path)
    lines = path.read_text().splitlines()
    assert all(json.loads(line)["run"] == result.report.run_id for line in lines)
    log = AuditLog.load(path)
    assert log.runs() == [result.report.run_id]
    assert log.origin("hardtanh_default").stage == "toy-clamp"


def test_a_caller_list_receives_the_events():
    collected: list = []
    run_toy(collected)
    assert collected[0]["event"] == "run.started" and collected[-1]["event"] == "run.finished"


def test_a_stdlib_logger_receives_json_lines(caplog):
    logger = logging.getLogger("toolchain.audit")
    with caplog.at_level(logging.INFO, logger="toolchain.audit"):
        run_toy(logger)
    decoded = [
        json.loads(record.getMessage()) for record in caplog.records if record.name == "toolchain.audit"
    ]
    assert decoded[0]["event"] == "run.started" and decoded[-1]["status"] == "ok"


def test_a_structlog_logger_of_the_caller_receives_event_and_fields():
    capturing = structlog.testing.CapturingLogger()
    run_toy(capturing)
    assert capturing.calls[0].method_name == "info"
    assert capturing.calls[0].args == ("run.started",)
    assert capturing.calls[-1].kwargs["status"] == "ok"


def test_the_audit_can_be_turned_off():
    result = run_toy(False)
    assert result.audit is None and result.report.audit is None
    assert result.report.ran_names() == ["toy-capture", "toy-tag", "toy-clamp"]


def test_the_library_leaves_global_logging_and_structlog_configuration_alone(tmp_path, caplog):
    structlog.reset_defaults()
    config_before = structlog.get_config()
    root = logging.getLogger()
    root_state = (root.level, list(root.handlers), logging.getLogger("pipeline").handlers[:])
    run_toy(tmp_path / "a.jsonl")
    run_toy(None, check="warn")
    run_toy(structlog.testing.CapturingLogger())
    assert structlog.get_config() == config_before
    assert not structlog.is_configured()
    assert (
        root.level,
        list(root.handlers),
        logging.getLogger("pipeline").handlers[:],
    ) == root_state


def test_history_follows_a_node_through_renames_and_rewiring():
    @attrs.frozen
    class Renamer(Stage):
        """Renames relu."""

        name: str = "rename"
        requires: tuple[str, ...] = ("captured",)
        before: tuple[str, ...] = ("toy-tag",)

        def run(self, ctx):
            next(iter(ctx.graph.find_nodes(op="call_function", target=torch.ops.aten.relu.default)))._rename(
                "activation"
            )

    model, inputs = small_net()
    result = Pipeline(plugins=[ToyPlugin(stages=(ToyCapture(), Renamer(), ToyTag(), ToyClamp()))]).run(
        model, inputs
    )
    history = result.audit.history("activation")
    assert [e["event"] for e in history] == [
        "graph.baseline",
        "node.renamed",
        "node.meta_changed",
        "node.replaced",
        "node.erased",
    ]
    assert history[1]["before"] == "relu"
    origin = result.audit.origin("hardtanh_default")
    assert (origin.stage, origin.sources) == ("toy-clamp", ("activation",))
    lineage = result.audit.lineage("hardtanh_default")
    assert [str(o) for o in lineage] == [
        "hardtanh_default: created by stage 'toy-clamp' (support.toyflow.ToyPlugin) from activation",
        "activation: captured by stage 'toy-capture'",
    ]


def test_history_spans_a_prepare_run_and_its_convert_run(tmp_path):
    path = tmp_path / "audit.jsonl"
    model, inputs = small_net()
    pipeline = Pipeline(plugins=[ToyPlugin()], audit=path)
    prepared = pipeline.prepare(model, inputs)
    pipeline.convert(prepared.graph_module)
    log = AuditLog.load(path)
    assert len(log.runs()) == 2
    events = [e["event"] for e in log.history("relu")]
    assert events == ["graph.baseline", "node.meta_changed", "node.replaced", "node.erased"]
    assert {e["run"] for e in log.history("relu")} == set(log.runs())


def test_a_name_reused_after_erasure_starts_a_new_incarnation():
    log = AuditLog(
        [
            {"event": "run.started", "run": "r", "parent_runs": []},
            {
                "event": "graph.baseline",
                "run": "r",
                "stage": None,
                "graphs": {"": [["a", "placeholder", "a"]]},
            },
            {"event": "node.erased", "run": "r", "stage": "s1", "graph": "", "node": "a"},
            {
                "event": "node.created",
                "run": "r",
                "stage": "s2",
                "graph": "",
                "node": "a",
                "sources": ["b"],
            },
        ]
    )
    assert [e["event"] for e in log.history("a")] == ["node.created"]
    assert log.origin("a").stage == "s2"


def test_the_summary_has_one_row_per_stage():
    result = run_toy(None, skip=["toy-clamp"], check="off")
    rows = result.audit.summary()
    assert [(r["stage"], r["status"]) for r in rows] == [
        ("toy-capture", "ran"),
        ("toy-tag", "ran"),
        ("toy-clamp", "skipped"),
    ]
    assert rows[1]["events"] == {"meta_changed": 5}


def test_a_corrupt_log_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"schema": 1, "event": "run.started", "run": "x"}\n{not json\n')
    with pytest.raises(AuditLogError, match=r"bad.jsonl:2: not a JSON object"):
        AuditLog.load(path)
    path.write_text('{"schema": 99, "event": "run.started", "run": "x"}\n')
    with pytest.raises(AuditLogError, match="schema 99; this reader understands schema 1"):
        AuditLog.load(path)
    with pytest.raises(AuditLogError, match="cannot read audit log"):
        AuditLog.load(tmp_path / "missing.jsonl")
    path.write_text(
        '{"schema": 1, "event": "run.started", "run": "x"}\n{"schema": 1, "event": "node.created"}\n'
    )
    with pytest.raises(AuditLogError, match=r"bad.jsonl: malformed audit events \(KeyError: 'graph'\)"):
        AuditLog.load(path)


def test_describers_add_details_to_node_events():
    class Describes:
        @hookimpl
        def pt2e_pipeline_node_describers(self):
            return [
                NodeDescriber(
                    [torch.ops.aten.hardtanh.default],
                    lambda node: {"low": node.args[1], "high": node.args[2]},
                )
            ]

    model, inputs = small_net()
    result = Pipeline(plugins=[ToyPlugin(), Describes()]).run(model, inputs)
    created = result.audit.select(stage="toy-clamp", action="created")
    assert created[0]["details"] == {"reason": "clamp", "low": 0.0, "high": 6.0}


def test_stage_notes_reach_the_trail():
    @attrs.frozen
    class Explains(Stage):
        """Leaves a note."""

        name: str = "explain"

        def run(self, ctx):
            ctx.note("kept the relu", node=next(iter(ctx.graph.nodes)), why="it is the output")
            return False

    result = Pipeline(plugins=[ToyPlugin(stages=(Explains(),))]).run(exported(*small_net()))
    notes = result.audit.select(action="stage.note")
    assert notes[0]["message"] == "kept the relu" and notes[0]["details"] == {"why": "it is the output"}


def test_a_memory_sink_object_can_be_shared_across_runs():
    sink = MemorySink()
    model, inputs = small_net()
    pipeline = Pipeline(plugins=[ToyPlugin()], audit=sink)
    pipeline.run(model, inputs)
    pipeline.run(model, inputs)
    assert len([e for e in sink.events if e["event"] == "run.started"]) == 2


def test_a_json_lines_sink_refuses_a_bad_mode(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'a' or 'w'"):
        JsonLinesSink(tmp_path / "x", mode="r")


def test_the_event_vocabulary_is_closed():
    from pipeline.audit.trail import AuditTrail

    trail = AuditTrail(MemorySink(), "r")
    with pytest.raises(ValueError, match="'node.teleported' is not an audit event"):
        trail.emit("node.teleported")


def test_a_memory_trail_holds_exactly_what_a_file_trail_reads_back(tmp_path):
    path = tmp_path / "audit.jsonl"
    memory = run_toy(None).audit.events
    run_toy(path)
    from_file = AuditLog.load(path).events

    def comparable(events):
        return [{k: v for k, v in e.items() if k not in ("run", "time", "seconds")} for e in events]

    assert comparable(memory) == comparable(from_file)
    assert all(type(e) is dict for e in memory)


class _RenderedSink(AuditSink):
    """A third-party sink whose renderer returns what ``render`` makes of the event dict."""

    def __init__(self, render):
        self.render = render
        self.calls = []

    def renderer(self):
        return lambda logger, method, event: self.render(event)

    def info(self, *args, **kwargs):
        self.calls.append((args, kwargs))


@pytest.mark.parametrize(
    ("render", "delivered"),
    [
        (lambda event: event["event"], lambda event: ((event["event"],), {})),
        (lambda event: event["event"].encode(), lambda event: ((event["event"].encode(),), {})),
        (lambda event: bytearray(b"x"), lambda event: ((bytearray(b"x"),), {})),
        (
            lambda event: ((event["seq"],), {"name": event["event"]}),
            lambda event: ((event["seq"],), {"name": event["event"]}),
        ),
        (lambda event: {"name": event["event"]}, lambda event: ((), {"name": event["event"]})),
    ],
    ids=["str", "bytes", "bytearray", "args-kwargs", "dict"],
)
def test_a_sink_receives_what_its_renderer_returns_as_structlog_hands_it_on(render, delivered):
    sink = _RenderedSink(render)
    events = run_toy(MemorySink()).audit.events
    run_toy(sink)
    assert len(sink.calls) == len(events)
    assert sink.calls == [delivered(event) for event in _same_seq(events)]


def _same_seq(events):
    """The reference run's events as the custom sink's run saw them (only their name and seq are used)."""
    return [{"event": event["event"], "seq": event["seq"]} for event in events]


def test_a_renderer_returning_something_else_is_an_error_naming_what_it_returned():
    from pipeline.audit.trail import AuditTrail

    trail = AuditTrail(_RenderedSink(lambda event: 42), "r")
    with pytest.raises(ValueError, match="must return a str, bytes, bytearray, tuple or dict, got int"):
        trail.emit("stage.note", message="x")
