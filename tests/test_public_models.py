"""The public architectures as published (issue 8): DeepFill v2 (nipponjo/deepfillv2-pytorch, both
key layouts) and the partial-convolution U-Net (naoto0804), loaded from checkpoints in their
published layout through the CLI and recorded on Scenes at 256x256; plus the third-party adapters
on tiny reference-style layer classes written here.

Random weights at reduced width (DeepFill ``cnum`` 8 instead of 48, U-Net width 8 instead of 64)
keep the tests fast; the layer structure and counts do not depend on the width.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probe.adapters import (ADAPTERS, NvidiaPartialConv2dAdapter, SigmoidModuleGateAdapter, SplitGateAdapter,
                            TuplePartialAdapter, find_sites, register_adapter)
from probe.cli import main
from probe.data import collate, parse_data
from probe.models.ported.deepfillv2 import (DeepFillV2, DeepFillV2TF, GConv, RGBConv, deepfillv2_from_state_dict,
                                            load_deepfillv2, tree_state_to_flat)
from probe.models.ported.pconv_unet import LiuPConvUNet, PartialConv, load_pconv_unet
from probe.recording.recorder import Recorder
from probe.rundir.run import Run

SIZE = 256
N_IMAGES = 2
CNUM = 8
PCONV_WIDTH = 8

# The port's definition, layer by layer (model/networks.py):
#   stage 1: conv1, down_block1 (2), down_block2 (2), conv_bn1..7, up_block1 (2), up_block2 (2) = 16
#   stage 2: conv branch conv_conv1, 2 down blocks (4), conv_conv_bn1..5 = 10;
#            attention branch ca_conv1, 2 down blocks (4), ca_conv_bn1, ca_conv_bn4, ca_conv_bn5 = 8;
#            merge conv_bn6, conv_bn7, up_block1 (2), up_block2 (2) = 6
#   conv_to_rgb of both stages: 3 outputs, ungated (not counted)
DEEPFILL_GATED = (1 + 4 + 7 + 4) + (1 + 4 + 5) + (1 + 4 + 3) + (2 + 4)
PCONV_LAYER_SIZE = 7  # enc_1..enc_7 and dec_7..dec_1


# ----------------------------------------------------------------------------- helpers
def spread_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Kaiming-normal weights and small random biases (BatchNorm statistics too), so that gates and
    outputs vary with the input instead of sitting at PyTorch's near-constant default init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and not name.endswith("mask_conv"):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model


class StoreSink:
    """A sink keeping every tensor an adapter hands over (float32, not detached copies)."""

    def __init__(self):
        self.gated, self.partial = {}, {}

    def bind(self, name: str):
        sink = self

        class _Bound:
            def gated(self, logits, gates):
                sink.gated[name] = (logits.clone(), gates.clone())

            def partial(self, valid_in, new_valid, coverage):
                sink.partial[name] = (valid_in.clone(), new_valid.clone(), coverage.clone())

        return _Bound()


def run_with_adapters(model: nn.Module, *inputs) -> tuple[torch.Tensor, StoreSink]:
    """Forward ``model(*inputs)`` with every site's adapter attached to a :class:`StoreSink`."""
    store, handles = StoreSink(), []
    try:
        for site in find_sites(model):
            handles += site.adapter.attach(site.module, store.bind(site.name))
        with torch.no_grad():
            out = model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return out, store


def no_hooks_left(model: nn.Module) -> bool:
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@functools.cache
def scenes_batch():
    """The images ``record --data scenes:256 --n 2`` sees (held-out seed)."""
    data = parse_data(f"scenes:{SIZE}", n=N_IMAGES)
    return collate([data[i] for i in range(N_IMAGES)])


