"""Sphinx configuration: MyST Markdown pages, built offline with warnings as errors."""

from importlib.metadata import version as _version

project = "scdlkit"
author = "scdlkit developers"
copyright = "2026, scdlkit developers"
release = _version("scdlkit")

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
html_theme = "alabaster"
html_title = "scdlkit"
suppress_warnings = ["myst.xref_missing"]
