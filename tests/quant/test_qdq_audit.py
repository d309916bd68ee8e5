"""Every Q/DQ node of a quantized model is in the audit trail with its qparams and where it came from."""

from __future__ import annotations

import pytest
import torch
from zoo.models import _CASES
from zoo.quantizers import make_quantizer

from pipeline.pt2e import quantize
from plugins import ops

QPARAM_FIELDS = {"scale", "zero_point", "quant_min", "quant_max", "dtype"}
CHANNEL_FIELDS = {"scales", "zero_points", "axis", "quant_min", "quant_max", "dtype"}


def run(case_name: str, config: str):
    case = next(c for c in _CASES if c.name == case_name)
    return quantize(
        case.factory(),
        case.example_inputs,
        quantizer=make_quantizer(config),
        calibration=case.calibration_batches(2, 3),
        dynamic_shapes=case.dynamic_shapes,
    )


def creation(log, name: str, graph: str):
    history = log.history(name, graph=graph)
    assert history[0]["event"] == "node.created", f"{name} has no creation event: {history[0]}"
    return history[0]


@pytest.mark.parametrize(
    ("case_name", "config"),
    [
        ("residual_cnn", "xnnpack-per-channel"),
        ("transformer_block", "x86-static"),
        ("hop_while_loop", "xnnpack-per-tensor"),
    ],
)
def test_every_qdq_node_has_its_qparams_observer_and_edges_on_record(case_name, config):
    result = run(case_name, config)
    log = result.audit
    seen = 0
    for path, module in result.graph_module.named_modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if not (ops.is_quantize(node) or ops.is_dequantize(node)):
                continue
            seen += 1
            event = creation(log, node.name, path)
            if event["stage"] == "duplicate-dq":
                (original,) = event["sources"]
                event = creation(log, original, path)
            assert event["stage"] == "convert"
            details = event["details"]
            expected = CHANNEL_FIELDS if "per_channel" in event["target"] else QPARAM_FIELDS
            assert expected <= set(details), (node.name, details)
            assert details["observer"].startswith("activation_post_process_")
            assert details["observes"], node.name
            assert all("->" in edge or edge.startswith("output of ") for edge in details["observes"])
            assert event["sources"][0] == details["observer"]
    assert seen > 0


def test_qparams_on_record_are_those_in_the_graph():
    result = run("mlp", "xnnpack-per-tensor")
    for node in result.graph_module.graph.nodes:
        if node.target == ops.QUANTIZE_PER_TENSOR:
            details = creation(result.audit, node.name, "")["details"]
            assert (details["scale"], details["zero_point"]) == (node.args[1], node.args[2])
            assert (details["quant_min"], details["quant_max"], details["dtype"]) == (
                node.args[3],
                node.args[4],
                str(node.args[5]),
            )


def test_calibration_reports_progress_and_is_noted():
    case = next(c for c in _CASES if c.name == "mlp")
    seen = []
    batches = case.calibration_batches(3, 0)
    result = quantize(
        case.factory(),
        case.example_inputs,
        quantizer=make_quantizer("xnnpack-per-tensor"),
        calibration=batches,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]
    notes = [e["message"] for e in result.audit.select(stage="calibrate", action="stage.note")]
    assert notes == ["calibrated on 3 batch(es)"]


def test_nodes_made_under_one_origin_carry_equal_details_in_containers_of_their_own():
    result = run("residual_cnn", "xnnpack-per-channel")
    created = [
        event
        for event in result.audit.events
        if event["event"] == "node.created" and event["stage"] == "convert" and "observer" in event["details"]
    ]
    by_observer: dict[str, list[dict]] = {}
    for event in created:
        by_observer.setdefault(event["details"]["observer"], []).append(event)
    pairs = [events for events in by_observer.values() if len(events) > 1]
    assert pairs, "no observer made more than one node"
    for first, *others in pairs:
        for other in others:
            assert other["sources"] == first["sources"]
            assert other["details"]["observes"] == first["details"]["observes"]
            assert other["sources"] is not first["sources"]
            assert other["details"]["observes"] is not first["details"]["observes"]
        first["details"]["observes"].append("changed by a reader")
        assert all("changed by a reader" not in other["details"]["observes"] for other in others)
