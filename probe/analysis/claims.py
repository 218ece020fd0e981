"""The claims table: one row per claim of CLAIMS.md (P1-P5, G1-G5), measured on two runs.

Every verdict follows from a rule stated in the row's ``rule`` column, applied to the measured
value; nothing is hard-coded. ``not applicable`` means the runs lack what the measurement needs
(e.g. no sketch intervention was run), and says so in ``evidence``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import RunError
from ..rundir.roles import DEFAULT_RULE, ROLE_COLUMNS, RoleRule, assign_roles, has_role
from ..rundir.run import Run
from .controls import check_baseline, compared, exceeds, linked_baseline
from .summary import partial_layer_summary

SUPPORTED, NOT_SUPPORTED, NOT_APPLICABLE, NO_CONTROL = "supported", "not supported", "not applicable", "no control"
DEEP_RF_SHARE = 0.5  # G5: a layer is deep when its receptive field covers half the image side
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


NAN_CI = (np.nan, np.nan)
COLUMNS = ("claim", "statement", "measurement", "value", "value_low", "value_high", "baseline", "difference",
           "difference_low", "difference_high", "verdict", "evidence", "rule")


def _row(claim, measurement, value, verdict, evidence, rule, value_ci=NAN_CI, baseline=np.nan, difference=np.nan,
         difference_ci=NAN_CI) -> dict:
    """One row of the table: the trained (or only) run's ``value`` and its 95% interval, the
    control's value, and the trained-minus-control ``difference`` with its own 95% interval."""
    return {"claim": claim, "statement": STATEMENTS[claim], "measurement": measurement, "value": value,
            "value_low": value_ci[0], "value_high": value_ci[1], "baseline": baseline, "difference": difference,
            "difference_low": difference_ci[0], "difference_high": difference_ci[1], "verdict": verdict,
            "evidence": evidence, "rule": rule}


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


def _roles(run: Run, rule: RoleRule) -> pd.DataFrame:
    """The run's channels with their role columns under ``rule``."""
    ch = run.channels.drop(columns=[c for c in ROLE_COLUMNS if c in run.channels])
    return pd.concat([ch, assign_roles(ch, run.labels, rule)], axis=1)


def _controlled(claim: str, measurement: str, result: dict, holds: bool, evidence: str, rule: str,
                baseline: Run | None) -> dict:
    """A G row: without a baseline the verdict is "no control" whatever the value; with one,
    "supported" needs the rule to hold for the trained run and the difference's interval above 0."""
    if baseline is None:
        verdict = NO_CONTROL
    else:
        verdict = _verdict(holds and exceeds(result))
        evidence += f"; control: {baseline.name}"
    return _row(claim, measurement, result["value"], verdict, evidence, rule + CONTROL_RULE, result["value_ci"],
                result["baseline"], result["difference"], result["difference_ci"])


CONTROL_RULE = ("; and the trained minus random-init baseline difference has a 95% interval above 0 "
                "(\"no control\" without a baseline)")
FAMILIES = ("hole", "valid", "sketch", "semantic")


def deep_layers(layers: pd.DataFrame, image_size: int, share: float = DEEP_RF_SHARE) -> list[str]:
    """Gated layers whose receptive field covers at least ``share`` of the image side (the stated
    rule for "deep" in G5), in depth order."""
    gated = layers[layers.kind == "gated"].sort_values("depth")
    return list(gated.layer[gated.receptive_field >= share * image_size])


def _separated(ch: pd.DataFrame, layer: str) -> bool:
    """Whether ``layer`` has hole/valid channels and sketch channels, not all the same channels."""
    sub = ch[ch.layer == layer]
    hole = set(sub.channel[has_role(sub, "hole") | has_role(sub, "valid")])
    sketch = set(sub.channel[has_role(sub, "sketch")])
    return bool(hole and sketch and (hole - sketch) and (sketch - hole))


def g5_sensitivity(run: Run, rule: RoleRule = DEFAULT_RULE) -> pd.DataFrame:
    """G5 as a function of where "deep" starts: one row per gated layer taken as the first deep
    one, with the number of layers from there on that separate hole and sketch channels."""
    ch = _roles(run, rule)
    gated = list(run.layers[run.layers.kind == "gated"].sort_values("depth").layer)
    separated = [_separated(ch, layer) for layer in gated]
    return pd.DataFrame({"first_deep_layer": gated, "deep_layers": [len(gated) - i for i in range(len(gated))],
                         "separated_layers": [sum(separated[i:]) for i in range(len(gated))]})