def record_cli(spec: str, out, capsys) -> tuple[int, str]:
    rc = main(["record", "--model", spec, "--data", f"scenes:{SIZE}", "--n", str(N_IMAGES), "--batch-size",
               str(N_IMAGES), "--samples", "1", "--out", str(out), "--trust-pickle"])  # .pth files are pickles
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def real_gates(model: nn.Module, *inputs) -> tuple[torch.Tensor, dict]:
    """The model's output and, per GConv, its real gate ``output / activation(features)``, where
    that is defined (``|activation| > 0.01``), and its inner convolution's raw output."""
    seen, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, GConv):
            handles.append(m.conv.register_forward_hook(lambda mod, i, o, name=name: seen.__setitem__((name, "raw"), o)))
            handles.append(m.register_forward_hook(lambda mod, i, o, name=name: seen.__setitem__((name, "out"), o)))
    try:
        with torch.no_grad():
            out = model(*inputs)
    finally:
        for h in handles:
            h.remove()
    gates = {}
    for name, m in model.named_modules():
        if isinstance(m, GConv):
            raw = seen[(name, "raw")]
            activated = m.activation(raw[:, : m.cnum_out])
            defined = activated.abs() > 1e-2
            gates[name] = (seen[(name, "out")] / activated.masked_fill(~defined, 1.0), defined, raw)
    return out, gates


# ----------------------------------------------------------------------------- DeepFill v2
@pytest.fixture(scope="module")
def deepfill(tmp_path_factory):
    """A random DeepFill v2 saved as the port saves it, in both key layouts."""
    root = tmp_path_factory.mktemp("deepfill")
    model = spread_init(DeepFillV2(cnum=CNUM)).eval()
    state = model.state_dict()
    tree, flat = root / "states_pt.pth", root / "states_tf.pth"
    # the port's training checkpoint: generator under "G", beside the discriminator and optimisers
    torch.save({"G": state, "D": {"conv1.conv_sn.weight": torch.zeros(1)}, "G_optim": {}, "n_iter": 10}, tree)
    torch.save({"G": tree_state_to_flat(state)}, flat)
    return {"model": model, "state": state, "tree": tree, "flat": flat, "root": root}


def gated_layer_names(state: dict) -> set[str]:
    """Gated layers read from a checkpoint's keys alone: convolutions with 2C outputs (the port
    gives its ungated to-RGB convolutions 3 outputs)."""
    return {k[: -len(".conv.weight")] for k, v in state.items() if k.endswith(".conv.weight") and v.shape[0] != 3}


def test_deepfill_layer_count_from_the_definition_and_from_the_keys(deepfill):
    flat_state = tree_state_to_flat(deepfill["state"])
    assert DEEPFILL_GATED == 40
    assert len(gated_layer_names(deepfill["state"])) == len(gated_layer_names(flat_state)) == DEEPFILL_GATED
    for model in (deepfill["model"], deepfillv2_from_state_dict(flat_state)):
        sites = find_sites(model)
        assert {s.name for s in sites} == gated_layer_names(model.state_dict())
        assert all(s.kind == "gated" and isinstance(s.module, GConv) for s in sites)
        assert sum(isinstance(m, RGBConv) for m in model.modules()) == 2  # found, but not a site


@pytest.mark.parametrize("layout", ["tree", "flat"])
def test_deepfill_checkpoint_records_through_the_cli(deepfill, layout, tmp_path, capsys):
    path = deepfill[layout]
    rc, text = record_cli(f"deepfillv2:{path}", tmp_path / "run", capsys)
    assert rc == 0, text
    run = Run(tmp_path / "run")
    state = torch.load(path, weights_only=True)["G"]
    assert set(run.manifest["layers"]) == gated_layer_names(state) and len(run.manifest["layers"]) == DEEPFILL_GATED
    assert set(run.layers["kind"]) == {"gated"} and run.manifest["image_size"] == [SIZE, SIZE]
    model_info = run.manifest["model"]
    assert model_info["class"] == {"tree": "DeepFillV2", "flat": "DeepFillV2TF"}[layout]
    assert model_info["accepts_sketch"] is False and model_info["parameters"] == sum(
        v.numel() for k, v in state.items() if not k.endswith("fuse_weight"))  # a buffer, not a parameter
    # the stored gate maps of the first image are the layers' real gates
    model, batch = load_deepfillv2(str(path)), scenes_batch()
    direct, truth = real_gates(model, batch["image"][:1], batch["hole"][:1])
    for layer in ("stage1.conv1", "stage2.ca_conv_bn1", "stage2.up_block2.conv2") if layout == "tree" else (
            "conv1", "pmconv6", "allconv16"):
        stored = torch.from_numpy(np.asarray(run.sample_map(layer, "gate"), dtype=np.float32))
        gate, defined, _ = truth[layer]
        assert stored.shape == gate.shape
        assert torch.allclose(stored[defined], gate[defined], atol=2e-3)
    stored_out = np.asarray(run.sample_input("output"), dtype=np.float32)
    assert np.allclose(stored_out, direct.clamp(0, 1).numpy(), atol=2e-3)


