"""The course's figures and tables: one plotly style, live figures that survive a reload,
and small HTML tables. Every notebook draws and tabulates through this module.

- The template ``"labsupport"`` (registered and made the default on import): an opaque
  white background (a transparent one turns black-on-black in JupyterLab's dark theme),
  the Okabe-Ito colour-blind-safe palette, a left-aligned title at the top, the legend
  in its own strip at the bottom (it can never cover an axis title or a tick label), a
  short mode bar that stays clear of the title.
- :func:`figure` makes an empty styled figure; :func:`style` restyles any figure
  (``make_subplots`` too); :func:`log_axis` labels a log axis with full values.
- :func:`figure_widget` makes the live version a widget callback updates in place
  (:class:`LiveFigure`, which keeps its saved state current so a browser reload shows
  the latest drawing, not the first one).
- :class:`Table` shows rows as an HTML table (text columns left, numbers right) and as
  aligned text where there is no HTML (papermill, tests, a terminal).
"""

from __future__ import annotations

import functools
import html
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from copy import deepcopy
from numbers import Integral, Number
from pathlib import Path
from typing import Any

import plotly
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

# Pixels above the plot area: the title (its own line, left-aligned), and the line of
# subplot titles that make_subplots puts just above each panel.
TITLE_MARGIN = 48
SUBPLOT_TITLE_MARGIN = 26
# The mode bar keeps four buttons (download PNG, zoom, pan, reset axes): short enough to
# stay right of a left-aligned title. The ones removed are plotly's selection and hover
# toggles, which none of the course's figures needs.
MODEBAR_REMOVE = ("select2d", "lasso2d", "zoomIn2d", "zoomOut2d", "autoScale2d",
                  "toggleSpikelines", "hoverClosestCartesian", "hoverCompareCartesian")

_AXIS = dict(gridcolor=GRID, linecolor="#888888", zerolinecolor="#bbbbbb", ticks="outside",
             automargin=True)  # tick labels and axis titles push the margins: no overlap
TEMPLATE = go.layout.Template(
    layout=go.Layout(
        paper_bgcolor=BACKGROUND,
        plot_bgcolor=BACKGROUND,
        font=dict(family="Arial, Helvetica, sans-serif", size=13, color=TEXT),
        colorway=list(PALETTE),
        # Left-aligned on the plot area, in the top margin: the mode bar sits at the right.
        title=dict(x=0, xref="paper", xanchor="left", y=1, yref="container", yanchor="top",
                   pad=dict(t=14), font=dict(size=16)),
        xaxis=_AXIS,
        yaxis=_AXIS,
        # A horizontal strip at the bottom of the figure ("container"), which reserves its
        # own height below the axes' tick labels and titles; entries wrap onto more rows.
        legend=dict(orientation="h", x=0, xref="paper", xanchor="left", y=0,
                    yref="container", yanchor="bottom", bgcolor="rgba(255,255,255,0.9)",
                    bordercolor=GRID, borderwidth=0),
        margin=dict(l=60, r=20, t=TITLE_MARGIN, b=10),
        modebar=dict(remove=list(MODEBAR_REMOVE), bgcolor="rgba(255,255,255,0.85)",
                     color="#777777", activecolor="#222222"),
        hoverlabel=dict(bgcolor="#ffffff", font_color=TEXT),
    )
)
pio.templates["labsupport"] = TEMPLATE
pio.templates.default = "labsupport"


def axis_title(quantity: str, unit: str | None = None) -> str:
    """``axis_title("latency", "ms")`` gives ``"latency (ms)"``; units are never optional
    for a measured quantity, so pass ``unit=None`` only for counts and labels."""
    return f"{quantity} ({unit})" if unit else quantity


