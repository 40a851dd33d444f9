"""QA of running components (SPEC §3, §4) by a user coming from stock ipykernel.

Each test drives a real Link Python kernel the way JupyterLab does and, where stock ipykernel
is the reference, the same cell in a stock `python3` kernel. Kernels are shared per module.
"""

from __future__ import annotations

import re

import pytest

from engine_support import Notebook
from support import Kernel
from test_tracebacks_kernel import assert_clean


LINES = 100_000
MANY_LINES = f"for k in range({LINES}):\n    print('line', k)\nprinted = True"


def test_a_component_printing_a_hundred_thousand_lines_runs_as_fast_as_a_cell(nb, stock):
    # Every write was appended to one growing string: quadratic, minutes for what stock
    # ipykernel prints in a second, live and as a silent parent alike
    expected = stock.execute(MANY_LINES, timeout=30).stdout
    nb.add("chatty", MANY_LINES, counted=False).add("quiet", "print(printed)", "chatty", counted=False).use()
    as_parent = nb.run("quiet", timeout=30)
    assert (as_parent.status, as_parent.stdout) == ("ok", "True\n"), as_parent.traceback_text
    live = nb.run("chatty", timeout=30)
    assert (live.status, live.stdout) == ("ok", expected)
    assert nb.kernel.execute("%link outputs chatty", timeout=30).stdout == expected


FAILING_PARENT = "def f(v):\n    secret = v * 2\n    raise ValueError(secret)\nf(21)"


def _stdout(result) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)


def test_pdb_on_opens_the_debugger_at_a_parents_error_where_the_user_sees_it(nb):
    # The post-mortem started inside the silent run: the frontend asked `ipdb>` while
    # everything the debugger printed went into the parent's captured outputs
    nb.add("broken", FAILING_PARENT, counted=False).add("after_broken", "print('never')", "broken", counted=False).use()
    assert nb.kernel.execute("%pdb on").status == "ok"
    try:
        result = nb.run("after_broken", stdin_reply=["p secret", "q"], timeout=30)
    finally:
        nb.kernel.execute("%pdb off")
    assert result.reply["content"]["ename"] == "ValueError"
    output = _stdout(result)
    assert "> Component broken(3)f()" in output and "\n42\n" in output, output
    assert "never" not in output
    kinds = [m["msg_type"] for m in result.messages if m["msg_type"] in ("error", "stream")]
    assert kinds.index("error") < kinds.index("stream"), "the traceback comes first, as in a cell"
    assert "ipdb" not in nb.kernel.execute("%link outputs broken").stdout


def test_pdb_on_without_stdin_shows_the_parents_error_alone(nb):
    # nbclient answers no input: the post-mortem cannot run, the parent's error still shows
    nb.add("broken", FAILING_PARENT, counted=False).add("after_broken", "print('never')", "broken", counted=False).use()
    assert nb.kernel.execute("%pdb on").status == "ok"
    try:
        result = nb.run("after_broken", timeout=30)
    finally:
        nb.kernel.execute("%pdb off")
    assert [(e["ename"], e["evalue"]) for e in result.errors] == [("ValueError", "42")]
    assert result.stdout == ""


@pytest.mark.parametrize("debug", ["%debug", "%pdb"])
def test_the_post_mortem_of_a_parents_error_lands_in_the_parents_frame(nb, debug):
    nb.add("broken", FAILING_PARENT, counted=False).add("after_broken", "print('never')", "broken", counted=False).use()
    answers = ["p secret", "q"]
    if debug == "%debug":
        assert nb.run("after_broken").status == "error"
        output = _stdout(nb.kernel.execute("%debug", stdin_reply=answers, timeout=30))
    else:  # `%link run` reports the component's error, not its own line in the cell
        assert nb.kernel.execute("%pdb on").status == "ok"
        try:
            result = nb.kernel.execute("%link run broken", stdin_reply=answers, timeout=30)
        finally:
            nb.kernel.execute("%pdb off")
        assert result.reply["content"]["ename"] == "ValueError"
        output = _stdout(result)
    assert "> Component broken(3)f()" in output and "\n42\n" in output, output
    again = _stdout(nb.kernel.execute("%debug", stdin_reply=answers, timeout=30))
    assert "> Component broken(3)f()" in again and "\n42\n" in again, again


