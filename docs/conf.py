"""Sphinx configuration of the django-resilient-sessions documentation.

Built by ``make docs`` (``sphinx-build -W --keep-going -n``: every warning, unresolved
references included, fails the build). Pages are Markdown (MyST-Parser); the API
reference is autodoc of the real modules, so Django is set up first with the settings
in ``_ext/drs_docs_settings.py``. No intersphinx: the build runs without network.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE / "_ext")]

os.environ["DJANGO_SETTINGS_MODULE"] = "drs_docs_settings"

import django  # noqa: E402  (after the path and settings module are set)

django.setup()

from django_resilient_sessions import __version__  # noqa: E402

project = "django-resilient-sessions"
author = "django-resilient-sessions contributors"
copyright = "django-resilient-sessions contributors"
release = __version__
version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "drs_settings",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]
templates_path: list[str] = []

# MyST: anchors for headings down to ###, so pages link to sections as page.md#slug.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

html_theme = "furo"
html_title = f"django-resilient-sessions {release}"
html_static_path: list[str] = []

# autodoc: members in source order, documented members only, type hints in the
# description (signatures stay readable).
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

nitpicky = True
# Without intersphinx (no network), references to the standard library, Django and
# the other dependencies cannot resolve: they are ignored by name, and only they. So
# are the package's internal modules, which the API reference leaves out on purpose
# (their objects appear in the public modules' signatures). Any other unresolved
# reference (a typo, a renamed function, a setting that is gone) fails the build.
nitpick_ignore_regex = [
    (r"py:.*", r"(collections|contextlib|datetime|enum|typing|threading)(\..*)?"),
    # Django's classes that typing, testing and pytest_plugin import for type checking
    # only: autodoc sees their bare names.
    (r"py:class", r"(HttpRequest|Client|AsyncClient|AbstractBaseUser|BaseBackend)"),
    (r"py:.*", r"(django|django_redis|redis|asgiref|cryptography|ua_parser)(\..*)?"),
    (
        r"py:.*",
        r"django_resilient_sessions\.(breaker|cachecopy|client|codec|cookies|dbaccess|devices"
        r"|engine|ledger|lifecycle|outbox|purges|redisclient|trusttable)(\..*)?",
    ),
]
