"""Live: draw a hole and sketch strokes on a stored sample and run the run's model on it.

Plotly's drawing tools do the drawing in the browser (rectangle, ellipse and closed path add hole;
open path and line are sketch strokes); the shapes arrive in the canvas's ``relayoutData`` and are
rasterised here, server side, at the image's resolution. The number of shapes, the points per path
and the path text are bounded. The model is rebuilt from the manifest (:func:`dashboards.live.live_model`)
and run once per change with hooks on the chosen layer only.
URL: ``/live?run=&sample=&layer=&base=``.
"""
from __future__ import annotations

import re
import time

import numpy as np
from dash import Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from probe import viz

from ..live import live_forward, live_model
from .common import (Problems, card, control, graph, header, layer_options, nav_store, no_runs, pick_int, pick_layer,
                     pick_run, problems_box, register_run_switch, run_options, safe, sample_options, view_state,
                     view_store)

NAME = "live"
PATH = "/live"
TITLE = "Live"
BASES = {"recorded": "the sample's recorded hole and sketch", "empty": "no hole"}
HOLE_TYPES = ("rect", "circle")
STROKE_TYPES = ("line",)
MAX_PATH_CHARS = 20000
_EDIT = re.compile(r"^shapes\[(\d{1,3})\]\.(x0|x1|y0|y1|path)$")
_PATH_TOKEN = re.compile(r"([MLZ])\s*([^MLZ]*)", re.IGNORECASE)
CANVAS_CONFIG = {"modeBarButtonsToAdd": ["drawrect", "drawcircle", "drawclosedpath", "drawopenpath", "drawline",
                                         "eraseshape"],
                 "modeBarButtonsToRemove": ["zoom2d", "pan2d", "select2d", "lasso2d", "zoomIn2d", "zoomOut2d",
                                            "autoScale2d", "resetScale2d"],
                 "displayModeBar": True, "scrollZoom": False, "edits": {"shapePosition": True}}


# ---------------------------------------------------------------- shapes -> masks (pure)

def _number(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) and abs(v) < 1e6 else None


def clean_shape(shape) -> dict | None:
    """Keep only what rasterising needs from one plotly shape (type, corners or path), or None."""
    if not isinstance(shape, dict):
        return None
    kind = shape.get("type")
    if kind in HOLE_TYPES + STROKE_TYPES:
        corners = {k: _number(shape.get(k)) for k in ("x0", "y0", "x1", "y1")}
        return {"type": kind, **corners} if None not in corners.values() else None
    if kind == "path":
        path = shape.get("path")
        if isinstance(path, str) and 0 < len(path) <= MAX_PATH_CHARS:
            return {"type": "path", "path": path}
    return None


def apply_relayout(shapes: list, relayout, max_shapes: int) -> tuple[list, bool]:
    """The shape list after one ``relayoutData`` event: a full ``shapes`` list (drawn or erased),
    or ``shapes[i].x0``-style edits of existing shapes; ``(shapes, changed)``."""
    shapes = [dict(s) for s in (shapes or []) if isinstance(s, dict)]
    if not isinstance(relayout, dict):
        return shapes, False
    if isinstance(relayout.get("shapes"), list):
        kept = [clean_shape(s) for s in relayout["shapes"][: max_shapes * 4]]
        return [s for s in kept if s is not None][:max_shapes], True
    changed = False
    for key, value in list(relayout.items())[:64]:
        m = _EDIT.match(str(key))
        if not m or int(m.group(1)) >= len(shapes):
            continue
        updated = dict(shapes[int(m.group(1))], **{m.group(2): value})
        updated = clean_shape(updated)
        if updated is not None:
            shapes[int(m.group(1))] = updated
            changed = True
    return shapes, changed


def parse_path(path: str, max_points: int) -> tuple[np.ndarray, bool]:
    """Points ``[N, 2]`` (x, y) of an SVG path made of M/L/Z commands and whether it is closed;
    at most ``max_points`` points (evenly thinned)."""
    points, closed = [], path.rstrip().upper().endswith("Z")
    for command, args in _PATH_TOKEN.findall(path[:MAX_PATH_CHARS]):
        if command.upper() == "Z":
            continue
        numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", args)]
        for i in range(0, len(numbers) - 1, 2):
            points.append((numbers[i], numbers[i + 1]))
    array = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    array = array[np.isfinite(array).all(1)]
    if len(array) > max_points:
        array = array[np.linspace(0, len(array) - 1, max_points).round().astype(int)]
    return array, closed


