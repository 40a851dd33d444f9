"""QA regressions in a real kernel: bad saved notebooks, bad cache URLs, odd %link arguments
and declarations, and what a component does differently from a cell in stock ipykernel.

Each test drives the kernel the way JupyterLab or nbclient does and checks that bad input
gets one line naming the problem, that plain cells keep working whatever the notebook holds,
and, where stock ipykernel is the reference, that a component behaves as it would there.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from engine_support import Notebook
from support import Kernel, component_meta
from test_tracebacks_kernel import assert_clean


def one_line(result) -> str:
    """The single error line a refused cell shows (asserting it is one line)."""
    assert result.status == "error", result.stdout + result.stderr
    lines = result.traceback_text.splitlines()
    assert len(lines) == 1, result.traceback_text
    return lines[0]


@pytest.mark.parametrize(
    "content, problem",
    [
        ("[1, 2]", "not a notebook (a JSON list, not an object)"),
        ('{"cells": 5, "nbformat": 4}', "not a notebook (no 'cells' list)"),
        ('{"nbformat": 3, "worksheets": []}', "only nbformat 4 notebooks are supported, not 3"),
        ('{"nbformat": 4, "cells": [{"cell_type": "code", "metadata": [], "source": ""}]}',
         "cell 1: its metadata is not an object"),
    ],
)
def test_a_saved_notebook_that_is_not_a_notebook_stops_only_components(link, home, content, problem):
    path = home / "broken.ipynb"
    path.write_text(content)
    assert link.execute(f"%link notebook {path}").status == "ok"
    try:
        # nbclient/papermill send no cellId: the kernel looks the cell up in the saved notebook
        plain = link.execute("print('plain still runs')")
        assert (plain.status, plain.stdout) == ("ok", "plain still runs\n")
        refused = link.execute("x = 1", metadata=component_meta("a"), cell_id="qa-a")
        assert one_line(refused) == f"LinkError: cannot read the saved notebook {path}: {problem}"
    finally:
        assert link.execute(f"%link notebook {home / 'none.ipynb'}").status == "ok"


def test_a_cache_url_fsspec_does_not_know_keeps_the_kernel_alive(link_kernelspec, home):
    notebook = home / "nb.ipynb"
    notebook.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": []}))
    k = Kernel(cwd=str(home), LINKKERNEL_CACHE="frob://somewhere", LINKKERNEL_NOTEBOOK=str(notebook))
    try:
        first = k.execute("x = 1", metadata=component_meta("a"), cell_id="c1")
        assert first.status == "ok"
        assert first.stderr == (
            "linkkernel: cache store 'frob://somewhere' cannot be used: Protocol not known: frob; "
            "component results are kept in memory only\n"
        )
        child = k.execute("print(x + 1)", metadata=component_meta("b", "a"), cell_id="c2")
        assert (child.status, child.stdout, child.stderr) == ("ok", "2\n", "")
        shown = k.execute("%link notebook").stdout
        assert "cache: memory only (cache store 'frob://somewhere' cannot be used" in shown
    finally:
        k.shutdown()


@pytest.mark.parametrize("subcommand", ["status", "graph", "outputs", "run", "cache clear", "notebook"])
def test_help_of_every_engine_subcommand_is_usage_not_an_error(link, subcommand):
    shown = link.execute(f"%link {subcommand} --help")
    assert (shown.status, shown.errors, shown.stderr) == ("ok", [], "")
    assert shown.stdout.startswith(f"usage: %link {subcommand.split()[0]}")


def test_bad_engine_arguments_are_one_line(link):
    assert one_line(link.execute("%link graph extra")) == (
        "LinkError: %link graph: unrecognized arguments: extra (see '%link graph --help')"
    )
    assert one_line(link.execute("%link outputs")) == (
        "LinkError: %link outputs: the following arguments are required: NAME (see '%link outputs --help')"
    )
    assert one_line(link.execute("%link run")) == "LinkError: %link run: give component names or --all"


def test_link_notebook_refuses_a_folder_and_says_when_the_file_is_not_there(link, home):
    before = link.execute("%link notebook").stdout
    assert one_line(link.execute(f"%link notebook {home}")) == (
        f"LinkError: %link notebook: {home} is a directory; give the notebook file (NAME.ipynb)"
    )
    assert link.execute("%link notebook").stdout == before, "a refused path changes nothing"
    missing = home / "not-saved-yet.ipynb"
    shown = link.execute(f"%link notebook {missing}").stdout
    assert shown.startswith(
        f"notebook: {missing} (does not exist yet: declarations come from executed cells until it is saved)\n"
    )
    shown = link.execute("%link notebook ~/qa-nb.ipynb").stdout
    assert shown.startswith(f"notebook: {Path('~/qa-nb.ipynb').expanduser()} (does not exist yet")


def test_errors_name_saved_cells_by_position_and_unsaved_ones_by_id(link, home):
    path = home / "placed.ipynb"
    cell = {"outputs": [], "execution_count": None}
    path.write_text(json.dumps({"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        {"cell_type": "markdown", "id": "m1", "metadata": {}, "source": "# title"},
        {"cell_type": "code", "id": "s1", "metadata": component_meta("a"), "source": "a = 1", **cell},
        {"cell_type": "code", "id": "s2", "metadata": {}, "source": "", **cell},
    ]}))
    assert link.execute(f"%link notebook {path}").status == "ok"
    try:
        looked_in = f"the cells executed in this kernel and the saved notebook {path}"
        saved = link.execute("print(a)", metadata=component_meta("c", "a", "zz"), cell_id="s2")
        assert one_line(saved) == (
            f"PipelineError: component 'c' (cell 3 (id s2)) has parent 'zz', which is not declared in {looked_in}"
        )
        unsaved = link.execute("print(a)", metadata=component_meta("d", "a", "zz"), cell_id="new-cell")
        assert one_line(unsaved) == (
            f"PipelineError: component 'd' (cell id new-cell) has parent 'zz', which is not declared in {looked_in}"
        )
    finally:
        assert link.execute(f"%link notebook {home / 'none.ipynb'}").status == "ok"


def test_naming_the_same_notebook_again_keeps_unsaved_components_and_memory_only_values(link, home):
    path = home / "again.ipynb"
    assert link.execute(f"%link notebook {path}").status == "ok"
    try:
        made = link.execute("import threading\nlock = threading.Lock()", metadata=component_meta("locker"),
                                 cell_id="unsaved-1")
        assert made.status == "ok" and "kept in memory only" in made.stderr
        assert link.execute(f"%link notebook {path}").status == "ok"
        child = link.execute("print(type(lock).__name__)", metadata=component_meta("user", "locker"),
                                  cell_id="unsaved-2")
        assert (child.status, child.stdout) == ("ok", "lock\n"), child.traceback_text
        assert "locker" not in link.execute("%link run user").stdout.replace("ran: ", "")
    finally:
        assert link.execute(f"%link notebook {home / 'none.ipynb'}").status == "ok"


UPDATING = (
    "from IPython.display import display\n"
    "handle = display('step 0', display_id=True)\n"
    "for step in range(1, 4):\n"
    "    handle.update(f'step {step}')\n"
    "display('done')\n"
)


def test_stored_outputs_keep_an_updated_display_once_with_its_last_content(link):
    live = link.execute(UPDATING, metadata=component_meta("updating"), cell_id="upd-1")
    assert live.status == "ok"
    shown = link.execute("%link outputs updating")
    assert [d["data"]["text/plain"] for d in shown.displays] == ["'step 3'", "'done'"]
    # the same when it runs silently (%link run, or as a stale parent)
    assert link.execute("%link run updating --force").stdout == "ran: updating\n"
    again = link.execute("%link outputs updating")
    assert [d["data"]["text/plain"] for d in again.displays] == ["'step 3'", "'done'"]


def test_cache_export_over_an_existing_file_while_the_notebook_is_unsaved(link, home):
    (home / "old.tar.gz").write_bytes(b"previous archive")
    assert link.execute(f"%link notebook {home / 'unsaved.ipynb'}").status == "ok"
    try:
        done = link.execute(f"%link cache export {home / 'old.tar.gz'}")
        assert (done.status, done.stdout) == ("ok", f"exported 0 components to {home / 'old.tar.gz'}\n")
    finally:
        assert link.execute(f"%link notebook {home / 'none.ipynb'}").status == "ok"


STREAMS = (
    "import subprocess, sys\n"
    "streams = [(s.name, s.encoding, s.errors, s.isatty(), isinstance(s.fileno(), int)) for s in (sys.stdout, sys.stderr)]\n"
    "subprocess.run(['echo', 'through-fileno'], stdout=sys.stdout, check=True)\n"
)


def test_a_components_streams_are_ipykernels_live_and_silent(link, stock):
    # tqdm picks its bar characters, %time its unit (μs) and subprocess its target from these
    assert stock.execute(STREAMS).status == "ok"
    expected = stock.execute("print(streams)").stdout
    live = link.execute(STREAMS, metadata=component_meta("streams"), cell_id="qa-streams")
    assert live.status == "ok", live.traceback_text
    assert link.execute("print(streams)").stdout == expected
    silent = link.execute("%link run streams --force")
    assert silent.stdout == "ran: streams\n", silent.traceback_text
    assert link.execute("print(streams)").stdout == expected
    assert "through-fileno\n" in link.execute("%link outputs streams").stdout


def test_input_in_a_silent_parent_asks_the_frontend_as_in_a_cell(link, stock, home):
    nb = Notebook(link, home / "asking.ipynb")
    nb.add("root", "n = 1", counted=False).add("asker", "who = input('who? ')", "root", counted=False)
    nb.add("greeter", "print('hi', who)", "asker", counted=False).use()
    try:
        answered = nb.run("greeter", stdin_reply="ada", timeout=20)
        assert (answered.status, answered.stdout) == ("ok", "hi ada\n"), answered.traceback_text
        # a frontend without stdin (nbclient): the parent fails as input() fails in a cell there
        expected = stock.execute("who = input('who? ')").reply["content"]
        assert nb.run("root").status == "ok"
        failed = nb.run("greeter")
        assert failed.reply["content"]["ename"] == expected["ename"] == "StdinNotImplementedError"
        assert failed.reply["content"]["evalue"] == expected["evalue"]
        assert "hi" not in failed.stdout
        assert_clean(failed.traceback_text)
    finally:
        assert link.execute(f"%link notebook {home / 'none.ipynb'}").status == "ok"


def test_refused_cells_keep_their_place_in_the_input_history(link):
    # as ipykernel keeps a cell that fails: In[n], _i and %history match the numbers shown
    cells = [
        ("raise ValueError('p')", component_meta("h_parent"), "qa-h1"),
        ("print('child')", component_meta("h_child", "h_parent"), "qa-h2"),  # its parent fails
        ("print('q')", component_meta("h_q", "h_missing"), "qa-h3"),  # unknown parent
        ("x = 1", {"tags": ["component:9"]}, "qa-h4"),  # malformed tag
    ]
    numbered = {}
    try:
        for code, meta, cell_id in cells:
            result = link.execute(code, metadata=meta, cell_id=cell_id)
            assert result.status == "error"
            [shown] = [m["content"]["execution_count"] for m in result.messages if m["msg_type"] == "execute_input"]
            assert result.reply["content"]["execution_count"] == shown
            numbered[shown] = code
        history = link.execute(f"print([In[n].rstrip() for n in {list(numbered)}], _i.rstrip())")
        assert history.stdout == f"{list(numbered.values())} {cells[-1][0]}\n", history.traceback_text
    finally:
        for _, _, cell_id in cells:
            link.execute("pass", metadata={}, cell_id=cell_id)


def test_link_help_answers_the_usual_spellings_and_names_a_subcommand(link):
    listing = link.execute("%link help").stdout
    assert listing.startswith("%link SUBCOMMAND [ARGS]\n")
    for spelling in ("%link", "%link --help", "%link -h"):
        shown = link.execute(spelling)
        assert (shown.status, shown.stdout) == ("ok", listing), shown.traceback_text
    for name in ("run", "cache", "workers"):
        shown = link.execute(f"%link help {name}")
        assert (shown.status, shown.stdout) == ("ok", link.execute(f"%link {name} --help").stdout)
        assert shown.stdout.startswith(f"usage: %link {name}")
    assert one_line(link.execute("%link help nope")) == (
        "LinkError: %link help: unknown subcommand 'nope'; try '%link help'"
    )
    assert one_line(link.execute("%link help run status")) == (
        "LinkError: %link help: unrecognized arguments: status (usage: %link help [SUBCOMMAND])"
    )


@pytest.mark.parametrize("tag", ["Component:train", "COMPONENT:train", " component:train", "Parent:load"])
def test_a_declaration_tag_in_the_wrong_case_is_refused_not_ignored(link, tag):
    # run as a plain cell, it would look fine while nothing is cached or published as a component
    tags = [tag, "component:train"] if tag.startswith("Parent") else [tag]
    try:
        assert one_line(link.execute("x = 1", metadata={"tags": tags}, cell_id="qa-case")) == (
            f"DeclarationError: cell id qa-case: malformed tag {tag!r}: "
            f"write {tag.strip().partition(':')[0].lower() + ':' + tag.partition(':')[2]!r}"
        )
    finally:
        link.execute("pass", metadata={}, cell_id="qa-case")


CHAINED = "try:\n    1/0\nexcept ZeroDivisionError as e:\n    raise KeyError('k') from e"


@pytest.mark.parametrize("metadata", [{}, component_meta("docs_chain")], ids=["cell", "component"])
def test_a_chained_error_in_xmode_docs_shows_the_users_chain_not_ipythons_crash(link, metadata):
    # IPython 9's Docs formatter asserts on chains; stock Jupyter then prints a raw
    # traceback of IPython's own frames and the kernel's temporary files
    assert link.execute("%xmode Docs").status == "ok"
    try:
        result = link.execute(CHAINED, metadata=metadata, cell_id="qa-docs")
    finally:
        link.execute("%xmode Context")
        link.execute("pass", metadata={}, cell_id="qa-docs")
    assert (result.reply["content"]["ename"], result.reply["content"]["evalue"]) == ("KeyError", "'k'")
    assert len(result.errors) == 1
    text = result.traceback_text
    assert "ZeroDivisionError: division by zero" in text
    assert text.index("direct cause") < text.index("raise KeyError('k') from e") < text.rindex("KeyError: 'k'")
    assert "Unexpected exception formatting" not in result.stdout
    assert result.stderr == ""
    assert_clean(text)


@pytest.mark.parametrize("name", ["données", " train", "train "])
def test_a_name_outside_the_allowed_characters_says_which_are_allowed(link, name):
    try:
        assert one_line(link.execute("x = 1", metadata={"tags": [f"component:{name}"]}, cell_id="qa-name")) == (
            f"DeclarationError: cell id qa-name: malformed tag 'component:{name}': {name!r} is not a valid name "
            "(ASCII letters, digits, '_', '.', '-', not starting with a digit)"
        )
    finally:
        link.execute("pass", metadata={}, cell_id="qa-name")


def test_link_outputs_of_a_name_no_cell_declares_says_so(link):
    assert one_line(link.execute("%link outputs trian")).startswith(
        "LinkError: %link outputs: no component named 'trian' in the cells executed in this kernel"
    )
    try:  # declared but refused before it ran (its parent is missing)
        declared = link.execute("x = 1", metadata=component_meta("unrun", "qa_missing"), cell_id="qa-unrun")
        assert declared.status == "error"
        assert one_line(link.execute("%link outputs unrun")) == (
            "LinkError: %link outputs: component 'unrun' has no stored outputs (it has not run)"
        )
    finally:
        link.execute("pass", metadata={}, cell_id="qa-unrun")


def test_a_parents_function_sees_the_childs_globals_as_in_one_namespace(link, home):
    # SPEC §3: "as if the ancestors had run in one clean namespace"; in one namespace,
    # `scale` rebound by the child is what `scaled` and `Scaler.apply` read, and the `scale`
    # the user rebinds in a plain cell afterwards is what the notebook's `scaled` and
    # `Scaler.apply` read (the class is one object, loaded into the child and the notebook)
    nb = Notebook(link, home / "globals.ipynb")
    helpers = "scale = 1\ndef scaled(v):\n    return v * scale\nclass Scaler:\n    def apply(self, v):\n        return scaled(v) + scale"
    nb.add("helpers", helpers, counted=False)
    nb.add("caller", "scale = 10\nprint(scaled(2), Scaler().apply(1))", "helpers", counted=False).use()
    try:
        assert nb.run("caller").stdout == "20 20\n"
        plain = link.execute("scale = 3\nprint(scaled(2), Scaler().apply(1))", metadata={}, cell_id="qa-globals")
        assert plain.stdout == "6 6\n", plain.traceback_text
    finally:
        assert link.execute(f"%link notebook {home / 'none.ipynb'}").status == "ok"



def test_a_parents_cached_and_single_dispatch_functions_are_kept_and_see_the_childs_globals(link, home):
    # functools.lru_cache/cache wrappers pickle by reference to `__main__.NAME`, which a
    # component's namespace is not, and singledispatch ones hold a weak dictionary: they
    # were kept in memory only, with a warning, and read
    # the parent's globals in the child; in one namespace the child's `scale` is read
    nb = Notebook(link, home / "lru.ipynb")
    helpers = ("import functools\nscale = 1\n@functools.lru_cache(maxsize=8)\ndef cached(v):\n    return v * scale\n"
               "@functools.cache\ndef unbounded(v):\n    return v + scale\n"
               "@functools.singledispatch\ndef shown(v):\n    return v * scale\n"
               "@shown.register\ndef _(v: str):\n    return v + str(scale)")
    nb.add("lru_helpers", helpers, counted=False)
    caller = "scale = 10\nprint(cached(2), unbounded(2), cached.cache_parameters(), shown(2), shown('a'))"
    nb.add("lru_caller", caller, "lru_helpers", counted=False).use()
    try:
        parent = nb.run("lru_helpers")
        assert (parent.status, parent.stderr) == ("ok", ""), parent.traceback_text
        child = nb.run("lru_caller")
        assert (child.stdout, child.stderr) == ("20 12 {'maxsize': 8, 'typed': False} 20 a10\n", ""), child.traceback_text
    finally:
        assert link.execute(f"%link notebook {home / 'none.ipynb'}").status == "ok"



PICKLES_BY_NAME = """import pickle, concurrent.futures
def double(v):
    return v * 2
