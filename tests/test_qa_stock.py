"""QA: what a stock ipykernel shows, Link Python shows too, in plain cells and in components
run live or silently (SPEC §1).

A Link Python kernel and a stock `python3` ipykernel run the same code side by side. The
outputs a component keeps (`%link outputs`, the cache store) are compared with what the stock
kernel shows for the same cell, whether the component ran live or silently as a parent, and
IPython's history names in the notebook with those of stock cells.
"""

from __future__ import annotations

import re

import pytest

from engine_support import Notebook
from remote_support import remote_fixtures
from support import Kernel, component_meta

# `kernel` here is a Link Python kernel with worker `qs1` registered.
tmp, key_file, worker, kernel, nb = remote_fixtures("qa-stock", "qs1")

# A figure as matplotlib's inline backend hands it to display(): PNG bytes from `_repr_png_`.
FIGURE = """\
import struct, zlib
def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
class Figure:
    def _repr_png_(self):
        header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
        return b"\\x89PNG\\r\\n\\x1a\\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\\x00\\xff\\x00\\x00")) + _chunk(b"IEND", b"")
    def __repr__(self):
        return "<Figure>"
from IPython.display import display
display(Figure())
"""


def kept(kernel: Kernel, name: str) -> list[dict]:
    """The data of each display `%link outputs NAME` shows."""
    result = kernel.execute(f"%link outputs {name}")
    assert result.status == "ok", result.traceback_text
    return [d["data"] for d in result.displays]


def plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def shown(result) -> list[dict]:
    assert result.status == "ok", result.traceback_text
    return [d["data"] for d in result.displays]


MIMEBUNDLE = """\
class Rich:
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": "Rich", "text/html": "<i>Rich</i>"}, {"text/html": {"isolated": True}}
total = Rich()
total
"""


@pytest.mark.parametrize(
    "code",
    ["total = 40\ntotal + 2", "total = 40\ntotal + 2;", "41 + 1\ntotal = 0", MIMEBUNDLE],
    ids=["value", "semicolon", "not-last", "mimebundle"],
)
def test_a_silent_run_keeps_the_value_of_the_last_expression_as_the_cell_shows_it(link, stock, code):
    def with_metadata(result) -> list[tuple[dict, dict]]:
        assert result.status == "ok", result.traceback_text
        return [(d["data"], d["metadata"]) for d in result.displays]

    expected = with_metadata(stock.execute(code))
    live = link.execute(code, metadata=component_meta("valued"), cell_id="qs-valued")
    assert with_metadata(live) == expected
    assert with_metadata(link.execute("%link outputs valued")) == expected
    before = link.execute("print(len(Out), repr(_))").stdout
    assert link.execute("%link run valued --force").stdout == "ran: valued\n"
    assert with_metadata(link.execute("%link outputs valued")) == expected
    # Run silently, the value is the component's output only: not the notebook's Out or _.
    assert link.execute("print(len(Out), repr(_))").stdout == before


def test_a_parent_run_as_an_ancestor_keeps_its_value_and_leaves_out_alone(link, stock, tmp_path):
    expected = shown(stock.execute("6 * 7"))
    nb = Notebook(link, tmp_path / "ancestor.ipynb")
    nb.add("answer", "6 * 7", counted=False)
    nb.add("asker", "print('asked')", "answer", counted=False).use()
    try:
        count = link.execute("pass").reply["content"]["execution_count"]
        child = nb.run("asker")
        assert child.stdout == "asked\n" and child.of_type("execute_result") == []
        assert child.reply["content"]["execution_count"] == count + 1  # one number per request, as in stock
        assert child.reply["content"]["execution_count"] not in eval(link.execute("print(list(Out))").stdout)
        assert kept(link, "answer") == expected
    finally:
        assert link.execute(f"%link notebook {tmp_path / 'none.ipynb'}").status == "ok"


def test_history_names_after_component_cells_are_stock_ones(link, stock):
    cells = [("h1", "1"), ("h2", "2"), ("h3", "3")]
    for name, code in cells:
        assert stock.execute(code).status == "ok"
        assert link.execute(code, metadata=component_meta(name), cell_id=f"qs-{name}").status == "ok"
    check = "print(_, __, ___)"
    assert link.execute(check).stdout == stock.execute(check).stdout == "3 2 1\n"