EXCEPT_STAR = (
    "try:\n    raise ExceptionGroup('outer', [ValueError(1), ExceptionGroup('inner', [KeyError(2)])])\n"
    "except* KeyError:\n    raise RuntimeError('handled')"
)


@pytest.mark.parametrize("where", ["cell", "component", "parent"])
def test_an_error_raised_in_an_except_star_handler_shows_every_member(nb, stock, where):
    # The group `except*` re-raises has no frame of the user's: it was shown as its one
    # line, members lost; IPython's formatter then asserted on the members' tracebacks
    expected = stock.execute(EXCEPT_STAR)
    assert "RuntimeError: handled" in expected.stderr and "ValueError: 1" in expected.stderr
    if where == "cell":
        result = nb.kernel.execute(EXCEPT_STAR)
    else:
        nb.add("grouped", EXCEPT_STAR, counted=False).add("after_grouped", "print('never')", "grouped", counted=False).use()
        result = nb.run("grouped" if where == "component" else "after_grouped")
    content = result.reply["content"]
    assert (content["ename"], content["evalue"]) == ("ExceptionGroup", " (2 sub-exceptions)")
    text = result.traceback_text
    label = "Cell In[" if where == "cell" else "Component grouped, line 4"
    assert "RuntimeError: handled" in text and "ValueError: 1" in text and label in text, text
    assert_clean(text)


RESTORE_FAILS = (
    "class Guarded:\n    def __setstate__(self, state):\n        raise ValueError('cannot restore Guarded')\n"
    "guarded = Guarded()\nguarded.v = 1"
)


def test_a_value_its_own_class_cannot_unpickle_stays_in_memory_with_the_warning(nb):
    # The notebook's copy of a value defined with its class in the component is rebuilt from
    # its pickle; the user's __setstate__ raising was reported as a bug in linkkernel
    nb.add("guarding", RESTORE_FAILS, counted=False).add("reading", "print(guarded.v)", "guarding", counted=False).use()
    made = nb.run("guarding")
    assert made.status == "ok", made.traceback_text
    assert "'guarded' (__main__.Guarded) cannot be serialised; it is kept in memory only" in made.stderr
    read = nb.run("reading")
    assert (read.status, read.stdout) == ("ok", "1\n"), read.traceback_text


def test_a_cached_value_whose_class_no_longer_loads_runs_its_maker_again_then_stays_in_memory(nb, home):
    # A class of the user's own module that cannot rebuild a cached value: the component that
    # made it runs again, as for a value the store lost; when the value made again cannot be
    # rebuilt either, it is kept in memory only, as one that does not pickle, and the child
    # runs. It was reported as a bug in linkkernel
    (home / "qa_restore.py").write_text(
        "FAIL = False\nclass Kept:\n    def __setstate__(self, state):\n"
        "        if FAIL:\n            raise ValueError('Kept changed')\n        self.__dict__.update(state)\n"
    )
    nb.add("keeping", "import qa_restore\nkept = qa_restore.Kept()\nkept.v = 2\nprint('kept made')", counted=False)
    nb.add("using", "print(kept.v)", "keeping", counted=False).use()
    assert nb.run("using").stdout == "2\n"
    assert nb.kernel.execute("import qa_restore\nqa_restore.FAIL = True").status == "ok"
    try:
        result = nb.run("using")
    finally:
        nb.kernel.execute("qa_restore.FAIL = False")
    problem = "component 'using': its input 'kept' cannot be rebuilt from the cache: ValueError: Kept changed"
    assert result.stderr == (
        f"linkkernel: {problem}; running the components that made it again\n"
        "linkkernel: component 'keeping': 'kept' (qa_restore.Kept) cannot be serialised; it is kept in memory "
        "only, so after a restart the component runs again\n"
        # nor can it be copied for the child, whose run says it shares it
        "linkkernel: component 'using': input 'kept' (qa_restore.Kept) cannot be copied; it is shared with the "
        "component that made it, so what this run does to it is seen there and by its other children\n"
    )
    assert (result.status, result.stdout) == ("ok", "2\n")
    assert "kept made" in nb.kernel.execute("%link outputs keeping").stdout