@pytest.mark.parametrize("layout", ["tree", "flat"])
def test_deepfill_captured_gates_are_the_real_gates_and_hooks_change_nothing(deepfill, layout):
    model = deepfill["model"] if layout == "tree" else load_deepfillv2(str(deepfill["flat"]))
    batch = scenes_batch()
    image, hole = batch["image"], batch["hole"]
    plain, truth = real_gates(model, image, hole)
    hooked, store = run_with_adapters(model, image, hole)
    assert torch.equal(hooked, plain) and no_hooks_left(model)
    assert len(store.gated) == DEEPFILL_GATED
    for name, (logits, gates) in store.gated.items():
        gate, defined, raw = truth[name]
        assert torch.equal(logits, raw[:, raw.shape[1] // 2:])  # the second half of the convolution's output
        assert torch.equal(gates, torch.sigmoid(logits))
        assert defined.float().mean() > 0.3, name
        assert torch.allclose(gates[defined], gate[defined], rtol=1e-4, atol=1e-6), name
    # and through the recorder: same output as without hooks, no hook left behind
    sites = find_sites(model)
    with Recorder(model, sites, n_labels=int(batch["labels"].max()) + 1) as recorder:
        out = recorder.forward(image, hole, None, batch["labels"], torch.arange(N_IMAGES))
    assert torch.equal(out, plain) and no_hooks_left(model)


def test_deepfill_input_conventions(deepfill):
    model = deepfill["model"]
    assert model.accepts_sketch is False
    torch.manual_seed(0)
    image = torch.rand(2, 3, 60, 44)
    hole = torch.zeros(2, 1, 60, 44)
    hole[0, :, 10:30, 5:20] = 1
    hole[1, :, 35:55, 20:40] = 1
    inputs = []
    handle = model.get_submodule("stage1.conv1.conv").register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    try:
        with torch.no_grad():
            out = model(image, hole)
            noisy = model(image * (1 - hole) + torch.rand_like(image) * hole, hole)
    finally:
        handle.remove()
    assert out.shape == (2, 3, 60, 44) and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, noisy)  # the hole's content never reaches the network
    # the port's input: [image in [-1,1] zeroed in the hole, ones, hole], padded by reflection to 64x48
    padded_image = F.pad(image, (0, 4, 0, 4), mode="reflect")
    padded_hole = F.pad(hole, (0, 4, 0, 4), mode="reflect")
    expected = torch.cat([(padded_image * 2 - 1) * (1 - padded_hole), torch.ones_like(padded_hole), padded_hole], 1)
    assert torch.equal(inputs[0], expected)
    with torch.no_grad():
        _, stage2 = model.generate(expected, padded_hole)
    assert torch.allclose(out, ((stage2 + 1) / 2)[..., :60, :44])
    with pytest.raises(ValueError, match="takes no sketch"):
        model(image, hole, torch.zeros_like(hole))


def test_deepfill_wrong_keys_are_named(deepfill, tmp_path, capsys):
    state = dict(deepfill["state"])
    del state["stage2.ca_conv_bn4.conv.weight"], state["stage1.conv_bn3.conv.bias"]
    state["stage2.extra.conv.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"G": state}, path)
    with pytest.raises(ValueError) as info:
        load_deepfillv2(str(path))
    message = str(info.value)
    for key in ("stage2.ca_conv_bn4.conv.weight", "stage1.conv_bn3.conv.bias", "stage2.extra.conv.weight"):
        assert key in message
    assert "missing keys" in message and "unexpected keys" in message and "module-tree" in message
    rc, text = record_cli(f"deepfillv2:{path}", tmp_path / "run", capsys)
    assert rc == 2 and "stage2.ca_conv_bn4.conv.weight" in text and not (tmp_path / "run").exists()
    # flat layout, and neither layout
    flat = tree_state_to_flat(deepfill["state"])
    del flat["pmconv6.conv.weight"]
    with pytest.raises(ValueError, match=r"flat \(TF\).*missing keys: pmconv6\.conv\.weight"):
        deepfillv2_from_state_dict(flat)
    with pytest.raises(ValueError, match="neither"):
        deepfillv2_from_state_dict({"encoder.0.weight": torch.zeros(1)})
    # a checkpoint from before the contextual-attention buffer (July 2022) still loads
    old = {k: v for k, v in deepfill["state"].items() if not k.endswith("fuse_weight")}
    assert isinstance(deepfillv2_from_state_dict(old), DeepFillV2)
    assert isinstance(deepfillv2_from_state_dict(tree_state_to_flat(old)), DeepFillV2TF)


# ----------------------------------------------------------------------------- PConv U-Net
@pytest.fixture(scope="module")
def pconv(tmp_path_factory):
    """A random naoto0804 PConvUNet saved as its save_ckpt does (``model`` entry)."""
    root = tmp_path_factory.mktemp("pconv")
    model = spread_init(LiuPConvUNet(layer_size=PCONV_LAYER_SIZE, width=PCONV_WIDTH)).eval()
    # an optimiser state dict's layout (torch.optim itself is slow to import)
    optimizer = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2)}},
                 "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "params": [0, 1]}]}
    path = root / "1000000.pth"
    torch.save({"n_iter": 1000000, "model": model.state_dict(), "optimizer": optimizer}, path)
    return {"model": model, "path": path, "state": model.state_dict()}


