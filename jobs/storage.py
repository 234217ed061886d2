"""Where files live: a local path or an s3:// object, behind one small interface chosen from the URI.

S3 goes through boto3, so the endpoint, region and credentials come from the usual AWS environment variables and
config files (AWS_ENDPOINT_URL makes MinIO, moto and other S3-compatible stores work). What Tide itself decides about
storage (where local paths may lie, how long S3 retries) arrives as a `StorageConfig` the entry points build from
their settings.
"""
from __future__ import annotations

import io
import logging
import os
import random
import shutil
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Protocol

from pydantic import BaseModel, ConfigDict, Field

READ_BUFFER = 4 * 2**20  # one ranged GET per 4 MiB of a streamed object
COPY_CHUNK = 2**20
UPLOAD_PART = 8 * 2**20  # S3 parts are at least 5 MiB

logger = logging.getLogger("tide.storage")


class StorageConfig(BaseModel):
    """Where local paths may lie and how long S3 requests retry (Settings.storage_config() at the entry points)."""

    model_config = ConfigDict(frozen=True)

    local_roots: tuple[str, ...] = ()  # empty: any local path (the command-line tools)
    retry_s: float = Field(120.0, ge=0)  # how long transient S3 failures are retried before an attempt fails


class StorageError(RuntimeError):
    """A file or object could not be read or written; the message names it and says why."""


class Location(Protocol):
    """A file-like place: open it, size it, write it whole, or list the files under it."""

    uri: str

    def child(self, name: str) -> "Location": ...
    def open_read(self) -> BinaryIO: ...  # seekable, buffered
    def size(self) -> int: ...
    def exists(self) -> bool: ...
    def read_bytes(self) -> bytes: ...
    def write_bytes(self, data: bytes) -> None: ...
    def commit_file(self, local_path: Path) -> None: ...  # upload under a temporary name, then publish atomically
    def write_stream(self, source: BinaryIO) -> int: ...  # copy a stream in bounded chunks; -> bytes written
    def delete(self) -> None: ...
    def list_names(self) -> list[str]: ...  # names of the files directly under this prefix


def resolve(uri: str, config: StorageConfig) -> Location:
    """`s3://bucket/key` -> S3Location, anything else -> LocalLocation (confined to `config.local_roots`)."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        if not bucket:
            raise StorageError(f"{uri!r} names no bucket; use s3://bucket/key")
        return S3Location(bucket, key.strip("/"), config.retry_s)
    if "://" in uri:
        raise StorageError(f"unsupported storage URI {uri!r}: use a local path or s3://bucket/key")
    return LocalLocation(confined(Path(uri).expanduser(), config.local_roots))


def confined(path: Path, roots: tuple[str, ...]) -> Path:
    """`path` itself, if it lies under one of `roots` once `..` and symlinks are resolved (or there are no roots:
    the command-line tools); raises StorageError otherwise."""
    if not roots:
        return path
    real = os.path.realpath(path)
    for root in map(os.path.realpath, roots):
        if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
            return path
    raise StorageError(f"{path} is outside the local directories this service may use ({', '.join(roots)}); "
                       "use s3:// or a path under them (TIDE_LOCAL_ROOTS)")


class LocalLocation:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.uri = str(path)

    def child(self, name: str) -> "LocalLocation":
        return LocalLocation(self.path / name)

    def open_read(self) -> BinaryIO:
        try:
            return open(self.path, "rb", buffering=READ_BUFFER)
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri}: {exc.strerror}") from exc

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError as exc:
            raise StorageError(f"cannot read {self.uri}: {exc.strerror}") from exc

    def exists(self) -> bool:
        return self.path.exists()

    def read_bytes(self) -> bytes:
        with self.open_read() as f:
            return f.read()

    def write_bytes(self, data: bytes) -> None:
        tmp = self._tmp()
        tmp.write_bytes(data)
        os.replace(tmp, self.path)

    def commit_file(self, local_path: Path) -> None:
        tmp = self._tmp()
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, self.path)  # atomic on one filesystem: readers see the old file or the new one

    def write_stream(self, source: BinaryIO) -> int:
        tmp = self._tmp()
        with open(tmp, "wb") as out:
            shutil.copyfileobj(source, out, COPY_CHUNK)
            written = out.tell()
        os.replace(tmp, self.path)
        return written

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)

    def list_names(self) -> list[str]:
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.is_file() and not p.name.startswith("."))

    def _tmp(self) -> Path:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot write {self.uri}: {exc.strerror}") from exc
        return self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")


@lru_cache(maxsize=1)
def s3_client():
    """One boto3 client per process (boto3 clients are thread-safe); configured from the AWS environment."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(
        retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=120,
        max_pool_connections=32))


