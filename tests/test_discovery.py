"""Discovery (issues 17 and 27): foreign generators (``tests/foreign_models.py``) recorded with no
adapter, checked against their true gates and masks, which the tests read with their own hooks."""
from __future__ import annotations

import copy
import warnings

import foreign_models as fm
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probe.adapters import find_sites, survey
from probe.data import collate, parse_data
from probe.errors import ModelError
from probe.hooks import UserState, hooks_attached, site_attachers
from probe.layers import GatedConv2d, HookPoint, PartialConv2d
from probe.models.ported.pconv_unet import LiuPConvUNet
from probe.recording.calibration import calibrate_binnings
from probe.recording.loop import record
from probe.recording.manifest import weights_sha256
from probe.recording.recorder import Recorder
from probe.rundir.tables import channel_and_label_tables, evolution_table

SIZE, BATCH = 32, 2


def inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(BATCH, 3, SIZE, SIZE, generator=gen)
    hole = torch.zeros(BATCH, 1, SIZE, SIZE)
    hole[0, :, 4:20, 6:18] = 1
    hole[1, :, 12:30, 14:28] = 1
    return image, hole


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return fm.MODELS[name]().eval()


# ----------------------------------------------------------------------------- the true values
def _keep(truth: dict, site: str, value=lambda out: out):
    """A forward hook that keeps ``value(output)`` as the true gate or mask of ``site``."""
    return lambda _m, _i, out: truth.__setitem__(site, value(out).clone())


def _sum_gate(truth: dict, site: str, first: str):
    """Hooks for a gate ``sigmoid(first(x) + second(x))``: (first's hook, second's hook)."""
    seen = {}
    return (lambda _m, _i, out: seen.__setitem__(first, out),
            lambda _m, _i, out: truth.__setitem__(site, torch.sigmoid(seen.pop(first) + out)))


def _gate_plan(name: str, truth: dict) -> list:
    """``(module path, forward hook)`` pairs whose hooks fill ``truth``: site -> true gate ``[B, C, h, w]``."""
    def second_half(out):
        return torch.sigmoid(out.chunk(2, 1)[1])

    new_mask = lambda out: out[1][:, :1]  # noqa: E731  ((output, mask) layers)
    if name in ("sn_sigmoid", "self_norm"):
        inner = "mask_conv2d.activation" if name == "sn_sigmoid" else "sigmoid"
        return [(f"layers.{i}.{inner}", _keep(truth, f"layers.{i}")) for i in range(3)]
    if name == "split":
        return [(f"{s}.conv", _keep(truth, s, second_half)) for s in ("enc1", "enc2", "mid", "dec")]
    if name == "self_gated":
        return [(f"body.{i}", lambda m, i_, out, s=f"body.{i}": truth.__setitem__(
            s, second_half(nn.Conv2d.forward(m, i_[0])))) for i in range(3)]
    if name == "inline_res":
        return [hook for r in range(2) for hook in (
            (f"res.{r}.gate1", _keep(truth, f"res.{r}.gate1", torch.sigmoid)),
            (f"res.{r}.gate2", _keep(truth, f"res.{r}.gate2", F.hardsigmoid)))]
    if name == "chunk_res":
        plan = []
        for r in range(2):
            first, second = _sum_gate(truth, f"res.{r}:op0", "a")
            plan += [(f"res.{r}.conv1", _keep(truth, f"res.{r}.conv1", second_half)),
                     (f"res.{r}.conv2", _keep(truth, f"res.{r}.conv2", second_half)),
                     (f"res.{r}.a", first), (f"res.{r}.b", second)]
        return plan
    if name == "lbam":
        return [(f"{s}.attention", _keep(truth, s)) for s in ("ec1", "ec2")]
    if name == "lbam_reverse":
        return [(f"{s}.attention", _keep(truth, s)) for s in ("ec1", "ec2", "ec3")] + [
            (f"{s}.activation", _keep(truth, s, lambda out: out[0] if isinstance(out, tuple) else out))
            for s in ("rev1", "rev2")]
    if name == "split_maps":
        return [("block.mask_conv", _keep(truth, f"block.mask_conv:op{i}", lambda out, i=i: torch.sigmoid(
            out)[:, 6 * i: 6 * (i + 1)])) for i in range(2)]
    if name == "nvidia":
        return [(s, _keep(truth, s, new_mask)) for s in ("p1", "p2", "p3")]
    if name == "naoto":
        return [(s, _keep(truth, s, new_mask)) for s in ("enc_1", "enc_2", "dec_2", "dec_1")]
    return []


