"""Where the kernel learns component declarations (SPEC §2).

Three sources, newest wins per cell: the executing request (metadata + cellId), cells this
kernel executed before (by cellId), and the saved notebook file, re-read when it changes on
disk (linkkernel.filecache: its stat, not trusted when read within a tick of a save).
Requests without a cellId (nbclient, papermill) are matched to the saved notebook's cell by
source. Only the executing cell's metadata ever reaches a kernel, so the file is what
tells us about cells not executed in this session.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from linkkernel.declarations import (
    DECLARING_KEYS,
    NAME_PATTERN,
    NOTEBOOK_ENCODING,
    Component,
    DeclarationError,
    cell_source,
    describe_cell,
    notebook_problem,
    parse_declaration,
)
from linkkernel.errors import LinkError
from linkkernel.filecache import FileCache
from linkkernel.heldfolder import NAMES_OPEN_FILES, name_of

# Keys JupyterLab adds to the request metadata that are not part of the cell's metadata.
TRANSPORT_KEYS = ("cellId", "deletedCells", "recordTiming")
# papermill: the tag of the cell whose values parameters override, the tag of the cell it
# injects after it, and the first line of that injected cell (its default `comment`).
PARAMETERS_TAG, INJECTED_TAG, INJECTED_HEADER = "parameters", "injected-parameters", "# Parameters"
NO_NOTEBOOK_HINT = (
    "linkkernel: cells arrive without ids or tags (nbclient, papermill) and no notebook file is known, "
    "so tagged cells run as plain cells; give the notebook with LINKKERNEL_NOTEBOOK=PATH in the kernel's "
    "environment or %link notebook PATH in its first cell"
)
# nbformat 4.5's cell id: what JupyterLab and Notebook 7 send as cellId.
NBFORMAT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


@dataclass
class Cell:
    """One cell as a source knows it. `code` False: a saved markdown or raw cell, which
    declares nothing whatever its metadata says; it is kept so that a cell executed as
    code and since turned into markdown (JupyterLab keeps its id) is known to be no
    component once saved."""

    key: str
    cell_id: str | None
    source: str
    metadata: Mapping[str, Any]
    index: int | None
    at: float
    code: bool = True


@dataclass(frozen=True)
class Malformed:
    """A cell whose declaration cannot be read, and the component names it seems to declare
    (from a well-formed `component:NAME` tag or `link.name`), so a run knows whether it needs it."""

    error: DeclarationError
    names: frozenset[str]


def _claimed_names(metadata: Any) -> frozenset[str]:
    if not isinstance(metadata, Mapping):
        return frozenset()
    tags = metadata.get("tags")
    names = [t.partition(":")[2] for t in tags if isinstance(t, str) and t.startswith("component:")] if isinstance(tags, list) else []
    link = metadata.get("link")
    if isinstance(link, Mapping):
        names.append(link.get("name"))
    return frozenset(n for n in names if isinstance(n, str) and NAME_PATTERN.match(n))


def _declaring(metadata: Any) -> Any:
    """The part of a cell's metadata its declaration is read from: what an execution must
    repeat for the declarations to stay as they were (Sources._remember). JupyterLab sends
    `trusted` with every cell but saves none, and adds `execution` timings, `collapsed`,
    `scrolled`, `jupyter` as the user works: none of them declares anything."""
    if not isinstance(metadata, Mapping):
        return metadata
    return {key: metadata[key] for key in DECLARING_KEYS if key in metadata}


def _declares(metadata: Mapping[str, Any]) -> bool:
    """Whether a cell's metadata declares a component, or tries to (a malformed declaration)."""
    try:
        return parse_declaration(metadata) is not None
    except DeclarationError:
        return True


def _foreign_id(cell_id: str, cells: list[Cell]) -> bool:
    """Whether a request's cell id may name a saved cell other than the one with that id.

    JupyterLab and Notebook 7 send the nbformat id, so an id the saved notebook lacks is a
    cell added since the save, never a saved cell, even one with the same code (a copy).
    VS Code sends its own cell URIs, and a notebook saved without ids (nbformat 4.4) gets
    ids the file lacks until the next save: those cells are found by code or name instead.
    """
    return not NBFORMAT_ID.match(cell_id) or not any(c.cell_id for c in cells)


