"""The frame filter on real tracebacks: code is run as if it lived in kernel packages.

Each fake module is real code executed with `__name__` set to a package, so its frames carry
that package exactly as the kernel's own frames do.
"""

from __future__ import annotations

import json
import warnings

import pytest

from linkkernel.errors import LinkError
from linkkernel.tracebacks import (
    blame_user,
    contains_group,
    format_warning,
    group_tree,
    is_internal,
    is_user_file,
    trim,
    trimmed_traceback,
    walk,
)


def module(name: str, source: str, filename: str | None = None) -> dict:
    namespace = {"__name__": name}
    exec(compile(source, filename or f"<{name}>", "exec"), namespace)
    return namespace


CALLER = "def call(f, *args):\n    return f(*args)\n"
ipython = module("IPython.core.interactiveshell", CALLER)
ipykernel = module("ipykernel.ipkernel", CALLER)
ours = module(
    "linkkernel.runner",
    CALLER + "def fail():\n    raise RuntimeError('ours')\n"
    "def after_failing(f):\n    try:\n        fail()\n    except RuntimeError:\n        return f()\n",
)
loop = module("asyncio.events", CALLER)
user = module(
    "__main__",
    "def fail():\n    raise ValueError('mine')\n"
    "def parse():\n    import json\n    return json.loads('{')\n",
    filename="<cell-1>",
)


def is_cell(filename: str) -> bool:
    return filename.startswith("<cell")


def raised(f, *args) -> BaseException:
    try:
        f(*args)
    except BaseException as exc:  # noqa: BLE001 - the point is to look at any exception
        return exc
    raise AssertionError("nothing raised")


def names(tb) -> list[str]:
    return [entry.tb_frame.f_code.co_name for entry in walk(tb)]


def test_machinery_frames_are_removed_wherever_they_are():
    exc = raised(ipykernel["call"], ipython["call"], ours["call"], user["fail"])
    assert names(exc.__traceback__) == ["raised", "call", "call", "call", "fail"]
    trim(exc)
    assert names(exc.__traceback__) == ["raised", "fail"]


def test_library_frames_the_user_called_stay():
    exc = raised(ipython["call"], user["parse"])
    trim(exc)
    modules = [entry.tb_frame.f_globals["__name__"] for entry in walk(exc.__traceback__)]
    assert modules[:2] == [__name__, "__main__"]
    assert modules[2:] and all(m.startswith("json") for m in modules[2:])


def test_leading_event_loop_frames_go_but_asyncio_the_user_called_stays():
    def outermost_is_the_loop():
        try:
            loop["call"](ipython["call"], user["fail"])
        except ValueError as exc:
            return exc.with_traceback(exc.__traceback__.tb_next)
        raise AssertionError("nothing raised")

    exc = outermost_is_the_loop()
    assert names(exc.__traceback__)[0] == "call"
    assert names(trimmed_traceback(exc.__traceback__)) == ["fail"]
    called_by_user = raised(ipython["call"], loop["call"], user["fail"])
    trim(called_by_user)
    assert names(called_by_user.__traceback__) == ["raised", "call", "fail"]


def test_every_frame_machinery_gives_an_empty_traceback():
    exc = raised(ipython["call"], ours["fail"])
    assert trimmed_traceback(exc.__traceback__.tb_next) is None


def test_causes_contexts_and_group_members_are_trimmed_too():
    def chained():
        try:
            ipython["call"](user["fail"])
        except ValueError as first:
            try:
                ipython["call"](user["fail"])
            except ValueError as second:
                raise ExceptionGroup("both", [first, second]) from KeyError("k")

    group = raised(ipykernel["call"], chained)
    trim(group)
    assert names(group.__traceback__) == ["raised", "chained"]
    first, second = group.exceptions
    assert names(first.__traceback__) == ["chained", "fail"]
    assert names(second.__traceback__) == ["chained", "fail"]
    assert names(group.__context__.__traceback__) == ["chained", "fail"]
    assert isinstance(group.__cause__, KeyError)


def test_a_context_raised_wholly_inside_the_machinery_is_cut():
    exc = raised(ours["after_failing"], user["fail"])
    assert isinstance(exc.__context__, RuntimeError)
    trim(exc)
    assert exc.__context__ is None
    assert names(exc.__traceback__) == ["raised", "fail"]


def test_a_context_the_user_caught_keeps_the_users_frames():
    def caught_by_user():
        try:
            ours["fail"]()
        except RuntimeError:
            user["fail"]()

    exc = raised(caught_by_user)
    trim(exc)
    assert names(exc.__context__.__traceback__) == ["caught_by_user"]


