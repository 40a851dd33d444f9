"""What users see when code fails in a real Link Python kernel: their frames, nothing of ours.

Components are labelled by running cells under `compile.labelled(NAME)`, the same call the
pipeline engine makes, so the real compiler and traceback path are exercised.
"""

from __future__ import annotations

import re

import pytest

from support import CellResult, Kernel

# Any of these in what a user sees means kernel machinery or a temp file leaked through.
LEAKS = ("/tmp/ipykernel", "ipykernel_", "linkkernel/", "IPython/", "ipykernel/", "zmq", "tornado", "interactiveshell")


def assert_clean(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, f"{leak!r} leaked into:\n{text}"


def in_component(name: str, code: str) -> str:
    """A cell that runs `code` as component `name` would be run."""
    return f"with get_ipython().compile.labelled({name!r}):\n    get_ipython().run_cell({code!r})"


def assert_user_error(result: CellResult, ename: str, evalue: str) -> None:
    """The reply and the `error` message both carry the user's exception and the same text."""
    content = result.reply["content"]
    assert result.status == "error"
    assert (content["ename"], content["evalue"]) == (ename, evalue)
    [error] = result.errors
    assert (error["ename"], error["evalue"]) == (ename, evalue)
    assert error["traceback"] == content["traceback"]
    assert_clean(result.traceback_text)
    assert_clean(result.stderr)


def run_with_answers(kernel: Kernel, code: str, answers: list[str]) -> str:
    """Execute `code`, answering each stdin request (pdb prompts) in turn; return stdout."""
    return re.sub(r"\x1b\[[0-9;]*m", "", kernel.execute(code, stdin_reply=answers, timeout=30).stdout)


NESTED = "def f(v):\n    secret = v * 2\n    raise ValueError(secret)\nf(21)"


def test_nested_calls_show_only_cell_frames(kernel):
    result = kernel.execute(NESTED)
    assert_user_error(result, "ValueError", "42")
    text = result.traceback_text
    assert re.search(r"Cell In\[\d+\], line 4\n", text)
    assert re.search(r"Cell In\[\d+\], line 3, in f\(v\)", text)
    assert text.index("line 4") < text.index("line 3, in f")
    assert text.rstrip().endswith("ValueError: 42")


def test_library_frames_the_user_called_stay(kernel):
    result = kernel.execute("import json\njson.loads('{')")
    assert_user_error(result, "JSONDecodeError", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)")
    assert "json/__init__.py" in result.traceback_text
    assert "json/decoder.py" in result.traceback_text


def test_asyncio_the_user_awaited_keeps_its_frames_and_chain(kernel):
    result = kernel.execute("import asyncio\nawait asyncio.wait_for(asyncio.sleep(1), 0.01)")
    assert_user_error(result, "TimeoutError", "")
    text = result.traceback_text
    assert "CancelledError" in text and "asyncio/tasks.py" in text
    assert "The above exception was the direct cause" in text


@pytest.mark.parametrize(
    ("code", "joint"),
    [
        ("try:\n    1/0\nexcept ZeroDivisionError as e:\n    raise KeyError('k') from e", "direct cause"),
        ("try:\n    1/0\nexcept ZeroDivisionError:\n    {}['k']", "During handling"),
    ],
)
def test_cause_and_context_chains(kernel, code, joint):
    result = kernel.execute(code)
    assert_user_error(result, "KeyError", "'k'")
    text = result.traceback_text
    assert text.index("ZeroDivisionError: division by zero") < text.index(joint) < text.index("KeyError: 'k'")
    assert len(re.findall(r"Cell In\[\d+\], line", text)) == 2


def test_exception_group_is_an_error_message_with_every_member(kernel):
    result = kernel.execute(
        "def inner():\n    raise TypeError('b')\n"
        "try:\n    inner()\nexcept TypeError as t:\n    problem = t\n"
        "raise ExceptionGroup('many', [ValueError('a'), ExceptionGroup('inner', [problem])])"
    )
    assert_user_error(result, "ExceptionGroup", "many (2 sub-exceptions)")
    text = result.traceback_text
    assert "+-+---------------- 1 ----------------\n  | ValueError: a" in text
    assert "  | ExceptionGroup: inner (1 sub-exception)" in text
    assert re.search(r"  \|   \| Cell In\[\d+\], line 2, in inner\(\)", text)
    assert "  |   | TypeError: b" in text


def test_syntax_error_caret_and_evalue_name_the_cell(kernel):
    result = kernel.execute("x = (1,\n  2 +)")
    content = result.reply["content"]
    assert re.fullmatch(r"invalid syntax \(Cell In\[\d+\], line 2\)", content["evalue"])
    assert result.errors[0]["evalue"] == content["evalue"]
    lines = result.traceback_text.splitlines()
    i = next(n for n, line in enumerate(lines) if line.strip() == "2 +)")
    assert re.fullmatch(r"  Cell In\[\d+\], line 2", lines[i - 1])
    assert lines[i + 1].index("^") == lines[i].index(")")
    assert_clean(result.traceback_text)


def test_indentation_error_in_a_component(kernel):
    result = kernel.execute(in_component("train", "if True:\nvalue = 1"))
    text = result.traceback_text
    assert "  Component train, line 2\n    value = 1\n    ^\n" in text
    assert "IndentationError: expected an indented block after 'if' statement on line 1" in text
    assert result.errors[0]["evalue"].endswith("(Component train, line 2)")
    assert_clean(text)


def test_tb_after_a_syntax_error_shows_it_again(kernel):
    first = kernel.execute("x = (1,\n  2 +)")
    again = kernel.execute("%tb")
    assert again.traceback_text == first.traceback_text


def test_errors_in_threads_show_the_users_frames(kernel):
    result = kernel.execute(
        "import threading\ndef work():\n    1/0\n"
        "worker = threading.Thread(target=work, name='worker')\nworker.start()\nworker.join()"
    )
    assert result.status == "ok"
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr)
    assert text.startswith("Exception in thread worker:\n")
    assert re.search(r"Cell In\[\d+\], line 3, in work\(\)", text)
    assert "ZeroDivisionError: division by zero" in text
    assert "threading.py" not in text
    assert_clean(text)


