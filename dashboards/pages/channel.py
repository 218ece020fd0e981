"""Channel: one gated channel across the stored samples, its gate in the hole vs on valid pixels,
its per-label AUC/IoU, its role and statistics, and the intervention / attribution rows of the
run when those tables exist. URL (shareable): ``/channel?run=&layer=&channel=&scale=``.
"""
from __future__ import annotations

import numpy as np
from dash import Input, Output, State, ctx, dcc, html
from dash.exceptions import PreventUpdate

from probe import viz

from .common import (Problems, card, control, frame_table, graph, header, href, kv_table, layer_options, nav_store,
                     no_runs, pick_int, pick_layer, pick_run, problems_box, register_run_switch, run_options, safe,
                     view_state, view_store)

NAME = "channel"
PATH = "/channel"
TITLE = "Channel"
STAT_ROWS = ("role", "mean", "std", "mean_hole", "mean_valid", "mean_border", "mean_far", "mean_sketch",
             "mean_hole_plain", "auc_hole", "q_hole", "auc_sketch", "q_sketch", "threshold")


def _statistics(row) -> list[tuple[str, object]]:
    """The channels-table row as (name, value) pairs: the usual statistics first, then any other."""
    keys = [k for k in STAT_ROWS if k in row.index] + [k for k in row.index if k not in STAT_ROWS
                                                       and k not in ("layer", "channel")]
    return [(k, row[k] if isinstance(row[k], str) else float(row[k])) for k in keys]


def channel_options(view, layer: str) -> list[dict]:
    channels = view.channels_of(layer)
    roles = dict(zip(channels.channel.astype(int), channels.role)) if "role" in channels else {}
    return [{"label": f"{c} · {roles.get(c, '?')}", "value": c} for c in range(view.n_channels(layer))]


def layout(store, params, context):
    problems = Problems()
    view = pick_run(store, params, problems, kind="gated")
    if view is None:
        return no_runs(store, "runs with gated layers (the channel view is for gated convolutions; partial layers "
                              "share one mask, see the mask evolution page)")
    layer = pick_layer(view, params, problems, kind="gated")
    channel = pick_int(params, "channel", view.n_channels(layer), problems, f"channel of {layer}")
    scale = params.get("scale", "fixed")
    if scale not in ("fixed", "contrast"):
        problems.bad("scale", scale, "fixed")
        scale = "fixed"
    controls = html.Div([
        control("run", dcc.Dropdown(id="channel-run", options=run_options(store, "gated"), value=view.name,
                                    clearable=False), "300px"),
        control("layer", dcc.Dropdown(id="channel-layer", options=layer_options(view, "gated"), value=layer,
                                      clearable=False), "300px"),
        control("channel", dcc.Dropdown(id="channel-channel", options=channel_options(view, layer), value=channel,
                                        clearable=False), "260px"),
        control(" ", html.Div([html.Button("◀ previous", id="channel-prev", n_clicks=0, className="btn"),
                               html.Button("next ▶", id="channel-next", n_clicks=0, className="btn")])),
        control("colour scale", dcc.RadioItems(id="channel-scale", value=scale, inline=True,
                                               options=[{"label": " gate 0–1", "value": "fixed"},
                                                        {"label": " per-sample min–max", "value": "contrast"}])),
    ], className="controls")
    return html.Div([
        view_store(NAME), nav_store(NAME), dcc.Store(id="channel-runname", data=view.name),
        header(f"Channel view · {view.name}", "One channel's gate across the stored samples (hole outlined in red).",
               view=view),
        problems_box(problems), controls,
        html.Div([html.Span("Link to this view: ", className="muted"), html.A(id="channel-link", href="#"),
                  dcc.Clipboard(target_id="channel-link", className="clip", title="copy link")], className="share"),
        card(None, html.Div(id="channel-title", className="figure-title"), graph("channel-samples")),
        html.Div([card("Gate in the hole vs on valid pixels (stored samples)", graph("channel-hist")),
                  card("Per-label separation (whole run)", graph("channel-labels"))], className="grid2"),
        html.Div([card("Statistics (whole run)", html.Div(id="channel-stats")),
                  card("Interventions and attributions", html.Div(id="channel-extra"))], className="grid2"),
    ])


