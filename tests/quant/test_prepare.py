"""prepare_pt2e: the same observers, in the same places, shared the same way as torchao's."""

from __future__ import annotations

import copy

import pytest
import torch
from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e as torchao_prepare_pt2e
from zoo.models import _CASES
from zoo.observation import observation_structure
from zoo.quantizers import CONFIGS, applies_to, make_quantizer
from zoo.reference import export_case

from pipeline.pt2e import audit_of, prepare_pt2e

PAIRS = [(case, config) for case in _CASES for config in CONFIGS if applies_to(config, case)]


@pytest.mark.parametrize(("case", "config"), PAIRS, ids=[f"{c.name}-{q}" for c, q in PAIRS])
def test_observers_match_torchao(case, config):
    exported = export_case(case)
    reference = torchao_prepare_pt2e(copy.deepcopy(exported), make_quantizer(config))
    ours = prepare_pt2e(exported, make_quantizer(config))
    assert observation_structure(ours) == observation_structure(reference)
    for path, module in ours.named_modules():
        if isinstance(module, torch.fx.GraphModule):
            other = reference.get_submodule(path)
            assert observation_structure(module) == observation_structure(other), path


def test_prepare_leaves_the_exported_module_alone():
    case = next(c for c in _CASES if c.name == "residual_cnn")
    exported = export_case(case)
    code, names = exported.code, [n.name for n in exported.graph.nodes]
    weights = {name: (t, t.clone()) for name, t in exported.state_dict(keep_vars=True).items()}
    prepared = prepare_pt2e(exported, make_quantizer("xnnpack-per-channel"))
    assert prepared is not exported
    assert exported.code == code and [n.name for n in exported.graph.nodes] == names
    assert not any("quantization_annotation" in n.meta for n in exported.graph.nodes)
    for name, (tensor, values) in weights.items():
        assert exported.state_dict(keep_vars=True)[name] is tensor and torch.equal(tensor, values)


def test_every_observer_is_in_the_audit_with_the_edge_it_observes():
    case = next(c for c in _CASES if c.name == "mlp")
    prepared = prepare_pt2e(export_case(case), make_quantizer("xnnpack-per-tensor"))
    log = audit_of(prepared)
    created = log.select(stage="prepare", action="created")
    observers = [
        n
        for n in prepared.graph.nodes
        if n.op == "call_module" and n.target.startswith("activation_post_process_")
    ]
    assert sorted(e["node"] for e in created) == sorted(n.name for n in observers)
    first = next(e for e in created if e["node"] == "activation_post_process_0")
    assert first["details"]["observes"] == ["x -> linear"]
    assert first["details"]["observer_class"] == "HistogramObserver"
    assert first["sources"] == ["x", "linear"]
