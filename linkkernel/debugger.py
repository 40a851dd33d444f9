"""The debuggers with components: `%debug`/`%pdb` name cells and components instead of the
kernel's temp files; JupyterLab's visual debugger steps through the user's code only, and copies
to the notebook's globals."""

from __future__ import annotations

import importlib.util
from typing import Any

from ipykernel.compiler import get_file_name
from ipykernel.debugger import Debugger
from IPython.core.debugger import InterruptiblePdb

# Packages the kernel runs on its own while a cell runs, loaded only once it first needs them:
# stock skips the frames of every module loaded at the kernel's start, these load later.
_MACHINERY = ("linkkernel", "networkx", "cloudpickle", "fsspec", "s3fs", "aiobotocore", "botocore", "platformdirs")


class LinkPdb(InterruptiblePdb):
    """Stack entries read `Component train(3)f()` / `Cell In[2](1)<module>()`.

    Only the displayed entry is relabelled: `canonic` stays the real path, because pdb
    matches breakpoints and reads source lines through it.
    """

    def format_stack_entry(self, frame_lineno, lprefix=": "):
        text = super().format_stack_entry(frame_lineno, lprefix)
        filename = frame_lineno[0].f_code.co_filename
        label = self.shell.compile.format_code_name(filename)
        if label is None:
            return text
        return text.replace(self.canonic(filename), " ".join(label), 1)


def machinery_folders() -> list[str]:
    """The folders of the packages in _MACHINERY that are installed (found, not imported)."""
    folders = []
    for name in _MACHINERY:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            folders.extend(spec.submodule_search_locations)
    return folders


class LinkDebugger(Debugger):
    """ipykernel's debugger (DAP over the control channel), with components.

    Stepping past a component's last line returns into the kernel, which then stores the
    run's values (fsspec, cloudpickle...): stock skips the kernel's frames by the files loaded
    at its start, so the packages the kernel loads later are skipped too, else `next` would
    stop inside them. A component's frames have its namespace as globals, so "copy to
    globals" puts the value in the notebook's namespace itself, not in the component's,
    where it would become one of the component's outputs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kernel_modules = [*self.kernel_modules, *machinery_folders()]

    async def copyToGlobals(self, message: dict[str, Any]) -> dict[str, Any]:  # noqa: N802 - the DAP command's name
        arguments = message["arguments"]
        dst, src = arguments["dstVariableName"], arguments["srcVariableName"]
        if not dst.isidentifier() or not src.isidentifier():
            return await super().copyToGlobals(message)  # its refusal
        return await self._forward_message({
            "type": "request",
            "command": "setExpression",
            "seq": message["seq"] + 1,
            "arguments": {
                "expression": f"__import__('IPython').get_ipython().notebook_ns[{dst!r}]",
                "value": src,
                "frameId": arguments["srcFrameId"],
            },
        })


def unreachable_breakpoints_note(kernel, component) -> str | None:
    """The line a remote component's cell gets when the visual debugger has breakpoints in
    its code: they cannot be hit on another machine, and a run that passes them by without a
    word looks like a debugger that does not work."""
    debugger = getattr(kernel, "debugger", None)
    if debugger is None or not debugger.is_started or not debugger.breakpoint_list.get(get_file_name(component.source)):
        return None
    return (
        f"linkkernel: the breakpoints in component {component.name!r} were not hit: it ran on worker "
        f"{component.remote!r}, and the debugger stops only in this kernel"
    )