def rasterise(shapes: list, size: tuple[int, int], max_shapes: int = 40, max_points: int = 400,
              ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Hole ``[H, W]`` and sketch ``[H, W]`` bool masks of drawn ``shapes`` in image pixel
    coordinates (pixel centres at integers): rectangles, ellipses and closed paths fill hole;
    open paths and lines draw 1-pixel sketch strokes. Returns also counts of what was drawn."""
    from skimage.draw import ellipse, line, polygon

    H, W = size
    hole = np.zeros((H, W), dtype=bool)
    sketch = np.zeros((H, W), dtype=bool)
    counts = {"hole shapes": 0, "sketch strokes": 0, "ignored": 0}

    def clip_x(v):
        return float(np.clip(v, -1, W))

    def clip_y(v):
        return float(np.clip(v, -1, H))

    def stroke(points):
        for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
            rr, cc = line(int(round(clip_y(y0))), int(round(clip_x(x0))), int(round(clip_y(y1))),
                          int(round(clip_x(x1))))
            ok = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
            sketch[rr[ok], cc[ok]] = True

    for shape in list(shapes or [])[:max_shapes]:
        shape = clean_shape(shape)
        if shape is None:
            counts["ignored"] += 1
            continue
        kind = shape["type"]
        if kind == "rect":
            xa, xb = sorted((clip_x(shape["x0"]), clip_x(shape["x1"])))
            ya, yb = sorted((clip_y(shape["y0"]), clip_y(shape["y1"])))
            hole[max(0, int(np.ceil(ya))):max(0, int(np.floor(yb)) + 1),
                 max(0, int(np.ceil(xa))):max(0, int(np.floor(xb)) + 1)] = True
            counts["hole shapes"] += 1
        elif kind == "circle":
            xa, xb = sorted((clip_x(shape["x0"]), clip_x(shape["x1"])))
            ya, yb = sorted((clip_y(shape["y0"]), clip_y(shape["y1"])))
            rr, cc = ellipse((ya + yb) / 2, (xa + xb) / 2, max((yb - ya) / 2, 0.5), max((xb - xa) / 2, 0.5),
                             shape=(H, W))
            hole[rr, cc] = True
            counts["hole shapes"] += 1
        elif kind == "line":
            stroke([(shape["x0"], shape["y0"]), (shape["x1"], shape["y1"])])
            counts["sketch strokes"] += 1
        else:
            points, closed = parse_path(shape["path"], max_points)
            if len(points) < 2:
                counts["ignored"] += 1
            elif closed and len(points) >= 3:
                rr, cc = polygon(np.clip(points[:, 1], -1, H), np.clip(points[:, 0], -1, W), shape=(H, W))
                hole[rr, cc] = True
                counts["hole shapes"] += 1
            else:
                stroke([tuple(p) for p in points])
                counts["sketch strokes"] += 1
    if len(shapes or []) > max_shapes:
        counts["ignored"] += len(shapes) - max_shapes
    return hole, sketch, counts


# ---------------------------------------------------------------- page

def layout(store, params, context):
    problems = Problems()
    view = pick_run(store, params, problems)
    if view is None:
        return no_runs(store)
    sample = pick_int(params, "sample", view.n_samples, problems, "sample")
    layer = pick_layer(view, params, problems)
    base = params.get("base", "recorded")
    if base not in BASES:
        problems.bad("starting point", base, "recorded")
        base = "recorded"
    controls = html.Div([
        control("run", dcc.Dropdown(id="live-run", options=run_options(store), value=view.name, clearable=False),
                "300px"),
        control("sample", dcc.Dropdown(id="live-sample", options=sample_options(view), value=sample,
                                       clearable=False), "190px"),
        control("show the maps of layer", dcc.Dropdown(id="live-layer", options=layer_options(view), value=layer,
                                                       clearable=False), "300px"),
        control("start from", dcc.RadioItems(id="live-base", value=base, inline=True,
                                             options=[{"label": " " + v, "value": k} for k, v in BASES.items()])),
        control(" ", html.Button("clear drawing", id="live-clear", n_clicks=0, className="btn")),
    ], className="controls")
    sketch_note = ("open paths and lines are sketch strokes (kept inside the hole, where the model reads them)"
                   if view.manifest.get("settings", {}).get("sketch") or view.manifest.get("model", {}).get(
                       "accepts_sketch") else "this model takes no sketch: strokes are ignored")
    return html.Div([
        view_store(NAME), nav_store(NAME), dcc.Store(id="live-runname", data=view.name),
        dcc.Store(id="live-shapes", data=[]),
        header(f"Live · {view.name}", "Draw on the image, and the model of this run fills the hole.", view=view),
        problems_box(problems), controls,
        html.Div(id="live-model", className="notes"),
        html.Div([
            card("Draw", graph("live-canvas", config=CANVAS_CONFIG),
                 html.Ul([html.Li("rectangle, ellipse or closed freehand path (tool bar, top right): add hole"),
                          html.Li(sketch_note),
                          html.Li("click a shape to select it, then 'erase active shape'; 'clear drawing' "
                                  f"removes all (at most {context.max_shapes} shapes)")], className="explain")),
            html.Div([card(None, html.Div(id="live-status", className="figure-title"), graph("live-result")),
                      card(None, html.Div(id="live-gates-title", className="figure-title"), graph("live-gates"))]),
        ], className="split live"),
    ])


def register(app, context):
    store = context.store

    @app.callback(Output({"type": "app-view", "page": NAME}, "data"),
                  Input("live-sample", "value"), Input("live-layer", "value"), Input("live-base", "value"),
                  State("live-runname", "data"))
    def state(sample, layer, base, run):
        return view_state(PATH, run=run, sample=sample, layer=layer, base=base)

    register_run_switch(app, store, NAME, PATH, "live")

    @app.callback(Output("live-shapes", "data"), Output("live-canvas", "figure"),
                  Input("live-canvas", "relayoutData"), Input("live-sample", "value"), Input("live-clear", "n_clicks"),
                  Input("live-base", "value"), State("live-shapes", "data"), State("live-runname", "data"))
    def shapes(relayout, sample, _clear, base, current, run):
        if ctx.triggered_id == "live-canvas":
            updated, changed = apply_relayout(current, relayout, context.max_shapes)
            if not changed:
                raise PreventUpdate
            return updated, no_update
        view = store.get(run)
        if view is None or not isinstance(sample, int) or not 0 <= sample < view.n_samples:
            return [], viz.message_figure("Unknown run or sample.")
        s = view.inputs(sample)
        canvas = viz.drawing_canvas(s["image"], s["hole"] if base == "recorded" else None,
                                        s["sketch"] if base == "recorded" else None)
        canvas.update_layout(uirevision=f"{sample}-{base}-{_clear}")
        return [], canvas

    @app.callback(Output("live-result", "figure"), Output("live-gates", "figure"), Output("live-status", "children"),
                  Output("live-gates-title", "children"), Output("live-model", "children"),
                  Input("live-shapes", "data"), Input("live-layer", "value"),
                  State("live-sample", "value"), State("live-base", "value"), State("live-runname", "data"),
                  prevent_initial_call=True)
    @safe("figure", "figure", "text", "text", "keep")
    def run_model(shapes, layer, sample, base, run):
        view = store.get(run)
        if view is None or not view.has_layer(layer) or not isinstance(sample, int) \
                or not 0 <= sample < view.n_samples:
            msg = viz.message_figure("Unknown run, layer or sample.")
            return msg, msg, "", "", ""
        live = live_model(view, context.root, context.allow_import_paths, context.device)
        notes = [html.Div(n, className="note") for n in live.notes]
        if live.model is None:
            msg = viz.message_figure("The model of this run cannot be run here.")
            return msg, msg, "", "", [html.Div(live.error, className="problem")] + notes
        s = view.inputs(sample)
        H, W = s["image"].shape[-2:]
        drawn_hole, drawn_sketch, counts = rasterise(shapes, (H, W), context.max_shapes, context.max_path_points)
        hole = drawn_hole | ((s["hole"][0] > 0.5) if base == "recorded" else False)
        sketch = drawn_sketch | ((s["sketch"][0] > 0.5) if base == "recorded" else False)
        sketch &= hole
        takes_sketch = bool(getattr(live.model, "accepts_sketch", False))
        start = time.perf_counter()
        output, maps = live_forward(live, s["image"], hole[None].astype(np.float32),
                                    sketch[None].astype(np.float32) if takes_sketch else None, layer)
        ms = (time.perf_counter() - start) * 1000
        composite = np.where(hole[None], output, s["image"])
        model_input = viz.masked_input(s["image"], hole[None], sketch[None] if takes_sketch else None)
        result = viz.image_row([model_input, output, composite],
                                   ["model input", "model output", "output in the hole, image elsewhere"])
        status = (f"{counts['hole shapes']} hole shape(s), {counts['sketch strokes']} sketch stroke(s) drawn"
                  + (f", {counts['ignored']} ignored" if counts["ignored"] else "")
                  + f" · hole {hole.mean():.0%} of the image · model ran in {ms:.0f} ms")
        if maps is None:
            gates, gates_title = viz.message_figure(f"No maps captured for {layer}."), ""
        elif maps[0] == "gate":
            ch = view.channels_of(layer)
            gates = viz.channel_grid(maps[1], roles=list(ch.role) if "role" in ch else None, tile_px=38)
            gates_title = f"{layer} · gates of this input (outlines: roles measured on the recorded run)"
        else:
            gates = viz.channel_grid(maps[1], tile_labels=["valid mask", "window coverage"], columns=2,
                                         value_name="value", unit="map", tile_px=140)
            gates_title = f"{layer} · the valid mask all channels share, for this input"
        return result, gates, status, gates_title, notes
