"""LinkKernel: ipykernel's IPythonKernel, wired to linkkernel's pieces."""

from __future__ import annotations

import functools
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from traitlets import Type, Unicode, default

from linkkernel import __version__
from linkkernel.compiler import LinkCompiler
from linkkernel.errors import INTERNAL_ERROR_NAME, LinkError, internal_error_line, internal_error_reply
from linkkernel.magics import LinkMagics
from linkkernel.runner import Runner
from linkkernel.shell import LinkShell
from linkkernel.store import default_cache_url


class LinkKernel(IPythonKernel):
    """The Link Python kernel. It only wires; behaviour lives in the modules it calls."""

    implementation = "linkkernel"
    implementation_version = __version__
    shell_class = Type(LinkShell)
    compiler_class = Type(LinkCompiler)
    # by name, as ipykernel's own: imported once the kernel makes its debugger (debugpy: ~50 ms)
    debugger_class = Type("linkkernel.debugger.LinkDebugger")
    cache_url = Unicode(
        help="fsspec URL of the component cache store (default: $LINKKERNEL_CACHE, else the user cache dir)"
    ).tag(config=True)

    @default("cache_url")
    def _default_cache_url(self) -> str:
        return default_cache_url()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shell.register_magics(LinkMagics(self.shell, self))
        self.runner = Runner(self, self.cache_url)
        # Labels frames of functions that a parent, fresh from the cache, defined in an earlier session.
        self.shell.component_sources = lambda: ((c.name, c.source) for c in self.runner.sources.components())

    @property
    def banner(self) -> str:  # type: ignore[override]
        return f"Link Python {__version__}: cells become a pipeline.\n{self.shell.banner}"

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict | None = None,
        allow_stdin: bool = False,
        *,
        cell_meta: dict | None = None,
        cell_id: str | None = None,
    ) -> dict[str, Any]:
        try:
            return await self._execute(
                code, silent, store_history, user_expressions, allow_stdin, cell_meta, cell_id
            )
        except BaseException as exc:  # noqa: BLE001 - the boundary: an escaping error leaves the cell at [*]
            self._publish_internal_error(exc)
            return internal_error_reply(exc, self.log, self.shell.execution_count - 1)

    async def _execute(
        self,
        code: str,
        silent: bool,
        store_history: bool,
        user_expressions: dict | None,
        allow_stdin: bool,
        cell_meta: dict | None,
        cell_id: str | None,
    ) -> dict[str, Any]:
        stock = functools.partial(
            super().do_execute, silent=silent, store_history=store_history, allow_stdin=allow_stdin,
            cell_meta=cell_meta, cell_id=cell_id,
        )
        if silent:
            return await stock(code, user_expressions=user_expressions)
        try:
            component = self.runner.learn(code, cell_meta, cell_id)
        except LinkError as exc:
            return self.runner.refuse(exc, code if store_history else None)
        except KeyboardInterrupt:  # while the saved notebook was read (a slow network drive)
            return self.runner.report_interrupt(code if store_history else None, "reading the saved notebook")
        if component is None:
            reply = await stock(code, user_expressions=user_expressions)
            notice = self.runner.sources.notice(code, cell_meta, cell_id)  # after: the cell may be `%link notebook`
            if notice:
                self.log.warning(notice)
            return reply
        # The component itself runs through ipykernel's own do_execute, inside its namespace;
        # the user expressions are the runner's, evaluated once its outputs are published.
        # Its code is the request's, but for papermill's parameters appended to their component's.
        live = functools.partial(stock, component.source, user_expressions={})
        return await self.runner.execute_cell(component, live, store_history, allow_stdin, user_expressions)

    def do_shutdown(self, restart: bool) -> dict[str, Any]:
        self.runner.store.flush()
        return super().do_shutdown(restart)

    def _publish_internal_error(self, exc: BaseException) -> None:
        line = internal_error_line(exc)
        self.session.send(
            self.iopub_socket,
            "error",
            {"ename": INTERNAL_ERROR_NAME, "evalue": line, "traceback": [line]},
            parent=self.get_parent(),
            ident=self._topic("error"),
        )
