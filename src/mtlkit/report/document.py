"""A small document model that the Markdown and HTML writers both render, so the two never disagree."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Cell:
    """One table cell: its text, whether it is the best of its column (bold), an optional tooltip."""

    text: str
    bold: bool = False
    title: str | None = None
    extra: str | None = None  # shown after the text, never bold (spread over seeds, marks)
    muted: bool = False  # greyed (reference rows)


@dataclass
class Table:
    """A table; ``groups`` is an optional row of (label, column span) above the headers."""

    headers: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    groups: list[tuple[str, int]] | None = None
    align: list[str] | None = None  # per column: "l" or "r"


@dataclass
class Figure:
    """A PNG written next to the report (``path`` relative to the report folder) with its caption."""

    path: Path
    caption: str


@dataclass
class Paragraph:
    """A paragraph of text (``code`` and **bold** markup allowed)."""

    text: str


@dataclass
class Note:
    """A remark the reader must not miss (a skipped section and why)."""

    text: str


@dataclass
class BulletList:
    """A bulleted list of short text items."""

    items: list[str]


@dataclass
class Section:
    """A titled part of the document (level 2 = top level) holding blocks."""

    title: str
    blocks: list = field(default_factory=list)
    level: int = 2

    @property
    def anchor(self) -> str:
        """The link target of the section (its title as a slug)."""
        return slug(self.title)


@dataclass
class Document:
    """The whole report: title, intro blocks, sections."""

    title: str
    sections: list[Section] = field(default_factory=list)
    intro: list = field(default_factory=list)


def slug(text: str) -> str:
    """A lowercase identifier made of letters, digits and dashes (anchors, file names)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def file_slug(text: str) -> str:
    """``text`` with anything but letters, digits, ``.``, ``_`` and ``-`` replaced (file names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"
