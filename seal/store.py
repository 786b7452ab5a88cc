"""The artifact store: where every stage reads its inputs and writes its outputs.

A store is addressed by a URI: `s3://bucket/prefix`, `file:///abs/path` or a plain local path.
The restart rule (docs/architecture.md) is that a stage is done exactly when its output exists, so every write
here is whole or absent: a single PUT on S3, write-to-temp-then-rename on a local disk. Folders
(LoRA adapters) get a `.complete` marker written last, on both backends, and only a folder with
its marker counts as existing; a pod killed mid-upload leaves files that read as "not there".

Every object proves its own integrity: a JSONL object ends with an end record holding its row
count and the SHA-256 of the lines before it (`read_jsonl` checks both, so a row cut from a
finished file is caught), and a folder's `.complete` marker lists each file with its size and
SHA-256 (`get_dir` checks sizes always and hashes on demand; `verify_dir` checks a folder
in place). JSON is written without NaN or Infinity: a non-finite number is refused, naming its
field.

Every failure becomes a one-line `SealError` with the exit code Argo acts on: unreachable or
throttled stores and transient local I/O errors (ENOSPC, EIO, ESTALE) are transient (75); wrong
credentials, missing buckets or keys and other local errors (permissions, read-only disk) are
config errors (2); malformed or damaged objects are bad data (65). A frozen or unreachable S3
server fails within S3_DEADLINE_S seconds (bounded timeouts and tries), and every later request
of the process fails at once.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions as bex
from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
from botocore.config import Config

from seal import metrics
from seal.errors import ConfigError, DataError, NotFoundError, TransientError

log = logging.getLogger(__name__)

MARKER = ".complete"  # written last into a folder by put_dir; each file's size and SHA-256
_TMP = ".seal-tmp-"  # prefix of FileStore temp files/folders, hidden from list()
END = "seal_end"  # the key of a JSONL object's last line: {"seal_end": {"rows": N, "sha256": H}}
NO_END = "has no end record (cut short, or not written by seal)"
TMP_MAX_AGE_S = 3600  # sweep_tmp removes temp files older than this (a live writer touches its own)
MAX_JSON_BYTES = 256 * 2**20  # a store JSON/JSONL object above this is refused unread (bounded memory)
# Local I/O errors worth retrying: a full shared volume may drain, a flaky disk or NFS server may
# come back. Everything else (permissions, read-only file system, bad paths) needs a fix: exit 2.
TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.ESTALE, errno.EDQUOT, errno.ETIMEDOUT,
                              errno.EAGAIN, errno.EBUSY, errno.ENOLCK, errno.EINTR})
# S3: each request times out after S3_CONNECT_TIMEOUT_S (connect) or S3_READ_TIMEOUT_S without a
# byte (read) and is tried S3_ATTEMPTS times, with botocore's standard backoff (under 1+2+4 s)
# between: a frozen server fails a command within S3_DEADLINE_S (docs/architecture.md).
S3_CONNECT_TIMEOUT_S, S3_READ_TIMEOUT_S, S3_ATTEMPTS = 5, 10, 4
S3_DEADLINE_S = 60


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> tuple[int, str]:
    """(size, SHA-256) of a local file, read in 1 MiB blocks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(2**20):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def non_finite_path(obj: Any, path: str = "") -> str | None:
    """The first field holding NaN or Infinity ('losses[0][1]'), or None when all are finite."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return path or "(value)"
    if isinstance(obj, dict):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for p, v in items:
        if (found := non_finite_path(v, p)) is not None:
            return found
    return None


def parse_json(text: str | bytes, where: str) -> Any:
    """json.loads with every hostile shape (deep nesting, huge integers, bad bytes) as one DataError."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON in {where} line {e.lineno}: {e.msg}") from None
    except RecursionError:
        raise DataError(f"malformed JSON in {where}: nested too deeply") from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text: {where} (byte {e.start})") from None
    except ValueError as e:  # NaN/Infinity constants, integers over Python's 4300-digit limit
        reason = "a number over 4300 digits" if "digits" in str(e) else _line(e)[:120]
        raise DataError(f"bad number in {where}: {reason}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (only finite numbers are)")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _os_error(what: str, e: OSError) -> Exception:
    """A local OSError as a SealError: transient errnos (full disk, I/O error, stale NFS) exit 75."""
    reason = e.strerror or str(e)
    if e.errno in TRANSIENT_ERRNOS:
        return TransientError(f"cannot access {what}: {reason} (errno {errno.errorcode.get(e.errno, e.errno)}): "
                              "retry when the volume is healthy")
    return ConfigError(f"cannot access {what}: {reason}: check the path and its permissions")


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
        if not bucket or bucket in (".", ".."):
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
            if os.path.getsize(source) > MAX_JSON_BYTES:
                raise DataError(f"{what} {source} is over {MAX_JSON_BYTES >> 20} MiB: split it")
            with open(source, "rb") as f:
                raw = f.read(MAX_JSON_BYTES + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ConfigError(f"{what} file not found: {source}: fix the path in the config") from None
        except OSError as e:
            raise _os_error(f"{what} {source}", e) from None
    if len(raw) > MAX_JSON_BYTES:
        raise DataError(f"{what} {source} is over {MAX_JSON_BYTES >> 20} MiB: split it")
    try:
        return parse_json(raw, f"{what} {source}")
    except DataError as e:
        raise DataError(f"{what} {source} is not valid JSON: {str(e).split(f'{source}', 1)[-1].lstrip(': ')}"
                        ) from None


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
        return parse_json(self.read_text(key), join(self.uri, key))

    def _dumps(self, key: str, obj: Any, **kw: Any) -> str:
        try:
            return json.dumps(obj, sort_keys=True, ensure_ascii=False, allow_nan=False, **kw)
        except ValueError:
            field = non_finite_path(obj) or "?"
            raise DataError(f"refusing to write {join(self.uri, key)}: field {field} is not a finite "
                            "number (training diverged? lower the learning rate)") from None

    def write_json(self, key: str, obj: Any) -> None:
        self.write_text(key, self._dumps(key, obj, indent=2) + "\n")

    def read_jsonl(self, key: str) -> list[dict]:
        """The rows of a JSONL object written by write_jsonl; a DataError naming the object when its
        end record is missing or does not match what precedes it (rows cut, added or changed)."""
        rows, problem = self.jsonl_rows(key)
        if problem:
            raise DataError(problem)
        return rows

    def jsonl_rows(self, key: str) -> tuple[list[dict], str | None]:
        """The rows that parse, and what is wrong with the object's end record (None: nothing), so
        a caller that knows which rows to expect can name the missing one first."""
        where = join(self.uri, key)
        text = self.read_text(key)
        body, _, last = text.rstrip("\n").rpartition("\n")
        body = body + "\n" if body else ""
        try:
            end = parse_json(last, f"{where} (last line)") if last.strip() else None
        except DataError:
            end = None
        if not isinstance(end, dict) or not isinstance(end.get(END), dict):
            body, end = text, {END: {}}  # cut short: every line is a row, the end record is lost
        rows = []
        # split("\n"), not splitlines(): a JSON string may hold a raw U+2028 or form feed.
        for n, line in enumerate(body.split("\n"), 1):
            if not line.strip():
                continue
            row = parse_json(line, f"{where} line {n}")
            if not isinstance(row, dict):
                raise DataError(f"malformed JSONL in {where} line {n}: expected one JSON object per line")
            rows.append(row)
        want_rows, want_hash = end[END].get("rows"), end[END].get("sha256")
        if want_rows is None:
            return rows, f"damaged: {where} {NO_END}"
        if want_rows != len(rows):
            return rows, f"damaged: {where} holds {len(rows)} rows, its end record says {want_rows}"
        if want_hash != sha256(body.encode("utf-8")):
            return rows, f"damaged: {where}: content does not match its end record's SHA-256"
        return rows, None

    def write_jsonl(self, key: str, rows: Iterable[dict]) -> None:
        lines = [self._dumps(key, r) + "\n" for r in rows]
        body = "".join(lines)
        end = json.dumps({END: {"rows": len(lines), "sha256": sha256(body.encode("utf-8"))}})
        self.write_text(key, body + end + "\n")

    def sweep_tmp(self, prefix: str = "", max_age_s: float = TMP_MAX_AGE_S) -> int:
        """Remove temp files and folders a killed writer left under `prefix` (local folders only;
        S3 writes are single PUTs). Returns how many were removed."""
        return 0

    def verify_dir(self, key: str) -> list[str]:
        """Problems of the complete folder `key` (missing files, wrong sizes or SHA-256), [] if sound."""
        with tempfile.TemporaryDirectory(prefix="seal-verify-") as tmp:
            try:
                self.get_dir(key, tmp, check_hashes=True)
            except DataError as e:
                return [str(e)]
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def _manifest(src: Path, files: list[str]) -> bytes:
    """The marker's content: each file's size and SHA-256, so a damaged copy can be told apart."""
    entries = {}
    for rel in files:
        size, digest = file_digest(src / rel)
        entries[rel] = {"size": size, "sha256": digest}
    return (json.dumps({"files": entries}, indent=2, sort_keys=True) + "\n").encode()


def read_manifest(raw: bytes, where: str) -> dict[str, dict[str, Any]]:
    """A marker's {file: {"size", "sha256"}}; markers of older versions list names only ({})."""
    data = parse_json(raw, where)
    files = data.get("files") if isinstance(data, dict) else None
    if isinstance(files, list) and all(isinstance(f, str) for f in files):
        return {f: {} for f in files}
    if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
            for v in files.values()):
        raise DataError(f"damaged: {where}: field 'files' must map each file to its size and sha256")
    for rel in files:
        _norm(rel)  # a marker naming ../ paths is refused before anything is written
    return files


