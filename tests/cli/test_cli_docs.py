"""docs/cli.md shows every command's --help as the command prints it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
HELP_BLOCK = re.compile(r"```text\n\$ pt2e-pipeline ((?:\w+ )?)--help\n(.*?)```", re.DOTALL)


def documented_help() -> dict[str, str]:
    return {command.strip(): text for command, text in HELP_BLOCK.findall(DOCS.read_text())}


def test_every_command_has_its_help_in_the_docs():
    assert set(documented_help()) == {"", *main.commands}


@pytest.mark.parametrize("command", sorted(documented_help()))
def test_the_documented_help_is_what_the_command_prints(command):
    arguments = [command, "--help"] if command else ["--help"]
    printed = CliRunner().invoke(main, arguments, prog_name="pt2e-pipeline", terminal_width=80).output
    assert printed == documented_help()[command]
