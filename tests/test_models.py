"""The reference models and the registry: shapes, gradients, hook-point names, sketch handling."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from probe.data import Scenes, collate
from probe.errors import ModelError
from probe.layers import GatedConv2d, HookPoint, PartialConv2d
from probe.models import create_model, list_models, model_config
from probe.models.pconv import encoder_depth

HOOKS = {GatedConv2d: ("hook_feature", "hook_gate", "hook_out"),
         PartialConv2d: ("hook_valid", "hook_coverage", "hook_out")}


@pytest.fixture(scope="module")
def batch():
    """Two 64x64 Scenes items whose holes contain sketch lines."""
    items = [it for it in (Scenes(size=64, n=20, seed=5)[i] for i in range(20)) if it["sketch"].sum() > 5][:2]
    assert len(items) == 2
    return collate(items)


def test_registry_lists_both_reference_models():
    assert {"gated-scenes", "pconv-scenes"} <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_shapes(name, batch):
    torch.manual_seed(0)
    model = create_model(name, width=8, image_size=64)
    assert model.registry_name == name and model.config["width"] == 8 and model.config["image_size"] == 64
    out = model(batch["image"], batch["hole"])
    assert out.shape == (2, 3, 64, 64) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) > 0 for g in grads) >= 0.9 * len(grads)


@pytest.mark.parametrize("name", list_models())
def test_hole_pixels_do_not_reach_the_output(name, batch):
    """Both models zero the hole before their first layer: what was in the hole cannot matter."""
    torch.manual_seed(0)
    model = create_model(name, width=8, image_size=64).eval()
    noisy = batch["image"] * (1 - batch["hole"]) + torch.rand_like(batch["image"]) * batch["hole"]
    with torch.no_grad():
        assert torch.equal(model(batch["image"], batch["hole"]), model(noisy, batch["hole"]))


@pytest.mark.parametrize("name", list_models())
def test_every_inpainting_layer_has_named_hook_points(name):
    model = create_model(name, width=8, image_size=64)
    modules = dict(model.named_modules())
    layers = {n: m for n, m in modules.items() if isinstance(m, (GatedConv2d, PartialConv2d))}
    assert len(layers) >= 8
    for layer_name, layer in layers.items():
        for hook in HOOKS[type(layer)]:
            assert isinstance(modules.get(f"{layer_name}.{hook}"), HookPoint), f"{layer_name}.{hook}"
    points = {n for n, m in modules.items() if isinstance(m, HookPoint)}
    assert len(points) == 3 * len(layers)
    # the layer names are also the state_dict prefixes of the layers' weights
    keys = list(model.state_dict())
    assert all(any(k.startswith(layer_name + ".") for k in keys) for layer_name in layers)


def test_hook_point_names_follow_the_module_tree():
    gated = dict(create_model("gated-scenes", width=8).named_modules())
    for name in ("encoder.0.hook_gate", "encoder.1.hook_feature", "bottleneck.0.hook_gate", "decoder.1.hook_out"):
        assert isinstance(gated[name], HookPoint)
    pconv = dict(create_model("pconv-scenes", width=8).named_modules())
    for name in ("enc_1.hook_valid", "enc_5.hook_coverage", "dec_1.hook_out", "dec_5.hook_valid"):
        assert isinstance(pconv[name], HookPoint)


def test_hooks_on_hook_points_see_the_forward_pass(batch):
    model = create_model("gated-scenes", width=8, image_size=64)
    seen = {}
    handle = model.get_submodule("encoder.0.hook_gate").register_forward_hook(
        lambda m, i, o: seen.setdefault("gate", o.detach()))
    try:
        model(batch["image"], batch["hole"])
    finally:
        handle.remove()
    assert seen["gate"].shape == (2, 8, 64, 64)
    assert (seen["gate"] > 0).all() and (seen["gate"] < 1).all()


def signal_preserving_init(model: nn.Module) -> nn.Module:
    """Kaiming-normal weights, zero biases. With PyTorch's default init the gated generator's
    output hardly depends on its input (differences ~1e-8 after 17 gated layers), which would make
    "the sketch changes the output" untestable; with this init the output is small (each gate
    roughly halves the signal) but clearly depends on the input."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
    return model


def test_gated_model_uses_the_sketch(batch):
    torch.manual_seed(0)
    model = signal_preserving_init(create_model("gated-scenes", width=8, image_size=64)).eval()
    assert model.accepts_sketch
    seen = []
    handle = model.get_submodule("encoder.0.hook_gate").register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            plain = model(batch["image"], batch["hole"])
            zeros = model(batch["image"], batch["hole"], torch.zeros_like(batch["hole"]))
            sketched = model(batch["image"], batch["hole"], batch["sketch"])
    finally:
        handle.remove()
    assert torch.equal(plain, zeros)  # no sketch == an empty sketch
    assert (seen[2] - seen[0]).abs().max() > 1e-3  # the first gates see the sketch...
    assert (sketched - plain).abs().max() > 0.01 * plain.abs().max() > 0  # ...and so does the output
    # a sketch outside the hole is ignored (the model multiplies it by the hole)
    with torch.no_grad():
        outside = model(batch["image"], batch["hole"], batch["sketch"] + (1 - batch["hole"]))
    assert torch.equal(outside, sketched)


