"""Compare: two runs side by side on the same sample images -- their inputs and outputs, the maps
of a chosen layer of each, their headline curves, and the channel diversity of both.
URL: ``/compare?a=&b=&sample=&la=&lb=``.
"""
from __future__ import annotations

from dash import Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from probe import viz

from .common import (Problems, card, control, graph, header, href, layer_options, nav_store, no_runs, pick_int,
                     pick_layer, pick_run, problems_box, run_options, safe, sample_options, view_state, view_store)

NAME = "compare"
PATH = "/compare"
TITLE = "Compare"


def same_samples(a, b) -> tuple[bool, str]:
    """Whether runs ``a`` and ``b`` stored the same sample images, and a sentence saying so."""
    if a.data_key() != b.data_key():
        return False, "The two runs were recorded on different data (kind, size or seed differ): the samples differ."
    if a.sample_indices()[:min(a.n_samples, b.n_samples)] != b.sample_indices()[:min(a.n_samples, b.n_samples)]:
        return False, "The two runs stored different images as samples."
    return True, "Both runs stored the same sample images, holes and sketches."


def layout(store, params, context):
    problems = Problems()
    a = pick_run(store, params, problems, key="a")
    if a is None:
        return no_runs(store)
    others = [n for n in store.names() if n != a.name]
    if params.get("b") in store.names():
        b = store.get(params["b"])
    else:
        problems.bad("run b", params.get("b"), others[0] if others else a.name)
        b = store.get(others[0] if others else a.name)
    n = min(a.n_samples, b.n_samples)
    sample = pick_int(params, "sample", n, problems, "sample")
    la = pick_layer(a, params, problems, key="la")
    lb = pick_layer(b, params, problems, key="lb")
    same, sentence = same_samples(a, b)
    side = []
    for key, view, layer in (("a", a, la), ("b", b, lb)):
        side.append(html.Div([
            html.Div([control(f"run {key}", dcc.Dropdown(id=f"compare-{key}", options=run_options(store),
                                                         value=view.name, clearable=False), "100%"),
                      control(f"layer of {key}", dcc.Dropdown(id=f"compare-l{key}", options=layer_options(view),
                                                              value=layer, clearable=False), "100%")],
                     className="controls"),
            card(None, graph(f"compare-panel-{key}", config={"displayModeBar": False})),
            card(None, html.Div(id=f"compare-title-{key}", className="figure-title"), graph(f"compare-maps-{key}")),
            card(None, graph(f"compare-summary-{key}")),
        ], className="column"))
    return html.Div([
        view_store(NAME), nav_store(NAME), dcc.Store(id="compare-names", data=[a.name, b.name]),
        header("Compare runs", f"{a.name} vs {b.name}"),
        problems_box(problems),
        html.Div([control("sample", dcc.Dropdown(id="compare-sample", value=sample, clearable=False,
                                                 options=sample_options(a)[:n]), "220px"),
                  html.P(sentence, className="ok" if same else "problem")], className="controls"),
        html.Div(side, className="grid2"),
        card("Channel diversity of both runs", graph("compare-diversity")),
    ])


def register(app, context):
    store = context.store

    @app.callback(Output({"type": "app-view", "page": NAME}, "data"),
                  Input("compare-sample", "value"), Input("compare-la", "value"), Input("compare-lb", "value"),
                  State("compare-names", "data"))
    def state(sample, la, lb, names):
        return view_state(PATH, a=names[0], b=names[1], sample=sample, la=la, lb=lb)

    @app.callback(Output({"type": "app-nav", "page": NAME}, "data"), Input("compare-a", "value"),
                  Input("compare-b", "value"), State("compare-names", "data"), State("compare-sample", "value"),
                  prevent_initial_call=True)
    def navigate(a, b, names, sample):
        if store.get(a) is None or store.get(b) is None or [a, b] == names:
            raise PreventUpdate
        return href(PATH, a=a, b=b, sample=sample)

    for key, index in (("a", 0), ("b", 1)):
        _register_side(app, store, key, index)

    @app.callback(Output("compare-diversity", "figure"), Input("compare-names", "data"))
    @safe("figure")
    def diversity(names):
        views = [store.get(n) for n in names]
        if any(v is None for v in views):
            return viz.message_figure("Unknown run.")
        return viz.diversity_bars({v.name: v.layers for v in dict.fromkeys(views)}, title=None)


def _register_side(app, store, key: str, index: int):
    @app.callback(Output(f"compare-panel-{key}", "figure"), Input("compare-sample", "value"),
                  State("compare-names", "data"))
    @safe("figure")
    def panel(sample, names):
        view = store.get(names[index])
        if view is None or not isinstance(sample, int) or not 0 <= sample < view.n_samples:
            return viz.message_figure("Unknown run or sample.")
        s = view.inputs(sample)
        return viz.image_panel(s["image"], s["hole"], s["sketch"], s["labels"], view.classes, s["output"],
                                   title=f"{view.name} · {view.model_name}", height=200)

    @app.callback(Output(f"compare-maps-{key}", "figure"), Output(f"compare-title-{key}", "children"),
                  Input("compare-sample", "value"), Input(f"compare-l{key}", "value"), State("compare-names", "data"))
    @safe("figure", "text")
    def maps(sample, layer, names):
        view = store.get(names[index])
        if view is None or not view.has_layer(layer) or not isinstance(sample, int) \
                or not 0 <= sample < view.n_samples:
            return viz.message_figure("Unknown run, layer or sample."), ""
        arrays, labels, value_name = view.layer_maps(layer, sample)
        row = view.layer_row(layer)
        if view.kind_of(layer) == "gated":
            ch = view.channels_of(layer)
            fig = viz.channel_grid(arrays, roles=list(ch.role) if "role" in ch else None, tile_px=34)
        else:
            fig = viz.channel_grid(arrays, tile_labels=labels, columns=2, value_name=value_name, unit="map",
                                       tile_px=110)
        return fig, f"{layer} · {row.kind} · {row.channels}×{row.height}×{row.width}"

    @app.callback(Output(f"compare-summary-{key}", "figure"), Input(f"compare-l{key}", "value"),
                  State("compare-names", "data"))
    @safe("figure")
    def summary(layer, names):
        view = store.get(names[index])
        if view is None or not view.has_layer(layer):
            return viz.message_figure("Unknown run or layer.")
        if view.kind_of(layer) == "gated":
            return viz.layer_summary(view.channels, view.layers, highlight=layer, title=None)
        return viz.valid_fraction_curve(view.evolution, highlight=layer, title=None)
