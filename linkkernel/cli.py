"""The `linkkernel` command: one subcommand per job, each living in the module that does it."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from linkkernel import __version__
from linkkernel.errors import LinkError

# name -> (module, function that configures the subcommand's parser, one-line help).
# Modules are imported only for the subcommand being run, so `linkkernel --help` stays fast.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "install": ("linkkernel.kernelspec", "configure_install", "register the Link Python kernel with Jupyter"),
    "uninstall": ("linkkernel.kernelspec", "configure_uninstall", "remove the Link Python kernelspec"),
    "run": ("linkkernel.headless", "configure_run", "run a pipeline notebook headless and write the executed notebook"),
    "demo": ("linkkernel.demo", "configure_demo", "run the example pipeline end to end with a local worker"),
    "export": ("linkkernel.sharing.pipeline_json", "configure_export", "write a notebook's pipeline as a JSON document"),
    "import": ("linkkernel.sharing.pipeline_json", "configure_import", "re-create a pipeline document's cells in a notebook"),
    "cache": ("linkkernel.sharing.cache_archive", "configure_cache", "export/import component results as a signed .tar.gz"),
    "git": ("linkkernel.git.install", "configure_git", "install/uninstall the git diff and merge drivers"),
    "diff": ("linkkernel.git.diff", "configure_diff", "compare two notebooks cell by cell and their pipelines"),
    "log": ("linkkernel.git.log", "configure_log", "a notebook's git history with code and pipeline changes"),
    "merge": ("linkkernel.git.driver", "configure_merge", "three-way merge of notebooks (git merge driver)"),
    "worker": ("linkkernel.remote.worker", "configure_worker", "serve remote components to kernels"),
    "workers": ("linkkernel.remote.registry", "configure_workers", "register, list, remove and ping remote workers"),
}


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line, naming the command and the fix."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<11} {help_}" for name, (_, _, help_) in COMMANDS.items())
    parser = OneLineParser(
        prog="linkkernel",
        description="Link Python: a Jupyter kernel that turns notebook cells into a pipeline.",
        epilog=f"commands:\n{lines}\n\nRun 'linkkernel COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"linkkernel {__version__}")
    parser.add_argument("command", metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _configure(name: str, parser: argparse.ArgumentParser) -> None:
    """Give `parser` the options of subcommand `name`, from the module that owns it."""
    module_name, configure_name, _ = COMMANDS[name]
    getattr(importlib.import_module(module_name), configure_name)(parser)


def command_parser() -> argparse.ArgumentParser:
    """The whole `linkkernel` command line as one parser, every subcommand configured.

    For tools and tests that check a command line without running it (the commands shown in
    the README must parse). `main` does not use it: it imports only the module of the
    subcommand being run, so that `linkkernel --help` and each command start fast.
    """
    parser = OneLineParser(prog="linkkernel", description=_top_parser().description)
    parser.add_argument("--version", action="version", version=f"linkkernel {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser)
    for name, (_, _, help_) in COMMANDS.items():
        _configure(name, commands.add_parser(name, help=help_, description=help_))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `linkkernel ARGS`; returns the exit status."""
    if not (sys.argv[1:] if argv is None else argv):  # argparse would name its internal 'args'
        _top_parser().print_help(sys.stderr)
        return 2
    # A file name that is not UTF-8 is printed as its bytes, as ls does: a strict stdout (an
    # en_US.UTF-8 terminal) failed the command with a traceback after its work was done.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    top = _top_parser().parse_args(argv)
    if top.command not in COMMANDS:
        print(
            f"linkkernel: unknown command {top.command!r}; choose one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    parser = OneLineParser(prog=f"linkkernel {top.command}", description=COMMANDS[top.command][2])
    _configure(top.command, parser)
    args = parser.parse_args(top.args)
    try:
        return int(args.func(args) or 0)
    except LinkError as exc:
        print(f"linkkernel {top.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"linkkernel {top.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
