"""DeepFill v2 (Yu et al., ICCV 2019) as published by nipponjo/deepfillv2-pytorch, re-implemented.

That port is the most used PyTorch DeepFill v2 and ships the official TensorFlow Places2 and
CelebA-HQ generators converted to PyTorch. Its checkpoints are dicts whose ``G`` entry is the
generator's state dict, in one of two key layouts, each with its own numerics:

* **module tree** (``model/networks.py``, the fine-tuned ``states_pt_*.pth``): keys such as
  ``stage1.conv1.conv.weight``, ``stage1.down_block1.conv1_downsample.conv.weight``,
  ``stage2.ca_conv_bn1.conv.weight``; PyTorch symmetric zero padding, nearest down-sampling by
  ``F.interpolate`` and score fusion in contextual attention -> :class:`DeepFillV2`;
* **flat** (``model/networks_tf.py``, the converted official ``states_tf_*.pth``): keys such as
  ``conv1.conv.weight``, ``conv7_atrous.conv.weight``, ``xconv1.conv.weight``,
  ``pmconv6.conv.weight``, ``allconv17.conv.weight``; TensorFlow ``SAME`` padding
  (asymmetric for the stride-2 layers), TensorFlow nearest down-sampling (``align_corners``)
  and no score fusion -> :class:`DeepFillV2TF`.

The layer names (module paths) of each class are exactly its layout's state-dict prefixes.

Architecture (``cnum`` = 48 for the published weights): a coarse network (stage 1) and a
two-branch refinement network with contextual attention (stage 2), 40 gated convolutions in
all (16 in stage 1, 24 in stage 2) plus two ungated 3-channel "to RGB" convolutions, which are
:class:`RGBConv` here so that :func:`probe.adapters.find_sites` never lists them. A gated layer
(:class:`GConv`) is one convolution with ``2C`` outputs split into features and gate logits:
``act(features) * sigmoid(logits)``, ELU, except the ReLU of ``ca_conv_bn1``/``pmconv6``.

Calling convention (:meth:`DeepFillV2.forward`): ``model(image, hole, sketch=None)`` with
``image`` ``[B,3,H,W]`` in [0, 1] and ``hole`` ``[B,1,H,W]`` (1 = hole). As the port's ``infer``
does, the image is mapped to [-1, 1], zeroed in the hole, and concatenated with a channel of
ones and the hole mask (5 channels); the raw stage-2 output (tanh, [-1, 1]) comes back mapped
to [0, 1], not composited. The port has no sketch input (the channel its ``infer`` calls the
"sketch channel" is constant ones; the paper's user-guided variant with a sketch channel was
never released), so ``accepts_sketch`` is False. H and W must be multiples of 8 (two stride-2
convolutions, then contextual attention at half that resolution); other sizes are padded at
the bottom and right by reflection (replicate when an image is smaller than the pad) up to the
next multiple of 8 and the output is cropped back; the port crops its input instead.

One deliberate difference: the port's contextual attention takes the available-patch mask from
the first image of a batch for all images; here each image uses its own hole, so results do not
depend on how images are batched (identical for a batch of one, the port's inference path).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...adapters import SplitGateAdapter, register_adapter
from ...errors import CheckpointError, ModelError
from .loading import check_state_dict, first_keys, pad_to_multiple, read_checkpoint

CNUM_IN = 5  # image (3), ones, hole
MULTIPLE = 8


# ----------------------------------------------------------------------------- helpers
def tf_same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding (before, after) of one axis: output ``ceil(size / stride)``."""
    extent = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + extent - size, 0)
    return total // 2, total - total // 2


def tf_same_pad(x: Tensor, kernel: int, stride: int = 1, dilation: int = 1) -> Tensor:
    """Zero-pad ``x`` ``[B,C,H,W]`` as TensorFlow's ``SAME`` convolution does."""
    top, bottom = tf_same_pads(x.shape[-2], kernel, stride, dilation)
    left, right = tf_same_pads(x.shape[-1], kernel, stride, dilation)
    return F.pad(x, (left, right, top, bottom))


