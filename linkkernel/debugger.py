"""`%debug` and `%pdb` that name cells and components instead of the kernel's temp files."""

from __future__ import annotations

from IPython.core.debugger import InterruptiblePdb


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
