"""MkDocs hooks: the navigation file is not a page; Sphinx roles in docstrings read as plain code.

The generated navigation file (SUMMARY.md) is read by mkdocs-literate-nav, not published. Many
docstrings cross-reference with Sphinx roles (``:class:`Balancer```), which Markdown renders as
the role's name followed by code; the role's name is dropped from the rendered page.
"""

from __future__ import annotations

import re

from mkdocs.plugins import event_priority
from mkdocs.structure.files import Files, InclusionLevel


@event_priority(-200)  # after mkdocs-literate-nav (priority -100) has read the navigation from it
def on_files(files: Files, config) -> Files:
    """Exclude SUMMARY.md from the build, so the site has no stray ``SUMMARY/`` page."""
    nav = files.get_file_from_path("SUMMARY.md")
    if nav is not None:
        nav.inclusion = InclusionLevel.EXCLUDED
    return files


#: ``:class:`` (or ``:func:``, ``:mod:``, ...) right before a code span, as Markdown renders a Sphinx role
_SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):(?=<code>)")


def on_page_content(html: str, page, config, files) -> str:
    """Drop the Sphinx role names docstrings carry, keeping the code span they mark."""
    return _SPHINX_ROLE.sub("", html)
