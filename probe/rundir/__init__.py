"""The run directory, the one contract between ``record`` and everything downstream (its files
are listed in :mod:`.run`).

Modules: :mod:`.run` (reading: :class:`Run`), :mod:`.files` (atomic writes), :mod:`.folder`
(creating and replacing run folders), :mod:`.settings` (RecordSettings, run identity),
:mod:`.tables` and :mod:`.roles` (tables from accumulators), :mod:`.state` and :mod:`.samples`
(stored state and samples), :mod:`.write` (a finished run), :mod:`.merge` (shards into one run).
``rundir`` imports no model code.
"""
from .run import Run, load_run

__all__ = ["Run", "load_run"]
