"""Sphinx configuration for the pt2e-pipeline documentation.

Build from the repository root:

    sphinx-build -W --keep-going -b html docs docs/_build/html
    sphinx-build -W --keep-going -b doctest docs docs/_build/doctest
"""

import doctest

project = "pt2e-pipeline"
author = "pt2e-pipeline contributors"
copyright = "pt2e-pipeline contributors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]
nitpicky = False

# MyST: ::: fences, and anchors for headings down to ### so pages can link to sections.
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"

html_theme = "alabaster"

# Doctests run with the repository root as the working directory. Every group starts with torch
# and pipeline imported, and torch.export warmed up once, so that each example runs quickly.
doctest_global_setup = """
import torch
import pipeline
torch.export.export(torch.nn.ReLU(), (torch.zeros(1),))
"""

# Check exception messages too (Sphinx ignores their detail by default).
doctest_default_flags = doctest.ELLIPSIS | doctest.DONT_ACCEPT_TRUE_FOR_1

# Wider pages: the examples and the plan tables are up to 120 columns wide.
html_theme_options = {"page_width": "80rem", "sidebar_width": "15rem"}
