"""Executors of a sweep's runs: ``local`` (here, one after another or in parallel), ``slurm``, ``ray``.

Each module has ``run_jobs(jobs, ctx)``: run every :class:`mtlkit.sweep.worker.RunJob` through
:func:`mtlkit.sweep.worker.execute` somewhere, call ``ctx.progress.started`` / ``ctx.report``
as runs start and end, and ``ctx.settle`` for a job whose worker died without recording it.
"""
