"""`linkkernel diff`: cells, pipeline, colour, HTML; run as the command users type."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from git_support import code, notebook, pipeline_cells, stream
from support import kernel_env


def before():
    return notebook(
        *pipeline_cells(),
        code("old = 1\n", "component:old", "parent:load", id="c4"),
        code("print('bye')\n", id="c5"),
    )


def after():
    nb = copy.deepcopy(before())
    cells = nb["cells"]
    cells[3]["source"] = "model = sum(clean) / 2\nprint(model)\n"
    cells[3]["metadata"]["tags"] = ["component:fit", "parent:clean", "parent:load", "remote:gpu1"]
    cells[3]["outputs"], cells[3]["execution_count"] = [stream("6\n")], 4
    del cells[4]
    cells.insert(1, cells.pop(4))  # move print('bye') up
    cells.append(code("plot = model\n", "component:plot", "parent:fit", id="c6"))
    return nb


@pytest.fixture
def files(tmp_path):
    a, b = tmp_path / "a.ipynb", tmp_path / "b.ipynb"
    a.write_text(json.dumps(before()))
    b.write_text(json.dumps(after()))
    return a, b


def linkkernel(*args, cwd):
    return subprocess.run([sys.executable, "-m", "linkkernel.cli", *args], cwd=cwd, env=kernel_env(),
                          capture_output=True, text=True)


def test_cells_and_pipeline_changes_plain_when_piped(files, tmp_path):
    done = linkkernel("diff", "a.ipynb", "b.ipynb", cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == "\n".join([
        "--- a.ipynb",
        "+++ b.ipynb",
        "## cell 2 moved from 6 (code)",
        "## cell 5 modified (component fit)",
        "   declaration: component:train parent:clean -> component:fit parent:clean parent:load remote:gpu1",
        "@@ -1,2 +1,2 @@",
        "-model = sum(clean)",
        "+model = sum(clean) / 2",
        " print(model)",
        "## cell 5 removed (component old)",
        "-old = 1",
        "## cell 6 added (component plot)",
        "+plot = model",
        "## pipeline",
        "+ component plot (parents: fit)",
        "- component old",
        "~ component train renamed to fit",
        "+ edge fit -> plot",
        "+ edge load -> fit",
        "- edge load -> old",
        "~ remote of fit: (local) -> gpu1",
    ]) + "\n"


def test_outputs_count_only_when_asked(files, tmp_path):
    plain = linkkernel("diff", "a.ipynb", "b.ipynb", cwd=tmp_path).stdout
    assert "12" not in plain and "execution count" not in plain
    with_outputs = linkkernel("diff", "--outputs", "a.ipynb", "b.ipynb", cwd=tmp_path).stdout
    assert "execution count 3 -> 4" in with_outputs and "outputs changed" in with_outputs
    assert "  -12" in with_outputs and "  +6" in with_outputs

    only_outputs = before()
    only_outputs["cells"][3]["outputs"] = [stream("99\n")]
    (tmp_path / "c.ipynb").write_text(json.dumps(only_outputs))
    assert linkkernel("diff", "a.ipynb", "c.ipynb", cwd=tmp_path).stdout == ""


def test_colour_on_request_and_git_external_diff_arguments(files, tmp_path):
    coloured = linkkernel("diff", "--color", "a.ipynb", "b.ipynb", cwd=tmp_path).stdout
    assert "\x1b[32m+ component plot (parents: fit)\x1b[0m" in coloured
    assert "\x1b[31m- component old\x1b[0m" in coloured
    git_form = linkkernel("diff", "nb.ipynb", "a.ipynb", "1" * 40, "100644", "b.ipynb", "2" * 40, "100644",
                          cwd=tmp_path).stdout
    assert git_form.startswith("--- a/nb.ipynb\n+++ b/nb.ipynb\n")
    added = linkkernel("diff", "nb.ipynb", "/dev/null", "0" * 40, "100644", "b.ipynb", "2" * 40, "100644",
                       cwd=tmp_path).stdout
    assert "## cell 1 added (markdown)" in added and "+ component plot (parents: fit)" in added


def test_html_draws_both_dags_with_the_change_coloured(files, tmp_path):
    done = linkkernel("diff", "a.ipynb", "b.ipynb", "--html", "change.html", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "change.html").read_text()
    assert page.count("<svg") == 2 and "<script" not in page
    old_svg, new_svg = page.split("<svg")[1:]
    assert 'stroke="#cf222e"' in old_svg and ">old<" in old_svg  # removed component in red
    assert 'stroke="#bf8700"' in old_svg and ">train<" in old_svg  # renamed in amber
    assert 'stroke="#1a7f37"' in new_svg and ">plot<" in new_svg  # added in green
    assert "load -&gt; fit" in new_svg and "fit @gpu1" in new_svg


def test_colour_by_default_on_a_terminal_only(files, tmp_path):
    import os
    import pty

    leader, follower = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-m", "linkkernel.cli", "diff", "a.ipynb", "b.ipynb"], cwd=tmp_path,
                              env=kernel_env(), stdout=follower, stderr=subprocess.PIPE, timeout=60)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal is closed once the child is gone
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    assert done.returncode == 0
    assert b"\x1b[32m+ component plot (parents: fit)\x1b[0m" in b"".join(chunks)
    piped = linkkernel("diff", "a.ipynb", "b.ipynb", cwd=tmp_path).stdout
    assert "\x1b[" not in piped
    assert "\x1b[" not in linkkernel("diff", "--no-color", "a.ipynb", "b.ipynb", cwd=tmp_path).stdout
