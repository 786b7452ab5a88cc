"""The artifact store: where every stage reads its inputs and writes its outputs.

A store is addressed by a URI: `s3://bucket/prefix`, `file:///abs/path` or a plain local path.
The restart rule (docs/architecture.md) is that a stage is done exactly when its output exists, so every write
here is whole or absent: a single PUT on S3, write-to-temp-then-rename on a local disk. Folders
(LoRA adapters) get a `.complete` marker written last, on both backends, and only a folder with
its marker counts as existing; a pod killed mid-upload leaves files that read as "not there".

Every failure becomes a one-line `SealError` with the exit code Argo acts on: unreachable or
throttled stores are transient (75), wrong credentials, missing buckets or keys are config
errors (2), malformed JSON is bad data (65).
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions as bex
from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
from botocore.config import Config

from seal import metrics
from seal.errors import ConfigError, DataError, NotFoundError, TransientError

MARKER = ".complete"  # written last into a folder by put_dir; holds the folder's file list
_TMP = ".seal-tmp-"  # prefix of FileStore temp files/folders, hidden from list()


def join(uri: str, *parts: str) -> str:
    """Append '/'-separated parts to a store URI or path: join("s3://b/p", "run1") == "s3://b/p/run1"."""
    clean = [p.strip("/") for p in parts if p.strip("/")]
    if not clean:
        return uri
    return (uri if uri.endswith("/") else uri + "/") + "/".join(clean)


def open_store(uri: str) -> Store:
    """The store for `uri`: S3Store for s3://, FileStore for file:// or a plain path."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        if not bucket:
            raise ConfigError(f"bad store URI {uri!r}: expected s3://bucket/optional/prefix")
        return S3Store(uri.rstrip("/"), bucket, _norm(prefix), _S3Conn())
    if uri.startswith("file://"):
        path = uri[len("file://"):]
        if not path.startswith("/"):
            raise ConfigError(f"bad store URI {uri!r}: file URIs are absolute, file:///abs/path")
        return FileStore(uri, Path(path))
    if "://" in uri:
        raise ConfigError(f"unknown store scheme in {uri!r}: use s3://bucket/prefix, "
                          "file:///abs/path or a local path")
    return FileStore(uri, Path(uri))


def read_json_file(source: str, what: str) -> Any:
    """A JSON input file (data sets, task files) from a local path or a store URI.

    `what` names the config key in errors: missing -> ConfigError, malformed -> DataError.
    """
    if "://" in source:
        parent, _, name = source.rpartition("/")
        raw = open_store(parent).read_bytes(name)
    else:
        try:
            with open(source, "rb") as f:
                raw = f.read()
        except (FileNotFoundError, IsADirectoryError):
            raise ConfigError(f"{what} file not found: {source}: fix the path in the config") from None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{what} {source} is not valid JSON: {e}") from None


def _line(message: object) -> str:
    """A server's or library's message squeezed onto one line (ours must stay one line)."""
    return " ".join(str(message).split())


def _norm(key: str) -> str:
    """'/'-joined key without empty or '.' parts; '..' is refused so no key escapes its store."""
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ConfigError(f"bad store key {key!r}: '..' is not allowed")
    return "/".join(parts)


