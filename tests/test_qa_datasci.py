"""QA of a data scientist's daily tools in components (SPEC §3, §5): pandas frames of every
kind of column read and changed by children, and matplotlib's inline figures of silent, live,
remote and restarted components, compared with a stock ipykernel where it shows the same.

Each test drives a real Link Python kernel the way JupyterLab does; kernels are shared per module.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from engine_support import value
from remote_support import registered_worker


LINK_CACHE_IN_HOME = True  # conftest's `link` keeps its cache store in the module's home


@pytest.fixture(scope="module")
def worker(home: Path):
    """A real worker on loopback, registered as `qd`."""
    with registered_worker(home / "worker", "qd") as w:
        yield w


# A frame with a column of each kind pandas has beyond numbers, a MultiIndex frame, a Series
# and an Index, as a loading component makes them.
FRAMES = """\
import pandas as pd
df = pd.DataFrame({
    'a': [3, 1, 2],
    'cat': pd.Categorical(['x', 'y', 'x']),
    'when': pd.date_range('2024-01-01', periods=3, tz='Europe/Paris'),
    'obj': pd.Series([{'k': 1}, [1, 2], 'text'], dtype=object),
    's': pd.array(['p', None, 'r'], dtype='string'),
    'n': pd.array([1, None, 3], dtype='Int64'),
})
df.attrs['source'] = 'sensor'
mi = pd.DataFrame({'v': [1.0, 2.0, 3.0, 4.0]}, index=pd.MultiIndex.from_product([['a', 'b'], [1, 2]], names=['k', 'n']))
ser = pd.Series(pd.date_range('2024-01-01', periods=3, tz='UTC'), name='ser')
idx = pd.DatetimeIndex(['2024-01-01', '2024-02-01'], tz='UTC', name='idx')
"""
FRAME_NAMES = ["df", "mi", "ser", "idx"]
# What a child looks at: a row, the values, a repr, the time zone, a group-by.
READS = (
    "seen = (df.iloc[0]['a'], df.values.shape, repr(df)[:1], str(df.when.dt.tz), df.n.to_numpy().shape, "
    "df.groupby('cat', observed=True).a.sum().tolist(), mi.loc['a'].v.sum(), ser.iloc[0].year, idx.get_loc(idx[1]), "
    "df.sort_values('a').a.tolist(), df._repr_html_()[:1])"
)


@pytest.mark.parametrize("remote", [None, "qd"], ids=["local", "remote"])
def test_a_child_only_reading_frames_does_not_make_them_its_outputs(nb, worker, remote):
    """pandas keeps what it derives (a datetime column's unit, a nullable dtype's numpy type)
    in the arrays: a child that only read a tz-aware frame took it for its output, and a
    later parent's merge then undid a sibling's change to it (SPEC §3)."""
    nb.add("frames", FRAMES)
    nb.add("reads", READS, "frames", remote=remote)
    nb.add("adds", "df['c'] = df.a * 2\nser.iloc[0] = pd.Timestamp('2020-01-01', tz='UTC')", "frames")
    nb.add("both", "merged = (df.columns.tolist(), ser.iloc[0].year)", "adds", "reads")
    nb.use()
    assert nb.run("frames").status == "ok"
    assert nb.kernel.execute(" = ".join(FRAME_NAMES) + " = 'in the notebook'").status == "ok"
    child = nb.run("reads")
    assert child.status == "ok", child.traceback_text
    assert value(nb.kernel, f"[n for n in {FRAME_NAMES!r} if not isinstance(globals()[n], str)]") == []
    assert nb.run("both").status == "ok"
    assert value(nb.kernel, "merged") == (["a", "cat", "when", "obj", "s", "n", "c"], 2020)


# In-place changes a child makes to its parent's frames, each in a child of its own.
IN_PLACE = [
    "df['c'] = df.a * 2",
    "df.loc[0, 'a'] = 99",
    "df.sort_values('a', inplace=True)",
    "df.drop(columns=['obj'], inplace=True)",
    "df.rename(columns={'a': 'A'}, inplace=True)",
    "df.attrs['source'] = 'other'",
    "mi.loc[('a', 1), 'v'] = 9.0",
    "ser.iloc[0] = pd.Timestamp('2020-01-01', tz='UTC')",
]
SNAPSHOT = "(repr(df), dict(df.attrs), repr(mi), repr(ser), repr(idx))"


@pytest.mark.parametrize("remote", [None, "qd"], ids=["local", "remote"])
def test_children_changing_frames_in_place_output_them_and_leave_the_parents_value(nb, worker, remote):
    """Each in-place change makes the changed frame the child's output, and only it; the
    parent's value a sibling gets, before and after a restart, is the one it made."""
    nb.add("frames", FRAMES, remote=remote)
    for i, change in enumerate(IN_PLACE):
        nb.add(f"change{i}", change, "frames", remote=remote)
    nb.add("sibling", f"snapshot = {SNAPSHOT}", "frames").use()
    assert nb.run("sibling").status == "ok"
    made = value(nb.kernel, "snapshot")
    for i, change in enumerate(IN_PLACE):
        assert nb.kernel.execute(" = ".join(FRAME_NAMES) + " = 'in the notebook'").status == "ok"
        result = nb.run(f"change{i}")
        assert result.status == "ok", result.traceback_text
        outputs = value(nb.kernel, f"[n for n in {FRAME_NAMES!r} if not isinstance(globals()[n], str)]")
        assert outputs == [change.split("[")[0].split(".")[0]], change
    nb.runs()
    nb.restart()
    assert nb.run("sibling").status == "ok"
    assert value(nb.kernel, "snapshot") == made
    assert nb.runs() == ["sibling"]


