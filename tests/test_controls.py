"""Controls and known answers for the claims: P4 from every mask channel, the random-init
baseline in the G rows, block image groups, the AUC error bound."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

import probe
from probe.adapters import PartialAdapter, register_adapter
from probe.data import Scenes
from probe.rundir.settings import RecordSettings
from probe.stats.readouts import auc_error_bound, auc_from_histograms


class TwoMaskPartial(nn.Module):
    """A planted partial layer whose updated mask has 4 channels: channels 0-1 one random valid
    mask, channels 2-3 another, independent one (``shared``: all four the same mask)."""

    def __init__(self, shared: bool):
        super().__init__()
        self.shared = shared
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x, valid):
        return self.conv(x) * valid[:, :1]


class TwoMaskAdapter(PartialAdapter):
    def geometry(self, module):
        return {"channels": 4, "kernel": 1, "stride": 1, "dilation": 1, "padding": 0, "window": 1.0}

    def attach(self, module, sink):
        def on_out(m, args, out):
            x, valid = args
            generator = torch.Generator().manual_seed(int(x.sum() * 1e3) % 2**31)
            a = (torch.rand(valid[:, :1].shape, generator=generator) < 0.5).float()
            b = a if m.shared else (torch.rand(valid[:, :1].shape, generator=generator) < 0.5).float()
            new_valid = torch.cat([a, a, b, b], 1)
            sink.partial(valid, new_valid, new_valid)

        return [module.register_forward_hook(on_out)]


register_adapter(TwoMaskPartial, TwoMaskAdapter())


class TwoMaskModel(nn.Module):
    accepts_sketch = False

    def __init__(self, shared: bool):
        super().__init__()
        self.layer = TwoMaskPartial(shared)

    def forward(self, image, hole, sketch=None):
        return self.layer(image, 1 - hole)[:, :3]


@pytest.mark.parametrize("shared,expected", [(True, 1.0), (False, 2.0)])
def test_p4_counts_every_mask_channel(shared, expected, tmp_path):
    """Two independent equal-variance masks give 2 distinct channel masks; one shared mask gives 1."""
    run = probe.record(TwoMaskModel(shared), Scenes(size=32, n=16), tmp_path / "run", progress=False)
    value = float(run.layers.effective_channels.iloc[0])
    assert value == pytest.approx(expected, abs=0.02 if not shared else 1e-9)


def test_auc_error_bound_contains_the_exact_auc():
    """Binned AUC vs sklearn on the same values: the error never exceeds the stated bound."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos, neg = rng.normal(0.3, 1, 400), rng.normal(0, 1, 600)
        edges = np.linspace(-4, 4, rng.integers(4, 64))
        hp, hn = np.histogram(pos, edges)[0], np.histogram(neg, edges)[0]
        exact = roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
        assert abs(auc_from_histograms(hp, hn) - exact) <= auc_error_bound(hp, hn) + 1e-12


