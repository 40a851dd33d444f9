"""A demanding user's bad input to `linkkernel worker`, `linkkernel workers` and `%link workers`:
each mistake is one line saying what is wrong and where, never a traceback (SPEC §5)."""

from __future__ import annotations

import json
import subprocess

import pytest

from linkkernel.remote import registry
from remote_support import cli, closed_port, free_port, make_key, one_line_error


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("qa-remote-cli")


@pytest.fixture(scope="module")
def key_file(tmp):
    return make_key(tmp / "key")


def worker_cli(tmp, key_file, *args: str) -> subprocess.CompletedProcess:
    return cli("worker", "--storage", str(tmp / "store"), "--key-file", str(key_file), "--preload", "sys", *args)


@pytest.mark.parametrize("port", ["99999", "65536", "-1"])
def test_worker_refuses_a_port_out_of_range_instead_of_binding_another(tmp, key_file, port) -> None:
    """ZeroMQ wraps such a port (99999 binds 34463), so a kernel registered with the port the
    user typed could never reach the worker."""
    line = one_line_error(worker_cli(tmp, key_file, "--listen", f"tcp://127.0.0.1:{port}"), "worker")
    assert f"tcp://127.0.0.1:{port}" in line and "port" in line


@pytest.mark.parametrize("address", ["tcp://", "tcp://127.0.0.1", "tcp://:5555", "tcp://127.0.0.1:http"])
def test_worker_garbage_tcp_address_is_one_line_without_a_network_warning(tmp, key_file, address) -> None:
    line = one_line_error(worker_cli(tmp, key_file, "--listen", address), "worker")
    assert repr(address) in line or address in line


@pytest.mark.parametrize("module", ["", ".relative"])
def test_worker_preload_of_a_non_module_name_is_one_line(tmp, key_file, module) -> None:
    line = one_line_error(worker_cli(tmp, key_file, "--listen", "tcp://127.0.0.1:0", "--preload", module), "worker")
    assert line.startswith(f"linkkernel worker: --preload {module}")


def test_worker_curve_key_file_that_is_a_directory_is_one_line(tmp, key_file) -> None:
    (tmp / "curve-dir").mkdir()
    line = one_line_error(worker_cli(tmp, key_file, "--listen", "tcp://127.0.0.1:0", "--curve-key-file", str(tmp / "curve-dir")), "worker")
    assert str(tmp / "curve-dir") in line


def test_worker_refuses_memory_storage_no_kernel_can_share(key_file) -> None:
    """`memory://` lives inside one process: the kernel's blobs would never reach the worker."""
    done = cli("worker", "--listen", "tcp://127.0.0.1:0", "--storage", "memory://lk", "--key-file", str(key_file), "--preload", "sys", timeout=15)
    assert "memory://" in one_line_error(done, "worker")


@pytest.mark.parametrize(
    ("address", "problem"),
    [("tcp://127.0.0.1:99999", "port"), ("tcp://127.0.0.1:0", "port"), ("tcp://*:5555", "host")],
)
def test_workers_add_refuses_an_address_no_kernel_can_connect_to(tmp, key_file, address, problem) -> None:
    done = cli("workers", "add", "w", "--address", address, "--storage", str(tmp / "store"), "--key-file", str(key_file))
    line = one_line_error(done, "workers")
    assert address in line and problem in line


def test_workers_add_refuses_memory_storage(tmp, key_file) -> None:
    done = cli("workers", "add", "w", "--address", "tcp://127.0.0.1:5555", "--storage", "memory://x", "--key-file", str(key_file))
    assert "memory://" in one_line_error(done, "workers")


def _write_registry(entries) -> None:
    path = registry.registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))


def _entry(key, **changes) -> dict:
    return {"alias": "w", "address": f"tcp://127.0.0.1:{free_port()}", "storage": "/tmp", "key_file": str(key), **changes}


HAND_EDITED = [
    pytest.param([], id="a list"),
    pytest.param(None, id="null"),
    pytest.param({"workers": []}, id="workers a list"),
    pytest.param({"workers": {"w": "tcp://127.0.0.1:5"}}, id="entry a string"),
    pytest.param("address", id="address a number"),
    pytest.param("key_file", id="key_file a number"),
    pytest.param("storage_options", id="storage_options a string"),
    pytest.param("alias", id="alias differs from its key"),
]


def _hand_edited(case, key_file):
    if case == "address":
        return {"workers": {"w": _entry(key_file, address=5)}}
    if case == "key_file":
        return {"workers": {"w": _entry(key_file, key_file=7)}}
    if case == "storage_options":
        return {"workers": {"w": _entry(key_file, storage_options="endpoint_url=x")}}
    if case == "alias":
        return {"workers": {"w": _entry(key_file, alias="other")}}
    return case


