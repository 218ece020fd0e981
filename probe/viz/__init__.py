"""Pure plotly figure builders, shared by the HTML report and the Dash dashboard.

Every builder takes tables (the tidy frames of a recorded run) or arrays (its sample maps) and
returns a :class:`plotly.graph_objects.Figure`; none reads or writes files, holds state or imports
Dash, so tests and reports call them directly.

Names that come from data (run, layer and class names, roles) are escaped with :func:`esc` before
they reach any plotly text (titles, tick labels, hover text, legend names): plotly renders a subset
of HTML there, and a class called ``<b>sky</b>`` must show as typed, not as markup. Every text
argument of a builder (``title``, ``titles``, ``tile_labels``...) is plain text and is escaped here,
so callers pass names as they are. Values read back by click callbacks (``customdata``) keep the
raw names next to their escaped copies.

Conventions: gate maps are in (0, 1) and drawn on a fixed 0-1 colour scale unless a builder is
asked to normalise; masks are drawn valid = light, hole = dark; images are ``[3, H, W]`` floats in
[0, 1], embedded as PNG data URIs (compact and pixel-exact). Figures are assembled from plain
layout dicts with a small built-in template (no ``make_subplots``, no global plotly settings),
which keeps a dashboard callback well under the time a user notices.

Modules: :mod:`.style` (colours, template, escaping, layout helpers), :mod:`.images` (image and
array helpers), :mod:`.runs` (per-layer figures of a run), :mod:`.maps` (map and image figures),
:mod:`.channels` (channel and label figures), :mod:`.analysis` (figures of the analysis tables).
"""
from .analysis import attribution_bars, effect_bars, role_counts
from .channels import channel_scatter, embedding_scatter, gate_histograms, label_bars, label_heatmap
from .images import masked_input, tile_origin, upsample
from .maps import (channel_grid, channel_samples, drawing_canvas, grid_tile, image_panel, image_row, label_legend,
                   mask_detail, mask_evolution)
from .runs import coverage_histogram, diversity_bars, layer_summary, valid_fraction_curve
from .style import ROLE_COLORS, ROLE_ORDER, esc, highlight_band, message_figure, role_category

__all__ = [
    # style
    "ROLE_COLORS", "ROLE_ORDER", "esc", "highlight_band", "message_figure", "role_category",
    # images
    "masked_input", "tile_origin", "upsample",
    # runs
    "coverage_histogram", "diversity_bars", "layer_summary", "valid_fraction_curve",
    # maps
    "channel_grid", "channel_samples", "drawing_canvas", "grid_tile", "image_panel", "image_row", "label_legend",
    "mask_detail", "mask_evolution",
    # channels
    "channel_scatter", "embedding_scatter", "gate_histograms", "label_bars", "label_heatmap",
    # analysis
    "attribution_bars", "effect_bars", "role_counts",
]
