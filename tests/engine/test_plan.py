"""The plan: order computed from conditions and after/before, and every way it can fail."""

from __future__ import annotations

import itertools
import random

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import Pipeline, PlanError, PluginInfo, Provided, Stage, Violation, condition
from pipeline.plan import build_plan

BUILTIN = PluginInfo("builtin", "pt2e-pipeline", "1.0")
THIRD = PluginInfo("third", "acme-plugins", "2.0")


@attrs.frozen
class Noop(Stage):
    """Does nothing; only its declarations matter here."""

    def run(self, ctx):
        return False


def conditions(*names):
    made = {}
    for name in names:
        made[name] = Provided(condition(name)(lambda gm: []), BUILTIN)
    return made


def plan_of(
    *stages,
    plugin=BUILTIN,
    phases=("prepare", "calibrate", "convert"),
    assumes=(),
    extra_conditions=(),
):
    provided = [s if isinstance(s, Provided) else Provided(s, plugin) for s in stages]
    names = {n for p in provided for n in (*p.item.requires, *p.item.ensures, *p.item.invalidates)}
    return build_plan(
        provided,
        conditions(*sorted(names | set(assumes) | set(extra_conditions))),
        phases=phases,
        assumes=assumes,
    )


def test_a_stage_runs_after_every_stage_that_ensures_what_it_requires():
    plan = plan_of(
        Noop(name="use", requires=("a", "b")),
        Noop(name="make-b", ensures=("b",)),
        Noop(name="make-a", requires=("b",), ensures=("a",)),
    )
    assert plan.names == ("make-b", "make-a", "use")
    assert plan["use"].reasons == (
        "after 'make-a': 'use' requires 'a', which 'make-a' ensures",
        "after 'make-b': 'use' requires 'b', which 'make-b' ensures",
    )


def test_a_stage_that_invalidates_a_condition_runs_after_those_that_require_it():
    plan = plan_of(
        Noop(name="capture", ensures=("float", "graph")),
        Noop(name="annotate", requires=("graph",), invalidates=("float",)),
        Noop(name="rewrite-float", requires=("float",)),
    )
    assert plan.names == ("capture", "rewrite-float", "annotate")
    assert (
        "after 'rewrite-float': 'annotate' invalidates 'float', which 'rewrite-float' requires"
        in plan["annotate"].reasons
    )


def test_after_and_before_order_stages_only_when_the_other_is_present():
    plan = plan_of(
        Noop(name="a"),
        Noop(name="b", after=("c", "absent")),
        Noop(name="c", before=("a",)),
    )
    assert plan.names == ("c", "a", "b")
    assert plan["a"].reasons == ("after 'c': 'c' declares before='a'",)


def test_ties_break_by_phase_then_builtin_then_name():
    plan = plan_of(
        Provided(Noop(name="a-third"), THIRD),
        Provided(Noop(name="z-builtin"), BUILTIN),
        Provided(Noop(name="b-convert", phase="convert"), BUILTIN),
        Provided(Noop(name="m-builtin"), BUILTIN),
    )
    assert plan.names == ("m-builtin", "z-builtin", "a-third", "b-convert")


def test_the_order_does_not_depend_on_registration_order():
    stages = [
        Noop(name="capture", ensures=("captured",)),
        Noop(name="fold", requires=("captured",), ensures=("folded",)),
        Noop(name="annotate", requires=("captured",), after=("fold",), ensures=("annotated",)),
        Noop(name="prepare", requires=("annotated",), ensures=("observed",)),
        Noop(name="convert", phase="convert", requires=("observed",)),
    ]
    orders = {plan_of(*permutation).names for permutation in itertools.permutations(stages)}
    assert orders == {("capture", "fold", "annotate", "prepare", "convert")}


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_declarations_give_a_plan_that_honours_every_constraint(data):
    count = data.draw(st.integers(2, 9))
    names = [f"s{index}" for index in range(count)]
    ensures = {name: (f"c-{name}",) for name in names}
    requires = {names[0]: ()}
    for index, name in enumerate(names[1:], 1):
        chosen = data.draw(st.sets(st.sampled_from(names[:index])))
        requires[name] = tuple(f"c-{other}" for other in sorted(chosen))
    stages = [Noop(name=name, ensures=ensures[name], requires=requires[name]) for name in names]
    shuffled = data.draw(st.permutations(stages))
    plan = plan_of(*shuffled)
    position = {name: index for index, name in enumerate(plan.names)}
    for stage in stages:
        for required in stage.requires:
            assert position[required.removeprefix("c-")] < position[stage.name]
    assert plan.names == plan_of(*stages).names


def test_a_cycle_is_an_error_naming_the_chain_of_constraints():
    with pytest.raises(PlanError) as caught:
        plan_of(
            Provided(Noop(name="a", requires=("from-b",), ensures=("from-a",)), BUILTIN),
            Provided(Noop(name="b", requires=("from-a",), ensures=("from-b",)), THIRD),
            Provided(Noop(name="c", requires=("from-a",)), BUILTIN),
        )
    message = str(caught.value)
    assert "cycle" in message
    assert (
        "stage 'a' (plugin builtin (pt2e-pipeline 1.0)) must run before stage 'b' (plugin third (acme-plugins 2.0)): 'b' requires 'from-a', which 'a' ensures"
        in message
    )
    assert "'a' requires 'from-b', which 'b' ensures" in message
    assert "'c'" not in message