@pytest.mark.parametrize("case", HAND_EDITED)
def test_a_hand_edited_registry_of_wrong_types_is_one_line_for_every_action(key_file, case) -> None:
    _write_registry(_hand_edited(case, key_file))
    try:
        for action in (["list"], ["ping", "w"], ["remove", "w"]):
            line = one_line_error(cli("workers", *action), "workers")
            assert str(registry.registry_path()) in line
    finally:
        registry.registry_path().unlink()


def test_ping_of_an_address_zeromq_cannot_connect_to_is_one_line(key_file) -> None:
    """A registry written by hand (or an older linkkernel) may hold one."""
    _write_registry({"workers": {"w": _entry(key_file, address="tcp://*:5555")}})
    try:
        line = one_line_error(cli("workers", "ping", "w"), "workers")
        assert "tcp://*:5555" in line
    finally:
        registry.registry_path().unlink()


def test_a_broken_registry_in_the_kernel_is_one_line_not_an_internal_error(key_file, kernel, tmp) -> None:
    """A component on a worker must say the registry is broken, not report a linkkernel bug."""
    _write_registry({"workers": []})
    try:
        meta = {"tags": ["component:far_away", "remote:gpu1"]}
        result = kernel.execute("x = 1", metadata=meta, cell_id="far-away")
        assert result.status == "error"
        assert result.reply["content"]["ename"] == "LinkError", result.traceback_text
        text = result.traceback_text.strip()
        assert str(registry.registry_path()) in text and len(text.splitlines()) == 1
        listed = kernel.execute("%link workers list")
        assert listed.reply["content"]["ename"] == "LinkError"
        assert kernel.execute("1 + 1").status == "ok"
    finally:
        registry.registry_path().unlink()


@pytest.mark.parametrize("value", ["5", "[1]"])
def test_worker_s3_config_kwargs_that_is_no_object_is_one_line(key_file, value) -> None:
    done = cli("worker", "--listen", "tcp://127.0.0.1:0", "--preload", "sys", "--storage", "s3://bucket/p", "--key-file", str(key_file),
               "--storage-option", f"config_kwargs={value}", "--storage-option", f"endpoint_url=http://127.0.0.1:{closed_port()}")
    assert "config_kwargs" in one_line_error(done, "worker")


@pytest.mark.parametrize("mode", [0o666, 0o620])
def test_a_registry_others_can_write_is_refused(key_file, mode) -> None:
    """Whoever can write the registry can point an alias at their own worker and key file,
    and so receive the user's code and data: refused, as ssh refuses such a config."""
    _write_registry({"workers": {"w": _entry(key_file)}})
    path = registry.registry_path()
    path.chmod(mode)
    try:
        for action in (["list"], ["ping", "w"]):
            line = one_line_error(cli("workers", *action), "workers")
            assert str(path) in line and "chmod 600" in line
        assert cli("workers", "remove", "w").returncode == 1
    finally:
        path.unlink()


def test_a_registry_others_can_only_read_is_used(key_file) -> None:
    _write_registry({"workers": {"w": _entry(key_file)}})
    path = registry.registry_path()
    path.chmod(0o644)
    try:
        assert "w\t" in cli("workers", "list").stdout
    finally:
        path.unlink()


def test_worker_refuses_a_key_file_others_can_read(tmp) -> None:
    """Whoever reads the key can run any code on the worker: refused as ssh refuses it."""
    key = make_key(tmp / "readable.key")
    key.chmod(0o644)
    line = one_line_error(worker_cli(tmp, key, "--listen", "tcp://127.0.0.1:0"), "worker")
    assert line == f"linkkernel worker: key file {key} is readable by other users (mode 0644); run: chmod 600 {key}"


def test_worker_refuses_a_curve_secret_key_file_others_can_read(tmp, key_file) -> None:
    """The CurveZMQ secret lets whoever reads it pose as the worker: refused like the HMAC key."""
    import zmq

    curve = tmp / "readable.curve"
    curve.write_bytes(zmq.curve_keypair()[1] + b"\n")
    curve.chmod(0o640)
    line = one_line_error(worker_cli(tmp, key_file, "--listen", "tcp://127.0.0.1:0", "--curve-key-file", str(curve)), "worker")
    assert line == f"linkkernel worker: key file {curve} is readable by other users (mode 0640); run: chmod 600 {curve}"


@pytest.mark.parametrize("command", ["worker", "workers"])
def test_a_key_file_that_never_ends_or_is_huge_is_one_line(tmp, command) -> None:
    """`--key-file /dev/zero` (a slip of the tab key) used to read forever, eating memory."""
    big = tmp / "not-a-key.bin"
    big.write_bytes(b"x" * 1_000_000)
    for key in ("/dev/zero", str(big)):
        args = (["worker", "--listen", "tcp://127.0.0.1:0", "--preload", "sys"] if command == "worker"
                else ["workers", "add", "w", "--address", "tcp://127.0.0.1:5555"])
        line = one_line_error(cli(*args, "--storage", str(tmp / "store"), "--key-file", key, timeout=20), command)
        assert key in line and "bytes" in line
