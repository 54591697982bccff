"""Render a report document as one self-contained HTML file: inline CSS, PNGs embedded as base64."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from mtlkit.report.document import BulletList, Cell, Document, Figure, Note, Paragraph, Table

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1280px; padding: 0 1.5em; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ccc; padding-bottom: .15em; }
h3 { margin-top: 1.5em; }
nav ul { columns: 2; }
table { border-collapse: collapse; margin: 1em 0 .3em; font-size: 13px; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; white-space: nowrap; }
thead th { background: #f1f1f4; border-bottom: 2px solid #999; }
thead tr.groups th { border-bottom: 1px solid #999; text-align: center; }
td.r { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:hover { background: #fafae6; }
td.muted { color: #8a8a8a; background: #f7f7f7; font-style: italic; }
span.extra { font-size: 11px; color: #666; }
.caption { font-size: 12px; color: #555; margin-bottom: 1.2em; }
.scroll { overflow-x: auto; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e2e2e2; }
figcaption { font-size: 12px; color: #555; }
.note { background: #fff6dd; border-left: 4px solid #e0a800; padding: .4em .8em; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
"""


def inline(text: str) -> str:
    """Escape text, then turn ``code`` and **bold** markup into HTML."""
    out = html.escape(text)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _cell(cell: Cell, tag: str, align: str) -> str:
    classes = " ".join(c for c, on in (("r", align == "r"), ("muted", cell.muted)) if on)
    cls = f' class="{classes}"' if classes else ""
    title = f' title="{html.escape(cell.title)}"' if cell.title else ""
    text = html.escape(cell.text)
    if cell.bold:
        text = f"<b>{text}</b>"
    if cell.extra:
        text += f' <span class="extra">{html.escape(cell.extra)}</span>'
    return f"<{tag}{cls}{title}>{text}</{tag}>"


def table(t: Table) -> str:
    """An HTML table with an optional grouped header row and the caption below it."""
    align = t.align or ["l"] * len(t.headers)
    head = []
    if t.groups and any(label for label, _ in t.groups):
        head.append(
            '<tr class="groups">'
            + "".join(f'<th colspan="{span}">{html.escape(label)}</th>' for label, span in t.groups)
            + "</tr>"
        )
    head.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in t.headers) + "</tr>")
    body = ["<tr>" + "".join(_cell(c, "td", a) for c, a in zip(row, align)) + "</tr>" for row in t.rows]
    out = f'<div class="scroll"><table><thead>{"".join(head)}</thead><tbody>{"".join(body)}</tbody></table></div>'
    if t.caption:
        out += f'<div class="caption">{inline(t.caption)}</div>'
    return out


def figure(fig: Figure, root: Path) -> str:
    """A figure with its PNG embedded as a data: URI (the file must exist under ``root``)."""
    data = base64.b64encode((root / fig.path).read_bytes()).decode("ascii")
    alt = html.escape(fig.caption, quote=True)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{inline(fig.caption)}</figcaption></figure>"
    )


def render(doc: Document, root: Path) -> str:
    """The document as one HTML page; ``root`` is the folder the figures' paths are relative to."""
    parts = [f"<h1>{html.escape(doc.title)}</h1>"]
    parts += [_block(b, root) for b in doc.intro]
    tops = [s for s in doc.sections if s.level == 2]
    if len(tops) > 2:
        parts.append(
            "<nav><ul>"
            + "".join(f'<li><a href="#{s.anchor}">{html.escape(s.title)}</a></li>' for s in tops)
            + "</ul></nav>"
        )
    for section in doc.sections:
        lvl = section.level
        parts.append(f'<h{lvl} id="{section.anchor}">{html.escape(section.title)}</h{lvl}>')
        parts += [_block(b, root) for b in section.blocks]
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(doc.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n"
        f"</body>\n</html>\n"
    )


def _block(block, root: Path) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{inline(block.text)}</p>"
    if isinstance(block, Note):
        return f'<p class="note"><b>Note:</b> {inline(block.text)}</p>'
    if isinstance(block, BulletList):
        return "<ul>" + "".join(f"<li>{inline(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Table):
        return table(block)
    if isinstance(block, Figure):
        return figure(block, root)
    raise TypeError(f"cannot render {type(block).__name__} as HTML")