FUNCTIONS = {"functional": ("partial_conv",), "functional_pool": ("pooled_partial_conv", "clamped_partial_conv")}


def true_values(model: nn.Module, name: str, image, hole, monkeypatch) -> tuple[torch.Tensor, dict]:
    """The unhooked output and, per site, the true gate or new valid mask (for partial
    convolutions written as functions: each call's new mask, under its convolution's name)."""
    truth: dict = {}
    names = {id(m): path for path, m in model.named_modules()}
    for function in FUNCTIONS.get(name, ()):
        def observed(conv, x, valid, plain=getattr(fm, function)):
            out, new_valid = plain(conv, x, valid)
            truth[names[id(conv)]] = new_valid.clone()
            return out, new_valid

        monkeypatch.setattr(fm, function, observed)
    attachers = [lambda path=path, hook=hook: [model.get_submodule(path).register_forward_hook(hook)]
                 for path, hook in _gate_plan(name, truth)]
    with hooks_attached(model, attachers), torch.no_grad():
        out = model(image, hole)
    monkeypatch.undo()
    return out, truth


class Store:
    """A sink per site keeping copies of what the adapters hand over."""

    def __init__(self):
        self.seen: dict = {}

    def bind(self, site: str):
        store = self

        class _Bound:
            def gated(self, logits, gates):
                store.seen[site] = (logits.clone(), gates.clone())

            def partial(self, valid_in, new_valid, coverage, out=None):
                store.seen[site] = (valid_in.clone(), new_valid.clone(), coverage.clone())

        return _Bound()


# ----------------------------------------------------------------------------- the models
@pytest.mark.parametrize("name", list(fm.MODELS))
def test_foreign_model_sites_and_hooked_values_are_the_true_ones(name, monkeypatch):
    model = build(name)
    image, hole = inputs()
    with UserState(model):  # every forward with the same state (self_norm changes its own)
        _check_hooked_values(model, name, image, hole, monkeypatch)


def _check_hooked_values(model, name, image, hole, monkeypatch):
    sites = find_sites(model, gate_activations=fm.GATE_ACTIVATIONS.get(name, ()))
    assert [(s.name, s.kind, s.channels) for s in sites] == fm.SITES[name]
    assert {s.found_by for s in sites} == {"discovered"}
    plain, truth = true_values(model, name, image, hole, monkeypatch)
    assert set(truth) == {s.name for s in sites}

    store = Store()
    with hooks_attached(model, site_attachers(sites, store.bind)), torch.no_grad():
        hooked = model(image, hole)
    assert torch.equal(hooked, plain)
    for site in sites:
        if site.kind == "gated":
            logits, gates = store.seen[site.name]
            assert torch.equal(gates, truth[site.name]), site.name
            if site.activation != "sigmoid":  # histograms are taken over the gate itself
                assert torch.equal(logits, gates)
        else:
            _, new_valid, coverage = store.seen[site.name]
            assert torch.equal(new_valid, truth[site.name]), site.name
            assert torch.equal(new_valid, (coverage > 0).to(new_valid.dtype))
            assert float(coverage.max()) <= 1.0


@pytest.mark.parametrize("name", fm.MODELS)
def test_foreign_model_statistics_are_those_of_the_true_values(name, monkeypatch):
    model = build(name)
    image, hole = inputs()
    with UserState(model):
        _check_statistics(model, name, image, hole, monkeypatch)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _check_statistics(model, name, image, hole, monkeypatch):
    sites = find_sites(model, gate_activations=fm.GATE_ACTIVATIONS.get(name, ()))
    plain, truth = true_values(model, name, image, hole, monkeypatch)
    with Recorder(model, sites, n_labels=2) as recorder:
        out = recorder.forward(image, hole, None, torch.zeros(BATCH, SIZE, SIZE, dtype=torch.long), torch.arange(BATCH))
    assert torch.equal(out, plain)
    for site in sites:
        stats, true = recorder.stats[site.name], truth[site.name]
        if site.kind == "gated":
            assert torch.allclose(stats.moments.mean_, true.double().mean((0, 2, 3)), atol=1e-3), site.name
        else:
            assert stats.valid_sum_ / stats.images_ == pytest.approx(float(true.double().mean()), abs=1e-6)