class Store(abc.ABC):
    """A store rooted at `uri`; keys are '/'-separated paths relative to it.

    Subclasses implement the byte-level operations, this class the text/JSON formats.
    """

    uri: str

    @abc.abstractmethod
    def child(self, prefix: str) -> Store:
        """A store rooted at uri/prefix, sharing this one's connection."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """True if `key` is an object, or a folder whose put_dir finished (its marker exists)."""

    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; NotFoundError (a ConfigError) if it is missing."""

    @abc.abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write the whole object: readers see the old object, or the new one, never a part."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys of all objects inside the folder `prefix`, recursively; markers hidden."""

    @abc.abstractmethod
    def put_dir(self, key: str, local_dir: str | Path) -> None:
        """Upload a local folder as `key`, marker last; a complete `key` is left as it is."""

    @abc.abstractmethod
    def get_dir(self, key: str, local_dir: str | Path) -> Path:
        """Download the complete folder `key` into local_dir (created if needed)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete an object or a whole folder; deleting what is not there is fine."""

    def local_path(self, key: str) -> Path | None:
        """The file behind `key` when the store is a local folder, else None."""
        return None

    def read_text(self, key: str) -> str:
        data = self.read_bytes(key)
        metrics.store_bytes(self.uri, "read", len(data))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"not UTF-8 text: {join(self.uri, key)} (byte {e.start})") from None

    def write_text(self, key: str, text: str) -> None:
        data = text.encode("utf-8")
        self.write_bytes(key, data)
        metrics.store_bytes(self.uri, "write", len(data))

    def read_json(self, key: str) -> Any:
        try:
            return json.loads(self.read_text(key))
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON in {join(self.uri, key)} line {e.lineno}: {e.msg}"
                            ) from None

    def write_json(self, key: str, obj: Any) -> None:
        self.write_text(key, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")

    def read_jsonl(self, key: str) -> list[dict]:
        rows = []
        # split("\n"), not splitlines(): a JSON string may hold a raw U+2028 or form feed.
        for n, line in enumerate(self.read_text(key).split("\n"), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"malformed JSON in {join(self.uri, key)} line {n}: {e.msg}"
                                ) from None
            if not isinstance(row, dict):
                raise DataError(f"malformed JSONL in {join(self.uri, key)} line {n}: "
                                "expected one JSON object per line")
            rows.append(row)
        return rows

    def write_jsonl(self, key: str, rows: Iterable[dict]) -> None:
        lines = (json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
        self.write_text(key, "".join(lines))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def _manifest(files: list[str]) -> bytes:
    return (json.dumps({"files": files}, indent=2) + "\n").encode()


def _local_files(local_dir: Path) -> list[str]:
    """Relative paths of all files under local_dir, sorted; a missing folder is a config error."""
    if not local_dir.is_dir():
        raise ConfigError(f"local folder not found: {local_dir}")
    return sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())


class FileStore(Store):
    """A local (or NFS/PVC-mounted) folder. Writes go through a temp name and os.replace/rename."""

    def __init__(self, uri: str, root: Path):
        self.uri = uri if uri in ("/", "file:///") else uri.rstrip("/")
        self.root = root.absolute()

    def child(self, prefix: str) -> FileStore:
        return FileStore(join(self.uri, _norm(prefix)), self.root / _norm(prefix))

    def local_path(self, key: str) -> Path:
        return self.root / _norm(key)

    @metrics.count_store_errors("file")
    @contextlib.contextmanager
    def _errors(self, key: str, reading: bool = False) -> Iterator[None]:
        try:
            yield
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            if reading:  # a folder, or a path through a file, holds no object at `key`
                raise NotFoundError(f"not found: {join(self.uri, key)}") from None
            raise ConfigError(f"cannot access {join(self.uri, key)}: {e.strerror or e}") from None
        except OSError as e:
            raise ConfigError(f"cannot access {join(self.uri, key)}: {e.strerror or e}") from None

    def exists(self, key: str) -> bool:
        p = self.local_path(key)
        return p.is_file() or (p / MARKER).is_file()

    def read_bytes(self, key: str) -> bytes:
        with self._errors(key, reading=True):
            return self.local_path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self.local_path(key)
        with self._errors(key):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP + path.name + ".")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())  # data on disk before the name points at it
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise

    def list(self, prefix: str = "") -> list[str]:
        base = self.local_path(prefix)
        if not base.is_dir():
            return []
        keys = []
        for p in base.rglob("*"):
            rel = p.relative_to(self.root).as_posix()
            if p.is_file() and p.name != MARKER and _TMP not in rel:
                keys.append(rel)
        return sorted(keys)

    def put_dir(self, key: str, local_dir: str | Path) -> None:
        src, target = Path(local_dir), self.local_path(key)
        files = _local_files(src)
        if self.exists(key):  # write-once: a racing duplicate already wrote the same thing
            return
        with self._errors(key):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=_TMP + target.name + "."))
            try:
                for rel in files:
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src / rel, tmp / rel)
                    metrics.store_bytes(self.uri, "write", (tmp / rel).stat().st_size)
                    with open(tmp / rel, "rb") as f:
                        os.fsync(f.fileno())  # a new folder renamed in place is not auto-flushed
                (tmp / MARKER).write_bytes(_manifest(files))
                if target.exists():  # leftovers without a marker, e.g. single files: replace
                    if self.exists(key):
                        return  # lost a race to another complete writer
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                try:
                    os.rename(tmp, target)
                except OSError:
                    if not self.exists(key):
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def get_dir(self, key: str, local_dir: str | Path) -> Path:
        if not self.exists(key) or self.local_path(key).is_file():
            raise NotFoundError(f"not found: {join(self.uri, key)} (no complete folder)")
        dest = Path(local_dir)
        dest.mkdir(parents=True, exist_ok=True)
        with self._errors(key):
            for rel in json.loads(self.read_bytes(f"{_norm(key)}/{MARKER}"))["files"]:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.local_path(key) / rel, dest / rel)
                metrics.store_bytes(self.uri, "read", (dest / rel).stat().st_size)
        return dest

    def delete(self, key: str) -> None:
        p = self.local_path(key)
        with self._errors(key):
            if p.is_dir():
                (p / MARKER).unlink(missing_ok=True)  # stop counting as complete first
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)


