"""Cell compiler whose code names say which component a frame belongs to."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ipykernel.compiler import XCachingCompiler

from linkkernel.namespaces import CELL_FILE, twin_path


class LinkCompiler(XCachingCompiler):
    """Remembers, for every compiled cell file, the component it was compiled for.

    Tracebacks and warnings format file names through `format_code_name`, so labelling here
    is what makes a frame read `Component train, line 2` instead of a temporary path, and it
    keeps working when a function defined in one component fails when called from another.

    The label is a context variable: a kernel subshell (JEP 91) runs plain cells in a thread
    of its own while the main shell runs a component, and those cells are not the component's.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._component_of_file: dict[str, str] = {}
        self._current_component: ContextVar[str | None] = ContextVar("linkkernel_component", default=None)

    @contextmanager
    def labelled(self, component: str) -> Iterator[None]:
        """Label every cell compiled inside the block as belonging to `component`."""
        token = self._current_component.set(component)
        try:
            yield
        finally:
            self._current_component.reset(token)

    @property
    def current_component(self) -> str | None:
        """The component whose code is running here, or None in a plain cell: some commands
        (`%link run`) make no sense inside a component's own code."""
        return self._current_component.get()

    def cache(self, transformed_code: str, number: int = 0, raw_code: str | None = None) -> str:
        name = super().cache(transformed_code, number, raw_code)
        # Cell files are named by a hash of the code: the same code compiled again, as a
        # plain cell or in another component, takes the label of its latest compile.
        component = self._current_component.get()
        if component is None:
            self._component_of_file.pop(name, None)
        else:
            self._component_of_file[name] = component
        return name

    def labelled_files(self) -> dict[str, str]:
        """Every cell file compiled for a component, with its component."""
        return dict(self._component_of_file)

    def label(self, filename: str, component: str) -> None:
        """Label a file compiled elsewhere (a remote worker learns the kernel's cell files)."""
        self._component_of_file[filename] = component

    def local_twin(self, filename: str) -> str | None:
        """This process's file of the cell `filename` (any kernel process's cell file) is
        named after, when its code was compiled here.

        The file name is a hash of the code, so the same code compiled here has the same base
        name; a frame of code pickled elsewhere finds its cell's label and lines through it.
        """
        twin = twin_path(filename)
        return twin if twin in self._filename_map else None

    def format_code_name(self, name: str) -> tuple[str, str] | None:
        component = self._component_of_file.get(name)
        if component is not None:
            return "Component", component
        label = super().format_code_name(name)
        if label is not None:
            return label
        twin = self.local_twin(name)
        if twin is not None and twin != name:
            return self.format_code_name(twin)
        if CELL_FILE.search(name):
            # A restarted kernel or a remote worker running a parent's function: never the
            # other process's temp path.
            return "Code", "from another kernel process"
        return None
