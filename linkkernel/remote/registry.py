"""Workers by alias: `linkkernel workers add|list|remove|ping` and `%link workers ...`.

The registry is `workers.json` in the Jupyter config directory, so it survives kernel
restarts and is shared by every kernel of the user. It holds no secret: the HMAC key is
named by its file path, credentials for `s3://` come from the usual AWS sources, and the
file is still written with mode 0600 because addresses and bucket names are the user's own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from linkkernel.errors import LinkError
from linkkernel.filecache import FileCache
from linkkernel.sharing.commandline import write_atomically

ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_SECRET_OPTION = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)


@dataclass
class WorkerEntry:
    """One registered worker."""

    alias: str
    address: str
    storage: str
    key_file: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    server_key: str | None = None


def registry_path() -> Path:
    return Path(_registry_file())


def _registry_file() -> str:
    """registry_path as a string: load, before every remote run, saves making the Path."""
    from jupyter_core.paths import jupyter_config_dir

    return os.path.join(jupyter_config_dir(), "linkkernel", "workers.json")


# Read before every remote run; a registry replaced, edited or chmod-ed is read and checked
# again (see linkkernel.filecache).
_loaded = FileCache()


def load() -> dict[str, WorkerEntry]:
    """Every registered worker by alias (none when the registry does not exist yet)."""
    return dict(_loaded.read(_registry_file(), _read))  # the caller's to change (add, remove); the entries are not


def _read(path: str) -> tuple[dict[str, WorkerEntry], os.stat_result | None]:
    """The registry's entries, checked, and the fstat of the file they were read from."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            raw = json.loads(f.read())
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as exc:
        raise LinkError(f"worker registry {path} cannot be read: {exc}") from None
    if st.st_mode & 0o022 or st.st_uid != os.getuid():
        # Whoever can write it can point an alias at their own worker and key file, and so
        # receive the user's code and data: refused, as ssh refuses such a config file.
        raise LinkError(
            f"worker registry {path} can be changed by other users (mode {stat.S_IMODE(st.st_mode):04o}, "
            f"owner uid {st.st_uid}); they could send your components to their machine: chmod 600 {path}"
        )
    workers = raw.get("workers", {}) if isinstance(raw, dict) else None
    if not isinstance(workers, dict):
        raise LinkError(f"worker registry {path} is malformed: expected {{\"workers\": {{ALIAS: {{...}}}}}}")
    return {alias: _entry(path, alias, entry) for alias, entry in workers.items()}, st


# The type of every field of an entry, as `save` writes it.
_FIELDS: dict[str, tuple[type, ...]] = {
    "alias": (str,), "address": (str,), "storage": (str,), "key_file": (str,),
    "storage_options": (dict,), "server_key": (str, type(None)),
}


def _entry(path: str, alias: str, raw: Any) -> WorkerEntry:
    """One entry of a registry that may have been edited by hand: checked field by field, so
    a wrong type is named here rather than failing later inside ZeroMQ or pathlib."""
    from linkkernel.remote.protocol import is_curve_public_key

    where = f"worker registry {path} is malformed: entry {alias!r}"
    if not isinstance(raw, dict):
        raise LinkError(f"{where} is {type(raw).__name__}, not an object")
    for name, value in raw.items():
        if name not in _FIELDS:
            raise LinkError(f"{where} has unknown field {name!r}")
        if not isinstance(value, _FIELDS[name]):
            raise LinkError(f"{where}: {name!r} is {type(value).__name__}, expected {_FIELDS[name][0].__name__}")
    missing = [name for name in ("address", "storage", "key_file") if name not in raw]
    if missing:
        raise LinkError(f"{where} lacks {missing[0]!r}")
    if raw.get("server_key") is not None and not is_curve_public_key(raw["server_key"]):
        raise LinkError(f"{where}: 'server_key' is not a CurveZMQ public key (40 Z85 characters)")
    if raw.get("alias", alias) != alias:
        raise LinkError(f"{where} names alias {raw['alias']!r}; the two must agree")
    return WorkerEntry(**{**raw, "alias": alias})


def save(entries: dict[str, WorkerEntry]) -> None:
    """Replace the registry atomically, readable by its owner only."""
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"version": 1, "workers": {alias: asdict(e) for alias, e in sorted(entries.items())}}
    write_atomically(path, (json.dumps(data, indent=1) + "\n").encode(), mode=0o600)


def get(alias: str) -> WorkerEntry:
    entries = load()
    if alias not in entries:
        raise LinkError(_unknown(alias, entries))
    return entries[alias]


def _unknown(alias: str, entries: dict[str, WorkerEntry]) -> str:
    known = ", ".join(sorted(entries)) or "none"
    return (
        f"remote worker {alias!r} is not registered (registered: {known}); "
        f"add it with `linkkernel workers add {alias} --address tcp://HOST:PORT --storage URL --key-file F`"
    )


def require_registered(aliases: set[str]) -> None:
    """Refuse a pipeline naming an unregistered worker before anything runs."""
    entries = load()
    for alias in sorted(aliases):
        if alias not in entries:
            raise LinkError(_unknown(alias, entries))