@pytest.mark.parametrize("live", [True, False], ids=["live", "silent-parent"])
def test_a_components_figure_is_kept_across_a_restart(link_kernelspec, tmp_path, live):
    kernel = Kernel(cwd=str(tmp_path))
    try:
        nb = Notebook(kernel, tmp_path / "figures.ipynb")
        nb.add("plot", FIGURE, counted=False)
        nb.add("after", "print('after')", "plot", counted=False).use()
        if live:
            assert nb.run("plot").status == "ok"
        assert nb.run("after").stdout == "after\n"
        before = kept(kernel, "plot")
        assert [sorted(d) for d in before] == [["image/png", "text/plain"]]
        assert before[0]["image/png"].startswith("iVBORw0KGgo")  # base64, as the cell shows it
        kernel.restart()
        assert kernel.execute(f"%link notebook {nb.path}").status == "ok"
        assert kept(kernel, "plot") == before
        assert "fresh" in kernel.execute("%link status").stdout.splitlines()[1]
    finally:
        kernel.shutdown()


def test_display_data_no_message_can_carry_is_the_users_error_as_in_stock(link, stock):
    code = "from IPython.display import publish_display_data\npublish_display_data({'text/plain': object()})"
    expected = stock.execute(code).reply["content"]
    live = link.execute(code, metadata=component_meta("unsendable"), cell_id="qs-unsendable")
    silent = link.execute("%link run unsendable --force")
    for result in (live, silent):
        content = result.reply["content"]
        assert content["ename"] == expected["ename"] == "ValueError"
        assert content["evalue"].startswith("Can't clean for JSON")
        assert "linkkernel internal error" not in result.traceback_text
        assert "publish_display_data({'text/plain': object()})" in result.traceback_text


def test_a_remote_components_figure_reaches_the_cell_and_its_kept_outputs(kernel, stock):
    expected = shown(stock.execute(FIGURE))[0]["image/png"]
    live = kernel.execute(FIGURE, metadata=component_meta("remote_plot", remote="qs1"), cell_id="qs-remote-plot")
    assert live.status == "ok", live.traceback_text
    assert [d["data"].get("image/png") for d in live.displays] == [expected]
    assert [d.get("image/png") for d in kept(kernel, "remote_plot")] == [expected]


def test_link_run_of_a_component_that_awaits_is_one_line_and_runs_nothing(link):
    code = "import asyncio\nawait asyncio.sleep(0)\nawaited = 5\nawaited * 2"
    live = link.execute(code, metadata=component_meta("awaiting"), cell_id="qs-awaiting")
    assert shown(live) == [{"text/plain": "10"}]
    before = link.execute("%link status").stdout
    refused = link.execute("%link run awaiting --force")
    assert refused.status == "error"
    assert refused.traceback_text.splitlines() == [
        "LinkError: %link run: component 'awaiting' uses top-level await, which cannot run inside "
        "another cell's code; execute its cell (or a child's) to run it"
    ]
    assert link.execute("%link status").stdout == before
    again = link.execute(code, metadata=component_meta("awaiting"), cell_id="qs-awaiting")
    assert shown(again) == [{"text/plain": "10"}]


@pytest.mark.parametrize(
    "code",
    [
        "%run {script}\nprint('after')",
        "class Broken:\n    def _repr_html_(self):\n        raise ValueError('no html')\n    def __repr__(self):\n"
        "        return 'Broken()'\ndisplay(Broken())\nprint('after')",
    ],
    ids=["run-script", "formatter"],
)
def test_an_error_a_cell_shows_and_goes_on_after_is_kept_in_its_outputs(link, stock, code, tmp_path):
    script = tmp_path / "failing.py"
    script.write_text("raise ValueError('script failed')")
    code = code.format(script=script)
    expected = stock.execute(code)
    assert expected.status == "ok" and expected.stdout == "after\n"
    (error,) = expected.errors
    live = link.execute(code, metadata=component_meta("goes_on"), cell_id="qs-goes-on")
    assert live.status == "ok" and [(e["ename"], e["evalue"]) for e in live.errors] == [(error["ename"], error["evalue"])]
    for run in ("live", "silent"):
        if run == "silent":
            assert link.execute("%link run goes_on --force").stdout == "ran: goes_on\n"
        again = link.execute("%link outputs goes_on")  # a kept error is shown as its traceback's text
        assert plain(again.stderr).rstrip().endswith(f"{error['ename']}: {error['evalue']}"), run
        names = [m["content"]["name"] for m in again.messages if m["msg_type"] == "stream"]
        assert [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n] == ["stderr", "stdout"]
        assert again.stdout == "after\n"


def test_a_failed_components_outputs_hold_its_error_once(link):
    failed = link.execute("print('before')\n1/0", metadata=component_meta("fails_once"), cell_id="qs-fails-once")
    assert failed.status == "error"
    again = link.execute("%link outputs fails_once")
    assert again.stdout == "before\n"
    assert plain(again.stderr).count("ZeroDivisionError: division by zero") == 1


