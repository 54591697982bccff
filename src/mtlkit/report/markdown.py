"""Render a report document as Markdown (figures linked as relative PNG paths, tables as pipes)."""

from __future__ import annotations

import re

from mtlkit.report.document import BulletList, Cell, Document, Figure, Note, Paragraph, Table

_CODE_SPAN = re.compile(r"(`[^`]*`)")


def escape(text: str) -> str:
    """``text`` with ``&``, ``<`` and ``>`` as entities outside code spans: names from tasks.yaml or run
    folders are shown, never read as HTML by a Markdown renderer (as report.html escapes them)."""
    parts = _CODE_SPAN.split(text)
    return "".join(
        p
        if p.startswith("`") and p.endswith("`") and len(p) > 1
        else p.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        for p in parts
    )


def _cell(cell: Cell) -> str:
    text = escape(cell.text).replace("|", "\\|").replace("\n", " ")
    if cell.bold and text not in ("", "–"):
        text = f"**{text}**"
    elif cell.muted and text not in ("", "–"):
        text = f"*{text}*"
    return f"{text} {escape(cell.extra)}" if cell.extra else text


def table(t: Table) -> str:
    """A pipe table; task groups (if any) are folded into the headers as ``Group: header``."""
    headers = list(t.headers)
    if t.groups:
        i = 0
        for label, span in t.groups:
            if label:
                for j in range(i, i + span):
                    headers[j] = f"{label}: {headers[j]}"
            i += span
    align = t.align or ["l"] * len(headers)
    lines = [
        "| " + " | ".join(escape(h).replace("|", "\\|") for h in headers) + " |",
        "|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    out = "\n".join(lines)
    if t.caption:
        out += f"\n\n*{escape(t.caption)}*"
    return out


def render(doc: Document) -> str:
    """The whole document as Markdown text."""
    parts = [f"# {escape(doc.title)}"]
    parts += [_block(b) for b in doc.intro]
    if len(doc.sections) > 2:
        parts.append("\n".join(f"- [{escape(s.title)}](#{s.anchor})" for s in doc.sections if s.level == 2))
    for section in doc.sections:
        parts.append(f"{'#' * section.level} {escape(section.title)}")
        parts += [_block(b) for b in section.blocks]
    return "\n\n".join(parts) + "\n"


def _block(block) -> str:
    if isinstance(block, Paragraph):
        return escape(block.text)
    if isinstance(block, Note):
        return f"> **Note:** {escape(block.text)}"
    if isinstance(block, BulletList):
        return "\n".join(f"- {escape(item)}" for item in block.items)
    if isinstance(block, Table):
        return table(block)
    if isinstance(block, Figure):
        return f"![{escape(block.path.stem)}]({block.path.as_posix()})\n\n*{escape(block.caption)}*"
    raise TypeError(f"cannot render {type(block).__name__} as Markdown")