def partial_layer_names(state: dict) -> set[str]:
    """Partial convolutions read from the keys alone: modules holding a ``mask_conv``."""
    return {k[: -len(".mask_conv.weight")] for k in state if k.endswith(".mask_conv.weight")}


def test_pconv_checkpoint_records_through_the_cli(pconv, tmp_path, capsys):
    rc, text = record_cli(f"pconv-unet:{pconv['path']}", tmp_path / "run", capsys)
    assert rc == 0, text
    run = Run(tmp_path / "run")
    names = partial_layer_names(pconv["state"])
    assert len(names) == 2 * PCONV_LAYER_SIZE
    assert names == {f"enc_{i}.conv" for i in range(1, 8)} | {f"dec_{i}.conv" for i in range(1, 8)}
    assert set(run.manifest["layers"]) == names and set(run.layers["kind"]) == {"partial"}
    assert run.manifest["layers"][:2] == ["enc_1.conv", "enc_2.conv"] and run.manifest["layers"][-1] == "dec_1.conv"
    evolution = run.evolution.set_index("layer")
    assert evolution.loc["enc_1.conv", "window"] == 3 * 7 * 7
    assert evolution.loc["dec_1.conv", "window"] == (PCONV_WIDTH + 3) * 3 * 3
    # the stored maps of the first image are the layers' own masks and recomputed coverages
    model, batch = load_pconv_unet(str(pconv["path"])), scenes_batch()
    out, store = run_with_adapters(model, batch["image"][:1], batch["hole"][:1])
    for layer in ("enc_1.conv", "enc_4.conv", "dec_2.conv"):
        valid_in, new_valid, coverage = store.partial[layer]
        assert np.array_equal(np.asarray(run.sample_map(layer, "valid"), dtype=np.float32), new_valid[:, :1].numpy())
        assert np.allclose(np.asarray(run.sample_map(layer, "coverage"), dtype=np.float32), coverage[:, :1].numpy(),
                           atol=1e-3)


