"""Discovery cost (issue 17): the probe pass against one recording batch's bare forward pass, and
recording discovered sites against recording the same model through its adapters.

Two ported public models at reduced width, random weights: DeepFill v2 (40 split-convolution
gates; adapter :class:`~probe.adapters.SplitGateAdapter`) and naoto0804's partial-convolution
U-Net (14 mask updates; :class:`~probe.adapters.MaskConvPartialAdapter`). Each recording side
starts from fresh accumulators; the sides are interleaved repeat by repeat. Last, the seconds of
one probe pass (64 px) through a 100-layer model no adapter covers (:class:`Deep`: gates chunked
from plain convolutions alternating with partial convolutions written as functions).

Run: ``python benchmarks/discovery.py [--repeats 5] [--n 64] [--size 128]``
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common import batches, print_table, ratio_row, timed, torch_threads
from record_overhead import bare, recorded

from probe.adapters import find_sites
from probe.adapters.discovery import discover, probe_batch
from probe.models.ported.deepfillv2 import DeepFillV2
from probe.models.ported.pconv_unet import LiuPConvUNet
from probe.recording.recorder import Recorder

MODELS = {"deepfill v2 (cnum 16)": lambda: DeepFillV2(cnum=16), "pconv u-net (width 16)": lambda: LiuPConvUNet(width=16)}


class Deep(nn.Module):
    """``layers`` plain ``nn.Conv2d`` of ``width`` channels (stride 1): even ones gate half their
    outputs with a sigmoid of the other half, odd ones are partial convolutions written as a
    function (ones-kernel count, max-pooled mask)."""

    def __init__(self, layers: int = 100, width: int = 16):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(4 if i == 0 else width, width * (2 - i % 2), 3, 1, 1)
                                   for i in range(layers))
        self.rgb = nn.Conv2d(width, 3, 1)

    def forward(self, image: Tensor, hole: Tensor, sketch=None) -> Tensor:
        x, valid = torch.cat([image * (1 - hole), hole], 1), 1 - hole
        for i, conv in enumerate(self.convs):
            if i % 2 == 0:
                features, gates = conv(x).chunk(2, 1)
                x = F.elu(features) * torch.sigmoid(gates)
            else:
                count = F.conv2d(valid, torch.ones(1, 1, 3, 3), padding=1)
                valid = F.max_pool2d(valid, 3, 1, 1)
                x = conv(x * valid) * (9 / count.clamp(min=1)) * valid
        return self.rgb(x)


def measure(model, data: list[dict], size: int, repeats: int) -> dict[str, list[float]]:
    """Interleaved timings: probe pass, bare forward of one batch, recording adapted and discovered."""
    adapted, found = find_sites(model, discover=False), find_sites(model, by_class=False)
    assert [s.name for s in adapted] == [s.name for s in found], "discovery and the adapters disagree"
    n_labels = max(int(b["labels"].max()) for b in data) + 1
    recorded(Recorder(model, found, n_labels), model, data[:1])  # warm-up
    times: dict[str, list[float]] = {"probe": [], "batch": [], "adapted": [], "found": []}
    for _ in range(repeats):
        times["probe"].append(timed(lambda: discover(model, probe_batch(size))))
        times["batch"].append(timed(lambda: bare(model, data[:1])))
        times["adapted"].append(timed(lambda: recorded(Recorder(model, adapted, n_labels), model, data)))
        times["found"].append(timed(lambda: recorded(Recorder(model, found, n_labels), model, data)))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    torch_threads()
    data = batches(args.n, 16, args.size)
    rows = []
    for label, build in MODELS.items():
        t = measure(build().eval(), data, args.size, args.repeats)
        rows += [ratio_row(f"{label}: probe pass / one batch (16) forward", t["probe"], t["batch"], "<= 1"),
                 ratio_row(f"{label}: record discovered / record adapted", t["found"], t["adapted"], "<= 1.10")]
    deep = Deep().eval()
    assert len(find_sites(deep)) == 100, "discovery misses layers of the 100-layer model"
    seconds = [timed(lambda: discover(deep, probe_batch(64))) for _ in range(args.repeats)]
    rows.append(ratio_row("100 layers: probe pass seconds (64 px)", seconds, [1.0] * len(seconds), "<= 3"))
    print(f"{args.n} images of {args.size}x{args.size}, batches of 16, {args.repeats} repeats")
    print_table(rows)


if __name__ == "__main__":
    main()
