"""Claims: the claims table (P1-P5, G1-G5) of a partial run and a gated run, each G row beside its
control (the random-init twin): the trained value with its interval, the control's value, and the
difference with its interval in separate columns. URL: ``/claims?a=&b=&baseline=`` (``a`` the
partial run, ``b`` the gated one, ``baseline`` a served random-init run or ``linked``, the one the
gated run's manifest names).
"""
from __future__ import annotations

from dash import Input, Output, State, ctx, dcc, html
from dash.exceptions import PreventUpdate

from probe.analysis.claims import claims, display_table
from probe.errors import GateprobeError

from .common import Problems, card, control, frame_table, header, href, nav_store, no_runs, pick_run, problems_box

NAME = "claims"
PATH = "/claims"
TITLE = "Claims"
LINKED = "linked"


def baseline_options(store) -> list[dict]:
    """The linked baseline, and every served gated run with random weights."""
    return [{"label": "the one linked by --with-baseline", "value": LINKED}] + [
        {"label": name, "value": name} for name in store.names("gated") if store.get(name).random_init]


def layout(store, params, context):
    problems = Problems()
    if "b" not in params:  # the first gated run that is not itself a control
        trained = [n for n in store.names("gated") if not store.get(n).random_init]
        params = dict(params, b=trained[0]) if trained else params
    partial = pick_run(store, params, problems, key="a", kind="partial")
    gated = pick_run(store, params, problems, key="b", kind="gated")
    if partial is None or gated is None:
        return no_runs(store, "pairs of a partial-convolution run and a gated run")
    options = baseline_options(store)
    baseline = problems.choice(params, "baseline", {o["value"]: o["label"] for o in options}, LINKED)
    try:
        table = gated._memo(("claims", partial.name, baseline), lambda: display_table(claims(
            partial.run, gated.run, baseline=None if baseline == LINKED else store.get(baseline).run)))
        body = frame_table(table, max_rows=len(table), digits=4)
    except GateprobeError as err:  # e.g. a baseline that is not a control of this run: one line
        body = html.P(str(err), className="problem", id="claims-error")
    controls = html.Div([
        control("partial run", dcc.Dropdown(id="claims-a", options=[{"label": n, "value": n} for n in
                                                                     store.names("partial")],
                                            value=partial.name, clearable=False), "260px"),
        control("gated run", dcc.Dropdown(id="claims-b", options=[{"label": n, "value": n} for n in
                                                                   store.names("gated")],
                                          value=gated.name, clearable=False), "260px"),
        control("control", dcc.Dropdown(id="claims-baseline", options=options, value=baseline, clearable=False),
                "300px"),
    ], className="controls")
    return html.Div([
        nav_store(NAME),
        header(f"Claims · {partial.name} vs {gated.name}",
               "A G claim is supported only if its rule holds for the trained run and the interval of the "
               "trained-minus-control difference lies above 0; without a control it says \"no control\"."),
        problems_box(problems), controls, card(None, html.Div(body, id="claims-table")),
    ])


def register(app, context):
    store = context.store

    @app.callback(Output({"type": "app-nav", "page": NAME}, "data"),
                  Input("claims-a", "value"), Input("claims-b", "value"), Input("claims-baseline", "value"),
                  prevent_initial_call=True)
    def navigate(a, b, baseline):
        if ctx.triggered_id is None or store.get(a) is None or store.get(b) is None:
            raise PreventUpdate
        return href(PATH, a=a, b=b, baseline=baseline)