@pytest.mark.parametrize("remote", [None, "qd"], ids=["local", "remote"])
def test_a_silent_parents_frame_shown_as_its_value_is_kept_as_stock_shows_it(nb, stock, worker, remote):
    """A frame as the last line of a parent run silently for its child: the child's cell
    does not show it, `%link outputs` shows its HTML table as stock does, also after a
    restart (from the cache)."""
    code = FRAMES + "df"
    expected = [d["data"] for d in stock.execute(code).of_type("execute_result")]
    assert [sorted(d) for d in expected] == [["text/html", "text/plain"]]
    nb.add("frames", code, remote=remote).add("counts", "print(len(df))", "frames").use()
    child = nb.run("counts")
    assert child.stdout == "3\n" and [d for d in child.displays if "text/html" in d["data"]] == []
    assert [d["data"] for d in nb.kernel.execute("%link outputs frames").displays] == expected
    nb.restart()
    assert [d["data"] for d in nb.kernel.execute("%link outputs frames").displays] == expected


def images(result) -> list[dict]:
    """The data of each display in a cell's messages that holds a PNG."""
    assert result.status == "ok", result.traceback_text
    return [d["data"] for d in result.displays if "image/png" in d["data"]]


# A figure drawn with pyplot and never shown: the inline backend shows it once the cell ends.
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nprint('plotted')"


@pytest.mark.parametrize("magic", ["", "%matplotlib inline\n"], ids=["default-backend", "matplotlib-inline"])
def test_a_remote_components_pyplot_figure_reaches_the_cell_as_a_local_ones(nb, stock, worker, magic):
    """A task process chose matplotlib's backend itself (Agg, without a display), so a figure
    never shown explicitly was dropped, and `%matplotlib inline` failed there with
    NotImplementedError; ipykernel draws inline by default (SPEC §5: as a local component)."""
    expected = [sorted(d) for d in images(stock.execute(magic + PLOT))]
    assert expected == [["image/png", "text/plain"]]
    nb.add("remote_plot", magic + PLOT, remote="qd", counted=False).use()
    live = nb.run("remote_plot")
    assert live.stdout == "plotted\n"
    assert [sorted(d) for d in images(live)] == expected
    kept = images(nb.kernel.execute("%link outputs remote_plot"))
    assert [sorted(d) for d in kept] == expected
    nb.restart()
    assert images(nb.kernel.execute("%link outputs remote_plot")) == kept


SUBPLOTS = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([3, 1, 2])\nax.set_title('drawn')"


def test_a_figure_a_parent_drew_is_a_png_as_a_remote_childs_value(nb, stock, worker):
    """In a kernel, the parent's pyplot chose the inline backend, which shows a figure as
    the value of a later cell as a PNG; a task process had loaded pyplot with the inputs,
    yet never chosen a backend, so the child showed only the figure's text."""
    child = "ax.set_ylabel('y')\nfig"
    assert stock.execute(SUBPLOTS).status == "ok"
    expected = [sorted(d["data"]) for d in stock.execute(child).of_type("execute_result")]
    assert expected == [["image/png", "text/plain"]]
    nb.add("draws", SUBPLOTS, counted=False).add("labels", child, "draws", remote="qd", counted=False).use()
    live = nb.run("labels")
    assert live.status == "ok", live.traceback_text
    assert [sorted(d["data"]) for d in live.of_type("execute_result")] == expected


