"""QA: values kept in memory only, and concurrency inside one kernel and between kernels."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from engine_support import value

from linkkernel.namespaces import dump
from linkkernel.sources import Sources
from linkkernel.staleness import RunRecord
from linkkernel.store import CacheStore, freeze


def test_two_kernels_writing_the_same_blob_at_once_both_succeed(tmp_path):
    """Two stores on one cache folder (two kernels on the same notebook) keep the same large
    value at the same moment: neither write fails and the blob reads back whole. With one
    shared temporary name, one store truncated the other's file and its move then failed."""
    blob = freeze(dump("big", np.ones(6_000_000)))  # 48 MB: both writes overlap
    record = RunRecord("a", "r1", "h", {}, "ok", 0.0, 0.0, namespace={"big": blob.digest})
    url, notebook = f"file://{tmp_path}", str(tmp_path / "nb.ipynb")
    stores = [CacheStore(url, notebook) for _ in range(2)]
    for store in stores:
        store.put(record, {blob.digest: blob}, {})
    assert [store.write_failures() for store in stores] == [[], []]
    reader = CacheStore(url, notebook)
    value, _ = reader.load(blob.digest, {})
    assert value.shape == (6_000_000,) and float(value.sum()) == 6_000_000.0
    assert not list(tmp_path.rglob("*.part"))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("qa-memory")


LINK_CACHE_IN_HOME = True  # conftest's `link` keeps its cache store in the module's home


BASKET = """\
import copy, threading

class Basket:
    \"\"\"Holds a lock, so it does not pickle; copies itself with a lock of its own.\"\"\"
    def __init__(self):
        self.lock, self.items = threading.Lock(), []
    def __deepcopy__(self, memo):
        twin = Basket()
        twin.items = copy.deepcopy(self.items, memo)
        return twin

basket = Basket()
gen = (i for i in range(10))
"""


def test_a_child_mutating_a_memory_only_value_leaves_the_parent_s_cached_value_alone(nb):
    """SPEC §3: a child mutating a parent's object never changes the parent's cached value,
    values kept in memory only included: a value that can be copied is copied for each child
    (so a sibling, and the notebook, see the parent's own); one that cannot (a generator) is
    shared, and the child's run says so in one line."""
    nb.add("make", BASKET).add("fill", "basket.items.append('fill')\nfirst = next(gen)", "make")
    nb.add("look", "seen = list(basket.items)", "make").add("after", "later = list(basket.items)", "fill").use()
    made = nb.run("make")
    assert made.status == "ok" and "cannot be serialised" in made.stderr
    filled = nb.run("fill")
    assert filled.status == "ok"
    assert filled.stderr.strip().splitlines() == [
        "linkkernel: component 'fill': input 'gen' (generator) cannot be copied; it is shared with the component "
        "that made it, so what this run does to it is seen there and by its other children"
    ]
    assert nb.run("look").status == "ok"
    assert value(nb.kernel, "seen") == []
    # the notebook's own object, mutated by a plain cell, is not what children start from
    assert nb.kernel.execute("basket.items.append('notebook')").status == "ok"
    assert nb.run("look").status == "ok" and value(nb.kernel, "seen") == []
    # what `fill` did to its copy is its output: its own children, and the notebook, see it
    assert nb.run("after").status == "ok"
    assert value(nb.kernel, "later") == ["fill"]
    assert value(nb.kernel, "basket.items") == ["fill"]


def test_output_widget_in_a_silent_parent_receives_what_is_printed_into_it(nb):
    """`with out: print(...)` sends the text to the frontend with the request's id, which the
    Output widget took as its own: the frontend puts it in the widget, as in stock ipykernel.
    A silent parent kept it among its own stored outputs instead, and the widget stayed
    empty when a child showed it. What the parent prints beside the widget stays captured."""
    nb.add("make", "import ipywidgets as w\nout = w.Output()\nwith out:\n    print('into the widget')\nprint('beside')")
    nb.add("show", "display(out)", "make").use()
    shown = nb.run("show")
    assert shown.status == "ok"
    sent = [m["content"]["text"] for m in shown.messages if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"]
    assert sent == ["into the widget\n"]
    assert nb.kernel.execute("%link outputs make").stdout == "beside\n"


def test_a_subshell_learning_cells_while_the_main_shell_reads_the_pipeline():
    """JupyterLab 4.6 sends some requests to subshells (JEP 91), which run in threads of their
    own: each cell they run is learnt as a declaration while the main shell may be reading
    every declaration to build a pipeline. The reader must never see the table half-changed
    (a "dictionary changed size during iteration" error in the user's cell). A real subshell
    rarely lands in that window, so the two threads here call the two sides directly, with
    thread switches forced as often as the interpreter allows."""
    sources = Sources(None)
    for i in range(2000):
        sources.learn(f"x = {i}", {}, f"cell-{i}")

    def learning(round: int) -> None:
        for i in range(1000):
            sources.learn("y = 1", {"tags": ["component:side"]} if i % 2 else {}, f"side-{round}-{i}")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for round in range(5):
            learner = threading.Thread(target=learning, args=(round,))
            learner.start()
            try:
                while learner.is_alive():
                    sources.declared()
            finally:
                learner.join()
    finally:
        sys.setswitchinterval(interval)
        sys.setswitchinterval(interval)
