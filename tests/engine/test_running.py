"""Running a plan: phases, check modes, skip, bisect, stop-after, and the caller's model left alone."""

from __future__ import annotations

import copy
import inspect
import types
import warnings

import attrs
import pytest
import torch
from support.toyflow import ToyCapture, ToyClamp, ToyPlugin, ToyTag, exported, small_net

from pipeline import (
    AuditLog,
    CheckWarning,
    ConditionViolationError,
    Instrumentation,
    OptionsError,
    Pipeline,
    PipelineError,
    Stage,
    StageError,
    StageFailedError,
    condition,
)
from pipeline.audit.fields import ENGINE_META_FIELDS
from pipeline.snapshot import GraphSnapshot


@attrs.frozen
class ForgetsToTag(Stage):
    """Claims to tag every call but tags none."""

    name: str = "toy-tag"
    requires: tuple[str, ...] = ("captured",)
    ensures: tuple[str, ...] = ("tagged",)
    invalidates: tuple[str, ...] = ("unannotated",)

    def run(self, ctx):
        return None


def toy(*stages, **options):
    return Pipeline(plugins=[ToyPlugin(stages=stages or (ToyCapture(), ToyTag(), ToyClamp()))], **options)


def caller_state(graph_module):
    snapshot = GraphSnapshot.take(graph_module, ENGINE_META_FIELDS)
    tensors = {
        name: (tensor, tensor.clone()) for name, tensor in graph_module.state_dict(keep_vars=True).items()
    }
    return snapshot, tensors, graph_module.code


def assert_untouched(graph_module, state):
    snapshot, tensors, code = state
    assert snapshot.same_as(GraphSnapshot.take(graph_module, ENGINE_META_FIELDS))
    assert graph_module.code == code
    for name, (tensor, values) in tensors.items():
        current = graph_module.state_dict(keep_vars=True)[name]
        assert current is tensor
        assert torch.equal(current, values)


