"""Bit-exact comparison of two quantized GraphModules, with readable diffs.

The project must reproduce torchao's PT2E output exactly, so every check here
is strict: identical operator counts, identical quantization parameters
(`torch.equal` for tensors, `==` with matching types for scalars) and
identical outputs.  When something differs, the failure message says which
operators, which Q/DQ node and which output element, with both values.

Q/DQ records are matched by what they connect (`qdq_key`), not by graph
order, because passes may legitimately move Q/DQ nodes (fold-quantize places
each weight's dequantize next to its consumer; duplicated dequantize nodes
come out in users order).  `qparam_matching="structure"` names the connected
ops by target rather than node name, for flows that rename the ops they
rewrite (QAT's conv-bn fold); `qparam_matching="graph-order"` keeps the
older, positional comparison.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch.fx import GraphModule, Node
from torch.fx.operator_schemas import normalize_function
from torch.utils._pytree import tree_flatten

_QDQ_PREFIXES = {
    "quantized_decomposed": ("quantize", "dequantize", "choose_qparams"),
    "torchao": ("quantize_affine", "dequantize_affine", "choose_qparams_affine"),
}

_FIELD_ALIASES = {
    "input": ("input",),
    "scale": ("scale", "scales"),
    "zero_point": ("zero_point", "zero_points"),
    "quant_min": ("quant_min",),
    "quant_max": ("quant_max",),
    "dtype": ("dtype", "target_dtype", "input_dtype", "output_dtype"),
    "axis": ("axis",),
    "block_size": ("block_size",),
}
"""Record field -> schema argument names, first match wins.

`dtype` is always the quantized dtype: dequantize_affine names it
`input_dtype` (its `output_dtype` is the float type and lands in `extras`),
quantize_affine `output_dtype`, choose_qparams_affine `target_dtype`.
"""


@dataclass(frozen=True)
class RuntimeValue:
    """A qparam computed in the graph (dynamic quantization), named by its producer."""

    producer: str

    def __repr__(self) -> str:
        return f"<runtime {self.producer}>"


@dataclass(frozen=True, eq=False)
class QParamRecord:
    """Quantization parameters of one quantize/dequantize/choose_qparams node.

    `location` is the dotted path of the higher-order-op subgraph holding the
    node ("" at top level).  `node` is for messages only and never compared,
    since node names are an implementation detail.  `input` is a tensor when
    it is a constant (a folded, already-quantized weight), otherwise a
    RuntimeValue naming the op producing it.  Schema arguments without a
    dedicated field (eps, out_dtype, mapping_type, ...) go to `extras`.
    """

    location: str
    node: str
    target: str
    input: Any = None
    scale: Any = None
    zero_point: Any = None
    quant_min: Any = None
    quant_max: Any = None
    dtype: Any = None
    axis: Any = None
    block_size: Any = None
    extras: tuple[tuple[str, Any], ...] = ()

    def differing_fields(self, other: QParamRecord) -> list[str]:
        return [
            name for name in _COMPARED_FIELDS if not values_equal(getattr(self, name), getattr(other, name))
        ]


_COMPARED_FIELDS = tuple(f.name for f in fields(QParamRecord) if f.name != "node")


def target_name(target: Any) -> str:
    """Stable string for a call_function target, e.g. 'aten.linear.default'."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order.{target.name()}"
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(target)


def walk_nodes(gm: GraphModule, location: str = "") -> Iterator[tuple[str, GraphModule, Node]]:
    """Yield (location, owning module, node) in graph order.

    Subgraphs of a higher-order op (scan, while_loop, cond, ...) are visited
    right after the op itself, so the order is stable across implementations.
    """
    for node in gm.graph.nodes:
        yield location, gm, node
        if node.op == "call_function" and isinstance(node.target, torch._ops.HigherOrderOperator):
            for attr in _subgraph_attrs(gm, node):
                sub_location = f"{location}.{attr}" if location else attr
                yield from walk_nodes(_fetch_attr(gm, attr), sub_location)


