"""``python -m pipeline`` is the ``pt2e-pipeline`` command."""

from pipeline.cli import main

main()
