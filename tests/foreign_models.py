"""Small inpainting generators in the styles of public code, for discovery (issues 17 and 27).

Written here, not copied; each follows gateprobe's calling convention ``model(image, hole,
sketch=None) -> [B, 3, H, W]`` (``hole`` 1 = hole), takes sizes that are multiples of 8, and has
no adapter. ``SITES[name]`` lists what discovery must find: ``(site, kind, channels)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


def masked_input(image: Tensor, hole: Tensor) -> Tensor:
    """``[B, 4, H, W]``: the image zeroed in the hole, and the hole."""
    return torch.cat([image * (1 - hole), hole], 1)


# 1. a separate gate convolution; its nn.Sigmoid lives inside a spectral-norm wrapper
class SNWrap(nn.Module):
    """A convolution under spectral norm, then an optional activation module."""

    def __init__(self, conv: nn.Conv2d, activation: nn.Module | None = None):
        super().__init__()
        self.module = spectral_norm(conv)
        self.activation = activation or nn.Identity()

    def forward(self, x):
        return self.activation(self.module(x))


class SNGatedConv(nn.Module):
    def __init__(self, cin, cout, k=3, stride=1):
        super().__init__()
        self.conv2d = SNWrap(nn.Conv2d(cin, cout, k, stride, k // 2))
        self.mask_conv2d = SNWrap(nn.Conv2d(cin, cout, k, stride, k // 2), nn.Sigmoid())
        self.activation = nn.LeakyReLU(0.2)

    def forward(self, x):
        return self.activation(self.conv2d(x)) * self.mask_conv2d(x)


class SNGatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(SNGatedConv(4, 8, 5), SNGatedConv(8, 12, 3, 2), SNGatedConv(12, 8, 3))
        self.to_rgb = nn.Conv2d(8, 3, 3, 1, 1)

    def forward(self, image, hole, sketch=None):
        x = self.layers(masked_input(image, hole))
        return torch.sigmoid(self.to_rgb(F.interpolate(x, scale_factor=2.0)))  # an ungated sigmoid output


# 2. one convolution with 2C outputs, torch.split and a functional sigmoid (DeepFill v2 ports)
class SplitGConv(nn.Module):
    def __init__(self, cin, cout, k=3, stride=1, dilation=1):
        super().__init__()
        self.cout = cout
        self.conv = nn.Conv2d(cin, 2 * cout, k, stride, dilation * (k // 2), dilation)

    def forward(self, x):
        features, gates = torch.split(self.conv(x), self.cout, dim=1)
        return F.elu(features) * torch.sigmoid(gates)


class SplitGateNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1, self.enc2 = SplitGConv(4, 8, 5), SplitGConv(8, 16, 3, 2)
        self.mid = SplitGConv(16, 16, 3, dilation=2)
        self.dec = SplitGConv(16, 8, 3)
        self.rgb = nn.Conv2d(8, 3, 3, 1, 1)

    def forward(self, image, hole, sketch=None):
        x = self.mid(self.enc2(self.enc1(masked_input(image, hole))))
        x = self.dec(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return torch.tanh(self.rgb(x)) * 0.5 + 0.5


# 3. an nn.Conv2d subclass that gates its own output
class SelfGatedConv(nn.Conv2d):
    def __init__(self, cin, cout, k, stride=1):
        super().__init__(cin, 2 * cout, k, stride, k // 2)

    def forward(self, x):
        features, gates = super().forward(x).chunk(2, dim=1)
        return torch.relu(features) * gates.sigmoid()


class SelfGatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(SelfGatedConv(4, 8, 3), SelfGatedConv(8, 8, 3, 2), SelfGatedConv(8, 6, 3))
        self.head = nn.ConvTranspose2d(6, 3, 4, 2, 1)

    def forward(self, image, hole, sketch=None):
        return self.head(self.body(masked_input(image, hole))).clamp(0, 1)


# 4. gating written inline in a residual block's forward (two gates in one module)
class InlineGatedRes(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.feat1, self.gate1 = nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, c, 3, 1, 1)
        self.feat2, self.gate2 = nn.Conv2d(c, c, 3, 1, 2, 2), nn.Conv2d(c, c, 3, 1, 2, 2)

    def forward(self, x):
        h = F.elu(self.feat1(x)) * torch.sigmoid(self.gate1(x))
        h = self.feat2(h) * F.hardsigmoid(self.gate2(h))
        return x + h * torch.sigmoid(h)  # SiLU: not a gate


class InlineResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(4, 8, 3, 1, 1)
        self.res = nn.Sequential(InlineGatedRes(8), InlineGatedRes(8))
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, image, hole, sketch=None):
        return self.out(self.res(self.stem(masked_input(image, hole))))


# 5. LBAM-style learnable attention maps with a Gaussian-shaped (non-sigmoid) activation
class GaussActivation(nn.Module):
    """Asymmetric Gaussian: ``a * exp(-s1 (x - mu)^2)`` below ``mu``, ``1 + (a - 1) exp(-s2 (x - mu)^2)``
    above; values in (0, a], a = 1.1."""

    def __init__(self, a=1.1, mu=2.0, sigma1=1.0, sigma2=1.0):
        super().__init__()
        self.a, self.mu = nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(mu))
        self.sigma1, self.sigma2 = nn.Parameter(torch.tensor(sigma1)), nn.Parameter(torch.tensor(sigma2))

    def forward(self, x):
        d = (x - self.mu) ** 2
        return torch.where(x < self.mu, self.a * torch.exp(-self.sigma1 * d), 1 + (self.a - 1) * torch.exp(-self.sigma2 * d))


class ForwardAttention(nn.Module):
    def __init__(self, cin, cout, mask_in):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 4, 2, 1, bias=False)
        self.mask_conv = nn.Conv2d(mask_in, cout, 4, 2, 1, bias=False)
        self.attention = GaussActivation()
        self.alpha = 0.8

    def forward(self, x, mask):
        mask_features = self.mask_conv(mask)
        out = self.conv(x) * self.attention(mask_features)
        return F.leaky_relu(out, 0.2), torch.pow(F.relu(mask_features), self.alpha)


class LBAMStyleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.ec1, self.ec2 = ForwardAttention(3, 8, 3), ForwardAttention(8, 16, 8)
        self.up = nn.ConvTranspose2d(16, 3, 8, 4, 2)

    def forward(self, image, hole, sketch=None):
        valid = (1 - hole).expand(-1, 3, -1, -1)
        x, m = self.ec1(image * valid, valid)
        x, _ = self.ec2(x, m)
        return torch.sigmoid(self.up(x))


# 6. NVIDIA's PartialConv2d design (multi-channel masks, dilation that keeps the size)
class NVPartialConv2d(nn.Conv2d):
    def __init__(self, *args, multi_channel=False, return_mask=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.multi_channel, self.return_mask = multi_channel, return_mask
        shape = (self.out_channels, self.in_channels) if multi_channel else (1, 1)
        self.weight_maskUpdater = torch.ones(*shape, *self.kernel_size)
        self.slide_winsize = float(self.weight_maskUpdater[0].numel())
        self.last_size, self.update_mask, self.mask_ratio = None, None, None

    def forward(self, input, mask_in=None):
        if mask_in is not None or self.last_size != tuple(input.shape):
            self.last_size = tuple(input.shape)
            with torch.no_grad():
                if self.weight_maskUpdater.type() != input.type():
                    self.weight_maskUpdater = self.weight_maskUpdater.to(input)
                mask = mask_in if mask_in is not None else torch.ones_like(input[:, :1 if not self.multi_channel else None])
                self.update_mask = F.conv2d(mask, self.weight_maskUpdater, bias=None, stride=self.stride,
                                            padding=self.padding, dilation=self.dilation, groups=1)
                self.mask_ratio = self.slide_winsize / (self.update_mask + 1e-8)
                self.update_mask = torch.clamp(self.update_mask, 0, 1)
                self.mask_ratio = torch.mul(self.mask_ratio, self.update_mask)
        raw_out = super().forward(torch.mul(input, mask_in) if mask_in is not None else input)
        bias_view = self.bias.view(1, self.out_channels, 1, 1)
        output = torch.mul(torch.mul(raw_out - bias_view, self.mask_ratio) + bias_view, self.update_mask)
        return (output, self.update_mask) if self.return_mask else output


class NVPartialNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.p1 = NVPartialConv2d(3, 8, 5, 2, 2, multi_channel=True)
        self.p2 = NVPartialConv2d(8, 8, 3, 1, 2, 2, multi_channel=True)  # k 3, dilation 2, padding 2
        self.p3 = NVPartialConv2d(8, 3, 3, 1, 1)

    def forward(self, image, hole, sketch=None):
        valid = (1 - hole).expand(-1, 3, -1, -1)
        x, m = self.p1(image, valid)
        x, m = self.p2(F.relu(x), m)
        x, _ = self.p3(F.interpolate(F.relu(x), scale_factor=2.0), F.interpolate(m[:, :1], scale_factor=2.0))
        return x


# 7. naoto0804-style partial convolution: 3-channel masks, an all-ones mask_conv, in-place fills
class PConv(nn.Module):
    def __init__(self, cin, cout, k, stride=1, bias=True):
        super().__init__()
        self.input_conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=bias)
        self.mask_conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        nn.init.constant_(self.mask_conv.weight, 1.0)
        for p in self.mask_conv.parameters():
            p.requires_grad = False

    def forward(self, input, mask):
        output = self.input_conv(input * mask)
        output_bias = self.input_conv.bias.view(1, -1, 1, 1).expand_as(output)
        with torch.no_grad():
            output_mask = self.mask_conv(mask)
        no_update_holes = output_mask == 0
        mask_sum = output_mask.masked_fill_(no_update_holes, 1.0)
        output = ((output - output_bias) / mask_sum + output_bias).masked_fill_(no_update_holes, 0.0)
        new_mask = torch.ones_like(output).masked_fill_(no_update_holes, 0.0)
        return output, new_mask


class NaotoStyleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc_1, self.enc_2 = PConv(3, 8, 7, 2), PConv(8, 16, 5, 2)
        self.dec_2, self.dec_1 = PConv(16 + 8, 8, 3), PConv(8 + 3, 3, 3)

    def forward(self, image, hole, sketch=None):
        valid = (1 - hole).expand(-1, 3, -1, -1)
        h1, m1 = self.enc_1(image * valid, valid)
        h2, m2 = self.enc_2(F.relu(h1), m1)
        up = lambda t: F.interpolate(t, scale_factor=2.0)
        h, m = self.dec_2(torch.cat([up(h2), h1], 1), torch.cat([up(m2), m1], 1))
        h, _ = self.dec_1(torch.cat([up(F.leaky_relu(h, 0.2)), image * valid], 1), torch.cat([up(m), valid], 1))
        return h


# 8. a partial convolution written as a function around a plain nn.Conv2d
def partial_conv(conv: nn.Conv2d, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Renormalised ``conv`` over the valid pixels of ``x``; ``valid`` ``[B, 1, H, W]``."""
    k = conv.kernel_size[0]
    ones = torch.ones(1, 1, k, k, dtype=x.dtype, device=x.device)
    count = F.conv2d(valid, ones, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
    new_valid = (count > 0).to(x.dtype)
    bias = conv.bias.view(1, -1, 1, 1)
    out = (conv(x * valid) - bias) * (k * k / count.clamp(min=1)) * new_valid + bias * new_valid
    return out, new_valid


class FunctionalPConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1, self.enc2 = nn.Conv2d(3, 8, 5, 2, 2), nn.Conv2d(8, 16, 3, 2, 1)
        self.dec = nn.Conv2d(16, 8, 3, 1, 1)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, image, hole, sketch=None):
        valid = 1 - hole
        x, v = partial_conv(self.enc1, image, valid)
        x, v = partial_conv(self.enc2, F.relu(x), v)
        x, v = partial_conv(self.dec, F.interpolate(F.relu(x), scale_factor=4.0), F.interpolate(v, scale_factor=4.0))
        return self.out(x)


