"""The gateprobe explorer: ``create_app(runs_dir) -> dash.Dash``.

One ``dcc.Location`` holds the view. A router renders the page of the URL's path with the URL's
parameters (validated against the served runs, their layers and samples); a page then keeps the
URL in step with its controls through its ``app-view`` store, so every view has a shareable link,
and navigates (a click on a channel) through its ``app-nav`` store. When the URL changes because
the page itself wrote it, the router leaves the page alone; a changed URL from anywhere else
(a link, back/forward, a pasted address) re-renders the page from it.

Pages live in :mod:`dashboards.pages`, one module each, their component ids prefixed by the page
name. Figures come from :mod:`probe.viz`; runs from :mod:`dashboards.store`, the live model from :mod:`dashboards.live`.
"""
from __future__ import annotations

from pathlib import Path

import dash
from dash import ALL, Input, Output, State, ctx, dcc, html, no_update

from .pages import channel, claims, compare, evolution, labels, layer, live, overview
from .pages.common import Context, href, parse_params
from .store import RunStore

PAGES = (overview, layer, channel, labels, evolution, compare, claims, live)
ROUTES = {page.PATH: page for page in PAGES}
MAX_REQUEST_BYTES = 2 * 1024 * 1024  # callbacks carry small state; bounds drawn inputs too


def create_app(runs_dir: str | Path, allow_import_models: bool = False, title: str = "gateprobe explorer",
               loopback_only: bool = True, device: str = "cpu") -> dash.Dash:
    """Build the explorer over the complete runs directly under ``runs_dir`` (or ``runs_dir``
    itself when it is a run). ``allow_import_models`` lets the live page import
    ``package.module:function`` model sources named in a manifest. ``loopback_only`` (for a
    server bound to a loopback address) answers 403 to requests whose ``Host`` header is not a
    loopback name or address (DNS-rebinding protection). ``device``: where the live page runs its
    model. The store of runs is
    ``app.run_store`` (``runs`` and ``skipped`` with reasons)."""
    store = RunStore(Path(runs_dir)).refresh()
    context = Context(store=store, root=store.root, allow_import_paths=allow_import_models, device=str(device))
    app = dash.Dash(__name__, title=title, update_title=None, suppress_callback_exceptions=True,
                    assets_folder=str(Path(__file__).parent / "assets"), serve_locally=True)
    app.server.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    if loopback_only:
        from flask import request

        from probe.serve import is_loopback_host

        @app.server.before_request
        def _loopback_host_only():
            if not is_loopback_host(request.headers.get("Host")):
                return ("403 Forbidden: this gateprobe explorer serves this machine only; open it as "
                        "http://127.0.0.1:PORT/ or http://localhost:PORT/\n", 403, {"Content-Type": "text/plain"})
            return None
    app.run_store = store
    app.layout = html.Div([
        dcc.Location(id="url", refresh=False),
        dcc.Store(id="app-last"),
        html.Div([html.A("gateprobe", href="/", className="brand"), html.Nav(id="app-nav", className="nav"),
                  html.Span(str(store.root), className="root", title="runs folder")], className="topbar"),
        html.Div(id="app-page", className="page"),
    ])

    @app.callback(Output("app-page", "children"), Output("app-nav", "children"),
                  Input("url", "pathname"), Input("url", "search"), State("app-last", "data"))
    def route(pathname, search, last):
        if pathname is None:
            return no_update, no_update
        if last and pathname + (search or "") == last:
            return no_update, no_update  # the page wrote this URL itself
        page = ROUTES.get(pathname)
        params = parse_params(search)
        store.refresh()
        if page is None:
            body = html.Div([html.H2("Page not found"), html.P(f"There is no page {pathname[:80]!r}."),
                             dcc.Link("Go to the overview", href="/")], className="card")
            return body, _nav(None, params)
        try:
            body = page.layout(store, params, context)
        except Exception as err:  # noqa: BLE001 - a message, never a stack trace
            app.logger.exception("rendering %s failed", pathname)
            body = html.Div([html.H2("This view could not be drawn"),
                             html.P(f"{type(err).__name__}: {str(err)[:300]}"),
                             dcc.Link("Back to the overview", href="/")], className="card")
        return body, _nav(page, params)

    def _nav(page, params):
        run = params.get("run") or params.get("a")
        run = run if store.get(run) is not None else None
        links = []
        for p in PAGES:
            target = href(p.PATH, run=run) if run and p not in (overview, compare, claims) else p.PATH
            links.append(dcc.Link(p.TITLE, href=target, className="nav-link active" if p is page else "nav-link"))
        return links

    @app.callback(Output("url", "pathname"), Output("url", "search"),
                  Input({"type": "app-nav", "page": ALL}, "data"), prevent_initial_call=True)
    def navigate(navs):
        target = _triggered_value()
        if isinstance(target, str) and target.startswith("/") and not target.startswith("//"):
            path, _, query = target.partition("?")
            return path, ("?" + query) if query else ""
        return no_update, no_update

    @app.callback(Output("url", "search", allow_duplicate=True), Output("app-last", "data"),
                  Input({"type": "app-view", "page": ALL}, "data"), State("url", "pathname"),
                  prevent_initial_call=True)
    def sync_url(views, pathname):
        value = _triggered_value()
        if not isinstance(value, dict) or value.get("path") != pathname:
            return no_update, no_update
        search = href("", **value.get("params", {}))
        return search, pathname + search

    for page in PAGES:
        page.register(app, context)
    return app


def _triggered_value():
    """The first non-empty value among the inputs that triggered the running callback."""
    for item in ctx.triggered or []:
        if item.get("value"):
            return item["value"]
    return None


def describe(store: RunStore) -> list[str]:
    """Lines saying which runs are served and which are skipped, and why."""
    lines = [f"runs folder: {store.root}"]
    for name, view in store.runs.items():
        lines.append(f"  serving  {name}  ({view.model_name}, {view.kind}, {view.manifest.get('n_images')} images, "
                     f"{len(view.layer_names)} layers, {view.n_samples} samples)")
    for name, reason in store.skipped.items():
        lines.append(f"  skipped  {name}: {reason}")
    if not store.runs:
        lines.append("  no complete runs yet: record one with `gateprobe record --out RUNS_DIR/NAME ...` "
                     "(the overview rescans on reload)")
    return lines