print(pickle.loads(pickle.dumps(double))(3))
with concurrent.futures.ProcessPoolExecutor(1) as pool:
    print(list(pool.map(double, [1, 2])))"""


def test_a_components_function_pickles_by_name_as_in_a_cell(link, stock):
    # pickle (multiprocessing, concurrent.futures) finds a function by name in
    # sys.modules['__main__'], which ipykernel makes the user namespace's module; in a
    # component it stayed the notebook's, which has no (or another) `double`
    expected = stock.execute(PICKLES_BY_NAME)
    assert (expected.status, expected.stdout) == ("ok", "6\n[2, 4]\n"), expected.traceback_text
    assert link.execute("def double(v):\n    return -v", metadata={}, cell_id="qa-pickle-cell").status == "ok"
    result = link.execute(PICKLES_BY_NAME, metadata=component_meta("pickles_by_name"), cell_id="qa-pickle")
    assert (result.status, result.stdout) == ("ok", expected.stdout), result.traceback_text
    after = link.execute("import sys\nprint(sys.modules['__main__'] is get_ipython().user_module)", metadata={})
    assert after.stdout == "True\n", after.traceback_text


DEL_RAISES = "class D:\n    def __del__(self):\n        raise ValueError('in del')\nd = D()\ndel d\nprint('after')"


@pytest.mark.parametrize("metadata", [{}, component_meta("finalizer")], ids=["cell", "component"])
def test_an_error_in_a_finalizer_shows_the_users_frame_not_a_temp_file(link, metadata):
    # Python's default hook names the kernel's /tmp/ipykernel_* file, as for thread errors
    result = link.execute(DEL_RAISES, metadata=metadata, cell_id="qa-del")
    link.execute("pass", metadata={}, cell_id="qa-del")
    assert (result.status, result.stdout) == ("ok", "after\n")
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr)
    assert re.match(r"Exception ignored in: <function D.__del__ at 0x[0-9a-f]+>\n", text), text
    label = "Component finalizer" if metadata else r"Cell In\[\d+\]"
    assert re.search(label + r", line 3, in D.__del__\(self\)\n", text), text
    assert text.rstrip().endswith("ValueError: in del")
    assert_clean(text)


def test_a_component_cell_moved_by_cut_and_paste_is_found_once_saved(link, home):
    # JupyterLab 4 keeps a code cell's id through cut and paste, and reports the cut in
    # deletedCells with the next request: the saved notebook then still holds the cell
    nb = Notebook(link, home / "moved.ipynb")
    nb.add("origin", "v = 1", counted=False).add("user", "print(v + 1)", "origin", counted=False).use()
    try:
        assert nb.run("user").stdout == "2\n"
        cut = link.execute("pass", metadata={"deletedCells": ["id-origin"]}, cell_id="qa-elsewhere")
        assert cut.status == "ok"
        saved_after = time.time()
        nb.cells = {"user": nb.cells["user"], "origin": nb.cells["origin"]}  # pasted below its child
        nb.save()
        os.utime(nb.path, (saved_after, saved_after))
        moved = nb.run("user")
        assert (moved.status, moved.stdout) == ("ok", "2\n"), moved.traceback_text
    finally:
        assert link.execute(f"%link notebook {home / 'none.ipynb'}").status == "ok"


# matplotlib's inline backend in miniature: plotting leaves a figure open, and a
# `post_execute` callback displays (and closes) the open figures after each cell
INLINE_BACKEND = (
    "import sys, types\nfrom IPython.display import display\n"
    "figures = sys.modules['qa_figures'] = types.ModuleType('qa_figures')\nfigures.open = []\n"
    "def flush_figures():\n    while figures.open:\n        display(figures.open.pop(0))\n"
    "get_ipython().events.register('post_execute', flush_figures)"
)


def test_a_figure_drawn_by_a_silent_parent_is_its_output_not_the_childs(link, home):
    assert link.execute(INLINE_BACKEND).status == "ok"
    nb = Notebook(link, home / "figures.ipynb")
    nb.add("plotter", "import qa_figures\nqa_figures.open.append('figure of plotter')", counted=False)
    nb.add("after_plot", "print('child')", "plotter", counted=False).use()
    try:
        child = nb.run("after_plot")
        assert child.stdout == "child\n", child.traceback_text
        assert [d["data"] for d in child.displays if d["data"].get("text/plain", "").startswith("'figure")] == []
        kept = link.execute("%link outputs plotter")
        assert [d["data"]["text/plain"] for d in kept.displays] == ["'figure of plotter'"]
    finally:
        link.execute("get_ipython().events.unregister('post_execute', flush_figures)")
        assert link.execute(f"%link notebook {home / 'none.ipynb'}").status == "ok"


@pytest.mark.parametrize(
    ("code", "kept"),
    [
        ("for i in range(3):\n    clear_output(wait=True)\n    print(i)", "2\n"),
        ("print('kept')\nclear_output(wait=True)", "kept\n"),  # nothing followed: Jupyter never clears
        ("print('gone')\nclear_output()", ""),
    ],
    ids=["progress", "wait-last", "now"],
)
def test_clear_output_in_a_component_keeps_what_jupyter_would_show(link, code, kept):
    code = "from IPython.display import clear_output\n" + code
    live = link.execute(code, metadata=component_meta("clearing"), cell_id="qa-clearing")
    assert live.status == "ok", live.traceback_text
    assert link.execute("%link outputs clearing").stdout == kept
    assert link.execute("%link run clearing --force").stdout == "ran: clearing\n"
    assert link.execute("%link outputs clearing").stdout == kept


def test_cells_with_the_same_code_run_as_their_own_components_without_cell_ids(link, home):
    # nbclient and papermill send neither metadata nor cellId: cells are found by their code
    nb = Notebook(link, home / "twins.ipynb")
    nb.add("load_a", "data = [1, 2]", counted=False).add("load_b", "data = [3, 4]", counted=False)
    nb.add("stats_a", "print(sum(data))", "load_a", counted=False)
    nb.add("stats_b", "print(sum(data))", "load_b", counted=False).use()
    try:
        for _ in range(2):  # a second run of the whole notebook, as papermill re-running it
            shown = [link.execute(cell["source"]).stdout for cell in nb.cells.values()]
            assert shown == ["", "", "3\n", "7\n"]
        status = link.execute("%link status").stdout
        assert "stats_b  load_b   fresh" in status, status
    finally:
        assert link.execute(f"%link notebook {home / 'none.ipynb'}").status == "ok"
