"""Each built-in stage's promise is checked: a broken twin that breaks it is caught, naming the node."""

from __future__ import annotations

import attrs
import pytest
import torch
from torchao.quantization.pt2e.observer import MinMaxObserver
from zoo.models import _CASES
from zoo.quantizers import make_quantizer

from pipeline import ConditionViolationError, Pipeline, hookimpl
from plugins import builtin
from plugins.annotate import Annotate
from plugins.calibrate import Calibrate
from plugins.capture import Capture
from plugins.convert import Convert
from plugins.fold_bn import FoldBatchNorm
from plugins.prepare import Prepare

CASE = next(c for c in _CASES if c.name == "conv_bn_relu")


@attrs.frozen
class BuiltinsWith:
    """The built-in plugin with one stage swapped for another."""

    replacement: object

    @hookimpl
    def pt2e_pipeline_stages(self):
        return [
            self.replacement if s.name == self.replacement.name else s for s in builtin.pt2e_pipeline_stages()
        ]

    @hookimpl
    def pt2e_pipeline_conditions(self):
        return builtin.pt2e_pipeline_conditions()

    @hookimpl
    def pt2e_pipeline_meta_fields(self):
        return builtin.pt2e_pipeline_meta_fields()


def run_with(stage, *, phases=None):
    pipeline = Pipeline(plugins=[BuiltinsWith(stage)])
    with pytest.raises(ConditionViolationError) as caught:
        pipeline.run(
            CASE.factory(),
            CASE.example_inputs,
            quantizer=make_quantizer("xnnpack-per-tensor"),
            calibration=CASE.calibration_batches(2, 0),
            phases=phases,
        )
    return caught.value


@attrs.frozen
class TracesWithFx(Capture):
    """Captures with symbolic_trace: Python-level, not ATen."""

    def run(self, ctx):
        ctx.graph_module = torch.fx.symbolic_trace(ctx.inputs["model"])


@attrs.frozen
class FoldsNothing(FoldBatchNorm):
    """Leaves every batch_norm in place."""

    def run(self, ctx):
        return False


@attrs.frozen
class AnnotatesAStranger(Annotate):
    """Annotates, then names a non-input in one annotation."""

    def run(self, ctx):
        super().run(ctx)
        relu = next(n for n in ctx.graph.nodes if n.target == torch.ops.aten.relu.default)
        placeholder = next(n for n in ctx.graph.nodes if n.op == "placeholder")
        annotation = relu.meta["quantization_annotation"]
        relu.meta["quantization_annotation"] = type(annotation)(
            input_qspec_map={placeholder: next(iter(annotation.input_qspec_map.values()), None)},
            output_qspec=annotation.output_qspec,
            _annotated=True,
        )


@attrs.frozen
class DropsAnObserver(Prepare):
    """Prepares, then takes the observer off the conv's input."""

    def run(self, ctx):
        super().run(ctx)
        conv = next(n for n in ctx.graph.nodes if n.target == torch.ops.aten.conv2d.default)
        observer = conv.args[0]
        conv.replace_input_with(observer, observer.args[0])
        ctx.graph.erase_node(observer)


@attrs.frozen
class CalibratesNothing(Calibrate):
    """Runs no data."""

    def run(self, ctx):
        return False


@attrs.frozen
class LeavesAnObserver(Convert):
    """Converts, then puts an observer back after the conv."""

    def run(self, ctx):
        super().run(ctx)
        conv = next(n for n in ctx.graph.nodes if n.target == torch.ops.aten.conv2d.default)
        ctx.graph_module.stray_observer = MinMaxObserver()
        with ctx.graph.inserting_after(conv):
            stray = ctx.graph.call_module("stray_observer", (conv,))
        conv.replace_all_uses_with(stray, delete_user_cb=lambda user: user is not stray)


def test_capture_promises_an_aten_graph():
    error = run_with(TracesWithFx())
    assert (error.stage, error.condition) == ("capture", "captured")
    assert "conv (call_module conv)\n    calls a torch.nn module: not an ATen-level graph" in str(error)


def test_fold_bn_promises_no_foldable_batch_norm():
    error = run_with(FoldsNothing())
    assert (error.stage, error.condition) == ("fold-bn", "bn-folded")
    assert "batch_norm (call_function aten.batch_norm.default)" in str(error)
    assert "return self.relu(self.bn(self.conv(x)))" in str(error)


def test_annotate_promises_well_formed_annotations():
    error = run_with(AnnotatesAStranger())
    assert (error.stage, error.condition) == ("annotate", "annotated")
    assert "relu (call_function aten.relu.default)" in str(error)
    assert "input_qspec_map names 'x', which is not an input of this node" in str(error)


def test_prepare_promises_every_annotated_edge_observed():
    error = run_with(DropsAnObserver())
    assert (error.stage, error.condition) == ("prepare", "observed")
    assert "conv2d (call_function aten.conv2d.default)" in str(error)
    assert "input x is annotated but not observed" in str(error)


def test_calibrate_promises_observers_that_have_seen_data():
    error = run_with(CalibratesNothing())
    assert (error.stage, error.condition) == ("calibrate", "calibrated")
    assert "activation_post_process_0 (call_module activation_post_process_0)" in str(error)
    assert "observer has seen no data" in str(error)


def test_convert_promises_no_observer_left():
    error = run_with(LeavesAnObserver())
    assert (error.stage, error.condition) == ("convert", "quantized")
    assert "stray_observer (call_module stray_observer)\n    observer left in the converted graph" in str(
        error
    )