def test_a_whole_run_goes_through_every_phase_on_an_nn_module():
    model, inputs = small_net()
    (x,) = inputs
    expected = model.second(torch.nn.functional.hardtanh(model.first(x), 0.0, 6.0)) + x
    result = toy().run(model, inputs)
    assert result.report.ran_names() == ["toy-capture", "toy-tag", "toy-clamp"]
    ops = [n.target for n in result.graph_module.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.hardtanh.default in ops and torch.ops.aten.relu.default not in ops
    assert torch.equal(result.graph_module(*inputs), expected)


def test_phases_run_separately_and_the_second_continues_the_first():
    model, inputs = small_net()
    pipeline = toy()
    prepared = pipeline.prepare(model, inputs)
    assert prepared.report.ran_names() == ["toy-capture", "toy-tag"]
    converted = pipeline.convert(prepared.graph_module)
    assert converted.report.ran_names() == ["toy-clamp"]
    runs = converted.graph_module.meta["pt2e_pipeline_runs"]
    assert runs == [prepared.report.run_id, converted.report.run_id]
    assert converted.audit.header()["parent_runs"] == [prepared.report.run_id]


def test_an_unknown_phase_is_refused():
    model, inputs = small_net()
    with pytest.raises(OptionsError, match="unknown phase"):
        toy().run(model, inputs, phases=("train",))


def test_strict_mode_names_stage_condition_node_and_the_users_source_line():
    model, inputs = small_net()
    with pytest.raises(ConditionViolationError) as caught:
        toy(ToyCapture(), ForgetsToTag(), ToyClamp()).run(model, inputs)
    error = caught.value
    message = str(error)
    assert error.stage == "toy-tag" and error.condition == "tagged"
    assert message.startswith(
        "stage 'toy-tag' (plugin support.toyflow.ToyPlugin) ensures 'tagged', which does not hold after it ran:"
    )
    assert "relu (call_function aten.relu.default)" in message
    assert "has no tag" in message
    source_file = inspect.getsourcefile(type(model))
    forward_line = inspect.getsourcelines(type(model).forward)[1]
    assert f'File "{source_file}", line {forward_line + 1}, in forward' in message
    assert "hidden = torch.relu(self.first(x))" in message


def test_warn_mode_warns_records_and_goes_on():
    model, inputs = small_net()
    with pytest.warns(CheckWarning, match="ensures 'tagged'") as caught:
        result = toy(ToyCapture(), ForgetsToTag(), ToyClamp(), check="warn").run(model, inputs)
    assert result.report.ran_names() == ["toy-capture", "toy-tag", "toy-clamp"]
    assert any("requires 'tagged', which does not hold before it runs" in str(w.message) for w in caught)
    violations = result.audit.select(action="check.violated")
    assert {(v["stage"], v["condition"], v["kind"]) for v in violations} == {
        ("toy-tag", "tagged", "ensures"),
        ("toy-clamp", "tagged", "requires"),
    }
    assert all(v["mode"] == "warn" for v in violations)
    assert len(result.report.warnings) == 2


def test_off_mode_checks_nothing():
    model, inputs = small_net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = toy(ToyCapture(), ForgetsToTag(), ToyClamp(), check="off").run(model, inputs)
    assert result.audit.select(action="check.violated") == []


def test_requirements_are_checked_before_the_stage_runs():
    model, inputs = small_net()
    graph_module = exported(model, inputs)
    ran = []

    @attrs.frozen
    class Clamp(ToyClamp):
        def run(self, ctx):
            ran.append(True)
            return super().run(ctx)

    with pytest.raises(
        ConditionViolationError, match="requires 'tagged', which does not hold before it runs"
    ):
        Pipeline(plugins=[ToyPlugin(stages=(Clamp(phase="prepare"),))], assumes=("tagged",)).run(graph_module)
    assert ran == []


def test_a_failed_requirement_names_the_stage_that_was_skipped():
    model, inputs = small_net()
    with pytest.raises(
        ConditionViolationError,
        match=r"note: 'tagged' is ensured by 'toy-tag' was skipped \(skip\)",
    ):
        toy(skip=["toy-tag"]).run(model, inputs)


def test_bisect_runs_only_the_first_n_optional_stages():
    model, inputs = small_net()
    result = toy(check="off").run(model, inputs, bisect=1)
    assert result.report.ran_names() == ["toy-capture", "toy-tag"]
    assert result.report["toy-clamp"].status == "skipped"
    assert result.report["toy-clamp"].reason == "bisect limit 1"
    skipped = result.audit.select(action="stage.skipped")
    assert [(e["stage"], e["reason"]) for e in skipped] == [("toy-clamp", "bisect limit 1")]


def test_bisect_never_skips_a_required_stage():
    model, inputs = small_net()
    result = toy(check="off").run(model, inputs, bisect=0)
    assert result.report.ran_names() == ["toy-capture"]
    assert toy().plan["toy-capture"].bisect_number is None


def test_stop_after_ends_the_run_after_the_named_stage():
    model, inputs = small_net()
    result = toy().run(model, inputs, stop_after="toy-tag")
    assert result.report.ran_names() == ["toy-capture", "toy-tag"]
    assert result.report["toy-clamp"].reason == "stopped after 'toy-tag'"


def test_options_naming_missing_or_required_stages_are_refused():
    with pytest.raises(OptionsError, match="no stage named 'nope'"):
        toy(skip=["nope"])
    with pytest.raises(OptionsError, match="no stage named 'nope'"):
        toy(stop_after="nope")
    with pytest.raises(OptionsError, match="'toy-capture' .* is required and cannot be skipped"):
        toy(skip=["toy-capture"])
    with pytest.raises(ValueError, match="bisect must be a count"):
        toy(bisect=-1)
    with pytest.raises(ValueError, match="'check' must be in"):
        toy(check="loud")


def test_the_callers_graph_module_is_untouched_by_a_successful_run():
    model, inputs = small_net()
    graph_module = exported(model, inputs)
    state = caller_state(graph_module)
    result = Pipeline(
        plugins=[ToyPlugin(stages=(ToyTag(), ToyClamp(phase="prepare")))], assumes=("captured",)
    ).run(graph_module)
    assert_untouched(graph_module, state)
    assert result.graph_module is not graph_module
    assert result.graph_module.graph is not graph_module.graph
    assert result.graph_module.first.weight is graph_module.first.weight


def test_the_callers_graph_module_is_untouched_when_a_stage_fails():
    model, inputs = small_net()
    graph_module = exported(model, inputs)
    state = caller_state(graph_module)

    @attrs.frozen
    class HalfDone(Stage):
        """Rewires, erases, then raises."""

        name: str = "half-done"

        def run(self, ctx):
            relu = next(iter(ctx.graph.find_nodes(op="call_function", target=torch.ops.aten.relu.default)))
            producer = relu.args[0]
            relu.replace_all_uses_with(producer)
            ctx.graph.erase_node(relu)
            raise StageError("cannot go on", node=producer)

    events = []
    with pytest.raises(StageFailedError) as caught:
        Pipeline(plugins=[ToyPlugin(stages=(HalfDone(),))], audit=events).run(graph_module)
    assert_untouched(graph_module, state)
    message = str(caught.value)
    assert message.startswith(
        "stage 'half-done' (plugin support.toyflow.ToyPlugin) failed at linear (call_function aten.linear.default)"
    )
    assert "hidden = torch.relu(self.first(x))" in message
    assert "cannot go on" in message
    names = [e["event"] for e in events]
    assert names[-3:] == ["node.rewired", "stage.failed", "run.finished"] or names[-2:] == [
        "stage.failed",
        "run.finished",
    ]
    assert {"node.erased", "node.replaced", "stage.failed", "run.finished"} <= set(names)
    failed = next(e for e in events if e["event"] == "stage.failed")
    assert failed["error"]["type"] == "StageError" and failed["error"]["node"] == "linear"
    assert events[-1]["status"] == "failed"


def test_an_in_place_write_to_a_callers_weight_fails_the_stage():
    model, inputs = small_net()
    graph_module = exported(model, inputs)

    @attrs.frozen
    class ScalesInPlace(Stage):
        """Writes into a weight it does not own."""

        name: str = "scale-in-place"

        def run(self, ctx):
            ctx.graph_module.first.weight.data.mul_(
                2
            ) if False else ctx.graph_module.first.weight.detach().mul_(2)

    with pytest.raises(
        StageFailedError,
        match=r"stage 'scale-in-place' .* wrote in place into the caller's tensor\(s\) first.weight",
    ):
        Pipeline(plugins=[ToyPlugin(stages=(ScalesInPlace(),))]).run(graph_module)


def test_a_stage_that_makes_a_new_tensor_leaves_the_caller_alone():
    model, inputs = small_net()
    graph_module = exported(model, inputs)
    state = caller_state(graph_module)

    @attrs.frozen
    class Doubles(Stage):
        """Doubles a weight the right way: a new tensor on the private module."""

        name: str = "double"

        def run(self, ctx):
            ctx.graph_module.first.weight = torch.nn.Parameter(ctx.graph_module.first.weight * 2)

    result = Pipeline(plugins=[ToyPlugin(stages=(Doubles(),))]).run(graph_module)
    assert_untouched(graph_module, state)
    assert torch.equal(result.graph_module.first.weight, graph_module.first.weight * 2)
    assert result.graph_module.second.weight is graph_module.second.weight


def test_metadata_containers_are_private_one_level_down():
    model, inputs = small_net()
    graph_module = exported(model, inputs)
    for node in graph_module.graph.nodes:
        node.meta["quantization_tag"] = ["shared"]

    @attrs.frozen
    class Appends(Stage):
        """Mutates a list it shares with the caller, one level down."""

        name: str = "append-tag"

        def run(self, ctx):
            for node in ctx.graph.nodes:
                node.meta["nn_module_stack"] = node.meta.get("nn_module_stack")
                tag = node.meta["quantization_tag"]
                tag.append("mine")

    # one level of containers is copied, so appending to the list is private
    Pipeline(plugins=[ToyPlugin(stages=(Appends(),))]).run(graph_module)
    assert all(node.meta["quantization_tag"] == ["shared"] for node in graph_module.graph.nodes)


def test_a_stage_that_says_it_changed_nothing_but_did_is_caught():
    model, inputs = small_net()

    @attrs.frozen
    class Liar(Stage):
        """Renames a node and claims no change."""

        name: str = "liar"
        requires: tuple[str, ...] = ("captured",)

        def run(self, ctx):
            next(iter(ctx.graph.nodes)).meta["stack_trace"] = "moved"
            return False

    with pytest.raises(
        StageFailedError,
        match=r"stage 'liar' .* returned False \(no change\) but changed the graph",
    ):
        toy(ToyCapture(), Liar()).run(model, inputs)


def test_an_honest_no_change_passes_and_is_recorded():
    model, inputs = small_net()

    @attrs.frozen
    class Looks(Stage):
        """Reads only."""

        name: str = "look"
        requires: tuple[str, ...] = ("captured",)

        def run(self, ctx):
            assert len(ctx.graph.nodes) > 0
            return False

    result = toy(ToyCapture(), Looks()).run(model, inputs)
    finished = [e for e in result.audit.select(action="stage.finished") if e["stage"] == "look"]
    assert finished[0]["changed"] is False and finished[0]["declared_change"] is False
    assert finished[0]["hash_before"] == finished[0]["hash_after"]


def test_a_dangling_node_breaks_an_invariant():
    model, inputs = small_net()

    @attrs.frozen
    class Litters(Stage):
        """Adds a node nobody uses."""

        name: str = "litter"
        requires: tuple[str, ...] = ("captured",)

        def run(self, ctx):
            x = next(iter(ctx.graph.find_nodes(op="placeholder")))
            with ctx.graph.inserting_after(x):
                ctx.graph.call_function(torch.ops.aten.neg.default, (x,))

    with pytest.raises(
        ConditionViolationError,
        match=r"broke the invariant 'no-dangling-nodes':\n  neg_default \(call_function aten.neg.default\)\n    has no users",
    ):
        toy(ToyCapture(), Litters()).run(model, inputs)


def test_a_graph_that_fails_lint_breaks_an_invariant():
    model, inputs = small_net()

    @attrs.frozen
    class Reorders(Stage):
        """Moves a node before its input."""

        name: str = "reorder"
        requires: tuple[str, ...] = ("captured",)

        def run(self, ctx):
            relu = next(iter(ctx.graph.find_nodes(op="call_function", target=torch.ops.aten.relu.default)))
            first = next(iter(ctx.graph.find_nodes(op="placeholder")))
            first.prepend(relu)

    with pytest.raises(StageFailedError, match="graph-lint|does not compile"):
        toy(ToyCapture(), Reorders()).run(model, inputs)


def test_a_condition_that_changes_the_graph_is_an_error():

    @condition("tagged", "sneaky: tags while checking")
    def sneaky(graph_module):
        for node in graph_module.graph.nodes:
            node.meta["quantization_tag"] = "sneaky"
        return []

    plugin = ToyPlugin(
        stages=(ToyCapture(), ForgetsToTag()),
        conditions=(*[c for c in ToyPlugin().conditions if c.name != "tagged"], sneaky),
    )
    with pytest.raises(
        StageFailedError,
        match="the check of condition 'tagged' .* after stage 'toy-tag' changed the graph, which it must only read",
    ):
        Pipeline(plugins=[plugin]).run(*small_net())


def test_a_condition_returning_something_else_than_violations_is_an_error():
    @condition("tagged")
    def sloppy(graph_module):
        return ["not a violation"]

    plugin = ToyPlugin(
        stages=(ToyCapture(), ToyTag()),
        conditions=(*[c for c in ToyPlugin().conditions if c.name != "tagged"], sloppy),
    )
    with pytest.raises(StageFailedError, match="must return Violation objects"):
        Pipeline(plugins=[plugin]).run(*small_net())


def test_a_stage_that_raises_is_reported_with_its_plugin_and_exception():
    @attrs.frozen
    class Crashes(Stage):
        """Divides by zero."""

        name: str = "crash"

        def run(self, ctx):
            return 1 / 0

    with pytest.raises(
        StageFailedError,
        match=r"stage 'crash' \(plugin support.toyflow.ToyPlugin\) raised ZeroDivisionError: division by zero",
    ) as caught:
        Pipeline(plugins=[ToyPlugin(stages=(Crashes(),))]).run(*small_net())
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def test_a_file_audit_trail_is_flushed_when_a_stage_fails(tmp_path):
    @attrs.frozen
    class Crashes(Stage):
        """Erases the output's input then fails."""

        name: str = "crash"

        def run(self, ctx):
            raise RuntimeError("boom")

    path = tmp_path / "audit.jsonl"
    with pytest.raises(StageFailedError):
        Pipeline(plugins=[ToyPlugin(stages=(ToyCapture(), Crashes()))], audit=path).run(*small_net())
    log = AuditLog.load(path)
    assert [e["event"] for e in log.events][-2:] == ["stage.failed", "run.finished"]
    assert log.events[-2]["error"] == {
        "type": "RuntimeError",
        "message": "stage 'crash' (plugin support.toyflow.ToyPlugin) raised RuntimeError: boom",
        "node": None,
    }


def test_stage_options_are_validated_when_the_stage_is_built():
    with pytest.raises(TypeError, match="'tag' must be <class 'str'>"):
        ToyTag(tag=3)
    with pytest.raises(
        TypeError,
        match=r"ToyTag.requires must be a sequence of names, not the string 'captured'; did you mean \('captured',\)\?",
    ):
        ToyTag(requires="captured")
    with pytest.raises(ValueError, match=r"ToyTag.name must be a lower-case name"):
        ToyTag(name="Toy Tag")
    with pytest.raises(ValueError, match="a stage cannot break what it promises"):
        ToyTag(ensures=("x",), invalidates=("x",))
    with pytest.raises(ValueError, match=r"ToyTag.after names the stage itself"):
        ToyTag(after=("toy-tag",))
    assert ToyTag(tag="x").options() == {"tag": "x"}


def test_the_private_copy_shares_tensors_and_owns_its_graph():
    from pipeline.copying import private_copy

    model, inputs = small_net()
    graph_module = exported(model, inputs)
    duplicate = private_copy(graph_module)
    assert duplicate.first.weight is graph_module.first.weight
    assert type(duplicate) is not torch.fx.GraphModule
    assert all(a is not b for a, b in zip(duplicate.graph.nodes, graph_module.graph.nodes, strict=True))
    assert all(
        (a.meta is not b.meta and a.meta.get("nn_module_stack") is not b.meta.get("nn_module_stack"))
        or "nn_module_stack" not in a.meta
        for a, b in zip(duplicate.graph.nodes, graph_module.graph.nodes, strict=True)
    )
    assert torch.equal(duplicate(*inputs), graph_module(*inputs))
    assert copy.deepcopy(duplicate)(*inputs).shape == (2, 8)


def test_the_private_copy_names_new_nodes_as_a_deepcopy_would():
    from pipeline.copying import private_copy

    model, inputs = small_net()
    graph_module = exported(model, inputs)
    graph = graph_module.graph
    last = next(node for node in reversed(graph.nodes) if node.op == "call_function")
    with graph.inserting_after(last):
        graph.create_node("call_function", torch.ops.aten.relu.default, (last,), name="relu_7")
    with graph.inserting_after(last):
        graph.create_node("call_function", torch.ops.aten.relu.default, (last,), name="input")
    duplicate, reference = private_copy(graph_module).graph, copy.deepcopy(graph_module).graph
    assert [node.name for node in duplicate.nodes] == [node.name for node in reference.nodes]
    assert duplicate._graph_namespace._used_names == reference._graph_namespace._used_names
    assert duplicate._graph_namespace._base_count == reference._graph_namespace._base_count
    for candidate in ("relu", "relu_7", "linear", "input", "x"):
        made = [
            g.create_node("call_function", torch.ops.aten.relu.default, (), name=candidate).name
            for g in (duplicate, reference)
        ]
        assert made[0] == made[1], candidate


class Recorder(Instrumentation):
    """Records its callbacks into a shared list, under its own label."""

    def __init__(self, label, calls, fail_in=None):
        self.label, self.calls, self.fail_in = label, calls, fail_in

    def run_started(self, run):
        self.calls.append((self.label, "run_started"))

    def before_stage(self, step):
        self.calls.append((self.label, "before", step.stage.name))
        if self.fail_in == ("before", step.stage.name):
            raise RuntimeError("instrumentation refuses")

    def after_stage(self, step):
        self.calls.append((self.label, "after", step.stage.name))

    def stage_failed(self, step, error):
        self.calls.append((self.label, "failed", step.stage.name, type(error).__name__))

    def stage_skipped(self, step, reason):
        self.calls.append((self.label, "skipped", step.stage.name))

    def run_finished(self, run, error):
        self.calls.append((self.label, "run_finished", error is None))


def test_instrumentations_nest_like_a_stack():
    calls = []
    model, inputs = small_net()
    toy(skip=["toy-clamp"], instrumentations=[Recorder("a", calls), Recorder("b", calls)]).run(model, inputs)
    assert calls == [
        ("a", "run_started"),
        ("b", "run_started"),
        ("a", "before", "toy-capture"),
        ("b", "before", "toy-capture"),
        ("b", "after", "toy-capture"),
        ("a", "after", "toy-capture"),
        ("a", "before", "toy-tag"),
        ("b", "before", "toy-tag"),
        ("b", "after", "toy-tag"),
        ("a", "after", "toy-tag"),
        ("a", "skipped", "toy-clamp"),
        ("b", "skipped", "toy-clamp"),
        ("b", "run_finished", True),
        ("a", "run_finished", True),
    ]


def test_a_failure_reaches_only_the_instrumentations_that_were_entered():
    calls = []
    model, inputs = small_net()
    pipeline = toy(
        instrumentations=[
            Recorder("a", calls),
            Recorder("b", calls, fail_in=("before", "toy-tag")),
            Recorder("c", calls),
        ]
    )
    with pytest.raises(
        StageFailedError, match="stage 'toy-tag' .* raised RuntimeError: instrumentation refuses"
    ):
        pipeline.run(model, inputs)
    tail = calls[calls.index(("a", "before", "toy-tag")) :]
    assert tail == [
        ("a", "before", "toy-tag"),
        ("b", "before", "toy-tag"),
        ("a", "failed", "toy-tag", "StageFailedError"),
        ("c", "run_finished", False),
        ("b", "run_finished", False),
        ("a", "run_finished", False),
    ]


def test_the_private_copy_has_its_own_class_attributes_and_bound_methods():
    from pipeline.copying import private_copy

    model, inputs = small_net()
    graph_module = exported(model, inputs)
    expected = graph_module(*inputs)
    duplicate = private_copy(graph_module)
    assert type(duplicate) is not type(graph_module)
    assert type(duplicate).__bases__ == type(graph_module).__bases__
    relu = next(n for n in duplicate.graph.nodes if n.target == torch.ops.aten.relu.default)
    relu.target = torch.ops.aten.sigmoid.default
    duplicate.recompile()
    assert "sigmoid" in duplicate.code and "sigmoid" not in graph_module.code
    assert torch.equal(graph_module(*inputs), expected)
    assert not torch.equal(duplicate(*inputs), expected)
    del duplicate.first.weight
    duplicate.extra = torch.nn.Linear(1, 1)
    assert hasattr(graph_module.first, "weight") and not hasattr(graph_module, "extra")
    for name in ("train", "eval"):
        if isinstance(vars(graph_module).get(name), types.MethodType):
            assert getattr(duplicate, name).__self__ is duplicate


def test_a_stage_that_rewrites_the_callers_own_graph_is_caught_at_the_end_of_the_run():
    model, inputs = small_net()
    graph_module = exported(model, inputs)

    @attrs.frozen
    class Trespasses(Stage):
        """Retags the caller's nodes instead of its own."""

        name: str = "trespass"

        def run(self, ctx):
            for node in ctx.inputs["model"].graph.nodes:
                node.meta["quantization_tag"] = "theirs"
            return False

    with pytest.raises(
        PipelineError, match=r"the run changed the caller's graph module \(stages that ran: trespass\)"
    ):
        Pipeline(plugins=[ToyPlugin(stages=(Trespasses(),))]).run(graph_module)


def test_code_is_generated_after_each_stage_and_compiled_when_the_module_runs():
    from pipeline.compilation import is_stale

    model, inputs = small_net()
    outputs = []

    @attrs.frozen
    class RunsTheModule(Stage):
        """Calls the module the previous stage rewrote."""

        name: str = "runs-it"
        requires: tuple[str, ...] = ("no-relu",)
        phase: str = "convert"

        def run(self, ctx):
            outputs.append((is_stale(ctx.graph_module), ctx.graph_module(*ctx.inputs["example_inputs"])))
            return False

    result = toy(ToyCapture(), ToyTag(), ToyClamp(), RunsTheModule()).run(model, inputs)
    was_stale, output = outputs[0]
    assert was_stale
    (x,) = inputs
    assert torch.equal(output, model.second(torch.nn.functional.hardtanh(model.first(x), 0.0, 6.0)) + x)
    assert not is_stale(result.graph_module)
    assert "hardtanh" in result.graph_module.code and "relu" not in result.graph_module.code


def test_an_instrumentation_that_changes_the_graph_between_stages_is_an_error():
    class Meddles(Instrumentation):
        def after_stage(self, step):
            if step.stage.name == "toy-capture":
                node = next(
                    iter(step.ctx.graph.find_nodes(op="call_function", target=torch.ops.aten.relu.default))
                )
                node.meta["stack_trace"] = "meddled"

    model, inputs = small_net()
    with pytest.raises(
        StageFailedError,
        match=r"the graph changed before stage 'toy-tag', outside any stage; one of these changed it: "
        r".*instrumentation Meddles \(not reads_only\)",
    ):
        toy(instrumentations=[Meddles()]).run(model, inputs)


@attrs.frozen
class NothingToClamp(ToyClamp):
    """Clamps relus, and says so before running when there are none."""

    def skip_reason(self, ctx):
        relus = ctx.graph.find_nodes(op="call_function", target=torch.ops.aten.relu.default)
        return None if relus else "no relu to clamp"


def test_a_stage_with_nothing_to_do_is_skipped_with_its_reason():
    class NoRelu(torch.nn.Module):
        def forward(self, x):
            return x * 2

    result = toy(ToyCapture(), ToyTag(), NothingToClamp()).run(NoRelu(), (torch.randn(2, 8),), audit=[])
    report = result.report[ToyClamp().name]
    assert (report.status, report.reason) == ("skipped", "no relu to clamp")
    skipped = [event for event in result.audit.events if event["event"] == "stage.skipped"]
    assert [(event["stage"], event["reason"]) for event in skipped] == [(ToyClamp().name, "no relu to clamp")]
    ran = toy(ToyCapture(), ToyTag(), NothingToClamp()).run(*small_net())
    assert ran.report[ToyClamp().name].status == "ran"


@attrs.frozen
class SneakySkip(ToyClamp):
    """Tags nodes while deciding whether to run."""

    def skip_reason(self, ctx):
        for node in ctx.graph.nodes:
            node.meta["quantization_tag"] = "sneaky"
        return "nothing to do"


@attrs.frozen
class WrongSkip(ToyClamp):
    """Answers skip_reason with a bool."""

    def skip_reason(self, ctx):
        return True


@attrs.frozen
class BrokenSkip(ToyClamp):
    """Fails while deciding whether to run."""

    def skip_reason(self, ctx):
        raise KeyError("no such node")


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (SneakySkip(), r"\(plugin .*\)\. Conditions and skip_reason\(\) must only read"),
        (WrongSkip(), r"returned True from skip_reason\(\); it must return a string or None"),
        (BrokenSkip(), r"raised KeyError: 'no such node'"),
    ],
)
def test_a_skip_reason_that_writes_answers_wrongly_or_raises_fails_its_stage(stage, message):
    model, inputs = small_net()
    with pytest.raises(StageFailedError, match=rf"stage '{ToyClamp().name}' .*{message}") as caught:
        toy(ToyCapture(), ToyTag(), stage).run(model, inputs, audit=[])
    assert caught.value.stage == ToyClamp().name


