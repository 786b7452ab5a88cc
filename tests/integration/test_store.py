"""seal.store against a local folder and a real S3 server (SeaweedFS), plus S3 faults via moto."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.retries.standard import ExponentialBackoff
from s3server import free_ports

from seal.errors import ConfigError, DataError, TransientError
from seal.store import FileStore, NotFoundError, S3Store, join, open_store


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    """The same behaviour tests run on a local folder and on a real S3 bucket."""
    if request.param == "file":
        return open_store(str(tmp_path / "store"))
    return open_store(request.getfixturevalue("s3_env"))


def make_tree(root: Path) -> list[str]:
    """A small adapter-like folder with a nested file; returns its relative paths."""
    files = {"adapter_config.json": b'{"r": 4}', "adapter_model.safetensors": os.urandom(3000),
             "sub/deeper/notes.txt": "ünïcode\n".encode()}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return sorted(files)


# --- URIs -----------------------------------------------------------------------------------


def test_join():
    assert join("s3://b/p", "run1") == "s3://b/p/run1"
    assert join("s3://b/p/", "/round-0/", "plan.json") == "s3://b/p/round-0/plan.json"
    assert join("s3://b", "x") == "s3://b/x"
    assert join("file:///tmp/s", "a/b") == "file:///tmp/s/a/b"
    assert join("runs", "r1") == "runs/r1"
    assert join("s3://b/p", "", "/") == "s3://b/p"


def test_open_store_schemes(tmp_path, monkeypatch):
    monkeypatch.delenv("SEAL_S3_ENDPOINT_URL", raising=False)
    assert isinstance(open_store(str(tmp_path)), FileStore)
    fs = open_store(f"file://{tmp_path}/")
    assert isinstance(fs, FileStore) and fs.local_path("a/b") == tmp_path / "a" / "b"
    monkeypatch.chdir(tmp_path)
    assert open_store("rel/dir").local_path("k") == tmp_path / "rel" / "dir" / "k"
    s3 = open_store("s3://bucket/some/prefix/")
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix, s3.uri) == (
        "bucket", "some/prefix", "s3://bucket/some/prefix")
    assert s3.local_path("k") is None
    for bad in ("gs://bucket/x", "s3://", "file://relative/x"):
        with pytest.raises(ConfigError) as e:
            open_store(bad)
        assert e.value.exit_code == 2 and bad in str(e.value)
    with pytest.raises(ConfigError, match=r"'\.\.'"):
        fs.read_bytes("../escape")


# --- behaviour on both backends ---------------------------------------------------------------


def test_roundtrips(store):
    store.write_bytes("a/b.bin", b"\x00\x01")
    assert store.read_bytes("a/b.bin") == b"\x00\x01"
    store.write_bytes("a/b.bin", b"replaced")
    assert store.read_bytes("a/b.bin") == b"replaced"
    store.write_bytes("empty", b"")
    assert store.read_bytes("empty") == b""
    store.write_text("t.txt", "héllo\n")
    assert store.read_text("t.txt") == "héllo\n"
    store.write_json("r.json", {"b": 1, "a": [1, 2]})
    assert store.read_bytes("r.json") == b'{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    assert store.read_json("r.json") == {"a": [1, 2], "b": 1}
    rows = [{"z": 1, "a": "x\u2028y"}, {"k": None, "text": "ünï\ncode"}]
    store.write_jsonl("rows.jsonl", rows)
    assert store.read_bytes("rows.jsonl").decode().splitlines()[0].startswith('{"a": ')
    assert store.read_jsonl("rows.jsonl") == rows
    store.write_jsonl("none.jsonl", [])
    assert store.read_jsonl("none.jsonl") == []


def test_read_missing_names_the_uri(store):
    with pytest.raises(NotFoundError) as e:
        store.read_bytes("round-0/plan.json")
    assert isinstance(e.value, ConfigError) and e.value.exit_code == 2
    assert str(e.value) == f"not found: {store.uri}/round-0/plan.json"
    with pytest.raises(ConfigError, match="not found"):
        store.read_json("nope.json")


def test_malformed_json_is_data_error(store):
    store.write_text("bad.json", '{"a": 1,\n  oops}\n')
    with pytest.raises(DataError) as e:
        store.read_json("bad.json")
    assert e.value.exit_code == 65 and f"{store.uri}/bad.json line 2" in str(e.value)
    store.write_text("bad.jsonl", '{"a": 1}\n\n{"b": 2}\n{"c": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl line 4"):
        store.read_jsonl("bad.jsonl")
    store.write_text("list.jsonl", "[1, 2]\n")
    with pytest.raises(DataError, match="one JSON object per line"):
        store.read_jsonl("list.jsonl")
    store.write_bytes("latin1.txt", "é".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        store.read_text("latin1.txt")


def test_list_is_sorted_recursive_and_hides_markers(store, tmp_path):
    for key in ("r/round-1/b.json", "r/round-0/z.json", "r/round-0/a/deep.json", "rx/other", "top"):
        store.write_bytes(key, b"{}")
    make_tree(tmp_path / "ad")
    store.put_dir("r/round-0/policy", tmp_path / "ad")
    assert store.list("r/round-0") == [
        "r/round-0/a/deep.json", "r/round-0/policy/adapter_config.json",
        "r/round-0/policy/adapter_model.safetensors", "r/round-0/policy/sub/deeper/notes.txt",
        "r/round-0/z.json"]
    assert store.list("r") == store.list("r/") == sorted(store.list("r"))
    assert "rx/other" not in store.list("r")  # a prefix is a folder, not a string prefix
    assert store.list("nothing/here") == []
    everything = store.list()
    assert "top" in everything and "rx/other" in everything and len(everything) == 8
    assert not any(".complete" in k or ".seal-tmp" in k for k in everything)


def test_put_dir_get_dir_nested(store, tmp_path):
    files = make_tree(tmp_path / "src")
    assert not store.exists("round-0/policy")
    store.put_dir("round-0/policy", tmp_path / "src")
    assert store.exists("round-0/policy")
    out = store.get_dir("round-0/policy", tmp_path / "out")
    assert out == tmp_path / "out"
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert got == files
    for rel in files:
        assert (out / rel).read_bytes() == (tmp_path / "src" / rel).read_bytes()
    with pytest.raises(NotFoundError, match=f"not found: {store.uri}/round-1/policy"):
        store.get_dir("round-1/policy", tmp_path / "out2")
    with pytest.raises(ConfigError, match="local folder not found"):
        store.put_dir("x", tmp_path / "no-such-dir")


def test_put_dir_of_an_empty_folder(store, tmp_path):
    (tmp_path / "empty").mkdir()
    store.put_dir("e", tmp_path / "empty")
    assert store.exists("e") and store.list("e") == []
    assert store.get_dir("e", tmp_path / "out").is_dir()


def test_put_dir_is_write_once(store, tmp_path):
    """A racing duplicate (an Argo retry of the same step) leaves the first complete folder."""
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "w").write_text("first")
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "w").write_text("second")
    store.put_dir("p", tmp_path / "one")
    store.put_dir("p", tmp_path / "two")
    assert store.get_dir("p", tmp_path / "out") and (tmp_path / "out" / "w").read_text() == "first"


def test_exists_objects_and_folders(store, tmp_path):
    store.write_text("a/obj.json", "{}")
    assert store.exists("a/obj.json")
    assert not store.exists("a/obj")
    assert not store.exists("a")  # a folder of single objects is not a put_dir folder
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    store.put_dir("a/dir", tmp_path / "d")
    assert store.exists("a/dir") and store.exists("a/dir/") and store.exists("a/dir/f")


def test_incomplete_folder_reads_as_missing(store, tmp_path):
    """Files of a folder whose upload died before the marker: not there, and a rerun fixes it."""
    store.write_bytes("round-0/policy/adapter_config.json", b"{}")
    store.write_bytes("round-0/policy/stale-leftover.bin", b"old")
    assert not store.exists("round-0/policy")
    with pytest.raises(NotFoundError, match="no complete folder"):
        store.get_dir("round-0/policy", tmp_path / "out")
    files = make_tree(tmp_path / "src")
    store.put_dir("round-0/policy", tmp_path / "src")
    assert store.exists("round-0/policy")
    out = store.get_dir("round-0/policy", tmp_path / "out")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == files


def test_delete(store, tmp_path):
    store.write_text("k/one.txt", "1")
    store.write_text("k/two.txt", "2")
    store.write_text("keep.txt", "3")
    store.delete("k/one.txt")
    assert not store.exists("k/one.txt") and store.exists("k/two.txt")
    make_tree(tmp_path / "src")
    store.put_dir("k/dir", tmp_path / "src")
    store.delete("k")
    assert not store.exists("k/dir") and store.list("k") == []
    assert store.list() == ["keep.txt"]
    store.delete("never/existed")
    store.delete("keep.txt")
    assert store.list() == []


def test_child_stores(store, tmp_path):
    run = store.child("runs/r1")
    assert run.uri == f"{store.uri}/runs/r1" and type(run) is type(store)
    rnd = run.child("/round-0/")
    assert rnd.uri == f"{store.uri}/runs/r1/round-0"
    rnd.write_json("plan.json", {"n": 1})
    assert store.read_json("runs/r1/round-0/plan.json") == {"n": 1}
    assert run.list() == ["round-0/plan.json"]
    assert rnd.exists("plan.json") and not run.exists("plan.json")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    rnd.put_dir("policy", tmp_path / "d")
    assert store.exists("runs/r1/round-0/policy")
    assert open_store(rnd.uri).read_json("plan.json") == {"n": 1}
    with pytest.raises(ConfigError, match=f"not found: {store.uri}/runs/r1/round-0/x"):
        rnd.read_bytes("x")


# --- crashes: nothing half-written is ever visible ------------------------------------------


def test_filestore_leaves_no_temp_files(tmp_path):
    store = open_store(str(tmp_path / "s"))
    store.write_json("a/b.json", {"x": 1})
    store.write_jsonl("a/c.jsonl", [{"y": 2}])
    make_tree(tmp_path / "src")
    store.put_dir("a/dir", tmp_path / "src")
    store.put_dir("a/dir", tmp_path / "src")  # the duplicate's temp folder is cleaned up too
    names = [p.name for p in (tmp_path / "s").rglob("*")]
    assert not any(n.startswith(".seal-tmp") for n in names), names
    assert store.local_path("a/b.json").read_text() == '{\n  "x": 1\n}\n'


def test_filestore_crash_mid_write_leaves_old_or_nothing(tmp_path, monkeypatch):
    store = open_store(str(tmp_path / "s"))
    store.write_text("old.txt", "old")

    def crash(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    for key in ("old.txt", "new.txt"):
        # A full disk may drain (a shared volume): transient, exit 75, as on S3.
        with pytest.raises(TransientError, match=f"cannot access {store.uri}/{key}: No space left"):
            store.write_text(key, "new")
    monkeypatch.undo()
    assert store.read_text("old.txt") == "old" and not store.exists("new.txt")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["old.txt"]


def test_filestore_write_over_a_folder_is_config_error(tmp_path):
    store = open_store(str(tmp_path / "s"))
    store.write_text("d/f", "x")
    with pytest.raises(ConfigError, match=f"cannot access {store.uri}/d: Is a directory") as e:
        store.write_text("d", "y")
    assert not isinstance(e.value, NotFoundError)
    with pytest.raises(NotFoundError, match=f"not found: {store.uri}/d"):
        store.read_text("d")


def test_filestore_crash_mid_put_dir_leaves_nothing(tmp_path, monkeypatch):
    store = open_store(str(tmp_path / "s"))
    make_tree(tmp_path / "src")
    real_copy, calls = shutil.copyfile, []

    def copy_then_die(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the pod is killed between two files
        return real_copy(src, dst)

    monkeypatch.setattr(shutil, "copyfile", copy_then_die)
    with pytest.raises(KeyboardInterrupt):
        store.put_dir("round-0/policy", tmp_path / "src")
    monkeypatch.undo()
    assert not store.exists("round-0/policy") and store.list() == []
    assert [p.name for p in (tmp_path / "s" / "round-0").iterdir()] == []


def test_s3_crash_mid_put_dir_is_invisible(s3_env, tmp_path, monkeypatch):
    store = open_store(s3_env)
    make_tree(tmp_path / "src")
    real_upload, calls = store.client.upload_file, []

    def upload_then_die(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_upload(*args, **kwargs)

    monkeypatch.setattr(store.client, "upload_file", upload_then_die)
    with pytest.raises(KeyboardInterrupt):
        store.put_dir("policy", tmp_path / "src")
    assert len(store.list("policy")) == 2  # two files landed...
    assert not store.exists("policy")  # ...but without the marker the folder is not there
    with pytest.raises(NotFoundError):
        store.get_dir("policy", tmp_path / "out")


# --- S3 errors against the real server ------------------------------------------------------


def test_s3_wrong_secret_is_config_error(s3_env, monkeypatch):
    open_store(s3_env).write_text("x", "1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123")
    store = open_store(s3_env)
    for op in (lambda: store.read_bytes("x"), lambda: store.write_text("y", "1"),
               lambda: store.exists("x"), lambda: store.list()):
        with pytest.raises(ConfigError) as e:
            op()
        msg = str(e.value)
        assert e.value.exit_code == 2 and "\n" not in msg and s3_env in msg
        assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in msg and "not-the-secret" not in msg
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(ConfigError, match="InvalidAccessKeyId"):
        open_store(s3_env).read_bytes("x")


def test_s3_missing_bucket_is_config_error(s3_env):
    uri = "s3://nosuch-bucket-seal/p"
    store = open_store(uri)
    for op in (lambda: store.read_bytes("k"), lambda: store.write_text("k", "1"),
               lambda: store.exists("k"), lambda: store.list(), lambda: store.child("c").exists("k")):
        with pytest.raises(ConfigError) as e:
            op()
        assert e.value.exit_code == 2 and str(e.value).startswith(f"bucket not found: {uri}")
        assert str(e.value).endswith("create it or fix the store URI")


def test_s3_unreachable_is_transient(monkeypatch):
    (port,) = free_ports(1)  # nothing listens there
    monkeypatch.setenv("SEAL_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("SEAL_S3_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, ctx: 0)
    store = open_store("s3://b/p")
    for uri, op in (("s3://b/p/k", lambda: store.read_bytes("k")),
                    ("s3://b/p/k", lambda: store.exists("k")), ("s3://b/p", lambda: store.list())):
        with pytest.raises(TransientError) as e:
            op()
        assert e.value.exit_code == 75
        assert str(e.value).startswith(f"store unreachable: {uri} (http://127.0.0.1:{port})")
        assert "check the endpoint URL and that the server is up" in str(e.value)


def test_s3_no_credentials_is_config_error(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("SEAL_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="no S3 credentials for s3://b/p/k: set AWS_ACCESS_KEY_ID"):
        open_store("s3://b/p").read_bytes("k")


# --- throttling and server errors, injected in front of a moto server -----------------------


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class _Raw:
    """Just enough of a urllib3 response for botocore to parse an injected error."""

    def __init__(self, body: bytes):
        self.body = body

    def stream(self, *args, **kwargs):
        yield self.body


def inject(store: S3Store, failures: list[tuple[int, str]], only=lambda request: True) -> list[str]:
    """Answer the store's next requests (those `only` picks) with these (status, code) errors,
    then let them through.

    Registered on the client's `before-send` event, so botocore's own retry logic sees them
    exactly as if the server had sent them. Returns the list of requests made (for counting).
    """
    seen: list[str] = []

    def before_send(request, **kwargs):
        if not only(request):
            return None
        seen.append(request.method)
        if len(seen) <= len(failures):
            status, code = failures[len(seen) - 1]
            body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
            return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Raw(body))
        return None

    store.client.meta.events.register("before-send.s3", before_send)
    return seen


@pytest.fixture
def moto_store(moto_endpoint, monkeypatch):
    monkeypatch.setenv("SEAL_S3_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("SEAL_S3_MAX_ATTEMPTS", "3")
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, ctx: 0)  # fast retries
    boto3.client("s3", endpoint_url=moto_endpoint, config=Config(s3={"addressing_style": "path"})
                 ).create_bucket(Bucket="faulty")
    store = open_store("s3://faulty/run")
    store.write_text("k", "v")
    return store


@pytest.mark.parametrize("status,code", [(503, "SlowDown"), (400, "Throttling"),
                                         (400, "RequestLimitExceeded"), (500, "InternalError"),
                                         (502, "BadGateway")])
def test_s3_throttling_and_5xx_are_transient_after_retries(moto_store, status, code):
    seen = inject(moto_store, [(status, code)] * 10)
    with pytest.raises(TransientError) as e:
        moto_store.read_text("k")
    assert e.value.exit_code == 75 and len(seen) == 3  # SEAL_S3_MAX_ATTEMPTS tries in all
    assert str(e.value) == (f"store throttled or failing ({code}) on s3://faulty/run/k after 3 "
                            "attempts: retry later")


def test_s3_one_transient_failure_is_retried_transparently(moto_store, tmp_path):
    seen = inject(moto_store, [(503, "SlowDown")])
    assert moto_store.read_text("k") == "v" and len(seen) == 2
    seen = inject(moto_store, [(500, "InternalError")] * 2)
    moto_store.write_json("j.json", {"a": 1})
    assert moto_store.read_json("j.json") == {"a": 1}


def test_s3_upload_and_download_failures_are_mapped(moto_store, tmp_path):
    """put_dir/get_dir go through boto3's transfer manager, which wraps errors in its own types."""
    make_tree(tmp_path / "src")
    inject(moto_store, [(503, "SlowDown")] * 100, only=lambda r: r.method == "PUT")
    with pytest.raises(TransientError, match=r"SlowDown\) on s3://faulty/run/policy/adapter_config"):
        moto_store.put_dir("policy", tmp_path / "src")
    assert not moto_store.exists("policy")
    store = open_store(moto_store.uri)  # a fresh client, without the injection
    store.put_dir("policy", tmp_path / "src")
    inject(store, [(500, "InternalError")] * 100,
           only=lambda r: r.method == "GET" and "safetensors" in r.url)
    with pytest.raises(TransientError, match=r"policy/adapter_model\.safetensors after 3 attempts"):
        store.get_dir("policy", tmp_path / "out")
    store = open_store(moto_store.uri)
    inject(store, [(403, "AccessDenied")] * 100, only=lambda r: "notes" in r.url)
    with pytest.raises(ConfigError, match=r"access denied \(AccessDenied\) to s3://faulty/run/policy/sub/deeper/notes"):
        store.get_dir("policy", tmp_path / "out")


def test_s3_store_clients_shared_by_children():
    parent = open_store("s3://b/p")
    assert parent.child("x").client is parent.client
