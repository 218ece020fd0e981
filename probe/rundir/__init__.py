"""The run directory, the one contract between ``record`` and everything downstream.

    RUN/manifest.json       schema, versions, model, data spec, settings, layers; "complete"
    RUN/layers.parquet      one row per recorded layer
    RUN/channels.parquet    one row per (gated layer, channel)
    RUN/labels.parquet      one row per (gated layer, channel, label)
    RUN/evolution.parquet   one row per partial layer
    RUN/state.safetensors   the raw accumulators (exact merge of shards, recomputation)
    RUN/samples/            the first K images: inputs/*.npy and one .npy per (map kind, layer),
                            float16 [K, C, h, w], memory-mapped so one channel reads alone

Modules: :mod:`.run` (reading: :class:`Run`), :mod:`.files` (atomic writes), :mod:`.folder`
(creating and replacing run folders), :mod:`.settings` (RecordSettings, run identity),
:mod:`.tables` and :mod:`.roles` (tables from accumulators), :mod:`.state` and :mod:`.samples`
(stored state and samples), :mod:`.write` (a finished run), :mod:`.merge` (shards into one run).
``rundir`` imports no model code.
"""
from .run import Run, load_run

__all__ = ["Run", "load_run"]
