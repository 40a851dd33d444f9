"""Cell compiler whose code names say which component a frame belongs to."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ipykernel.compiler import XCachingCompiler


class LinkCompiler(XCachingCompiler):
    """Remembers, for every compiled cell file, the component it was compiled for.

    Tracebacks and warnings format file names through `format_code_name`, so labelling here
    is what makes a frame read `Component train, line 2` instead of a temporary path, and it
    keeps working when a function defined in one component fails when called from another.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._component_of_file: dict[str, str] = {}
        self._current_component: str | None = None

    @contextmanager
    def labelled(self, component: str) -> Iterator[None]:
        """Label every cell compiled inside the block as belonging to `component`."""
        previous, self._current_component = self._current_component, component
        try:
            yield
        finally:
            self._current_component = previous

    def cache(self, transformed_code: str, number: int = 0, raw_code: str | None = None) -> str:
        name = super().cache(transformed_code, number, raw_code)
        # Cell files are named by a hash of the code: the same code compiled again, as a
        # plain cell or in another component, takes the label of its latest compile.
        if self._current_component is None:
            self._component_of_file.pop(name, None)
        else:
            self._component_of_file[name] = self._current_component
        return name

    def component_of(self, filename: str) -> str | None:
        """The component a cell file was compiled for, if any."""
        return self._component_of_file.get(filename)

    def format_code_name(self, name: str) -> tuple[str, str] | None:
        component = self._component_of_file.get(name)
        if component is not None:
            return "Component", component
        return super().format_code_name(name)