def check_file(path: Path, entry: dict[str, Any], where: str, check_hash: bool) -> None:
    """A downloaded or stored file against its marker entry: DataError naming it on a mismatch."""
    if not entry:
        return
    if check_hash:
        size, digest = file_digest(path)
    else:
        size, digest = path.stat().st_size, entry["sha256"]
    if size != entry["size"]:
        raise DataError(f"damaged: {where} is {size} bytes, its folder marker says {entry['size']}")
    if digest != entry["sha256"]:
        raise DataError(f"damaged: {where}: content does not match its folder marker's SHA-256")


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
            raise _os_error(join(self.uri, key), e) from None
        except OSError as e:
            raise _os_error(join(self.uri, key), e) from None

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
                os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600: others on a shared volume read runs
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
                os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
                for rel in files:
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src / rel, tmp / rel)
                    metrics.store_bytes(self.uri, "write", (tmp / rel).stat().st_size)
                    with open(tmp / rel, "rb") as f:
                        os.fsync(f.fileno())  # a new folder renamed in place is not auto-flushed
                (tmp / MARKER).write_bytes(_manifest(tmp, files))
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

    def get_dir(self, key: str, local_dir: str | Path, check_hashes: bool = True) -> Path:
        if not self.exists(key) or self.local_path(key).is_file():
            raise NotFoundError(f"not found: {join(self.uri, key)} (no complete folder)")
        marker = f"{_norm(key)}/{MARKER}"
        files = read_manifest(self.read_bytes(marker), join(self.uri, marker))
        dest = Path(local_dir)
        dest.mkdir(parents=True, exist_ok=True)
        for rel, entry in files.items():
            where = join(self.uri, key, rel)
            if not (self.local_path(key) / rel).is_file():  # the marker says it was written
                raise DataError(f"damaged: {where} is missing from its complete folder")
            with self._errors(f"{_norm(key)}/{rel}"):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.local_path(key) / rel, dest / rel)
                metrics.store_bytes(self.uri, "read", (dest / rel).stat().st_size)
            check_file(dest / rel, entry, where, check_hashes)
        return dest

    def verify_dir(self, key: str) -> list[str]:
        # In place: no copy of a multi-gigabyte folder just to hash it.
        marker = f"{_norm(key)}/{MARKER}"
        try:
            files = read_manifest(self.read_bytes(marker), join(self.uri, marker))
            for rel, entry in files.items():
                path, where = self.local_path(key) / rel, join(self.uri, key, rel)
                if not path.is_file():
                    raise DataError(f"damaged: {where} is missing from its complete folder")
                with self._errors(f"{_norm(key)}/{rel}"):
                    check_file(path, entry, where, True)
        except DataError as e:
            return [str(e)]
        return []

    def sweep_tmp(self, prefix: str = "", max_age_s: float = TMP_MAX_AGE_S) -> int:
        base, removed = self.local_path(prefix), 0
        if not base.is_dir():
            return 0
        cutoff = time.time() - max_age_s
        for p in list(base.rglob(_TMP + "*")):
            try:
                if p.lstat().st_mtime > cutoff:
                    continue  # may belong to a writer still running (another pod on this volume)
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                removed += 1
            except FileNotFoundError:
                continue  # inside a folder already removed, or its writer finished
            except OSError as e:
                raise _os_error(str(p), e) from None
        if removed:
            log.info("removed %d temp files a killed writer left under %s", removed, join(self.uri, prefix))
        return removed

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
        # Total tries per request, the first included.
        try:
            self.attempts = max(1, min(10, int(os.environ.get("SEAL_S3_MAX_ATTEMPTS", str(S3_ATTEMPTS)))))
            read_timeout = float(os.environ.get("SEAL_S3_READ_TIMEOUT", str(S3_READ_TIMEOUT_S)))
        except ValueError:
            raise ConfigError(f"SEAL_S3_MAX_ATTEMPTS and SEAL_S3_READ_TIMEOUT must be numbers, e.g. "
                              f"{S3_ATTEMPTS} and {S3_READ_TIMEOUT_S}") from None
        if not 0.1 <= read_timeout <= 600:
            raise ConfigError("SEAL_S3_READ_TIMEOUT must be between 0.1 and 600 seconds")
        # Set once a request failed for want of an answer: later requests fail at once, so a
        # command facing a dead server (and its failure-status write) ends within S3_DEADLINE_S.
        self.down: str | None = None
        config = Config(
            retries={"total_max_attempts": self.attempts, "mode": "standard"},
            connect_timeout=min(S3_CONNECT_TIMEOUT_S, read_timeout), read_timeout=read_timeout,
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
        if self._conn.down:  # no new wait: the server did not answer this process before
            raise TransientError(f"store unreachable: {uri} ({where}), {self._conn.down}: check the "
                                 "endpoint URL and that the server is up, then rerun")
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
            self._conn.down = f"no answer to an earlier request ({type(e).__name__})"
            raise TransientError(f"store unreachable: {uri} ({where}) after {self._conn.attempts} attempts "
                                 f"({type(e).__name__}): check the endpoint URL and that the server is up, "
                                 "then rerun") from None
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
            body = self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"]
            return body.read()

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
        self.write_bytes(f"{_norm(key)}/{MARKER}", _manifest(src, files))

    def get_dir(self, key: str, local_dir: str | Path, check_hashes: bool = True) -> Path:
        marker = f"{_norm(key)}/{MARKER}"
        try:
            files = read_manifest(self.read_bytes(marker), join(self.uri, marker))
        except NotFoundError:
            raise NotFoundError(f"not found: {join(self.uri, key)} (no complete folder)") from None
        dest = Path(local_dir)
        dest.mkdir(parents=True, exist_ok=True)
        # Only the manifest's files: leftovers of an earlier crashed upload are ignored.
        for rel, entry in files.items():
            where = join(self.uri, key, rel)
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                with self._errors(f"{_norm(key)}/{rel}"):
                    self.client.download_file(self.bucket, self._k(f"{key}/{rel}"), str(dest / rel))
            except NotFoundError:  # the marker says it was written: bad data, not a bad path
                raise DataError(f"damaged: {where} is missing from its complete folder") from None
            metrics.store_bytes(self.uri, "read", (dest / rel).stat().st_size)
            check_file(dest / rel, entry, where, check_hashes)
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