class S3Location:
    def __init__(self, bucket: str, key: str, retry_s: float) -> None:
        self.bucket, self.key, self.retry_s = bucket, key, retry_s
        self.uri = f"s3://{bucket}/{key}"

    def child(self, name: str) -> "S3Location":
        return S3Location(self.bucket, f"{self.key}/{name}" if self.key else name, self.retry_s)

    def open_read(self) -> BinaryIO:
        return io.BufferedReader(_S3RangeReader(self, self.size()), buffer_size=READ_BUFFER)

    def size(self) -> int:
        return self._call("read", "head_object", Key=self.key)["ContentLength"]

    def exists(self) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.size()
        except StorageError as exc:
            if isinstance(exc.__cause__, ClientError) and _not_found(exc.__cause__):
                return False
            raise
        return True

    def read_range(self, start: int, end: int) -> bytes:
        return self._call("read", "get_object", Key=self.key, Range=f"bytes={start}-{end - 1}",
                          then=lambda answer: answer["Body"].read())

    def read_bytes(self) -> bytes:
        return self._call("read", "get_object", Key=self.key, then=lambda answer: answer["Body"].read())

    def write_bytes(self, data: bytes) -> None:
        self._call("write", "put_object", Key=self.key, Body=data)

    def commit_file(self, local_path: Path) -> None:
        # A PUT is atomic per object, but uploading to a temporary key first means a reader (or a re-run shard)
        # never sees a half-written part, whatever the upload path (multipart included).
        tmp_key = f"{self.key}.{uuid.uuid4().hex}.tmp"
        client = s3_client()
        try:
            retrying(self.uri, "write", lambda: client.upload_file(str(local_path), self.bucket, tmp_key),
                     self.retry_s)
            retrying(self.uri, "write", lambda: client.copy_object(
                Bucket=self.bucket, Key=self.key, CopySource={"Bucket": self.bucket, "Key": tmp_key}), self.retry_s)
        finally:
            _quietly(lambda: client.delete_object(Bucket=self.bucket, Key=tmp_key))

    def write_stream(self, source: BinaryIO) -> int:
        from boto3.s3.transfer import TransferConfig

        counted = _Counted(source)
        # One multipart part in memory at a time: memory stays at UPLOAD_PART bytes whatever the size.
        config = TransferConfig(multipart_threshold=UPLOAD_PART, multipart_chunksize=UPLOAD_PART, use_threads=False)
        try:
            s3_client().upload_fileobj(counted, self.bucket, self.key, Config=config)
        except Exception as exc:
            raise StorageError(f"cannot write {self.uri}: {_reason(exc)}") from exc
        return counted.count

    def delete(self) -> None:
        self._call("write", "delete_object", Key=self.key)

    def list_names(self) -> list[str]:
        prefix = f"{self.key}/" if self.key else ""
        paginator = s3_client().get_paginator("list_objects_v2")

        def listing() -> list[str]:
            return [o["Key"][len(prefix):] for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix,
                                                                          Delimiter="/")
                    for o in page.get("Contents", [])]

        return sorted(n for n in retrying(self.uri, "list", listing, self.retry_s) if not n.endswith(".tmp"))

    def _call(self, verb: str, method: str, then=lambda answer: answer, **kwargs):
        return retrying(self.uri, verb, lambda: then(getattr(s3_client(), method)(Bucket=self.bucket, **kwargs)),
                        self.retry_s)


def retrying(uri: str, verb: str, action, retry_s: float):
    """Run one S3 request, retrying transient failures (endpoint unreachable, timeouts, 5xx, throttling) with
    exponential backoff and jitter for up to `retry_s` seconds (on top of boto3's own retries), so an outage
    delays a shard instead of failing it. Other failures, and the last one, raise StorageError."""
    deadline = time.monotonic() + retry_s
    delay = 0.25
    while True:
        try:
            return action()
        except Exception as exc:
            if not _transient(exc) or time.monotonic() + delay > deadline:
                raise StorageError(f"cannot {verb} {uri}: {_reason(exc)}") from exc
            logger.warning("cannot %s %s (%s); retrying in %.1f s", verb, uri, _reason(exc), delay)
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 5.0)


def _transient(exc: Exception) -> bool:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, S3UploadFailedError):  # upload_file wraps the ClientError it met
        return isinstance(exc.__context__, Exception) and _transient(exc.__context__)
    if isinstance(exc, (ConnectionError, HTTPClientError)):
        return True
    if isinstance(exc, ClientError):
        error, status = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return (status or 0) >= 500 or error.get("Code") in ("SlowDown", "Throttling", "RequestTimeout")
    return False


class _S3RangeReader(io.RawIOBase):
    """A seekable raw stream over one object: each read is a ranged GET, so nothing is downloaded whole."""

    def __init__(self, location: S3Location, size: int) -> None:
        self.location, self.length, self.pos = location, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        end = min(self.length, self.pos + len(buffer))
        if end <= self.pos:
            return 0
        data = self.location.read_range(self.pos, end)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


class _Counted(io.RawIOBase):
    """A read-only stream that counts the bytes read through it."""

    def __init__(self, source: BinaryIO) -> None:
        self.source, self.count = source, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.count += len(data)
        return data


def _not_found(exc) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _reason(exc: Exception) -> str:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', '?')} {error.get('Message', '')}".strip()
    if isinstance(exc, EndpointConnectionError):
        return f"S3 endpoint unreachable ({exc}); check AWS_ENDPOINT_URL"
    if isinstance(exc, NoCredentialsError):
        return "no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"
    return str(exc)


def _quietly(action) -> None:
    try:
        action()
    except Exception:  # cleanup of a temporary key: the committed object is what matters
        pass
