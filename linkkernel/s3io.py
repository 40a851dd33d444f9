"""S3 objects read whole with one GET and written whole with one PUT, through s3fs's client.

fsspec's file reads an object in ranges through a read-ahead cache, and writes one through a
buffer cut into the parts of a multipart upload: each byte is copied two or three times more
(~0.15 s per 100 MB each way here), and the server assembles the parts again (~0.5 s per
100 MB on moto). Blob files are read whole and written whole, and need neither. The remote
components' storage reads and writes its blobs so; the cache store writes its files so (it
reads a file with one `read()`, which fsspec already does with one GET).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, BinaryIO

# The largest object written with one PUT, its whole body in memory (S3 takes up to 5 GiB);
# a bigger one goes up as fsspec's multipart upload.
ONE_PUT = 256 << 20
CHUNK = 8 << 20


def no_download_checksum() -> dict[str, str]:
    """botocore's check of a download against the CRC the store keeps for it is a pass over
    every byte in Python (~0.06 s per 100 MB here) that adds nothing: a reader verifies each
    blob against its MAC and digest before using it. Uploads keep their CRC: it costs no
    measurable time, and stores with Object Lock require one. botocore before 1.36 neither
    checks nor knows the option (s3fs 2024.6 allows those), and would refuse it."""
    from botocore.config import Config

    option = "response_checksum_validation"
    return {option: "when_required"} if option in Config.OPTION_DEFAULTS else {}


def is_s3(fs: Any) -> bool:
    """Whether `fs` is s3fs's file system."""
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "s3" in protocol and hasattr(fs, "call_s3")


def put_whole(fs: Any, path: str, write: Callable[[BinaryIO], object], size: int = 0) -> None:
    """Upload what `write` writes as the object at `path`, with one PUT: S3 makes it visible
    only once complete, so an interrupted upload leaves nothing behind. `size`, when known,
    makes the body once at its final size rather than grown as it is written."""
    body = io.BytesIO()
    if size:
        body.seek(size - 1)
        body.write(b"\0")
        body.seek(0)
    write(body)
    body.seek(0)
    bucket, key, _ = fs.split_path(path)
    fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body)
    fs.invalidate_cache(path)


class WholeRead:
    """An S3 object read with one GET, its body streamed straight into the buffers the reader
    gives (`readinto`), or into a file (`copy_to`)."""

    def __init__(self, fs: Any, path: str) -> None:
        from fsspec.asyn import sync

        self._sync = lambda coro, *args: sync(fs.loop, coro, *args)
        bucket, key, version = fs.split_path(path)
        versioned = {"VersionId": version} if version else {}
        response = fs.call_s3("get_object", Bucket=bucket, Key=key, **versioned)
        self._body = response["Body"]
        self.size: int = response["ContentLength"]

    def readinto(self, buffer: Any) -> int:
        """Fill `buffer` unless the object ends first; the bytes read."""
        return self._sync(self._fill, memoryview(buffer).cast("B"))

    async def _fill(self, view: memoryview) -> int:
        got = 0
        while got < view.nbytes:
            n = await self._body.readinto(view[got:])
            if not n:
                break
            got += n
        return got

    def read(self, n: int) -> bytes:
        buffer = bytearray(n)
        return bytes(buffer[: self.readinto(buffer)])

    def copy_to(self, f: BinaryIO) -> None:
        """Write the rest of the object to file `f` as its chunks arrive (no copy of ours)."""
        while chunk := self._sync(self._body.read, CHUNK):
            f.write(chunk)

    def __enter__(self) -> WholeRead:
        return self

    def __exit__(self, *exc: object) -> None:
        self._body.close()
