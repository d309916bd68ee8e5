"""Plugins: discovery through entry points, filtering, hermetic mode, and plugins that misbehave."""

from __future__ import annotations

import importlib.metadata
import textwrap

import pt2e_strip_dropout
import pt2e_strip_dropout.broken
import pytest
import torch
from support.toyflow import ToyPlugin, small_net

from pipeline import (
    ConditionViolationError,
    OptionsError,
    Pipeline,
    PluginError,
    Stage,
    hookimpl,
)
from pipeline.registry import Registry

EXAMPLE = "pt2e-example-strip-dropout"


def dropout_targets(graph_module):
    return [n for n in graph_module.graph.nodes if n.target == torch.ops.aten.dropout.default]


def test_the_example_distribution_is_discovered_through_its_entry_point():
    plugins = {
        (p.name, p.distribution)
        for p in Pipeline.default(allow=[EXAMPLE], extra=[ToyPlugin()]).registry.plugins
    }
    assert ("strip-dropout", EXAMPLE) in plugins
    assert importlib.metadata.distribution(EXAMPLE).entry_points.select(group="pt2e_pipeline")


def test_the_example_stage_is_placed_between_two_stages_by_its_conditions_alone():
    pipeline = Pipeline.default(allow=[EXAMPLE], extra=[ToyPlugin()])
    assert pipeline.plan.names == ("toy-capture", "strip-dropout", "toy-tag", "toy-clamp")
    planned = pipeline.plan["strip-dropout"]
    assert planned.plugin.distribution == EXAMPLE and not planned.plugin.builtin
    assert planned.reasons == (
        "after 'toy-capture': 'strip-dropout' requires 'captured', which 'toy-capture' ensures",
        "after 'toy-capture': 'strip-dropout' requires 'unannotated', which 'toy-capture' ensures",
    )
    assert (
        "after 'strip-dropout': 'toy-tag' invalidates 'unannotated', which 'strip-dropout' requires"
        in pipeline.plan["toy-tag"].reasons
    )


def test_the_example_stage_rewrites_appear_in_the_audit_trail():
    model, inputs = small_net()
    result = Pipeline.default(allow=[EXAMPLE], extra=[ToyPlugin()]).run(model, inputs)
    assert dropout_targets(result.graph_module) == []
    events = [e for e in result.audit.select(stage="strip-dropout") if e["event"].startswith("node.")]
    assert [(e["event"], e["node"]) for e in events] == [
        ("node.replaced", "dropout"),
        ("node.erased", "dropout"),
        ("node.rewired", "linear_1"),
    ]
    assert events[0]["plugin"] == "strip-dropout"
    assert events[2]["args_before"][0] == "%dropout" and events[2]["args_after"][0] == "%relu"
    assert result.audit.summary()[1]["stage"] == "strip-dropout"


def test_the_broken_twin_is_caught_and_named():
    model, inputs = small_net()
    pipeline = Pipeline(plugins=[ToyPlugin(), pt2e_strip_dropout.broken])
    with pytest.raises(ConditionViolationError) as caught:
        pipeline.run(model, inputs)
    message = str(caught.value)
    assert caught.value.stage == "strip-dropout-broken"
    assert (
        f"stage 'strip-dropout-broken' (plugin pt2e_strip_dropout.broken ({EXAMPLE} 0.1.0)) ensures 'no-dropout'"
        in message
    )
    assert "dropout (call_function aten.dropout.default)" in message
    assert "return self.second(self.drop(hidden)) + x" in message


def test_allow_and_deny_filter_by_plugin_or_distribution_name():
    def names(**filters):
        return {p.name for p in Registry.discover(**filters).plugins}

    assert "strip-dropout" not in names(deny=[EXAMPLE])
    assert "strip-dropout" not in names(deny=["strip-dropout"])
    assert "strip-dropout" in names(allow=["strip-dropout"])
    assert "builtin" not in names(allow=["strip-dropout"])
    assert "builtin" in names(allow=["pt2e-pipeline", "strip-dropout"])


def test_hermetic_mode_discovers_nothing():
    pipeline = Pipeline(plugins=[ToyPlugin()])
    assert [p.name for p in pipeline.registry.plugins] == ["support.toyflow.ToyPlugin"]
    assert "strip-dropout" not in pipeline.plan


def test_filters_with_hermetic_plugins_are_refused():
    with pytest.raises(OptionsError, match="discovers none"):
        Pipeline(plugins=[ToyPlugin()], deny=["x"])


@pytest.fixture
def broken_distribution(tmp_path, monkeypatch):
    info = tmp_path / "acme_broken-9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-broken\nVersion: 9.9\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [pt2e_pipeline]
            acme = acme_missing_module.plugin
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "acme-broken"