def test_errors_in_the_kernels_own_threads_go_to_the_kernel_log(kernel):
    result = kernel.execute(
        "import threading\n_ns = {'__name__': 'linkkernel.background'}\n"
        "exec(compile('def work():\\n    raise RuntimeError(\\'ours\\')', '/site/linkkernel/bg.py', 'exec'), _ns)\n"
        "worker = threading.Thread(target=_ns['work'])\nworker.start()\nworker.join()"
    )
    assert result.status == "ok"
    assert result.stderr == ""


def test_syntax_error_raised_at_run_time(kernel):
    result = kernel.execute("exec('1 +')")
    assert result.reply["content"]["ename"] == "SyntaxError"
    text = result.traceback_text
    assert re.search(r"Cell In\[\d+\], line 1\n    exec\('1 \+'\)", text)
    assert "File <string>:1" in text
    assert_clean(text)


@pytest.mark.parametrize(
    ("mode", "marker"),
    [
        ("Minimal", None),
        ("Plain", "Traceback (most recent call last):"),
        ("Context", "----> 3     raise ValueError(secret)"),
        ("Verbose", "in f(v=21)"),
        ("Docs", "->  f(21)"),
    ],
)
def test_every_xmode(kernel, mode, marker):
    try:
        assert kernel.execute(f"%xmode {mode}").status == "ok"
        result = kernel.execute(NESTED)
    finally:
        kernel.execute("%xmode Context")
    assert_user_error(result, "ValueError", "42")
    text = result.traceback_text
    assert text.rstrip().endswith("ValueError: 42")
    if marker is None:
        assert text.strip() == "ValueError: 42"
    else:
        assert marker in text
        assert "Cell In[" in text


def test_component_frames_carry_the_defining_component(kernel):
    defined = kernel.execute(in_component("train", "def g():\n    x = 1\n    raise RuntimeError('in train')\n"))
    assert defined.status == "ok" and not defined.errors
    called = kernel.execute(in_component("evaluate", "g()"))
    [error] = called.errors
    assert (error["ename"], error["evalue"]) == ("RuntimeError", "in train")
    text = called.traceback_text
    assert "Component evaluate, line 1\n----> 1 g()" in text
    assert "Component train, line 3, in g()" in text
    assert "Cell In[" not in text
    assert_clean(text)


