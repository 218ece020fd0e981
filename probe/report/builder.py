"""``build_report``: one self-contained HTML file (plotly.js inlined once, no other host) and a
Markdown summary beside it, from recorded runs. Figures come from :mod:`probe.viz`; HTML from an
autoescaping Jinja2 template, so every run, layer and class name is data, never markup."""
from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import numpy as np
import pandas as pd
from markupsafe import Markup

from .. import viz
from ..analysis.claims import claims as claims_table
from ..analysis.claims import g5_sensitivity, split_runs
from ..analysis.interventions import strongest_channels
from ..analysis.summary import partial_layer_summary
from ..errors import SettingsError
from ..rundir.files import write_atomic
from ..rundir.run import Run, load_run

SECTIONS = ("models", "mask-evolution", "diversity", "extra-inputs", "roles", "labels", "ablation-attribution",
            "claims", "reproducibility")


def _fig(fig) -> Markup:
    """A figure as an HTML fragment that uses the page's single inlined plotly.js. Its element id
    is a hash of the figure (plotly's default is random), so the same runs give the same bytes."""
    div_id = "fig-" + hashlib.sha256(fig.to_json().encode()).hexdigest()[:16]
    return Markup(fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False},
                              div_id=div_id))


def _metrics(run: Run) -> list[dict]:
    table = ((run.manifest["model"].get("metrics") or {}).get("table")) or {}
    return [{"method": name, **values} for name, values in table.items()]


def _model_rows(runs: list[Run]) -> list[dict]:
    return [{"run": r.name, "model": r.manifest["model"]["name"], "class": r.manifest["model"].get("class"),
             "parameters": r.manifest["model"].get("parameters"), "sha256": r.manifest["model"].get("sha256") or "n/a",
             "images": r.manifest["n_images"], "layers": len(r.layers),
             "kinds": ", ".join(sorted(set(r.layers.kind))), "metrics": _metrics(r)} for r in runs]


def _partial_section(run: Run) -> dict:
    ev = run.evolution
    layers = ev.layer.tolist()
    figs = [viz.valid_fraction_curve(ev, title=f"{run.name}: valid fraction per partial layer, measured vs predicted")]
    flipped = ev[ev.flipped > 0]
    for layer in flipped.layer.tolist()[:2]:
        figs.append(viz.coverage_histogram(ev, layer,
                                           title=f"{run.name} {layer}: coverage of locations that flipped to valid"))
    if run.n_samples:
        maps = [run.sample_map(layer, "valid")[0] for layer in layers]
        size = tuple(run.sample_input("image").shape[-2:])
        figs.append(viz.mask_evolution(maps, layers, size, title=f"{run.name}: valid mask of sample 0 at every layer"))
    return {"run": run.name, "figures": [_fig(f) for f in figs], "table": partial_layer_summary(run).round(4)}


def _role_examples(run: Run, per_role: int = 1) -> list[Markup]:
    if not run.n_samples:
        return []
    images, holes = np.asarray(run.sample_input("image")), np.asarray(run.sample_input("hole"))
    sketches = np.asarray(run.sample_input("sketch"))
    out = []
    for layer, channel in strongest_channels(run.channels, run.labels, per_role):
        row = run.channels[(run.channels.layer == layer) & (run.channels.channel == channel)].iloc[0]
        maps = np.asarray(run.sample_map(layer, "gate")[:, channel])
        out.append(_fig(viz.channel_samples(images, holes, maps, sketches=sketches,
                                            title=f"{run.name} {layer} channel {channel}: role {row.role}, "
                                                  f"auc_hole {row.auc_hole:.2f}, auc_sketch {row.auc_sketch:.2f}")))
    return out