def test_coverage_is_the_window_count_before_binarisation():
    model, (image, hole) = build("naoto"), inputs()
    sites = find_sites(model)
    store = Store()
    with hooks_attached(model, site_attachers(sites, store.bind)), torch.no_grad():
        model(image, hole)
    valid_in, _, coverage = store.seen["enc_1"]
    count = F.conv2d(valid_in, torch.ones(1, 3, 7, 7), stride=2, padding=3)
    assert torch.allclose(coverage, count / 147.0)


def test_non_sigmoid_gates_are_not_taken_unnamed_and_the_error_says_how():
    with pytest.raises(ModelError, match="--gate-activation GaussActivation"):
        find_sites(build("lbam"))


def test_silu_and_channel_attention_are_not_gates():
    result = survey(build("inline_res"))
    assert len(result.sites) == 4
    assert any("SiLU" in c.reason for c in result.not_taken)

    class SE(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(4, 8, 3, 1, 1), nn.Conv2d(8, 8, 1)
            self.gate = GatedConv2d(8, 3, 3)

        def forward(self, image, hole, sketch=None):
            x = self.conv(torch.cat([image, hole], 1))
            x = x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))
            return self.gate(x)

    result = survey(SE())
    assert [(s.name, s.found_by) for s in result.sites] == [("gate", "own layer")]  # its own sigmoid not re-found
    assert any("not one gate per channel and location" in c.reason for c in result.not_taken)


def test_a_user_copy_of_gatedconv2d_is_found_by_duck_typing():
    class GatedConv2d(nn.Module):  # the user's own class, with our attributes
        def __init__(self, cin, cout, k):
            super().__init__()
            self.feature, self.gate = nn.Conv2d(cin, cout, k, 1, k // 2), nn.Conv2d(cin, cout, k, 1, k // 2)
            self.activation = nn.ELU()
            self.hook_feature, self.hook_gate, self.hook_out = HookPoint(), HookPoint(), HookPoint()

        def forward(self, x):
            return self.hook_out(self.hook_feature(self.activation(self.feature(x)))
                                 * self.hook_gate(torch.sigmoid(self.gate(x))))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.g = GatedConv2d(4, 3, 3)

        def forward(self, image, hole, sketch=None):
            return self.g(torch.cat([image, hole], 1))

    assert [(s.name, s.found_by) for s in find_sites(Net())] == [("g", "own layer")]


def test_a_model_that_raises_leaves_no_watch_mode_and_no_hooks():
    model = build("functional")
    sites = find_sites(model)
    image, hole = inputs()
    with pytest.raises(RuntimeError), hooks_attached(model, site_attachers(sites, Store().bind)):
        model(image, hole[..., :8])  # mismatched sizes raise inside the watched forward
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert torch.equal(model(image, hole), model(image, hole))  # no mode left on the stack
    from torch.overrides import _get_current_function_mode_stack
    assert _get_current_function_mode_stack() == []


@pytest.mark.parametrize("name", ["split", "naoto"])
def test_discovered_models_record_end_to_end(name, tmp_path):
    run = record(build(name), "scenes:32", tmp_path / "run", n=2, batch_size=2, samples=1, calibration=2,
                 progress=False)
    assert run.manifest["layers"] == [s for s, _, _ in fm.SITES[name]]
    assert list(run.layers["channels"]) == [c for _, _, c in fm.SITES[name]]


# ----------------------------------------------------------------------------- issue 27
class OwnPartialNet(nn.Module):
    """``functional`` and ``functional_pool`` with gateprobe's own PartialConv2d: the same masks."""

    def __init__(self):
        super().__init__()
        self.p1, self.p2 = PartialConv2d(3, 8, 5, 2, 2), PartialConv2d(8, 16, 3, 2, 1)
        self.p3 = PartialConv2d(16, 8, 3, 1, 1)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, image, hole, sketch=None):
        x, v = self.p1(image, 1 - hole)
        x, v = self.p2(F.relu(x), v)
        x, _ = self.p3(F.interpolate(F.relu(x), scale_factor=4.0), F.interpolate(v, scale_factor=4.0))
        return self.out(x)