# 9. partial convolutions as functions around plain nn.Conv2d: the new mask a max-pool of the old
#    one (computed before the count), one inside a block; the last one's mask the count's clamp
def pooled_partial_conv(conv: nn.Conv2d, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """``partial_conv`` with ``new_valid = max_pool2d(valid)``; ``valid`` ``[B, 1, H, W]``."""
    k = conv.kernel_size[0]
    new_valid = F.max_pool2d(valid, k, conv.stride, conv.padding)
    with torch.no_grad():
        count = F.conv2d(valid, torch.ones(1, 1, k, k), None, conv.stride, conv.padding)
    return conv(x * valid) * (k * k / count.clamp(min=1)) * new_valid, new_valid


def clamped_partial_conv(conv: nn.Conv2d, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """``partial_conv`` with ``new_valid = clamp(count, 0, 1)`` and NVIDIA's ratio."""
    k = conv.kernel_size[0]
    count = F.conv2d(valid, torch.ones(1, 1, k, k), stride=conv.stride, padding=conv.padding)
    new_valid = torch.clamp(count, 0, 1)
    ratio = k * k / (count + 1e-8) * new_valid
    return conv(x * valid) * ratio, new_valid


class PConvBlock(nn.Module):
    def __init__(self, cin, cout, k, stride):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2)

    def forward(self, x, valid):
        x, valid = pooled_partial_conv(self.conv, x, valid)
        return F.relu(x), valid


class FunctionalPoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.down1, self.down2 = PConvBlock(3, 8, 5, 2), PConvBlock(8, 16, 3, 2)
        self.up = nn.Conv2d(16, 8, 3, 1, 1)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, image, hole, sketch=None):
        x, v = self.down2(*self.down1(image, 1 - hole))
        x, _ = clamped_partial_conv(self.up, F.interpolate(x, scale_factor=4.0), F.interpolate(v, scale_factor=4.0))
        return self.out(x)


