"""Every bad input to the command line is one `error:` line, exit status 1, no traceback, nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.pt").write_text("not a tensor file")
    (tmp_path / "junk.pt2").write_text("not a program")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save([], tmp_path / "no-batches.pt")
    return tmp_path


CASES = [
    (["quantize", "--calibration", "junk.pt"], "cannot read calibration batches from junk.pt: "),
    (["quantize", "--calibration", "missing.pt"], "no such calibration file: missing.pt"),
    (["quantize", "--calibration", "no-batches.pt"], "no-batches.pt must hold a non-empty list of batches"),
    (
        ["quantize", "--calibration", "random:0"],
        "--calibration random:N needs a positive count, got 'random:0'",
    ),
    (["quantize", "--stop-after", "nope"], "no stage named 'nope' in the plan; stages: capture, "),
    (["quantize", "--skip", "capture"], "stage 'capture' (plugin builtin (pt2e-pipeline "),
    (["quantize", "junk.pt2"], "junk.pt2 is not a torch.export program: "),
    (["quantize", "missing.pt2"], "no such file: missing.pt2"),
    (["quantize", "nomodule:build"], "cannot import 'nomodule' for 'nomodule:build'"),
    (["quantize", "json:nothing_here"], "'json:nothing_here': json has no callable 'nothing_here'"),
    (["quantize", "--model", "nope"], "no model named 'nope'"),
    (["quantize", "--option", "per_channel"], "--option takes name=value, got 'per_channel'"),
    (
        ["quantize", "--plugins", "nope"],
        "allow names no installed plugin or distribution: 'nope'; installed: ",
    ),
    (["audit", "missing.jsonl"], "cannot read audit log missing.jsonl: "),
    (["audit", "junk.pt2"], "junk.pt2:1: not a JSON object: "),
    (["diff", "junk.pt2", "junk.pt2"], "junk.pt2 is not a torch.export program: "),
    (["replay", "."], ". is not a reproducer: it has no invocation.json"),
]


@pytest.mark.parametrize(("arguments", "message"), CASES, ids=[" ".join(case[0]) for case in CASES])
def test_bad_input_is_one_clear_error(workdir, arguments, message):
    before = sorted(path.name for path in workdir.iterdir())
    result = CliRunner().invoke(main, arguments, env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output
    after = sorted(path.name for path in workdir.iterdir())
    assert [name for name in after if name not in before and not name.endswith(".audit.jsonl")] == []


def test_debug_shows_the_traceback_instead(workdir):
    result = CliRunner().invoke(main, ["--debug", "quantize", "--calibration", "missing.pt"])
    assert result.exit_code == 1
    assert isinstance(result.exception, Exception)
    assert "no such calibration file: missing.pt" in str(result.exception)


def test_usage_errors_are_click_s_exit_status_2(workdir):
    result = CliRunner().invoke(main, ["quantize", "--check", "loud"])
    assert result.exit_code == 2
    assert "Invalid value for '--check': 'loud' is not one of 'strict', 'warn', 'off'." in result.output


def test_audit_filters_by_stage_and_action_and_prints_json(workdir):
    runner = CliRunner()
    assert runner.invoke(main, ["quantize", "--calibration", "random:1"]).exit_code == 0
    result = runner.invoke(
        main, ["audit", "quantized.audit.jsonl", "--node", "conv2d", "--stage", "fold-bn", "--json"]
    )
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert events and {event["stage"] for event in events} == {"fold-bn"}
    created = runner.invoke(
        main,
        [
            "audit",
            "quantized.audit.jsonl",
            "--node",
            "quantize_per_tensor_default",
            "--action",
            "created",
            "--json",
        ],
    )
    lines = [json.loads(line) for line in created.output.splitlines() if line.startswith("{")]
    assert [event["event"] for event in lines] == ["node.created"]
    assert {"scale", "zero_point"} <= set(lines[0]["details"])