def gated_claims(run: Run, rule: RoleRule = DEFAULT_RULE, baseline: Run | None = None) -> list[dict]:
    """The G rows for the gated ``run``, compared with the random-init ``baseline`` when given."""
    ch = _roles(run, rule)
    base = _roles(baseline, rule) if baseline is not None else None
    rows = []
    soft = float(ch.soft_fraction.median())
    spread = compared(ch["std"].to_numpy(), None if base is None else base["std"].to_numpy(), np.median)
    rows.append(_controlled("G1", "median over channels of the gate's std over locations (median soft share "
                            "in the evidence)", spread, soft >= 0.1 and float((ch["std"] > 0.01).mean()) >= 0.5,
                            f"{len(ch)} channels; median share of soft gates (inside 5-95% of their range) {soft:.2f}",
                            "supported if the median soft share >= 0.1 and >= half the channels vary", baseline))
    rows.append(_g2(run, baseline))
    eff = _effective(run)
    diversity = compared(eff, None if baseline is None else _effective(baseline), np.median)
    rows.append(_controlled("G3", "median over gated layers of the effective number of distinct gate maps",
                            diversity, diversity["value"] >= 2,
                            ", ".join(f"{layer} {v:.1f}" for layer, v in zip(run.layers.layer,
                                                                               run.layers.effective_channels)
                                      if layer in set(ch.layer)),
                            "supported if the median is >= 2 (a partial layer measures exactly 1)", baseline))
    flags = np.stack([has_role(ch, k).to_numpy(float) for k in FAMILIES], 1)  # [channels, 4]
    base_flags = None if base is None else np.stack([has_role(base, k).to_numpy(float) for k in FAMILIES], 1)
    per_family = {k: compared(flags[:, [i]], None if base_flags is None else base_flags[:, [i]], np.mean)
                  for i, k in enumerate(FAMILIES)}
    # the value: the smallest share among hole-or-valid, sketch and semantic channels
    smallest = compared(flags, base_flags, _smallest_role_share)
    counts = {k: int(flags[:, i].sum()) for i, k in enumerate(FAMILIES)}
    base_counts = "" if base_flags is None else "; baseline " + ", ".join(
        f"{k}: {int(base_flags[:, i].sum())}" for i, k in enumerate(FAMILIES))
    null = run.table("null")
    null_text = "" if null is None else "; under the label-shuffle null (mean, max over draws) " + ", ".join(
        f"{k}: {g.channels.mean():.1f}, {g.channels.max()}" for k, g in null.groupby("family", sort=False))
    rows.append(_controlled("G4", f"smallest share of channels among the hole/valid, sketch and semantic roles "
                            f"({rule.describe()})", smallest,
                            counts["hole"] + counts["valid"] > 0 and counts["sketch"] > 0 and counts["semantic"] > 0,
                            ", ".join(f"{k}: {v}" for k, v in counts.items()) + base_counts + null_text
                            + "; share differences "
                            + ", ".join(f"{k} {r['difference']:+.3f}" for k, r in per_family.items()
                                        if np.isfinite(r["difference"])),
                            "supported if each of the three roles has channels", baseline))
    rows.append(_g5(run, ch, base, baseline))
    return rows


def _effective(run: Run) -> np.ndarray:
    layers = run.layers
    return layers.loc[layers.kind == "gated", "effective_channels"].dropna().to_numpy()


def _smallest_role_share(flags: np.ndarray) -> float:
    """``flags`` ``[channels, 4]`` (hole, valid, sketch, semantic) -> min(hole or valid, sketch, semantic) share."""
    share = flags.mean(0)
    return float(min(share[0] + share[1], share[2], share[3]))


def _g2(run: Run, baseline: Run | None) -> dict:
    inter = run.table("interventions")
    if inter is None or not {"gate_in_hole", "hole_l1"} <= set(inter.quantity):
        what = "no sketch intervention" if inter is None else "an interventions table without its gate or hole-L1 rows"
        return _row("G2", "change of gates in the hole when the sketch is removed", np.nan, NOT_APPLICABLE,
                    f"{what} in this run (gateprobe analyze)", "needs the sketch intervention")
    gates = inter[inter.quantity == "gate_in_hole"]
    strongest = gates.loc[gates.delta.abs().idxmax()]
    significant = int((gates.q_value < 0.05).sum())
    out = inter[inter.quantity == "hole_l1"].iloc[0]
    result = {"value": float(out.delta), "value_ci": (float(out.ci_low), float(out.ci_high)),
              "baseline": float("nan"), "difference": float("nan"), "difference_ci": NAN_CI}
    evidence = (f"{significant} channels changed (q < 0.05), strongest {strongest.layer} channel "
                f"{int(strongest.channel)} {strongest.delta:+.3f}")
    base = baseline.table("interventions") if baseline is not None else None
    if base is not None and "hole_l1" in set(base.quantity):
        other = base[base.quantity == "hole_l1"].iloc[0]
        # independent runs on the same images: half-widths add in quadrature (normal approximation)
        half = np.hypot((out.ci_high - out.ci_low) / 2, (other.ci_high - other.ci_low) / 2)
        difference = float(out.delta - other.delta)
        result.update(baseline=float(other.delta), difference=difference,
                      difference_ci=(difference - half, difference + half))
    elif baseline is not None:
        evidence += f"; the baseline {baseline.name} has no sketch intervention (run gateprobe analyze on it)"
        baseline = None
    return _controlled("G2", "increase of the output's hole L1 when the sketch is removed", result,
                       significant > 0 and out.delta > 0 and out.ci_low > 0, evidence,
                       "supported if some gate changes (q < 0.05) and removing the sketch worsens hole L1 "
                       "(interval above 0)", baseline)


