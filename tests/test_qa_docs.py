"""What a user reads about linkkernel stays true: the command lines the README and docs/ show
parse with the real argparse configuration, every `--help` (of `linkkernel` and of `%link` in
a real kernel) answers with its usage, ARCHITECTURE.md names exactly the package's modules,
`linkkernel export` writes what its schema allows, and `linkkernel import` refuses in one line
what the schema and docs/pipeline-format.md say it refuses.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import zmq

from remote_support import WorkerProcess, make_key
from support import REPO, Kernel, component_meta, kernel_env

from linkkernel.cli import COMMANDS, command_parser, main
from linkkernel.magics import SUBCOMMANDS
from linkkernel.sharing import pipeline_json

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# A synopsis's placeholders of typed options, as a user would fill them in.
SAMPLE_VALUES = {"N": "2", "SIZE": "1G"}
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def code_spans(text: str) -> list[str]:
    """Each line of the fenced blocks, then each inline code span (a span broken over two
    lines joined again, as the reader reads it)."""
    lines = [line for block in FENCE.findall(text) for line in block.splitlines()]
    inline = re.findall(r"`([^`]+)`", FENCE.sub("", text))
    return lines + [" ".join(span.split()) for span in inline]


def linkkernel_argv(words: list[str]) -> list[str] | None:
    """The arguments given to `linkkernel` in a shell command's words, or None when the
    command is not linkkernel (`.venv/bin/linkkernel` and `python -m linkkernel` are)."""
    if words and re.fullmatch(r"(\S*/bin/)?linkkernel", words[0]):  # not $XDG_CACHE_HOME/linkkernel
        return words[1:]
    if len(words) > 2 and re.fullmatch(r"(.*/)?python3?", words[0]) and words[1:3] == ["-m", "linkkernel"]:
        return words[3:]
    return None


def documented_command_lines() -> list[tuple[str, list[str]]]:
    """(file: line as written, its arguments as a user would type them) for every `linkkernel`
    command the docs show; a synopsis's `[optional]` parts are typed, `...` is dropped."""
    found = []
    for doc in DOCS:
        for span in code_spans(doc.read_text(encoding="utf-8")):
            for command in span.split("&&"):
                argv = linkkernel_argv(shlex.split(command))
                if argv is not None:
                    typed = [SAMPLE_VALUES.get(w, w) for w in (w.strip("[]") for w in argv) if w and w != "..."]
                    found.append((f"{doc.name}: {command.strip()}", typed))
    return found


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public way to list a parser's subcommands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and nested subcommand: ('run',), ('cache', 'export'), ..."""
    paths = []
    for name, sub in subcommands(parser).items():
        paths.append((*path, name))
        paths.extend(command_paths(sub, (*path, name)))
    return paths


PARSER = command_parser()
DOCUMENTED = documented_command_lines()


def test_the_docs_show_command_lines_at_all():
    """The extraction itself works: the README's worker lines and a broken-over-two-lines
    inline span of docs/ are among what the next test checks."""
    shown = {where for where, _ in DOCUMENTED}
    assert "README.md: linkkernel workers ping gpu1" in shown
    assert "README.md: .venv/bin/linkkernel demo" in shown
    assert not [where for where in shown if "XDG_CACHE_HOME" in where]
    assert "cache-archive.md: linkkernel cache import cache.tar.gz --notebook NB.ipynb --trust" not in shown
    assert "cache-archive.md: linkkernel cache import cache.tar.gz --notebook NB.ipynb [--trust]" in shown
    assert len(DOCUMENTED) > 15


@pytest.mark.parametrize("where,argv", DOCUMENTED, ids=[where for where, _ in DOCUMENTED])
def test_every_documented_command_line_parses(where: str, argv: list[str], capsys):
    node, rest = PARSER, list(argv)
    while rest and rest[0] in subcommands(node):  # `linkkernel export` named in a sentence
        node = subcommands(node)[rest.pop(0)]
    if not rest and not [a for a in argv if a.startswith("-")]:
        return
    try:
        PARSER.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: does not parse (exit {exc.code}): {capsys.readouterr().err.strip()}")


def test_every_documented_link_magic_names_a_subcommand():
    shown = [span for doc in DOCS for span in code_spans(doc.read_text(encoding="utf-8")) if span.startswith("%link ")]
    assert shown
    unknown = [span for span in shown if span.split()[1] not in SUBCOMMANDS]
    assert not unknown


