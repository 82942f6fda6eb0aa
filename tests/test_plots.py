"""labsupport.plots: live figures that survive a browser reload, the one plot style, log
axes labelled in full, and the HTML table every notebook prints its tables with."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.io.json import to_json_plotly

from labsupport import plots

ROOT = Path(__file__).resolve().parents[1]
SERVERS = [f"s{i}" for i in range(4)]


def _saved(fig: plots.LiveFigure) -> tuple[str, str]:
    """What a reloaded browser rebuilds the view from, as JSON."""
    return to_json_plotly(fig._widget_data), to_json_plotly(fig._widget_layout)


def _current(fig: plots.LiveFigure) -> tuple[str, str]:
    return to_json_plotly(fig._data), to_json_plotly(fig._layout_obj._props)


def _live() -> plots.LiveFigure:
    fig = plots.figure("latency per server", ("server", None), ("latency", "s"))
    fig.add_bar(name="p50", x=[], y=[])
    return plots.figure_widget(fig)


def test_figure_widget_is_a_live_styled_copy():
    fig = plots.figure("t", ("x", "s"), ("y", None))
    fig.add_scatter(x=[1, 2], y=[3, 4])
    live = plots.figure_widget(fig)
    assert isinstance(live, plots.LiveFigure) and isinstance(live, go.FigureWidget)
    assert list(live.data[0].y) == [3, 4] and live.layout.title.text == "t"
    assert live.layout.template.layout.legend.yref == "container"  # the course template
    assert _saved(live) == _current(live)


@pytest.mark.parametrize("update", [
    "assign", "batch_update", "update_traces", "update_layout", "add_trace", "delete_trace",
    "restyle", "relayout"])
def test_saved_state_follows_every_update(update):
    fig = _live()
    if update == "assign":
        fig.data[0].x, fig.data[0].y = SERVERS, [0.1, 0.2, 0.3, 0.4]
    elif update == "batch_update":
        with fig.batch_update():
            fig.data[0].update(x=SERVERS, y=np.array([0.1, 0.2, 0.3, 0.4]))
            fig.layout.title.text = "noon"
    elif update == "update_traces":
        fig.update_traces(x=SERVERS, y=[1, 2, 3, 4], marker_color="#D55E00")
    elif update == "update_layout":
        fig.update_layout(title_text="noon", height=500)
    elif update == "add_trace":
        fig.add_bar(name="p99", x=SERVERS, y=[1, 2, 3, 40])
    elif update == "delete_trace":
        fig.add_bar(name="p99", x=SERVERS, y=[1, 2, 3, 40])
        fig.data = fig.data[1:]
    elif update == "restyle":
        fig.plotly_restyle({"x": [SERVERS], "y": [[5, 6, 7, 8]]}, trace_indexes=[0])
    else:
        fig.plotly_relayout({"yaxis.range": [0, 1]})
    assert _saved(fig) == _current(fig)


def test_a_reload_sees_the_latest_categories_not_numbers():
    """The browser's state after a reload (get_state) holds the categorical x values."""
    fig = _live()
    with fig.batch_update():
        fig.data[0].update(x=["s0", "s1", "s2<br>(slow)"], y=[0.03, 0.03, 0.3])
    state = fig.get_state(["_widget_data", "_widget_layout"])
    assert list(state["_widget_data"][0]["x"]) == ["s0", "s1", "s2<br>(slow)"]
    fig.update_layout(title_text="after")
    assert fig.get_state(["_widget_layout"])["_widget_layout"]["title"]["text"] == "after"


def test_saved_state_is_a_copy():
    fig = _live()
    fig.data[0].x = SERVERS
    saved = fig._widget_data
    fig.data[0].name = "p99"
    assert saved is not fig._widget_data and saved[0]["name"] == "p50"


