"""The ``pt2e-pipeline`` command group."""

from __future__ import annotations

import logging

import click

from pipeline.cli.changes import diff
from pipeline.cli.inspect import audit, stages
from pipeline.cli.quantize import quantize
from pipeline.cli.replay import replay

NOISY_IMPORT_LOGGERS = ("torchao", "torch.utils._pytree")
"""Loggers that warn at import about optional CUDA kernels and deprecations, harmless on CPU."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the full traceback of an error, and import-time warnings.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """pt2e-pipeline: PyTorch PT2E quantization as a verified, audited pipeline of plugin stages."""
    ctx.obj = {"debug": debug}
    if not debug:
        for name in NOISY_IMPORT_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


main.add_command(quantize)
main.add_command(stages)
main.add_command(audit)
main.add_command(diff)
main.add_command(replay)
