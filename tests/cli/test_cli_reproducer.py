"""A stage failure writes a reproducer directory, and `replay` runs the failure again from it."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from click.testing import CliRunner

from pipeline import AuditLog
from pipeline.cli import main

BROKEN_MODELS = textwrap.dedent(
    '''
    import torch


    class InputWeight(torch.nn.Module):
        """A conv whose weight is a graph input, then a batch norm: fold-bn cannot fold it."""

        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x, w):
            return self.bn(torch.nn.functional.conv2d(x, w))


    def build():
        torch.manual_seed(0)
        return InputWeight().eval(), (torch.randn(1, 3, 6, 6), torch.randn(4, 3, 3, 3))
    '''
)


@pytest.fixture
def broken_factory(tmp_path, monkeypatch):
    (tmp_path / "broken_models.py").write_text(BROKEN_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "broken_models:build"


def run(*arguments: str):
    return CliRunner().invoke(main, list(arguments), env={"COLUMNS": "200"})


def test_a_failed_stage_writes_a_reproducer_naming_it(tmp_path, broken_factory):
    output = tmp_path / "out" / "m.pt2"
    result = run(
        "quantize", broken_factory, "--no-plugins", "--option", "per_channel=false", "-o", str(output)
    )
    assert result.exit_code == 1
    directory = tmp_path / "out" / "m.repro"
    assert f"reproducer: {directory} (run it again with `pt2e-pipeline replay {directory}`)" in result.output
    assert "Traceback" not in result.output
    assert not output.exists()
    record = json.loads((directory / "invocation.json").read_text())
    assert record["failed_stage"] == "fold-bn"
    assert record["source"] == broken_factory and record["options"] == ["per_channel=false"]
    assert "the graph input 'w'" in record["error"]
    assert [row["stage"] for row in json.loads((directory / "plan.json").read_text())][:2] == [
        "capture",
        "fold-bn",
    ]
    assert len(torch.load(directory / "calibration.pt", weights_only=True)) == 8
    events = AuditLog.load(directory / "audit.jsonl").events
    assert [e["stage"] for e in events if e["event"] == "stage.failed"] == ["fold-bn"]
    before = (directory / "before-fold-bn.txt").read_text()
    assert "call_function[target=torch.ops.aten.batch_norm.default]" in before
    program = torch.export.load(directory / "before-fold-bn.pt2")
    assert any(node.target == torch.ops.aten.batch_norm.default for node in program.graph.nodes)
    assert torch.export.load(directory / "model.pt2").example_inputs[0][1].shape == (4, 3, 3, 3)


def failed_run(tmp_path, factory: str):
    """A quantize run that fails in fold-bn, its reproducer in ``tmp_path / "r"``."""
    result = run(
        "quantize",
        factory,
        "--no-plugins",
        "-o",
        str(tmp_path / "m.pt2"),
        "--reproducer",
        str(tmp_path / "r"),
    )
    assert result.exit_code == 1
    return tmp_path / "r"


def test_replay_reproduces_the_failure_and_says_so(tmp_path, broken_factory):
    failed_run(tmp_path, broken_factory)
    result = run("replay", str(tmp_path / "r"))
    assert result.exit_code == 1
    assert "replaying" in result.output and "stage 'fold-bn' failed with:" in result.output
    assert "error: reproduced: the same stage failed again: stage 'fold-bn'" in result.output
    assert (tmp_path / "r" / "replay.audit.jsonl").exists()


def test_replay_after_a_fix_says_the_failure_is_gone(tmp_path, broken_factory):
    failed_run(tmp_path, broken_factory)
    invocation = tmp_path / "r" / "invocation.json"
    record = json.loads(invocation.read_text())
    invocation.write_text(json.dumps({**record, "skip": ["fold-bn"]}))
    result = run("replay", str(tmp_path / "r"))
    assert result.exit_code == 0, result.output
    assert "did not reproduce: the run succeeded (stage 'fold-bn' passed)" in result.output


def test_replay_of_a_directory_that_is_no_reproducer_is_one_clear_error(tmp_path):
    result = run("replay", str(tmp_path))
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {tmp_path} is not a reproducer: it has no invocation.json"