def test_pconv_captured_masks_and_coverage_are_the_layers_and_hooks_change_nothing(pconv):
    model, batch = pconv["model"], scenes_batch()
    image, hole = batch["image"], batch["hole"]
    calls, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, PartialConv):
            handles.append(m.register_forward_hook(
                lambda mod, args, out, name=name: calls.__setitem__(name, (args[1], out[1]))))
    try:
        with torch.no_grad():
            plain = model(image, hole)
    finally:
        for h in handles:
            h.remove()
    hooked, store = run_with_adapters(model, image, hole)
    assert torch.equal(hooked, plain) and no_hooks_left(model)
    assert set(store.partial) == set(calls) and len(calls) == 2 * PCONV_LAYER_SIZE
    for name, (valid_in, new_valid, coverage) in store.partial.items():
        layer = model.get_submodule(name)
        true_in, true_new = calls[name]
        assert torch.equal(valid_in, true_in) and torch.equal(new_valid, true_new)
        conv = layer.input_conv
        ones = torch.ones(1, valid_in.shape[1], *conv.kernel_size)
        count = F.conv2d(valid_in, ones, stride=conv.stride, padding=conv.padding)
        assert torch.allclose(coverage[:, :1], count / ones.numel())
        assert torch.equal(new_valid[:, :1], (count > 0).float())
    # the image mask is 3-channel; the first layer sees the valid mask (1 - hole)
    assert torch.equal(store.partial["enc_1.conv"][0], (1 - hole).expand(-1, 3, -1, -1))
    with Recorder(model, find_sites(model), n_labels=int(batch["labels"].max()) + 1) as recorder:
        out = recorder.forward(image, hole, None, batch["labels"], torch.arange(N_IMAGES))
    assert torch.equal(out, plain) and no_hooks_left(model)


def test_pconv_input_conventions(pconv):
    model = pconv["model"]
    assert model.accepts_sketch is False
    torch.manual_seed(1)
    image, hole = torch.rand(1, 3, 100, 72), torch.zeros(1, 1, 100, 72)
    hole[..., 20:60, 10:50] = 1
    with torch.no_grad():
        out = model(image, hole)
        noisy = model(image * (1 - hole) + torch.rand_like(image) * hole, hole)
        # by hand: reflection padding to 128x128, ImageNet normalisation, 3-channel valid mask
        padded = F.pad(image, (0, 56, 0, 28), mode="reflect")
        valid = 1 - F.pad(hole, (0, 56, 0, 28), mode="reflect").expand(-1, 3, -1, -1)
        mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        raw, _ = model.unet((padded - mean) / std * valid, valid)
    assert out.shape == (1, 3, 100, 72) and torch.equal(out, noisy)
    assert torch.allclose(out, (raw * std + mean)[..., :100, :72])
    with pytest.raises(ValueError, match="takes no sketch"):
        model(image, hole, torch.zeros_like(hole))


