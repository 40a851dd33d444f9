"""Pipeline JSON export/import (SPEC §6): round trips on real notebooks, CLI and %link, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat import v4

from support import REPO, Kernel, kernel_env

from linkkernel.declarations import notebook_components, parse_declaration
from linkkernel.sharing import pipeline_json


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "linkkernel.cli", *args],
        cwd=cwd, env=kernel_env(), capture_output=True, text=True, timeout=60,
    )


def write_pipeline_notebook(path: Path) -> None:
    """Both declaration forms, a remote, extra tags and metadata, and a child written above its parent."""
    nb = v4.new_notebook()
    nb.cells = [
        v4.new_markdown_cell("# A pipeline"),
        v4.new_code_cell("report = f'{model} on {len(rows)} rows'", metadata={"tags": ["component:report", "parent:train", "parent:load"]}),
        v4.new_code_cell("rows = [1, 2, 3]", metadata={"tags": ["component:load", "slow"], "jupyter": {"source_hidden": True}}),
        v4.new_code_cell("rows = [r * 2 for r in rows]", metadata={"link": {"name": "clean", "parents": ["load"]}}),
        v4.new_code_cell("model = sum(rows)", metadata={"tags": ["component:train", "parent:clean", "remote:gpu1"], "collapsed": True}),
        v4.new_code_cell("scratch = 1"),
    ]
    nbformat.write(nb, path)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    write_pipeline_notebook(tmp_path / "nb.ipynb")
    return tmp_path


def declared(path: Path) -> list[tuple]:
    nb = nbformat.read(path, as_version=4)
    return [(c.name, c.parents, c.remote, c.source) for c in notebook_components(nb)]


def test_cli_round_trip_is_exact(work: Path):
    exported = cli("export", "nb.ipynb", "-o", "p.json", cwd=work)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == "exported 4 components (load, clean, train, report) to p.json\n"
    doc = json.loads((work / "p.json").read_text())
    assert doc["format"] == "linkkernel-pipeline" and doc["version"] == 1
    assert [c["name"] for c in doc["components"]] == ["load", "clean", "train", "report"]
    assert doc["edges"] == [["load", "clean"], ["clean", "train"], ["train", "report"], ["load", "report"]]
    assert doc["components"][0]["metadata"] == {"tags": ["slow"], "jupyter": {"source_hidden": True}}

    imported = cli("import", "p.json", "-o", "out.ipynb", cwd=work)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout == "wrote out.ipynb: 4 components added (load, clean, train, report)\n"
    out = nbformat.read(work / "out.ipynb", as_version=4)
    nbformat.validate(out)
    assert (out.nbformat, out.nbformat_minor) == (4, 5)
    assert out.metadata.kernelspec.name == "link-python"
    original = {c.name: c for c in notebook_components(nbformat.read(work / "nb.ipynb", as_version=4))}
    for cell, name in zip(out.cells, ["load", "clean", "train", "report"]):
        decl = original[name].declaration
        assert cell.id == original[name].cell_id
        assert cell.source == original[name].source
        # both forms, and they agree
        assert cell.metadata["link"] == decl.to_link_metadata()
        assert parse_declaration({"tags": cell.metadata["tags"]}) == decl
    assert out.cells[0].metadata["tags"] == ["component:load", "slow"]
    assert out.cells[2].metadata["collapsed"] is True

    again = cli("export", "out.ipynb", "-o", "p2.json", cwd=work)
    assert again.returncode == 0, again.stderr
    assert (work / "p2.json").read_text() == (work / "p.json").read_text()


def test_selection_with_and_without_ancestors(work: Path):
    only = cli("export", "nb.ipynb", "-c", "train", "-o", "t.json", cwd=work)
    assert only.stdout == "exported 1 component (train) to t.json; importing it needs clean in the target notebook\n"
    doc = json.loads((work / "t.json").read_text())
    assert doc["requires"] == ["clean"] and doc["edges"] == [["clean", "train"]]

    alone = cli("import", "t.json", "-o", "alone.ipynb", cwd=work)
    assert alone.returncode == 1
    assert alone.stderr == (
        "linkkernel import: component 'train' (cell 1 (id %s)) has parent 'clean', which is not declared in t.json\n"
        % doc["components"][0]["cell_id"]
    )
    assert not (work / "alone.ipynb").exists()

    with_anc = cli("export", "nb.ipynb", "-c", "train", "--with-ancestors", "-o", "a.json", cwd=work)
    assert with_anc.stdout == "exported 3 components (load, clean, train) to a.json\n"
    assert "requires" not in json.loads((work / "a.json").read_text())

    unknown = cli("export", "nb.ipynb", "-c", "nope", "-o", "n.json", cwd=work)
    assert unknown.returncode == 1
    assert unknown.stderr == "linkkernel export: nb.ipynb has no component 'nope' (it declares: load, clean, train, report)\n"
    assert not (work / "n.json").exists()


def test_import_into_refuses_clashes_then_renames(work: Path):
    cli("export", "nb.ipynb", "-c", "clean", "-c", "train", "-o", "ct.json", cwd=work)
    before = (work / "nb.ipynb").read_bytes()
    refused = cli("import", "ct.json", "--into", "nb.ipynb", "-o", "nb.ipynb", cwd=work)
    assert refused.returncode == 1
    assert refused.stderr == (
        "linkkernel import: nb.ipynb already declares 'clean', 'train'; "
        "nothing imported (use --rename to import them under new names)\n"
    )
    assert (work / "nb.ipynb").read_bytes() == before

    renamed = cli("import", "ct.json", "--into", "nb.ipynb", "--rename", "-o", "nb.ipynb", cwd=work)
    assert renamed.returncode == 0, renamed.stderr
    assert renamed.stdout == (
        "wrote nb.ipynb: 2 components added (clean_2, train_2); renamed clean -> clean_2, train -> train_2\n"
    )
    rows = declared(work / "nb.ipynb")
    # clean_2 still hangs off the notebook's own load; the edge inside the document follows the rename
    assert rows[-2:] == [
        ("clean_2", ("load",), None, "rows = [r * 2 for r in rows]"),
        ("train_2", ("clean_2",), "gpu1", "model = sum(rows)"),
    ]
    nb = nbformat.read(work / "nb.ipynb", as_version=4)
    nbformat.validate(nb)
    ids = [c.id for c in nb.cells]
    assert len(ids) == len(set(ids)), "clashing cell ids are replaced"


def test_schema_is_shipped_and_documented():
    shipped = Path(pipeline_json.__file__).with_name("pipeline.schema.json")
    assert json.loads((REPO / "docs" / "pipeline.schema.json").read_text()) == json.loads(shipped.read_text())
    assert pipeline_json.schema()["properties"]["version"] == {"const": 1, "description": pipeline_json.schema()["properties"]["version"]["description"]}


def good_doc() -> dict:
    return {
        "format": "linkkernel-pipeline",
        "version": 1,
        "components": [
            {"name": "a", "code": "x = 1", "parents": []},
            {"name": "b", "code": "y = x", "parents": ["a"], "remote": None},
        ],
        "edges": [["a", "b"]],
    }


def edited(**changes) -> str:
    doc = good_doc()
    for key, value in changes.items():
        doc[key] = value
    return json.dumps(doc)


BAD_DOCUMENTS = {
    "not json": ("{", "p.json: not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    "a list": ("[]", "p.json: not a linkkernel pipeline (a JSON list, expected an object)"),
    "other format": (edited(format="nbformat"), "p.json: not a linkkernel pipeline (format 'nbformat', expected 'linkkernel-pipeline')"),
    "newer version": (edited(version=2), "p.json: pipeline format version 2 is newer than this linkkernel reads (version 1); upgrade linkkernel"),
    "bad version": (edited(version="1"), "p.json: unsupported pipeline format version '1' (this linkkernel reads version 1)"),
    "missing code": (
        edited(components=[{"name": "a", "parents": []}], edges=[]),
        "p.json: invalid pipeline document at $.components[0]: 'code' is a required property",
    ),
    "bad name": (
        edited(components=[{"name": "1a", "code": "", "parents": []}], edges=[]),
        "p.json: invalid pipeline document at $.components[0].name: '1a' does not match '^[A-Za-z_][A-Za-z0-9_.-]*$'",
    ),
    "unknown key": (edited(extra=1), "p.json: unknown key 'extra' (allowed: format, version, generator, requires, components, edges)"),
    "duplicate": (
        edited(components=[{"name": "a", "code": "", "parents": []}, {"name": "a", "code": "", "parents": []}], edges=[]),
        "p.json: duplicate component name 'a': cell 1 and cell 2",
    ),
    "unknown parent": (
        edited(components=[{"name": "a", "code": "", "parents": ["ghost"]}], edges=[["ghost", "a"]]),
        "p.json: component 'a' (cell 1) has parent 'ghost', which is not declared in the document",
    ),
    "cycle": (
        edited(
            components=[{"name": "a", "code": "", "parents": ["b"]}, {"name": "b", "code": "", "parents": ["a"]}],
            edges=[["b", "a"], ["a", "b"]],
        ),
        "p.json: cycle in pipeline: a -> b -> a",
    ),
    "edge missing": (edited(edges=[]), "p.json: edge a -> b (a parent of 'b') is missing from 'edges'"),
    "edge extra": (edited(edges=[["a", "b"], ["b", "a"]]), "p.json: edge b -> a in 'edges' is not declared by 'a''s parents"),
    "required and present": (edited(requires=["a"]), "p.json: 'a' is listed both as a component and under 'requires'"),
}


@pytest.mark.parametrize("case", list(BAD_DOCUMENTS))
def test_bad_documents_are_refused_in_one_line(tmp_path: Path, case: str):
    text, message = BAD_DOCUMENTS[case]
    (tmp_path / "p.json").write_text(text)
    result = cli("import", "p.json", "-o", "out.ipynb", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"linkkernel import: {message}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]


def test_the_good_document_imports(tmp_path: Path):
    (tmp_path / "p.json").write_text(json.dumps(good_doc()))
    result = cli("import", "p.json", "-o", "out.ipynb", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert declared(tmp_path / "out.ipynb") == [("a", (), None, "x = 1"), ("b", ("a",), None, "y = x")]


def test_broken_notebook_is_refused(tmp_path: Path):
    (tmp_path / "nb.ipynb").write_text("{not a notebook")
    result = cli("export", "nb.ipynb", "-o", "p.json", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("linkkernel export: nb.ipynb: not a readable notebook (NotJSONError")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "p.json").exists()
    (tmp_path / "nb.ipynb").write_text('{"cells": 3}')
    result = cli("export", "nb.ipynb", "-o", "p.json", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == "linkkernel export: nb.ipynb: not a notebook (no 'cells' list)\n"
    assert not (tmp_path / "p.json").exists()


def test_notebook_with_a_cycle_is_not_exported(tmp_path: Path):
    nb = v4.new_notebook()
    nb.cells = [
        v4.new_code_cell("", metadata={"tags": ["component:a", "parent:b"]}),
        v4.new_code_cell("", metadata={"tags": ["component:b", "parent:a"]}),
    ]
    nbformat.write(nb, tmp_path / "nb.ipynb")
    result = cli("export", "nb.ipynb", "-o", "p.json", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (1, "linkkernel export: nb.ipynb: cycle in pipeline: a -> b -> a\n")
    assert not (tmp_path / "p.json").exists()


@pytest.fixture(scope="module")
def notebook_kernel(tmp_path_factory, link_kernelspec):
    """A kernel that knows its notebook the documented way (LINKKERNEL_NOTEBOOK)."""
    home = tmp_path_factory.mktemp("magic")
    write_pipeline_notebook(home / "nb.ipynb")
    k = Kernel(cwd=str(home), LINKKERNEL_NOTEBOOK=str(home / "nb.ipynb"))
    yield k, home
    k.shutdown()


def test_link_export_and_import_in_the_kernel(notebook_kernel):
    kernel, home = notebook_kernel
    exported = kernel.execute("%link export -o magic.json")
    assert exported.status == "ok", exported.traceback_text
    assert exported.stdout == "exported 4 components (load, clean, train, report) to magic.json\n"
    explicit = kernel.execute("%link export nb.ipynb -c clean -o clean.json")
    assert explicit.stdout == "exported 1 component (clean) to clean.json; importing it needs load in the target notebook\n"

    imported = kernel.execute("%link import magic.json -o copy.ipynb")
    assert imported.status == "ok", imported.traceback_text
    run_order = ["load", "clean", "train", "report"]
    assert declared(home / "copy.ipynb") == sorted(declared(home / "nb.ipynb"), key=lambda row: run_order.index(row[0]))

    refused = kernel.execute("%link import magic.json --into nb.ipynb -o other.ipynb")
    assert refused.status == "error"
    assert refused.traceback_text == (
        "LinkError: nb.ipynb already declares 'load', 'clean', 'train', 'report'; "
        "nothing imported (use --rename to import them under new names)"
    )
    assert not (home / "other.ipynb").exists()

    usage = kernel.execute("%link import")
    assert usage.traceback_text == (
        "LinkError: %link import: the following arguments are required: pipeline.json, -o/--output "
        "(see '%link import --help')"
    )
    helped = kernel.execute("%link export --help")
    assert helped.status == "ok" and "--with-ancestors" in helped.stdout


def test_link_export_and_import_to_stdout_show_the_document_in_the_cell(notebook_kernel):
    kernel, home = notebook_kernel
    exported = kernel.execute("%link export -o -")
    assert exported.status == "ok", exported.traceback_text
    assert kernel.execute("%link export -o p.json").status == "ok"
    assert exported.stdout == (home / "p.json").read_text()
    assert exported.stderr == "exported 4 components (load, clean, train, report) to /dev/stdout\n"

    imported = kernel.execute("%link import p.json -o -")
    assert imported.status == "ok", imported.traceback_text
    assert [c["metadata"]["link"]["name"] for c in json.loads(imported.stdout)["cells"]] == ["load", "clean", "train", "report"]
    assert imported.stderr == "wrote /dev/stdout: 4 components added (load, clean, train, report)\n"

    for target in ("-", "/dev/stdout"):
        refused = kernel.execute(f"%link cache export {target}")
        assert refused.status == "error" and refused.stdout == ""
        assert refused.traceback_text == (
            "LinkError: /dev/stdout: not written: standard output here is this cell, which shows text, "
            "and this file is binary; give a file name"
        )
    assert not (home / "-").exists()


def test_link_export_without_a_known_notebook_says_how(kernel):
    result = kernel.execute("%link export -o p.json")
    assert result.status == "error"
    assert result.traceback_text == (
        "LinkError: %link export: the kernel does not know its notebook; give its path: %link export NB.ipynb -o FILE"
    )
    usage = kernel.execute("%link cache")
    assert usage.traceback_text == (
        "LinkError: %link cache: the following arguments are required: ACTION (see '%link cache --help')"
    )