def reply_with_expressions(kernel: Kernel, code: str, expressions: dict[str, str], metadata: dict | None = None) -> dict:
    """The execute_reply content of a request carrying user_expressions (as some frontends send)."""
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": expressions, "allow_stdin": False, "stop_on_error": True}
    msg = kernel.client.session.msg("execute_request", content, metadata=metadata or {})
    kernel.client.shell_channel.send(msg)
    while True:
        reply = kernel.client.get_shell_msg(timeout=60)
        if reply["parent_header"]["msg_id"] == msg["header"]["msg_id"]:
            return reply["content"]


def test_user_expressions_of_a_component_cell_see_the_notebook_as_after_a_cell(link, stock):
    for kernel in (link, stock):
        assert kernel.execute("in_notebook = 1").status == "ok"
    expressions = {"mine": "made_here * 10", "notebook": "in_notebook + made_here"}
    expected = reply_with_expressions(stock, "made_here = 2", expressions)["user_expressions"]
    assert {k: v["status"] for k, v in expected.items()} == {"mine": "ok", "notebook": "ok"}
    reply = reply_with_expressions(link, "made_here = 2", expressions, dict(component_meta("expressed"), cellId="qs-expressed"))
    assert reply["status"] == "ok"
    assert reply["user_expressions"] == expected


def test_a_silent_run_keeps_subprocess_output_in_its_place(link, stock):
    code = (
        "import os, subprocess\nprint('python 1')\nos.system('echo shell 1')\n"
        "display('shown')\nsubprocess.run(['echo', 'shell 2'])\nprint('python 2')\nos.system('echo shell 3')"
    )
    # Stock ipykernel reads descriptor output on a thread of its own: in a cell, its place
    # among the printed lines depends on timing, and its end may come after the reply. A
    # component's live run passes all of it on before it ends. Kept, it is where it was written.
    pieces = ["python 1", "shell 1", "shell 2", "python 2", "shell 3"]

    def has_all(result) -> bool:
        return all(piece in result.stdout for piece in pieces)

    for result in (stock.late_output(stock.execute(code), has_all), link.execute(code, metadata=component_meta("ordered"), cell_id="qs-ordered")):
        assert result.status == "ok" and has_all(result), result.stdout
    assert link.execute("%link run ordered --force").stdout == "ran: ordered\n"
    again = link.execute("%link outputs ordered")
    kinds = [(m["msg_type"], m["content"].get("text") or m["content"]["data"]["text/plain"]) for m in again.messages if m["msg_type"] in ("stream", "display_data")]
    assert kinds == [
        ("stream", "python 1\nshell 1\n"), ("display_data", "'shown'"), ("stream", "shell 2\npython 2\nshell 3\n"), ("display_data", "0"),
    ]


def test_a_remote_component_goes_on_after_an_error_it_showed_as_a_cell_does(kernel, stock, tmp_path):
    script = tmp_path / "failing.py"
    script.write_text("raise ValueError('script failed')")
    code = f"%run {script}\nprint('after')\nafter = 1"
    expected = stock.execute(code)
    assert expected.status == "ok" and [e["evalue"] for e in expected.errors] == ["script failed"]
    live = kernel.execute(code, metadata=component_meta("remote_goes_on", remote="qs1"), cell_id="qs-remote-goes-on")
    assert live.status == "ok", live.traceback_text
    assert [e["evalue"] for e in live.errors] == ["script failed"] and live.stdout == "after\n"
    assert kernel.execute("print(after)").stdout == "1\n"
    again = kernel.execute("%link outputs remote_goes_on")
    assert plain(again.stderr).rstrip().endswith("ValueError: script failed") and again.stdout == "after\n"


def test_a_failing_remote_component_shows_its_error_once_and_keeps_it(kernel):
    failed = kernel.execute("print('before')\n1/0", metadata=component_meta("remote_fails", remote="qs1"), cell_id="qs-remote-fails")
    assert failed.status == "error" and failed.reply["content"]["ename"] == "ZeroDivisionError"
    assert [e["ename"] for e in failed.errors] == ["ZeroDivisionError"] and failed.stdout == "before\n"
    child = kernel.execute("print('child')", metadata=component_meta("after_remote_fails", "remote_fails"), cell_id="qs-after-fails")
    assert child.status == "error" and "Error in parent component 'remote_fails'" in child.traceback_text
    assert [e["ename"] for e in child.errors] == ["ZeroDivisionError"] and child.stdout == ""