def test_a_parents_object_a_child_makes_unpicklable_is_still_its_output(nb):
    # Mutated in place so that it no longer pickles (a lock attached): the mutation was
    # taken for no change and lost, for the grandchild and the notebook alike
    nb.add("holder", "class Holder:\n    pass\nheld = Holder()\nheld.items = [1]", counted=False)
    nb.add("locking", "import threading\nheld.lock = threading.Lock()\nheld.items.append(2)", "holder", counted=False)
    nb.add("after_locking", "print(held.items, hasattr(held, 'lock'))", "locking", counted=False).use()
    locked = nb.run("locking")
    assert "'held' (__main__.Holder) cannot be serialised; it is kept in memory only" in locked.stderr
    assert nb.run("after_locking").stdout == "[1, 2] True\n"
    assert nb.kernel.execute("print(held.items)").stdout == "[1, 2]\n"
    assert nb.run("holder").status == "ok"
    assert nb.kernel.execute("print(held.items)").stdout == "[1]\n", "the parent's value is its own again"


BROKEN_RENDERER = (
    "class Fancy(Exception):\n    def _render_traceback_(self):\n        raise TypeError('renderer broke')\n"
    "def fail():\n    raise Fancy('the real error')\nfail()"
)


@pytest.mark.parametrize("where", ["cell", "component", "parent"])
def test_an_error_whose_own_renderer_fails_is_shown_as_any_other(nb, where):
    # IPython prints the renderer's failure raw (its frames, the kernel's temporary file)
    # and sends no `error` message: the user's error, formatted as Jupyter does, instead
    if where == "cell":
        result = nb.kernel.execute(BROKEN_RENDERER)
    else:
        nb.add("fancy", BROKEN_RENDERER, counted=False).add("after_fancy", "print('never')", "fancy", counted=False).use()
        result = nb.run("fancy" if where == "component" else "after_fancy")
    assert [(e["ename"], e["evalue"]) for e in result.errors] == [("Fancy", "the real error")]
    text = result.traceback_text
    label = r"Cell In\[\d+\]" if where == "cell" else "Component fancy"
    assert re.search(label + r", line 5, in fail\(\)\n", text), text
    assert text.rstrip().endswith("Fancy: the real error")
    assert (result.stdout, result.stderr) == ("", "")
    assert_clean(text)


def test_after_a_restart_a_parent_that_put_a_module_on_sys_path_runs_again_when_its_values_need_it(link_kernelspec, home):
    # The parent extended sys.path and is fresh, so it did not run again after a restart:
    # its function, pickled by reference to that module, could not be imported
    (home / "src").mkdir()
    (home / "src" / "qa_mylib.py").write_text("def triple(v):\n    return v * 3\n")
    path = home / "syspath.ipynb"
    k = Kernel(cwd=str(home), LINKKERNEL_NOTEBOOK=str(path))
    try:
        nb = Notebook(k, path)
        nb.add("setup", "import sys\nsys.path.append('src')\nfrom qa_mylib import triple", counted=False)
        nb.add("use", "print(triple(2))", "setup", counted=False).save()
        assert nb.run("use").stdout == "6\n"
        k.manager.restart_kernel(now=False)
        k.client.wait_for_ready(timeout=60)
        again = nb.run("use")
        assert (again.status, again.stdout) == ("ok", "6\n"), again.traceback_text
        assert again.stderr == (
            "linkkernel: component 'setup': its output 'triple' cannot be rebuilt from the cache: ModuleNotFoundError: "
            "No module named 'qa_mylib'; running the components that made it again\n"
        )
    finally:
        k.shutdown()


@pytest.mark.parametrize("cell", ["1/0", "%link run broken"])
def test_pdb_on_without_stdin_keeps_the_users_error(nb, cell):
    # nbclient and papermill answer no input: the post-mortem's prompt raised inside the
    # kernel's own error display, reported as a bug in linkkernel and as the cell's error
    nb.add("broken", "1/0", counted=False).use()
    assert nb.kernel.execute("%pdb on").status == "ok"
    try:
        result = nb.kernel.execute(cell, timeout=30)
    finally:
        nb.kernel.execute("%pdb off")
    assert (result.reply["content"]["ename"], result.reply["content"]["evalue"]) == ("ZeroDivisionError", "division by zero")
    assert [e["ename"] for e in result.errors] == ["ZeroDivisionError"]
    assert result.stderr.endswith(
        "The debugger cannot run: raw_input was called, but this frontend does not support input requests.\n"
    )
