"""The claims table: one row per claim of CLAIMS.md (P1-P5, G1-G5), measured on two runs.

Every verdict follows from a rule stated in the row's ``rule`` column, applied to the measured
value; nothing is hard-coded. ``not applicable`` means the runs lack what the measurement needs
(e.g. no sketch intervention was run), and says so in ``evidence``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import RunError
from ..rundir.roles import DEFAULT_RULE, ROLE_COLUMNS, RoleRule, assign_roles, has_role
from ..rundir.run import Run
from .summary import partial_layer_summary

SUPPORTED, NOT_SUPPORTED, NOT_APPLICABLE = "supported", "not supported", "not applicable"
STATEMENTS = {
    "P1": "Partial conv uses only valid pixels: renormalised output, mask multiplied in.",
    "P2": "The next mask is a hard rule: one valid pixel under the window suffices.",
    "P3": "Holes shrink layer by layer; deep masks are all ones, as geometry predicts.",
    "P4": "All channels of a partial layer share one mask (1 distinct mask per layer).",
    "P5": "Partial convolution cannot take extra user inputs such as a sketch.",
    "G1": "Gated conv learns a soft gate in (0, 1) per channel and location.",
    "G2": "Extra guidance (mask, sketch) given at the input is used by the gates.",
    "G3": "Gates select features dynamically: many distinct soft masks per layer.",
    "G4": "Some gates follow hole vs background, some the sketch, some semantic classes.",
    "G5": "Even deep layers have separate channels for the hole and for the sketch.",
}


def _row(claim, measurement, value, verdict, evidence, rule, ci=(np.nan, np.nan)) -> dict:
    return {"claim": claim, "statement": STATEMENTS[claim], "measurement": measurement, "value": value,
            "ci_low": ci[0], "ci_high": ci[1], "verdict": verdict, "evidence": evidence, "rule": rule}


def _verdict(ok: bool) -> str:
    return SUPPORTED if ok else NOT_SUPPORTED


def partial_claims(run: Run) -> list[dict]:
    ev = partial_layer_summary(run)
    layers = run.layers.set_index("layer")
    if ev.empty:
        return [_row(c, "no partial layers recorded", np.nan, NOT_APPLICABLE, run.name, "needs partial layers")
                for c in ("P1", "P2", "P3", "P4")]
    rows = []
    leak = ev.leak.max()
    rows.append(_row("P1", "max |output| where the updated mask is 0, over all partial layers", leak,
                     NOT_APPLICABLE if np.isnan(leak) else _verdict(leak == 0),
                     f"{run.name}: {len(ev)} layers", "supported if exactly 0 (renormalisation is the layer's "
                     "formula, checked against hand computation in the tests)"))
    flips = run.evolution[run.evolution.flipped > 0]
    if flips.empty:
        rows.append(_row("P2", "coverage of flipped locations", np.nan, NOT_APPLICABLE, "no location flipped",
                         "needs holes that the layers fill"))
    else:
        first = flips.iloc[0]
        counts = np.asarray(first.coverage_hist, float)
        share = counts[: max(1, len(counts) // 2)].sum() / counts.sum()
        rows.append(_row("P2", f"share of the locations that flip from hole to valid at {first.layer} (the first "
                         "layer) whose window was at most half valid", share, _verdict(share > 0),
                         f"{int(first.flipped)} flipped locations at {first.layer}, coverage histogram "
                         f"{[int(v) for v in first.coverage_hist]} over {len(counts)} equal bins of (0, 1]",
                         "supported if > 0: windows with little valid input get the same mask value 1 as full ones"))
    heights = np.array([layers.at[name, "height"] for name in ev.layer])
    encoder = ev.iloc[: int(np.argmin(heights)) + 1]  # down to the coarsest resolution
    monotone = bool(np.all(np.diff(encoder.valid_fraction.to_numpy()) >= -1e-9))
    full = ev[ev.all_valid_images >= 0.95]
    first_full = full.layer.iloc[0] if len(full) else None
    gap = float((ev.valid_fraction - ev.valid_fraction_predicted).abs().max())
    rows.append(_row("P3", "max |measured - predicted| valid fraction over layers (and the first layer whose mask "
                     "is all valid for >= 95% of images)", gap,
                     _verdict(monotone and first_full is not None and gap <= 0.01),
                     f"first all-valid layer: {first_full}; valid fraction by layer (95% interval over image groups) "
                     + ", ".join(f"{r.layer} {r.valid_fraction:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
                                 for r in ev.itertuples()),
                     "supported if valid fraction never falls along the encoder, some layer is all valid for "
                     ">= 95% of images, and geometry predicts every layer within 0.01"))
    eff = layers.loc[layers.kind == "partial", "effective_channels"].dropna()
    value = float(eff.max()) if len(eff) else np.nan
    rows.append(_row("P4", "effective number of distinct channel masks (participation ratio), max over layers "
                     "whose mask varies", value, NOT_APPLICABLE if np.isnan(value) else _verdict(abs(value - 1) < 1e-6),
                     f"{len(eff)} layers with a varying mask", "supported if exactly 1"))
    return rows


def gated_claims(run: Run, rule: RoleRule = DEFAULT_RULE) -> list[dict]:
    layers = run.layers
    ch = run.channels.drop(columns=[c for c in ROLE_COLUMNS if c in run.channels])
    ch = pd.concat([ch, assign_roles(ch, run.labels, rule)], axis=1)  # the roles under ``rule``
    rows = []
    soft = float(ch.soft_fraction.median())
    varying = float((ch["std"] > 0.01).mean())
    rows.append(_row("G1", "median share of gate values in (0.05, 0.95); share of channels whose gate varies "
                     "(std > 0.01)", soft, _verdict(soft >= 0.1 and varying >= 0.5),
                     f"{len(ch)} channels; varying share {varying:.2f}",
                     "supported if median soft share >= 0.1 and >= half the channels vary over locations"))
    inter = run.table("interventions")
    if inter is None:
        rows.append(_row("G2", "change of gates in the hole when the sketch is removed", np.nan, NOT_APPLICABLE,
                         "no sketch intervention in this run (gateprobe analyze)", "needs the sketch intervention"))
    else:
        gates = inter[inter.quantity == "gate_in_hole"]
        strongest = gates.loc[gates.delta.abs().idxmax()]
        significant = int((gates.q_value < 0.05).sum())
        out = inter[inter.quantity == "hole_l1"].iloc[0]
        rows.append(_row("G2", "largest mean change of a channel's gate in the hole when the sketch is removed",
                         float(strongest.delta),
                         _verdict(significant > 0 and out.delta > 0 and out.ci_low > 0),
                         f"{strongest.layer} channel {int(strongest.channel)}; {significant} channels changed "
                         f"(q < 0.05); output hole L1 +{out.delta:.4f} without the sketch",
                         "supported if some channel's gate changes (q < 0.05) and removing the sketch worsens "
                         "hole L1 (interval above 0)", (float(strongest.ci_low), float(strongest.ci_high))))
    eff = layers.loc[layers.kind == "gated", "effective_channels"].dropna()
    median = float(eff.median())
    rows.append(_row("G3", "median over gated layers of the effective number of distinct gate maps", median,
                     _verdict(median >= 2), ", ".join(f"{l} {v:.1f}" for l, v in zip(layers.layer, layers.effective_channels)
                                                      if l in set(ch.layer)),
                     "supported if the median is >= 2 (a partial layer measures exactly 1)"))
    counts = {k: int(has_role(ch, k).sum()) for k in ("hole", "valid", "sketch", "semantic")}
    rows.append(_row("G4", f"channels per role ({rule.describe()})",
                     float(min(counts["hole"] + counts["valid"], counts["sketch"], counts["semantic"])),
                     _verdict(counts["hole"] + counts["valid"] > 0 and counts["sketch"] > 0 and counts["semantic"] > 0),
                     ", ".join(f"{k}: {v}" for k, v in counts.items()),
                     "supported if at least one hole/valid, one sketch and one semantic channel exist; value = "
                     "the smallest of the three counts"))
    gated = layers[layers.kind == "gated"].sort_values("depth")
    deep = set(gated.layer.iloc[len(gated) // 2:])
    both = []
    for layer in gated.layer:
        if layer not in deep:
            continue
        sub = ch[ch.layer == layer]
        hole = set(sub.channel[has_role(sub, "hole") | has_role(sub, "valid")])
        sketch = set(sub.channel[has_role(sub, "sketch")])
        if hole and sketch and (hole - sketch) and (sketch - hole):
            both.append(layer)
    rows.append(_row("G5", "deep layers (second half by depth) with distinct hole/valid and sketch channels",
                     float(len(both)), _verdict(len(both) > 0), ", ".join(both) or "none",
                     "supported if at least one deep layer has both, in different channels"))
    return rows


def split_runs(run_a: Run, run_b: Run) -> tuple[Run, Run]:
    """(partial run, gated run) from two runs in either order."""
    kinds = [set(r.layers.kind) for r in (run_a, run_b)]
    if "partial" in kinds[0] and "gated" in kinds[1]:
        return run_a, run_b
    if "gated" in kinds[0] and "partial" in kinds[1]:
        return run_b, run_a
    raise RunError(f"claims need one partial-convolution run and one gated run; got {run_a.name} "
                     f"({'/'.join(sorted(kinds[0]))}) and {run_b.name} ({'/'.join(sorted(kinds[1]))})")


def claims(run_a: Run, run_b: Run, rule: RoleRule = DEFAULT_RULE) -> pd.DataFrame:
    """The claims table for a partial-convolution run and a gated run, given in either order;
    channel roles (G4, G5) follow ``rule``."""
    run_partial, run_gated = split_runs(run_a, run_b)
    rows = partial_claims(run_partial)
    accepts = bool(run_partial.manifest["model"].get("accepts_sketch"))
    rows.append(_row("P5", "the partial model's sketch input (accepts_sketch)", float(accepts), _verdict(not accepts),
                     f"{run_partial.manifest['model']['name']} accepts_sketch={accepts}",
                     "supported if the model has no sketch input"))
    rows += gated_claims(run_gated, rule)
    frame = pd.DataFrame(rows)
    order = {c: i for i, c in enumerate(STATEMENTS)}
    return frame.sort_values("claim", key=lambda s: s.map(order), ignore_index=True)