def tf_nearest_downsample(x: Tensor, factor: int) -> Tensor:
    """TensorFlow's nearest-neighbour resize with ``align_corners=True`` to ``size // factor``:
    output i reads input ``round(i * (size - 1) / (out - 1))``."""
    def index(size: int) -> Tensor:
        out = size // factor
        return torch.linspace(0, size - 1, out, device=x.device).add(0.5).floor().long()

    return x[:, :, index(x.shape[-2])][:, :, :, index(x.shape[-1])]


# ----------------------------------------------------------------------------- blocks
class GConv(nn.Module):
    """Gated convolution of the port: one ``conv`` with ``2 * cnum_out`` outputs, split into
    features and gate logits, ``activation(features) * torch.sigmoid(logits)``.

    ``tf_padding``: pad as TensorFlow ``SAME`` (flat layout) instead of the convolution's own
    symmetric ``dilation * (k - 1) // 2`` (module tree). ``padding`` is the leading pad (the one
    before the first row, for sizes divisible by the stride), used as the layer's geometry.
    """

    def __init__(self, cnum_in: int, cnum_out: int, ksize: int, stride: int = 1, rate: int = 1,
                 activation: str = "elu", tf_padding: bool = False):
        super().__init__()
        self.cnum_out, self.ksize, self.stride, self.rate, self.tf_padding = cnum_out, ksize, stride, rate, tf_padding
        symmetric = rate * (ksize - 1) // 2
        self.padding = max(rate * (ksize - 1) + 1 - stride, 0) // 2 if tf_padding else symmetric
        self.conv = nn.Conv2d(cnum_in, 2 * cnum_out, ksize, stride, 0 if tf_padding else symmetric, dilation=rate)
        self.activation = {"elu": nn.ELU(), "relu": nn.ReLU()}[activation]

    def forward(self, x: Tensor) -> Tensor:
        if self.tf_padding:
            x = tf_same_pad(x, self.ksize, self.stride, self.rate)
        features, logits = torch.split(self.conv(x), self.cnum_out, dim=1)
        return self.activation(features) * torch.sigmoid(logits)