def evolution(model: nn.Module, data, n: int = 4, batch: int = 2) -> pd.DataFrame:
    """The evolution table of ``model`` over the first ``n`` images of ``data``."""
    sites = find_sites(model)
    with Recorder(model, sites, n_labels=len(data.classes)) as recorder:
        for start in range(0, n, batch):
            b = collate([data[i] for i in range(start, start + batch)])
            recorder.forward(b["image"], b["hole"], None, b["labels"], torch.arange(batch))
    return evolution_table(recorder.stats, recorder.order)


@pytest.mark.parametrize("name", ["functional", "functional_pool"])
def test_functional_partial_conv_has_the_evolution_table_of_a_module_partial_conv(name):
    data = parse_data("scenes:32", n=4)
    functional, module = evolution(build(name), data), evolution(OwnPartialNet(), data)
    assert list(functional["layer"]) == [s for s, _, _ in fm.SITES[name]]
    assert functional["flipped"].sum() > 0 and 0 < functional["valid_fraction"].min() < 1  # it sees masks
    assert list(functional.columns) == list(module.columns) and len(functional) == len(module) == 3
    for column in functional.columns.drop(["layer", "leak"]):  # leak: measured only by gateprobe's layer
        for ours, theirs in zip(functional[column], module[column]):
            assert np.array_equal(np.asarray(ours, float), np.asarray(theirs, float), equal_nan=True), column


def test_reverse_attention_maps_are_recorded_as_gates_of_the_module_that_made_them():
    model = build("lbam_reverse")
    sites = {s.name: s for s in find_sites(model, gate_activations=("GaussActivation",))}
    assert (sites["rev1"].module, sites["rev1"].adapter.act_path) == (model, "rev1.activation")
    assert sites["ec1"].module is model.ec1  # the forward maps: one site, though two products use them
    with pytest.raises(ModelError, match="no gated"):
        find_sites(model)  # the Gaussian activation is not a gate unless named


def test_ablating_a_channel_range_site_forces_that_channel_of_the_activation():
    model, (image, hole) = build("split_maps"), inputs()
    site = {s.name: s for s in find_sites(model)}["block.mask_conv:op1"]
    block, x = model.block, fm.masked_input(image, hole)
    with torch.no_grad():
        maps = torch.sigmoid(block.mask_conv(x))
        maps[:, 6 + 2] = 0.25
        expected = model.out(torch.cat((block.branch_a(x) * maps[:, :6], block.branch_b(x) * maps[:, 6:]), 1))
        with hooks_attached(model, [lambda: site.adapter.ablate(site.module, 2, 0.25)]):
            ablated = model(image, hole)
    assert torch.equal(ablated, expected)


def test_a_model_that_changes_itself_in_forward_is_recorded_with_the_state_handed_over(tmp_path):
    model = build("self_norm")
    handed = copy.deepcopy(model)
    before = weights_sha256(model)
    with pytest.warns(UserWarning, match="changed its own state") as caught:
        run = record(model, "scenes:32", tmp_path / "run", n=4, batch_size=2, samples=0, calibration=2,
                     progress=False)
    assert sum("changed its own state" in str(w.message) for w in caught) == 1
    assert run.manifest["model"]["weights_sha256"] == before == weights_sha256(model)
    assert not any(t.is_inference() for t in model.state_dict().values())
    model.train()(*inputs()).mean().backward()  # still trainable

    truth: dict = {}
    data = parse_data("scenes:32", n=4)
    for start in (0, 2):  # every batch through a fresh copy of the state handed over
        fresh, batch = copy.deepcopy(handed), collate([data[i] for i in range(start, start + 2)])
        attachers = [lambda i=i: [fresh.get_submodule(f"layers.{i}.sigmoid").register_forward_hook(
            lambda _m, _i, out, i=i: truth.setdefault(f"layers.{i}", []).append(out.double()))] for i in range(3)]
        with hooks_attached(fresh, attachers), torch.no_grad():
            fresh(batch["image"], batch["hole"])
    for layer, gates in truth.items():
        recorded = run.channels[run.channels["layer"] == layer]["mean"].to_numpy()
        assert np.allclose(recorded, torch.cat(gates).mean((0, 2, 3)).numpy(), rtol=0, atol=1e-6), layer