def _subgraph_attrs(gm: GraphModule, node: Node) -> list[str]:
    found: list[str] = []

    def collect(arg: Node) -> Node:
        if (
            arg.op == "get_attr"
            and arg.target not in found
            and isinstance(_fetch_attr(gm, arg.target), GraphModule)
        ):
            found.append(arg.target)
        return arg

    torch.fx.node.map_arg((node.args, node.kwargs), collect)
    return found


def _fetch_attr(gm: torch.nn.Module, dotted: str) -> Any:
    value: Any = gm
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def op_multiset(gm: GraphModule) -> Counter[str]:
    """Count call_function targets, including those inside HOP subgraphs."""
    return Counter(target_name(node.target) for _, _, node in walk_nodes(gm) if node.op == "call_function")


def is_qdq_node(node: Node) -> bool:
    """Whether `node` quantizes, dequantizes or chooses quantization params."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return False
    prefixes = _QDQ_PREFIXES.get(node.target.namespace)
    return prefixes is not None and node.target._opname.startswith(prefixes)


def qdq_params(gm: GraphModule) -> list[QParamRecord]:
    """Records of every Q/DQ/choose_qparams node, in graph order (HOPs included)."""
    return [_record(location, owner, node) for location, owner, node in walk_nodes(gm) if is_qdq_node(node)]


QDQKey = tuple[str, str, tuple[Any, ...], tuple[str, ...]]
"""(location, target, nearest non-Q/DQ producer, sorted nearest non-Q/DQ consumers)."""

QParamMatching = Literal["key", "structure", "graph-order"]


def qdq_key(location: str, owner: GraphModule, node: Node) -> QDQKey:
    """What a Q/DQ node connects, independent of where it sits in the graph.

    The producer is the first non-Q/DQ node up the chain of input arguments
    (a constant when it is a get_attr tensor, keyed by dtype, shape and
    bytes); the consumers are the non-Q/DQ nodes reached down through Q/DQ
    users (getitem of a choose_qparams counts as a consumer).  Node names
    outside Q/DQ chains are shared by two graphs built from the same export.
    """
    return (location, target_name(node.target), _producer_key(owner, node), _consumer_names(node))


def qdq_structural_key(location: str, owner: GraphModule, node: Node) -> QDQKey:
    """As `qdq_key`, with the connected ops named by target instead of node name.

    QAT's conv-bn fold replaces the conv with a new node (torchao names it
    `conv2d_2`, another implementation may not), and node names are no part
    of the contract.  Placeholders keep their names, which export fixes.
    Records sharing a key are paired in graph order.
    """
    describe = _describe_structurally
    return (
        location,
        target_name(node.target),
        _producer_key(owner, node, describe),
        _consumer_names(node, describe),
    )


def _describe_structurally(node: Node) -> str:
    if node.op == "call_function":
        return target_name(node.target)
    if node.op == "call_module":
        return f"module {node.target}"
    return node.name


def _node_name(node: Node) -> str:
    return node.name


def _producer_key(
    owner: GraphModule, node: Node, describe: Callable[[Node], str] = _node_name
) -> tuple[Any, ...]:
    source = node.args[0] if node.args else None
    while isinstance(source, Node) and is_qdq_node(source):
        source = source.args[0] if source.args else None
    if not isinstance(source, Node):
        return ("value", repr(source))
    if source.op == "get_attr":
        value = _fetch_attr(owner, source.target)
        if isinstance(value, torch.Tensor):
            return ("constant", *_tensor_fingerprint(value))
    return ("node", describe(source))


def _tensor_fingerprint(tensor: torch.Tensor) -> tuple[str, tuple[int, ...], str]:
    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return str(tensor.dtype), tuple(tensor.shape), hashlib.sha1(raw.numpy().tobytes()).hexdigest()


def _consumer_names(node: Node, describe: Callable[[Node], str] = _node_name) -> tuple[str, ...]:
    names: set[str] = set()
    seen: set[Node] = set()
    stack = list(node.users)
    while stack:
        user = stack.pop()
        if user in seen:
            continue
        seen.add(user)
        if is_qdq_node(user):
            stack.extend(user.users)
        else:
            names.add(describe(user))
    return tuple(sorted(names))


def qdq_params_by_key(
    gm: GraphModule, key: Callable[[str, GraphModule, Node], QDQKey] = qdq_key
) -> dict[QDQKey, list[QParamRecord]]:
    """Records of every Q/DQ/choose_qparams node grouped by `key`, graph order within a group."""
    groups: dict[QDQKey, list[QParamRecord]] = {}
    for location, owner, node in walk_nodes(gm):
        if is_qdq_node(node):
            groups.setdefault(key(location, owner, node), []).append(_record(location, owner, node))
    return groups


def _record(location: str, owner: GraphModule, node: Node) -> QParamRecord:
    normalized = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
    arguments = {name: _resolve(owner, name, value) for name, value in normalized.kwargs.items()}
    named: dict[str, Any] = {}
    for field_name, aliases in _FIELD_ALIASES.items():
        for alias in aliases:
            if alias in arguments:
                named[field_name] = arguments.pop(alias)
                break
    return QParamRecord(
        location=location,
        node=node.name,
        target=target_name(node.target),
        extras=tuple(sorted(arguments.items())),
        **named,
    )


def _resolve(owner: GraphModule, name: str, value: Any) -> Any:
    """Turn an argument into a comparable value.

    get_attr nodes become their tensors, other nodes become a RuntimeValue
    naming the producing op, and integer ScalarType defaults (the schema's
    `output_dtype=6`) become torch.dtype so that explicit and defaulted
    arguments compare equal.
    """
    if isinstance(value, Node):
        if value.op == "get_attr":
            return _fetch_attr(owner, value.target)
        return RuntimeValue(_describe_producer(value))
    if isinstance(value, (list, tuple)):
        return tuple(_resolve(owner, name, item) for item in value)
    if name.endswith("dtype") and type(value) is int:
        return torch.ops.aten.empty.memory_format([0], dtype=value).dtype
    return value


def _describe_producer(node: Node) -> str:
    if node.op == "call_function" and target_name(node.target) == "_operator.getitem":
        source, index = node.args
        return f"{_describe_producer(source)}[{index}]"
    if node.op == "call_function":
        return target_name(node.target)
    return node.op


def values_equal(a: Any, b: Any) -> bool:
    """Bit-exact equality: same dtype, shape and elements; scalars of the same type."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and (torch.equal(a, b) or _equal_with_matching_nans(a, b))
        )
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _equal_with_matching_nans(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exact equality where NaN matches NaN (torch.equal says NaN != NaN)."""
    return (a.is_floating_point() or a.is_complex()) and torch.allclose(
        a, b, rtol=0.0, atol=0.0, equal_nan=True
    )


def format_value(value: Any, limit: int = 8) -> str:
    """Readable, round-trip-exact rendering (floats via repr, tensors abridged)."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().flatten().tolist()
        shown = ", ".join(repr(x) for x in flat[:limit])
        more = f", ... ({len(flat)} values)" if len(flat) > limit else ""
        return f"tensor(shape={tuple(value.shape)}, dtype={value.dtype}, [{shown}{more}])"
    return repr(value)


def _format_field(name: str, value: Any) -> str:
    if name == "extras":
        return "(" + ", ".join(f"{key}={format_value(item)}" for key, item in value) + ")"
    return format_value(value)


def _describe_value_difference(ours: Any, reference: Any) -> str:
    if (
        isinstance(ours, torch.Tensor)
        and isinstance(reference, torch.Tensor)
        and ours.shape == reference.shape
        and ours.dtype == reference.dtype
    ):
        return _describe_tensor_difference(ours, reference)
    return ""


def _describe_tensor_difference(ours: torch.Tensor, reference: torch.Tensor) -> str:
    differs = ours != reference
    if ours.is_floating_point():
        differs &= ~(ours.isnan() & reference.isnan())
    count = int(differs.sum())
    if count == 0:
        return ""
    first = tuple(int(i) for i in differs.nonzero()[0])
    summary = f"{count} of {ours.numel()} elements differ"
    if ours.is_floating_point() or ours.is_complex():
        gap = (ours.double() - reference.double()).abs()[differs].max().item()
        summary += f", max |diff| {gap!r}"
    return (
        f"{summary}; first at index {first}: "
        f"ours {ours[first].item()!r}, reference {reference[first].item()!r}"
    )


def _op_count_differences(ours: Counter[str], reference: Counter[str]) -> list[str]:
    lines = []
    for name in sorted(set(ours) | set(reference)):
        if ours[name] != reference[name]:
            delta = ours[name] - reference[name]
            lines.append(f"  {name}: ours {ours[name]}, reference {reference[name]} ({delta:+d})")
    return lines


def _qparam_differences(ours: Sequence[QParamRecord], reference: Sequence[QParamRecord]) -> list[str]:
    header = f"  ours has {len(ours)} records, reference has {len(reference)}"
    for index, (mine, theirs) in enumerate(zip(ours, reference, strict=False)):
        differing = mine.differing_fields(theirs)
        if differing:
            return [
                header,
                f"  first difference at record #{index}:",
                *_record_table(mine, theirs, differing),
            ]
    if len(ours) == len(reference):
        return []
    longer, owner = (ours, "ours") if len(ours) > len(reference) else (reference, "reference")
    extra = longer[min(len(ours), len(reference))]
    return [
        header,
        f"  common prefix matches; first extra record in {owner}:",
        f"    {_location(extra)} {extra.node}: {extra.target} "
        f"scale={format_value(extra.scale)} zero_point={format_value(extra.zero_point)}",
    ]


def _keyed_qparam_differences(
    ours: dict[QDQKey, list[QParamRecord]], reference: dict[QDQKey, list[QParamRecord]]
) -> list[str]:
    total_ours = sum(map(len, ours.values()))
    total_reference = sum(map(len, reference.values()))
    header = (
        f"  ours has {total_ours} records, reference has {total_reference} (matched by what they connect)"
    )
    only: dict[str, list[QParamRecord]] = {"ours": [], "reference": []}
    for key in [*reference, *(key for key in ours if key not in reference)]:
        mine, theirs = ours.get(key, []), reference.get(key, [])
        for mine_record, their_record in zip(mine, theirs, strict=False):
            differing = mine_record.differing_fields(their_record)
            if differing:
                return [
                    header,
                    f"  first difference, for {_describe_key(key)}:",
                    *_record_table(mine_record, their_record, differing),
                ]
        only["ours"] += mine[len(theirs) :]
        only["reference"] += theirs[len(mine) :]
    lines = []
    for owner, records in only.items():
        for record in records[:5]:
            lines.append(
                f"  only in {owner}: {_location(record)} {record.node}: {record.target} "
                f"scale={format_value(record.scale)} zero_point={format_value(record.zero_point)}"
            )
        if len(records) > 5:
            lines.append(f"  ... and {len(records) - 5} more only in {owner}")
    return [header, *lines] if lines else []


def _describe_key(key: QDQKey) -> str:
    location, target, producer, consumers = key
    where = f"[{location}]" if location else "[top level]"
    source = producer[1] if producer[0] != "constant" else f"constant {producer[1]}{list(producer[2])}"
    return f"{where} {target} from {source} to {', '.join(consumers) or 'nothing'}"


def _location(record: QParamRecord) -> str:
    return f"[{record.location}]" if record.location else "[top level]"


def _record_table(ours: QParamRecord, reference: QParamRecord, differing: list[str]) -> list[str]:
    lines = [
        f"    nodes: ours {_location(ours)} {ours.node!r}, "
        f"reference {_location(reference)} {reference.node!r}"
    ]
    for name in _COMPARED_FIELDS:
        mine, theirs = getattr(ours, name), getattr(reference, name)
        if name not in differing:
            lines.append(f"      {name:<11} {_format_field(name, mine)}")
            continue
        lines.append(f"    * {name:<11} ours      {_format_field(name, mine)}")
        lines.append(f"      {'':<11} reference {_format_field(name, theirs)}")
        detail = _describe_value_difference(mine, theirs)
        if detail:
            lines.append(f"      {'':<11} {detail}")
    return lines


def _output_differences(ours: Any, reference: Any) -> list[str]:
    ours_leaves, ours_spec = tree_flatten(ours)
    reference_leaves, reference_spec = tree_flatten(reference)
    if ours_spec != reference_spec:
        return [f"  output structure differs: ours {ours_spec}, reference {reference_spec}"]
    lines = []
    for index, (mine, theirs) in enumerate(zip(ours_leaves, reference_leaves, strict=True)):
        if values_equal(mine, theirs):
            continue
        if (
            isinstance(mine, torch.Tensor)
            and isinstance(theirs, torch.Tensor)
            and (mine.shape, mine.dtype) == (theirs.shape, theirs.dtype)
        ):
            detail = _describe_tensor_difference(mine, theirs) or "values differ"
            lines.append(f"  output[{index}]: {detail}")
        else:
            lines.append(
                f"  output[{index}]: ours {_describe_leaf(mine)}, reference {_describe_leaf(theirs)}"
            )
    return lines


def _describe_leaf(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    return repr(value)


def _run(gm: GraphModule, example_inputs: tuple, role: str) -> Any:
    """Run under no_grad (see reference.torchao_ptq), naming the side that raised."""
    try:
        with torch.no_grad():
            return gm(*example_inputs)
    except Exception as error:
        raise RuntimeError(f"{role} raised while running on the example inputs") from error


def quantized_differences(
    ours: GraphModule,
    reference: GraphModule,
    example_inputs: tuple,
    qparam_matching: QParamMatching = "key",
) -> list[str]:
    """Every way `ours` differs from `reference`, as report lines (empty if none).

    `qparam_matching` pairs Q/DQ records by `qdq_key` ("key"), by
    `qdq_structural_key` ("structure") or by position in graph order
    ("graph-order").
    """
    if qparam_matching == "key":
        qparams = (
            "Q/DQ parameters differ (matched by what they connect):",
            _keyed_qparam_differences(qdq_params_by_key(ours), qdq_params_by_key(reference)),
        )
    elif qparam_matching == "structure":
        qparams = (
            "Q/DQ parameters differ (matched by the ops they connect):",
            _keyed_qparam_differences(
                qdq_params_by_key(ours, qdq_structural_key), qdq_params_by_key(reference, qdq_structural_key)
            ),
        )
    elif qparam_matching == "graph-order":
        qparams = (
            "Q/DQ parameters differ (graph order):",
            _qparam_differences(qdq_params(ours), qdq_params(reference)),
        )
    else:
        raise ValueError(
            f"qparam_matching must be 'key', 'structure' or 'graph-order', got {qparam_matching!r}"
        )
    report = []
    sections = (
        (
            "operator counts differ (call_function, HOP subgraphs included):",
            _op_count_differences(op_multiset(ours), op_multiset(reference)),
        ),
        qparams,
        (
            "outputs on the example inputs differ:",
            _output_differences(
                _run(ours, example_inputs, "ours"), _run(reference, example_inputs, "reference")
            ),
        ),
    )
    for title, lines in sections:
        if lines:
            report += [title, *lines]
    return report


def assert_same_quantized(
    ours: GraphModule,
    reference: GraphModule,
    example_inputs: tuple,
    qparam_matching: QParamMatching = "key",
) -> None:
    """Assert `ours` matches torchao's `reference` in ops, qparams and outputs.

    Q/DQ records are matched by `qdq_key` unless `qparam_matching` says
    "structure" (`qdq_structural_key`) or "graph-order".
    """
    report = quantized_differences(ours, reference, example_inputs, qparam_matching)
    if report:
        raise AssertionError("quantized model differs from the torchao reference\n" + "\n".join(report))
