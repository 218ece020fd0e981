"""The house rules of the package layout, checked on the source: which rooms may import which,
hooks attached all-or-none, roles read from tidy columns (never parsed from the display string)."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from probe.adapters import GatedAdapter, Site
from probe.hooks import hooks_attached, site_attachers
from probe.layers import GatedConv2d
from probe.recording.recorder import Recorder
from probe.rundir.roles import assign_roles, has_role

PACKAGE = Path(__file__).resolve().parent.parent / "probe"
DASHBOARDS = PACKAGE.parent / "dashboards"


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}  # `from . import x` imports a module
    return names


def room_imports(room: str) -> dict[str, set[str]]:
    """File -> the probe rooms it imports (``probe.X`` for the first level below probe)."""
    found = {}
    for path in sorted((PACKAGE / room).rglob("*.py")) if (PACKAGE / room).is_dir() else [PACKAGE / f"{room}.py"]:
        rooms = {".".join(name.split(".")[:2]) for name in imported_modules(path) if name.startswith("probe.")}
        found[str(path.relative_to(PACKAGE.parent))] = rooms
    return found


def test_import_checker_sees_relative_and_absolute_imports(tmp_path):
    """The checker itself: a known file's imports are found."""
    names = imported_modules(PACKAGE / "recording" / "loop.py")
    assert {"probe.adapters", "probe.rundir.settings", "probe.recording.recorder", "torch"} <= names


def test_nothing_in_probe_imports_dashboards_except_serve():
    offenders = {f for f, names in ((str(p), imported_modules(p)) for p in PACKAGE.rglob("*.py"))
                 if any(n == "dashboards" or n.startswith("dashboards.") for n in names)}
    assert offenders == {str(PACKAGE / "serve.py")}


@pytest.mark.parametrize("room", ["stats", "layers", "data"])
def test_foundation_rooms_import_nothing_above_them(room):
    allowed = {f"probe.{room}", "probe.errors"}
    bad = {f: rooms - allowed for f, rooms in room_imports(room).items() if rooms - allowed}
    assert not bad, bad


def test_stats_use_no_modules_and_no_pandas():
    for path in (PACKAGE / "stats").rglob("*.py"):
        names = imported_modules(path)
        assert "pandas" not in names and "torch.nn" not in names, path


def test_rundir_imports_no_model_code():
    model_code = {"probe.models", "probe.layers", "probe.adapters", "probe.recording", "probe.training",
                  "probe.analysis", "probe.viz", "probe.report"}
    bad = {f: rooms & model_code for f, rooms in room_imports("rundir").items() if rooms & model_code}
    assert not bad, bad


def test_dashboards_read_runs_through_probe_only():
    for path in DASHBOARDS.rglob("*.py"):
        for name in imported_modules(path):
            assert not name.startswith("probe.stats.") and not name.startswith("probe.recording.recorder"), (path, name)


# ---------------------------------------------------------------------------- hooks all-or-none
class RaisesOnThirdSite(GatedAdapter):
    """Registers a real hook on every site, then raises while attaching the third."""

    def __init__(self):
        self.calls = 0

    def geometry(self, module):
        return {"channels": module.gate.out_channels}

    def attach(self, module, sink):
        self.calls += 1
        handle = module.register_forward_hook(lambda *a: None)
        if self.calls == 3:
            raise RuntimeError("adapter failed on the third site")
        return [handle]


def four_gated_layers() -> nn.Module:
    return nn.Sequential(*[GatedConv2d(4 if i else 3, 4, 3) for i in range(4)])


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_an_adapter_that_raises_on_the_third_site_leaves_no_hook():
    model = four_gated_layers()
    adapter = RaisesOnThirdSite()
    sites = [Site(name, "gated", module, adapter, channels=4) for name, module in model.named_children()]
    with pytest.raises(RuntimeError, match="third site"):
        with Recorder(model, sites, n_labels=2):
            pass
    assert adapter.calls == 3 and hook_count(model) == 0
    model.train()
    adapter.calls = 0
    with pytest.raises(RuntimeError, match="third site"):  # the same through the helper itself
        with hooks_attached(model, site_attachers(sites, lambda name: None)):
            pass
    assert hook_count(model) == 0 and model.training


def test_hooks_an_adapter_did_not_return_are_removed_too():
    model = four_gated_layers()

    def sloppy():
        model[0].register_forward_hook(lambda *a: None)  # handle dropped
        return []

    with hooks_attached(model, [sloppy]):
        assert hook_count(model) == 1
    assert hook_count(model) == 0


def test_hooks_removed_when_the_model_raises():
    model = four_gated_layers()
    with pytest.raises(RuntimeError, match="channels"):
        with hooks_attached(model, [lambda: [model[1].register_forward_hook(lambda *a: None)]]):
            model(torch.zeros(1, 5, 8, 8))  # wrong channel count: the model raises
    assert hook_count(model) == 0


