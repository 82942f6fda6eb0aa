"""The course's plotly style: one template that reads in JupyterLab's light and dark themes.

Every figure gets an opaque white background (a transparent one turns black-on-black in
the dark theme), the Okabe-Ito colour-blind-safe palette, and axis titles with units.
Importing this module registers the template ``"labsupport"`` and makes it the default.
"""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common
# colour-vision deficiency.
PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow (weak on white: used last)
    "#000000",  # black
)
BACKGROUND = "#ffffff"
TEXT = "#1a1a1a"
GRID = "#e5e5e5"

TEMPLATE = go.layout.Template(
    layout=go.Layout(
        paper_bgcolor=BACKGROUND,
        plot_bgcolor=BACKGROUND,
        font=dict(family="Arial, Helvetica, sans-serif", size=13, color=TEXT),
        colorway=list(PALETTE),
        xaxis=dict(gridcolor=GRID, linecolor="#888888", zerolinecolor="#bbbbbb", ticks="outside"),
        yaxis=dict(gridcolor=GRID, linecolor="#888888", zerolinecolor="#bbbbbb", ticks="outside"),
        legend=dict(bgcolor="rgba(255,255,255,0.9)", bordercolor=GRID, borderwidth=1),
        margin=dict(l=60, r=20, t=50, b=50),
        hoverlabel=dict(bgcolor="#ffffff", font_color=TEXT),
    )
)
pio.templates["labsupport"] = TEMPLATE
pio.templates.default = "labsupport"


def axis_title(quantity: str, unit: str | None = None) -> str:
    """``axis_title("latency", "ms")`` gives ``"latency (ms)"``; units are never optional
    for a measured quantity, so pass ``unit=None`` only for counts and labels."""
    return f"{quantity} ({unit})" if unit else quantity


def figure(title: str, x: tuple[str, str | None], y: tuple[str, str | None],
           height: int = 380) -> go.Figure:
    """An empty course-styled figure with a title and axis titles with units."""
    fig = go.Figure()
    fig.update_layout(template="labsupport", title=title, height=height,
                      xaxis_title=axis_title(*x), yaxis_title=axis_title(*y))
    return fig


def figure_widget(fig: go.Figure) -> go.FigureWidget:
    """A live version of ``fig`` that a widget callback can update in place."""
    return go.FigureWidget(fig)
