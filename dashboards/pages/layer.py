"""Layer: every channel's gate map of one layer for one sample, sortable by any channels-table
statistic and outlined by role, beside the sample's image, hole, sketch and label map.

For a partial-convolution layer the page shows the one valid mask that all its channels share
(claim P4) and the window coverage behind it. URL: ``/layer?run=&layer=&sample=&sort=&order=&scale=``.
"""
from __future__ import annotations

import numpy as np
from dash import Input, Output, Patch, State, ctx, dcc, html
from dash.exceptions import PreventUpdate

from probe import viz

from .common import (Problems, card, control, graph, header, href, kv_table, label_legend, layer_options, nav_store,
                     no_runs, pick_int, pick_layer, pick_run, problems_box, role_legend, run_options, safe,
                     sample_options, view_state, view_store)

NAME = "layer"
PATH = "/layer"
TITLE = "Layer"
ORDERS = ("asc", "desc")
SCALES = {"fixed": "gate 0–1", "contrast": "per-channel min–max"}


def layout(store, params, context):
    problems = Problems()
    view = pick_run(store, params, problems)
    if view is None:
        return no_runs(store)
    layer = pick_layer(view, params, problems)
    sample = pick_int(params, "sample", view.n_samples, problems, "sample")
    stats = ["channel"] + view.statistics()
    sort = params.get("sort", "channel")
    if sort not in stats:
        problems.bad("statistic to sort by", sort, "channel")
        sort = "channel"
    order = problems.choice(params, "order", ORDERS, "asc")
    scale = problems.choice(params, "scale", SCALES, "fixed")
    controls = html.Div([
        control("run", dcc.Dropdown(id="layer-run", options=run_options(store), value=view.name, clearable=False),
                "300px"),
        control("layer", dcc.Dropdown(id="layer-layer", options=layer_options(view), value=layer, clearable=False),
                "300px"),
        control("sample", dcc.Dropdown(id="layer-sample", options=sample_options(view), value=sample,
                                       clearable=False), "190px"),
        control("sort channels by", dcc.Dropdown(id="layer-sort", options=[{"label": s, "value": s} for s in stats],
                                                 value=sort, clearable=False), "190px"),
        control("order", dcc.RadioItems(id="layer-order", options=[{"label": " ascending", "value": "asc"},
                                                                   {"label": " descending", "value": "desc"}],
                                        value=order, inline=True)),
        control("colour scale", dcc.RadioItems(id="layer-scale", options=[{"label": " " + v, "value": k}
                                                                          for k, v in SCALES.items()],
                                               value=scale, inline=True)),
    ], className="controls")
    return html.Div([
        view_store(NAME), nav_store(NAME), dcc.Store(id="layer-runname", data=view.name),
        header(f"Layer view · {view.name}", "Every channel's map of one layer for one sample. Click a channel to "
                                            "open it; outlines give each channel's role (from the whole run).",
               view=view),
        problems_box(problems), controls,
        html.Div([
            html.Div([card("Sample", graph("layer-panel", config={"displayModeBar": False}),
                           label_legend(view.classes)),
                      card("Layer", html.Div(id="layer-info"))], className="side"),
            html.Div([card(None, html.Div(id="layer-title", className="figure-title"), graph("layer-grid"),
                           role_legend())], className="main"),
        ], className="split"),
        card(None, graph("layer-summary")),
    ])


def sorted_channels(channels, sort: str, order: str) -> list[int]:
    """Channel numbers ordered by ``sort`` (NaN last), ascending or descending."""
    if sort == "channel" or sort not in channels:
        ids = list(channels.channel.astype(int))
        return ids[::-1] if order == "desc" else ids
    frame = channels.sort_values(sort, ascending=order == "asc", na_position="last", kind="stable")
    return list(frame.channel.astype(int))