def test_a_cycle_through_after_and_before_is_an_error():
    with pytest.raises(
        PlanError,
        match=r"'x' declares before='y'[\s\S]*'x' declares after='y'|'x' declares after='y'[\s\S]*'x' declares before='y'",
    ):
        plan_of(Noop(name="x", before=("y",), after=("y",)), Noop(name="y"))


def test_a_requirement_nobody_ensures_is_an_error():
    with pytest.raises(
        PlanError,
        match=r"stage 'lonely' \(plugin third \(acme-plugins 2.0\)\) requires 'unicorn', which no other stage ensures",
    ):
        plan_of(Provided(Noop(name="lonely", requires=("unicorn",)), THIRD))


def test_an_assumed_condition_needs_no_stage_to_ensure_it():
    plan = plan_of(Noop(name="lonely", requires=("given",)), assumes=("given",))
    assert plan.names == ("lonely",)


def test_a_condition_no_plugin_declares_is_an_error():
    with pytest.raises(
        PlanError,
        match=r"stage 'x' .* ensures 'undeclared', which no plugin declares as a condition",
    ):
        build_plan([Provided(Noop(name="x", ensures=("undeclared",)), BUILTIN)], {}, phases=("prepare",))


def test_two_plugins_declaring_one_stage_name_is_an_error_naming_both():
    with pytest.raises(PlanError) as caught:
        plan_of(Provided(Noop(name="fold-bn"), BUILTIN), Provided(Noop(name="fold-bn"), THIRD))
    assert (
        "stage name 'fold-bn' is declared by more than one plugin: builtin (pt2e-pipeline 1.0); third (acme-plugins 2.0)"
        in str(caught.value)
    )


def test_a_stage_in_an_unknown_phase_is_an_error():
    with pytest.raises(
        PlanError,
        match=r"declares phase 'train', which is not one of the pipeline's phases \(prepare, calibrate, convert\)",
    ):
        plan_of(Noop(name="x", phase="train"))


def test_a_constraint_against_phase_order_is_an_error():
    with pytest.raises(
        PlanError,
        match=r"stage 'early' .* in phase 'prepare' must run after 'late': 'early' requires 'x', which 'late' ensures, but stage 'late' .* is in the later phase 'convert'",
    ):
        plan_of(Noop(name="late", phase="convert", ensures=("x",)), Noop(name="early", requires=("x",)))


def test_two_plugins_declaring_one_condition_name_is_an_error():
    class One:
        from pipeline import hookimpl

        @hookimpl
        def pt2e_pipeline_conditions(self):
            return [condition("same")(lambda gm: [])]

    class Two(One):
        pass

    with pytest.raises(PlanError, match="condition name 'same' is declared by more than one plugin"):
        Pipeline(plugins=[One(), Two()])


def test_the_plan_prints_as_a_table_with_the_reason_for_each_place():
    plan = plan_of(
        Noop(name="capture", ensures=("captured",), required=True),
        Noop(name="tag", requires=("captured",)),
    )
    table = plan.table()
    lines = table.splitlines()
    assert lines[0].split() == [
        "#",
        "stage",
        "phase",
        "plugin",
        "distribution",
        "version",
        "requires",
        "ensures",
    ]
    assert "capture" in lines[2] and "pt2e-pipeline" in lines[2] and "1.0" in lines[2]
    assert "why: no stage constrains it" in lines[3]
    assert "tag [bisect 1]" in lines[4]
    assert "why: after 'capture': 'tag' requires 'captured', which 'capture' ensures" in lines[5]
    described = plan.describe()
    assert described[1]["why"] == ["after 'capture': 'tag' requires 'captured', which 'capture' ensures"]
    assert described[1]["distribution"] == "pt2e-pipeline"


def test_bisect_numbers_count_optional_stages_only():
    plan = plan_of(
        Noop(name="a", ensures=("a",), required=True),
        Noop(name="b", requires=("a",), ensures=("b",)),
        Noop(name="c", requires=("b",), required=True),
        Noop(name="d", requires=("b",)),
    )
    assert [(p.name, p.bisect_number) for p in plan] == [
        ("a", None),
        ("b", 1),
        ("c", None),
        ("d", 2),
    ]


def test_a_plan_error_surfaces_when_the_pipeline_is_built():
    from pipeline import hookimpl

    class Broken:
        @hookimpl
        def pt2e_pipeline_stages(self):
            return [Noop(name="needs", requires=("missing",))]

        @hookimpl
        def pt2e_pipeline_conditions(self):
            return [condition("missing")(lambda gm: [Violation("never")])]

    with pytest.raises(PlanError, match="requires 'missing', which no other stage ensures"):
        Pipeline(plugins=[Broken()])


def test_shuffled_registration_through_plugins_gives_the_same_plan():
    from support.toyflow import ToyCapture, ToyClamp, ToyPlugin, ToyTag

    stages = [ToyCapture(), ToyTag(), ToyClamp()]
    seen = set()
    for seed in range(5):
        random.Random(seed).shuffle(stages)
        seen.add(Pipeline(plugins=[ToyPlugin(stages=tuple(stages))]).plan.names)
    assert seen == {("toy-capture", "toy-tag", "toy-clamp")}