def test_plain_cell_with_a_components_code_is_labelled_as_a_cell(kernel):
    code = "def same():\n    raise LookupError('same code')\nsame()"
    in_train = kernel.execute(in_component("train", code)).traceback_text
    plain = kernel.execute(code).traceback_text
    assert "Component train, line 3" in in_train
    assert re.search(r"Cell In\[\d+\], line 3", plain) and "Component" not in plain


def test_collected_errors_are_already_trimmed(kernel):
    result = kernel.execute(
        "with get_ipython().collect_errors() as errs:\n"
        + "    " + in_component("clean", "def h():\n    1/0\nh()").replace("\n", "\n    ")
        + "\nprint(len(errs), errs[0].ename, errs[0].evalue)\nprint('\\n'.join(errs[0].traceback))"
    )
    assert result.status == "ok" and not result.errors
    text = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert text.startswith("1 ZeroDivisionError division by zero\n")
    assert "Component clean, line 3" in text and "Component clean, line 2, in h()" in text
    assert_clean(text)


def test_debug_lands_in_the_users_frame(kernel):
    kernel.execute(in_component("train", "def f(v):\n    secret = v * 2\n    raise ValueError(secret)\n"))
    assert kernel.execute("f(21)").status == "error"
    output = run_with_answers(kernel, "%debug", ["p secret", "where", "up", "up", "q"])
    assert "> Component train(3)f()" in output
    assert "\n42\n" in output
    assert re.search(r"Cell In\[\d+\]\(1\)<module>\(\)", output)
    assert "*** Oldest frame" in output
    assert_clean(output)


def test_pdb_post_mortem_lands_in_the_users_frame(kernel):
    kernel.execute("%pdb on")
    try:
        output = run_with_answers(kernel, NESTED.replace("f(21)", "f(4)"), ["p secret", "where", "q"])
    finally:
        kernel.execute("%pdb off")
    assert re.search(r"> Cell In\[\d+\]\(3\)f\(\)", output)
    assert "\n8\n" in output
    assert_clean(output)


def test_warnings_name_the_cell_or_component(kernel):
    plain = kernel.execute("import warnings\nwarnings.warn('careful')")
    assert re.fullmatch(r"Cell In\[\d+\], line 2: UserWarning: careful\n  warnings.warn\('careful'\)\n", plain.stderr)
    component = kernel.execute(in_component("train", "import warnings\n\nwarnings.warn('in train')"))
    assert component.stderr == "Component train, line 3: UserWarning: in train\n  warnings.warn('in train')\n"


def test_a_bug_in_linkkernel_is_one_line(kernel):
    sabotage = kernel.execute(
        "import linkkernel.magics as m\n"
        "saved = m.SUBCOMMANDS['help']\n"
        "m.SUBCOMMANDS['help'] = ('linkkernel.magics:no_such_handler', 'broken')"
    )
    assert sabotage.status == "ok"
    try:
        result = kernel.execute("%link help")
    finally:
        kernel.execute("m.SUBCOMMANDS['help'] = saved")
    assert result.status == "error"
    [error] = result.errors
    assert error["ename"] == "AttributeError"
    [line] = error["traceback"]
    assert "linkkernel internal error" in line and "kernel log" in line
    assert_clean(result.traceback_text)
    assert result.stderr == ""
    assert "%link SUBCOMMAND" in kernel.execute("%link help").stdout


def test_link_error_stays_one_line(kernel):
    result = kernel.execute("%link no-such-thing")
    assert result.traceback_text == "LinkError: %link: unknown subcommand 'no-such-thing'; try '%link help'"


def test_system_exit_as_in_ipykernel_and_tb_is_trimmed(kernel):
    result = kernel.execute("import sys\nsys.exit(3)")
    assert result.reply["content"]["ename"] == "SystemExit"
    assert result.traceback_text.strip().endswith("SystemExit: 3")
    assert "use %tb to see the full traceback" in result.traceback_text
    assert result.stderr == "UserWarning: To exit: use 'exit', 'quit', or Ctrl-D.\n"
    full = kernel.execute("%tb")
    assert re.search(r"Cell In\[\d+\], line 2\n      1 import sys\n----> 2 sys.exit\(3\)", full.traceback_text)
    assert_clean(full.traceback_text)