def add(
    alias: str,
    address: str,
    storage: str,
    key_file: str,
    storage_options: dict[str, Any] | None = None,
    server_key: str | None = None,
) -> WorkerEntry:
    """Register (or replace) a worker after checking what can be checked offline."""
    from linkkernel.remote.protocol import is_curve_public_key, read_key
    from linkkernel.remote.storage import refuse_unshareable

    if not ALIAS.fullmatch(alias):
        raise LinkError(f"alias {alias!r} must match [A-Za-z_][A-Za-z0-9_.-]*")
    tcp = re.fullmatch(r"tcp://([^:/]+|\[[0-9a-fA-F:.]+\]):(\d+)", address)
    if not tcp and not re.fullmatch(r"ipc://.+", address):
        raise LinkError(f"address {address!r} must be tcp://HOST:PORT (or ipc://PATH)")
    # ZeroMQ would wrap a port out of range and cannot connect to "*": refuse what a
    # kernel could never reach rather than let every run of the alias time out.
    if tcp and not 0 < int(tcp[2]) <= 65535:
        raise LinkError(f"address {address!r}: port {tcp[2]} is not a port a worker can listen on (1-65535)")
    if tcp and tcp[1] == "*":
        raise LinkError(f"address {address!r}: * is for a worker's --listen; give the host the worker runs on")
    refuse_unshareable(storage)
    options = dict(storage_options or {})
    secret = sorted(k for k in options if _SECRET_OPTION.search(k))
    if secret:
        raise LinkError(
            f"storage option {secret[0]!r} looks like a secret and the registry keeps none; "
            "give credentials through AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile (--storage-option profile=NAME)"
        )
    key_path = str(Path(key_file).expanduser().resolve())
    read_key(key_path)
    if server_key is not None and not is_curve_public_key(server_key):
        raise LinkError("--server-key must be the worker's CurveZMQ public key (40 Z85 characters)")
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    entry = WorkerEntry(alias, address, storage, key_path, options, server_key)
    entries = load()
    entries[alias] = entry
    save(entries)
    return entry


def remove(alias: str) -> None:
    entries = load()
    if alias not in entries:
        raise LinkError(_unknown(alias, entries))
    del entries[alias]
    save(entries)


def ping(alias: str) -> str:
    """One line: round-trip time and the worker's Python and package versions."""
    from linkkernel.remote.executor import client_for

    entry = get(alias)
    client = client_for(entry)
    rtt, pong = client.ping()
    versions = pong.get("versions", {})
    packages = ", ".join(f"{name} {version}" for name, version in versions.items() if name != "python")
    return (
        f"{alias} ({entry.address}): round trip {rtt * 1000:.2f} ms; Python {versions.get('python', '?')}; "
        f"{packages}; {pong.get('slots')} slot(s), {pong.get('running')} running, {pong.get('queued')} queued"
    )


def describe(entries: dict[str, WorkerEntry]) -> str:
    if not entries:
        return "no workers registered (add one with `linkkernel workers add ALIAS --address ... --storage ... --key-file ...`)"
    lines = []
    for e in entries.values():
        extras = "".join(f" {k}={v}" for k, v in e.storage_options.items())
        curve = " (CurveZMQ)" if e.server_key else ""
        lines.append(f"{e.alias}\t{e.address}{curve}\t{e.storage}{extras}\tkey {e.key_file}")
    return "\n".join(lines)


def configure_workers(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add_p = sub.add_parser("add", help="register a worker under an alias")
    add_p.add_argument("alias")
    add_p.add_argument("--address", required=True, help="tcp://HOST:PORT the worker listens on")
    add_p.add_argument("--storage", required=True, help="artifact store shared with the worker: a directory or s3://bucket/prefix")
    add_p.add_argument("--key-file", required=True, help="file holding the HMAC key shared with the worker")
    add_p.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE", help="fsspec option, e.g. endpoint_url=http://host:9000")
    add_p.add_argument("--server-key", help="the worker's CurveZMQ public key: encrypt and pin the connection")
    sub.add_parser("list", help="show registered workers")
    remove_p = sub.add_parser("remove", help="forget a worker")
    remove_p.add_argument("alias")
    ping_p = sub.add_parser("ping", help="round-trip time and versions of a worker")
    ping_p.add_argument("alias")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from linkkernel.remote.storage import parse_options

    if args.action == "add":
        entry = add(args.alias, args.address, args.storage, args.key_file, parse_options(args.storage_option), args.server_key)
        print(f"registered worker {entry.alias!r} at {entry.address} (registry {registry_path()})")
    elif args.action == "list":
        print(describe(load()))
    elif args.action == "remove":
        remove(args.alias)
        print(f"removed worker {args.alias!r}")
    elif args.action == "ping":
        print(ping(args.alias))
    return 0


class _MagicParser(argparse.ArgumentParser):
    """Usage errors inside a cell become one LinkError line, not a SystemExit."""

    def error(self, message: str) -> NoReturn:
        raise LinkError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            raise LinkError(message.strip())
        raise _HelpShown


class _HelpShown(Exception):
    pass


def workers_magic(kernel, argv: list[str]) -> None:
    """`%link workers add|list|remove|ping ...` with the CLI's arguments."""
    parser = _MagicParser(prog="%link workers")
    configure_workers(parser)  # subparsers inherit _MagicParser
    try:
        args = parser.parse_args(argv)
    except _HelpShown:
        return
    run(args)