def register(app, context):
    store = context.store

    @app.callback(Output({"type": "app-view", "page": NAME}, "data"),
                  Input("layer-layer", "value"), Input("layer-sample", "value"), Input("layer-sort", "value"),
                  Input("layer-order", "value"), Input("layer-scale", "value"), State("layer-runname", "data"))
    def state(layer, sample, sort, order, scale, run):
        return view_state(PATH, run=run, layer=layer, sample=sample, sort=sort, order=order, scale=scale)

    @app.callback(Output({"type": "app-nav", "page": NAME}, "data"),
                  Input("layer-run", "value"), Input("layer-grid", "clickData"),
                  State("layer-runname", "data"), State("layer-layer", "value"), prevent_initial_call=True)
    def navigate(new_run, click, run, layer):
        if ctx.triggered_id == "layer-run":
            if new_run and new_run != run and store.get(new_run) is not None:
                return href(PATH, run=new_run)
            raise PreventUpdate
        view = store.get(run)
        if view is None or not view.has_layer(layer) or view.kind_of(layer) != "gated" or not click:
            raise PreventUpdate
        channel = click["points"][0].get("customdata")
        if not isinstance(channel, int) or not 0 <= channel < view.n_channels(layer):
            raise PreventUpdate
        return href("/channel", run=run, layer=layer, channel=channel)

    @app.callback(Output("layer-panel", "figure"), Input("layer-sample", "value"), State("layer-runname", "data"))
    @safe("figure")
    def panel(sample, run):
        view = store.get(run)
        if view is None or not isinstance(sample, int) or not 0 <= sample < view.n_samples:
            return viz.message_figure("Unknown run or sample.")
        s = view.inputs(sample)
        return view._memo(("figure", "panel", sample), lambda: viz.image_panel(
            s["image"], s["hole"], s["sketch"], s["labels"], view.classes, s["output"], height=190))

    @app.callback(Output("layer-grid", "figure"), Output("layer-title", "children"), Output("layer-info", "children"),
                  Input("layer-layer", "value"), Input("layer-sample", "value"), Input("layer-sort", "value"),
                  Input("layer-order", "value"), Input("layer-scale", "value"), State("layer-runname", "data"))
    @safe("figure", "text", "text")
    def grid(layer, sample, sort, order, scale, run):
        view = store.get(run)
        if view is None or not view.has_layer(layer) or not isinstance(sample, int) \
                or not 0 <= sample < view.n_samples:
            return viz.message_figure("Unknown run, layer or sample."), "", ""
        row = view.layer_row(layer)
        maps, tile_labels, value_name = view.layer_maps(layer, sample)
        if view.kind_of(layer) == "gated":
            channels = view.channels_of(layer)
            roles = list(channels.role) if "role" in channels else None
            ids = sorted_channels(channels, sort, order)
            fig = viz.channel_grid(maps, order=ids, roles=roles, normalize=scale == "contrast")
            what = "sorted by " + (f"{sort} ({'descending' if order == 'desc' else 'ascending'})")
            title = f"{layer} · {row.channels} gate maps at {row.height}×{row.width} · sample {sample} · {what}"
            info = _gated_info(row, channels)
        else:
            fig = viz.channel_grid(maps, tile_labels=tile_labels, columns=2, value_name=value_name,
                                       unit="map", tile_px=150)
            title = (f"{layer} · partial convolution: one valid mask shared by all {row.channels} channels "
                     f"(claim P4) · sample {sample}")
            info = _partial_info(row, view)
        return fig, title, info

    @app.callback(Output("layer-summary", "figure"), Input("layer-layer", "value"), State("layer-runname", "data"))
    @safe("figure")
    def summary(layer, run):
        view = store.get(run)
        if view is None or not view.has_layer(layer):
            return viz.message_figure("Unknown run or layer.")
        kind = view.kind_of(layer)
        if ctx.triggered_id == "layer-layer" and view.kind != "mixed":
            # same figure, another highlighted layer: move the band only
            patch = Patch()
            order = view.gated_layers if kind == "gated" else view.partial_layers
            patch["layout"]["shapes"] = viz.highlight_band(order, layer)
            return patch
        if kind == "gated":
            return viz.layer_summary(view.channels, view.layers, highlight=layer)
        return viz.valid_fraction_curve(view.evolution, highlight=layer)


def _geometry(row) -> list:
    return [("kind", row.kind), ("channels", row.channels), ("resolution", f"{row.height}×{row.width}"),
            ("kernel / stride / dilation", f"{row.kernel} / {row.stride} / {row.dilation}"),
            ("receptive field", f"{row.receptive_field} px"), ("depth", row.depth),
            ("effective channels", float(row.effective_channels) if row.effective_channels == row.effective_channels
             else "n/a (mask all valid)")]


def _gated_info(row, channels) -> html.Div:
    rows = _geometry(row)
    if not channels.empty:
        rows += [("mean gate in hole", float(np.nanmean(channels.mean_hole))),
                 ("mean gate valid", float(np.nanmean(channels.mean_valid)))]
    counts = []
    if "role" in channels:
        cats = channels.role.map(viz.role_category).value_counts()
        for cat in viz.ROLE_ORDER:
            if cats.get(cat, 0):
                counts.append(html.Span([html.Span(className="swatch", style={"background": viz.ROLE_COLORS[cat]}),
                                         f"{cat} {cats[cat]}"], className="legend-item"))
    return html.Div([kv_table(rows), html.Div("channels by role", className="control-label"),
                     html.Div(counts, className="legend")])


def _partial_info(row, view) -> html.Div:
    rows = _geometry(row)
    ev = view.evolution
    if not ev.empty and row.layer in set(ev.layer):
        e = ev[ev.layer == row.layer].iloc[0]
        rows += [("valid fraction (run)", float(e.valid_fraction)),
                 ("predicted", float(e.valid_fraction_predicted)),
                 ("images all valid", float(e.all_valid_images))]
    return html.Div([kv_table(rows), dcc.Link("mask evolution of this run →", href=href("/evolution", run=view.name,
                                                                                     layer=row.layer))])