def test_keyboard_interrupt_shows_the_users_line_only(kernel):
    result = kernel.execute("import time\ntime.sleep(30)", interrupt_after=1.0, timeout=20)
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    assert re.search(r"Cell In\[\d+\], line 2\n      1 import time\n----> 2 time.sleep\(30\)", result.traceback_text)
    assert_clean(result.traceback_text)


def test_display_formatter_errors_show_the_users_repr(kernel):
    result = kernel.execute(
        "class Shy:\n    def _repr_html_(self):\n        raise ValueError('no html')\nShy()"
    )
    assert "in Shy._repr_html_(self)" in result.traceback_text
    assert "ValueError: no html" in result.traceback_text
    assert_clean(result.traceback_text)


KERNEL_SIDE = (
    "def run(shell, error):\n"
    "    try:\n"
    "        raise error\n"
    "    except BaseException:\n"
    "        shell.showtraceback()\n"
)


def caught_by_the_kernel(error: str) -> str:
    """A cell whose error is raised and shown by code living in linkkernel, as the engine does."""
    return (
        f"_ns = {{'__name__': 'linkkernel.engine_like'}}\n"
        f"exec(compile({KERNEL_SIDE!r}, '/site/linkkernel/engine_like.py', 'exec'), _ns)\n"
        f"_ns['run'](get_ipython(), {error})"
    )


def test_an_interrupt_caught_in_the_kernel_shows_one_line(kernel):
    result = kernel.execute(caught_by_the_kernel("KeyboardInterrupt()"))
    [error] = result.errors
    assert error["ename"] == "KeyboardInterrupt"
    assert result.traceback_text.strip() == "KeyboardInterrupt"


def test_debug_after_an_error_with_no_user_frame_says_so(kernel):
    kernel.execute(caught_by_the_kernel("KeyboardInterrupt()"))
    result = kernel.execute("%debug")
    assert result.status == "ok" and not result.errors
    assert result.stderr == "No frame of your code to debug: the error was raised inside the kernel.\n"


def test_an_error_raised_in_the_kernel_is_a_linkkernel_bug(kernel):
    result = kernel.execute(caught_by_the_kernel("RuntimeError('lost state')"))
    [line] = result.errors[0]["traceback"]
    assert "linkkernel internal error (RuntimeError: lost state)" in line
    assert_clean(result.traceback_text)


def count_of(result: CellResult) -> int:
    return result.reply["content"]["execution_count"]


def test_functions_from_an_earlier_kernel_session(kernel):
    define = (
        "from ipykernel.compiler import murmur2_x86, get_tmp_hash_seed\n"
        "_src = 'def risky(x):\\n    return 1 / x'\n"
        "_old = f'/tmp/ipykernel_1/{murmur2_x86(_src, get_tmp_hash_seed())}.py'\n"
        "_ns = {'__name__': '__main__'}\n"
        "exec(compile(_src, _old, 'exec'), _ns)\n"
        "risky = _ns['risky']"
    )
    assert kernel.execute(define).status == "ok"
    unknown = kernel.execute("risky(0)")
    assert "Code from another kernel process, line 2, in risky(x)" in unknown.traceback_text
    assert_clean(unknown.traceback_text)
    assert kernel.execute("get_ipython().component_sources = lambda: 1 / 0").status == "ok"
    broken = kernel.execute("risky(0)")
    assert broken.traceback_text == unknown.traceback_text.replace(f"In[{count_of(unknown)}]", f"In[{count_of(broken)}]")
    assert kernel.execute("get_ipython().component_sources = lambda: [('other', 'x = 1'), ('lib', _src)]").status == "ok"
    try:
        known = kernel.execute("risky(0)")
    finally:
        kernel.execute("get_ipython().component_sources = None")
    assert "Component lib, line 2, in risky(x)\n      1 def risky(x):\n----> 2     return 1 / x" in known.traceback_text
    assert_clean(known.traceback_text)
