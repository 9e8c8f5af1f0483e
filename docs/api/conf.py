"""Sphinx configuration of the API reference (built in CI with warnings as errors: ``sphinx-build -W``)."""

import importlib.metadata
import os
import sys

sys.path.insert(0, os.path.abspath("../.."))

project = "lens_digits"
author = "lens_digits contributors"
release = importlib.metadata.version("lens-digits")
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_attr_annotations = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_mock_imports = ["ray"]
nitpicky = False
html_theme = "furo"
html_title = f"lens_digits {release}"
suppress_warnings = ["ref.python"]
exclude_patterns = ["_build"]
