"""`python -m linkkernel COMMAND ...` is the `linkkernel` command; `python -m linkkernel -f
CONNECTION_FILE` (the kernelspec's argv, or any other kernel option) launches the kernel.

Arguments that start with an option other than help or version are the kernel's: Jupyter
always starts it with `-f`. Anything else (a subcommand, nothing at all) is the command line's,
so a mistyped command is refused in one line instead of starting a kernel that waits forever.
"""

import sys
from pathlib import Path

CLI_OPTIONS = ("-h", "--help", "--version")


def is_kernel_launch(argv: list[str]) -> bool:
    """Whether `argv` (without the program) starts the kernel rather than a `linkkernel` command."""
    return bool(argv) and argv[0].startswith("-") and argv[0] not in CLI_OPTIONS


if __name__ == "__main__":
    if is_kernel_launch(sys.argv[1:]):
        # Like ipykernel_launcher: the notebook's directory, not ours, belongs on sys.path;
        # InteractiveShellApp.init_path() puts the working directory back afterwards.
        if sys.path[0] == "" or Path(sys.path[0]) == Path.cwd():
            del sys.path[0]

        from linkkernel.kernelapp import launch

        launch()
    else:
        from linkkernel.cli import main

        sys.exit(main())