# ---------------------------------------------------------------------------- roles from tidy columns
def planted_tables(label: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Three channels: a strong hole channel, a channel strongly on class ``label``, and nothing."""
    channels = pd.DataFrame({"layer": "l", "channel": [0, 1, 2], "auc_hole": [0.9, 0.5, 0.5],
                             "q_hole": [0.001, 0.9, 0.9], "auc_sketch": [0.5, 0.5, 0.5], "q_sketch": [0.9] * 3})
    labels = pd.DataFrame({"layer": "l", "channel": [0, 1, 2], "label": label, "auc": [0.5, 0.95, 0.5], "trivial_auc": 0.6,
                           "joint_trivial_auc": 0.7, "joint_difference_low": [-0.3, 0.1, -0.3],
                           "q_value": [0.9, 0.001, 0.9]})
    return channels, labels


@pytest.mark.parametrize("label", ["pothole", "sketchbook", "valid_area", "none"])
def test_a_class_name_never_makes_a_hole_valid_or_sketch_channel(label):
    channels, labels = planted_tables(label)
    roles = assign_roles(channels, labels)
    frame = pd.concat([channels, roles], axis=1)
    assert list(has_role(frame, "hole")) == [True, False, False]
    assert list(has_role(frame, "valid")) == [False, False, False]
    assert list(has_role(frame, "sketch")) == [False, False, False]
    assert list(has_role(frame, "semantic")) == [False, True, False]
    assert list(has_role(frame, "none")) == [False, False, True]
    assert roles.role.iloc[1] == f"semantic:{label}" and roles.semantic_label.iloc[1] == label


def test_strongest_channels_do_not_read_the_class_name():
    from probe.analysis.interventions import strongest_channels

    channels, labels = planted_tables("pothole")
    frame = pd.concat([channels, assign_roles(channels, labels)], axis=1)
    picks = strongest_channels(frame, labels, per_role=1)
    # hole: channel 0; semantic: channel 1; none: channel 2 -- channel 1 is never picked as "hole"
    assert picks == [("l", 0), ("l", 1), ("l", 2)]
    assert np.isfinite(frame.auc_hole).all()


NAN = float("nan")


@pytest.mark.parametrize("trivial_auc,joint_auc,joint_low,semantic", [
    (0.6, 0.7, 0.1, True), (0.92, 0.7, 0.1, False), (0.899, 0.7, 0.1, True), (NAN, 0.7, 0.1, False),
    (0.6, 0.92, 0.1, False), (0.6, 0.899, 0.1, True), (0.6, NAN, 0.1, False), (0.6, 0.7, -0.01, False),
    (0.6, 0.7, NAN, False)])
def test_semantic_needs_the_gate_to_beat_the_trivial_features_alone_and_together(trivial_auc, joint_auc, joint_low,
                                                                                 semantic):
    """auc 0.95 vs the best single trivial feature and the joint baseline: semantic only with a
    margin of 0.05 over both and the joint difference's interval above 0 (none without a control)."""
    channels, labels = planted_tables("road")
    labels["trivial_auc"], labels["joint_trivial_auc"] = trivial_auc, joint_auc
    labels.loc[1, "joint_difference_low"] = joint_low
    frame = pd.concat([channels, assign_roles(channels, labels)], axis=1)
    assert bool(has_role(frame, "semantic").iloc[1]) == semantic


# ---------------------------------------------------------------------------- whose error is it
class RaisingModel(nn.Module):
    accepts_sketch = False

    def __init__(self):
        super().__init__()
        self.g = GatedConv2d(3, 4, 3)
        self.bad = nn.Conv2d(4, 3, 1)

    def forward(self, image, hole, sketch=None):
        x = self.g(image)
        if x.shape[-1] > 0:
            raise ValueError("the user's forward is broken")
        return self.bad(x)


def test_an_error_in_the_users_model_names_the_module(tmp_path):
    import probe

    with pytest.raises(probe.UserModelError, match="RaisingModel.*the user's forward is broken") as info:
        probe.record(RaisingModel(), probe.Scenes(size=32, n=4), tmp_path / "run", progress=False)
    assert isinstance(info.value.original, ValueError)


def test_an_error_in_gateprobes_own_hook_is_a_bug_not_the_users(tmp_path, monkeypatch):
    """A hook of ours that raises inside the model's forward keeps its own type and traceback."""
    import probe
    from probe.stats.layer_stats import GatedLayerStats

    def broken(self, *args, **kwargs):
        raise KeyError("a bug in gateprobe")

    monkeypatch.setattr(GatedLayerStats, "add", broken)
    with pytest.raises(KeyError, match="a bug in gateprobe"):
        probe.record(probe.create_model("gated-scenes", width=8, image_size=32), probe.Scenes(size=32, n=4),
                     tmp_path / "run", progress=False)