def test_a_plain_figure_widget_forgets_updates():
    """What LiveFigure fixes (plotly 7.1): a plain FigureWidget's saved state is the one
    it was created with. If this starts failing, plotly syncs by itself."""
    fig = go.FigureWidget(go.Figure(go.Bar(x=[], y=[])))
    fig.data[0].x = SERVERS
    assert fig._widget_data[0].get("x") in (None, [], ())


def test_resize_patch_applies_to_the_installed_plotly():
    esm = plots.live_figure_esm()
    assert plots._EXPORTS.search(esm), "plotly's widget exports changed: revisit the patch"
    assert esm.rstrip().endswith("})();") and "labsupportObserver" in esm
    assert _live()._esm == esm


def test_every_live_figure_goes_through_figure_widget():
    sources = {p: p.read_text() for p in (ROOT / "labsupport").rglob("*.py")
               if p.name != "plots.py"}
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        sources[nb] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    direct = [str(p.relative_to(ROOT)) for p, text in sources.items() if "FigureWidget(" in text]
    assert not direct, f"make live figures with plots.figure_widget: {direct}"


def test_every_log_axis_goes_through_log_axis():
    pattern = re.compile(r"""type\s*=\s*["']log["']|["']type["']\s*:\s*["']log["']|log_[xy]\s*=""")
    found = []
    for p in (ROOT / "labsupport").rglob("*.py"):
        if p.name != "plots.py" and pattern.search(p.read_text()):
            found.append(str(p.relative_to(ROOT)))
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        if pattern.search(nb.read_text()):
            found.append(str(nb.relative_to(ROOT)))
    assert not found, f"set log axes with plots.log_axis: {found}"


# --- the style ------------------------------------------------------------------------


def test_log_axis_labels_every_tick_in_full():
    fig = plots.figure("t", ("x", None), ("latency", "s"))
    plots.log_axis(fig, "y")
    axis = fig.layout.yaxis
    assert axis.type == "log" and "0.005" in axis.ticktext and "0.2" in axis.ticktext
    assert "2,000" in axis.ticktext and "5" in axis.ticktext
    for value, text in zip(axis.tickvals, axis.ticktext, strict=True):
        assert float(text.replace(",", "")) == pytest.approx(value)  # the full value
    labelled = set(axis.tickvals)
    assert not labelled & set(axis.minor.tickvals)  # minor ticks carry no label
    assert 0.3 in axis.minor.tickvals and 0.2 not in axis.minor.tickvals


def test_log_axis_decades_and_given_values():
    fig = plots.figure("t", ("size", "characters"), ("y", None))
    plots.log_axis(fig, "y", steps=(1,))
    assert list(fig.layout.yaxis.ticktext[:5]) == ["0.0001", "0.001", "0.01", "0.1", "1"]
    plots.log_axis(fig, "x", tickvals=(200, 400, 1600))
    assert list(fig.layout.xaxis.ticktext) == ["200", "400", "1,600"]
    with pytest.raises(ValueError):
        plots.log_axis(fig, "z")


def test_log_axis_on_a_subplot():
    from labsupport.explore import load_balancing as explore

    fig = explore.explore_figure()
    for axis in (fig.layout.yaxis, fig.layout.yaxis2):
        assert axis.type == "log" and axis.ticktext[axis.tickvals.index(0.01)] == "0.01"


def test_template_keeps_legend_title_and_mode_bar_apart():
    layout = plots.TEMPLATE.layout
    assert layout.paper_bgcolor == plots.BACKGROUND == layout.plot_bgcolor == "#ffffff"
    assert list(layout.colorway) == list(plots.PALETTE)
    # Title: left, in the top margin; mode bar: short, at the right.
    assert layout.title.xanchor == "left" and layout.title.yref == "container"
    assert "lasso2d" in layout.modebar.remove and "toImage" not in layout.modebar.remove
    # Legend: a horizontal strip of its own at the bottom, below the axes' labels.
    assert layout.legend.orientation == "h" and layout.legend.yref == "container"
    assert layout.legend.y == 0 and layout.legend.yanchor == "bottom"
    assert layout.xaxis.automargin and layout.yaxis.automargin


