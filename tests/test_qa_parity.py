"""QA: what works in the stock IPython kernel works the same inside component cells (SPEC §1).

A Link Python kernel and a stock `python3` ipykernel run the same cells side by side, and the
messages a frontend would see are compared. Only what differs on purpose is left out: frames
read `Component NAME` instead of `Cell In[n]`, and a component sees its parents' names only.
"""

from __future__ import annotations

import pytest

from support import Kernel, component_meta, start_stock_kernel
from test_tracebacks_kernel import assert_clean


@pytest.fixture(scope="module")
def ours(link_kernelspec: str, tmp_path_factory: pytest.TempPathFactory):
    k = Kernel(cwd=str(tmp_path_factory.mktemp("parity")))
    assert k.execute("base = 10", metadata=component_meta("base"), cell_id="par-base").status == "ok"
    yield k
    k.shutdown()


@pytest.fixture(scope="module")
def stock(link_kernelspec: str, tmp_path_factory: pytest.TempPathFactory):
    k = start_stock_kernel(tmp_path_factory.mktemp("stock"))
    assert k.execute("base = 10").status == "ok"
    yield k
    k.shutdown()


def in_child(kernel: Kernel, name: str, code: str, *parents: str):
    """Run `code` as component `name` (child of `base` unless told otherwise)."""
    return kernel.execute(code, metadata=component_meta(name, *(parents or ("base",))), cell_id=f"par-{name}")


@pytest.mark.parametrize("value", ["b'raw'", "5"], ids=["bytes", "int"])
def test_writing_a_non_string_to_stdout_is_the_users_type_error(ours, stock, value):
    code = f"import sys\nsys.stdout.write({value})"
    expected = stock.execute(code).reply["content"]
    for result in (in_child(ours, "writer", code), ours.execute(code, metadata=component_meta("child_of_writer", "writer"), cell_id="par-cow")):
        content = result.reply["content"]
        assert (content["ename"], content["evalue"]) == (expected["ename"], expected["evalue"])
        assert "linkkernel internal error" not in result.traceback_text
        assert "sys.stdout.write(" in result.traceback_text
        assert_clean(result.traceback_text)