def test_pconv_wrong_keys_are_named(pconv, tmp_path, capsys):
    state = dict(pconv["state"])
    del state["dec_3.conv.mask_conv.weight"]
    state["enc_3.attention.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"model": state, "n_iter": 1}, path)
    with pytest.raises(ValueError) as info:
        load_pconv_unet(str(path))
    assert "missing keys: dec_3.conv.mask_conv.weight" in str(info.value)
    assert "unexpected keys: enc_3.attention.weight" in str(info.value)
    rc, text = record_cli(f"pconv-unet:{path}", tmp_path / "run", capsys)
    assert rc == 2 and "dec_3.conv.mask_conv.weight" in text and "enc_3.attention.weight" in text
    # another architecture's checkpoint, or no checkpoint at all
    with pytest.raises(ValueError, match=r"no 'G' entry \(entries: n_iter, model, optimizer\)"):
        load_deepfillv2(str(pconv["path"]))
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        load_pconv_unet(str(tmp_path / "notes.pth"))
    # checkpoints without BatchNorm's num_batches_tracked (PyTorch < 0.4.1) load
    old = {k: v for k, v in pconv["state"].items() if not k.endswith("num_batches_tracked")}
    torch.save({"model": old}, path)
    assert isinstance(load_pconv_unet(str(path)), LiuPConvUNet)


# ----------------------------------------------------------------------------- third-party adapters
class SigmoidGatedConv(nn.Module):
    """Reference-style gated conv: separate feature and gate convolutions and an ``nn.Sigmoid``
    submodule; the activation comes before the gating or after it."""

    def __init__(self, cin, cout, k=3, stride=1, activation_after=False):
        super().__init__()
        self.conv2d = nn.Conv2d(cin, cout, k, stride, k // 2)
        self.mask_conv2d = nn.Conv2d(cin, cout, k, stride, k // 2)
        self.sigmoid = nn.Sigmoid()
        self.act = nn.LeakyReLU(0.2)
        self.activation_after = activation_after

    def forward(self, x):
        gate = self.sigmoid(self.mask_conv2d(x))
        if self.activation_after:
            return self.act(self.conv2d(x) * gate)
        return self.act(self.conv2d(x)) * gate


class NvidiaStylePartialConv2d(nn.Conv2d):
    """NVIDIA's PartialConv2d semantics: ``multi_channel``/``return_mask`` keywords, a ones
    ``weight_maskUpdater``, ``slide_winsize`` and the cached ``update_mask``/``mask_ratio``."""

    def __init__(self, *args, multi_channel=False, return_mask=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.multi_channel, self.return_mask = multi_channel, return_mask
        shape = (self.out_channels, self.in_channels) if multi_channel else (1, 1)
        self.weight_maskUpdater = torch.ones(*shape, *self.kernel_size)
        self.slide_winsize = self.weight_maskUpdater[0].numel()
        self.last_size, self.update_mask, self.mask_ratio = (None, None), None, None

    def forward(self, x, mask_in=None):
        if mask_in is not None or self.last_size != tuple(x.shape[2:]):
            self.last_size = tuple(x.shape[2:])
            with torch.no_grad():
                if mask_in is None:
                    shape = x.shape[:2] if self.multi_channel else (1, 1)
                    mask = torch.ones(*shape, *x.shape[2:])
                else:
                    mask = mask_in
                count = F.conv2d(mask, self.weight_maskUpdater, None, self.stride, self.padding, self.dilation)
                self.mask_ratio = self.slide_winsize / (count + 1e-8)
                self.update_mask = count.clamp(0, 1)
                self.mask_ratio = self.mask_ratio * self.update_mask
        raw = super().forward(x * mask_in if mask_in is not None else x)
        bias = self.bias.view(1, -1, 1, 1)
        out = ((raw - bias) * self.mask_ratio + bias) * self.update_mask
        return (out, self.update_mask) if self.return_mask else out


class HoleTuplePartialConv(nn.Conv2d):
    """A partial convolution over *hole* masks returning ``(output, new_hole)``."""

    def forward(self, x, hole):
        valid = 1 - hole
        ones = torch.ones(1, 1, *self.kernel_size)
        count = F.conv2d(valid, ones, None, self.stride, self.padding)
        out = super().forward(x * valid) * (count > 0)
        return out, (count == 0).float()


class TinyThirdParty(nn.Module):
    """Two gated layers, two NVIDIA-style partial layers (return_mask on, then off with its
    cached mask read), one hole-mask tuple partial layer."""

    accepts_sketch = False

    def __init__(self):
        super().__init__()
        self.gate_before = SigmoidGatedConv(3, 8)
        self.gate_after = SigmoidGatedConv(8, 8, stride=2, activation_after=True)
        self.nv1 = NvidiaStylePartialConv2d(3, 8, 3, padding=1, return_mask=True)
        self.nv2 = NvidiaStylePartialConv2d(8, 8, 3, stride=2, padding=1, multi_channel=True)
        self.tuple = HoleTuplePartialConv(8, 4, 5, stride=2, padding=2)
        self.head = nn.Conv2d(8 + 8 + 4, 3, 1)

    def forward(self, image, hole, sketch=None):
        g = self.gate_after(self.gate_before(image))
        p, valid = self.nv1(image, 1 - hole)
        p2 = self.nv2(p, valid.expand(-1, 8, -1, -1))
        q, _ = self.tuple(p, hole)
        q = F.interpolate(q, size=p2.shape[-2:])
        return F.interpolate(self.head(torch.cat([g, p2, q], 1)), scale_factor=2.0)


@pytest.fixture
def third_party_adapters():
    classes = {SigmoidGatedConv: SigmoidModuleGateAdapter(gate="mask_conv2d", sigmoid="sigmoid"),
               NvidiaStylePartialConv2d: NvidiaPartialConv2dAdapter(),
               HoleTuplePartialConv: TuplePartialAdapter(mask_keyword="hole", hole_masks=True)}
    for cls, adapter in classes.items():
        register_adapter(cls, adapter)
    yield classes
    for cls in classes:
        ADAPTERS.pop(cls, None)


def test_third_party_adapters_on_tiny_reference_classes(third_party_adapters):
    torch.manual_seed(0)
    model = TinyThirdParty().eval()
    sites = {s.name: s for s in find_sites(model)}
    assert list(sites) == ["gate_before", "gate_after", "nv1", "nv2", "tuple"]
    assert sites["nv2"].window == 8 * 9 and sites["nv1"].window == 9 and sites["tuple"].window == 25
    assert sites["gate_after"].stride == 2 and sites["gate_after"].channels == 8
    batch = collate([parse_data("scenes:32", n=2)[i] for i in range(2)])
    image, hole = batch["image"], batch["hole"]
    with torch.no_grad():
        plain = model(image, hole)
    hooked, store = run_with_adapters(model, image, hole)
    assert torch.equal(hooked, plain) and no_hooks_left(model)
    # gates: sigmoid of the gate convolution, activation before or after the gating
    x1 = model.gate_before(image)
    for name, x in (("gate_before", image), ("gate_after", x1)):
        logits, gates = store.gated[name]
        expected_logits = model.get_submodule(name).mask_conv2d(x)
        assert torch.allclose(logits, expected_logits) and torch.allclose(gates, torch.sigmoid(expected_logits))
    # NVIDIA: the cached update_mask (return_mask on and off), count / slide_winsize
    valid_in, new_valid, coverage = store.partial["nv1"]
    assert torch.equal(valid_in, 1 - hole) and torch.equal(new_valid, model.nv1.update_mask)
    expected = F.conv2d(1 - hole, torch.ones(1, 1, 3, 3), padding=1) / 9
    assert torch.allclose(coverage, expected)
    valid_in, new_valid, coverage = store.partial["nv2"]
    assert valid_in.shape[1] == 8 and torch.equal(new_valid, model.nv2.update_mask) and new_valid.shape[-1] == 16
    assert torch.allclose(coverage, F.conv2d(valid_in, torch.ones(8, 8, 3, 3), stride=2, padding=1) / 72)
    # a tuple-returning layer over hole masks, converted to valid masks at the boundary
    valid_in, new_valid, coverage = store.partial["tuple"]
    assert torch.equal(valid_in, 1 - hole)
    assert torch.equal(new_valid, (coverage > 0).float())
    assert torch.allclose(coverage, F.conv2d(1 - hole, torch.ones(1, 1, 5, 5), stride=2, padding=2) / 25)
    # end to end through the recorder
    with Recorder(model, list(sites.values()), n_labels=int(batch["labels"].max()) + 1) as recorder:
        out = recorder.forward(image, hole, None, batch["labels"], torch.arange(2), capture=1)
    assert torch.equal(out, plain) and no_hooks_left(model)
    assert recorder.order == list(sites) and set(recorder.captured) == set(sites)


def test_nvidia_adapter_reuses_the_cached_mask_and_broadcasts_it(third_party_adapters):
    torch.manual_seed(0)
    layer = NvidiaStylePartialConv2d(3, 4, 3, padding=1, return_mask=True)
    (site,) = find_sites(nn.ModuleDict({"p": layer}))
    store = StoreSink()
    handles = site.adapter.attach(layer, store.bind("p"))
    try:
        x = torch.rand(2, 3, 16, 16)
        with torch.no_grad():
            layer(x)  # no mask: all valid, cached as [1, 1, h, w]
            assert store.partial["p"][1].shape == (2, 1, 16, 16) and store.partial["p"][0].min() == 1
            valid = torch.ones(2, 1, 16, 16)
            valid[:, :, 4:12, 4:12] = 0
            layer(x, valid)
            layer(x)  # same size, no mask: the layer reuses update_mask, and so does the adapter
        valid_in, new_valid, coverage = store.partial["p"]
        assert torch.equal(valid_in, valid) and torch.equal(new_valid, layer.update_mask)
        assert new_valid[0, 0, 8, 8] == 0 and torch.allclose(coverage, F.conv2d(valid, torch.ones(1, 1, 3, 3), padding=1) / 9)
    finally:
        for h in handles:
            h.remove()


class PortStyleGConv(nn.Module):
    """A port-style gated layer class that also serves the ungated to-RGB layer: one ``conv`` with
    ``2 * cnum_out`` outputs when gated, ``cnum_out`` outputs when ``gated=False``."""

    def __init__(self, cin, cout, gated=True):
        super().__init__()
        self.cnum_out, self.gated = cout, gated
        self.conv = nn.Conv2d(cin, 2 * cout if gated else cout, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        if not self.gated:
            return x
        features, logits = torch.split(x, self.cnum_out, dim=1)
        return F.elu(features) * torch.sigmoid(logits)


class PortStyleNet(nn.Module):
    accepts_sketch = False

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(PortStyleGConv(4, 6), PortStyleGConv(6, 4), PortStyleGConv(4, 3, gated=False))

    def forward(self, image, hole, sketch=None):
        return self.layers(torch.cat([image * (1 - hole), hole], 1))


def test_split_gate_adapter_skips_ungated_instances_of_a_shared_class():
    register_adapter(PortStyleGConv, SplitGateAdapter())
    try:
        torch.manual_seed(0)
        model = PortStyleNet().eval()
        sites = find_sites(model)
        assert [(s.name, s.channels) for s in sites] == [("layers.0", 6), ("layers.1", 4), ("layers.2", 3)]
        batch = collate([parse_data("scenes:32", n=2)[i] for i in range(2)])
        hooked, store = run_with_adapters(model, batch["image"], batch["hole"])
        assert set(store.gated) == {"layers.0", "layers.1"}  # the to-RGB layer is never recorded
        with torch.no_grad():
            raw = model.layers[0].conv(torch.cat([batch["image"] * (1 - batch["hole"]), batch["hole"]], 1))
        assert torch.equal(store.gated["layers.0"][0], raw[:, 6:])
        with Recorder(model, sites, n_labels=int(batch["labels"].max()) + 1) as recorder:
            out = recorder.forward(batch["image"], batch["hole"], None, batch["labels"], torch.arange(2))
        assert recorder.order == ["layers.0", "layers.1"] and torch.equal(out, hooked) and no_hooks_left(model)
    finally:
        ADAPTERS.pop(PortStyleGConv, None)
