"""Link Python behaves like ipykernel for everything that is not a component."""

from __future__ import annotations

import json
import subprocess
import sys
import time


from support import Kernel, kernel_env


def test_kernelspec_is_installed_with_absolute_interpreter(link_kernelspec):
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("link-python")
    assert spec.display_name == "Link Python"
    assert spec.language == "python"
    assert spec.metadata == {"debugger": True}
    assert spec.argv[0] == sys.executable
    assert spec.argv[1:] == ["-Xfrozen_modules=off", "-m", "linkkernel", "-f", "{connection_file}"]


def test_kernel_info_names_link_python(kernel):
    kernel.client.kernel_info()
    reply = kernel.client.get_shell_msg(timeout=10)
    while reply["msg_type"] != "kernel_info_reply":
        reply = kernel.client.get_shell_msg(timeout=10)
    content = reply["content"]
    assert content["implementation"] == "linkkernel"
    assert content["language_info"]["name"] == "python"
    assert "Link Python" in content["banner"]


def test_input_over_stdin(kernel):
    result = kernel.execute("name = input('who? ')\nprint('hi', name)", stdin_reply="ada")
    assert result.status == "ok"
    assert "hi ada" in result.stdout


def test_interrupt_sleep(kernel):
    started = time.monotonic()
    result = kernel.execute("import time\ntime.sleep(30)", interrupt_after=1.0, timeout=20)
    assert time.monotonic() - started < 10
    assert result.status == "error"
    assert result.reply["content"]["ename"] == "KeyboardInterrupt"
    assert kernel.execute("print('alive')").stdout == "alive\n"


def test_top_level_await(kernel):
    result = kernel.execute("import asyncio\nawait asyncio.sleep(0.01)\nprint(await asyncio.sleep(0, result=42))")
    assert result.status == "ok"
    assert result.stdout == "42\n"


def test_time_and_capture_magics(kernel):
    timed = kernel.execute("%time sum(range(10))")
    assert "Wall time" in timed.stdout
    assert kernel.execute("%%capture cap\nprint('hidden')").stdout == ""
    assert kernel.execute("print(cap.stdout.strip())").stdout == "hidden\n"


def test_widget_opens_a_comm(kernel):
    result = kernel.execute("import ipywidgets as w\ns = w.IntSlider(value=3)\ns")
    assert result.status == "ok"
    opens = result.of_type("comm_open")
    assert any(o["target_name"] == "jupyter.widget" for o in opens)
    views = [d for d in result.displays if "application/vnd.jupyter.widget-view+json" in d["data"]]
    assert views


def test_rich_display(kernel):
    result = kernel.execute(
        "from IPython.display import display, HTML, Markdown\n"
        "display(HTML('<i>x</i>'), Markdown('**y**'))\n"
        "class R:\n    def _repr_html_(self): return '<b>r</b>'\nR()"
    )
    mimes = [set(d["data"]) for d in result.displays]
    assert {"text/html", "text/plain"} <= mimes[0]
    assert "text/markdown" in mimes[1]
    assert result.displays[-1]["data"]["text/html"] == "<b>r</b>"


def test_debug_after_an_error(kernel):
    failed = kernel.execute("def f(v):\n    secret = v * 2\n    raise ValueError(secret)\nf(21)")
    assert failed.reply["content"]["ename"] == "ValueError"
    # %debug reads commands from stdin; one reply prints a local, the next would continue.
    # (execute raises TimeoutError unless the kernel goes idle for the request)
    debugged = kernel.execute("%debug", stdin_reply=["p secret", "q"], timeout=30)
    assert "42" in debugged.stdout


def test_internal_error_is_one_line_and_kernel_survives(link_kernelspec):
    k = Kernel()
    try:
        sabotage = k.execute(
            "import linkkernel.kernel as lk\n"
            "async def broken(self, *args, **kwargs):\n    raise RuntimeError('sabotaged')\n"
            "lk.LinkKernel._execute = broken"
        )
        assert sabotage.status == "ok"
        result = k.execute("print('never runs')", timeout=20)
        assert result.status == "error"
        content = result.reply["content"]
        assert content["ename"] == "LinkKernelInternalError"
        assert len(content["traceback"]) == 1
        assert "linkkernel internal error" in content["traceback"][0]
        assert "kernel log" in content["traceback"][0]
        assert "Traceback" not in result.traceback_text
    finally:
        k.shutdown()


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "linkkernel.cli", *args], capture_output=True, text=True, env=kernel_env(**env)
    )


def test_cli_version_and_help():
    assert run_cli("--version").stdout.startswith("linkkernel ")
    helped = run_cli("--help")
    assert helped.returncode == 0 and "install" in helped.stdout


def test_cli_unknown_flag_is_one_line():
    result = run_cli("install", "--bogus")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--bogus" in result.stderr


def test_install_replaces_cleanly_and_uninstall(tmp_path):
    prefix = tmp_path / "p"
    kernels = prefix / "share" / "jupyter" / "kernels" / "link-python"
    assert run_cli("install", "--prefix", str(prefix)).returncode == 0
    (kernels / "stale.txt").write_text("left over")
    assert run_cli("install", "--prefix", str(prefix), "--display-name", "Link 2").returncode == 0
    assert not (kernels / "stale.txt").exists()
    spec = json.loads((kernels / "kernel.json").read_text())
    assert spec["display_name"] == "Link 2"
    assert {p.name for p in kernels.iterdir()} == {"kernel.json", "logo-32x32.png", "logo-64x64.png", "logo-svg.svg"}


def test_uninstall_removes_the_spec_jupyter_finds(tmp_path):
    prefix = tmp_path / "p"
    assert run_cli("install", "--prefix", str(prefix), "--name", "link-tmp").returncode == 0
    found = str(prefix / "share" / "jupyter")
    removed = run_cli("uninstall", "--name", "link-tmp", JUPYTER_PATH=found)
    assert removed.returncode == 0, removed.stderr
    assert not (prefix / "share" / "jupyter" / "kernels" / "link-tmp").exists()
    again = run_cli("uninstall", "--name", "link-tmp", JUPYTER_PATH=found)
    assert again.returncode == 1
    assert again.stderr.strip() == "linkkernel uninstall: no kernelspec named 'link-tmp' is installed"
