"""Shared pieces of the explorer's pages: URL parameters, validation, widgets and the two
per-page stores through which a page tells the app its state (the URL) and where to go.

Every page module defines ``NAME`` (the id prefix), ``PATH``, ``TITLE``, ``layout(store, params,
context)`` and ``register(app, context)``. A page keeps its URL in sync by writing
``{"path": PATH, "params": {...}}`` into ``view_store(NAME)``, and navigates by writing an href
into ``nav_store(NAME)``; :mod:`dashboards.app` turns both into ``dcc.Location`` updates.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import plotly.graph_objects as go
from dash import dcc, html

from probe import viz

log = logging.getLogger("dashboards")

MAX_SEARCH = 2000  # characters of URL query accepted
GRAPH_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


@dataclass
class Context:
    """What every page's callbacks need: the run store and app settings."""

    store: object
    root: Path
    allow_import_paths: bool = False
    device: str = "cpu"
    max_shapes: int = 40
    max_path_points: int = 400


def view_store(page: str) -> dcc.Store:
    return dcc.Store(id={"type": "app-view", "page": page})


def nav_store(page: str) -> dcc.Store:
    return dcc.Store(id={"type": "app-nav", "page": page})


def view_state(path: str, **params) -> dict:
    return {"path": path, "params": {k: str(v) for k, v in params.items() if v is not None}}


def href(path: str, **params) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return path + ("?" + query if query else "")


def parse_params(search: str | None) -> dict[str, str]:
    """The first value of each query parameter (an over-long query is ignored)."""
    if not search or len(search) > MAX_SEARCH:
        return {}
    return {k: v[0] for k, v in parse_qs(search.lstrip("?"), keep_blank_values=False).items()}


def to_int(text, lo: int, hi: int) -> int | None:
    """``text`` as an int in ``[lo, hi)``, else None."""
    try:
        value = int(str(text))
    except (TypeError, ValueError):
        return None
    return value if lo <= value < hi else None


class Problems(list):
    """Messages about URL parameters that were unknown and replaced by a default."""

    def bad(self, what: str, value, fallback=None) -> None:
        if value not in (None, ""):
            text = f"Unknown {what} {str(value)[:80]!r}"
            self.append(text + (f"; showing {fallback}." if fallback is not None else "."))

    def choice(self, params: dict, key: str, allowed, default: str) -> str:
        """``params[key]`` when it is one of ``allowed``, else ``default`` (noting the bad value)."""
        value = params.get(key, default)
        if value not in allowed:
            self.bad(key, value, default)
            return default
        return value


def pick_run(store, params: dict, problems: Problems, key: str = "run", kind: str | None = None):
    """The run named by ``params[key]`` if it is served (and has ``kind`` layers), else the first
    suitable one (with a message); None when no run fits."""
    names = store.names(kind)
    wanted = params.get(key)
    if wanted in names:
        return store.get(wanted)
    fallback = names[0] if names else None
    if wanted in store.names():
        problems.append(f"Run {wanted!r} has no {kind} layers" + (f"; showing {fallback}." if fallback else "."))
    else:
        problems.bad("run", wanted, fallback)
    return store.get(fallback) if fallback else None


def pick_layer(view, params: dict, problems: Problems, key: str = "layer", kind: str | None = None) -> str:
    names = view.layer_names if kind is None else (view.gated_layers if kind == "gated" else view.partial_layers)
    wanted = params.get(key)
    if wanted in names:
        return wanted
    problems.bad(f"layer of run {view.name}", wanted, names[0])
    return names[0]


def pick_int(params: dict, key: str, hi: int, problems: Problems, what: str, default: int = 0) -> int:
    value = to_int(params.get(key), 0, hi) if params.get(key) is not None else None
    if value is None:
        if params.get(key) is not None:
            problems.bad(what, params.get(key), default)
        return default
    return value


def problems_box(problems: list) -> html.Div:
    return html.Div([html.Div(p, className="problem") for p in problems], className="problems") if problems \
        else html.Div(className="problems")


def no_runs(store, what: str = "runs") -> html.Div:
    """What a page shows when the folder holds no run it can use."""
    return html.Div([html.H2("Nothing to show"),
                     html.P(f"No {what} under {store.root}. Record one with `gateprobe record` and reload."),
                     dcc.Link("Back to the overview", href="/")], className="card")


def run_options(store, kind: str | None = None) -> list[dict]:
    out = []
    for name in store.names(kind):
        view = store.get(name)
        out.append({"label": f"{name} · {view.model_name} · {view.kind}", "value": name})
    return out