def style(fig: Any) -> Any:
    """Give ``fig`` (a ``go.Figure``, ``make_subplots`` or a widget) the course's look:
    the template, and room above the plot area for subplot titles. Returns ``fig``."""
    fig.update_layout(template="labsupport")
    subplot_titles = [a for a in fig.layout.annotations
                      if a.yanchor == "bottom" and a.showarrow is False
                      and a.y is not None and a.y >= 0.99]
    if subplot_titles:
        top = (TITLE_MARGIN if fig.layout.title.text else 12) + SUBPLOT_TITLE_MARGIN
        fig.update_layout(margin=dict(t=max(top, fig.layout.margin.t or 0)))
    return fig


def figure(title: str, x: tuple[str, str | None], y: tuple[str, str | None],
           height: int = 380) -> go.Figure:
    """An empty course-styled figure with a title and axis titles with units."""
    fig = go.Figure()
    fig.update_layout(template="labsupport", title=title, height=height,
                      xaxis_title=axis_title(*x), yaxis_title=axis_title(*y))
    return fig


# --- log axes: every labelled tick says its full value ----------------------------------

LOG_DECADES = range(-4, 7)  # 0.0001 … 1,000,000: wider than any quantity the course plots


def tick_label(value: float) -> str:
    """A tick value written out in full: 0.005, 0.2, 1, 50, 2,000 (never "5" for 0.005)."""
    return f"{value:,.10f}".rstrip("0").rstrip(".")


def log_ticks(steps: Sequence[float] = (1, 2, 5)) -> tuple[list[float], list[str]]:
    """Tick values ``steps`` × 10^k over :data:`LOG_DECADES`, and their full-value labels."""
    values = sorted({round(s * 10.0 ** k, 12) for k in LOG_DECADES for s in steps})
    return values, [tick_label(v) for v in values]


def log_axis(fig: Any, axis: str = "y", row: int | None = None, col: int | None = None,
             steps: Sequence[float] = (1, 2, 5), tickvals: Sequence[float] | None = None,
             **kwargs: Any) -> Any:
    """Make an axis logarithmic with every labelled tick written in full.

    Plotly's own log ticks label the steps between decades with a bare digit ("2", "5"),
    which reads as 2 or 5 of the unit. Here the labels are ``steps`` × 10^k
    (``(1, 2, 5)``: 0.1, 0.2, 0.5, 1, 2, 5…; ``(1,)``: decades only, for ranges over
    about three decades), or exactly ``tickvals``; the other integers of each decade get
    short unlabelled ticks. ``row``/``col`` pick a subplot; ``kwargs`` go to the axis.
    """
    if tickvals is not None:
        values = sorted(float(v) for v in tickvals)
        text = [tick_label(v) for v in values]
    else:
        values, text = log_ticks(steps)
    labelled = {round(v, 12) for v in values}
    minor = sorted({round(m * 10.0 ** k, 12) for k in LOG_DECADES for m in range(1, 10)}
                   - labelled)
    update = dict(type="log", tickmode="array", tickvals=values, ticktext=text,
                  minor=dict(tickmode="array", tickvals=minor, ticks="outside", ticklen=3,
                             showgrid=False),
                  **kwargs)
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', not {axis!r}")
    (fig.update_xaxes if axis == "x" else fig.update_yaxes)(update, row=row, col=col)
    return fig


# --- live figures ------------------------------------------------------------------------


# Plotly's widget front end draws a FigureWidget before its element is on the page, so
# plotly.js falls back to its default width (700 px) and never looks again: the live
# figure came out narrower than a static one. This patch (appended to plotly's own
# front-end module) redraws the view at its element's width once the element is laid out,
# and again whenever that width changes, through the view's own ``autosizeFigure``.
_RESIZE_PATCH = """
;(() => {
  const View = %s;
  const render = View.prototype.perform_render, remove = View.prototype.remove;
  View.prototype.perform_render = function (...args) {
    const out = render.apply(this, args);
    if (typeof ResizeObserver === "function") {
      let width = 0;
      this.labsupportObserver = new ResizeObserver(() => {
        const now = Math.round(this.el.getBoundingClientRect().width);
        if (now > 0 && Math.abs(now - width) > 1) { width = now; this.autosizeFigure(); }
      });
      this.labsupportObserver.observe(this.el);
    }
    return out;
  };
  View.prototype.remove = function (...args) {
    if (this.labsupportObserver) this.labsupportObserver.disconnect();
    return remove.apply(this, args);
  };
})();
"""
_EXPORTS = re.compile(r"export\{(\w+) as FigureModel,(\w+) as FigureView,(\w+) as default\};")


