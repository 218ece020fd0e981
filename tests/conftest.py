"""Fixtures shared by several test modules.

``scenes_runs``: the two small runs that the figure and dashboard tests read (random-init
``gated-scenes`` and ``pconv-scenes``, 16 Scenes images at 32x32, 4 samples, ``torch.manual_seed(0)``
first), recorded once per session into a folder nobody writes into; the fixture
:func:`copy_scenes_runs` gives a module its own copy to add files to.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def scenes_runs(tmp_path_factory) -> Path:
    """A folder holding the runs ``gated`` and ``pconv`` (do not write into it: copy it)."""
    import torch

    from probe.models.sources import resolve_model
    from probe.recording.loop import record

    root = tmp_path_factory.mktemp("scenes-runs")
    torch.manual_seed(0)
    record(resolve_model("gated-scenes", random_init=True), "scenes:32", root / "gated", n=16, samples=4,
           progress=False)
    record(resolve_model("pconv-scenes", random_init=True), "scenes:32", root / "pconv", n=16, samples=4,
           progress=False)
    return root


@pytest.fixture(scope="session")
def copy_scenes_runs(scenes_runs):
    """``copy(into)``: copies of the runs of :func:`scenes_runs` put into the folder ``into``; returns ``into``."""
    def copy(into: Path) -> Path:
        for name in ("gated", "pconv"):
            shutil.copytree(scenes_runs / name, into / name)
        return into

    return copy