def test_a_silent_parents_figure_is_kept_as_its_output_across_a_restart_not_shown_by_the_child(nb, stock):
    """The inline backend shows what a cell drew once it ends: a parent run silently for its
    child keeps its figure (and its value) as stock shows them, and the child's cell shows
    only its own output; a restarted kernel shows them again, and the child gets the
    figure, from the cache."""
    expected = [sorted(d["data"]) for d in stock.execute(SUBPLOTS).displays]
    assert expected == [["text/plain"], ["image/png", "text/plain"]]  # the title's Text, the figure
    nb.add("draws", SUBPLOTS).add("reports", "print(ax.get_title())", "draws").use()
    child = nb.run("reports")
    assert child.stdout == "drawn\n" and images(child) == []
    assert "cannot be serialised" not in child.stderr  # figures pickle: kept in the cache
    kept = nb.kernel.execute("%link outputs draws")
    assert [sorted(d["data"]) for d in kept.displays] == expected
    nb.restart()
    again = nb.kernel.execute("%link outputs draws")
    assert [d["data"] for d in again.displays] == [d["data"] for d in kept.displays]
    assert nb.run("reports").stdout == "drawn\n"  # the figure from the cache
    assert nb.runs() == ["draws", "reports", "reports"]


class AnonymousPeak:
    """The peak growth of a process's anonymous memory (its own copies, not file or shared
    pages it maps) while the block runs, sampled from outside every millisecond or two."""

    def __init__(self, pid: int) -> None:
        self.status = Path(f"/proc/{pid}/status")
        self.growth = 0
        self._done = threading.Event()

    def _mb(self) -> int:
        return int(re.search(r"RssAnon:\s+(\d+) kB", self.status.read_text()).group(1)) >> 10

    def _sample(self, start: int) -> None:
        while not self._done.is_set():
            self.growth = max(self.growth, self._mb() - start)
            time.sleep(0.001)

    def __enter__(self) -> AnonymousPeak:
        self._thread = threading.Thread(target=self._sample, args=(self._mb(),))
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()


def test_a_child_reads_a_large_frame_without_copying_it(nb):
    """A 160 MB frame of floats reaches a child that only reads it without a copy of its
    own (its blob's pages are mapped), as a plain cell reads the notebook's frame; a child
    writing one cell of it in place still makes it its output, the parent's left alone."""
    nb.add("big", "import numpy as np, pandas as pd\ndf = pd.DataFrame(np.ones((2_000_000, 10)))", counted=False)
    nb.add("column_total", "total = float(df[3].sum()) + float(df.iloc[-1].sum())", "big", counted=False)
    nb.add("pokes", "df.iloc[1_500_000, 3] = -1.0", "big", counted=False)
    nb.add("looks", "seen = float(df.iloc[1_500_000, 3])", "big", counted=False).use()
    assert nb.run("big").status == "ok"
    pid = value(nb.kernel, "__import__('os').getpid()")
    with AnonymousPeak(pid) as plain:
        assert nb.kernel.execute("total = float(df[3].sum()) + float(df.iloc[-1].sum())").status == "ok"
    with AnonymousPeak(pid) as child:
        result = nb.run("column_total")
    assert result.status == "ok", result.traceback_text
    assert value(nb.kernel, "total") == 2_000_010.0
    assert child.growth < plain.growth + 40, (child.growth, plain.growth)
    assert nb.kernel.execute("df = 'in the notebook'").status == "ok"
    assert nb.run("pokes").status == "ok"
    assert value(nb.kernel, "float(df.iloc[1_500_000, 3])") == -1.0
    assert nb.run("looks").status == "ok" and value(nb.kernel, "seen") == 1.0


@pytest.mark.parametrize("remote", [None, "qd"], ids=["local", "remote"])
def test_a_child_only_reading_a_figure_does_not_make_it_its_output(nb, worker, remote):
    """matplotlib's callback registries draw a new id each time they are pickled, so a
    figure never pickled the same twice: a child that only read its parent's figure made
    `fig` and `ax` its outputs. One that changes the figure still does, and its parent's
    figure stays as drawn."""
    nb.add("draws", SUBPLOTS, remote=remote)
    nb.add("reads", "seen = (len(ax.lines), ax.get_title(), fig.get_size_inches().tolist())", "draws", remote=remote)
    nb.add("retitles", "ax.set_title('retitled')", "draws", remote=remote)
    nb.add("sibling", "title = ax.get_title()", "draws").use()
    assert nb.run("draws").status == "ok"
    for child, outputs in (("reads", []), ("retitles", ["fig", "ax"])):
        assert nb.kernel.execute("fig = ax = 'in the notebook'").status == "ok"
        result = nb.run(child)
        assert result.status == "ok", result.traceback_text
        assert value(nb.kernel, "[n for n in ['fig', 'ax'] if not isinstance(globals()[n], str)]") == outputs
    assert value(nb.kernel, "seen") == (1, "drawn", [6.4, 4.8])
    assert nb.run("sibling").status == "ok" and value(nb.kernel, "title") == "drawn"