def test_linkkernel_help_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "linkkernel", "--help"], capture_output=True, text=True, env=kernel_env(), cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: linkkernel")
    assert all(f"  {name} " in done.stdout for name in COMMANDS)


@pytest.mark.parametrize("path", command_paths(PARSER), ids=" ".join)
def test_every_subcommand_help_exits_0_with_its_usage(path: tuple[str, ...], capsys):
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    out, err = capsys.readouterr()
    assert exited.value.code == 0, err
    assert out.startswith(f"usage: linkkernel {' '.join(path)}"), out
    assert err == ""


def link_magic_paths() -> list[tuple[str, ...]]:
    """Every `%link` subcommand, and the nested ones: those of the CLI twin (cache, workers),
    and `cache clear`, which only the kernel has."""
    nested = [(name, sub) for name in SUBCOMMANDS if name in COMMANDS for sub in subcommands(subcommands(PARSER)[name])]
    return [(name,) for name in SUBCOMMANDS] + nested + [("cache", "clear")]


def test_every_link_subcommand_help_works_in_a_real_kernel(kernel: Kernel):
    listing = kernel.execute("%link help")
    assert listing.status == "ok" and listing.stdout.startswith("%link SUBCOMMAND [ARGS]\n")
    for path in link_magic_paths():
        line = " ".join(path)
        shown = kernel.execute(f"%link {line} --help")
        assert shown.status == "ok", (line, shown.traceback_text)
        assert shown.stderr == ""
        if path == ("help",):
            assert shown.stdout == listing.stdout
        else:
            assert shown.stdout.startswith(f"usage: %link {line}"), (line, shown.stdout)
        if len(path) == 1:
            assert kernel.execute(f"%link help {line}").stdout == shown.stdout


def architecture_rows() -> list[str]:
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    return re.findall(r"^\| `([^`]+)` \|", text, re.M)


def test_architecture_lists_exactly_the_modules():
    rows = architecture_rows()
    listed = {row for row in rows if row.endswith(".py")}
    modules = {str(p.relative_to(REPO)) for p in (REPO / "linkkernel").rglob("*.py") if p.name != "__init__.py"}
    assert sorted(modules - listed) == [], "modules ARCHITECTURE.md does not list"
    assert sorted(listed - modules) == [], "ARCHITECTURE.md rows of modules that do not exist"
    assert len(rows) == len(set(rows))
    assert all((REPO / row).exists() for row in rows)


# ---------------------------------------------------------------- the pipeline document


def notebook(path: Path) -> Path:
    cells = [
        {"source": "x = 1", "meta": {**component_meta("load"), "collapsed": True}, "id": "c-load"},
        {"source": "y = x", "meta": {**component_meta("clean", "load"), "tags": ["component:clean", "parent:load", "slow"]}, "id": "c-clean"},
        {"source": "z = y", "meta": component_meta("train", "clean", "load", remote="gpu1"), "id": "c-train"},
    ]
    nb = {
        "nbformat": 4, "nbformat_minor": 5, "metadata": {},
        "cells": [{"cell_type": "code", "id": c["id"], "metadata": c["meta"], "source": c["source"],
                   "outputs": [], "execution_count": None} for c in cells],
    }
    path.write_text(json.dumps(nb))
    return path


@pytest.mark.parametrize("selection", [[], ["-c", "train"], ["-c", "train", "--with-ancestors"]])
def test_export_writes_documents_its_own_schema_accepts(tmp_path: Path, selection: list[str], capsys):
    schema = json.loads((REPO / "linkkernel" / "sharing" / "pipeline.schema.json").read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    nb = notebook(tmp_path / "nb.ipynb")
    assert main(["export", str(nb), *selection, "-o", str(tmp_path / "p.json")]) == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "p.json").read_text())
    jsonschema.validate(doc, schema)
    entry = doc["components"][-1]
    assert entry["remote"] == "gpu1" and entry["cell_id"] == "c-train"
    if selection[-1:] == ["train"]:
        assert doc["requires"] == ["clean", "load"]


def test_the_example_pipeline_exports_to_a_valid_document(tmp_path: Path, capsys):
    out = tmp_path / "p.json"
    assert main(["export", str(REPO / "examples" / "iris_pipeline.ipynb"), "-o", str(out)]) == 0, capsys.readouterr().err
    jsonschema.validate(json.loads(out.read_text()), pipeline_json.schema())


