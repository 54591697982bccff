"""Published results shipped with mtlkit (``report/references/*.tsv``) as reference rows for reports.

A reference file is a TSV with ``# key: value`` header lines (name, title, source, dataset,
protocol, setting; ``percent:`` lists the columns printed in percent, ``x100:`` those printed
times 100) and columns ``row``, ``params_ratio``, ``arch``, ``weighting`` and ``task/metric``. Values
are kept as published; :meth:`Reference.values` converts a row to the units of a table's protocol
(e.g. the MTAN paper's mIoU 15.10 % becomes 0.1510).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources

from mtlkit.errors import ConfigError
from mtlkit.metrics.protocols import PROTOCOLS, in_percent
from mtlkit.report.document import slug


def _folder():
    """The folder of the shipped reference files (package data of ``mtlkit.report``)."""
    return resources.files("mtlkit.report").joinpath("references")


@dataclass
class ReferenceRow:
    """One published row: its label, #P, architecture and weighting as printed, and its values."""

    name: str
    params_ratio: float | None
    arch: str
    weighting: str
    raw: dict[str, float]


@dataclass
class Reference:
    """One published table and where it comes from."""

    name: str
    meta: dict[str, str]
    rows: list[ReferenceRow] = field(default_factory=list)

    @property
    def protocol(self) -> str:
        """The evaluation protocol of the published numbers (first word of ``# protocol:``)."""
        return self.meta.get("protocol", "").split(" ")[0]

    @property
    def source(self) -> str:
        """Paper / repository, table, protocol: one line for captions."""
        return f"{self.meta.get('source', '?')} Protocol: {self.meta.get('protocol', '?')}."

    def row(self, name: str) -> ReferenceRow:
        """The row named ``name`` (case and punctuation ignored); ConfigError listing the rows if none."""
        for r in self.rows:
            if slug(r.name) == slug(name):
                return r
        raise ConfigError(f"reference {self.name!r} has no row {name!r}; rows: {', '.join(r.name for r in self.rows)}")

    def values(self, row: ReferenceRow, protocol: str) -> dict[str, float]:
        """``row``'s values in the units a run evaluated under ``protocol`` reports them."""
        pct = set(self.meta.get("percent", "").split())
        x100 = set(self.meta.get("x100", "").split())
        out = {}
        for key, v in row.raw.items():
            metric = key.split("/")[-1]
            scale = 100.0 if in_percent(protocol, metric) else 1.0
            if key in pct or key in x100:
                scale /= 100.0
            out[key] = v * scale
        return out


def available() -> list[str]:
    """Names of the shipped reference tables."""
    return sorted(p.name[:-4] for p in _folder().iterdir() if p.name.endswith(".tsv"))


def load_reference(name: str) -> Reference:
    """The shipped reference table ``name``; ConfigError naming the available ones if unknown."""
    if name not in available():
        raise ConfigError(f"--reference {name!r}: unknown; available: {', '.join(available())}")
    return parse_reference(_folder().joinpath(f"{name}.tsv").read_text(encoding="utf-8"), name)


def parse_reference(text: str, name: str) -> Reference:
    """A reference table from its TSV text (see the module docstring for the format)."""
    meta: dict[str, str] = {}
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            meta[key.strip()] = value.strip()
        elif line.strip():
            lines.append(line.split("\t"))
    if not lines or lines[0][:4] != ["row", "params_ratio", "arch", "weighting"]:
        raise ConfigError(f"reference {name!r}: header must start with row, params_ratio, arch, weighting")
    if meta.get("protocol", "").split(" ")[0] not in (*PROTOCOLS, "other"):
        raise ConfigError(f"reference {name!r}: unknown protocol {meta.get('protocol')!r}")
    header, ref = lines[0], Reference(meta.get("name", name), meta)
    for cells in lines[1:]:
        if len(cells) != len(header):
            raise ConfigError(f"reference {name!r}: row {cells[0]!r} has {len(cells)} cells, header {len(header)}")
        raw = {k: float(v) for k, v in zip(header[4:], cells[4:]) if v.strip()}
        ratio = float(cells[1]) if cells[1].strip() else None
        ref.rows.append(ReferenceRow(cells[0], ratio, cells[2], cells[3], raw))
    if any(not math.isfinite(v) for r in ref.rows for v in r.raw.values()):
        raise ConfigError(f"reference {name!r}: non-finite value")
    return ref
