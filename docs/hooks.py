"""MkDocs hook: the generated navigation file (SUMMARY.md) is read, not published as a page."""

from __future__ import annotations

from mkdocs.plugins import event_priority
from mkdocs.structure.files import Files, InclusionLevel


@event_priority(-200)  # after mkdocs-literate-nav (priority -100) has read the navigation from it
def on_files(files: Files, config) -> Files:
    """Exclude SUMMARY.md from the build, so the site has no stray ``SUMMARY/`` page."""
    nav = files.get_file_from_path("SUMMARY.md")
    if nav is not None:
        nav.inclusion = InclusionLevel.EXCLUDED
    return files
