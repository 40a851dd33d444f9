"""Signed messages: forged, unsigned, replayed and malformed ones are dropped, by the Signer
and by a real worker, which keeps serving."""

from __future__ import annotations

import json
import time

import pytest
import zmq

from linkkernel.errors import LinkError
from linkkernel.remote.protocol import BadMessage, Signer, read_key
from remote_support import WorkerProcess, make_key

KEY = b"k" * 32


def test_round_trip_carries_body_and_buffers() -> None:
    frames = Signer(KEY).sign("submit", {"a": 1}, [b"\x00binary", b""])
    message = Signer(KEY).verify(frames)
    assert (message.type, message.body, message.buffers) == ("submit", {"a": 1}, [b"\x00binary", b""])


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda f: [f[0], f[1], b"\x01binary"], id="binary-buffer-changed"),
        pytest.param(lambda f: [f[0], f[1].replace(b'"a":1', b'"a":2'), f[2]], id="header-changed"),
        pytest.param(lambda f: [f[0], f[1]], id="buffer-dropped"),
        pytest.param(lambda f: [f[0], f[1] + f[2][:1], f[2][1:]], id="frames-resplit"),
        pytest.param(lambda f: f[1:], id="unsigned"),
        pytest.param(lambda f: [Signer(b"other" * 8).sign("submit", {"a": 1}, [f[2]])[0], *f[1:]], id="other-key"),
    ],
)
def test_forged_or_unsigned_frames_are_refused(tamper) -> None:
    frames = Signer(KEY).sign("submit", {"a": 1}, [b"\x00binary"])
    with pytest.raises(BadMessage):
        Signer(KEY).verify(tamper(frames))


def test_replay_is_refused() -> None:
    receiver = Signer(KEY)
    frames = Signer(KEY).sign("ping")
    receiver.verify(frames)
    with pytest.raises(BadMessage, match="replayed"):
        receiver.verify(frames)


def test_stale_timestamp_is_refused_even_with_a_valid_signature() -> None:
    old = Signer(KEY, window=60)
    frames = old.sign("ping")
    header = json.loads(frames[1])
    header["ts"] = time.time() - 3600
    forged = [json.dumps(header).encode()]
    from linkkernel.remote.protocol import _mac

    with pytest.raises(BadMessage, match="stale"):
        Signer(KEY).verify([_mac(KEY, forged), *forged])


@pytest.mark.parametrize("payload", [b"not json", b"[]", b'{"type": "ping"}', b'{"v": 1, "type": 3, "nonce": "n", "ts": 0, "body": {}}'])
def test_malformed_but_signed_headers_are_refused(payload: bytes) -> None:
    from linkkernel.remote.protocol import _mac

    with pytest.raises(BadMessage):
        Signer(KEY).verify([_mac(KEY, [payload]), payload])


def test_key_file_must_exist_and_be_long_enough(tmp_path) -> None:
    with pytest.raises(LinkError, match="not found"):
        read_key(tmp_path / "missing")
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(LinkError, match="at least 16"):
        read_key(tmp_path / "short")


@pytest.mark.parametrize(("mode", "how"), [(0o644, "readable"), (0o640, "readable"), (0o604, "readable"), (0o620, "writable")])
def test_a_key_file_other_users_can_read_or_write_is_refused(tmp_path, mode, how) -> None:
    key = make_key(tmp_path / "key")
    key.chmod(mode)
    with pytest.raises(LinkError) as refused:
        read_key(key)
    assert str(refused.value) == f"key file {key} is {how} by other users (mode {mode:04o}); run: chmod 600 {key}"
    key.chmod(0o600)
    assert len(read_key(key)) == 64


def settled(path) -> None:
    """Wait until the file's last change is old enough for what is read from it to be kept
    (linkkernel.filecache.SETTLED_NS): only then can a test see a kept key outlive a change."""
    from linkkernel.filecache import SETTLED_NS

    time.sleep(SETTLED_NS / 1e9 * 2)


def test_a_key_rewritten_in_place_is_read_again(tmp_path) -> None:
    """A kernel reads its worker's key before every run and keeps it while the file stays
    the same; the same file given a new key of the same length is read again."""
    key = make_key(tmp_path / "key")
    settled(key)
    first = read_key(key)
    assert read_key(key) == first
    make_key(key)  # O_TRUNC: same inode, same size
    assert read_key(key) != first and read_key(key) == key.read_bytes().strip()


