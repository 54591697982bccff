"""Reports of runs and sweeps: the paper-layout results table, figures and provenance (Markdown + HTML).

``make_report(paths, out)`` is what ``mtlkit report`` calls; the pieces are usable alone:
``runs.collect`` reads folders, ``table.build_tables`` makes the tables, ``plots`` draws figures.
"""

from mtlkit.report.build import ReportFiles, ReportOptions, make_report
from mtlkit.report.runs import Run, collect
from mtlkit.report.table import ResultsTable, build_tables

__all__ = ["make_report", "ReportOptions", "ReportFiles", "collect", "Run", "build_tables", "ResultsTable"]