def test_trimming_twice_changes_nothing_and_survives_cycles():
    exc = raised(ipython["call"], user["fail"])
    other = ValueError("other")
    exc.__context__, other.__context__ = other, exc
    other.__traceback__ = exc.__traceback__
    trim(exc)
    once = names(exc.__traceback__)
    trim(exc)
    assert names(exc.__traceback__) == once


def test_an_error_raised_in_linkkernel_is_internal():
    assert is_internal(raised(ipython["call"], ours["fail"]), is_cell)


def test_an_error_in_a_library_linkkernel_called_is_internal():
    assert is_internal(raised(ours["call"], json.loads, "{"), is_cell)


def test_installed_code_is_not_the_users():
    import sysconfig

    assert not is_user_file(json.__file__)
    assert not is_user_file(pytest.__file__)
    assert not is_user_file(f"{sysconfig.get_paths()['stdlib']}/os.py")
    assert not is_user_file("<frozen importlib._bootstrap>")
    assert is_user_file("/tmp/ipykernel_7/123.py") and is_user_file("<string>")
    assert is_user_file(__file__)


def test_the_default_rule_tells_cells_from_libraries():
    assert is_internal(raised(ipython["call"], ours["call"], json.loads, "{"))
    assert not is_internal(raised(ours["call"], user["parse"]))


def test_user_code_run_by_linkkernel_is_the_users_error():
    assert not is_internal(raised(ipython["call"], ours["call"], user["fail"]), is_cell)
    assert not is_internal(raised(ours["call"], user["parse"]), is_cell)


def test_errors_meant_for_the_user_are_never_internal():
    def interrupted():
        raise KeyboardInterrupt

    def refused():
        raise LinkError("bad tag")

    def hinted():
        raise blame_user(NameError("name 'x' is only in the notebook namespace"))

    for f in (interrupted, refused, hinted):
        assert not is_internal(raised(ours["call"], f), lambda filename: False)


def test_contains_group_follows_the_printed_chain():
    group = ExceptionGroup("g", [ValueError()])
    caused = KeyError()
    caused.__cause__ = group
    hidden = KeyError()
    hidden.__context__ = group
    hidden.__suppress_context__ = True
    assert contains_group(group) and contains_group(caused)
    assert not contains_group(hidden) and not contains_group(ValueError())


def test_group_tree_boxes_members_like_python():
    assert group_tree(["ValueError: a", "inner\n+-+ nested"]).splitlines() == [
        "+-+---------------- 1 ----------------",
        "  | ValueError: a",
        "  +---------------- 2 ----------------",
        "  | inner",
        "  | +-+ nested",
        "  +------------------------------------",
    ]


@pytest.mark.parametrize("known", [True, False])
def test_warnings_from_cells_name_the_component(known):
    labels = {"/tmp/ipykernel_1/123.py": ("Component", "train")}
    fmt = format_warning(warnings.formatwarning, labels.get)
    filename = "/tmp/ipykernel_1/123.py" if known else "/lib/thing.py"
    text = fmt(UserWarning("careful"), UserWarning, filename, 2, "warnings.warn('careful')\n")
    if known:
        assert text == "Component train, line 2: UserWarning: careful\n  warnings.warn('careful')\n"
    else:
        assert text == warnings.formatwarning(UserWarning("careful"), UserWarning, filename, 2, "warnings.warn('careful')\n")


def test_warnings_from_the_kernels_own_files_name_no_file():
    import IPython.core.interactiveshell as shell_module

    fmt = format_warning(warnings.formatwarning, lambda filename: None)
    text = fmt(UserWarning("To exit: use 'exit'"), UserWarning, shell_module.__file__, 3831, "warn(...)")
    assert text == "UserWarning: To exit: use 'exit'\n"


def test_functions_passed_between_components_keep_their_cell_file():
    """Their cell's file in the process that loads them (another process's temp folder, here
    pid 1's, is not this one's), so tracebacks and breakpoints find the cell's code."""
    from ipykernel.compiler import get_tmp_directory

    from linkkernel.namespaces import dump, load

    cell = module(
        "__main__",
        "def outer(x):\n    inner = lambda: 1 / x\n    return inner()\n",
        filename="/tmp/ipykernel_1/2925612514.py",
    )
    copy = load(dump("outer", cell["outer"]))
    assert copy is not cell["outer"]
    exc = raised(copy, 0)
    files = [entry.tb_frame.f_code.co_filename for entry in walk(exc.__traceback__)][1:]
    assert files == [f"{get_tmp_directory()}/2925612514.py"] * 2
    assert dump("outer", cell["outer"]).digest == dump("outer", copy).digest
