"""The look shared by every figure: role and label colours, colour scales, the plotly template,
escaping of data names (:func:`esc`) and the plain-dict layout helpers the builders assemble
figures from (traces, axes of side-by-side panels, reference lines, notes, highlight bands)."""
from __future__ import annotations

import html
from typing import Sequence

import numpy as np
import plotly.graph_objects as go

ROLE_COLORS = {"hole": "#d62728", "valid": "#1f77b4", "sketch": "#2ca02c", "semantic": "#9467bd",
               "none": "#9e9e9e"}
ROLE_ORDER = ("hole", "valid", "sketch", "semantic", "none")
GATE_SCALE = "Viridis"
MASK_SCALE = [[0.0, "#2b2b2b"], [1.0, "#f2f2f2"]]  # hole (0) dark, valid (1) light
LABEL_PALETTE = ("#8ecae6", "#57a773", "#b5523b", "#9c8f7a", "#2a6f97", "#f4a261", "#e9c46a", "#c77dff",
                 "#ff70a6", "#70d6ff", "#ffd670", "#c0c0c0")
HIGHLIGHT = "#ffb300"
_GRID = "#e8ecf2"
_TEMPLATE = {"layout": {
    "font": {"family": "Inter, Segoe UI, Helvetica, Arial, sans-serif", "size": 12, "color": "#2a3f5f"},
    "paper_bgcolor": "white", "plot_bgcolor": "white", "hovermode": "closest",
    "xaxis": {"gridcolor": _GRID, "zerolinecolor": _GRID, "linecolor": "#c8d0dc", "automargin": True},
    "yaxis": {"gridcolor": _GRID, "zerolinecolor": _GRID, "linecolor": "#c8d0dc", "automargin": True},
    "colorway": ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"],
    "hoverlabel": {"font": {"size": 12}},
}}


def esc(text) -> str:
    """``text`` made safe for plotly's HTML-like strings (``&``, ``<``, ``>`` escaped)."""
    return html.escape(str(text), quote=False)


def role_category(role: str | None) -> str:
    """The first part of a ``role`` (``hole+semantic:sky`` -> ``hole``; ``semantic:sky`` -> ``semantic``)."""
    if not isinstance(role, str) or not role:
        return "none"
    first = role.split("+", 1)[0]
    return "semantic" if first.startswith("semantic") else (first if first in ROLE_COLORS else "none")


def role_color(role: str | None) -> str:
    return ROLE_COLORS[role_category(role)]


def trace(kind: str, **properties) -> dict:
    """A trace as a plain dict: the figure validates it once (a ``go.Scatter`` object would be
    validated twice, once alone and again inside the figure)."""
    return dict(type=kind, **properties)


def figure(data: list, title: str | None = None, height: int | None = None, margin: dict | None = None,
            **layout) -> go.Figure:
    """A figure from traces and a layout dict, with the module's template."""
    base = {"template": _TEMPLATE, "height": height,
            "margin": margin or {"l": 50, "r": 20, "t": 40 if title else 16, "b": 40}}
    if title:
        base["title"] = {"text": esc(title), "x": 0.01, "xanchor": "left", "font": {"size": 14}}
    base.update(layout)
    return go.Figure(data=data, layout=base)


def legend_top() -> dict:
    return {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"}


def vline(x: float, color: str = "#999", dash: str = "dot", xref: str = "x", yref: str = "y domain") -> dict:
    return {"type": "line", "x0": x, "x1": x, "y0": 0, "y1": 1, "xref": xref, "yref": yref,
            "line": {"color": color, "dash": dash, "width": 1.5}}


def hline(y: float, color: str = "#999", dash: str = "dot", xref: str = "x domain", yref: str = "y") -> dict:
    return {"type": "line", "x0": 0, "x1": 1, "y0": y, "y1": y, "xref": xref, "yref": yref,
            "line": {"color": color, "dash": dash, "width": 1.5}}


def _band(i: int) -> dict:
    """A highlight band behind category ``i`` of the x axis."""
    return {"type": "rect", "x0": i - 0.45, "x1": i + 0.45, "y0": 0, "y1": 1, "xref": "x", "yref": "y domain",
            "fillcolor": "#ffe082", "opacity": 0.3, "line": {"width": 0}, "layer": "below"}


def highlight_band(order: Sequence[str], highlight: str | None) -> list[dict]:
    """The ``layout.shapes`` that highlight layer ``highlight`` in a per-layer figure whose x axis
    lists ``order`` (:func:`layer_summary`, :func:`valid_fraction_curve`); empty if absent."""
    order = list(order)
    return [_band(order.index(highlight))] if highlight in order else []


def note(text: str, x: float, y: float, xref: str = "x", yref: str = "y domain", **kw) -> dict:
    return {"text": text, "x": x, "y": y, "xref": xref, "yref": yref, "showarrow": False,
            "font": {"size": 11, "color": "#555"}, **kw}


def columns(n: int, spacing: float = 0.02, titles: Sequence[str] | None = None, widths: Sequence[float] | None = None,
             ) -> tuple[dict, list]:
    """Layout axes for ``n`` side-by-side panels (``x``/``y``, ``x2``/``y2``...) and title annotations."""
    widths = np.asarray(widths if widths is not None else [1.0] * n, dtype=np.float64)
    widths = widths / widths.sum() * (1 - spacing * (n - 1))
    layout, notes, x0 = {}, [], 0.0
    for i in range(n):
        k = "" if i == 0 else str(i + 1)
        layout[f"xaxis{k}"] = {"domain": [x0, x0 + widths[i]], "anchor": f"y{k}"}
        layout[f"yaxis{k}"] = {"domain": [0, 1], "anchor": f"x{k}"}
        if titles:
            notes.append({"text": titles[i], "x": x0 + widths[i] / 2, "y": 1, "xref": "paper", "yref": "paper",
                          "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 11}})
        x0 += widths[i] + spacing
    return layout, notes


def axis_ref(i: int) -> tuple[str, str]:
    k = "" if i == 0 else str(i + 1)
    return "x" + k, "y" + k


def message_figure(text: str, height: int = 220) -> go.Figure:
    """An empty figure that says ``text`` (escaped): what a view shows when it has nothing to draw."""
    return figure([], height=height, meta={"message": str(text)},
                   xaxis={"visible": False}, yaxis={"visible": False},
                   annotations=[{"text": esc(text), "x": 0.5, "y": 0.5, "xref": "paper", "yref": "paper",
                                 "showarrow": False, "font": {"size": 13, "color": "#666"}}])
