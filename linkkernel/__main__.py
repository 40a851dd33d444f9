"""`python -m linkkernel -f CONNECTION_FILE` launches the Link Python kernel."""

import sys
from pathlib import Path

if __name__ == "__main__":
    # Like ipykernel_launcher: the notebook's directory, not ours, belongs on sys.path;
    # InteractiveShellApp.init_path() puts the working directory back afterwards.
    if sys.path[0] == "" or Path(sys.path[0]) == Path.cwd():
        del sys.path[0]

    from linkkernel.kernelapp import launch

    launch()