def _g5(run: Run, ch: pd.DataFrame, base: pd.DataFrame | None, baseline: Run | None) -> dict:
    size = int(run.manifest.get("image_size", [0])[0] or 0)
    deep = deep_layers(run.layers, size)
    trained = np.array([[_separated(ch, layer)] for layer in deep], float).reshape(-1, 1)
    base_deep = [] if baseline is None else deep_layers(baseline.layers, size)
    other = None if base is None else np.array([[_separated(base, layer)] for layer in base_deep], float).reshape(-1, 1)
    result = compared(trained, other, lambda x: float(x.sum()) if len(x) else 0.0)
    sensitivity = g5_sensitivity(run)
    curve = ", ".join(f"{r.first_deep_layer}: {r.separated_layers}/{r.deep_layers}" for r in sensitivity.itertuples())
    return _controlled("G5", f"deep layers (receptive field >= {DEEP_RF_SHARE:g} of the image) with distinct "
                       "hole/valid and sketch channels", result, result["value"] > 0,
                       f"{len(deep)} deep layers: {', '.join(layer for layer, s in zip(deep, trained[:, 0]) if s) or 'none'}"
                       f" separate them; by first deep layer: {curve}",
                       "supported if at least one deep layer has both, in different channels", baseline)


def split_runs(run_a: Run, run_b: Run) -> tuple[Run, Run]:
    """(partial run, gated run) from two runs in either order."""
    kinds = [set(r.layers.kind) for r in (run_a, run_b)]
    if "partial" in kinds[0] and "gated" in kinds[1]:
        return run_a, run_b
    if "gated" in kinds[0] and "partial" in kinds[1]:
        return run_b, run_a
    raise RunError(f"claims need one partial-convolution run and one gated run; got {run_a.name} "
                     f"({'/'.join(sorted(kinds[0]))}) and {run_b.name} ({'/'.join(sorted(kinds[1]))})")


def claims(run_a: Run, run_b: Run, rule: RoleRule = DEFAULT_RULE, baseline: Run | None = None) -> pd.DataFrame:
    """The claims table for a partial-convolution run and a gated run, given in either order;
    channel roles (G4, G5) follow ``rule``. The G rows compare the gated run with ``baseline``, a
    random-init run of the same architecture on the same data (default: the one linked in the
    gated run's manifest by ``record --with-baseline``, if any); without one they say "no control"."""
    run_partial, run_gated = split_runs(run_a, run_b)
    rows = partial_claims(run_partial)
    accepts = bool(run_partial.manifest["model"].get("accepts_sketch"))
    rows.append(_row("P5", "the partial model's sketch input (accepts_sketch)", float(accepts), _verdict(not accepts),
                     f"{run_partial.manifest['model']['name']} accepts_sketch={accepts}",
                     "supported if the model has no sketch input"))
    baseline = baseline if baseline is not None else linked_baseline(run_gated)
    if baseline is not None:
        check_baseline(run_gated, baseline)
    rows += gated_claims(run_gated, rule, baseline)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    order = {c: i for i, c in enumerate(STATEMENTS)}
    return frame.sort_values("claim", key=lambda s: s.map(order), ignore_index=True)


def _number(value, low=np.nan, high=np.nan, sign: str = "") -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{value:{sign}.4g}" + (f" [{low:.3g}, {high:.3g}]" if np.isfinite(low) else "")


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """The claims table as text columns for people (the CLI and the explorer): the verdict, the
    trained value with its 95% interval, the control's value, the trained-minus-control difference
    with its 95% interval, the measurement and the evidence."""
    return pd.DataFrame({
        "claim": table.claim, "verdict": table.verdict,
        "value [95%]": [_number(r.value, r.value_low, r.value_high) for r in table.itertuples()],
        "control": [_number(v) for v in table.baseline],
        "difference [95%]": [_number(r.difference, r.difference_low, r.difference_high, "+")
                             for r in table.itertuples()],
        "measurement": table.measurement, "evidence": table.evidence})