def test_style_makes_room_for_subplot_titles():
    from plotly.subplots import make_subplots

    fig = plots.style(make_subplots(rows=1, cols=2, subplot_titles=("a", "b")))
    assert fig.layout.margin.t >= plots.SUBPLOT_TITLE_MARGIN
    titled = plots.style(make_subplots(rows=1, cols=2, subplot_titles=("a", "b"))
                         .update_layout(title_text="both"))
    assert titled.layout.margin.t >= plots.TITLE_MARGIN + plots.SUBPLOT_TITLE_MARGIN


# --- tables ---------------------------------------------------------------------------


def test_table_html_aligns_text_left_and_numbers_right():
    table = plots.Table([{"policy": "round-robin", "p99 (s)": 37.816, "requests": 40_000},
                         {"policy": "<least>", "p99 (s)": 0.1234, "requests": None}],
                        formats={"p99 (s)": ".3f"}, caption="noon")
    page = table._repr_html_()
    assert "text-align:left" in page and "text-align:right;background:#ffffff;color:#1a1a1a;" \
        "white-space:nowrap" in page
    assert "37.816" in page and "40,000" in page and "—" in page  # None shows a dash
    assert "&lt;least&gt;" in page and "<least>" not in page
    assert "background:#ffffff" in page and f"color:{plots.TEXT}" in page  # both themes
    assert table.align == {"policy": "left", "p99 (s)": "right", "requests": "right"}


def test_table_text_is_aligned_for_papermill_and_tests():
    table = plots.Table([("s0", 10.04), ("s3 (slow)", 1.2)], ["server", "share (%)"],
                        formats={"share (%)": ".1f"})
    lines = repr(table).splitlines()
    assert lines[0] == "server     share (%)"
    assert lines[2].endswith("10.0") and lines[3].endswith(" 1.2")
    assert len({len(line) for line in lines}) == 1  # one width: columns line up
    assert str(table) == repr(table)


def test_table_formats_and_alignment_overrides():
    table = plots.Table([{"check": "agree", "value": True}, {"check": "ratio", "value": 2.5}],
                        formats={"value": lambda v: "yes" if v is True else f"{v:.1f}x"},
                        align={"value": "right"}, note="a note")
    assert table.column("value") == [True, 2.5]
    assert "yes" in repr(table) and "2.5x" in repr(table) and repr(table).endswith("a note")
    assert "text-align:right" in table._repr_html_()
    defaults = plots.Table([{"n": np.int64(1234), "x": np.float64(0.000123), "big": 12345.6,
                             "nan": float("nan"), "flag": False}])
    assert repr(defaults).splitlines()[-1].split() == ["1,234", "0.000123", "12,346", "—", "no"]


def test_setup_check_is_a_table_in_the_notebook_and_text_in_the_shell():
    from labsupport import start_here

    items = [start_here.Item("Python", True, "Python 3.11.7", 0.01),
             start_here.Item("an embedding", False, "RuntimeError: no model", 6.2)]
    table = start_here.setup_table(items)
    assert isinstance(table, plots.Table) and table.column("status") == ["OK", "FAIL"]
    assert "RuntimeError: no model" in table._repr_html_()
    assert start_here.verdict(items).startswith("1 item(s) FAIL")
    assert start_here.report(items).splitlines()[1].endswith("no model [6.2 s]")  # the CLI
    versions = start_here.versions_table()
    assert versions.column("package") == list(start_here.KEY_PACKAGES)


def test_every_send_method_live_figures_wrap_exists_in_plotly():
    """LiveFigure re-saves its state after each of plotly's change messages: a renamed or
    new one in a plotly upgrade would silently bring back blank figures after a reload."""
    from plotly.basewidget import BaseFigureWidget

    sent = {n for n in vars(BaseFigureWidget) if n.startswith("_send_") and n.endswith("_msg")}
    assert sent == set(plots.SEND_METHODS)