@pytest.mark.parametrize(
    "setting",
    ["%config InlineBackend.figure_formats = ['svg']", "%config InlineBackend.figure_format = 'retina'"],
    ids=["svg", "retina"],
)
def test_a_remote_components_figure_is_in_the_format_the_kernel_shows_figures(nb, stock, worker, setting):
    """`%config InlineBackend.figure_format = 'retina'`, the first cell of many notebooks,
    changes how the kernel shows figures; a task process drew plain PNGs regardless."""

    def figures(result) -> list[tuple[list[str], dict]]:
        assert result.status == "ok", result.traceback_text
        shown = [d for d in result.displays if set(d["data"]) & {"image/png", "image/svg+xml"}]
        return [(sorted(d["data"]), d["metadata"]) for d in shown]

    reset = "%config InlineBackend.figure_formats = ['png']"
    try:
        assert stock.execute(setting).status == nb.kernel.execute(setting).status == "ok"
        expected = figures(stock.execute(PLOT))
        assert expected != [(["image/png", "text/plain"], {})]
        nb.add("local_plot", PLOT, counted=False).add("remote_plot", PLOT, remote="qd", counted=False).use()
        assert figures(nb.run("local_plot")) == expected
        assert figures(nb.run("remote_plot")) == expected
    finally:
        stock.execute(reset)
        nb.kernel.execute(reset)


def test_a_remote_component_shows_every_expression_when_the_kernel_is_set_to(nb, stock, worker):
    """`%config InteractiveShell.ast_node_interactivity = 'all'` shows every `df.head()` of
    a cell; a remote component showed only its last value."""
    setting = "%config InteractiveShell.ast_node_interactivity = 'all'"
    code = FRAMES + "df.head(1)\nser.head(1)\nidx.size"
    try:
        assert stock.execute(setting).status == nb.kernel.execute(setting).status == "ok"
        expected = [d["data"] for d in stock.execute(code).of_type("execute_result")]
        assert len(expected) == 3
        nb.add("several", code, remote="qd", counted=False).use()
        live = nb.run("several")
        assert live.status == "ok", live.traceback_text
        assert [d["data"] for d in live.of_type("execute_result")] == expected
    finally:
        reset = "%config InteractiveShell.ast_node_interactivity = 'last_expr'"
        stock.execute(reset)
        nb.kernel.execute(reset)


def test_a_remote_component_runs_with_the_kernels_pandas_options_and_rc_params(nb, worker):
    """The first cells of a notebook set pandas' display options and matplotlib's style for
    the whole kernel, which its local components run in; a task's process had its own."""
    setting = (
        "import pandas as pd, matplotlib.pyplot as plt\npd.set_option('display.max_rows', 4)\n"
        "pd.set_option('display.float_format', lambda v: f'{v:.1f}!')\nplt.rcParams['figure.figsize'] = (2, 1)"
    )
    code = (
        "import pandas as pd, matplotlib.pyplot as plt\n"
        "seen = (repr(pd.DataFrame({'a': [0.25] * 10})), tuple(plt.rcParams['figure.figsize']))"
    )
    try:
        assert nb.kernel.execute(setting).status == "ok"
        nb.add("local_look", code, counted=False).add("remote_look", code, remote="qd", counted=False).use()
        assert nb.run("local_look").status == "ok"
        local = value(nb.kernel, "seen")
        assert "0.2!" in local[0] and len(local[0].splitlines()) < 10 and local[1] == (2.0, 1.0)
        remote = nb.run("remote_look")
        assert remote.status == "ok", remote.traceback_text
        assert value(nb.kernel, "seen") == local
    finally:
        nb.kernel.execute("pd.reset_option('display.max_rows')\npd.reset_option('display.float_format')\n"
                          "plt.rcParams['figure.figsize'] = plt.rcParamsDefault['figure.figsize']")


def test_a_gui_event_loop_in_a_remote_component_is_one_line(nb, stock, worker):
    """A task has no display for `%gui qt` to run an event loop on: said in one line where
    `%gui` logs why it cannot (the cell still succeeds, as in stock), not a
    NotImplementedError of IPython's base shell."""
    assert stock.execute("%gui qt").stderr.startswith("ERROR:root:")
    nb.add("gui", "%gui qt", remote="qd", counted=False).use()
    result = nb.run("gui")
    assert result.status == "ok" and result.errors == []
    assert result.stderr == "ERROR:root:a remote component cannot run the 'qt' GUI event loop; use %matplotlib inline\n"
