"""Labels: how well each gated channel of a layer follows each segmentation class (claim G4), as a
label x channel heatmap of AUC or IoU, and every channel of the run as hole selectivity vs best
label. Clicking a cell or a point opens that channel. URL: ``/labels?run=&layer=&metric=&scope=``.
"""
from __future__ import annotations

import numpy as np
from dash import Input, Output, Patch, State, ctx, dcc, html
from dash.exceptions import PreventUpdate

from probe import viz

from .common import (Problems, card, control, graph, header, href, layer_options, nav_store, no_runs, pick_layer,
                     pick_run, problems_box, run_options, safe, view_state, view_store)

NAME = "labels"
PATH = "/labels"
TITLE = "Labels"
METRICS = {"auc": "AUC (label vs rest)", "iou": "IoU (Network Dissection)"}
SCOPES = {"layer": "this layer highlighted", "all": "all layers alike"}


def layout(store, params, context):
    problems = Problems()
    view = pick_run(store, params, problems, kind="gated")
    if view is None:
        return no_runs(store, "runs with gated layers (label statistics are computed for gated channels)")
    layer = pick_layer(view, params, problems, kind="gated")
    metric = problems.choice(params, "metric", METRICS, "auc")
    scope = problems.choice(params, "scope", SCOPES, "layer")
    controls = html.Div([
        control("run", dcc.Dropdown(id="labels-run", options=run_options(store, "gated"), value=view.name,
                                    clearable=False), "300px"),
        control("layer", dcc.Dropdown(id="labels-layer", options=layer_options(view, "gated"), value=layer,
                                      clearable=False), "300px"),
        control("heatmap value", dcc.RadioItems(id="labels-metric", value=metric, inline=True,
                                                options=[{"label": " " + v, "value": k} for k, v in METRICS.items()])),
        control("scatter", dcc.RadioItems(id="labels-scope", value=scope, inline=True,
                                          options=[{"label": " " + v, "value": k} for k, v in SCOPES.items()])),
    ], className="controls")
    return html.Div([
        view_store(NAME), nav_store(NAME), dcc.Store(id="labels-runname", data=view.name),
        header(f"Labels · {view.name}", "Per channel and class: does the gate separate the class from the rest? "
                                        "Click a cell or a point to open the channel.", view=view),
        problems_box(problems), controls,
        card(None, html.Div(id="labels-title", className="figure-title"), graph("labels-heatmap")),
        card(None, graph("labels-scatter")),
        card(None, graph("labels-embedding")),
    ])


def register(app, context):
    store = context.store

    @app.callback(Output({"type": "app-view", "page": NAME}, "data"),
                  Input("labels-layer", "value"), Input("labels-metric", "value"), Input("labels-scope", "value"),
                  State("labels-runname", "data"))
    def state(layer, metric, scope, run):
        return view_state(PATH, run=run, layer=layer, metric=metric, scope=scope)

    @app.callback(Output({"type": "app-nav", "page": NAME}, "data"),
                  Input("labels-run", "value"), Input("labels-heatmap", "clickData"),
                  Input("labels-scatter", "clickData"), Input("labels-embedding", "clickData"),
                  State("labels-runname", "data"), State("labels-layer", "value"), prevent_initial_call=True)
    def navigate(new_run, heat_click, scatter_click, embedding_click, run, layer):
        view = store.get(run)
        trigger = ctx.triggered_id
        if trigger == "labels-run":
            if new_run and new_run != run and store.get(new_run) is not None:
                return href(PATH, run=new_run)
            raise PreventUpdate
        if view is None:
            raise PreventUpdate
        if trigger == "labels-heatmap" and heat_click:
            target_layer, channel = layer, heat_click["points"][0].get("x")
        elif trigger in ("labels-scatter", "labels-embedding") and (scatter_click or embedding_click):
            click = scatter_click if trigger == "labels-scatter" else embedding_click
            custom = click["points"][0].get("customdata") or [None, None]
            target_layer, channel = custom[0], custom[1]
        else:
            raise PreventUpdate
        if not view.has_layer(target_layer) or view.kind_of(target_layer) != "gated":
            raise PreventUpdate
        try:
            channel = int(channel)
        except (TypeError, ValueError):
            raise PreventUpdate from None
        if not 0 <= channel < view.n_channels(target_layer):
            raise PreventUpdate
        return href("/channel", run=run, layer=target_layer, channel=channel)

    @app.callback(Output("labels-heatmap", "figure"), Output("labels-title", "children"),
                  Input("labels-layer", "value"), Input("labels-metric", "value"), State("labels-runname", "data"))
    @safe("figure", "text")
    def heatmap(layer, metric, run):
        view = store.get(run)
        if view is None or not view.has_layer(layer) or metric not in METRICS:
            return viz.message_figure("Unknown run, layer or metric."), ""
        fig = view._memo(("figure", "heatmap", layer, metric),
                         lambda: viz.label_heatmap(view.labels, layer, metric, view.classes))
        return fig, f"{layer} · {METRICS[metric]} per class (rows) and channel (columns)"

    @app.callback(Output("labels-scatter", "figure"), Output("labels-embedding", "figure"),
                  Input("labels-layer", "value"), Input("labels-scope", "value"), State("labels-runname", "data"))
    @safe("figure", "figure")
    def scatter(layer, scope, run):
        view = store.get(run)
        if view is None or not view.has_layer(layer):
            msg = viz.message_figure("Unknown run or layer.")
            return msg, msg
        highlight = layer if scope == "layer" else None
        if ctx.triggered_id == "labels-layer" and highlight is not None:
            # the figures are on the page already: only the point styles change
            return _restyle(view, "scatter", highlight), _restyle(view, "embedding", highlight)
        return _figure(view, "scatter", highlight), _figure(view, "embedding", highlight)


def _figure(view, which: str, highlight):
    if which == "scatter":
        return view._memo(("figure", which, highlight),
                          lambda: viz.channel_scatter(view.channels, view.labels, highlight_layer=highlight))
    return view._memo(("figure", which, highlight),
                      lambda: viz.embedding_scatter(view.optional_table("embedding"), view.channels,
                                                        highlight_layer=highlight))


def _restyle(view, which: str, highlight: str) -> Patch:
    """A partial update that highlights ``highlight``'s points in a scatter already drawn with the
    same run (the traces and points of the figure do not depend on the highlighted layer)."""
    base = _figure(view, which, None)
    patch = Patch()
    if base.layout.meta and base.layout.meta.get("message"):
        return patch
    for i, trace in enumerate(base.data):
        mine = np.asarray([row[0] == highlight for row in trace.customdata])
        patch["data"][i]["marker"]["opacity"] = np.where(mine, 0.95, 0.2).tolist()
        patch["data"][i]["marker"]["size"] = np.where(mine, 9, 6).tolist()
    return patch
