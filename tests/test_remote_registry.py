"""`linkkernel workers ...` and `%link workers ...`: a registry that holds no secret."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from linkkernel.errors import LinkError
from linkkernel.remote import registry
from remote_support import WorkerProcess, kernel_env, make_key


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "linkkernel.cli", *args], capture_output=True, text=True, env=kernel_env(), timeout=60
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("registry")
    key_file = make_key(tmp / "key")
    w = WorkerProcess(str(tmp / "store"), key_file, tmp)
    yield tmp, key_file, w
    w.stop()


def test_add_list_ping_remove_through_the_cli(setup) -> None:
    tmp, key_file, w = setup
    added = cli("workers", "add", "gpu1", "--address", w.address, "--storage", str(tmp / "store"),
                "--key-file", str(key_file), "--storage-option", "auto_mkdir=true")
    assert added.returncode == 0, added.stderr
    path = registry.registry_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())["workers"]["gpu1"]
    assert saved["key_file"] == str(key_file) and key_file.read_text().strip() not in path.read_text()
    assert saved["storage_options"] == {"auto_mkdir": True}

    listed = cli("workers", "list")
    assert "gpu1" in listed.stdout and w.address in listed.stdout

    pinged = cli("workers", "ping", "gpu1")
    assert pinged.returncode == 0, pinged.stderr
    assert "round trip" in pinged.stdout and f"Python {sys.version.split()[0]}" in pinged.stdout
    assert "cloudpickle" in pinged.stdout and "linkkernel" in pinged.stdout

    assert cli("workers", "remove", "gpu1").returncode == 0
    assert "gpu1" not in cli("workers", "list").stdout


def test_registry_survives_a_new_process(setup) -> None:
    tmp, key_file, w = setup
    registry.add("persist", w.address, str(tmp / "store"), str(key_file))
    out = subprocess.run(
        [sys.executable, "-c", "from linkkernel.remote import registry; print(registry.get('persist').address)"],
        capture_output=True, text=True, env=kernel_env(), timeout=60,
    )
    assert out.stdout.strip() == w.address


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad alias!", "--address", "tcp://127.0.0.1:1"], "alias 'bad alias!'"),
        (["ok", "--address", "http://127.0.0.1:1"], "must be tcp://HOST:PORT"),
        (["ok", "--address", "tcp://127.0.0.1:1", "--storage-option", "secret=abc"], "looks like a secret"),
        (["ok", "--address", "tcp://127.0.0.1:1", "--server-key", "short"], "CurveZMQ public key"),
    ],
)
def test_bad_input_is_one_line(setup, args, message) -> None:
    tmp, key_file, _ = setup
    done = cli("workers", "add", *args, "--storage", str(tmp), "--key-file", str(key_file))
    assert done.returncode == 1
    assert done.stderr.startswith("linkkernel workers: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_missing_key_file_is_refused(setup, tmp_path) -> None:
    done = cli("workers", "add", "k", "--address", "tcp://127.0.0.1:1", "--storage", str(tmp_path), "--key-file", str(tmp_path / "nokey"))
    assert done.returncode == 1 and "key file" in done.stderr and "not found" in done.stderr


def test_ping_of_a_dead_worker_is_one_line(setup) -> None:
    tmp, key_file, _ = setup
    registry.add("dead", "tcp://127.0.0.1:9", str(tmp / "store"), str(key_file))
    done = cli("workers", "ping", "dead")
    assert done.returncode == 1 and "is unreachable" in done.stderr


def test_require_registered_names_the_unknown_alias(setup) -> None:
    tmp, key_file, w = setup
    registry.add("known", w.address, str(tmp / "store"), str(key_file))
    registry.require_registered({"known"})
    with pytest.raises(LinkError, match="remote worker 'gpu9' is not registered"):
        registry.require_registered({"known", "gpu9"})


def test_link_workers_magic_in_a_kernel(setup, kernel) -> None:
    tmp, key_file, w = setup
    add = kernel.execute(f"%link workers add magic1 --address {w.address} --storage {tmp / 'store'} --key-file {key_file}")
    assert add.status == "ok", add.traceback_text
    listed = kernel.execute("%link workers list")
    assert "magic1" in listed.stdout
    pinged = kernel.execute("%link workers ping magic1")
    assert "round trip" in pinged.stdout, pinged.traceback_text
    bad = kernel.execute("%link workers add")
    assert bad.status == "error" and bad.traceback_text.strip().startswith("LinkError: %link workers add:")
    assert "Traceback" not in bad.traceback_text
    removed = kernel.execute("%link workers remove magic1")
    assert removed.status == "ok" and "magic1" not in registry.load()
    assert os.environ["JUPYTER_CONFIG_DIR"] in str(registry.registry_path())


def settled() -> None:
    """Wait until the registry's last change is old enough for what is read from it to be
    kept (linkkernel.filecache.SETTLED_NS): only then can a kept registry outlive a change."""
    from linkkernel.filecache import SETTLED_NS

    time.sleep(SETTLED_NS / 1e9 * 2)


def test_a_registry_edited_in_place_is_read_again(setup) -> None:
    """A kernel reads the registry before every run and keeps it while the file stays the
    same; an alias pointed elsewhere by hand (same file, same size) takes effect at once."""
    tmp, key_file, _ = setup
    registry.add("edited", "tcp://127.0.0.1:5001", str(tmp / "store"), str(key_file))
    settled()
    assert registry.get("edited").address == "tcp://127.0.0.1:5001"
    path = registry.registry_path()
    text = path.read_text()
    with open(path, "r+") as f:  # in place: same inode
        f.write(text.replace("tcp://127.0.0.1:5001", "tcp://127.0.0.1:5002"))
    assert registry.get("edited").address == "tcp://127.0.0.1:5002"
    registry.remove("edited")


def test_a_registry_made_writable_by_others_after_it_was_read_is_refused(setup) -> None:
    tmp, key_file, _ = setup
    registry.add("opened", "tcp://127.0.0.1:5001", str(tmp / "store"), str(key_file))
    settled()
    registry.get("opened")
    path = registry.registry_path()
    path.chmod(0o620)
    try:
        with pytest.raises(LinkError, match="can be changed by other users"):
            registry.get("opened")
    finally:
        path.chmod(0o600)
    registry.remove("opened")


def test_changing_what_load_returned_leaves_the_registry_as_it_is(setup) -> None:
    tmp, key_file, _ = setup
    registry.add("kept", "tcp://127.0.0.1:5001", str(tmp / "store"), str(key_file))
    settled()
    registry.load().pop("kept")
    assert "kept" in registry.load()
    registry.remove("kept")
