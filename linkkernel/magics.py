"""`%link SUBCOMMAND ...`: the kernel-side twin of the `linkkernel` command."""

from __future__ import annotations

import importlib
import shlex
from collections.abc import Callable

from IPython.core.magic import Magics, line_magic, magics_class

from linkkernel.errors import LinkError

# subcommand -> ("module:function", one-line help). Each handler is called as
# handler(kernel, argv) and lives in the module that owns the job; modules load on first use.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "help": ("linkkernel.magics:show_help", "list the %link subcommands; help NAME: its usage"),
    "status": ("linkkernel.pipeline_magics:status", "table of components: state, last run, duration, where"),
    "graph": ("linkkernel.pipeline_magics:graph", "the pipeline as a picture coloured by state"),
    "outputs": ("linkkernel.pipeline_magics:outputs", "show a component's stored outputs again: NAME"),
    "run": ("linkkernel.pipeline_magics:run", "bring components up to date: NAME... [--force] | --all"),
    "cache": ("linkkernel.sharing.cache_archive:cache_magic", "clear | export PATH | import PATH [--trust]: the component cache"),
    "notebook": ("linkkernel.pipeline_magics:notebook", "[PATH]: read declarations from the saved notebook PATH; show which one"),
    "export": ("linkkernel.sharing.pipeline_json:export_magic", "write the pipeline as a JSON document"),
    "import": ("linkkernel.sharing.pipeline_json:import_magic", "re-create a pipeline document's cells in a notebook"),
    "workers": ("linkkernel.remote.registry:workers_magic", "register, list, remove and ping remote workers"),
}


def show_help(kernel, argv: list[str]) -> None:
    """Print every `%link` subcommand with its one-line help; `%link help NAME` is NAME's usage."""
    if argv and argv[0] not in ("-h", "--help"):  # `%link help --help`: the listing is its usage
        name, *extra = argv
        if extra:
            raise LinkError(f"%link help: unrecognized arguments: {' '.join(extra)} (usage: %link help [SUBCOMMAND])")
        if name not in SUBCOMMANDS:
            raise LinkError(f"%link help: unknown subcommand {name!r}; try '%link help'")
        if name != "help":
            _handler(name)(kernel, ["--help"])
            return
    width = max(map(len, SUBCOMMANDS))
    print("%link SUBCOMMAND [ARGS]\n")
    for name, (_, help_) in SUBCOMMANDS.items():
        print(f"  {name:<{width}}  {help_}")


def _handler(name: str) -> Callable:
    target, _ = SUBCOMMANDS[name]
    module_name, function = target.split(":")
    return getattr(importlib.import_module(module_name), function)


@magics_class
class LinkMagics(Magics):
    """Holds the `%link` line magic; the work is done by the handlers in SUBCOMMANDS."""

    def __init__(self, shell, kernel) -> None:
        super().__init__(shell)
        self.kernel = kernel

    @line_magic
    def link(self, line: str) -> None:
        """Pipeline commands: `%link help` lists them."""
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise LinkError(f"%link: cannot parse arguments: {exc}") from exc
        name, *rest = argv or ["help"]
        if name in ("-h", "--help"):  # what every other command answers
            name = "help"
        if name not in SUBCOMMANDS:
            raise LinkError(f"%link: unknown subcommand {name!r}; try '%link help'")
        _handler(name)(self.kernel, rest)
