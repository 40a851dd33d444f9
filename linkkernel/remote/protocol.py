"""Signed multipart messages between a kernel and a worker (SPEC §5).

Jupyter's own wire protocol leaves binary buffers unsigned; here one HMAC-SHA256 covers every
frame (each length-prefixed, so frames cannot be re-split), binary buffers included. A nonce
and a timestamp in each header let a receiver drop replays: a nonce seen within the window,
or a timestamp outside it. Anything unsigned, forged, replayed or malformed is dropped and
logged by the receiver and never reaches a handler.

Frames on the wire: [signature, header (JSON), *buffers]. The header holds the message type,
nonce, timestamp and the JSON body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from linkkernel.errors import LinkError
from linkkernel.filecache import FileCache

VERSION = 1
# A message older or newer than this (seconds) is refused outright; within it, nonces are
# remembered, so a replay is caught either way. Generous enough for unsynchronised clocks.
REPLAY_WINDOW = 60.0
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 4096
# A kernel can vanish without its TCP connection closing (its host crashed, the network is cut,
# the laptop sleeps, the process is stopped): the worker would keep its tasks running for
# nobody. So the worker's socket sends ZMTP heartbeats: PING/PONG handled inside libzmq, which
# the kernel's ZeroMQ I/O thread answers whatever its Python code does. They do not depend on
# a task's output, which may be torrents or nothing for hours, nor on the kernel being idle:
# a kernel busy with a long cell, even one holding the GIL, still answers. A peer silent for
# KERNEL_SILENCE seconds after a ping is disconnected and treated as gone (its tasks killed).
# Seconds, not less: a loaded machine or a slow link may delay a PONG by a second or so;
# not more: a lost kernel's slot should serve someone else soon.
KERNEL_PING_INTERVAL = 1.0
KERNEL_SILENCE = 5.0


class BadMessage(Exception):
    """A message that must be dropped; the text says why (for the receiver's log)."""


@dataclass
class Message:
    """A verified message: its type, JSON body and binary buffers."""

    type: str
    body: dict[str, Any] = field(default_factory=dict)
    buffers: list[bytes] = field(default_factory=list)


# Read before every remote run; a key rewritten in place or a file chmod-ed is read and
# checked again (see linkkernel.filecache).
_keys = FileCache()


def read_key(path: str | os.PathLike) -> bytes:
    """The shared HMAC key from a key file, refused when missing, too short to be a secret,
    or open to other users (see _refuse_shared)."""
    return _keys.read(os.path.expanduser(path), _read_key)


def _read_key(key_path: str) -> tuple[bytes, os.stat_result]:
    try:
        # Bounded: a slip such as /dev/zero or a data file must not be read into memory whole.
        with open(key_path, "rb") as f:
            key = f.read(MAX_KEY_BYTES + 1)
            st = os.fstat(f.fileno())
    except FileNotFoundError:
        raise LinkError(
            f"key file {key_path} not found; create one with "
            f"`(umask 077; python -c 'import secrets; print(secrets.token_hex(32))' > {key_path})`"
        ) from None
    except OSError as exc:
        raise LinkError(f"cannot read key file {key_path}: {exc.strerror}") from None
    if len(key) > MAX_KEY_BYTES:
        raise LinkError(f"key file {key_path} holds more than {MAX_KEY_BYTES} bytes; a key is a short secret such as 64 hex characters (is it the right file?)")
    key = key.strip()
    if len(key) < MIN_KEY_BYTES:
        raise LinkError(f"key file {key_path} holds {len(key)} bytes; a key needs at least {MIN_KEY_BYTES}")
    _refuse_shared(key_path, st)
    return key, st


def _refuse_shared(key_path: str | Path, st: os.stat_result) -> None:
    """Refuse a key file other users can read or write, as ssh refuses such a private key.

    Whoever reads the key can sign tasks (run any code on the worker, as its user) and forge
    results; whoever writes it can swap it. Refused rather than warned about: a warning on a
    worker's log or in a cell is easily missed, and the fix is one chmod. Only regular files:
    a pipe (`--key-file <(pass show lk)`) or a device is not kept anywhere others could read
    later, and POSIX modes mean nothing on Windows.
    """
    mode = stat.S_IMODE(st.st_mode)
    if os.name == "nt" or not stat.S_ISREG(st.st_mode) or not mode & 0o066:
        return
    how = "readable" if mode & 0o044 else "writable"
    raise LinkError(f"key file {key_path} is {how} by other users (mode {mode:04o}); run: chmod 600 {key_path}")


def _mac(key: bytes, frames: list[bytes]) -> bytes:
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for frame in frames:
        mac.update(len(frame).to_bytes(8, "little"))
        mac.update(frame)
    return mac.hexdigest().encode()


class Signer:
    """Signs outgoing messages and verifies incoming ones with one shared key."""

    def __init__(self, key: bytes, window: float = REPLAY_WINDOW) -> None:
        self._key = key
        self._window = window
        self._seen: OrderedDict[str, float] = OrderedDict()

    def sign(self, type_: str, body: dict[str, Any] | None = None, buffers: list[bytes] = ()) -> list[bytes]:
        """The frames of a message ready to send."""
        header = {
            "v": VERSION,
            "type": type_,
            "nonce": secrets.token_hex(16),
            "ts": time.time(),
            "body": body or {},
        }
        frames = [json.dumps(header, separators=(",", ":")).encode(), *buffers]
        return [_mac(self._key, frames), *frames]

    def verify(self, frames: list[bytes]) -> Message:
        """The message the frames carry, or BadMessage saying why they must be dropped."""
        if len(frames) < 2:
            raise BadMessage(f"malformed: {len(frames)} frame(s), expected a signature and a header")
        signature, *signed = (bytes(f) for f in frames)
        if not hmac.compare_digest(signature, _mac(self._key, signed)):
            raise BadMessage("bad or missing signature")
        try:
            header = json.loads(signed[0])
            type_, nonce, ts, body = header["type"], header["nonce"], float(header["ts"]), header["body"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BadMessage(f"malformed header: {exc}") from None
        if header.get("v") != VERSION or not isinstance(type_, str) or not isinstance(body, dict):
            raise BadMessage(f"malformed header (version {header.get('v')!r})")
        now = time.time()
        if abs(now - ts) > self._window:
            raise BadMessage(f"stale timestamp ({now - ts:+.0f} s), possible replay")
        self._forget(now)
        if nonce in self._seen:
            raise BadMessage("replayed nonce")
        self._seen[nonce] = ts
        return Message(type_, body, signed[1:])

    def _forget(self, now: float) -> None:
        # Nonces are appended in arrival order; drop those whose timestamps left the window.
        while self._seen:
            nonce, ts = next(iter(self._seen.items()))
            if now - ts <= self._window * 2:
                break
            self._seen.popitem(last=False)


def is_ipv6(address: str) -> bool:
    """Whether a tcp:// address names an IPv6 host (`tcp://[::1]:5555`): ZeroMQ sockets
    refuse those ("No such device") unless told to use IPv6, which is off by default."""
    return address.startswith("tcp://") and ":" in address[len("tcp://") :].rpartition(":")[0]


def is_curve_public_key(text: str) -> bool:
    """Whether `text` is a CurveZMQ public key as `--server-key` takes it (40 Z85 characters);
    ZeroMQ would refuse anything else only when a socket is configured with it."""
    from zmq.utils import z85

    try:
        return len(text) == 40 and len(z85.decode(text)) == 32
    except (KeyError, ValueError, TypeError):  # a character outside Z85's alphabet
        return False


def configure_curve_client(socket: zmq.Socket, server_key: str | None) -> None:
    """Encrypt the connection when the worker's public key is pinned in the registry.

    The client's own key pair is throwaway: authentication is the shared HMAC key; CurveZMQ
    adds confidentiality and makes sure we talk to the worker whose key we pinned.
    """
    if not server_key:
        return
    public, secret = zmq.curve_keypair()
    socket.curve_serverkey = server_key.encode()
    socket.curve_publickey = public
    socket.curve_secretkey = secret


def load_or_create_curve_key(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """The worker's CurveZMQ (public, secret) keys, created (mode 0600) on first use; a file
    other users can read or write is refused, as the HMAC key file is."""
    key_path = Path(path).expanduser()
    try:
        if not key_path.exists():
            public, secret = zmq.curve_keypair()
            key_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secret + b"\n")
        with open(key_path, "rb") as f:
            secret = f.read(MAX_KEY_BYTES).strip()
            st = os.fstat(f.fileno())
    except OSError as exc:  # a directory, no permission, a parent that is a file
        raise LinkError(f"cannot use CurveZMQ key file {key_path}: {exc.strerror or exc}") from None
    _refuse_shared(key_path, st)
    try:
        public = zmq.curve_public(secret)
    except (ValueError, zmq.ZMQError) as exc:
        raise LinkError(f"{key_path} does not hold a CurveZMQ secret key (Z85, 40 characters): {exc}") from None
    return public, secret