def test_pconv_model_refuses_a_sketch(batch):
    model = create_model("pconv-scenes", width=8, image_size=64)
    assert not model.accepts_sketch
    with pytest.raises(ValueError, match="takes no sketch"):
        model(batch["image"], batch["hole"], batch["sketch"])


def test_create_model_unknown_option():
    with pytest.raises(ModelError, match="no option"):
        create_model("gated-scenes", depth=3)
    with pytest.raises(ModelError, match="no option"):
        model_config("pconv-scenes", dilation=2)


def test_unknown_model_lists_the_registered_names():
    with pytest.raises(ModelError) as info:
        create_model("resnet-scenes")
    message = str(info.value)
    assert "resnet-scenes" in message
    assert all(name in message for name in list_models())


@pytest.mark.parametrize("image_size,depth", [(32, 4), (64, 5), (128, 6), (256, 7)])
def test_pconv_encoder_depth_per_image_size(image_size, depth):
    assert encoder_depth(image_size) == depth
    names = {n for n, _ in create_model("pconv-scenes", width=4, image_size=image_size).named_children()}
    assert names == {f"enc_{i}" for i in range(1, depth + 1)} | {f"dec_{i}" for i in range(1, depth + 1)}


def test_pconv_layer_geometry():
    model = create_model("pconv-scenes", width=8, image_size=64)
    kernels = [model.get_submodule(f"enc_{i}").kernel_size[0] for i in range(1, 6)]
    assert kernels == [7, 5, 5, 3, 3]
    assert all(model.get_submodule(f"enc_{i}").stride == (2, 2) for i in range(1, 6))
    assert all(model.get_submodule(f"dec_{i}").multi_channel for i in range(1, 6))
    assert model.get_submodule("dec_1").out_channels == 3
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.rand(1, 3, 48, 48), torch.zeros(1, 1, 48, 48))


def test_pconv_deepest_mask_for_a_small_hole_is_all_valid():
    """A centred 16x16 hole in 64x64 is gone at enc_3 (stride 2: 64 -> 32 -> 16 -> 8)."""
    model = create_model("pconv-scenes", width=4, image_size=64)
    hole = torch.zeros(1, 1, 64, 64)
    hole[..., 24:40, 24:40] = 1
    seen = {}
    handles = [model.get_submodule(f"enc_{i}.hook_valid").register_forward_hook(
        lambda m, inp, out, i=i: seen.__setitem__(i, out.detach())) for i in range(1, 6)]
    try:
        model(torch.rand(1, 3, 64, 64), hole)
    finally:
        for h in handles:
            h.remove()
    assert [seen[i].shape[-1] for i in range(1, 6)] == [32, 16, 8, 4, 2]
    # enc_1 (7x7): output i is a hole iff inputs 2i-3..2i+3 all lie in 24..39, i.e. i in 14..18
    expected1 = torch.ones(32, 32)
    expected1[14:19, 14:19] = 0
    assert torch.equal(seen[1][0, 0], expected1)
    # enc_2 (5x5): 2i-2..2i+2 inside 14..18 only for i = 8; enc_3 and deeper: all valid
    assert (seen[2][0, 0] == 0).nonzero().tolist() == [[8, 8]]
    assert all(seen[i].min() == 1 for i in (3, 4, 5))


@pytest.mark.parametrize("image_size,dilations", [(32, [2, 4, 1, 1]), (64, [2, 4, 8, 1, 1]),
                                                  (128, [2, 4, 8, 16, 1, 1])])
def test_gated_bottleneck_dilations(image_size, dilations):
    model = create_model("gated-scenes", width=4, image_size=image_size)
    assert [layer.feature.dilation[0] for layer in model.bottleneck] == dilations
    assert all(layer.gate.dilation == layer.feature.dilation for layer in model.bottleneck)
    x = torch.rand(1, 3, image_size, image_size)
    assert model(x, torch.zeros(1, 1, image_size, image_size)).shape == x.shape


def test_gated_model_layer_sequence():
    model = create_model("gated-scenes", width=8, image_size=64)
    strides = [layer.feature.stride[0] for layer in model.encoder]
    assert strides == [1, 2, 1, 2, 1, 1]
    assert model.encoder[0].feature.in_channels == 5  # image, hole, sketch
    assert all(isinstance(m, (GatedConv2d, nn.Upsample)) for m in model.decoder)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.rand(1, 3, 30, 30), torch.zeros(1, 1, 30, 30))
