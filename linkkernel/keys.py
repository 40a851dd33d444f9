"""The user's linkkernel key: HMAC-SHA256 signatures on what leaves or enters this machine.

A checksum stored next to data is not integrity (whoever swaps the data recomputes it); an
HMAC with a key kept outside the data is. The key lives in the Jupyter data directory
(`jupyter --data-dir`/linkkernel/key), created on first use, readable by the user only.
Any module that signs (cache archives, worker messages) reads it from here.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from linkkernel.errors import LinkError

KEY_BYTES = 32


def user_key_path() -> Path:
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "linkkernel" / "key"


def read_key(path: str | Path) -> bytes:
    """The key in a key file: 64 hex digits (surrounding whitespace ignored)."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except OSError as exc:
        raise LinkError(f"key file {path}: cannot read: {exc.strerror}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise LinkError(f"key file {path}: not a linkkernel key (expected {KEY_BYTES * 2} hex digits)") from exc
    if len(key) < 16:
        raise LinkError(f"key file {path}: key too short ({len(key)} bytes, at least 16 needed)")
    return key


def write_new_key(path: str | Path) -> bytes:
    """Create a random key file, mode 0600, failing if it exists (two creators never race)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.hex() + "\n")
    return key


def user_key() -> bytes:
    """The user's key, created on first use."""
    path = user_key_path()
    if not path.exists():
        try:
            return write_new_key(path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        except OSError as exc:
            raise LinkError(f"key file {path}: cannot create: {exc.strerror}") from exc
    return read_key(path)


def existing_user_key() -> bytes | None:
    """The user's key if there is one: checking a signature must not create a key."""
    path = user_key_path()
    return read_key(path) if path.exists() else None


def sign(key: bytes, data: bytes) -> str:
    """HMAC-SHA256 of `data`, hex."""
    return hmac.new(key, data, hashlib.sha256).hexdigest()


def verify(key: bytes, data: bytes, signature: str) -> bool:
    """Whether `signature` is `data`'s HMAC under `key` (constant-time comparison)."""
    return hmac.compare_digest(sign(key, data), signature.strip())


def fingerprint(key: bytes) -> str:
    """A short public name for a key, so messages can tell keys apart without showing them."""
    return hashlib.sha256(b"linkkernel key id\0" + key).hexdigest()[:16]
