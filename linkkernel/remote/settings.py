"""The kernel's process-wide settings a remote task runs with (SPEC §5: as a local component).

A local component runs in the kernel's process, so it shows values and draws figures as the
notebook's first cells set that process up: IPython's `ast_node_interactivity`, the inline
backend's figure formats (`%config InlineBackend.figure_format = 'retina'`), pandas' options
(`pd.set_option('display.max_columns', None)`, a `display.float_format`) and matplotlib's
rcParams (`plt.style.use(...)`). A task's process is a fresh one: these are read in the
kernel when a task is sent and set in the task's process before its code runs.
"""

from __future__ import annotations

import base64
import importlib
import json
import sys
import warnings
from typing import Any

import cloudpickle

# The inline backend's settings (matplotlib_inline's InlineBackend) a task shows figures by.
INLINE_BACKEND_SETTINGS = ("figure_formats", "print_figure_kwargs", "close_figures", "rc")
# rcParams that say where figures go, not how they look: the task's own.
_BACKEND_PARAMS = ("backend", "backend_fallback", "interactive")


def of_kernel(shell: Any) -> dict[str, Any]:
    """The settings of the kernel whose shell is `shell`, as a task body carries them."""
    return {
        "interactivity": getattr(shell, "ast_node_interactivity", "last_expr"),
        "inline_backend": _inline_backend(shell),
        "pandas": _pickled(_pandas_options()),
        "rcParams": _pickled(_changed_rc_params()),
    }


def apply(shell: Any, settings: Any) -> None:
    """Set, in a task's process, the kernel's settings `of_kernel` read. Each that cannot be
    set here (a pandas option this version lacks, a library this machine lacks) is left as
    it is."""
    if not isinstance(settings, dict):
        return
    # Only a change is set: looking the trait up and setting it costs a task process ~30
    # copy-on-write faults (~0.1 ms), and nearly every task sends the default.
    interactivity = settings.get("interactivity")
    if interactivity != shell.ast_node_interactivity and interactivity in type(shell).ast_node_interactivity.values:
        shell.ast_node_interactivity = interactivity
    inline_backend = settings.get("inline_backend")
    if isinstance(inline_backend, dict) and inline_backend:
        from traitlets.config import Config

        shell.config.InlineBackend = Config(inline_backend)
    options = _unpickled(settings.get("pandas"))
    pandas = _imported("pandas") if options else None
    if pandas is not None:
        for name, value in options.items():
            try:
                pandas.set_option(name, value)
            except (KeyError, ValueError, TypeError):  # pandas' OptionError is a KeyError
                pass
    params = _unpickled(settings.get("rcParams"))
    matplotlib = _imported("matplotlib") if params else None
    if matplotlib is not None:
        for name, value in params.items():
            try:
                matplotlib.rcParams[name] = value
            except (KeyError, ValueError, TypeError):
                pass


def _imported(name: str) -> Any:
    """The module `name`, None when this machine lacks it: a component that does not use it
    runs without the kernel's settings of it, and one that does says it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _inline_backend(shell: Any) -> dict[str, Any]:
    """How the kernel shows figures: the inline backend's own settings once it is in use,
    else those configured for it. A setting a message cannot carry is left out."""
    config = sys.modules.get("matplotlib_inline.config")
    if config is not None and config.InlineBackend.initialized():
        backend = config.InlineBackend.instance()
        settings = {name: getattr(backend, name) for name in INLINE_BACKEND_SETTINGS}
    else:
        settings = dict(shell.config.get("InlineBackend", {})) if shell is not None else {}
    sendable = {}
    for name, setting in settings.items():
        setting = sorted(setting) if isinstance(setting, (set, frozenset)) else setting
        try:
            json.dumps(setting)
        except (TypeError, ValueError):
            continue
        sendable[name] = setting
    return sendable


def _pandas_options() -> dict[str, Any]:
    """pandas' options the kernel changed, when it imported pandas."""
    if "pandas" not in sys.modules:
        return {}
    import pandas
    from pandas._config import config

    changed = {}
    with warnings.catch_warnings():  # a deprecated option warns when read: not the user's doing
        warnings.simplefilter("ignore")
        for name, option in getattr(config, "_registered_options", {}).items():
            if name in getattr(config, "_deprecated_options", {}):
                continue
            value = pandas.get_option(name)
            if value is not option.defval and value != option.defval:
                changed[name] = value
    return changed


def _changed_rc_params() -> dict[str, Any]:
    """matplotlib's rcParams that differ from its defaults, when the kernel imported it."""
    matplotlib = sys.modules.get("matplotlib")
    if matplotlib is None or not hasattr(matplotlib, "rcParamsDefault"):
        return {}
    rc, defaults = matplotlib.rcParams, matplotlib.rcParamsDefault
    with warnings.catch_warnings():  # a deprecated parameter warns when read: not the user's doing
        warnings.simplefilter("ignore")
        return {name: rc[name] for name in rc if name not in _BACKEND_PARAMS and name in defaults and rc[name] != defaults[name]}


def _pickled(values: dict[str, Any]) -> dict[str, str]:
    """Each value pickled (a float_format may be a notebook's function), base64 for JSON;
    one that does not pickle is left out."""
    pickled = {}
    for name, value in values.items():
        try:
            pickled[name] = base64.b64encode(cloudpickle.dumps(value)).decode()
        except Exception:  # noqa: BLE001 - pickling runs arbitrary __reduce__ code
            continue
    return pickled


def _unpickled(values: Any) -> dict[str, Any]:
    """`_pickled` undone; a value that cannot be rebuilt here is left out."""
    if not isinstance(values, dict):
        return {}
    unpickled = {}
    for name, data in values.items():
        try:
            unpickled[name] = cloudpickle.loads(base64.b64decode(data))
        except Exception:  # noqa: BLE001 - unpickling runs arbitrary code (a module missing here)
            continue
    return unpickled