@dataclass
class Declared:
    """Every declared component, and the cells whose declarations are malformed.

    A malformed cell blocks only what needs it: a run that reaches a name such a cell
    claims, or a name no valid cell declares while a nameless malformed cell might.
    """

    components: list[Component]
    malformed: list[Malformed]

    def all(self) -> list[Component]:
        """Every component, for a command that needs the whole pipeline."""
        if self.malformed:
            raise self.malformed[0].error
        return self.components

    def relevant(self, targets: list[str]) -> list[Component]:
        """The components named by `targets` or reachable through their parents (all
        same-named cells, so a duplicate still shows)."""
        by_name: dict[str, list[Component]] = {}
        for component in self.components:
            by_name.setdefault(component.name, []).append(component)
        claimed = {name: m for m in self.malformed for name in m.names}
        nameless = [m for m in self.malformed if not m.names]
        wanted, todo = set(), list(targets)
        while todo:
            name = todo.pop()
            if name in wanted:
                continue
            if name in claimed:
                raise claimed[name].error
            if name not in by_name:
                if nameless:
                    raise nameless[0].error
                continue
            wanted.add(name)
            for component in by_name[name]:
                todo.extend(component.parents)
        return [c for c in self.components if c.name in wanted]

    def blocked(self) -> dict[str, DeclarationError]:
        """Each component a malformed cell keeps from running, with that cell's error."""
        if not self.malformed:  # the common case; else each component walks its ancestors
            return {}
        found = {}
        for component in self.components:
            try:
                self.relevant([component.name])
            except DeclarationError as exc:
                found[component.name] = exc
        return found


def papermill_parameters(code: str) -> list[str] | None:
    """The names papermill's injected parameters cell assigns, in order; None for other code."""
    if code.lstrip().partition("\n")[0].strip() != INJECTED_HEADER:
        return None
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    return [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)]


def _tagged(cell: Cell, tag: str) -> bool:
    tags = cell.metadata.get("tags") if isinstance(cell.metadata, Mapping) else None
    return isinstance(tags, list) and tag in tags


def notebook_path_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """LINKKERNEL_NOTEBOOK, whatever the file is called: the user named it, as with
    `%link notebook PATH`. Else JPY_SESSION_NAME, which jupyter_server sets to the notebook's
    path, but only when it names a notebook: a console's session is not one."""
    chosen = environ.get("LINKKERNEL_NOTEBOOK")
    if chosen:
        return os.path.abspath(os.path.expanduser(chosen))
    session = environ.get("JPY_SESSION_NAME")
    if session and session.endswith(".ipynb"):
        return os.path.abspath(session)
    return None


def _in_trash(path: str) -> bool:
    """Whether `path` is in a freedesktop trash (~/.local/share/Trash/files, a volume's
    .Trash-UID/files or .Trash/UID/files), where JupyterLab's delete moves a notebook
    (send2trash renames it there): not a rename for the kernel, and its cache, to follow."""
    parts = path.split(os.sep)
    return any(
        part == "files" and i >= 2 and (parts[i - 1] == "Trash" or parts[i - 1].startswith(".Trash") or parts[i - 2] == ".Trash")
        for i, part in enumerate(parts)
    )


class NotebookFile:
    """Where the saved notebook is now: its path, followed through renames and moves.

    jupyter_server tells a kernel its notebook's path once, at start (JPY_SESSION_NAME); a
    rename or a move in JupyterLab changes only the server's session. Read by that path, the
    notebook would be gone, or worse, another notebook saved under the old name since (each
    new notebook is Untitled.ipynb) would be read as this one. Where the system names the
    files a process holds open (Linux's /proc/self/fd), a descriptor held on the notebook
    follows it wherever it is renamed to. A notebook replaced rather than renamed (git
    checkout, an editor writing a new file) is found again at its last path.

    A rename keeps the file's extension (.ipynb, or whatever LINKKERNEL_NOTEBOOK named): one
    that changes it is an editor moving the old file aside as a backup (`nb.ipynb~`).
    """

    def __init__(self, path: str) -> None:
        self._path = os.path.abspath(path)
        self._extension = os.path.splitext(self._path)[1]
        self._fd: int | None = None
        self._close: weakref.finalize | None = None
        self._follow()

    @property
    def path(self) -> str:
        self._follow()
        return self._path

    def _follow(self) -> None:
        if not NAMES_OPEN_FILES:
            return
        if self._fd is not None:
            try:
                now = name_of(self._fd)
            except OSError:
                now = ""
            # also " (deleted)"; and a move into the trash is a deletion (see _in_trash)
            renamed_aside = os.path.splitext(now)[1] != self._extension or _in_trash(now)
            if not renamed_aside and os.path.exists(now):
                # moved; else the path as given, links and all (a path the descriptor names
                # as it is has no links to resolve: no lstat of each of its folders)
                if now != self._path and now != os.path.realpath(self._path):
                    self._path = now
                return
            self.close()
        try:
            self._fd = os.open(self._path, os.O_RDONLY)
        except OSError:  # not saved yet, or gone
            return
        self._close = weakref.finalize(self, os.close, self._fd)

    def close(self) -> None:
        if self._close is not None:
            self._close()
        self._fd = self._close = None


