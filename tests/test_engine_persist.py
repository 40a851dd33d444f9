"""Component results survive a kernel restart; notebooks run headless through nbclient."""

from __future__ import annotations

import json
import re

import pytest

from engine_support import Notebook, value
from support import Kernel, kernel_env


@pytest.fixture(scope="module")
def saved(link_kernelspec, tmp_path_factory):
    """A kernel started for a saved notebook, with the cache at a URL of our choosing."""
    root = tmp_path_factory.mktemp("persist")
    path = root / "persist.ipynb"
    cache = root / "cache"
    k = Kernel(LINKKERNEL_NOTEBOOK=str(path), LINKKERNEL_CACHE=f"file://{cache}")
    nb = Notebook(k, path)
    nb.add("a", "import threading\nx = [1, 2]")
    nb.add("b", "y = sum(x)", "a")
    nb.add("mem", "lock = threading.Lock()", "a")
    nb.add("c", "z = y * 10", "b")
    nb.add("d", "held = lock is not None", "mem")
    nb.save()
    yield nb, cache
    k.shutdown()


def test_restart_finds_fresh_components_in_the_cache(saved):
    nb, cache = saved
    assert nb.run("c").status == "ok"
    assert nb.runs() == ["a", "b", "c"]
    nb.kernel.restart_as_jupyterlab()
    assert nb.run("c").status == "ok"
    assert nb.runs() == ["c"]
    assert value(nb.kernel, "z") == 30
    # The fresh parents did not run again, yet a plain cell sees their outputs, as before.
    assert value(nb.kernel, "x") == [1, 2] and value(nb.kernel, "y") == 3
    nb.kernel.execute("y = 99")
    assert nb.run("c").status == "ok"
    assert value(nb.kernel, "y") == 99, "a cached parent's outputs are published once, not at every run"
    assert list(cache.glob("persist-*/records/c.json"))
    assert list(cache.glob("persist-*/blobs/*/*"))


def test_memory_only_values_rerun_after_restart(saved):
    nb, _ = saved
    result = nb.run("d")
    assert result.status == "ok"
    assert "'lock' (_thread.lock) cannot be serialised" in result.stderr
    nb.runs()
    nb.kernel.restart_as_jupyterlab()
    assert nb.run("d").status == "ok"
    assert nb.runs() == ["mem", "d"]


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_a_value_lost_from_the_cache_runs_its_component_again(saved, damage):
    """A blob file deleted or damaged in the cache (a disk, a cleanup script, a sync tool)
    makes the component that made it stale: it runs again, with one line saying why."""
    nb, cache = saved
    assert nb.run("c").status == "ok"
    nb.runs()
    nb.kernel.restart_as_jupyterlab()  # values are read from the cache files again
    digest = json.loads(next(cache.glob("persist-*/records/a.json")).read_text())["namespace"]["x"]
    blob = next(cache.glob(f"persist-*/blobs/*/{digest}"))
    if damage == "delete":
        blob.unlink()
    else:
        blob.write_bytes(blob.read_bytes()[:-1] + b"X")
    result = nb.run("c")
    assert result.status == "ok", result.traceback_text
    assert nb.runs() == ["a", "b", "c"]  # a ran again, so its descendants are stale
    assert value(nb.kernel, "z") == 30
    assert result.stderr.startswith("linkkernel: ") and "running the components that made it again" in result.stderr
    assert result.stderr.count("\n") == 1
    assert "clear_output" not in [m["msg_type"] for m in result.messages], "the line said above the progress is kept"
    nb.kernel.restart_as_jupyterlab()
    assert nb.run("c").status == "ok"
    assert nb.runs() == ["c"], "the value was written again"


