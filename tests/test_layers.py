"""Known-answer tests of the observable layers against hand and numpy computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from probe.layers import GatedConv2d, HookPoint, PartialConv2d, same_padding


# ----------------------------------------------------------------------------- numpy references
def np_conv(x: np.ndarray, w: np.ndarray, stride: int = 1, padding: int = 0, dilation: int = 1) -> np.ndarray:
    """Cross-correlation ``x`` ``[B,C,H,W]`` with ``w`` ``[O,C,k,k]``, no bias, float64."""
    k = w.shape[-1]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (xp.shape[2] - dilation * (k - 1) - 1) // stride + 1
    wo = (xp.shape[3] - dilation * (k - 1) - 1) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for ky in range(k):
        for kx in range(k):
            y0, x0 = ky * dilation, kx * dilation
            patch = xp[:, :, y0:y0 + stride * (ho - 1) + 1:stride, x0:x0 + stride * (wo - 1) + 1:stride]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, ky, kx].astype(np.float64))
    return out


def np_partial_conv(x, valid, weight, bias, stride, padding, dilation):
    """NVIDIA's partial convolution written out in numpy (``valid`` has 1 or C_in channels)."""
    k = weight.shape[-1]
    ones = np.ones((1, valid.shape[1], k, k))
    window = valid.shape[1] * k * k
    count = np_conv(valid, ones, stride, padding, dilation)
    ratio = window / (count + 1e-8)
    new_valid = np.clip(count, 0, 1)
    with_bias = np_conv(x * valid, weight, stride, padding, dilation) + bias.reshape(1, -1, 1, 1)
    out = (with_bias - bias.reshape(1, -1, 1, 1)) * ratio * new_valid + bias.reshape(1, -1, 1, 1) * new_valid
    return out, new_valid, count / window


def geometric_valid(valid: np.ndarray, k: int, stride: int, padding: int, dilation: int) -> np.ndarray:
    """``[H, W]`` bool -> ``[H', W']`` bool: an output pixel is valid iff any in-bounds input pixel
    under its dilated, strided window is valid (computed pixel by pixel, independently of conv)."""
    h, w = valid.shape
    ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    out = np.zeros((ho, wo), bool)
    for i in range(ho):
        for j in range(wo):
            for a in range(k):
                for b in range(k):
                    y, x = i * stride - padding + a * dilation, j * stride - padding + b * dilation
                    if 0 <= y < h and 0 <= x < w and valid[y, x]:
                        out[i, j] = True
    return out


class Recorded:
    """Forward hooks on the HookPoints of ``module`` whose names end with ``suffix``, removed on
    exit; ``seen[name]`` holds the tensor each one saw."""

    def __init__(self, module: nn.Module, suffix: str = ""):
        self.points = {n: m for n, m in module.named_modules() if isinstance(m, HookPoint) and n.endswith(suffix)}
        self.seen: dict[str, torch.Tensor] = {}

    def __enter__(self):
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in self.points.items()]
        return self

    def _hook(self, name):
        def hook(module, inputs, output):
            self.seen[name] = output.detach().clone()
        return hook

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def test_hookpoint_is_identity():
    x = torch.randn(2, 3, 4, 4)
    assert HookPoint()(x) is x


# ----------------------------------------------------------------------------- GatedConv2d
def test_gated_conv_1x1_by_hand():
    layer = GatedConv2d(1, 1, 1, activation="elu")
    with torch.no_grad():
        layer.feature.weight.fill_(2.0)
        layer.feature.bias.fill_(0.5)
        layer.gate.weight.fill_(-1.0)
        layer.gate.bias.fill_(0.25)
    values = [-2.0, -0.5, 0.0, 1.0, 3.0]
    x = torch.tensor(values).view(1, 1, 1, 5)

    def elu(v):
        return v if v > 0 else math.exp(v) - 1

    def sigmoid(v):
        return 1 / (1 + math.exp(-v))

    expected = [elu(2 * v + 0.5) * sigmoid(-v + 0.25) for v in values]
    out = layer(x)
    assert out.shape == (1, 1, 1, 5)
    np.testing.assert_allclose(out.detach().view(-1).numpy(), expected, rtol=1e-6, atol=1e-7)


