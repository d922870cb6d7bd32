"""Sphinx configuration; `make docs` builds with warnings as errors."""

from __future__ import annotations

project = "django-replica-router"
author = "django-replica-router developers"
copyright = "2026, django-replica-router developers"

extensions = ["myst_parser"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
html_theme = "furo"
html_title = "django-replica-router"
exclude_patterns = ["_build"]