def layer_options(view, kind: str | None = None) -> list[dict]:
    names = view.layer_names if kind is None else (view.gated_layers if kind == "gated" else view.partial_layers)
    out = []
    for name in names:
        row = view.layer_row(name)
        out.append({"label": f"{name} · {row.kind} · {row.channels}×{row.height}×{row.width}", "value": name})
    return out


def sample_options(view) -> list[dict]:
    indices = view.sample_indices()
    return [{"label": f"sample {k} (image #{i})", "value": k} for k, i in enumerate(indices)]


def control(label: str, component, width: str | None = None) -> html.Div:
    return html.Div([html.Label(label, className="control-label"), component], className="control",
                    style={"width": width} if width else None)


def graph(id_, figure: go.Figure | None = None, **kwargs) -> dcc.Graph:
    config = dict(GRAPH_CONFIG, **kwargs.pop("config", {}))
    return dcc.Graph(id=id_, figure=figure if figure is not None else viz.message_figure("loading…", 120),
                     config=config, **kwargs)


def card(title: str | None, *children, class_name: str = "card") -> html.Div:
    return html.Div(([html.H3(title)] if title else []) + list(children), className=class_name)


def header(title: str, subtitle: str | None = None, view=None) -> html.Div:
    """A page title; with ``view``, a line saying which model the run recorded (and whether its
    weights were random)."""
    parts = [html.H2(title)]
    if view is not None:
        data = view.manifest.get("data", {})
        text = (f"{view.model_name} from {view.model_source} · {view.manifest.get('n_images', '?')} images of "
                f"{data.get('kind', '?')} {data.get('size', '')} · {view.n_samples} stored samples")
        parts.append(html.Div([text] + ([html.Span("random weights", className="badge",
                                                   title="recorded with --random-init: the maps show an untrained "
                                                         "network")] if view.random_init else []),
                              className="run-line"))
    if subtitle:
        parts.append(html.P(subtitle, className="subtitle"))
    return html.Div(parts, className="page-header")


def role_legend() -> html.Div:
    return html.Div([html.Span([html.Span(className="swatch", style={"background": color}), name],
                               className="legend-item") for name, color in viz.ROLE_COLORS.items()],
                    className="legend")


def label_legend(classes) -> html.Div:
    return html.Div([html.Span([html.Span(className="swatch", style={"background": color}), name],
                               className="legend-item") for name, color in viz.label_legend(classes)],
                    className="legend")


def kv_table(rows: list[tuple[str, object]]) -> html.Table:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    return html.Table([html.Tbody([html.Tr([html.Th(k), html.Td(fmt(v))]) for k, v in rows])], className="kv")


def frame_table(frame, max_rows: int = 30, digits: int = 4) -> html.Table:
    """An HTML table of a DataFrame (text cells only; values are never interpreted as markup)."""
    frame = frame.head(max_rows)
    head = html.Thead(html.Tr([html.Th(str(c)) for c in frame.columns]))
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append(html.Td(f"{v:.{digits}g}"))
            else:
                cells.append(html.Td(str(v)[:120]))
        body.append(html.Tr(cells))
    return html.Table([head, html.Tbody(body)], className="data")


def safe(*kinds):
    """Decorate a callback whose outputs are of ``kinds`` (``figure``, ``text`` or ``keep``) so that
    an unexpected error becomes a message in each output instead of a stack trace in the browser
    (the error is logged on the server)."""
    import functools

    from dash import no_update
    from dash.exceptions import PreventUpdate

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except PreventUpdate:
                raise
            except Exception as err:  # noqa: BLE001 - the explorer must never show a trace
                log.exception("callback %s failed", fn.__name__)
                message = f"Could not draw this view ({type(err).__name__}: {str(err)[:200]})."
                outs = [viz.message_figure(message) if kind == "figure" else
                        (message if kind == "text" else no_update) for kind in kinds]
                return outs[0] if len(kinds) == 1 else tuple(outs)
        return wrapper
    return deco


def register_run_switch(app, store, name: str, path: str, prefix: str) -> None:
    """Navigate to ``path?run=NEW`` when the page's ``{prefix}-run`` dropdown picks another served run
    (the page keeps the current run name in ``{prefix}-runname``)."""
    from dash import Input, Output, State
    from dash.exceptions import PreventUpdate

    @app.callback(Output({"type": "app-nav", "page": name}, "data"), Input(f"{prefix}-run", "value"),
                  State(f"{prefix}-runname", "data"), prevent_initial_call=True)
    def navigate(new_run, run):
        if new_run and new_run != run and store.get(new_run) is not None:
            return href(path, run=new_run)
        raise PreventUpdate
