"""Known-answer tests of the analysis (issue 5) and the report (issue 7).

A planted gated layer whose channels are set by hand (hole detector, sketch detector, blue-colour
detector, constant, and pure noise independent of the image) is recorded on Scenes; the analysis
must recover every planted role and give ``none`` to the constant and the noise channels (no false
discovery at q < 0.05), the interventions must give the effects the construction implies, and the
report built from these runs must be complete, offline and agree with ``probe.claims``.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import probe
from probe.analysis.attribution import attribute_channels
from probe.analysis.interventions import ablation, sketch_intervention
from probe.data import Scenes
from probe.layers import GatedConv2d
from probe.report import SECTIONS, build_report

HOLE, SKETCH, BLUE, CONSTANT, NOISE = range(5)


class PlantedGates(nn.Module):
    """One 1x1 GatedConv2d over [image * valid (3), hole, sketch * hole, noise]; gates by hand."""

    accepts_sketch = True

    def __init__(self):
        super().__init__()
        self.gated = GatedConv2d(6, 5, 1, activation=None)
        self.to_rgb = nn.Conv2d(5, 3, 1)
        with torch.no_grad():
            w = torch.zeros(5, 6)
            b = torch.zeros(5)
            w[HOLE, 3], b[HOLE] = 20.0, -10.0          # +10 in the hole, -10 outside
            w[SKETCH, 4], b[SKETCH] = 20.0, -10.0      # +10 on sketch strokes
            w[BLUE, 2], w[BLUE, 0], b[BLUE] = 12.0, -12.0, -2.0   # blue minus red: sky and water
            w[NOISE, 5], b[NOISE] = 8.0, -4.0          # noise only
            self.gated.gate.weight.copy_(w.view(5, 6, 1, 1))
            self.gated.gate.bias.copy_(b)
            self.gated.feature.weight.normal_(generator=torch.Generator().manual_seed(0))

    def forward(self, image, hole, sketch=None):
        sketch = torch.zeros_like(hole) if sketch is None else sketch
        noise = torch.rand(hole.shape, generator=torch.Generator().manual_seed(int(image.sum() * 1e4) % 2**31))
        x = torch.cat([image * (1 - hole), hole, sketch * hole, noise], 1)
        return self.to_rgb(self.gated(x))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    torch.manual_seed(0)
    data = Scenes(size=32, n=96, seed=1)
    gated = probe.record(PlantedGates(), data, root / "gated", batch_size=16, samples=4, progress=False)
    partial = probe.record(probe.create_model("pconv-scenes", width=8, image_size=32), data, root / "pconv",
                           batch_size=16, samples=4, progress=False)
    return gated, partial, data


def roles(run):
    return dict(zip(run.channels.channel, run.channels.role))


def test_planted_roles_are_recovered_without_false_discoveries(runs):
    gated, _, _ = runs
    r = roles(gated)
    assert "hole" in r[HOLE].split("+")
    assert "sketch" in r[SKETCH].split("+")
    # blue minus red separates sky and water (AUC >= 0.7, q < 0.05), but so does a trivial colour
    # feature at the same resolution: appearance, not semantics, so no semantic role (the control)
    blue = gated.labels[(gated.labels.channel == BLUE) & (gated.labels.auc >= 0.7) & (gated.labels.q_value < 0.05)]
    assert len(blue) > 0
    assert (blue.trivial_auc + 0.05 > blue.auc).all() and set(blue.trivial_feature) <= {"mean_red", "mean_green",
                                                                                           "mean_blue"}
    assert not any(part.startswith("semantic:") for part in r[BLUE].split("+"))
    assert r[CONSTANT] == "none" and r[NOISE] == "none"
    noise_tests = gated.labels[gated.labels.channel == NOISE]
    assert (noise_tests.q_value.dropna() >= 0.05).all()
    ch = gated.channels.set_index("channel")
    assert ch.at[CONSTANT, "auc_hole"] == pytest.approx(0.5) and ch.at[NOISE, "auc_hole"] == pytest.approx(0.5, abs=0.02)


class IndependentNoise(nn.Module):
    """k gate channels, each reading its own noise input (``shared`` = all read the first one)."""

    accepts_sketch = False

    def __init__(self, k: int, shared: bool):
        super().__init__()
        self.k = k
        self.gated = GatedConv2d(k, k, 1, activation=None)
        with torch.no_grad():
            w = torch.zeros(k, k)
            w[:, 0] = 3.0 if shared else 0.0
            if not shared:
                w += torch.eye(k) * 3.0
            self.gated.gate.weight.copy_(w.view(k, k, 1, 1))
            self.gated.gate.bias.zero_()

    def forward(self, image, hole, sketch=None):
        noise = torch.randn((image.shape[0], self.k) + image.shape[2:], generator=torch.Generator().manual_seed(1))
        return self.gated(noise)[:, :3]


@pytest.mark.parametrize("shared, expected", [(False, 4.0), (True, 1.0)])
def test_diversity_counts_independent_gates(tmp_path, shared, expected):
    run = probe.record(IndependentNoise(4, shared), Scenes(size=32, n=32, seed=1), tmp_path / "run", progress=False)
    assert run.layers.effective_channels.iloc[0] == pytest.approx(expected, rel=0.05)


def test_partial_layers_measure_exactly_one_mask(runs):
    _, partial, _ = runs
    varying = partial.layers.effective_channels.dropna()
    assert len(varying) >= 1 and np.allclose(varying, 1.0, rtol=0, atol=1e-9)


def test_sketch_intervention_moves_only_the_sketch_channel(runs):
    _, _, data = runs
    effects = sketch_intervention(PlantedGates(), data, n=32, progress=False)
    gates = effects[effects.quantity == "gate_in_hole"].set_index("channel")
    assert gates.at[SKETCH, "delta"] < -0.01 and gates.at[SKETCH, "q_value"] < 0.05
    for c in (HOLE, BLUE, CONSTANT, NOISE):
        assert abs(gates.at[c, "delta"]) < 1e-6


def test_ablation_ranks_channels_and_leaves_no_hooks(runs):
    _, _, data = runs
    model = PlantedGates()
    table = ablation(model, data, [("gated", c) for c in range(5)], n=16, progress=False)
    assert sorted(table.channel) == list(range(5)) and list(table["rank"]) == [1, 2, 3, 4, 5]
    assert (np.diff(table.delta) <= 0).all()
    assert not any(m._forward_hooks for m in model.modules())


def test_attribution_points_at_the_input_each_gate_reads(runs):
    _, _, data = runs
    table = attribute_channels(PlantedGates(), data, [("gated", HOLE), ("gated", SKETCH)], n=4, steps=8,
                               progress=False)
    share = table.set_index(["channel", "group"]).share
    assert share[(HOLE, "hole")] > 0.9  # the hole gate reads only the hole mask
    # the sketch gate reads sketch * hole: along the straight path from (no hole, no sketch) the
    # product's effect splits between both factors, and nothing goes to the image
    assert share[(SKETCH, "sketch")] > 0.3 and share[(SKETCH, "image")] < 0.05


def test_claims_table_follows_its_rules(runs):
    gated, partial, _ = runs
    table = probe.claims(gated, partial).set_index("claim")  # either order
    assert list(table.index) == ["P1", "P2", "P3", "P4", "P5", "G1", "G2", "G3", "G4", "G5"]
    assert set(table.verdict) <= {"supported", "not supported", "not applicable", "no control"}
    # no baseline given or linked: no G row may say "supported"
    assert set(table.loc[["G1", "G3", "G4", "G5"], "verdict"]) == {"no control"}
    assert table.at["P4", "value"] == pytest.approx(1.0, abs=1e-9) and table.at["P4", "verdict"] == "supported"
    assert table.at["P5", "verdict"] == "supported"
    assert table.at["G2", "verdict"] == "not applicable"  # no sketch intervention stored in this run
    with pytest.raises(ValueError, match="one partial-convolution run and one gated run"):
        probe.claims(gated, gated)


def test_report_is_complete_offline_and_matches_claims(runs, tmp_path):
    gated, partial, _ = runs
    html_path, md_path = build_report([partial.path, gated.path], tmp_path / "r.html")
    html = html_path.read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in html
    assert html.count("<script") - html.count("Plotly.newPlot") == 1  # plotly.js inlined exactly once
    page = re.sub(r"<script>.*?</script>", "", html, count=1, flags=re.S)  # drop the library itself
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page
    ids = re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', html)
    assert ids and len(set(ids)) == len(ids)  # every figure has its own element
    again, _ = build_report([partial.path, gated.path], tmp_path / "again.html")
    assert again.read_text() == html  # the same runs give the same bytes
    claims = probe.claims(partial, gated)
    md = md_path.read_text()
    for row in claims.itertuples():
        assert re.search(rf"\| {row.claim} \| {row.verdict} \|", md)
        assert f"<td>{row.claim}</td>" in html