# 10. LBAM: forward attention in the encoder, reverse mask convolutions whose maps are concatenated
#     with the forward ones and multiply concatenated features in the decoder
class LBAMForward(ForwardAttention):
    """Returns the gated features, the updated mask, the convolution's features and the maps."""

    def forward(self, x, mask):
        conv_features, mask_features = self.conv(x), self.mask_conv(mask)
        maps = self.attention(mask_features)
        return F.leaky_relu(conv_features * maps, 0.2), torch.pow(F.relu(mask_features), self.alpha), conv_features, maps


class ReverseMaskConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.reverse_conv = nn.Conv2d(cin, cout, 4, 2, 1, bias=False)
        self.activation = GaussActivation()

    def forward(self, masks):
        features = self.reverse_conv(masks)
        return self.activation(features), torch.pow(F.relu(features), 0.8)


class ReverseAttention(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)

    def forward(self, skip, features, maps):
        return F.leaky_relu(torch.cat((skip, self.conv(features)), 1) * maps, 0.2)


class LBAMNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.ec1, self.ec2, self.ec3 = LBAMForward(3, 8, 3), LBAMForward(8, 16, 8), LBAMForward(16, 16, 16)
        self.rev1, self.rev2 = ReverseMaskConv(3, 8), ReverseMaskConv(8, 16)
        self.dc2, self.dc1 = ReverseAttention(16, 16), ReverseAttention(32, 8)
        self.out = nn.ConvTranspose2d(16, 3, 4, 2, 1)

    def forward(self, image, hole, sketch=None):
        valid = (1 - hole).expand(-1, 3, -1, -1)
        x1, m1, skip1, maps1 = self.ec1(image * valid, valid)
        x2, m2, skip2, maps2 = self.ec2(x1, m1)
        x3, _, _, _ = self.ec3(x2, m2)
        reverse1, reverse_mask1 = self.rev1(1 - valid)
        reverse2, _ = self.rev2(reverse_mask1)
        d2 = self.dc2(skip2, x3, torch.cat((maps2, reverse2), 1))
        d1 = self.dc1(skip1, d2, torch.cat((maps1, reverse1), 1))
        return torch.tanh(self.out(d1))