class RGBConv(nn.Module):
    """The ungated 3x3 convolution to RGB (``conv_to_rgb`` / ``conv17`` / ``allconv17``)."""

    def __init__(self, cnum_in: int, cnum_out: int = 3, tf_padding: bool = False):
        super().__init__()
        self.tf_padding = tf_padding
        self.conv = nn.Conv2d(cnum_in, cnum_out, 3, 1, 0 if tf_padding else 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(tf_same_pad(x, 3) if self.tf_padding else x)


class UpGConv(nn.Module):
    """Nearest up-sampling by 2, then a 3x3 :class:`GConv` (child ``conv``)."""

    def __init__(self, cnum_in: int, cnum_out: int, tf_padding: bool = False):
        super().__init__()
        self.conv = GConv(cnum_in, cnum_out, 3, tf_padding=tf_padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock(nn.Module):
    """Stride-2 3x3 GConv (``conv1_downsample``) then a 3x3 GConv (``conv2``)."""

    def __init__(self, cnum_in: int, cnum_out: int, cnum_hidden: int | None = None):
        super().__init__()
        hidden = cnum_out if cnum_hidden is None else cnum_hidden
        self.conv1_downsample = GConv(cnum_in, hidden, 3, stride=2)
        self.conv2 = GConv(hidden, cnum_out, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1_downsample(x))


class UpBlock(nn.Module):
    """:class:`UpGConv` (``conv1_upsample``) then a 3x3 GConv (``conv2``)."""

    def __init__(self, cnum_in: int, cnum_out: int, cnum_hidden: int | None = None):
        super().__init__()
        hidden = cnum_out if cnum_hidden is None else cnum_hidden
        self.conv1_upsample = UpGConv(cnum_in, hidden)
        self.conv2 = GConv(hidden, cnum_out, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1_upsample(x))


class ContextualAttention(nn.Module):
    """Contextual attention (Yu et al., CVPR 2018) with the port's settings: 3x3 patches of the
    background matched at half resolution (``rate`` 2) by cosine similarity, scaled softmax
    (``softmax_scale`` 10) over the patches that lie wholly outside the hole, and the attended
    4x4 full-resolution patches pasted back (transposed convolution, divided by 4).

    ``fuse``: sum the scores of neighbouring matches along both diagonals (``fuse_k`` 3) before
    the softmax (module tree; its eye kernel is the ``fuse_weight`` buffer of that layout).
    ``tf_compat``: TensorFlow ``SAME`` padding and nearest down-sampling (flat layout).
    Every image is processed at once (batched matrix products instead of the port's loop).
    """

    def __init__(self, ksize: int = 3, stride: int = 1, rate: int = 2, fuse_k: int = 3, softmax_scale: float = 10.0,
                 n_down: int = 2, fuse: bool = True, tf_compat: bool = False):
        super().__init__()
        self.ksize, self.stride, self.rate, self.fuse_k = ksize, stride, rate, fuse_k
        self.softmax_scale, self.n_down, self.fuse, self.tf_compat = softmax_scale, n_down, fuse, tf_compat
        if fuse:
            self.register_buffer("fuse_weight", torch.eye(fuse_k).view(1, 1, fuse_k, fuse_k))

    def _patches(self, x: Tensor, kernel: int, stride: int) -> Tensor:
        """``[B, C*k*k, L]`` patches of ``x`` (TF ``SAME`` or the port's ``(k - 1) // 2`` padding)."""
        if self.tf_compat:
            return F.unfold(tf_same_pad(x, kernel, stride), kernel, stride=stride)
        return F.unfold(x, kernel, padding=(kernel - 1) // 2, stride=stride)

    def _down(self, x: Tensor, factor: int) -> Tensor:
        if self.tf_compat:
            return tf_nearest_downsample(x, factor)
        return F.interpolate(x, scale_factor=1.0 / factor, mode="nearest")

    def _fuse(self, scores: Tensor, bg: tuple[int, int], fg: tuple[int, int]) -> Tensor:
        """Diagonal score fusion, ``[B, L, P]``: once in row-major, once in column-major order."""
        batch, k = scores.shape[0], self.fuse_k
        (bh, bw), (fh, fw) = bg, fg
        y = F.conv2d(scores.reshape(batch, 1, bh * bw, fh * fw), self.fuse_weight, padding=(k - 1) // 2)
        y = y.reshape(batch, bh, bw, fh, fw).permute(0, 2, 1, 4, 3).reshape(batch, 1, bw * bh, fw * fh)
        y = F.conv2d(y, self.fuse_weight, padding=(k - 1) // 2)
        return y.reshape(batch, bw, bh, fw, fh).permute(0, 2, 1, 4, 3).reshape(batch, bh * bw, fh * fw)

    def forward(self, f: Tensor, b: Tensor, hole: Tensor) -> Tensor:
        """Fill ``f`` ``[B,C,h,w]`` from ``b`` (same shape); ``hole`` ``[B,1,H,W]`` at image resolution."""
        batch, channels, height, width = b.shape
        raw_k = 2 * self.rate
        raw = self._patches(b, raw_k, self.rate * self.stride)  # [B, C*4*4, L] for pasting
        f_small, b_small = self._down(f, self.rate), self._down(b, self.rate)
        fg, bg = tuple(f_small.shape[-2:]), tuple(b_small.shape[-2:])
        patches = self._patches(b_small, self.ksize, self.stride)  # [B, C*k*k, L]
        patches = patches / patches.square().sum(1, keepdim=True).sqrt().clamp_min(1e-4)
        hole_small = self._down(hole, 2 ** self.n_down * self.rate)
        known = (self._patches(hole_small, self.ksize, self.stride).mean(1) == 0).to(f.dtype)  # [B, L]
        # every foreground location against every normalised background patch (the port's conv2d)
        queries = F.unfold(f_small, self.ksize, padding=(self.ksize - 1) // 2)  # [B, C*k*k, P]
        scores = torch.bmm(patches.transpose(1, 2), queries)  # [B, L, P]
        if self.fuse:
            scores = self._fuse(scores, bg, fg)
        known = known.unsqueeze(2)
        attention = F.softmax(scores * known * self.softmax_scale, dim=1) * known
        pasted = torch.bmm(raw, attention)  # [B, C*4*4, P]: the transposed convolution as fold
        return F.fold(pasted, (height, width), raw_k, padding=1, stride=self.rate) / 4.0


# ----------------------------------------------------------------------------- the two networks
class CoarseNet(nn.Module):
    """Stage 1 (module tree): 16 gated layers and the ungated ``conv_to_rgb``."""

    def __init__(self, cnum_in: int, cnum: int):
        super().__init__()
        c = cnum
        self.conv1 = GConv(cnum_in, c // 2, 5)
        self.down_block1 = DownBlock(c // 2, c)
        self.down_block2 = DownBlock(c, 2 * c)
        for i, rate in enumerate((1, 2, 4, 8, 16, 1, 1), start=1):
            self.add_module(f"conv_bn{i}", GConv(2 * c, 2 * c, 3, rate=rate))
        self.up_block1 = UpBlock(2 * c, c)
        self.up_block2 = UpBlock(c, c // 4, cnum_hidden=c // 2)
        self.conv_to_rgb = RGBConv(c // 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down_block2(self.down_block1(self.conv1(x)))
        for i in range(1, 8):
            x = getattr(self, f"conv_bn{i}")(x)
        return torch.tanh(self.conv_to_rgb(self.up_block2(self.up_block1(x))))


class RefineNet(nn.Module):
    """Stage 2 (module tree): a dilated-convolution branch (``conv_*``, 10 gated layers), a
    contextual-attention branch (``ca_*``, 8 gated layers) and their merge (6 gated layers)."""

    def __init__(self, cnum: int):
        super().__init__()
        c = cnum
        self.conv_conv1 = GConv(3, c // 2, 5)
        self.conv_down_block1 = DownBlock(c // 2, c, cnum_hidden=c // 2)
        self.conv_down_block2 = DownBlock(c, 2 * c, cnum_hidden=c)
        for i, rate in enumerate((1, 2, 4, 8, 16), start=1):
            self.add_module(f"conv_conv_bn{i}", GConv(2 * c, 2 * c, 3, rate=rate))
        self.ca_conv1 = GConv(3, c // 2, 5)
        self.ca_down_block1 = DownBlock(c // 2, c, cnum_hidden=c // 2)
        self.ca_down_block2 = DownBlock(c, 2 * c)
        self.ca_conv_bn1 = GConv(2 * c, 2 * c, 3, activation="relu")
        self.contextual_attention = ContextualAttention(fuse=True)
        self.ca_conv_bn4 = GConv(2 * c, 2 * c, 3)
        self.ca_conv_bn5 = GConv(2 * c, 2 * c, 3)
        self.conv_bn6 = GConv(4 * c, 2 * c, 3)
        self.conv_bn7 = GConv(2 * c, 2 * c, 3)
        self.up_block1 = UpBlock(2 * c, c)
        self.up_block2 = UpBlock(c, c // 4, cnum_hidden=c // 2)
        self.conv_to_rgb = RGBConv(c // 4)

    def forward(self, x: Tensor, hole: Tensor) -> Tensor:
        h = self.conv_down_block2(self.conv_down_block1(self.conv_conv1(x)))
        for i in range(1, 6):
            h = getattr(self, f"conv_conv_bn{i}")(h)
        a = self.ca_conv_bn1(self.ca_down_block2(self.ca_down_block1(self.ca_conv1(x))))
        a = self.ca_conv_bn5(self.ca_conv_bn4(self.contextual_attention(a, a, hole)))
        y = self.conv_bn7(self.conv_bn6(torch.cat([h, a], dim=1)))
        return torch.tanh(self.conv_to_rgb(self.up_block2(self.up_block1(y))))


class _DeepFillBase(nn.Module):
    """The boundary shared by both layouts: ``forward(image, hole, sketch=None)``."""

    accepts_sketch = False
    multiple = MULTIPLE

    def generate(self, x: Tensor, hole: Tensor) -> tuple[Tensor, Tensor]:
        """The port's ``Generator.forward``: ``x`` ``[B,5,H,W]`` and ``hole`` ``[B,1,H,W]`` ->
        (stage-1 output, stage-2 output), both ``[B,3,H,W]`` in [-1, 1]."""
        raise NotImplementedError

    def forward(self, image: Tensor, hole: Tensor, sketch: Tensor | None = None) -> Tensor:
        """``image`` ``[B,3,H,W]`` in [0,1], ``hole`` ``[B,1,H,W]`` (1 = hole) -> ``[B,3,H,W]`` in [0,1]."""
        if sketch is not None:
            raise ValueError(f"{type(self).__name__} takes no sketch (the published DeepFill v2 generators have "
                             "no sketch input); call it with sketch=None")
        height, width = image.shape[-2:]
        image, hole = pad_to_multiple(image, self.multiple), (pad_to_multiple(hole, self.multiple) > 0.5).to(image.dtype)
        x = (image * 2 - 1) * (1 - hole)
        ones = torch.ones_like(hole)
        _, stage2 = self.generate(torch.cat([x, ones, ones * hole], dim=1), hole)
        return ((stage2 + 1) / 2)[..., :height, :width]


class DeepFillV2(_DeepFillBase):
    """DeepFill v2 generator in the port's module-tree layout (``stage1.*``, ``stage2.*``)."""

    def __init__(self, cnum: int = 48, cnum_in: int = CNUM_IN):
        super().__init__()
        _check_cnum(cnum, cnum_in)
        self.cnum, self.cnum_in = cnum, cnum_in
        self.stage1 = CoarseNet(cnum_in, cnum)
        self.stage2 = RefineNet(cnum)

    def generate(self, x: Tensor, hole: Tensor) -> tuple[Tensor, Tensor]:
        stage1 = self.stage1(x)
        stage2 = self.stage2(stage1 * hole + x[:, :3] * (1 - hole), hole)
        return stage1, stage2


# flat name, input channels, output channels (in units of cnum / 4; 3 = RGB), kernel, stride, rate, kind
def _flat_table(cnum: int, cnum_in: int) -> list[tuple]:
    q = cnum // 4
    h, c, c2 = 2 * q, 4 * q, 8 * q
    stage1 = [("conv1", cnum_in, h, 5, 1, 1), ("conv2_downsample", h, c, 3, 2, 1), ("conv3", c, c, 3, 1, 1),
              ("conv4_downsample", c, c2, 3, 2, 1), ("conv5", c2, c2, 3, 1, 1), ("conv6", c2, c2, 3, 1, 1),
              *[(f"conv{i}_atrous", c2, c2, 3, 1, r) for i, r in zip(range(7, 11), (2, 4, 8, 16))],
              ("conv11", c2, c2, 3, 1, 1), ("conv12", c2, c2, 3, 1, 1), ("conv13_upsample", c2, c, "up"),
              ("conv14", c, c, 3, 1, 1), ("conv15_upsample", c, h, "up"), ("conv16", h, q, 3, 1, 1),
              ("conv17", q, 3, "rgb")]
    xbranch = [("xconv1", 3, h, 5, 1, 1), ("xconv2_downsample", h, h, 3, 2, 1), ("xconv3", h, c, 3, 1, 1),
               ("xconv4_downsample", c, c, 3, 2, 1), ("xconv5", c, c2, 3, 1, 1), ("xconv6", c2, c2, 3, 1, 1),
               *[(f"xconv{i}_atrous", c2, c2, 3, 1, r) for i, r in zip(range(7, 11), (2, 4, 8, 16))]]
    pmbranch = [("pmconv1", 3, h, 5, 1, 1), ("pmconv2_downsample", h, h, 3, 2, 1), ("pmconv3", h, c, 3, 1, 1),
                ("pmconv4_downsample", c, c2, 3, 2, 1), ("pmconv5", c2, c2, 3, 1, 1), ("pmconv6", c2, c2, 3, 1, 1)]
    after_ca = [("pmconv9", c2, c2, 3, 1, 1), ("pmconv10", c2, c2, 3, 1, 1)]
    merge = [("allconv11", 2 * c2, c2, 3, 1, 1), ("allconv12", c2, c2, 3, 1, 1), ("allconv13_upsample", c2, c, "up"),
             ("allconv14", c, c, 3, 1, 1), ("allconv15_upsample", c, h, "up"), ("allconv16", h, q, 3, 1, 1),
             ("allconv17", q, 3, "rgb")]
    return [("stage1", stage1), ("xbranch", xbranch), ("pmbranch", pmbranch), ("after_ca", after_ca), ("merge", merge)]


class DeepFillV2TF(_DeepFillBase):
    """DeepFill v2 generator in the port's flat layout converted from the TensorFlow release
    (``conv1`` .. ``conv17``, ``xconv1`` .. ``xconv10_atrous``, ``pmconv1`` .. ``pmconv10``,
    ``allconv11`` .. ``allconv17``), with TensorFlow padding and down-sampling."""

    def __init__(self, cnum: int = 48, cnum_in: int = CNUM_IN):
        super().__init__()
        _check_cnum(cnum, cnum_in)
        self.cnum, self.cnum_in = cnum, cnum_in
        self.sequences: dict[str, list[str]] = {}
        for section, rows in _flat_table(cnum, cnum_in):
            self.sequences[section] = [row[0] for row in rows]
            for name, cin, cout, *rest in rows:
                if rest == ["up"]:
                    layer = UpGConv(cin, cout, tf_padding=True)
                elif rest == ["rgb"]:
                    layer = RGBConv(cin, cout, tf_padding=True)
                else:
                    k, stride, rate = rest
                    layer = GConv(cin, cout, k, stride, rate, activation="relu" if name == "pmconv6" else "elu",
                                  tf_padding=True)
                self.add_module(name, layer)
        self.contextual_attention = ContextualAttention(fuse=False, tf_compat=True)

    def _run(self, section: str, x: Tensor) -> Tensor:
        for name in self.sequences[section]:
            x = getattr(self, name)(x)
        return x

    def generate(self, x: Tensor, hole: Tensor) -> tuple[Tensor, Tensor]:
        stage1 = torch.tanh(self._run("stage1", x))
        xnow = stage1 * hole + x[:, :3] * (1 - hole)
        hallucinated = self._run("xbranch", xnow)
        a = self._run("pmbranch", xnow)
        a = self._run("after_ca", self.contextual_attention(a, a, hole))
        stage2 = torch.tanh(self._run("merge", torch.cat([hallucinated, a], dim=1)))
        return stage1, stage2


def _check_cnum(cnum: int, cnum_in: int) -> None:
    if cnum % 4 or cnum < 4 or cnum == 12:
        # cnum 12 would give conv16 three outputs, which the port treats as an ungated RGB layer
        raise ModelError(f"DeepFill v2 needs cnum divisible by 4 and not 12 (48 published), got {cnum}")
    if cnum_in != CNUM_IN:
        raise ModelError(f"DeepFill v2 generators here take {CNUM_IN} input channels (image, ones, hole), "
                         f"the checkpoint has {cnum_in}")


# ----------------------------------------------------------------------------- layouts and loading
TREE_MARKER = "stage1.conv1.conv.weight"
FLAT_MARKER = "conv1.conv.weight"
OPTIONAL_KEYS = {"stage2.contextual_attention.fuse_weight"}  # absent from checkpoints older than July 2022


def tree_to_flat_names() -> dict[str, str]:
    """Module-tree layer name -> flat layer name, in execution order (gated and RGB layers)."""
    blocks = [("down_block1", 2, 3), ("down_block2", 4, 5)]
    names = {"stage1.conv1": "conv1"}
    for block, down, conv in blocks:
        names[f"stage1.{block}.conv1_downsample"] = f"conv{down}_downsample"
        names[f"stage1.{block}.conv2"] = f"conv{conv}"
    for i, flat in enumerate(["conv6", "conv7_atrous", "conv8_atrous", "conv9_atrous", "conv10_atrous", "conv11",
                              "conv12"], start=1):
        names[f"stage1.conv_bn{i}"] = flat
    for prefix, first in (("stage1.", "conv"), ("stage2.", "allconv")):
        names[f"{prefix}up_block1.conv1_upsample.conv"] = f"{first}13_upsample.conv"
        names[f"{prefix}up_block1.conv2"] = f"{first}14"
        names[f"{prefix}up_block2.conv1_upsample.conv"] = f"{first}15_upsample.conv"
        names[f"{prefix}up_block2.conv2"] = f"{first}16"
        names[f"{prefix}conv_to_rgb"] = f"{first}17"
    for branch, flat in (("conv", "xconv"), ("ca", "pmconv")):
        names[f"stage2.{branch}_conv1"] = f"{flat}1"
        for block, down, conv in blocks:
            names[f"stage2.{branch}_{block}.conv1_downsample"] = f"{flat}{down}_downsample"
            names[f"stage2.{branch}_{block}.conv2"] = f"{flat}{conv}"
    for i, flat in enumerate(["xconv6", "xconv7_atrous", "xconv8_atrous", "xconv9_atrous", "xconv10_atrous"], start=1):
        names[f"stage2.conv_conv_bn{i}"] = flat
    names.update({"stage2.ca_conv_bn1": "pmconv6", "stage2.ca_conv_bn4": "pmconv9", "stage2.ca_conv_bn5": "pmconv10",
                  "stage2.conv_bn6": "allconv11", "stage2.conv_bn7": "allconv12"})
    return names


def tree_state_to_flat(state: dict) -> dict:
    """A module-tree state dict renamed to the flat layout (same tensors; no ``fuse_weight``)."""
    names = tree_to_flat_names()
    out = {}
    for key, value in state.items():
        if key in OPTIONAL_KEYS:
            continue
        layer, _, param = key.rpartition(".conv.")
        out[f"{names[layer]}.conv.{param}"] = value
    return out


def deepfillv2_from_state_dict(state: dict, source: str = "state dict") -> _DeepFillBase:
    """Build :class:`DeepFillV2` or :class:`DeepFillV2TF` (by key layout) and load ``state``."""
    if TREE_MARKER in state:
        cls, marker, layout = DeepFillV2, TREE_MARKER, "module-tree"
    elif FLAT_MARKER in state:
        cls, marker, layout = DeepFillV2TF, FLAT_MARKER, "flat (TF)"
    else:
        raise CheckpointError(f"{source}: not a nipponjo/deepfillv2-pytorch generator: neither {TREE_MARKER!r} (module "
                              f"tree) nor {FLAT_MARKER!r} (flat TF layout) is present; keys: {first_keys(state)}")
    weight = state[marker]
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise CheckpointError(f"{source}: {marker} is not a convolution weight")
    try:
        model = cls(cnum=int(weight.shape[0]), cnum_in=int(weight.shape[1]))
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None
    check_state_dict(model, state, f"{source} does not match the {layout} layout of DeepFill v2 "
                                   f"(cnum {model.cnum})", OPTIONAL_KEYS)
    model.load_state_dict(state, strict=False)
    model.layout = layout
    return model.eval()


def load_deepfillv2(path: str) -> _DeepFillBase:
    """Load a nipponjo/deepfillv2-pytorch checkpoint (``{"G": state_dict, ...}`` or a bare state dict);
    the loader behind ``gateprobe record --model deepfillv2:PATH.pth --trust-pickle``."""
    state = read_checkpoint(path, "G")
    return deepfillv2_from_state_dict(state, str(path))


register_adapter(GConv, SplitGateAdapter(conv="conv", gate_half="second"))

__all__ = ["ContextualAttention", "DeepFillV2", "DeepFillV2TF", "GConv", "RGBConv", "deepfillv2_from_state_dict",
           "load_deepfillv2", "tree_state_to_flat", "tree_to_flat_names"]