def register(app, context):
    store = context.store

    @app.callback(Output("channel-channel", "options"), Output("channel-channel", "value"),
                  Input("channel-layer", "value"), Input("channel-prev", "n_clicks"), Input("channel-next", "n_clicks"),
                  State("channel-channel", "value"), State("channel-runname", "data"), prevent_initial_call=True)
    def choose(layer, _prev, _next, channel, run):
        view = store.get(run)
        if view is None or not view.has_layer(layer) or view.kind_of(layer) != "gated":
            raise PreventUpdate
        n = view.n_channels(layer)
        channel = channel if isinstance(channel, int) else 0
        if ctx.triggered_id == "channel-prev":
            channel = (channel - 1) % n
        elif ctx.triggered_id == "channel-next":
            channel = (channel + 1) % n
        else:
            channel = min(channel, n - 1)
        return channel_options(view, layer), channel

    @app.callback(Output({"type": "app-view", "page": NAME}, "data"), Output("channel-link", "href"),
                  Output("channel-link", "children"),
                  Input("channel-layer", "value"), Input("channel-channel", "value"), Input("channel-scale", "value"),
                  State("channel-runname", "data"))
    def state(layer, channel, scale, run):
        link = href(PATH, run=run, layer=layer, channel=channel)
        return view_state(PATH, run=run, layer=layer, channel=channel, scale=scale), link, link

    register_run_switch(app, store, NAME, PATH, "channel")

    def _valid(view, layer, channel) -> bool:
        return (view is not None and view.has_layer(layer) and view.kind_of(layer) == "gated"
                and isinstance(channel, int) and 0 <= channel < view.n_channels(layer))

    @app.callback(Output("channel-samples", "figure"), Output("channel-title", "children"),
                  Input("channel-layer", "value"), Input("channel-channel", "value"), Input("channel-scale", "value"),
                  State("channel-runname", "data"))
    @safe("figure", "text")
    def samples(layer, channel, scale, run):
        view = store.get(run)
        if not _valid(view, layer, channel):
            return viz.message_figure("Unknown run, layer or channel."), ""
        images = np.asarray(view.sample("image"), dtype=np.float32)
        holes = np.asarray(view.sample("hole"), dtype=np.float32)
        sketches = np.asarray(view.sample("sketch"), dtype=np.float32)
        fig = viz.channel_samples(images, holes, view.channel_maps(layer, channel), sketches=sketches,
                                      normalize=scale == "contrast")
        row = view.channels_of(layer)
        role = row[row.channel == channel].role.iloc[0] if "role" in row and (row.channel == channel).any() else "?"
        return fig, f"{layer} · channel {channel} · role: {role}"

    @app.callback(Output("channel-hist", "figure"), Output("channel-labels", "figure"),
                  Output("channel-stats", "children"), Output("channel-extra", "children"),
                  Input("channel-layer", "value"), Input("channel-channel", "value"), State("channel-runname", "data"))
    @safe("figure", "figure", "text", "text")
    def details(layer, channel, run):
        view = store.get(run)
        if not _valid(view, layer, channel):
            msg = viz.message_figure("Unknown run, layer or channel.")
            return msg, msg, "", ""
        maps = view.channel_maps(layer, channel)
        hole_cells = [view.hole_at(k, maps.shape[-2:]) for k in range(view.n_samples)]
        hole_values = np.concatenate([m[h] for m, h in zip(maps, hole_cells)])
        valid_values = np.concatenate([m[~h] for m, h in zip(maps, hole_cells)])
        channels = view.channels_of(layer)
        stats = channels[channels.channel == channel]
        s = stats.iloc[0] if len(stats) else None
        hist = viz.gate_histograms(hole_values, valid_values,
                                       None if s is None else float(s.mean_hole),
                                       None if s is None else float(s.mean_valid))
        bars = viz.label_bars(view.labels_of(layer, channel), view.classes)
        table = kv_table(_statistics(s)) if s is not None else "No statistics."
        return hist, bars, table, _extra(view, layer, channel)


EXTRA_TABLES = {
    "interventions": ("Sketch on/off", "change of this channel's mean gate in the hole when the sketch is removed"),
    "ablation": ("Ablation", "change of the hole L1 error when this channel's gate is forced to 0"),
    "attributions": ("Attribution", "integrated gradients of this channel's mean gate in the hole, by input group"),
}
EFFECT_COLUMNS = ["intervention", "quantity", "baseline", "intervened", "delta", "ci_low", "ci_high", "q_value"]


def _extra(view, layer: str, channel: int) -> html.Div:
    """The rows of the optional analysis tables (``gateprobe analyze``) about this channel, or a
    note that the run has none."""
    blocks, missing = [], []
    for name, (heading, what) in EXTRA_TABLES.items():
        table = view.optional_table(name)
        if table is None:
            missing.append(name)
            continue
        part = table
        if "layer" in part:
            part = part[part.layer == layer]
        if "channel" in part:
            part = part[part.channel == channel]
        blocks.append(html.H4(f"{heading}: {what}"))
        if part.empty:
            blocks.append(html.P("not measured for this channel", className="muted"))
        elif name == "attributions":
            fig = viz.attribution_bars(part, title="")
            fig.update_layout(height=150, margin={"l": 130, "r": 10, "t": 10, "b": 30})
            blocks.append(graph({"type": "channel-extra-graph", "name": name}, fig, config={"displayModeBar": False}))
        else:
            blocks.append(frame_table(part[[c for c in EFFECT_COLUMNS if c in part]]))
    if missing:
        blocks.append(html.P(f"Not in this run: {', '.join(missing)} (add them with `gateprobe analyze`).",
                             className="muted"))
    return html.Div(blocks)
