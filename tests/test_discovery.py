"""Discovery (issue 17): eight foreign generators (``tests/foreign_models.py``) recorded with no
adapter, checked against their true gates and masks, which the tests read with their own hooks."""
from __future__ import annotations

import foreign_models as fm
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probe.adapters import find_sites, survey
from probe.errors import ModelError
from probe.hooks import hooks_attached, site_attachers
from probe.layers import GatedConv2d, HookPoint
from probe.recording.loop import record
from probe.recording.recorder import Recorder

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
def _gate_truth(model: nn.Module, name: str) -> tuple[list, dict]:
    """Attachers of the test's own hooks, and the dict they fill: site -> true gate ``[B, C, h, w]``."""
    truth: dict = {}

    def keep(site):
        return lambda _m, _i, out: truth.__setitem__(site, out.clone())

    def split_half(site, first: bool):
        def hook(_m, _i, out):
            half = out.shape[1] // 2
            truth[site] = torch.sigmoid(out[:, half:] if not first else out[:, :half])
        return hook

    plan = []
    if name == "sn_sigmoid":
        plan = [(f"layers.{i}.mask_conv2d.activation", keep(f"layers.{i}")) for i in range(3)]
    elif name == "split":
        plan = [(f"{s}.conv", split_half(s, False)) for s in ("enc1", "enc2", "mid", "dec")]
    elif name == "self_gated":
        plan = [(f"body.{i}", lambda m, i_, out, s=f"body.{i}": truth.__setitem__(
            s, torch.sigmoid(nn.Conv2d.forward(m, i_[0]).chunk(2, 1)[1]))) for i in range(3)]
    elif name == "inline_res":
        for r in range(2):
            plan += [(f"res.{r}.gate1", lambda _m, _i, o, s=f"res.{r}:op0": truth.__setitem__(s, torch.sigmoid(o))),
                     (f"res.{r}.gate2", lambda _m, _i, o, s=f"res.{r}:op1": truth.__setitem__(s, F.hardsigmoid(o)))]
    elif name == "lbam":
        plan = [(f"{s}.attention", keep(s)) for s in ("ec1", "ec2")]
    elif name == "nvidia":
        plan = [(s, lambda _m, _i, out, s=s: truth.__setitem__(s, out[1][:, :1].clone())) for s in ("p1", "p2", "p3")]
    elif name == "naoto":
        plan = [(s, lambda _m, _i, out, s=s: truth.__setitem__(s, out[1][:, :1].clone()))
                for s in ("enc_1", "enc_2", "dec_2", "dec_1")]
    attachers = [lambda path=path, hook=hook: [model.get_submodule(path).register_forward_hook(hook)]
                 for path, hook in plan]
    return attachers, truth


def true_values(model: nn.Module, name: str, image, hole, monkeypatch) -> tuple[torch.Tensor, dict]:
    """The unhooked output and, per site, the true gate or new valid mask."""
    if name == "functional":  # a function, not a module: wrap it
        truth, calls = {}, []
        plain = fm.partial_conv

        def observed(conv, x, valid):
            out, new_valid = plain(conv, x, valid)
            truth[f"model:op{len(calls)}"] = new_valid.clone()
            calls.append(conv)
            return out, new_valid

        monkeypatch.setattr(fm, "partial_conv", observed)
        with torch.no_grad():
            out = model(image, hole)
        monkeypatch.setattr(fm, "partial_conv", plain)
        return out, truth
    attachers, truth = _gate_truth(model, name)
    with hooks_attached(model, attachers), torch.no_grad():
        out = model(image, hole)
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


# ----------------------------------------------------------------------------- the eight models
@pytest.mark.parametrize("name", list(fm.MODELS))
def test_foreign_model_sites_and_hooked_values_are_the_true_ones(name, monkeypatch):
    model = build(name)
    image, hole = inputs()
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
    sites = find_sites(model, gate_activations=fm.GATE_ACTIVATIONS.get(name, ()))
    plain, truth = true_values(model, name, image, hole, monkeypatch)
    with Recorder(model, sites, n_labels=2) as recorder:
        out = recorder.forward(image, hole, None, torch.zeros(BATCH, SIZE, SIZE, dtype=torch.long), torch.arange(BATCH))
    assert torch.equal(out, plain)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
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