ACTIVATION_REFS = {
    "elu": lambda v: np.where(v > 0, v, np.expm1(np.minimum(v, 0))),
    "relu": lambda v: np.maximum(v, 0),
    "leaky_relu": lambda v: np.where(v > 0, v, 0.2 * v),
    None: lambda v: v,
}


@pytest.mark.parametrize("activation", list(ACTIVATION_REFS))
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_gated_conv_matches_numpy(activation, stride, dilation):
    torch.manual_seed(0)
    layer = GatedConv2d(3, 4, 3, stride=stride, dilation=dilation, activation=activation)
    x = torch.randn(2, 3, 9, 9)
    with Recorded(layer) as rec:
        out = layer(x)
    pad = same_padding(3, dilation)
    feat = np_conv(x.numpy(), layer.feature.weight.detach().numpy(), stride, pad, dilation)
    feat += layer.feature.bias.detach().numpy().reshape(1, -1, 1, 1)
    gate_pre = np_conv(x.numpy(), layer.gate.weight.detach().numpy(), stride, pad, dilation)
    gate_pre += layer.gate.bias.detach().numpy().reshape(1, -1, 1, 1)
    feature = ACTIVATION_REFS[activation](feat)
    gate = 1 / (1 + np.exp(-gate_pre))
    np.testing.assert_allclose(out.detach().numpy(), feature * gate, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rec.seen["hook_feature"].numpy(), feature, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rec.seen["hook_gate"].numpy(), gate, rtol=1e-4, atol=1e-6)
    assert torch.equal(rec.seen["hook_out"], out.detach())
    g = rec.seen["hook_gate"]
    assert g.shape == out.shape and (g > 0).all() and (g < 1).all()


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("dilation", [1, 2, 4])
def test_gated_conv_default_padding_keeps_size(kernel, dilation):
    layer = GatedConv2d(2, 3, kernel, dilation=dilation)
    assert layer(torch.randn(1, 2, 17, 20)).shape == (1, 3, 17, 20)
    assert same_padding(kernel, dilation) == dilation * (kernel - 1) // 2


def test_gated_conv_stride_two_halves():
    assert GatedConv2d(2, 3, 3, stride=2)(torch.randn(1, 2, 16, 16)).shape == (1, 3, 8, 8)


def test_gated_conv_identity_activation_keeps_negative_features():
    layer = GatedConv2d(1, 1, 1, activation=None)
    assert isinstance(layer.activation, nn.Identity)
    with torch.no_grad():
        layer.feature.weight.fill_(1.0)
        layer.feature.bias.zero_()
        layer.gate.weight.zero_()
        layer.gate.bias.zero_()  # gate = sigmoid(0) = 0.5 everywhere
    x = torch.tensor([-3.0, -1.0, 2.0]).view(1, 1, 1, 3)
    np.testing.assert_allclose(layer(x).detach().view(-1).numpy(), [-1.5, -0.5, 1.0], rtol=1e-6)


def test_gated_conv_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        GatedConv2d(1, 1, 3, activation="tanh")


