"""The ``pt2e-pipeline`` command line.

``quantize`` runs the pipeline on a model and writes the quantized program and
its audit log; ``stages`` shows the plan; ``audit`` reads a log. Errors are one
clear message and a non-zero exit status; ``--debug`` shows the traceback.
"""

from pipeline.cli.main import main

__all__ = ["main"]
