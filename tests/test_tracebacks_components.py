"""Errors in real component cells (tags `component:a`, `parent:a`) read like Jupyter's, by component."""

from __future__ import annotations

import re

import pytest

from engine_support import Notebook
from support import Kernel
from test_tracebacks_kernel import assert_clean, assert_user_error, run_with_answers


@pytest.fixture
def nb(kernel, tmp_path):
    return Notebook(kernel, tmp_path / "errors.ipynb")


def test_a_component_error_names_the_component(nb):
    nb.add("a", "def f(v):\n    raise ValueError(v * 2)\nf(21)", counted=False).use()
    result = nb.run("a")
    assert_user_error(result, "ValueError", "42")
    text = result.traceback_text
    assert "Component a, line 3\n      1 def f(v):\n      2     raise ValueError(v * 2)\n----> 3 f(21)" in text
    assert "Component a, line 2, in f(v)" in text
    assert "Cell In[" not in text


def test_an_ancestor_error_is_the_ancestors_and_the_child_does_not_run(nb):
    nb.add("clean", "import json\ndef parse():\n    return json.loads('{')\nrows = parse()", counted=False)
    nb.add("train", "print('training')", "clean", counted=False)
    nb.use()
    result = nb.run("train")
    assert "training" not in result.stdout
    assert_user_error(
        result, "JSONDecodeError", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )
    text = result.traceback_text
    assert "in parent component 'clean'" in text
    assert "Component clean, line 4" in text and "Component clean, line 3, in parse()" in text
    assert "json/decoder.py" in text


def test_a_function_keeps_the_component_that_defined_it(nb):
    nb.add("lib", "def risky(x):\n    return 1 / x", counted=False)
    nb.add("use", "total = 0\ntotal += risky(0)", "lib", counted=False)
    nb.use()
    result = nb.run("use")
    assert_user_error(result, "ZeroDivisionError", "division by zero")
    text = result.traceback_text
    assert "Component use, line 2" in text
    assert "Component lib, line 2, in risky(x)" in text


def test_syntax_error_in_a_component(nb):
    nb.add("a", "x = 1\ny = (x +\n     )", counted=False).use()
    result = nb.run("a")
    assert result.reply["content"]["ename"] == "SyntaxError"
    assert result.reply["content"]["evalue"].endswith("(Component a, line 3)")
    lines = result.traceback_text.splitlines()
    assert "  Component a, line 3" in lines
    assert_clean(result.traceback_text)


def test_syntax_error_in_an_ancestor(nb):
    nb.add("a", "if True:\nx = 1", counted=False)
    nb.add("b", "print(x)", "a", counted=False)
    nb.use()
    result = nb.run("b")
    assert result.reply["content"]["ename"] == "IndentationError"
    text = result.traceback_text
    assert "in parent component 'a'" in text and "  Component a, line 2\n    x = 1\n    ^" in text
    assert_clean(text)


def test_name_only_in_the_notebook_namespace(nb, kernel):
    kernel.execute("only_here = 1")
    nb.add("a", "value = only_here + 1", counted=False).use()
    result = nb.run("a")
    assert result.reply["content"]["ename"] == "NameError"
    assert re.search(r"Component a, line 1\n----> 1 value = only_here \+ 1", result.traceback_text)
    assert_clean(result.traceback_text)


def test_warning_in_a_component(nb):
    nb.add("a", "import warnings\nwarnings.warn('careful')", counted=False).use()
    result = nb.run("a")
    assert result.status == "ok"
    assert result.stderr == "Component a, line 2: UserWarning: careful\n  warnings.warn('careful')\n"


def test_debug_after_a_component_error(nb):
    nb.add("a", "def f(v):\n    secret = v * 2\n    raise ValueError(secret)\nf(21)", counted=False).use()
    assert nb.run("a").status == "error"
    output = run_with_answers(nb.kernel, "%debug", ["p secret", "q"])
    assert "> Component a(3)f()" in output and "\n42\n" in output
    assert_clean(output)


def test_interrupt_during_ancestors_shows_no_internals(nb):
    nb.add("slow", "import time\ntime.sleep(30)", counted=False)
    nb.add("child", "print('never')", "slow", counted=False)
    nb.use()
    result = nb.run("child", interrupt_after=1.5, timeout=30)
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    assert "never" not in result.stdout
    assert_clean(result.traceback_text)


def test_a_cached_parents_function_after_a_restart(link_kernelspec, tmp_path):
    kernel = Kernel()
    try:
        nb = Notebook(kernel, tmp_path / "restart.ipynb")
        nb.add("lib", "def risky(x):\n    return 1 / x")
        nb.add("use", "risky(0)", "lib", counted=False)
        nb.use()
        assert nb.run("use").status == "error"
        assert nb.runs() == ["lib"]
        kernel.restart()
        nb.use()
        result = nb.run("use")
        assert nb.runs() == []  # lib came from the cache store: its code never compiled here
        debugged = run_with_answers(kernel, "%debug", ["p x", "q"])
    finally:
        kernel.shutdown()
    assert "> Component lib(3)risky()" in debugged and "\n0\n" in debugged
    assert_clean(debugged)
    assert_user_error(result, "ZeroDivisionError", "division by zero")
    assert "Component lib, line 3, in risky(x)\n      2 def risky(x):\n----> 3     return 1 / x" in result.traceback_text