def test_a_plugin_that_fails_to_import_is_an_error_naming_its_distribution(broken_distribution):
    with pytest.raises(PluginError) as caught:
        Pipeline.default(extra=[ToyPlugin()])
    message = str(caught.value)
    assert (
        "plugin 'acme' from distribution acme-broken 9.9 failed to import (acme_missing_module.plugin)"
        in message
    )
    assert "ModuleNotFoundError: No module named 'acme_missing_module'" in message
    assert "deny=['acme']" in message


def test_a_broken_plugin_can_be_denied(broken_distribution):
    registry = Registry.discover(deny=[broken_distribution])
    assert "acme" not in {p.name for p in registry.plugins}


def test_a_misspelt_hook_is_an_error_naming_the_plugin():
    class Typo:
        @hookimpl
        def pt2e_pipeline_stage(self):
            return []

    with pytest.raises(
        PluginError,
        match=r"plugin \S*test_registry.*Typo implements a hook the pipeline does not define",
    ):
        Pipeline(plugins=[Typo()])


def test_a_hook_returning_the_wrong_thing_is_an_error():
    class Wrong:
        @hookimpl
        def pt2e_pipeline_stages(self):
            return ["not a stage"]

    with pytest.raises(
        PluginError,
        match=r"returned 'not a stage' from pt2e_pipeline_stages; expected Stage instances",
    ):
        Pipeline(plugins=[Wrong()])

    class NotAList:
        @hookimpl
        def pt2e_pipeline_conditions(self):
            return "captured"

    with pytest.raises(PluginError, match="expected a list of Condition"):
        Pipeline(plugins=[NotAList()])


def test_a_hook_that_raises_is_an_error_naming_the_plugin():
    class Raises:
        @hookimpl
        def pt2e_pipeline_stages(self):
            raise KeyError("config")

    with pytest.raises(PluginError, match=r"Raises raised in pt2e_pipeline_stages: KeyError: 'config'"):
        Pipeline(plugins=[Raises()])


def test_a_wrapper_cannot_hijack_a_declaration_hook():
    class Hijacker:
        @hookimpl(wrapper=True)
        def pt2e_pipeline_stages(self):
            yield []
            return []

    with pytest.raises(PluginError, match="implements pt2e_pipeline_stages as a wrapper"):
        Pipeline(plugins=[Hijacker(), ToyPlugin()])


def test_a_stage_with_a_bad_declaration_fails_when_built():
    import attrs

    @attrs.frozen
    class Bad(Stage):
        name: str = "bad"
        ensures: tuple[str, ...] = "captured"

    with pytest.raises(
        TypeError, match=r"Bad.ensures must be a sequence of names, not the string 'captured'"
    ):
        Bad()


def test_the_plugin_objects_distribution_is_found_for_hermetic_plugins():
    pipeline = Pipeline(plugins=[ToyPlugin(), pt2e_strip_dropout])
    info = pipeline.plan["strip-dropout"].plugin
    assert (info.name, info.distribution, info.version) == ("pt2e_strip_dropout", EXAMPLE, "0.1.0")
    assert pipeline.plan["toy-tag"].plugin.distribution is None


def test_running_with_the_example_removes_dropout_without_touching_the_caller():
    model, inputs = small_net()
    expected = model(*inputs)
    result = Pipeline.default(allow=[EXAMPLE], extra=[ToyPlugin()]).run(
        model, inputs, stop_after="strip-dropout"
    )
    assert torch.equal(result.graph_module(*inputs), expected)
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())


class AnnotatorSpecs:
    """A plugin family's own hook, defined by one plugin and implemented by another."""

    from pipeline import hookspec

    @hookspec
    def pt2e_pipeline_widgets(self):
        """Widgets a plugin offers."""


def test_a_plugin_can_define_a_hook_that_other_plugins_implement():
    class Definer:
        @hookimpl
        def pt2e_pipeline_hookspecs(self):
            return [AnnotatorSpecs]

        @hookimpl
        def pt2e_pipeline_widgets(self):
            return ["gear"]

    class Implementer:
        @hookimpl
        def pt2e_pipeline_widgets(self):
            return ["spring"]

    registry = Pipeline(plugins=[Definer(), Implementer()]).registry
    assert sorted(provided.item for provided in registry.collect("pt2e_pipeline_widgets", str)) == [
        "gear",
        "spring",
    ]
    with pytest.raises(PluginError, match="no plugin defines the hook 'pt2e_pipeline_gadgets'"):
        registry.collect("pt2e_pipeline_gadgets", str)


def test_implementing_a_hook_no_plugin_defines_is_still_an_error():
    class Implementer:
        @hookimpl
        def pt2e_pipeline_widgets(self):
            return ["spring"]

    with pytest.raises(PluginError, match="implements a hook the pipeline does not define"):
        Pipeline(plugins=[Implementer()])
