"""Overview: the served runs (and the skipped ones, with why), each with its headline figure."""
from __future__ import annotations

from dash import dcc, html

from probe import viz

from .common import card, graph, header, href

NAME = "overview"
PATH = "/"
TITLE = "Overview"
MAX_FIGURES = 8


def _run_row(view) -> html.Tr:
    name = view.name
    links = [dcc.Link("layers", href=href("/layer", run=name))]
    if view.gated_layers:
        links += [dcc.Link("labels", href=href("/labels", run=name)),
                  dcc.Link("channels", href=href("/channel", run=name))]
    if view.partial_layers:
        links.append(dcc.Link("mask evolution", href=href("/evolution", run=name)))
    links.append(dcc.Link("live", href=href("/live", run=name)))
    spaced = []
    for link in links:
        spaced += [link, " "]
    data = view.manifest.get("data", {})
    source = view.model_source + (" (random weights)" if view.random_init else "")
    kinds = f"{len(view.gated_layers)} gated, {len(view.partial_layers)} partial"
    return html.Tr([html.Td(dcc.Link(name, href=href("/layer", run=name)), className="name"),
                    html.Td(view.model_name), html.Td(source, className="muted"),
                    html.Td(f"{data.get('kind', '?')} {data.get('size', '')} seed {data.get('seed', '?')}"),
                    html.Td(str(view.manifest.get("n_images", "?"))), html.Td(kinds), html.Td(str(view.n_samples)),
                    html.Td(str(view.manifest.get("created", ""))[:19].replace("T", " ")),
                    html.Td(spaced, className="links")])


def layout(store, params, context):
    views = list(store.runs.values())
    head = header("Runs", f"{len(views)} served from {store.root}")
    if views:
        table = html.Table([
            html.Thead(html.Tr([html.Th(c) for c in ("run", "model", "source", "data", "images", "layers", "samples",
                                                     "recorded", "open")])),
            html.Tbody([_run_row(v) for v in views])], className="data runs", id="overview-runs")
    else:
        table = html.P(f"No complete runs under {store.root}. Record one with "
                       "`gateprobe record --model ... --out RUNS_DIR/NAME` and reload this page.", id="overview-runs")
    skipped = html.Div(id="overview-skipped")
    if store.skipped:
        skipped = card("Skipped", html.Ul([html.Li([html.B(name), ": ", reason]) for name, reason in
                                           store.skipped.items()], id="overview-skipped"), class_name="card warn")
    blocks = [head, card(None, table), skipped]
    if views:
        blocks.append(card("Channel diversity across runs",
                           html.P("Participation ratio of the channel covariance of each layer's maps: 1 means every "
                                  "channel shares one mask (partial convolution, claim P4); larger means distinct "
                                  "per-channel soft gates (claim G3).", className="explain"),
                           graph("overview-diversity", viz.diversity_bars({v.name: v.layers for v in views},
                                                                              title=None))))
        cards = []
        for view in views[:MAX_FIGURES]:
            if view.gated_layers:
                fig = view._memo(("figure", "summary"), lambda v=view: viz.layer_summary(v.channels, v.layers,
                                                                                             title=None))
                what = "mean gate in hole vs valid per layer"
            else:
                fig = view._memo(("figure", "curve"), lambda v=view: viz.valid_fraction_curve(v.evolution,
                                                                                                  title=None))
                what = "valid fraction per partial layer"
            cards.append(card(None, html.H3([dcc.Link(view.name, href=href("/layer", run=view.name)), f" · {what}"]),
                              graph({"type": "overview-run", "run": view.name}, fig)))
        blocks.append(html.Div(cards, className="grid2"))
        if len(views) > MAX_FIGURES:
            blocks.append(html.P(f"Figures shown for the first {MAX_FIGURES} runs.", className="muted"))
        if len(views) >= 2:
            a, b = views[0].name, views[1].name
            blocks.append(card("Compare", html.P(["Two runs side by side on the same sample images: ",
                                                  dcc.Link(f"{a} vs {b}", href=href("/compare", a=a, b=b))])))
    return html.Div(blocks)


def register(app, context):
    pass