def test_block_groups_keep_neighbours_together():
    settings = RecordSettings(groups=4).resolved(False, data_kind="folder")
    assert settings.group_by == "block"
    assert [settings.group_of(p, 8) for p in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    scenes = RecordSettings(groups=4).resolved(False, data_kind="scenes")
    assert scenes.group_by == "image" and [scenes.group_of(p, 8) for p in range(8)] == [0, 1, 2, 3, 0, 1, 2, 3]
    with pytest.raises(probe.SettingsError, match="--groups"):
        RecordSettings(group_by="pixels")


def _planted_state() -> dict:
    """``gated-scenes`` width 8 (seed 0) with every first-layer gate's logit = 12 * hole - 6 (it
    reads the hole channel): a trained stand-in whose gates follow the hole."""
    torch.manual_seed(0)
    model = probe.create_model("gated-scenes", width=8, image_size=32)
    with torch.no_grad():
        first = model.encoder[0].gate
        first.weight.zero_()
        first.bias.fill_(-6.0)
        first.weight[:, 3] = 12.0
    return model.state_dict()


@pytest.fixture(scope="module")
def trained_and_twin(tmp_path_factory):
    """A gated model whose gates follow the hole strongly (trained stand-in) and its random twin."""
    root = tmp_path_factory.mktemp("controls")
    data = Scenes(size=32, n=32)
    torch.manual_seed(0)
    model = probe.create_model("gated-scenes", width=8, image_size=32)
    model.load_state_dict(_planted_state())
    probe.record(model, data, root / "run", progress=False)
    twin = probe.recording.loop.record_baseline(model, data, root / "run", progress=False)
    partial = probe.record(probe.create_model("pconv-scenes", width=8, image_size=32), data, root / "pconv",
                           progress=False)
    return probe.load_run(root / "run"), twin, partial


def test_with_baseline_links_the_twin_and_the_claims_use_it(trained_and_twin):
    run, twin, partial = trained_and_twin
    assert run.manifest["baseline"] == f"../{twin.name}" and twin.manifest["baseline_of"] == f"../{run.name}"
    assert twin.manifest["model"]["source"] == "random-init"
    assert twin.manifest["settings"] == run.manifest["settings"] and twin.manifest["data"] == run.manifest["data"]
    table = probe.claims(partial, run).set_index("claim")  # the linked baseline, found by itself
    assert np.isfinite(table.loc[["G1", "G3", "G4"], "baseline"]).all()
    assert "no control" not in set(table.loc[["G1", "G3", "G4", "G5"], "verdict"])
    alone = probe.claims(partial, twin).set_index("claim")  # the twin has no baseline: no control
    assert set(alone.loc[["G1", "G3", "G4", "G5"], "verdict"]) == {"no control"}


def test_a_baseline_must_be_a_control(trained_and_twin, tmp_path):
    """The run itself, trained weights, other data or other settings are refused in one line."""
    run, twin, partial = trained_and_twin
    with pytest.raises(probe.RunError, match="itself"):
        probe.claims(partial, twin, baseline=twin)
    with pytest.raises(probe.RunError, match="not a random initialisation"):
        probe.claims(partial, twin, baseline=run)
    torch.manual_seed(1)
    other = probe.create_model("gated-scenes", width=8, image_size=32)
    other.source_info = {"name": "gated-scenes", "source": "random-init", "sha256": None}
    for name, data, settings, match in (("data", Scenes(size=32, n=16), None, "another data set"),
                                        ("settings", Scenes(size=32, n=32), RecordSettings(quantile=0.01),
                                         "another record settings"),
                                        ("width", Scenes(size=32, n=32), None, "another architecture")):
        model = probe.create_model("gated-scenes", width=4, image_size=32) if name == "width" else other
        model.source_info = other.source_info
        wrong = probe.record(model, data, tmp_path / name, settings=settings, progress=False)
        with pytest.raises(probe.RunError, match=match):
            probe.claims(partial, run, baseline=wrong)


def test_analyze_rebuilds_the_twin_so_that_g2_has_a_control(trained_and_twin):
    run, twin, partial = trained_and_twin
    assert twin.manifest["model"]["seed"] == 0 and twin.manifest["model"]["config"] == {"width": 8, "image_size": 32}
    model = probe.create_model("gated-scenes", width=8, image_size=32)
    model.load_state_dict(_planted_state())
    probe.analyze(run, model=model, n=16, ablate=False, attribute=False, progress=False)
    twin = probe.load_run(twin.path)
    assert twin.table("interventions") is not None  # drawn again from its seed, weights checked
    g2 = probe.claims(partial, run).set_index("claim").loc["G2"]
    assert np.isfinite(g2.baseline) and np.isfinite(g2.difference_low) and g2.verdict != "no control"


def test_random_against_a_random_twin_of_another_seed_supports_no_g_claim(tmp_path):
    data = Scenes(size=32, n=32)
    torch.manual_seed(0)
    model = probe.create_model("gated-scenes", width=8, image_size=32)
    run = probe.record(model, data, tmp_path / "random", progress=False)
    probe.recording.loop.record_baseline(model, data, tmp_path / "random", seed=1, progress=False)
    probe.analyze(run, model=model, n=16, ablate=False, attribute=False, progress=False)
    partial = probe.record(probe.create_model("pconv-scenes", width=8, image_size=32), data, tmp_path / "pconv",
                           progress=False)
    table = probe.claims(partial, probe.load_run(run.path)).set_index("claim")
    assert np.isfinite(table.loc[["G1", "G2", "G3", "G4", "G5"], "baseline"]).all()
    assert set(table.loc[["G1", "G2", "G3", "G4", "G5"], "verdict"]) <= {"not supported", "not applicable"}


def test_label_shuffle_null_breaks_label_relations_and_is_stored(trained_and_twin):
    from probe.analysis.controls import ShuffledLabels, label_null

    run, _, partial = trained_and_twin
    data = Scenes(size=32, n=32)
    null = ShuffledLabels(data, draw=0)
    assert len(null) == len(data) and null.classes == list(data.classes)
    moved = [not torch.equal(null[i]["labels"], data[i]["labels"]) for i in range(len(data))]
    assert all(moved)  # every image gets another's (shifted) label map ...
    assert torch.equal(null[3]["image"], data[3]["image"])  # ... and keeps its own pixels
    counts = np.bincount(torch.cat([null[i]["labels"].ravel() for i in range(32)]).numpy(), minlength=8)
    assert counts.sum() == 32 * 32 * 32
    torch.manual_seed(0)
    twin_model = probe.create_model("gated-scenes", width=8, image_size=32)
    table = label_null(twin_model, run, draws=2, progress=False)
    assert set(table.draw) == {0, 1} and set(table.family) == {"hole", "valid", "sketch", "semantic"}
    assert not list(run.path.glob(".null-*"))  # the temporary runs are gone
