"""Plain cells fail exactly as in stock ipykernel: same frames, same lines, same error.

A stock `python3` kernelspec is installed into a private prefix, and both kernels run the same
cells in the same order (so `In[n]` numbers agree).
"""

from __future__ import annotations

import pytest

from support import Kernel, start_stock_kernel

CELLS = [
    "def f(v):\n    secret = v * 2\n    raise ValueError(secret)\nf(21)",
    "import json\njson.loads('{')",
    "try:\n    1/0\nexcept ZeroDivisionError as e:\n    raise KeyError('k') from e",
    "try:\n    1/0\nexcept ZeroDivisionError:\n    {}['k']",
    "import asyncio\nawait asyncio.wait_for(asyncio.sleep(1), 0.01)",
    "class Shy:\n    def _repr_html_(self):\n        raise ValueError('no html')\nShy()",
    "import traitlets\nclass Knob(traitlets.HasTraits):\n    level = traitlets.Int()\nKnob().level = 'high'",
    "def deep(n):\n    return 1 / n if n == 0 else deep(n - 1)\ndeep(3)",
    "%time f(5)",
    "%xmode Plain",
    "f(1)",
    "%xmode Verbose",
    "f(2)",
    "%xmode Minimal",
    "f(3)",
    "%xmode Docs",
    "f(4)",
    "%xmode Context",
    "if True:\nprint(1)",
    "x = (1,\n  2 +)",
]


@pytest.fixture(scope="module")
def kernels(link_kernelspec, tmp_path_factory):
    ours, stock = Kernel(), start_stock_kernel(tmp_path_factory.mktemp("stock"))
    results = [(ours.execute(cell), stock.execute(cell)) for cell in CELLS]
    yield results
    ours.shutdown()
    stock.shutdown()


@pytest.mark.parametrize("index", range(len(CELLS)), ids=[c.splitlines()[0][:30] for c in CELLS])
def test_plain_cell_errors_match_stock_ipykernel(kernels, index):
    ours, stock = kernels[index]
    assert ours.status == stock.status
    assert ours.traceback_text == stock.traceback_text
    assert ours.stderr == stock.stderr
    if ours.status == "error":
        mine, theirs = ours.reply["content"], stock.reply["content"]
        assert mine["ename"] == theirs["ename"]
        if mine["ename"] in ("SyntaxError", "IndentationError"):
            # Stock names the kernel's temp file in the message; we name the cell.
            assert mine["evalue"].split(" (")[0] == theirs["evalue"].split(" (")[0]
            assert "(Cell In[" in mine["evalue"] and ".py, line" in theirs["evalue"]
        else:
            assert mine["evalue"] == theirs["evalue"]