@pytest.mark.parametrize("mode", [0o640, 0o620])
def test_a_key_file_opened_to_others_after_it_was_read_is_refused_at_the_next_read(tmp_path, mode) -> None:
    key = make_key(tmp_path / "key")
    settled(key)
    read_key(key)
    key.chmod(mode)
    with pytest.raises(LinkError, match="by other users"):
        read_key(key)
    key.chmod(0o600)
    assert len(read_key(key)) == 64


def test_a_key_file_removed_after_it_was_read_is_not_found(tmp_path) -> None:
    key = make_key(tmp_path / "key")
    settled(key)
    read_key(key)
    key.unlink()
    with pytest.raises(LinkError, match="not found"):
        read_key(key)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protocol")
    key_file = make_key(tmp / "key")
    w = WorkerProcess(str(tmp / "store"), key_file, tmp)
    w.key = read_key(key_file)
    w.tmp = tmp
    yield w
    w.stop()


@pytest.fixture
def dealer(worker):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(worker.address)
    yield sock
    sock.close(0)


def _answer(sock, signer: Signer, timeout: float = 1.5):
    if not sock.poll(timeout * 1000):
        return None
    return signer.verify(sock.recv_multipart())


def _submit_body(marker) -> dict:
    from linkkernel.remote.worker import versions

    code = f"open({str(marker)!r}, 'a').write('ran\\n')"
    return {"task": "t" + marker.name, "name": "probe", "code": code, "inputs": {}, "versions": versions()}


def test_worker_drops_bad_messages_and_keeps_serving(worker, dealer) -> None:
    signer = Signer(worker.key)
    marker = worker.tmp / "forged-ran"
    good = signer.sign("submit", _submit_body(marker))
    attempts = {
        "unsigned": good[1:],
        "forged": [Signer(b"x" * 32).sign("submit", _submit_body(marker))[0], *good[1:]],
        "tampered": [good[0], good[1].replace(b"probe", b"prob3")],
        "malformed": [b"garbage"],
        "empty-signature": [b"", b"{}"],
    }
    for frames in attempts.values():
        dealer.send_multipart(frames)
    assert _answer(dealer, signer, timeout=1.0) is None
    assert not marker.exists(), "a forged or unsigned task ran"
    log = worker.wait_for_log("malformed")
    assert log.count("dropped a message") >= len(attempts)
    dealer.send_multipart(signer.sign("ping"))
    assert _answer(dealer, signer).type == "pong"


def test_worker_runs_a_replayed_submit_only_once(worker, dealer) -> None:
    signer = Signer(worker.key)
    marker = worker.tmp / "replay-ran"
    frames = signer.sign("submit", _submit_body(marker))
    dealer.send_multipart(frames)
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "done" not in seen:
        message = _answer(dealer, signer)
        if message is not None:
            seen.append(message.type)
    assert "done" in seen
    dealer.send_multipart(frames)
    while (message := _answer(dealer, signer, timeout=1.0)) is not None:
        assert message.type == "heartbeat"
    worker.wait_for_log("replayed nonce")
    assert marker.read_text() == "ran\n"


def test_signed_but_malformed_bodies_do_not_stop_the_worker(worker, dealer) -> None:
    signer = Signer(worker.key)
    marker = worker.tmp / "malformed-ran"
    bodies = [
        {**_submit_body(marker), "versions": [1, 2]},
        {**_submit_body(marker), "inputs": ["x"]},
        {**_submit_body(marker), "inputs": {"x": 5}},
        {**_submit_body(marker), "inputs": {"x": ["not", "a", "digest"]}},
        {**_submit_body(marker), "inputs": {"x": "ab" * 32}, "verified": ["ab" * 32]},
        {**_submit_body(marker), "inputs": {"x": "ab" * 32}, "verified": {"ab" * 32: "identity"}},
        {"task": 7},
    ]
    for body in bodies:
        dealer.send_multipart(signer.sign("submit", body))
    dealer.send_multipart(signer.sign("cancel", {"task": None}))
    dealer.send_multipart(signer.sign("explode", {}))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = _answer(dealer, signer, timeout=0.5)
        if message is None:
            break
    dealer.send_multipart(signer.sign("ping"))
    pong = None
    while pong is None or pong.type != "pong":
        pong = _answer(dealer, signer)
        assert pong is not None, worker.log()
    assert worker.alive() and not marker.exists()
