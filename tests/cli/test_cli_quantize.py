"""The command line's main job, driven through click's test runner."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from pipeline import AuditLog
from pipeline.cli import main


def invoke(*arguments: str):
    return CliRunner().invoke(main, list(arguments), catch_exceptions=False, env={"COLUMNS": "200"})


def test_quantize_with_no_input_quantizes_the_demo_model(tmp_path):
    output = tmp_path / "demo.pt2"
    result = invoke("quantize", "--output", str(output), "--calibration", "random:2")
    assert result.exit_code == 0, result.output
    for stage in ("capture", "fold-bn", "annotate", "prepare", "calibrate", "convert", "fold-quantize"):
        assert stage in result.output
    assert "quantized_decomposed" in result.output
    assert f"audit log: {tmp_path / 'demo.audit.jsonl'}" in result.output
    program = torch.export.load(output)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "quantized_decomposed.dequantize_per_tensor.default" in targets
    log = AuditLog.load(tmp_path / "demo.audit.jsonl")
    assert [row["stage"] for row in log.summary()][:2] == ["capture", "fold-bn"]


def test_stages_prints_the_plan_with_reasons():
    result = invoke("stages", "--json")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    names = [row["stage"] for row in rows]
    assert names.index("capture") < names.index("annotate") < names.index("prepare") < names.index("convert")
    assert names.index("annotate") < names.index("fuse-conv-bn") < names.index("prepare")
    assert rows[names.index("prepare")]["why"] == [
        "after 'annotate': 'prepare' requires 'annotated', which 'annotate' ensures",
        "after 'fuse-conv-bn': 'prepare' requires 'annotated', which 'fuse-conv-bn' ensures",
    ]
    assert rows[names.index("fold-conv-bn")]["why"] == [
        "after 'convert': 'fold-conv-bn' requires 'quantized', which 'convert' ensures"
    ]
    assert names.index("fold-conv-bn") < names.index("duplicate-dq")


def test_audit_shows_a_nodes_history_and_lineage(tmp_path):
    invoke("quantize", "--output", str(tmp_path / "m.pt2"), "--calibration", "random:1")
    result = invoke("audit", str(tmp_path / "m.audit.jsonl"), "--node", "conv2d")
    assert result.exit_code == 0
    assert "graph.baseline" in result.output and "lineage:" in result.output


def test_an_unknown_quantizer_is_one_clear_error():
    result = CliRunner().invoke(main, ["quantize", "--quantizer", "nope"])
    assert result.exit_code == 1
    assert result.output.strip().startswith(
        "error: no quantizer named 'nope'; installed: symmetric, x86-inductor, xnnpack"
    )
    assert "Traceback" not in result.output


def test_a_bad_quantizer_option_names_it():
    result = CliRunner().invoke(main, ["quantize", "--option", "per_chanel=false"])
    assert result.exit_code == 1
    assert "symmetric has no option 'per_chanel'; its options: dynamic, per_channel, qat" in result.output


def test_stages_lists_the_offered_quantizers_and_models():
    quantizers = json.loads(invoke("stages", "--quantizers", "--json").output)
    assert {row["name"] for row in quantizers} >= {"symmetric", "x86-inductor", "xnnpack"}
    symmetric = next(row for row in quantizers if row["name"] == "symmetric")
    assert set(symmetric["options"]) == {"per_channel", "dynamic", "qat"}
    models = json.loads(invoke("stages", "--models", "--json").output)
    assert [row["name"] for row in models] == ["demo-cnn"]


def test_executorchs_xnnpack_quantizer_is_offered_by_name(tmp_path):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    from plugins.quantizers import xnnpack

    assert isinstance(xnnpack(), XNNPACKQuantizer)
    output = tmp_path / "xnnpack.pt2"
    result = invoke(
        "quantize",
        "--quantizer",
        "xnnpack",
        "--option",
        "per_channel=false",
        "--output",
        str(output),
        "--calibration",
        "random:2",
    )
    assert result.exit_code == 0, result.output
    program = torch.export.load(output)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "quantized_decomposed.dequantize_per_tensor.default" in targets
    assert "quantized_decomposed.dequantize_per_channel.default" not in targets


def test_print_after_change_shows_what_a_stage_changed_as_a_graph_diff(tmp_path):
    result = invoke(
        "quantize",
        "--print-after-change",
        "fold-quantize",
        "--print-after-change",
        "fuse-conv-bn",
        "--print-after-change",
        "port-metadata",
        "--output",
        str(tmp_path / "m.pt2"),
        "--calibration",
        "random:1",
    )
    assert result.exit_code == 0, result.output
    assert "--- before fold-quantize\n+++ after fold-quantize" in result.output
    assert "+%_frozen_param0 : [num_users=1] = get_attr[target=_frozen_param0]" in result.output
    removed = [line for line in result.output.splitlines() if line.startswith("-%quantize_per_channel")]
    assert len(removed) == 4
    assert "--- fuse-conv-bn skipped: not a QAT run" in result.output
    assert "--- port-metadata left the graph unchanged" in result.output
    assert "before prepare" not in result.output


def test_print_after_change_names_an_unknown_stage():
    result = CliRunner().invoke(main, ["quantize", "--print-after-change", "fold-quantise"])
    assert result.exit_code == 1
    assert "--print-after-change: no stage named 'fold-quantise'; the stages: all, capture," in result.output


def test_diff_shows_how_two_programs_differ(tmp_path):
    first, second = tmp_path / "a.pt2", tmp_path / "b.pt2"
    invoke("quantize", "--output", str(first), "--calibration", "random:1")
    invoke("quantize", "--skip", "fold-quantize", "--output", str(second), "--calibration", "random:1")
    result = invoke("diff", str(first), str(second))
    assert result.exit_code == 0
    assert result.output.startswith(f"--- {first}\n+++ {second}\n@@")
    assert any(line.startswith("+%quantize_per_channel") for line in result.output.splitlines())
    same = invoke("diff", str(first), str(first))
    assert same.output.startswith("the graphs are the same (")


def test_diff_of_a_file_that_is_no_program_is_one_clear_error(tmp_path):
    junk = tmp_path / "junk.pt2"
    junk.write_text("not a program")
    result = CliRunner().invoke(main, ["diff", str(junk), str(junk)])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == f"error: {junk} is not a torch.export program: BadZipFile: File is not a zip file"
    )


def test_qat_is_refused_by_the_command_line_with_the_way_to_do_it():
    result = CliRunner().invoke(main, ["quantize", "--option", "qat=true"])
    assert result.exit_code == 1
    assert "use pipeline.pt2e.prepare_qat_pt2e from Python, train, then convert_pt2e" in result.output