def test_status_graph_outputs_run_and_cache_clear(saved):
    nb, cache = saved
    k = nb.kernel
    nb.add("b", "y = sum(x)\nprint('b says', y)", "a").save()
    status = k.execute("%link status")
    assert status.status == "ok"
    lines = status.stdout.splitlines()
    assert lines[0].split() == ["name", "parents", "state", "last", "run", "duration", "where"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert "stale" in rows["b"] and "stale" in rows["c"] and "fresh" in rows["a"]
    assert "local" in rows["a"]
    assert "never" not in rows["a"]

    graph = k.execute("%link graph")
    data = graph.displays[0]["data"]
    assert data["image/svg+xml"].startswith("<svg") and 'class="node stale"' in data["image/svg+xml"]
    assert "b [stale] <- a" in data["text/plain"]

    ran = k.execute("%link run c")
    assert ran.status == "ok", ran.traceback_text
    assert "ran: b, c" in ran.stdout
    assert nb.runs() == ["b", "c"]
    assert "b says 3" in k.execute("%link outputs b").stdout
    assert "everything was fresh" in k.execute("%link run c").stdout
    assert k.execute("%link run c --force").stdout.strip().endswith("ran: a, b, c")
    nb.runs()
    assert k.execute("%link run --all").stdout.strip().endswith("ran: mem, d")
    assert nb.runs() == ["mem", "d"]

    bad = k.execute("%link run nope")
    assert bad.status == "error" and "no component named 'nope'" in bad.traceback_text
    assert len(bad.traceback_text.strip().splitlines()) == 1
    assert "no component named 'never_ran'" in k.execute("%link outputs never_ran").traceback_text

    cleared = k.execute("%link cache clear")
    assert cleared.status == "ok" and "cleared the component cache" in cleared.stdout
    assert not list(cache.glob("persist-*/records/*.json"))
    assert nb.run("c").status == "ok"
    assert nb.runs() == ["a", "b", "c"]

    help_text = k.execute("%link help").stdout
    for sub in ("status", "graph", "outputs", "run", "cache", "notebook"):
        assert f"  {sub} " in help_text


def test_nbclient_runs_a_notebook_matched_by_source(link_kernelspec, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    path = tmp_path / "headless.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "link-python", "display_name": "Link Python", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("print('loading')\nbase = 20", metadata={"tags": ["component:load"]}),
        nbformat.v4.new_code_cell("answer = base + 22\nprint(answer)", metadata={"link": {"name": "use", "parents": ["load"]}}),
        nbformat.v4.new_code_cell("print('plain sees', answer)"),
    ]
    nbformat.write(nb, path)
    env = kernel_env(LINKKERNEL_NOTEBOOK=str(path))
    client = NotebookClient(nb, kernel_name="link-python", timeout=60, resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    texts = ["".join(o.get("text", "") for o in cell.outputs) for cell in nb.cells]
    assert texts == ["loading\n", "42\n", "plain sees 42\n"]
    # and an error in a component reaches nbclient as the user's own exception
    nb.cells[1].source = "answer = base / 0"
    nbformat.write(nb, path)
    from nbclient.exceptions import CellExecutionError

    with pytest.raises(CellExecutionError) as info:
        NotebookClient(nb, kernel_name="link-python", timeout=60).execute(env=env)
    assert info.value.ename == "ZeroDivisionError"
    traceback = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(nb.cells[1].outputs[0]["traceback"]))
    assert "Component use" in traceback, traceback


def test_jpy_session_name_tells_the_kernel_its_notebook(link_kernelspec, tmp_path):
    path = tmp_path / "served.ipynb"
    k = Kernel(JPY_SESSION_NAME=str(path))
    try:
        nb = Notebook(k, path)
        nb.add("parent_only_on_disk", "from_disk = 'yes'").add("kid", "got = from_disk", "parent_only_on_disk").save()
        assert nb.run("kid").status == "ok"
        assert nb.runs() == ["parent_only_on_disk", "kid"]
        assert str(path) in k.execute("%link notebook").stdout
    finally:
        k.shutdown()


def test_dataframes_flow_through_components_and_the_cache(link_kernelspec, tmp_path):
    """pandas is what most components hold: a child adding a column and editing a cell
    changes its own frame only; a sibling, the parent's cached value and a restarted kernel
    see each as it was made."""
    path = tmp_path / "frames.ipynb"
    k = Kernel(LINKKERNEL_NOTEBOOK=str(path), LINKKERNEL_CACHE=f"file://{tmp_path / 'cache'}")
    try:
        nb = Notebook(k, path)
        nb.add("load", "import pandas as pd\ndf = pd.DataFrame({'a': range(100_000), 's': ['x', 'y'] * 50_000})\ndf['s'] = df.s.astype('category')")
        nb.add("feat", "df['c'] = df.a * 2.0\ndf.loc[0, 'a'] = -1", "load")
        nb.add("peek", "seen = (df.columns.tolist(), int(df.loc[0, 'a']))", "load")
        nb.add("report", "shown = (df.columns.tolist(), int(df.loc[0, 'a']), float(df.c.sum()), str(df.s.dtype))", "feat")
        nb.save()
        for name in ("report", "peek"):
            assert nb.run(name).status == "ok"
        assert nb.runs() == ["load", "feat", "report", "peek"]
        expected = (["a", "s", "c"], -1, 9999900000.0, "category")
        assert value(k, "shown") == expected
        assert value(k, "seen") == (["a", "s"], 0)
        k.restart_as_jupyterlab()
        for name in ("report", "peek"):
            assert nb.run(name).status == "ok"
        assert nb.runs() == ["report", "peek"]  # their parents came from the cache
        assert value(k, "shown") == expected and value(k, "seen") == (["a", "s"], 0)
    finally:
        k.shutdown()


def test_a_cache_in_s3_serves_a_restarted_kernel(link_kernelspec, tmp_path):
    """SPEC §3: the cache store may be any fsspec URL; an S3 bucket (moto on loopback, its
    endpoint from AWS_ENDPOINT_URL as boto reads it) keeps results across a restart."""
    import boto3

    from remote_support import S3_ENV, MotoServer

    server = MotoServer()
    server.make_bucket("cache")
    path = tmp_path / "s3.ipynb"
    k = Kernel(LINKKERNEL_NOTEBOOK=str(path), LINKKERNEL_CACHE="s3://cache/team", AWS_ENDPOINT_URL=server.endpoint, **S3_ENV)
    try:
        nb = Notebook(k, path)
        nb.add("a", "import numpy as np\nx = np.arange(1_000_000)")
        nb.add("b", "y = int(x.sum())", "a")
        nb.save()
        assert nb.run("b").status == "ok" and nb.runs() == ["a", "b"]
        k.restart_as_jupyterlab()
        assert nb.run("b").status == "ok" and nb.runs() == ["b"]  # a came from the bucket
        assert value(k, "y") == 499999500000
        s3 = boto3.client(
            "s3", endpoint_url=server.endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
        )
        assert s3.list_objects_v2(Bucket="cache", Prefix="team/")["KeyCount"] > 0
    finally:
        k.shutdown()
        server.stop()