@functools.cache
def live_figure_esm() -> str:
    """Plotly's FigureWidget front end with the resize patch; plotly's module unchanged if
    its exports are not the expected ones (tests/test_plots.py checks they are)."""
    bundle = Path(plotly.__file__).parent / "package_data" / "widgetbundle.js"
    source = bundle.read_text(encoding="utf-8")
    exports = _EXPORTS.search(source)
    return source + _RESIZE_PATCH % exports.group(2) if exports else source


class _LiveFigureESM:
    """``LiveFigure._esm``, read when the first widget is made (not at import: 5 MB)."""

    def __get__(self, obj: Any, owner: type) -> Any:
        return self if obj is None else live_figure_esm()


class LiveFigure(go.FigureWidget):
    """A ``FigureWidget`` whose saved state follows every update, drawn at full width.

    Plotly syncs a FigureWidget's drawing to the browser in two ways: the traits
    ``_widget_data`` and ``_widget_layout``, set only when the widget is created or
    displayed, and one-shot ``_py2js_*`` messages for every later change. A browser
    reload rebuilds the view from the two traits, so a plain FigureWidget comes back as it
    was when first displayed (an empty figure, or the first slider position). This class
    sets both traits again after each message it sends, exactly as plotly's own
    ``_repr_mimebundle_`` does; the browser's handler for a change of those traits does
    nothing, so the live view is untouched and only a reload reads them. Its front end is
    plotly's with :data:`_RESIZE_PATCH`.
    """

    _esm = _LiveFigureESM()

    def _sync_saved_state(self) -> None:
        if getattr(self, "_layout_obj", None) is None:  # still inside __init__
            return
        self._widget_layout = deepcopy(self._layout_obj._props)
        self._widget_data = deepcopy(self._data)



# Every message plotly's BaseFigureWidget sends for a change (plotly/basewidget.py): after
# each, LiveFigure re-saves its state. tests/test_plots.py checks these names still exist.
SEND_METHODS = ("_send_relayout_msg", "_send_restyle_msg", "_send_update_msg",
                "_send_addTraces_msg", "_send_deleteTraces_msg", "_send_moveTraces_msg",
                "_send_animate_msg")


def _then_sync(name: str) -> Callable[..., None]:
    def send(self: LiveFigure, *args: Any, **kwargs: Any) -> None:
        getattr(super(LiveFigure, self), name)(*args, **kwargs)
        self._sync_saved_state()
    send.__name__ = name
    return send


for _name in SEND_METHODS:
    setattr(LiveFigure, _name, _then_sync(_name))


def figure_widget(fig: go.Figure) -> LiveFigure:
    """A live, course-styled version of ``fig`` that a widget callback can update in
    place, and that a browser reload shows as last drawn (see :class:`LiveFigure`)."""
    return LiveFigure(style(go.Figure(fig)))


# --- tables ------------------------------------------------------------------------------

_CELL = "padding:3px 10px;vertical-align:top;border-bottom:1px solid #e5e5e5"


def _is_number(value: Any) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def _default_format(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Integral):
        return f"{int(value):,}"
    if _is_number(value):
        value = float(value)
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


