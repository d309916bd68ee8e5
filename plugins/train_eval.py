"""Switching an exported model between training and inference.

``torch.export`` bakes train or eval behaviour into the graph: a batch norm
is ``batch_norm(..., training, momentum, eps, ...)`` and a dropout
``dropout(x, p, train)``, so ``model.eval()`` cannot change them (exported
modules refuse it). A QAT model is trained, then evaluated or converted, so
it needs these switches; they are torchao's ``move_exported_model_to_eval``
and ``move_exported_model_to_train``, with the same names and effect on the
training flags.

torchao finds the ops by exporting six pattern functions and rewriting
every match with the pattern's literals, which resets every batch norm to
eps 1e-5 and momentum 0.1 and every dropout to p 0.5, and drops their
annotations and module paths. Here each op keeps its arguments and metadata
and only its flag changes; the feature and alpha dropouts switch too.
"""

from __future__ import annotations

import types

import torch
import torch.fx

_aten = torch.ops.aten

TRAINING_ATTRIBUTE = "_exported_training"
"""Where torchao records the mode, so its own switches and these agree on what was done."""

_FLAG_POSITION = {
    _aten.batch_norm.default: 5,
    _aten.dropout.default: 2,
    _aten.dropout_.default: 2,
    _aten.feature_dropout.default: 2,
    _aten.feature_dropout_.default: 2,
    _aten.alpha_dropout.default: 2,
    _aten.alpha_dropout_.default: 2,
    _aten.feature_alpha_dropout.default: 2,
    _aten.feature_alpha_dropout_.default: 2,
}
_FLAG_NAME = {_aten.batch_norm.default: "training"}


def move_exported_model_to_eval(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Batch norms use running statistics, dropouts pass through; returns ``model``, changed in place."""
    return _switch(model, training=False)


def move_exported_model_to_train(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Batch norms use and update batch statistics and dropouts drop; returns ``model``, changed in place."""
    return _switch(model, training=True)


def allow_exported_model_train_eval(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Make ``model.train()`` and ``model.eval()`` call the two switches above; returns ``model``.

    Only batch norms and dropouts change: code that branched on ``self.training``
    was specialised when the model was exported.
    """

    def train(self: torch.fx.GraphModule, mode: bool = True) -> torch.fx.GraphModule:
        return _switch(self, training=mode)

    def evaluate(self: torch.fx.GraphModule) -> torch.fx.GraphModule:
        return _switch(self, training=False)

    model.train = types.MethodType(train, model)  # type: ignore[method-assign]
    model.eval = types.MethodType(evaluate, model)  # type: ignore[method-assign]
    return model


def _switch(model: torch.fx.GraphModule, *, training: bool) -> torch.fx.GraphModule:
    if not isinstance(model, torch.fx.GraphModule):
        raise TypeError(f"expected an exported GraphModule, got {type(model).__name__}")
    for graph_module in model.modules():
        if isinstance(graph_module, torch.fx.GraphModule) and _set_flags(graph_module.graph, training):
            graph_module.recompile()
    setattr(model, TRAINING_ATTRIBUTE, training)
    return model


def _set_flags(graph: torch.fx.Graph, training: bool) -> bool:
    changed = False
    for target, position in _FLAG_POSITION.items():
        for node in graph.find_nodes(op="call_function", target=target):
            name = _FLAG_NAME.get(target, "train")
            if name in node.kwargs:
                if node.kwargs[name] is not training:
                    node.update_kwarg(name, training)
                    changed = True
            elif len(node.args) > position and node.args[position] is not training:
                node.update_arg(position, training)
                changed = True
    return changed
