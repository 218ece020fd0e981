"""Figures of the analysis tables (interventions, ablation, attribution, roles), used by the
report and the dashboard's channel view; data names are escaped with ``esc`` like everywhere in
:mod:`probe.viz`."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from ..rundir.roles import has_role
from .style import ROLE_COLORS, ROLE_ORDER, esc, message_figure


def _base_layout(fig: go.Figure, title: str | None, height: int) -> go.Figure:
    fig.update_layout(title=title, height=height, template="plotly_white", margin=dict(l=150, r=20, t=50, b=40),
                      legend=dict(orientation="h", y=1.02, x=0, yanchor="bottom"))
    return fig


def effect_bars(effects: pd.DataFrame, title: str, top: int = 15, xaxis: str = "effect") -> go.Figure:
    """Horizontal bars of ``delta`` with 95% intervals (``ci_low``/``ci_high``) for the ``top``
    rows of largest |delta|; rows are (layer, channel) effects of an intervention table."""
    if effects is None or effects.empty:
        return message_figure("No intervention results in this run (run `gateprobe analyze`).")
    rows = effects.reindex(effects.delta.abs().sort_values(ascending=False).index).head(top).iloc[::-1]
    names = [esc(f"{r.layer} #{int(r.channel)}") for r in rows.itertuples()]
    fig = go.Figure(go.Bar(
        x=rows.delta, y=names, orientation="h",
        error_x=dict(type="data", symmetric=False, array=rows.ci_high - rows.delta, arrayminus=rows.delta - rows.ci_low),
        marker_color=["#d62728" if q < 0.05 else "#9e9e9e" for q in rows.q_value],
        hovertemplate="%{y}: %{x:.4f}<extra></extra>"))
    fig.add_vline(x=0, line_color="#444")
    fig.update_xaxes(title=xaxis)
    return _base_layout(fig, title, height=max(260, 22 * len(rows) + 90))


def role_counts(channels: pd.DataFrame, layers: pd.DataFrame,
                title: str = "Channels per role and layer (a channel counts once per role it carries)") -> go.Figure:
    """Stacked bars: per gated layer (depth order), how many channels carry each role family."""
    if channels is None or channels.empty:
        return message_figure("No gated layers in this run.")
    order = layers[layers.kind == "gated"].sort_values("depth").layer.tolist()
    fig = go.Figure()
    for family in ROLE_ORDER:
        hit = has_role(channels, family)
        counts = channels[hit].groupby("layer").size().reindex(order, fill_value=0)
        fig.add_trace(go.Bar(x=[esc(l) for l in order], y=counts.to_numpy(), name=family,
                             marker_color=ROLE_COLORS[family]))
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title="channels")
    return _base_layout(fig, title, height=340)


def attribution_bars(attributions: pd.DataFrame,
                     title: str = "Integrated-gradients attribution of each channel's mean gate in the hole") -> go.Figure:
    """Per attributed (layer, channel): the share of |attribution| going to image, hole and sketch."""
    if attributions is None or attributions.empty:
        return message_figure("No attributions in this run (run `gateprobe analyze`).")
    names = attributions.drop_duplicates(["layer", "channel"])
    keys = [esc(f"{r.layer} #{int(r.channel)}") for r in names.itertuples()]
    fig = go.Figure()
    colours = {"image": "#8c564b", "hole": "#d62728", "sketch": "#2ca02c"}
    for group, colour in colours.items():
        part = attributions[attributions.group == group]
        fig.add_trace(go.Bar(y=keys, x=part.share.to_numpy(), name=group, orientation="h", marker_color=colour,
                             customdata=part.attribution.to_numpy(),
                             hovertemplate="%{y} " + group + ": share %{x:.2f}, attribution %{customdata:.4f}<extra></extra>"))
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title="share of |attribution|", range=[0, 1])
    return _base_layout(fig, title, height=max(260, 24 * len(keys) + 90))