class _S3Conn:
    """One boto3 client plus what error messages need; shared by a store and its children."""

    def __init__(self) -> None:
        # SEAL_S3_ENDPOINT_URL overrides the standard variables (boto3 also reads those itself;
        # they are read here too so that path-style addressing and messages know the endpoint).
        self.endpoint = (os.environ.get("SEAL_S3_ENDPOINT_URL")
                         or os.environ.get("AWS_ENDPOINT_URL_S3")
                         or os.environ.get("AWS_ENDPOINT_URL") or None)
        # Total tries per request, the first included: 6 is botocore's max_attempts=5 retries.
        try:
            self.attempts = max(1, int(os.environ.get("SEAL_S3_MAX_ATTEMPTS", "6")))
        except ValueError:
            raise ConfigError("SEAL_S3_MAX_ATTEMPTS must be an integer, e.g. 6") from None
        config = Config(
            retries={"total_max_attempts": self.attempts, "mode": "standard"},
            connect_timeout=5, read_timeout=60,
            # SeaweedFS/MinIO serve buckets as paths, not as DNS names under the endpoint.
            s3={"addressing_style": "path"} if self.endpoint else None,
        )
        self.client = boto3.session.Session().client("s3", endpoint_url=self.endpoint,
                                                     config=config)
        self.bucket_checked = False


_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
              "TooManyRequests", "RequestTimeout", "ServiceUnavailable", "InternalError"}
_DENIED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
           "ExpiredToken", "InvalidSecurity", "AuthorizationHeaderMalformed"}