def test_a_writing_skip_reason_that_read_alone_is_named_alone():
    model, inputs = small_net()
    with pytest.raises(
        StageFailedError,
        match=r"^skip_reason\(\) of stage 'toy-clamp' \(plugin .*\) changed the graph, which it must only read$",
    ) as caught:
        toy(ToyCapture(), ToyTag(), SneakySkip()).run(model, inputs, check="off", audit=[])
    assert (caught.value.stage, caught.value.plugin) == (ToyClamp().name, "support.toyflow.ToyPlugin")


def test_a_reader_that_writes_before_a_stage_stops_the_run_before_that_stage_runs():
    class Meddles(Instrumentation):
        def after_stage(self, step):
            if step.stage.name == "toy-capture":
                next(iter(step.ctx.graph.nodes)).meta["stack_trace"] = "meddled"

    model, inputs = small_net()
    events: list[dict] = []
    with pytest.raises(StageFailedError, match="before stage 'toy-tag'"):
        toy(instrumentations=[Meddles()]).run(model, inputs, audit=events)
    assert [event["stage"] for event in events if event["event"] == "stage.finished"] == ["toy-capture"]


def test_conditions_checked_together_are_all_named_when_one_of_them_writes():
    @condition("tagged", "sneaky: tags while checking")
    def sneaky(graph_module):
        for node in graph_module.graph.nodes:
            node.meta["quantization_tag"] = "sneaky"
        return []

    @attrs.frozen
    class TagsAndCaptures(ToyTag):
        """Tags, and promises the graph is still captured."""

        ensures: tuple[str, ...] = ("captured", "tagged")

    plugin = ToyPlugin(
        stages=(ToyCapture(), TagsAndCaptures()),
        conditions=(*[c for c in ToyPlugin().conditions if c.name != "tagged"], sneaky),
    )
    with pytest.raises(
        StageFailedError,
        match=r"one of these changed it: the check of condition 'captured' \(plugin .*\) after stage "
        r"'toy-tag'; the check of condition 'tagged' \(plugin .*\) after stage 'toy-tag'\. ",
    ):
        Pipeline(plugins=[plugin]).run(*small_net())