def _gated_section(run: Run) -> dict:
    gated = run.layers[run.layers.kind == "gated"].sort_values("depth").layer.tolist()
    picks = sorted({gated[0], gated[len(gated) // 2], gated[-1]}, key=gated.index)
    inter, ablation, attributions = run.table("interventions"), run.table("ablation"), run.table("attributions")
    sketch_gates = inter[inter.quantity == "gate_in_hole"] if inter is not None else None
    sketch_output = inter[inter.quantity == "hole_l1"] if inter is not None else None
    return {
        "run": run.name,
        "summary": _fig(viz.layer_summary(run.channels, run.layers)),
        "role_counts": _fig(viz.role_counts(run.channels, run.layers)),
        "examples": _role_examples(run),
        "heatmaps": [_fig(viz.label_heatmap(run.labels, layer, "auc", run.classes)) for layer in picks],
        "scatter": _fig(viz.channel_scatter(run.channels, run.labels)),
        "sketch": _fig(viz.effect_bars(sketch_gates, f"{run.name}: change of the gate in the hole when the sketch is "
                                       "removed (red: q < 0.05)", xaxis="gate without - with sketch"))
        if sketch_gates is not None else None,
        "sketch_output": sketch_output.round(5).to_dict("records") if sketch_output is not None else [],
        "ablation": _fig(viz.effect_bars(ablation, f"{run.name}: hole L1 change when one gate channel is forced to 0",
                                         xaxis="hole L1 ablated - intact")) if ablation is not None else None,
        "attribution": _fig(viz.attribution_bars(attributions)) if attributions is not None else None,
    }


def _claims(runs: list[Run], baseline: Run | None) -> pd.DataFrame | None:
    partial = [r for r in runs if "partial" in set(r.layers.kind)]
    gated = [r for r in runs if "gated" in set(r.layers.kind)]
    if not partial or not gated:
        return None
    return claims_table(*split_runs(partial[0], gated[0]), baseline=baseline)


def _reproducibility(runs: list[Run]) -> list[dict]:
    return [{"run": r.name, "command": r.manifest.get("command") or "(Python API)",
             "model_source": r.manifest["model"].get("source"), "sha256": r.manifest["model"].get("sha256"),
             "data": r.manifest["data"], "settings": r.manifest["settings"], "environment": r.manifest["environment"],
             "gateprobe": r.manifest["gateprobe_version"]} for r in runs]


def build_report(run_paths: list[str | Path], out: str | Path, title: str | None = None,
                 baseline: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``out`` (HTML) and ``out`` with ``.md`` from the runs; returns both paths. ``baseline``:
    the random-init control of the gated run (default: the one its manifest links, if any)."""
    import jinja2
    from plotly.offline import get_plotlyjs

    runs = [load_run(p) for p in run_paths]
    out = Path(out)
    if out.suffix != ".html":
        raise SettingsError(f"--out {out}: the report must be an .html file")
    out.parent.mkdir(parents=True, exist_ok=True)
    claims = _claims(runs, load_run(baseline) if baseline is not None else None)
    context = {
        "title": title or "gateprobe report: " + " vs ".join(r.name for r in runs),
        "plotlyjs": Markup(get_plotlyjs()),
        "models": _model_rows(runs),
        "partial": [_partial_section(r) for r in runs if not r.evolution.empty],
        "gated": [_gated_section(r) for r in runs if not r.channels.empty],
        "diversity": _fig(viz.diversity_bars({r.name: r.layers for r in runs})),
        "claims": claims.to_dict("records") if claims is not None else [],
        "claims_note": CLAIMS_NOTE,
        "g5": [{"run": r.name, "rows": g5_sensitivity(r).to_dict("records")} for r in runs if not r.channels.empty],
        "reproducibility": _reproducibility(runs),
        "python": platform.python_version(),
        "sections": SECTIONS,
    }
    env = jinja2.Environment(loader=jinja2.PackageLoader("probe", "report"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    html = env.get_template("report.html.j2").render(**context)
    write_atomic(out, html.encode())
    md = out.with_suffix(".md")
    write_atomic(md, markdown_summary(runs, claims, context["title"]).encode())
    return out, md


CLAIMS_NOTE = ("The verdicts are for one checkpoint and one training seed. A G verdict compares the trained model "
               "with its random-init twin (no baseline: \"no control\"); intervals are 95% bootstraps over the "
               "channels or layers the value summarises (P rows: over image groups).")


def _md(text) -> str:
    """Names (runs, layers, classes, models) as Markdown text, never markup or HTML."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def _md_table(frame: pd.DataFrame) -> str:
    def cell(v):
        text = ("n/a" if v != v else f"{v:.4g}") if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")

    head = "| " + " | ".join(map(cell, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    return "\n".join([head, rule] + ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)])


def markdown_summary(runs: list[Run], claims: pd.DataFrame | None, title: str) -> str:
    """The report's Markdown summary: models, claims table, and key per-layer tables."""
    parts = [f"# {_md(title)}", "",
             "Generated by `gateprobe report`; the HTML report beside this file has every figure.", ""]
    parts += ["## Models", ""]
    for row in _model_rows(runs):
        parts.append(f"- **{_md(row['run'])}**: {_md(row['model'])} ({row['parameters']:,} parameters), "
                     f"{row['images']} images, {row['layers']} {row['kinds']} layers, weights sha256 `{row['sha256']}`")
        if row["metrics"]:
            parts += ["", _md_table(pd.DataFrame(row["metrics"]).round(4)), ""]
    if claims is not None:
        columns = ["claim", "verdict", "value", "value_low", "value_high", "baseline", "difference", "difference_low",
                   "difference_high", "measurement", "evidence"]
        parts += ["", "## Claims", "", CLAIMS_NOTE, "", _md_table(claims.reindex(columns=columns)), ""]
        for run in runs:
            if not run.channels.empty:
                parts += [f"### G5 by where \"deep\" starts: {_md(run.name)}", "", _md_table(g5_sensitivity(run)), ""]
    for run in runs:
        if not run.evolution.empty:
            parts += [f"## Mask evolution: {_md(run.name)}", "", _md_table(partial_layer_summary(run).round(4)), ""]
    parts += ["## Effective number of distinct channel maps per layer", ""]
    parts += [_md_table(pd.concat([r.layers.assign(run=r.name)[["run", "layer", "kind", "effective_channels"]]
                                   for r in runs]).round(3)), ""]
    for run in runs:
        if not run.channels.empty:
            roles = run.channels.assign(family=run.channels.role.map(viz.role_category))
            counts = roles.pivot_table(index="layer", columns="family", values="channel", aggfunc="count",
                                       fill_value=0).reindex(run.layers[run.layers.kind == "gated"].layer)
            parts += [f"## Channel roles (first role of each channel): {_md(run.name)}", "",
                      _md_table(counts.reset_index()), ""]
    return "\n".join(parts) + "\n"