class Table:
    """Rows shown as an HTML table in a notebook and as aligned text everywhere else.

    ``rows`` are dicts (column name -> value) or sequences in the order of ``columns``.
    ``formats`` maps a column to a format spec (``".3f"``, ``".1%"``, ``",d"``) or a
    function; other numbers get 3 significant digits, ints a thousands separator, None
    and NaN a dash. A column whose values are all numbers is right-aligned, any other
    left-aligned (``align`` overrides: column -> "left" or "right"). Numbers never wrap.
    The HTML has an opaque white background and dark text, so it reads in JupyterLab's
    light and dark themes alike.
    """

    def __init__(self, rows: Iterable[Mapping[str, Any] | Sequence[Any]],
                 columns: Sequence[str] | None = None, *,
                 formats: Mapping[str, str | Callable[[Any], str]] | None = None,
                 align: Mapping[str, str] | None = None, caption: str | None = None,
                 note: str | None = None) -> None:
        rows = list(rows)
        if columns is None:
            columns = list(dict.fromkeys(k for r in rows if isinstance(r, Mapping) for k in r))
        self.columns = list(columns)
        self.rows = [dict(r) if isinstance(r, Mapping) else dict(zip(self.columns, r, strict=True))
                     for r in rows]
        self.formats = dict(formats or {})
        self.caption, self.note = caption, note
        self.align = {c: (align or {}).get(c) or self._auto_align(c) for c in self.columns}

    def _auto_align(self, column: str) -> str:
        values = [r.get(column) for r in self.rows if r.get(column) is not None]
        return "right" if values and all(_is_number(v) for v in values) else "left"

    def cell(self, row: Mapping[str, Any], column: str) -> str:
        """The text of one cell."""
        value, fmt = row.get(column), self.formats.get(column)
        if value is None or (_is_number(value) and math.isnan(float(value))):
            return "—"
        if callable(fmt):
            return fmt(value)
        if fmt is not None:
            return format(value, fmt)
        return _default_format(value)

    def column(self, name: str) -> list[Any]:
        """The raw values of one column, in row order."""
        return [r.get(name) for r in self.rows]

    def _repr_html_(self) -> str:
        def th(c: str) -> str:
            return (f"<th style='{_CELL};text-align:{self.align[c]};background:#f0f0f0;"
                    f"color:{TEXT};font-weight:bold'>{html.escape(c)}</th>")

        def td(r: Mapping[str, Any], c: str) -> str:
            wrap = ";white-space:nowrap" if self.align[c] == "right" else ""
            return (f"<td style='{_CELL};text-align:{self.align[c]};background:{BACKGROUND};"
                    f"color:{TEXT}{wrap}'>{html.escape(self.cell(r, c))}</td>")

        caption = (f"<div style='font-weight:bold;margin:0 0 4px'>{html.escape(self.caption)}"
                   "</div>" if self.caption else "")
        note = (f"<div style='color:#444;margin-top:4px;font-size:0.95em'>"
                f"{html.escape(self.note)}</div>" if self.note else "")
        head = "".join(th(c) for c in self.columns)
        body = "".join(f"<tr style='background:{BACKGROUND};color:{TEXT}'>"
                       + "".join(td(r, c) for c in self.columns) + "</tr>" for r in self.rows)
        return (f"<div class='labsupport-table' style='display:inline-block;max-width:100%;"
                f"overflow-x:auto;background:{BACKGROUND};color:{TEXT};border:1px solid #d0d0d0;"
                f"border-radius:4px;padding:6px 10px;margin:4px 0'>{caption}"
                f"<table style='border-collapse:collapse;background:{BACKGROUND};color:{TEXT};"
                "font-variant-numeric:tabular-nums;margin:0'>"
                f"<thead><tr style='background:#f0f0f0;color:{TEXT}'>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>{note}</div>")

    def to_text(self) -> str:
        """The table as aligned plain text (what papermill and tests read)."""
        cells = [[self.cell(r, c) for c in self.columns] for r in self.rows]
        widths = [max([len(c), *(len(row[i]) for row in cells)])
                  for i, c in enumerate(self.columns)]

        def line(values: Sequence[str]) -> str:
            return "  ".join(v.rjust(w) if self.align[c] == "right" else v.ljust(w)
                             for v, w, c in zip(values, widths, self.columns, strict=True)
                             ).rstrip()

        out = [self.caption] if self.caption else []
        out += [line(self.columns), line(["-" * w for w in widths])]
        out += [line(row) for row in cells]
        if self.note:
            out.append(self.note)
        return "\n".join(out)

    def __repr__(self) -> str:
        return self.to_text()

    def __str__(self) -> str:
        return self.to_text()