# 11. gates written inline as chunks of one convolution's output (two per block) and one whose
#     logit no single module made
class ChunkGatedRes(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, 2 * c, 3, 1, 1), nn.Conv2d(c, 2 * c, 3, 1, 2, 2)
        self.a, self.b = nn.Conv2d(c, c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        features, gate = self.conv1(x).chunk(2, 1)
        h = F.elu(features) * torch.sigmoid(gate)
        features, gate = self.conv2(h).chunk(2, 1)
        h = features * torch.sigmoid(gate)
        return x + h * torch.sigmoid(self.a(x) + self.b(x))


class ChunkResNet(InlineResNet):
    def __init__(self):
        super().__init__()
        self.res = nn.Sequential(ChunkGatedRes(8), ChunkGatedRes(8))


# 12. a spectral norm that runs its power iteration in every forward, eval mode too, assigning
#     ``.data`` (christiancosgrove/pytorch-spectral-normalization-gan, used by many DeepFill ports)
def l2normalize(v: Tensor, eps: float = 1e-12) -> Tensor:
    return v / (v.norm() + eps)


class SelfUpdatingSpectralNorm(nn.Module):
    def __init__(self, module: nn.Module, name: str = "weight"):
        super().__init__()
        self.module, self.name = module, name
        w = getattr(module, name)
        height, width = w.shape[0], w.view(w.shape[0], -1).shape[1]
        u = nn.Parameter(l2normalize(w.data.new(height).normal_(0, 1)), requires_grad=False)
        v = nn.Parameter(l2normalize(w.data.new(width).normal_(0, 1)), requires_grad=False)
        del module._parameters[name]
        module.register_parameter(name + "_u", u)
        module.register_parameter(name + "_v", v)
        module.register_parameter(name + "_bar", nn.Parameter(w.data))

    def forward(self, *args):
        u, v, w = (getattr(self.module, self.name + s) for s in ("_u", "_v", "_bar"))
        height = w.data.shape[0]
        v.data = l2normalize(torch.mv(torch.t(w.view(height, -1).data), u.data))
        u.data = l2normalize(torch.mv(w.view(height, -1).data, v.data))
        sigma = u.dot(w.view(height, -1).mv(v))
        setattr(self.module, self.name, w / sigma.expand_as(w))
        return self.module.forward(*args)


class SelfNormGatedConv(nn.Module):
    def __init__(self, cin, cout, k=3, stride=1):
        super().__init__()
        self.pad = nn.ZeroPad2d(k // 2)
        self.conv2d = SelfUpdatingSpectralNorm(nn.Conv2d(cin, cout, k, stride))
        self.mask_conv2d = SelfUpdatingSpectralNorm(nn.Conv2d(cin, cout, k, stride))
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        x = self.pad(x)
        return F.elu(self.conv2d(x)) * self.sigmoid(self.mask_conv2d(x))


class SelfNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(SelfNormGatedConv(4, 8, 5), SelfNormGatedConv(8, 8, 3, 2), SelfNormGatedConv(8, 8))
        self.to_rgb = nn.ConvTranspose2d(8, 3, 4, 2, 1)

    def forward(self, image, hole, sketch=None):
        return torch.sigmoid(self.to_rgb(self.layers(masked_input(image, hole))))


# 13. one mask convolution's sigmoid maps split between two feature branches (a dual-branch gate)
class SplitMapBlock(nn.Module):
    def __init__(self, cin, c):
        super().__init__()
        self.c = c
        self.mask_conv = nn.Conv2d(cin, 2 * c, 3, 1, 1)
        self.branch_a, self.branch_b = nn.Conv2d(cin, c, 3, 1, 1), nn.Conv2d(cin, c, 5, 1, 2)

    def forward(self, x):
        maps = torch.sigmoid(self.mask_conv(x))
        return torch.cat((self.branch_a(x) * maps[:, :self.c], self.branch_b(x) * maps[:, self.c:]), 1)


class SplitMapNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = SplitMapBlock(4, 6)
        self.out = nn.Conv2d(12, 3, 1)

    def forward(self, image, hole, sketch=None):
        return self.out(self.block(masked_input(image, hole)))


MODELS = {"sn_sigmoid": SNGatedNet, "split": SplitGateNet, "self_gated": SelfGatedNet, "inline_res": InlineResNet,
          "lbam": LBAMStyleNet, "nvidia": NVPartialNet, "naoto": NaotoStyleNet, "functional": FunctionalPConvNet,
          "functional_pool": FunctionalPoolNet, "lbam_reverse": LBAMNet, "chunk_res": ChunkResNet,
          "self_norm": SelfNormNet, "split_maps": SplitMapNet}
GATE_ACTIVATIONS = {"lbam": ("GaussActivation",), "lbam_reverse": ("GaussActivation",)}  # non-sigmoid: named

SITES = {
    "sn_sigmoid": [("layers.0", "gated", 8), ("layers.1", "gated", 12), ("layers.2", "gated", 8)],
    "split": [("enc1", "gated", 8), ("enc2", "gated", 16), ("mid", "gated", 16), ("dec", "gated", 8)],
    "self_gated": [("body.0", "gated", 8), ("body.1", "gated", 8), ("body.2", "gated", 6)],
    "inline_res": [("res.0.gate1", "gated", 8), ("res.0.gate2", "gated", 8), ("res.1.gate1", "gated", 8),
                   ("res.1.gate2", "gated", 8)],
    "lbam": [("ec1", "gated", 8), ("ec2", "gated", 16)],
    "nvidia": [("p1", "partial", 8), ("p2", "partial", 8), ("p3", "partial", 3)],
    "naoto": [("enc_1", "partial", 8), ("enc_2", "partial", 16), ("dec_2", "partial", 8), ("dec_1", "partial", 3)],
    "functional": [("enc1", "partial", 8), ("enc2", "partial", 16), ("dec", "partial", 8)],
    "functional_pool": [("down1.conv", "partial", 8), ("down2.conv", "partial", 16), ("up", "partial", 8)],
    "lbam_reverse": [("ec1", "gated", 8), ("ec2", "gated", 16), ("ec3", "gated", 16), ("rev1", "gated", 8),
                     ("rev2", "gated", 16)],
    "chunk_res": [("res.0.conv1", "gated", 8), ("res.0.conv2", "gated", 8), ("res.0:op0", "gated", 8),
                  ("res.1.conv1", "gated", 8), ("res.1.conv2", "gated", 8), ("res.1:op0", "gated", 8)],
    "self_norm": [("layers.0", "gated", 8), ("layers.1", "gated", 8), ("layers.2", "gated", 8)],
    "split_maps": [("block.mask_conv:op0", "gated", 6), ("block.mask_conv:op1", "gated", 6)],
}
