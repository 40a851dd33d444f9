"""QA of the objects data scientists pass between components (SPEC §3): a child sees what its
parent made exactly as if the cells had run in order in one stock kernel, whatever the value's
kind — open files, memoryviews, weak proxies, set subclasses, classes defined in the notebook,
cached properties, slotted classes, named tuples — and a value that cannot be rebuilt is said
by name, once.

Each test drives a real Link Python kernel the way JupyterLab does; kernels are shared per module.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine_support import Notebook, value
from remote_support import registered_worker


LINK_CACHE_IN_HOME = True  # conftest's `link` keeps its cache store in the module's home


@pytest.fixture(scope="module")
def worker(home: Path):
    """A real worker on loopback, registered as `qo`."""
    with registered_worker(home / "worker", "qo") as w:
        yield w


def changed_in_notebook(nb: Notebook, names: list[str]) -> None:
    """Rebind `names` in the notebook namespace: a child that only reads them must leave them so."""
    assert nb.kernel.execute(" = ".join(names) + " = 'changed in the notebook'").status == "ok"


def still_changed(nb: Notebook, names: list[str]) -> list[str]:
    """Those of `names` a child's run published over the notebook's own value (its outputs)."""
    return value(nb.kernel, f"[n for n in {names!r} if globals()[n] != 'changed in the notebook']")


def test_an_open_file_is_the_parents_own_file_in_a_child(nb, home: Path):
    """In one kernel a child reading on from a file its parent opened gets the next line, and
    the notebook's file has moved on too. It must not become a copy of the file's text."""
    (home / "lines.txt").write_text("one\ntwo\nthree\n")
    nb.add("opens", f"f = open({str(home / 'lines.txt')!r})\nfirst = f.readline()", counted=False)
    nb.add("reads_on", "second = f.readline()\nkind = type(f).__name__", "opens", counted=False)
    nb.use()
    opened = nb.run("opens")
    assert opened.status == "ok", opened.traceback_text
    assert opened.stderr == (
        "linkkernel: component 'opens': 'f' (_io.TextIOWrapper) cannot be serialised; "
        "it is kept in memory only, so after a restart the component runs again\n"
    )
    child = nb.run("reads_on")
    assert child.status == "ok", child.traceback_text
    assert value(nb.kernel, "(first, second, kind)") == ("one\n", "two\n", "TextIOWrapper")
    assert value(nb.kernel, "f.readline()") == "three\n"
    assert child.stderr == (
        "linkkernel: component 'reads_on': input 'f' (_io.TextIOWrapper) cannot be copied; it is shared with "
        "the component that made it, so what this run does to it is seen there and by its other children\n"
    )


def test_a_file_a_with_block_closed_is_cached_and_comes_back_closed_as_it_was(nb, home: Path):
    """`with open(...) as f:` leaves a closed file behind, which holds nothing of the process:
    the component is cached like any other (no word about serialising, no run again after a
    restart) and its child sees the closed files as one stock kernel shows them."""
    table = str(home / "table.csv")
    (home / "table.csv").write_text("a,b\n")
    opens = f"with open({table!r}) as f:\n    text = f.read()\nwith open({table!r}, 'rb') as raw:\n    data = raw.read()"
    looks = "seen = (repr(f), f.closed, f.name, f.mode, f.encoding, repr(raw), raw.closed, raw.mode, text, data)"
    assert nb.kernel.execute(f"{opens}\n{looks}").status == "ok"
    stock = value(nb.kernel, "seen")
    nb.add("opens_with", opens)
    nb.add("looks_at_closed", looks, "opens_with")
    nb.use()
    opened = nb.run("opens_with")
    assert (opened.status, opened.stderr) == ("ok", "")
    nb.restart()
    child = nb.run("looks_at_closed")
    assert child.status == "ok", child.traceback_text
    assert child.stderr == ""
    assert nb.runs() == ["opens_with", "looks_at_closed"]  # the parent's closed files came from the cache
    assert value(nb.kernel, "seen") == stock
    assert nb.kernel.execute("f.read()").errors[0]["evalue"] == "I/O operation on closed file."


def test_an_open_file_cannot_go_to_a_worker_and_says_so_in_one_line(nb, home: Path, worker):
    (home / "far.txt").write_text("far\n")
    nb.add("opens_here", f"g = open({str(home / 'far.txt')!r})", counted=False)
    nb.add("reads_far", "line = g.readline()", "opens_here", remote="qo", counted=False)
    nb.use()
    result = nb.run("reads_far")
    assert result.status == "error"
    assert result.reply["content"]["evalue"] == (
        "component 'reads_far' cannot run on worker 'qo': its input 'g' (_io.TextIOWrapper) cannot be "
        "pickled, so it exists only in this kernel's memory"
    )


def test_a_memoryview_stays_a_memoryview_with_its_shape_format_and_writability(nb):
    nb.add("views", "import array\n"
                    "ro = memoryview(b'abcdef')\n"
                    "grid = memoryview(bytearray(range(6))).cast('B', (2, 3))\n"
                    "ints = memoryview(array.array('i', [1, -2, 3]))\n"
                    "col = memoryview(bytearray(range(6)))[::2]", counted=False)
    seen = "[(type(v).__name__, v.format, v.shape, v.readonly, v.tolist()) for v in (ro, grid, ints, col)]"
    nb.add("looks", f"seen = {seen}", "views", counted=False)
    nb.add("writes", "grid[1, 2] = 99\nwritten = grid.tolist()", "views", counted=False)
    nb.use()
    assert nb.run("views").status == "ok"
    names = ["ro", "grid", "ints", "col"]
    changed_in_notebook(nb, names)
    looked = nb.run("looks")
    assert looked.status == "ok", looked.traceback_text
    assert looked.stderr == ""
    assert value(nb.kernel, "seen") == [
        ("memoryview", "B", (6,), True, list(b"abcdef")),
        ("memoryview", "B", (2, 3), False, [[0, 1, 2], [3, 4, 5]]),
        ("memoryview", "i", (3,), False, [1, -2, 3]),
        ("memoryview", "B", (3,), False, [0, 2, 4]),
    ]
    assert still_changed(nb, names) == []  # only read: not the child's outputs
    assert nb.run("writes").status == "ok"
    assert value(nb.kernel, "(written, grid.tolist())") == ([[0, 1, 2], [3, 4, 99]],) * 2


def test_a_weak_proxy_stays_a_proxy_to_the_parents_object(nb):
    """A proxy pickled or deep-copied through the object it points to comes back as a copy of
    that object, a different type: the child must get the proxy, as in one kernel."""
    nb.add("points", "import weakref\nclass Node:\n    size = 3\nnode = Node()\nproxy = weakref.proxy(node)", counted=False)
    nb.add("follows", "kind = type(proxy).__name__\nsize = proxy.size", "points", counted=False)
    nb.use()
    points = nb.run("points")
    assert points.status == "ok"
    assert "'proxy' (weakref.ProxyType) cannot be serialised" in points.stderr
    follows = nb.run("follows")
    assert follows.status == "ok", follows.traceback_text
    assert value(nb.kernel, "(kind, size)") == ("ProxyType", 3)
    assert "input 'proxy' (weakref.ProxyType) cannot be copied" in follows.stderr


SET_SUBCLASSES = (
    "class Tags(set):\n"
    "    def __init__(self, source):\n"
    "        super().__init__()\n"
    "        self.source = source\n"
    "class Frozen(frozenset):\n"
    "    pass\n"
    "tags = Tags('load')\n"
    "tags.update(str(i) for i in range(1000))\n"
    "tags -= set(str(i) for i in range(990))\n"
    "frozen = Frozen(str(i) for i in range(100))\n"
)


def test_a_set_subclass_comes_back_as_itself_with_its_items_and_attributes(nb):
    """pickle rebuilds a set subclass by calling it with the items, which a subclass whose
    `__init__` takes something else empties; a child must see the set its parent made."""
    nb.add("tagged", SET_SUBCLASSES, counted=False)
    seen = "(type(tags).__name__, sorted(tags), tags.source, type(frozen).__name__, len(frozen))"
    nb.add("reads_tags", f"seen = {seen}", "tagged", counted=False)
    nb.add("adds_tag", "tags.add('new')", "tagged", counted=False)
    nb.use()
    assert nb.run("tagged").status == "ok"
    changed_in_notebook(nb, ["tags", "frozen", "Tags", "Frozen"])
    result = nb.run("reads_tags")
    assert result.status == "ok", result.traceback_text
    assert value(nb.kernel, "seen") == ("Tags", [str(i) for i in range(990, 1000)], "load", "Frozen", 100)
    assert still_changed(nb, ["tags", "frozen", "Tags", "Frozen"]) == []  # read only: not outputs
    assert nb.run("adds_tag").status == "ok"
    assert value(nb.kernel, "('new' in tags, type(tags).__name__, tags.source)") == (True, "Tags", "load")


NOTEBOOK_CLASSES = (
    "import abc, dataclasses\n"
    "from typing import NamedTuple\n"
    "@dataclasses.dataclass\n"
    "class Point:\n"
    "    x: int\n"
    "    tags: list = dataclasses.field(default_factory=list)\n"
    "class Shape(abc.ABC):\n"
    "    @abc.abstractmethod\n"
    "    def area(self): ...\n"
    "class Square(Shape):\n"
    "    def __init__(self, side):\n"
    "        self.side = side\n"
    "    def area(self):\n"
    "        return self.side ** 2\n"
    "class Plain:\n"
    "    unit = 'cm'\n"
    "    def label(self):\n"
    "        return self.unit\n"
    "class Slotted:\n"
    "    __slots__ = ('a', 'b')\n"
    "    def __init__(self, a, b):\n"
    "        self.a, self.b = a, b\n"
    "class Pair(NamedTuple):\n"
    "    left: int\n"
    "    right: str = 'r'\n"
    "    def both(self):\n"
    "        return f'{self.left}{self.right}'\n"
    "@dataclasses.dataclass(slots=True, frozen=True)\n"
    "class Frozen:\n"
    "    u: int = 3\n"
    "point = Point(1)\n"
    "square = Square(2)\n"
    "plain = Plain()\n"
    "slotted = Slotted(1, 2)\n"
    "pair = Pair(4)\n"
    "frozen = Frozen()\n"
)
CLASS_NAMES = ["Point", "Shape", "Square", "Plain", "Slotted", "Pair", "Frozen"]
INSTANCE_NAMES = ["point", "square", "plain", "slotted", "pair", "frozen"]
USES_CLASSES = (
    "seen = (Point(2), point, square.area(), isinstance(square, Shape), sorted(Shape.__abstractmethods__),\n"
    "        plain.label(), (slotted.a, slotted.b, hasattr(slotted, '__dict__')),\n"
    "        pair, pair.both(), Pair._fields, Pair._field_defaults, pair._replace(left=5), frozen)\n"
    "seen = repr(seen)"
)
SEEN_CLASSES = (
    "(Point(x=2, tags=[]), Point(x=1, tags=[]), 4, True, ['area'], 'cm', (1, 2, False), "
    "Pair(left=4, right='r'), '4r', ('left', 'right'), {'right': 'r'}, Pair(left=5, right='r'), Frozen(u=3))"
)


def test_classes_defined_in_the_notebook_that_a_child_only_uses_are_not_its_outputs(nb):
    """A child that only uses its parent's dataclass, ABC, plain, slotted and named-tuple
    classes and their instances leaves the notebook's values alone, whether the notebook still
    holds those classes (the child then shares them) or no longer does (the child makes them
    anew); one that changes an instance has it as its output."""
    nb.add("defines", NOTEBOOK_CLASSES, counted=False)
    nb.add("uses", USES_CLASSES, "defines", counted=False)
    nb.add("moves", "point.x = 7\nslotted.a = 8", "defines", counted=False)
    nb.add("makes", "made = (Point(3), Square(3), Plain(), Slotted(5, 6), Pair(7))", "defines", counted=False)
    nb.use()
    assert nb.run("defines").status == "ok"
    held = "[" + ", ".join(INSTANCE_NAMES) + "]"
    assert nb.kernel.execute(f"held = {held}").status == "ok"
    used = nb.run("uses")
    assert used.status == "ok", used.traceback_text
    assert value(nb.kernel, "seen") == SEEN_CLASSES
    assert value(nb.kernel, f"[a is b for a, b in zip(held, {held})]") == [True] * len(INSTANCE_NAMES)
    changed_in_notebook(nb, CLASS_NAMES + INSTANCE_NAMES + ["held"])
    assert nb.kernel.execute("import gc; gc.collect()").status == "ok"  # the classes are gone
    used = nb.run("uses")
    assert used.status == "ok", used.traceback_text
    assert value(nb.kernel, "seen") == SEEN_CLASSES
    assert still_changed(nb, CLASS_NAMES + INSTANCE_NAMES) == []
    assert nb.run("makes").status == "ok"  # classes the notebook no longer holds keep their methods
    assert value(nb.kernel, "(repr(made[0]), made[1].area(), made[2].label(), made[3].b, made[4].both())") == (
        "Point(x=3, tags=[])", 9, "cm", 6, "7r"
    )
    moved = nb.run("moves")
    assert moved.status == "ok", moved.traceback_text
    assert still_changed(nb, CLASS_NAMES + INSTANCE_NAMES) == ["point", "slotted"]
    assert value(nb.kernel, "(point.x, slotted.a, slotted.b, point.__eq__(point), type(slotted).__init__.__name__)") == (
        7, 8, 2, True, "__init__"
    )


def test_slotted_and_named_tuple_values_rebuild_from_the_cache_after_a_restart(nb):
    nb.add("defines_again", NOTEBOOK_CLASSES)
    nb.add("uses_again", USES_CLASSES, "defines_again")
    nb.use()
    assert nb.run("defines_again").status == "ok"
    nb.restart()
    used = nb.run("uses_again")
    assert used.status == "ok", used.traceback_text
    assert used.stderr == ""
    assert nb.runs() == ["defines_again", "uses_again"]  # the parent's values came from the cache
    assert value(nb.kernel, "seen") == SEEN_CLASSES


CACHED = (
    "import functools\n"
    "computed = []\n"
    "class Model:\n"
    "    def __init__(self, n):\n"
    "        self.n = n\n"
    "    @functools.cached_property\n"
    "    def score(self):\n"
    "        computed.append(self.n)\n"
    "        return self.n * 10\n"
    "model = Model(4)\n"
    "first = model.score\n"
)


def test_a_cached_property_value_pickles_and_comes_back(nb):
    """A class with a `functools.cached_property` is a value like any other (on 3.11 the
    property holds a lock, which made the class and every instance memory-only); the value it
    cached comes back without computing it again, and the property still works."""
    nb.add("caches", CACHED)
    nb.add("scores", "seen = (model.score, model.__dict__, Model(5).score, computed)", "caches")
    nb.use()
    caches = nb.run("caches")
    assert caches.status == "ok", caches.traceback_text
    assert caches.stderr == ""
    nb.restart()
    scores = nb.run("scores")
    assert scores.status == "ok", scores.traceback_text
    assert scores.stderr == ""
    assert nb.runs() == ["caches", "scores"]  # from the cache on disk
    assert value(nb.kernel, "seen") == (40, {"n": 4, "score": 40}, 50, [4, 5])


def test_a_value_that_is_never_rebuilt_is_said_by_name_once_even_when_it_differs_each_run(nb, home: Path):
    """A value that pickles but cannot be unpickled, made anew by each run (a timestamp in
    it): its parent runs again once, then keeps it in memory, and the cell says which name in
    one line. Followed by its digest, each re-run made a value never seen before, and the
    child ran its parent again and again, forever."""
    (home / "stamped.py").write_text(
        "class Wrapper:\n"
        "    def __init__(self, inner):\n        self._inner = inner\n"
        "    def __getattr__(self, name):\n        return getattr(self._inner, name)\n"
    )
    nb.add("stamps", f"import sys, time\nsys.path.insert(0, {str(home)!r})\nfrom stamped import Wrapper\n"
                     "w = Wrapper([time.time_ns()])")
    nb.add("uses_stamp", "n = len(w._inner)", "stamps")
    nb.use()
    assert nb.run("stamps").status == "ok"
    result = nb.kernel.execute("%link run uses_stamp", timeout=30)
    assert result.status == "ok", result.traceback_text
    assert nb.runs() == ["stamps", "stamps", "uses_stamp"]
    lost, kept, shared = result.stderr.splitlines()
    assert lost.startswith("linkkernel: component 'uses_stamp': its input 'w' cannot be rebuilt from the cache: RecursionError")
    assert lost.endswith("; running the components that made it again")
    assert kept == (
        "linkkernel: component 'stamps': 'w' (stamped.Wrapper) cannot be serialised; it is kept in memory only, "
        "so after a restart the component runs again"
    )
    assert shared.startswith("linkkernel: component 'uses_stamp': input 'w' (stamped.Wrapper) cannot be copied")
    assert value(nb.kernel, "n") == 1


def test_a_value_whose_rebuild_fails_with_several_lines_is_said_in_one(nb, home: Path):
    (home / "strict.py").write_text(
        "class Strict:\n"
        "    def __setstate__(self, state):\n"
        "        raise ValueError('2 validation errors for Strict\\nx\\n  Field required')\n"
    )
    nb.add("makes_strict", f"import sys\nsys.path.insert(0, {str(home)!r})\nfrom strict import Strict\ns = Strict()\ns.x = 1")
    nb.add("uses_strict", "kind = type(s).__name__", "makes_strict")
    nb.use()
    assert nb.run("makes_strict").status == "ok"
    result = nb.run("uses_strict")
    assert result.status == "ok", result.traceback_text
    assert result.stderr.splitlines()[0] == (
        "linkkernel: component 'uses_strict': its input 's' cannot be rebuilt from the cache: ValueError: "
        "2 validation errors for Strict x Field required; running the components that made it again"
    )
    assert "'s' (strict.Strict) cannot be serialised; it is kept in memory only" in result.stderr
    assert nb.runs() == ["makes_strict", "makes_strict", "uses_strict"]
