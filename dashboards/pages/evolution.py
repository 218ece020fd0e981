"""Mask evolution: a sample's valid mask at every partial layer (claims P2-P4), the selected
layer's mask and window coverage, the measured vs predicted valid fraction per layer, and the
coverage histogram of the locations that flipped from hole to valid.
URL: ``/evolution?run=&sample=&layer=``.
"""
from __future__ import annotations

from dash import Input, Output, Patch, State, ctx, dcc, html
from dash.exceptions import PreventUpdate

from probe import viz

from .common import (Problems, card, control, graph, header, nav_store, no_runs, pick_int, pick_layer, pick_run,
                     problems_box, register_run_switch, run_options, safe, sample_options, view_state, view_store)

NAME = "evolution"
PATH = "/evolution"
TITLE = "Mask evolution"


def layout(store, params, context):
    problems = Problems()
    view = pick_run(store, params, problems, kind="partial")
    if view is None:
        return no_runs(store, "runs with partial-convolution layers (mask evolution is what partial convolution "
                              "does to the hole; gated layers learn soft gates instead, see the layer view)")
    layer = pick_layer(view, params, problems, kind="partial")
    sample = pick_int(params, "sample", view.n_samples, problems, "sample")
    names = view.partial_layers
    marks = {i: {"label": name} for i, name in enumerate(names)}
    controls = html.Div([
        control("run", dcc.Dropdown(id="evolution-run", options=run_options(store, "partial"), value=view.name,
                                    clearable=False), "300px"),
        control("sample", dcc.Dropdown(id="evolution-sample", options=sample_options(view), value=sample,
                                       clearable=False), "190px"),
        control("layer", html.Div(dcc.Slider(id="evolution-layer", min=0, max=max(len(names) - 1, 0), step=1,
                                             value=names.index(layer), marks=marks, included=False),
                                  className="slider"), "min(720px, 100%)"),
    ], className="controls")
    return html.Div([
        view_store(NAME), nav_store(NAME), dcc.Store(id="evolution-runname", data=view.name),
        header(f"Mask evolution · {view.name}", "Partial convolution marks a location valid as soon as one input "
                                                "under its window is valid: holes shrink layer by layer.", view=view),
        problems_box(problems), controls,
        card(None, html.Div(id="evolution-title", className="figure-title"), graph("evolution-masks")),
        html.Div([card("Selected layer: valid mask and window coverage", graph("evolution-detail")),
                  card("Coverage of flipped locations (P2)", graph("evolution-coverage"))], className="grid2"),
        card(None, graph("evolution-curve")),
    ])


def register(app, context):
    store = context.store

    def _layer(view, index):
        if view is None or not isinstance(index, int) or not 0 <= index < len(view.partial_layers):
            return None
        return view.partial_layers[index]

    @app.callback(Output({"type": "app-view", "page": NAME}, "data"),
                  Input("evolution-sample", "value"), Input("evolution-layer", "value"),
                  State("evolution-runname", "data"))
    def state(sample, index, run):
        return view_state(PATH, run=run, sample=sample, layer=_layer(store.get(run), index))

    register_run_switch(app, store, NAME, PATH, "evolution")

    @app.callback(Output("evolution-layer", "value"), Input("evolution-masks", "clickData"),
                  State("evolution-runname", "data"), prevent_initial_call=True)
    def pick(click, run):
        view = store.get(run)
        index = click["points"][0].get("customdata") if click else None
        index = index - 1 if isinstance(index, int) else None  # tile 0 is the input mask
        if _layer(view, index) is None:
            raise PreventUpdate
        return index

    @app.callback(Output("evolution-masks", "figure"), Output("evolution-title", "children"),
                  Output("evolution-detail", "figure"),
                  Input("evolution-sample", "value"), Input("evolution-layer", "value"),
                  State("evolution-runname", "data"))
    @safe("figure", "text", "figure")
    def masks(sample, index, run):
        view = store.get(run)
        layer = _layer(view, index)
        if layer is None or not isinstance(sample, int) or not 0 <= sample < view.n_samples:
            msg = viz.message_figure("Unknown run, sample or layer.")
            return msg, "", msg
        valid = [view.maps(name, sample, "valid")[0] for name in view.partial_layers]
        size = view.image_size
        s = view.inputs(sample)
        hole = s["hole"][0] > 0.5
        # the input's valid mask first, so the evolution starts where the model starts
        fig = viz.mask_evolution([1.0 - hole] + valid, ["input"] + view.partial_layers, size, highlight=layer)
        first = next((n for n, v in zip(view.partial_layers, valid) if v.min() >= 1), None)
        title = (f"sample {sample} · hole {hole.mean():.0%} of the image · " +
                 (f"all valid from {first}" if first else "never all valid") + " · click a mask to select its layer")
        maps, _, _ = view.layer_maps(layer, sample)
        row = view.layer_row(layer)
        detail = viz.mask_detail(s["image"], s["hole"], maps[0], maps[1],
                                     title=f"{layer} · {row.kernel}×{row.kernel} kernel, stride "
                                           f"{row.stride}, dilation {row.dilation}")
        return fig, title, detail

    @app.callback(Output("evolution-curve", "figure"), Output("evolution-coverage", "figure"),
                  Input("evolution-layer", "value"), State("evolution-runname", "data"))
    @safe("figure", "figure")
    def curves(index, run):
        view = store.get(run)
        layer = _layer(view, index)
        if layer is None:
            msg = viz.message_figure("Unknown run or layer.")
            return msg, msg
        if ctx.triggered_id == "evolution-layer":
            curve = Patch()  # the curve is drawn already: move its highlight band only
            curve["layout"]["shapes"] = viz.highlight_band(view.partial_layers, layer)
        else:
            curve = viz.valid_fraction_curve(view.evolution, highlight=layer)
        return curve, viz.coverage_histogram(view.evolution, layer, title=layer)