def refused_import(tmp_path: Path, doc: dict, capsys) -> str:
    (tmp_path / "p.json").write_text(json.dumps(doc))
    status = main(["import", str(tmp_path / "p.json"), "-o", str(tmp_path / "out.ipynb")])
    out, err = capsys.readouterr()
    assert status == 1, out + err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "out.ipynb").exists()
    return err.rstrip("\n").replace(f"{tmp_path}/", "")


def exported(tmp_path: Path, capsys) -> dict:
    assert main(["export", str(notebook(tmp_path / "nb.ipynb")), "-o", str(tmp_path / "good.json")]) == 0
    capsys.readouterr()
    return json.loads((tmp_path / "good.json").read_text())


def test_a_misspelled_key_is_named_with_the_key_it_means(tmp_path: Path, capsys):
    doc = exported(tmp_path, capsys)
    doc["components"][1]["parnets"] = doc["components"][1].pop("parents")
    assert refused_import(tmp_path, doc, capsys) == (
        "linkkernel import: p.json: component 2 ('clean'): unknown key 'parnets' (did you mean 'parents'?)"
    )
    doc = exported(tmp_path, capsys)
    doc["edgse"] = doc.pop("edges")
    assert refused_import(tmp_path, doc, capsys) == "linkkernel import: p.json: unknown key 'edgse' (did you mean 'edges'?)"
    doc = exported(tmp_path, capsys)
    doc["components"][0]["owner"] = "me"
    assert refused_import(tmp_path, doc, capsys) == (
        "linkkernel import: p.json: component 1 ('load'): unknown key 'owner' "
        "(allowed: name, code, parents, remote, cell_id, metadata)"
    )


@pytest.mark.parametrize("tag,spelling", [("Parent:load", "parent:load"), ("component=x", "component:x")])
def test_a_misspelled_declaration_tag_in_metadata_is_refused(tmp_path: Path, tag: str, spelling: str, capsys):
    """Written into the notebook, the tag would make the kernel and `export` refuse it."""
    doc = exported(tmp_path, capsys)
    doc["components"][1]["metadata"]["tags"] = [tag]
    assert refused_import(tmp_path, doc, capsys) == (
        f"linkkernel import: p.json: component 2 ('clean'): metadata: malformed tag {tag!r}: write {spelling!r}"
    )


def test_the_format_page_lists_what_import_refuses():
    page = (REPO / "docs" / "pipeline-format.md").read_text(encoding="utf-8")
    refusals = " ".join(page.split("Refused with one line and nothing written:")[1].split())
    for what in ("invalid JSON", "lone surrogate", "another format or version", "a key the schema does not name",
                 "repeats a declaration", "misspelled", "a notebook cell cannot hold", "under `requires`",
                 "edges that disagree", "unknown parents", "duplicate names", "cycles", "--rename"):
        assert what in refusals, what
    description = pipeline_json.schema()["description"]
    for what in ("a key this schema does not name", "lone surrogate", "duplicate component names", "a cycle",
                 "`edges` that disagree", "under `requires`", "repeats a declaration"):
        assert what in description, what


# ---------------------------------------------------------------- the worker's start-up log


def unsafe_curve_key(path: Path) -> str:
    """Write a CurveZMQ secret whose public key holds characters a shell reads ($, &, (...)."""
    while True:
        public, secret = zmq.curve_keypair()
        if shlex.quote(public.decode()) != public.decode():
            make_key(path).write_bytes(secret + b"\n")
            return public.decode()


def test_the_worker_logs_its_curve_key_shell_quoted(tmp_path: Path):
    public = unsafe_curve_key(tmp_path / "curve.key")
    worker = WorkerProcess(str(tmp_path / "store"), make_key(tmp_path / "key"), tmp_path, "--curve-key-file", str(tmp_path / "curve.key"))
    try:
        shown = re.search(r"register it with --server-key\): (.*)", worker.log()).group(1)
    finally:
        worker.stop()
    pasted = subprocess.run(["sh", "-c", f"printf %s {shown}"], capture_output=True, text=True, timeout=10)
    assert pasted.stdout == public, shown


def test_a_pattern_is_read_as_json_schema_reads_it(tmp_path: Path, capsys):
    """`$` ends the string in JSON Schema; Python's `$` matched before a final newline, and a
    cell id "a\\n" went into the notebook."""
    doc = exported(tmp_path, capsys)
    doc["components"][0]["cell_id"] = "a\n"
    assert refused_import(tmp_path, doc, capsys) == (
        "linkkernel import: p.json: invalid pipeline document at $.components[0].cell_id: "
        "'a\\n' does not match '^[a-zA-Z0-9-_]+$'"
    )