class S3Store(Store):
    """An S3 bucket and prefix. Single PUTs are atomic; folders get their marker last."""

    def __init__(self, uri: str, bucket: str, prefix: str, conn: _S3Conn):
        self.uri, self.bucket, self.prefix, self._conn = uri, bucket, prefix, conn
        self.client = conn.client

    def child(self, prefix: str) -> S3Store:
        return S3Store(join(self.uri, _norm(prefix)), self.bucket,
                       _norm(join(self.prefix, _norm(prefix))), self._conn)

    def _k(self, key: str) -> str:
        return _norm(join(self.prefix, _norm(key)))

    @metrics.count_store_errors("s3")
    @contextlib.contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Turn boto3/botocore exceptions into one-line SealErrors naming the URI and the fix."""
        uri, where = join(self.uri, key), self._conn.endpoint or "AWS"
        try:
            yield
        except (S3UploadFailedError, S3TransferFailedError) as e:  # boto3 wraps the real cause
            cause = e.__context__
            if isinstance(cause, (bex.ClientError, bex.BotoCoreError)):
                with self._errors(key):
                    raise cause from None
            raise TransientError(f"transfer failed: {uri}: {_line(e)}") from None
        except bex.NoCredentialsError:
            raise ConfigError(f"no S3 credentials for {uri}: set AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from None
        except (bex.ConnectionError, bex.HTTPClientError) as e:
            raise TransientError(f"store unreachable: {uri} ({where}): check the endpoint URL "
                                 f"and that the server is up ({type(e).__name__})") from None
        except bex.ClientError as e:
            err, meta = e.response.get("Error", {}), e.response.get("ResponseMetadata", {})
            code, status = str(err.get("Code", "")), int(meta.get("HTTPStatusCode") or 0)
            if code == "NoSuchBucket":
                raise ConfigError(f"bucket not found: {uri}: create it or fix the store URI"
                                  ) from None
            if code in ("NoSuchKey", "NotFound", "404") or status == 404:
                raise NotFoundError(f"not found: {uri}") from None
            if code in _DENIED or status == 403:
                raise ConfigError(f"access denied ({code}) to {uri} at {where}: check "
                                  "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the bucket "
                                  "policy") from None
            if code in _THROTTLED or status in (429, 503) or status >= 500:
                raise TransientError(f"store throttled or failing ({code or status}) on {uri} "
                                     f"after {self._conn.attempts} attempts: retry later") from None
            raise ConfigError(f"S3 error {code} on {uri}: {_line(err.get('Message', ''))}") from None
        except bex.BotoCoreError as e:
            raise ConfigError(f"S3 client error on {uri}: {_line(e)}") from None

    def _head(self, key: str) -> bool:
        try:
            with self._errors(key):
                self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except NotFoundError:
            # HEAD has no body, so a missing bucket is a bare 404 too: tell them apart once.
            if not self._conn.bucket_checked:
                with self._errors(""):
                    try:
                        self.client.head_bucket(Bucket=self.bucket)
                    except bex.ClientError as e:
                        if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                            e.response.setdefault("Error", {})["Code"] = "NoSuchBucket"
                        raise
                self._conn.bucket_checked = True
            return False

    def exists(self, key: str) -> bool:
        return self._head(key) or self._head(f"{_norm(key)}/{MARKER}")

    def read_bytes(self, key: str) -> bytes:
        with self._errors(key):
            return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()

    def write_bytes(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)

    def _keys(self, prefix: str) -> list[str]:
        """Every object key (full, marker included) under the folder `prefix`."""
        full = self._k(prefix)
        keys = []
        with self._errors(prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full + "/" if full else "")
            for page in pages:
                keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    def list(self, prefix: str = "") -> list[str]:
        cut = len(self.prefix) + 1 if self.prefix else 0
        keys = [k[cut:] for k in self._keys(prefix) if k.rsplit("/", 1)[-1] != MARKER]
        return sorted(keys)

    def put_dir(self, key: str, local_dir: str | Path) -> None:
        src = Path(local_dir)
        files = _local_files(src)
        if self.exists(key):  # write-once, as on FileStore
            return
        # upload_file switches to multipart for large files (merged weights are gigabytes).
        for rel in files:
            with self._errors(f"{_norm(key)}/{rel}"):
                self.client.upload_file(str(src / rel), self.bucket, self._k(f"{key}/{rel}"))
            metrics.store_bytes(self.uri, "write", (src / rel).stat().st_size)
        self.write_bytes(f"{_norm(key)}/{MARKER}", _manifest(files))

    def get_dir(self, key: str, local_dir: str | Path) -> Path:
        try:
            manifest = json.loads(self.read_bytes(f"{_norm(key)}/{MARKER}"))
        except NotFoundError:
            raise NotFoundError(f"not found: {join(self.uri, key)} (no complete folder)") from None
        dest = Path(local_dir)
        dest.mkdir(parents=True, exist_ok=True)
        # Only the manifest's files: leftovers of an earlier crashed upload are ignored.
        for rel in manifest["files"]:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            with self._errors(f"{_norm(key)}/{rel}"):
                self.client.download_file(self.bucket, self._k(f"{key}/{rel}"), str(dest / rel))
            metrics.store_bytes(self.uri, "read", (dest / rel).stat().st_size)
        return dest

    def delete(self, key: str) -> None:
        marker = self._k(f"{key}/{MARKER}")
        keys = [k for k in self._keys(key) + [self._k(key)] if k and k != marker]
        with self._errors(key):
            # The marker goes first, so a folder stops counting as complete before its files go.
            self.client.delete_object(Bucket=self.bucket, Key=marker)
            for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
                self.client.delete_objects(Bucket=self.bucket, Delete={
                    "Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True})