# ----------------------------------------------------------------------------- PartialConv2d
@pytest.mark.parametrize("multi_channel", [False, True])
@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 1, 1), (1, 2, 2), (2, 0, 1)])
def test_partial_conv_matches_numpy_nvidia_semantics(multi_channel, stride, padding, dilation):
    rng = np.random.default_rng(3)
    torch.manual_seed(3)
    c_in, c_out = 3, 4
    layer = PartialConv2d(c_in, c_out, 3, stride=stride, padding=padding, dilation=dilation,
                          multi_channel=multi_channel)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
    x = rng.normal(size=(2, c_in, 12, 12)).astype(np.float32)
    valid = (rng.random((2, c_in if multi_channel else 1, 12, 12)) < 0.3).astype(np.float32)
    valid[:, :, 2:9, 2:9] = 0  # a hole larger than any window: some outputs see no valid pixel
    with Recorded(layer) as rec:
        out, new_valid = layer(torch.from_numpy(x), torch.from_numpy(valid))
    ref_out, ref_valid, ref_cov = np_partial_conv(x, valid, layer.weight.detach().numpy(),
                                                  layer.bias.detach().numpy(), stride, padding, dilation)
    assert new_valid.shape == (2, 1) + ref_out.shape[2:]
    assert out.shape == ref_out.shape
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(new_valid.numpy(), ref_valid)
    assert ref_valid.min() == 0 and ref_valid.max() == 1  # both cases really occur
    np.testing.assert_allclose(rec.seen["hook_coverage"].numpy(), ref_cov, rtol=1e-6, atol=1e-7)
    assert torch.equal(rec.seen["hook_valid"], new_valid)
    assert torch.equal(rec.seen["hook_out"], out.detach())
    # where nothing under the window is valid the output is exactly zero, bias included
    assert (out.detach()[new_valid.expand_as(out) == 0] == 0).all()


def test_partial_conv_renormalises_constant_image():
    """Claim P1 by hand: with all weights w, a constant image c gives 9*w*c + b wherever at
    least one input is valid, whether one or nine inputs are valid."""
    layer = PartialConv2d(1, 1, 3, padding=1)
    with torch.no_grad():
        layer.weight.fill_(0.5)
        layer.bias.fill_(0.25)
    x = torch.full((1, 1, 7, 7), 2.0)
    valid = torch.zeros(1, 1, 7, 7)
    valid[0, 0, 3, 3] = 1  # a single valid pixel
    valid[0, 0, 0, :] = 1  # and a valid top row
    out, new_valid = layer(x, valid)
    expected = 9 * 0.5 * 2.0 + 0.25
    on = new_valid[0, 0] == 1
    assert on[2:5, 2:5].all() and on[:2].all() and not on[5:, 0].any()
    np.testing.assert_allclose(out[0, 0][on].detach().numpy(), expected, rtol=1e-5)
    assert (out[0, 0][~on] == 0).all()
    # coverage: the centre sees 1 of 9 valid pixels; a pixel of row 1 away from the border sees 3 of 9
    cov = layer.hook_coverage
    seen = {}
    handle = cov.register_forward_hook(lambda m, i, o: seen.setdefault("c", o))
    try:
        layer(x, valid)
    finally:
        handle.remove()
    assert seen["c"][0, 0, 3, 3].item() == pytest.approx(1 / 9)
    assert seen["c"][0, 0, 1, 4].item() == pytest.approx(3 / 9)
    assert seen["c"][0, 0, 0, 0].item() == pytest.approx(2 / 9)  # zero padding counts as invalid


def test_partial_conv_without_bias():
    layer = PartialConv2d(2, 3, 3, padding=1, bias=False)
    x, valid = torch.randn(1, 2, 6, 6), (torch.rand(1, 1, 6, 6) < 0.5).float()
    out, _ = layer(x, valid)
    ref, _, _ = np_partial_conv(x.numpy(), valid.numpy(), layer.weight.detach().numpy(), np.zeros(3), 1, 1, 1)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-4, atol=1e-5)


def test_partial_conv_window_size():
    assert PartialConv2d(4, 2, 3).window_size == 9
    assert PartialConv2d(4, 2, 3, multi_channel=True).window_size == 36
    assert PartialConv2d(4, 2, 5, multi_channel=True).window_size == 100


@pytest.mark.parametrize("multi_channel,shape", [
    (False, (1, 3, 8, 8)),   # C_in channels where one is expected
    (True, (1, 1, 8, 8)),    # one channel where C_in are expected
    (False, (1, 1, 8, 7)),   # spatial size differs from x
    (False, (1, 8, 8)),      # not 4-d
])
def test_partial_conv_rejects_wrong_valid_shape(multi_channel, shape):
    layer = PartialConv2d(3, 2, 3, padding=1, multi_channel=multi_channel)
    with pytest.raises(ValueError, match="valid mask must be"):
        layer(torch.randn(1, 3, 8, 8), torch.ones(shape))