class Sources:
    """The merged view of every cell declaration this kernel knows."""

    _file_cells: list[Cell]
    _file_read: _Saved | None  # the read of the saved notebook `_file_cells` come from (None: no file)
    _saved_at: float | None  # when the saved notebook was written, by this kernel's clock

    def __init__(self, notebook_path: str | None = None) -> None:
        # Subshell requests (JEP 91) run in threads of their own: a cell learnt there must
        # not change the tables while the main shell reads them to build a pipeline.
        self._lock = threading.RLock()
        self._executed: dict[str, Cell] = {}
        # cell key -> when the frontend reported it deleted. A saved notebook written after
        # that which still holds the cell wins: JupyterLab keeps a code cell's id through
        # cut and paste, so a moved cell is reported deleted.
        self._deleted: dict[str, float] = {}
        # A frontend's cell id -> the saved cell's key, for ids the file does not hold (_foreign_id).
        self._aliases: dict[str, str] = {}
        # Every cell key a read of the saved notebook held: such a cell missing from a newer
        # save was removed from the notebook, whether or not the frontend reported it.
        self._saved_keys: set[str] = set()
        self._clock = 0.0
        self._hinted = False  # NO_NOTEBOOK_HINT is given once per kernel
        # What each cell's metadata declared when the pipeline was last asked for, so that
        # each request parses only the cells that changed, not every cell of the notebook:
        # (id of the metadata, position, cell id) -> (that metadata, its declaration or error).
        # The metadata is held, so its id cannot name another dict meanwhile.
        self._parsed: dict[tuple[int, int | None, str | None], tuple[Mapping[str, Any], Any]] = {}
        # What `declared` last answered, and the version of the tables it was worked out
        # from: bumped by every change that can change the answer, so that a Run All of a
        # deep pipeline does not merge every cell of the notebook again for each cell.
        self._version = 0
        self._answered: tuple[int, Declared] | None = None
        self._file_by_key: dict[str, Cell | None] = {}
        self._notebook: NotebookFile | None = None
        self._saves = FileCache()
        self.notebook_path = notebook_path

    @property
    def notebook_path(self) -> str | None:
        return None if self._notebook is None else self._notebook.path

    @notebook_path.setter
    def notebook_path(self, path: str | None) -> None:
        with self._lock:
            self._use_notebook(path)

    def _use_notebook(self, path: str | None) -> None:
        # Cells executed for another notebook are not cells of this one.
        if self._notebook is not None:
            self._notebook.close()
        self._notebook = NotebookFile(path) if path else None
        self._file_cells, self._file_read, self._saved_at = [], None, None
        self._saves = FileCache()
        self._file_by_key = {}
        self._version += 1
        self._executed.clear()
        self._deleted.clear()
        self._aliases.clear()
        self._saved_keys.clear()

    def looked_in(self) -> str:
        """Where declarations were searched, for the missing-parent message."""
        path = self.notebook_path
        if path is None:
            return (
                "the cells executed in this kernel (no saved notebook known: "
                "set LINKKERNEL_NOTEBOOK or run %link notebook PATH)"
            )
        state = "" if os.path.exists(path) else ", which does not exist"
        return f"the cells executed in this kernel and the saved notebook {path}{state}"

    def _now(self) -> float:
        # Strictly increasing, so two requests in the same clock tick still order.
        self._clock = max(time.time(), self._clock + 1e-6)
        return self._clock

    def _read_file(self, strict: bool = True) -> list[Cell]:
        """The saved notebook's cells, read again when the file changed (`FileCache`: its stat,
        not trusted when read within a tick of a save). Not `strict`: an unreadable file
        counts as no file, so a plain cell still runs exactly as in ipykernel."""
        path = self.notebook_path
        if path is None:
            return []
        read = self._saves.read(path, lambda path: _read_notebook(path, self._file_read))
        if isinstance(read, str):
            if not strict:
                return []
            raise LinkError(f"cannot read the saved notebook {path}: {read}")
        if read is self._file_read:  # also a save read again: the tables stand
            return self._file_cells
        if read is None:
            self._file_cells, self._file_read, self._saved_at = [], None, None
            self._file_by_key = {}
            self._version += 1
            return []
        cells = read.cells
        self._file_cells, self._file_read, self._saved_at = cells, read, read.saved
        self._file_by_key = _by_key(cells)
        self._version += 1
        self._saved_keys.update(cell.key for cell in cells)
        for cell in cells:  # an id the file holds is that cell's own key from now on
            self._aliases.pop(cell.cell_id, None)
        return self._file_cells

    def learn(self, code: str, request_meta: Mapping[str, Any] | None, cell_id: str | None) -> Component | None:
        """Record the executing cell and return its component, or None for a plain cell.

        Raises DeclarationError (a LinkError) for a malformed declaration. The cell is
        recorded first even then: it is the newest word on that cell, so a run that needs
        it says what is wrong instead of using what the cell declared before.
        """
        with self._lock:
            return self._learn(code, request_meta, cell_id)

    def _learn(self, code: str, request_meta: Mapping[str, Any] | None, cell_id: str | None) -> Component | None:
        request_meta = dict(request_meta or {})
        cell_id = cell_id or request_meta.get("cellId")
        for deleted in request_meta.get("deletedCells") or []:
            self._deleted[deleted] = self._now()
            self._executed.pop(deleted, None)
            self._version += 1
        metadata = {k: v for k, v in request_meta.items() if k not in TRANSPORT_KEYS}
        if cell_id is not None and not _declares(metadata):
            # A plain cell from JupyterLab: its id is its key in the file too, so the saved
            # notebook need not be read (plain cells cost what they cost in ipykernel).
            key = self._aliases.get(cell_id, cell_id)
            self._remember(Cell(key, cell_id, code, metadata, None, self._now()))
            return None
        file_cells = self._read_file(strict=False)
        index = None
        if cell_id is not None:
            match = next((c for c in file_cells if c.cell_id == cell_id), None)
            if match is None and _foreign_id(cell_id, file_cells):
                match = self._foreign_match(file_cells, cell_id, code, metadata)
        else:
            match = self._by_source(file_cells, code, unexecuted_only=False)
            parameters = None if metadata else self._overridden_parameters(file_cells, code, match)
            if parameters is not None:
                match, code = parameters, f"{parameters.source.rstrip()}\n{code}"
            if match is not None and not metadata:
                metadata = dict(match.metadata)
        if match is not None:
            key, index, cell_id = match.key, match.index, match.cell_id or cell_id
        else:
            key = cell_id or f"source:{hash(code)}"
        self._remember(Cell(key, cell_id, code, metadata, index, self._now()))
        decl = parse_declaration(metadata, describe_cell(index, cell_id))
        if decl is None:
            return None
        return Component(decl, code, cell_id, index if index is not None else 10**6, metadata, index is not None)

    def _remember(self, cell: Cell) -> None:
        """Record an executed cell as the newest word on its key. The version stays when what
        `declared` answers cannot change: the saved notebook holds the cell (once), and what stood
        for it (the saved cell, or an earlier execution newer than the save) is what was
        executed now (code, id, and the metadata a declaration is read from: JupyterLab sends
        `trusted` with every cell, which the file never holds), its position the saved cell's
        either way. A cell the saved notebook lacks moves to the end of the unsaved ones, which
        changes their positions: the version changes then."""
        old = self._executed.get(cell.key)
        saved = self._file_by_key.get(cell.key)
        standing = old if old is not None and saved is not None and old.at >= saved.at else saved
        same = (
            standing is not None
            and cell.key not in self._deleted
            and (standing.cell_id, standing.source, standing.code) == (cell.cell_id, cell.source, cell.code)
            and _declaring(standing.metadata) == _declaring(cell.metadata)
        )
        if not same:
            self._version += 1
        self._deleted.pop(cell.key, None)
        self._executed[cell.key] = cell

    def _overridden_parameters(self, cells: list[Cell], code: str, match: Cell | None) -> Cell | None:
        """The saved `parameters` component that papermill's injected cell (`code`) overrides.

        papermill runs the injected cell after the `parameters` cell; in a plain notebook its
        assignments override that cell's. A component's children see only their parents'
        names, so the injected code runs as the end of the `parameters` component itself
        (its code changes, so it and its descendants run again).
        """
        if papermill_parameters(code) is None or (match is not None and not _tagged(match, INJECTED_TAG)):
            return None
        cell = next((c for c in cells if c.code and _tagged(c, PARAMETERS_TAG)), None)
        return cell if cell is not None and _declares(cell.metadata) else None

    def notice(self, code: str, request_meta: Mapping[str, Any] | None, cell_id: str | None) -> str | None:
        """For a request `learn` found to be a plain cell: a line for the kernel's log (the
        terminal of nbclient, papermill, nbconvert) when the notebook's components cannot be
        what it declares: the cell came without id or tags and no notebook file is known
        (said once), or it holds papermill parameters that components will not see, since no
        `parameters` component takes them."""
        request_meta = dict(request_meta or {})
        if cell_id or request_meta.get("cellId") or any(k not in TRANSPORT_KEYS for k in request_meta):
            return None
        with self._lock:
            if self.notebook_path is None:
                hint, self._hinted = (None if self._hinted else NO_NOTEBOOK_HINT), True
                return hint
            names = papermill_parameters(code)
            # Not strict: an unreadable notebook is for the next component run to report.
            if not names or not any(c.code and _declares(c.metadata) for c in self._read_file(strict=False)):
                return None
        return (
            f"linkkernel: components do not see the papermill parameters {', '.join(names)}: no component is "
            f"tagged '{PARAMETERS_TAG}', so they are set in the notebook namespace only; tag the parameters "
            "cell component:NAME and make it a parent of the components that read them"
        )

    def _foreign_match(self, cells: list[Cell], cell_id: str, code: str, metadata: Mapping[str, Any]) -> Cell | None:
        """The saved cell a frontend's own cell id stands for (VS Code's cell URIs, JupyterLab's
        ids for a notebook saved without them): the one this id was matched to before, else
        the unexecuted cell with this code, else the unexecuted cell declaring the same
        component (its code edited since the save). Remembered, so the next edit and run of
        that cell is still that cell, not a second one declaring the same name."""
        match = next((c for c in cells if c.key == self._aliases.get(cell_id)), None)
        match = match or self._by_source(cells, code, unexecuted_only=True)
        if match is None:
            names = _claimed_names(metadata)
            unexecuted = (c for c in cells if c.code and c.key not in self._executed)
            match = next((c for c in unexecuted if names & _claimed_names(c.metadata)), None)
        if match is not None:
            self._aliases[cell_id] = match.key
        return match

    def _by_source(self, cells: list[Cell], code: str, unexecuted_only: bool) -> Cell | None:
        """The saved cell with this code. Of several, the one run least recently (never run
        first, then notebook order): nbclient and papermill run cells top to bottom, so two
        components with the same code (the same step on two inputs) each get their turn."""
        wanted = code.rstrip()
        matches = [c for c in cells if c.code and c.source.rstrip() == wanted]
        if unexecuted_only:
            return next((c for c in matches if c.key not in self._executed), None)
        return min(matches, key=lambda c: self._executed[c.key].at if c.key in self._executed else -1.0, default=None)

    def _removed(self, cell: Cell) -> bool:
        """Whether an executed cell the saved notebook lacks was removed from the notebook:
        an earlier save held it and this one, written after its execution, does not (a
        revert, a `git checkout`, a deletion VS Code never reports). A cell never saved is
        only new, however new the save: it may have been made while the save was written."""
        return self._saved_at is not None and cell.key in self._saved_keys and cell.at < self._saved_at

    def components(self) -> list[Component]:
        """Every validly declared component (what labels traceback frames)."""
        return self.declared().components

    def declared(self) -> Declared:
        """Every declaration, newest per cell, in notebook order; malformed cells kept aside."""
        with self._lock:
            self._read_file()  # a newer save changes the version
            if self._answered is None or self._answered[0] != self._version:
                self._answered = (self._version, self._declared())
            return self._answered[1]

    def _declared(self) -> Declared:
        file_cells = self._read_file()
        merged: list[tuple[Cell, int | None]] = []  # each cell, and its position in the saved notebook
        seen = set()
        for cell in file_cells:
            seen.add(cell.key)
            if self._deleted.get(cell.key, -1.0) >= cell.at:
                continue
            executed = self._executed.get(cell.key)
            newer = executed is not None and executed.at >= cell.at
            merged.append((executed if newer else cell, cell.index))  # the saved position names it
        unsaved = (c for k, c in self._executed.items() if k not in seen and not self._removed(c))
        extra = [(c, c.index) for c in sorted(unsaved, key=lambda c: c.at)]
        base = len(file_cells)
        components, malformed = [], []
        parsed, self._parsed = self._parsed, {}
        for position, (cell, index) in enumerate(merged + extra):
            if not cell.code:
                continue
            key = (id(cell.metadata), index, cell.cell_id)
            known = parsed.get(key)
            if known is None or known[0] is not cell.metadata:
                try:
                    known = (cell.metadata, parse_declaration(cell.metadata, describe_cell(index, cell.cell_id)))
                except DeclarationError as exc:
                    known = (cell.metadata, exc)
            self._parsed[key] = known
            decl = known[1]
            if isinstance(decl, DeclarationError):
                malformed.append(Malformed(decl, _claimed_names(cell.metadata)))
                continue
            if decl is not None:
                order = index if index is not None else base + position
                components.append(Component(decl, cell.source, cell.cell_id, order, cell.metadata, index is not None))
        components.sort(key=lambda c: c.index)
        return Declared(components, malformed)


