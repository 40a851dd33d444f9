"""`linkkernel install` / `uninstall`: register Link Python with Jupyter like ipykernel does."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from linkkernel.errors import LinkError

KERNEL_NAME = "link-python"
DISPLAY_NAME = "Link Python"


def kernelspec_source() -> Path:
    """The folder holding kernel.json and the logos.

    A wheel carries it inside the package; a source checkout (editable install, PYTHONPATH)
    has it at the repository's top level, where it is maintained.
    """
    packaged = resources.files("linkkernel") / "kernelspec"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "kernelspec"


def write_kernelspec(dest: Path, display_name: str = DISPLAY_NAME, python: str = sys.executable) -> None:
    """Write kernel.json (argv with this interpreter's absolute path) and logos into `dest`."""
    source = kernelspec_source()
    spec = json.loads((source / "kernel.json").read_text())
    spec["argv"] = [python if arg == "{python}" else arg for arg in spec["argv"]]
    spec["display_name"] = display_name
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
    for logo in source.glob("logo-*"):
        shutil.copy(logo, dest / logo.name)


def install(
    user: bool = False,
    prefix: str | None = None,
    name: str = KERNEL_NAME,
    display_name: str = DISPLAY_NAME,
) -> str:
    """Install (or replace) the kernelspec; returns the directory written."""
    from jupyter_client.kernelspec import KernelSpecManager  # 0.1 s: only when installing

    if not name:
        # jupyter_client would name the kernelspec after our temporary folder
        raise LinkError("cannot install a kernelspec with an empty --name")
    if name in (".", ".."):
        # jupyter_client accepts them and empties the destination first: kernels/. holds every
        # kernelspec of the prefix, kernels/.. all of share/jupyter (JupyterLab's extensions too)
        raise LinkError(f"cannot install a kernelspec named {name!r}: it names a folder, not a kernelspec")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / name
        write_kernelspec(staged, display_name)
        try:
            # jupyter_client removes an existing install at the destination first,
            # so re-installing never leaves a stale file behind.
            return KernelSpecManager().install_kernel_spec(
                str(staged), kernel_name=name, user=user, prefix=prefix
            )
        except ValueError as exc:
            raise LinkError(f"cannot install kernelspec {name!r}: {exc}") from exc
        except OSError as exc:
            where = f" ({exc.filename})" if exc.filename else ""
            raise LinkError(f"cannot install kernelspec {name!r}: {exc.strerror}{where}") from exc


def uninstall(name: str = KERNEL_NAME) -> str:
    """Remove the kernelspec `name` wherever Jupyter finds it; returns the directory removed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        return manager.remove_kernel_spec(name.lower())  # install lowercases it, as Jupyter does
    except (KeyError, NoSuchKernel) as exc:
        raise LinkError(f"no kernelspec named {name!r} is installed") from exc
    except OSError as exc:  # another user's folder, or read-only; exc.filename is relative to it
        folder = manager.find_kernel_specs().get(name.lower(), exc.filename)
        raise LinkError(f"cannot remove kernelspec {name!r} from {folder}: {exc.strerror}") from exc


def configure_install(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument(
        "--sys-prefix", action="store_true", help="install into this Python's prefix (the venv)"
    )
    where.add_argument("--prefix", metavar="DIR", help="install into DIR/share/jupyter/kernels")
    parser.add_argument("--name", default=KERNEL_NAME, help=f"kernelspec name (default {KERNEL_NAME})")
    parser.add_argument(
        "--display-name", default=DISPLAY_NAME, help=f"name shown in the launcher (default {DISPLAY_NAME!r})"
    )
    parser.set_defaults(func=_run_install)


def _run_install(args: argparse.Namespace) -> int:
    prefix = sys.prefix if args.sys_prefix else args.prefix
    path = install(user=args.user, prefix=prefix, name=args.name, display_name=args.display_name)
    # Jupyter lowercases the name; the folder's name is the one to give `uninstall` and the launcher
    print(f"Installed kernelspec {Path(path).name} ({args.display_name}) in {path}")
    return 0


def configure_uninstall(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=KERNEL_NAME, help=f"kernelspec name (default {KERNEL_NAME})")
    parser.set_defaults(func=_run_uninstall)


def _run_uninstall(args: argparse.Namespace) -> int:
    print(f"Removed kernelspec {args.name} from {uninstall(args.name)}")
    return 0