def test_discovery_called_directly_puts_back_the_state_its_probe_pass_changed():
    model = build("self_norm")
    before = weights_sha256(model)
    for find in (find_sites, lambda m: survey(m).sites):
        with pytest.warns(UserWarning, match="changed its own state"):
            assert find(model)
        assert weights_sha256(model) == before


def test_discovery_alone_finds_the_adapters_sites_of_a_deep_partial_conv_unet():
    """Deep decoder masks are all valid, so earlier all-valid masks equal their count > 0: only the
    mask a layer computes from its own count (or a max-pool of its input) may be taken."""
    torch.manual_seed(0)
    model, (image, hole) = LiuPConvUNet(width=8).eval(), inputs()
    adapted, found = find_sites(model, discover=False), find_sites(model, by_class=False)
    geometry = ("name", "kind", "channels", "kernel", "stride", "dilation", "padding", "window")
    assert [[getattr(s, g) for g in geometry] for s in found] == [[getattr(s, g) for g in geometry] for s in adapted]
    truth: dict = {}
    attachers = [lambda s=s: [s.module.register_forward_hook(_keep(truth, s.name, lambda out: out[1][:, :1]))]
                 for s in adapted]
    store = Store()
    with hooks_attached(model, attachers + site_attachers(found, store.bind)), torch.no_grad():
        model(image, hole)
    assert set(store.seen) == set(truth) and len(truth) == 14
    for name, (_, new_valid, _) in store.seen.items():
        assert torch.equal(new_valid, truth[name]), name


def test_a_model_that_keeps_its_state_is_not_warned_about_even_with_nan_weights():
    model = build("split")
    with torch.no_grad():
        model.enc1.conv.weight[0, 0, 0, 0] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with UserState(model), torch.no_grad():
            model(*inputs())


def test_soft_fraction_of_a_gate_reaching_1_1_is_taken_on_the_gates_own_range():
    """LBAM's Gaussian attention maps lie in (0, 1.1]: "soft" is then the share of gate values not
    within 5% of the range of either end of the layer's own [min, max], not NaN."""
    model = build("lbam")
    for block in (model.ec1, model.ec2):  # centred on the mask features, so the maps reach their maximum 1.1
        block.attention.mu.data.fill_(0.0)
    sites = find_sites(model, gate_activations=("GaussActivation",))
    batches = [{"image": image, "hole": hole, "sketch": None} for image, hole in (inputs(seed) for seed in (1, 2, 3))]
    binnings = calibrate_binnings(model, sites, batches, use_sketch=False, bins=512, quantile=0.005)
    truth: dict = {}
    hooks = [lambda s=s: [model.get_submodule(f"{s}.attention").register_forward_hook(
        lambda _m, _i, out, s=s: truth.setdefault(s, []).append(out.clone()))] for s in ("ec1", "ec2")]
    with hooks_attached(model, hooks), torch.no_grad():
        for b in batches:
            model(b["image"], b["hole"])
    with Recorder(model, sites, n_labels=2, binnings=binnings) as recorder:
        for b in batches:
            recorder.forward(b["image"], b["hole"], None, torch.zeros(BATCH, SIZE, SIZE, dtype=torch.long),
                             torch.arange(BATCH))
    channels, _ = channel_and_label_tables(recorder.stats, recorder.order, ["a", "b"], 0.005)
    for name, maps in truth.items():
        gates = torch.cat(maps).double().transpose(0, 1).reshape(len(maps[0][0]), -1)  # [C, pixels]
        lo, hi = float(gates.min()), float(gates.max())
        assert hi > 1.0  # beyond a sigmoid's range: the old (0.05, 0.95) rule does not apply
        low, high = lo + 0.05 * (hi - lo), hi - 0.05 * (hi - lo)
        expected = ((gates > low) & (gates < high)).double().mean(1).numpy()
        found = channels[channels.layer == name].soft_fraction.to_numpy()
        assert np.isfinite(found).all(), name
        np.testing.assert_allclose(found, expected, atol=0.02, err_msg=name)