@dataclass(frozen=True)
class _Saved:
    """One read of the saved notebook: its cells, when it was written, and the file's time
    and bytes (their digest), which tell whether a read again is of the same save."""

    cells: list[Cell]
    saved: float
    mtime_ns: int
    digest: bytes


def _read_notebook(path: str, before: _Saved | None) -> tuple[_Saved | str | None, os.stat_result | None]:
    """The saved notebook at `path` (None: no file; a string: what is wrong with it), and the
    fstat of the file read, for `FileCache`. `before` when the file is the save read before
    (its time and bytes), not parsed again: its cells keep the time they were first read
    at, so cells executed since stay newer (a file dated ahead is read at every look)."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except OSError as exc:
        return str(exc), None
    with f:
        st = os.fstat(f.fileno())
        try:
            data = f.read()
            digest = hashlib.sha256(data).digest()
            if before is not None and (before.mtime_ns, before.digest) == (st.st_mtime_ns, digest):
                return before, st
            notebook = json.loads(data.decode(NOTEBOOK_ENCODING))
        except (OSError, ValueError) as exc:
            return str(exc), st
    problem = notebook_problem(notebook)
    if problem:
        return problem, st
    # The file's date is the file server's clock: one running ahead must not make the save
    # outrank cells executed after it was read.
    saved = min(st.st_mtime, time.time())
    cells = []
    for index, cell in enumerate(notebook.get("cells", [])):
        cell_id = cell.get("id")
        cells.append(
            Cell(cell_id or f"index:{index}", cell_id, cell_source(cell),
                 cell.get("metadata") or {}, index, saved, cell.get("cell_type") == "code")
        )
    return _Saved(cells, saved, st.st_mtime_ns, digest), st


def _by_key(cells: list[Cell]) -> dict[str, Cell | None]:
    """The saved cells by key, None for a key two cells hold (an id copied by hand): an
    execution under it is the newest word on both, which changes what is declared however
    like one of them it is (see `Sources._remember`)."""
    by_key: dict[str, Cell | None] = {}
    for cell in cells:
        by_key[cell.key] = None if cell.key in by_key else cell
    return by_key