def test_partial_conv_stack_erodes_centred_square_by_one_pixel_per_layer():
    """Analytic oracle (claim P3): 3x3 stride-1 padding-1 layers shrink a centred square hole of
    side 12 in a 32x32 image by one pixel per side per layer, until it vanishes at layer 6."""
    torch.manual_seed(0)
    size, side, n_layers = 32, 12, 8
    stack = nn.ModuleList(PartialConv2d(2, 2, 3, padding=1) for _ in range(n_layers))
    valid = torch.ones(1, 1, size, size)
    start = (size - side) // 2
    valid[..., start:start + side, start:start + side] = 0
    x = torch.randn(1, 2, size, size)
    with Recorded(stack, "hook_valid") as rec:
        v = valid
        for layer in stack:
            x, v = layer(x, v)
    assert sorted(rec.seen) == sorted(f"{i}.hook_valid" for i in range(n_layers))
    for i in range(n_layers):
        s = max(side - 2 * (i + 1), 0)
        expected = torch.ones(1, 1, size, size)
        lo = start + (i + 1)
        expected[..., lo:lo + s, lo:lo + s] = 0
        got = rec.seen[f"{i}.hook_valid"]
        assert torch.equal(got, expected), f"layer {i}: hole side {int((got == 0).sum().sqrt())}, expected {s}"
    assert not any(h for m in stack.modules() for h in m._forward_hooks.values())


@pytest.mark.parametrize("stack", [
    [(3, 2, 1, 1), (3, 1, 2, 2), (5, 2, 2, 1), (3, 1, 4, 4)],
    [(7, 2, 3, 1), (5, 2, 2, 1), (3, 2, 1, 1), (3, 2, 1, 1)],
    [(3, 1, 0, 3), (3, 2, 0, 1), (2, 1, 0, 1)],
])
def test_partial_conv_strided_dilated_stack_matches_geometry(stack):
    rng = np.random.default_rng(7)
    size = 40
    valid = rng.random((size, size)) < 0.04
    valid[10:35, 5:30] = False
    layers = nn.ModuleList(PartialConv2d(1, 1, k, stride=s, padding=p, dilation=d) for k, s, p, d in stack)
    predicted, v = [], valid
    for k, s, p, d in stack:
        v = geometric_valid(v, k, s, p, d)
        predicted.append(v)
    with Recorded(layers, "hook_valid") as rec:
        x, m = torch.randn(1, 1, size, size), torch.from_numpy(valid[None, None].astype(np.float32))
        for layer in layers:
            x, m = layer(x, m)
    for i, expected in enumerate(predicted):
        got = rec.seen[f"{i}.hook_valid"][0, 0].numpy()
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got == 1, expected, err_msg=f"layer {i}")
    assert any(0 < p.mean() < 1 for p in predicted)  # the test is not trivially all-valid/all-hole


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.sampled_from([1, 2, 3, 5]), stride=st.integers(1, 3), padding=st.integers(0, 3),
       dilation=st.integers(1, 3), channels=st.integers(1, 3), multi=st.booleans(),
       density=st.floats(0.0, 0.5), seed=st.integers(0, 2 ** 16))
def test_partial_conv_new_valid_matches_geometry_property(k, stride, padding, dilation, channels, multi,
                                                          density, seed):
    size = 13
    if (size + 2 * padding - dilation * (k - 1) - 1) < 0:
        return
    rng = np.random.default_rng(seed)
    c = channels if multi else 1
    valid = rng.random((c, size, size)) < density
    layer = PartialConv2d(channels, 2, k, stride=stride, padding=padding, dilation=dilation, multi_channel=multi)
    _, new_valid = layer(torch.randn(1, channels, size, size), torch.from_numpy(valid[None].astype(np.float32)))
    expected = geometric_valid(valid.any(0), k, stride, padding, dilation)
    np.testing.assert_array_equal(new_valid[0, 0].numpy() == 1, expected)
    assert set(np.unique(new_valid.numpy())) <= {0.0, 1.0}
