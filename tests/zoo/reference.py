"""The torchao PT2E flow our implementation is compared against."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer import Quantizer

from .models import Batch, ZooCase


def export_case(case: ZooCase) -> torch.fx.GraphModule:
    """Export a fresh instance of `case` and return the unlifted GraphModule."""
    exported = torch.export.export(case.factory(), case.example_inputs, dynamic_shapes=case.dynamic_shapes)
    return exported.module()


def torchao_ptq(
    graph_module: torch.fx.GraphModule,
    quantizer: Quantizer,
    calibration_batches: Iterable[Batch],
) -> torch.fx.GraphModule:
    """Run prepare_pt2e -> calibration -> convert_pt2e on a copy of `graph_module`.

    prepare_pt2e folds batch norms into the graph it is given, hence the copy.
    Calibration runs under no_grad: eager `scan` re-traces its combine graph
    when autograd is on, which observers with in-place state cannot survive.
    """
    prepared = prepare_pt2e(copy.deepcopy(graph_module), quantizer)
    with torch.no_grad():
        for batch in calibration_batches:
            prepared(*batch)
    return convert_pt2e(prepared)
