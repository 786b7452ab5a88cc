"""A damaged or failing store: every case ends in one line naming the object (exit 65 for damage,
75 for a store or disk that may recover, 2 for one that needs a fix), with no traceback, inside
the memory and CPU limits, and leaves every finished object as it was.

One tiny two-round run is made once (module fixture); each case damages a copy of it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_overrides
from seal_proc import assert_refused, seal, snapshot

from seal.errors import DataError
from seal.store import S3_ATTEMPTS, S3_DEADLINE_S, S3_READ_TIMEOUT_S, open_store


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(config path, run folder) of a finished 2-round tiny run (keep_adapters: all)."""
    root = tmp_path_factory.mktemp("finished")
    data: dict = {}
    for item in tiny_overrides(str(root / "store"), "t"):
        key, _, value = item.partition("=")
        *parents, last = key.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(value)
    config = root / "run.yaml"
    config.write_text(yaml.safe_dump(data))
    res = seal("run", str(config))
    assert res.returncode == 0, res.stderr[-2000:]
    return config, root / "store" / "t"


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run at tmp_path/store/t, and its snapshot before any damage."""
    dest = tmp_path / "store" / "t"
    shutil.copytree(finished[1], dest)
    return dest


def rows(path: Path) -> list[str]:
    return path.read_text().splitlines()


def unchanged_except(run: Path, before: dict[str, str], *damaged: str) -> None:
    after = snapshot(run, skip=())
    if "run.json" not in before:  # taken without it: a command may record its status there
        after.pop("run.json")
    for rel in damaged:
        before.pop(rel, None), after.pop(rel, None)
    assert after == before


def unfinish(run: Path, round_: int) -> None:
    """Make round r unfinished: its improve outputs gone (summary first, as a kill would leave)."""
    for name in ("summary.json", "kept.jsonl"):
        (run / f"round-{round_}" / name).unlink()
    shutil.rmtree(run / f"round-{round_}" / "policy")


# --- seal verify names every damaged object of a finished round, with the command that redoes it


def test_verify_names_a_row_removed_from_a_finished_scores_file(run):
    path = run / "round-0/scores/00001.jsonl"
    lines = rows(path)
    removed = json.loads(lines[0])
    path.write_text("\n".join(lines[1:]) + "\n")
    before = snapshot(run)
    res = seal("verify", str(run))
    err = assert_refused(res, 65, "1 damaged object", str(run))
    assert f"round-0/scores/00001.jsonl: no row for candidate (context {removed['context']}, k {removed['k']})" \
        in res.stdout, res.stdout
    assert f"seal adapt --run {run} --round 0 --shard 1 --redo" in res.stdout
    assert "listed above" in err
    unchanged_except(run, before)


def test_the_redo_command_verify_prints_repairs_the_object(run):
    path = run / "round-0/scores/00001.jsonl"
    path.write_text("\n".join(rows(path)[1:]) + "\n")
    res = seal("verify", str(run))
    command = re.search(r"`seal (adapt [^`]+)`", res.stdout).group(1).split()
    before = snapshot(run)
    assert seal(*command).returncode == 0
    assert seal("verify", str(run)).returncode == 0
    after = snapshot(run)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    # Only the shard and its adapters were rewritten (timings differ; the rewards are the same).
    assert changed and all(k.startswith(("round-0/scores/00001", "round-0/adapters/")) for k in changed)
    old = {(r["context"], r["k"]): r["rewards"] for r in map(json.loads, rows(path)[:-1])}
    assert old and all(isinstance(v, list) for v in old.values())


DAMAGE = {  # name -> (function of the run folder returning the damaged object's relative path, reason)
    "scores-cut-mid-line": (lambda run: _cut(run / "round-1/scores/00000.jsonl", 0.6), "malformed JSON"),
    "edits-row-removed": (lambda run: _drop_row(run / "round-0/edits/00000.jsonl"), "no row for candidate"),
    "kept-row-changed": (lambda run: _edit(run / "round-0/kept.jsonl", '"reward": ', '"reward": 1'),
                         "does not match its end record"),
    "scores-file-deleted": (lambda run: _delete(run / "round-1/scores/00002.jsonl"), "missing from finished round 1"),
    "adapter-byte-flipped": (lambda run: _flip(run / "round-0/adapters", "adapter_model.safetensors"),
                             "does not match its folder marker"),
    "adapter-file-deleted": (lambda run: _delete(next((run / "round-1/adapters").rglob("adapter_config.json"))),
                             "is missing from its complete folder"),
    "adapter-marker-garbage": (lambda run: _write(next((run / "round-0/adapters").rglob(".complete")), b"\x00{"),
                               ".complete"),
    "adapter-marker-without-hashes": (lambda run: _write(next((run / "round-1/adapters").rglob(".complete")),
                                                         b'{"files": {"a": 1}}'), "field 'files'"),
    "policy-weights-truncated": (lambda run: _truncate(run / "round-0/policy/adapter_model.safetensors"),
                                 "its folder marker says"),
    "summary-field-missing": (lambda run: _json_edit(run / "round-1/summary.json", lambda d: d.pop("kept")),
                              "field 'kept'"),
    "policy-json-missing-key": (lambda run: _json_edit(run / "round-0/policy/policy.json",
                                                       lambda d: d.pop("adapter")), "field 'adapter'"),
    "plan-contexts-changed": (lambda run: _json_edit(run / "round-1/plan.json", lambda d: d["contexts"].append(99)),
                              "does not match the SHA-256 its round's summary.json recorded"),
    "summary-figure-changed": (lambda run: _json_edit(run / "round-0/summary.json",
                                                      lambda d: d.update(mean_reward=0.75)), "field 'mean_reward'"),
}


def _cut(path: Path, frac: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])
    return path


def _drop_row(path: Path) -> Path:
    path.write_text("\n".join(rows(path)[1:]) + "\n")
    return path


def _edit(path: Path, old: str, new: str) -> Path:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def _delete(path: Path) -> Path:
    path.unlink()
    return path


def _flip(root: Path, name: str) -> Path:
    path = next(root.rglob(name))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:100])
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _json_edit(path: Path, fn) -> Path:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_verify_names_each_damaged_object(case, run):
    damage, reason = DAMAGE[case]
    path = damage(run)
    rel = path.relative_to(run).as_posix()
    before = snapshot(run)
    res = seal("verify", str(run))
    assert_refused(res, 65, "damaged object", str(run))
    named = [line for line in res.stdout.splitlines() if rel in line]
    assert named and reason in named[0] and "--redo`" in named[0], res.stdout
    unchanged_except(run, before)


# --- readers: status, report and the stages refuse damaged objects in one line


READERS = {  # name -> (damage, command, what the error names)
    "plan-garbage": (lambda run: _write(run / "round-0/plan.json", b"{\"round\": 0, "),
                     ["status"], "round-0/plan.json"),
    "plan-field-missing": (lambda run: _json_edit(run / "round-1/plan.json", lambda d: d.pop("adapt_shards")),
                           ["status"], "field 'adapt_shards'"),
    "plan-wrong-type": (lambda run: _json_edit(run / "round-1/plan.json", lambda d: d.update(contexts="all")),
                        ["status"], "field 'contexts'"),
    "summary-missing-key": (lambda run: _json_edit(run / "round-0/summary.json", lambda d: d.pop("mean_reward")),
                            ["report"], "field 'mean_reward'"),
    "summary-nan": (lambda run: _edit(run / "round-0/summary.json", '"max_reward": 0.0', '"max_reward": NaN'),
                    ["report"], "round-0/summary.json"),
    "summary-infinity-float": (lambda run: _edit(run / "round-1/summary.json", '"max_reward": 0.0',
                                                 '"max_reward": 1e999'), ["report"], "field 'max_reward'"),
    "run-json-garbage": (lambda run: _write(run / "run.json", bytes(range(256))), ["status"], "run.json"),
    "run-json-no-config": (lambda run: _json_edit(run / "run.json", lambda d: d.pop("config")),
                           ["status"], "field 'config'"),
    "run-json-bad-config": (lambda run: _json_edit(run / "run.json", lambda d: d["config"].update(rounds=-1)),
                            ["verify"], "field 'config'"),
    "run-json-deep": (lambda run: _write(run / "run.json", b"[" * 200_000 + b"]" * 200_000),
                      ["status"], "nested too deeply"),
}


@pytest.mark.parametrize("case", sorted(READERS))
def test_readers_refuse_a_damaged_object_in_one_line(case, run):
    damage, command, named = READERS[case]
    damage(run)
    before = snapshot(run, skip=())
    res = seal(*command, str(run), cwd=run.parent)
    assert_refused(res, 65, named)
    unchanged_except(run, before)


def test_stages_refuse_a_config_edited_by_hand(run):
    _json_edit(run / "run.json", lambda d: d["config"].update(seed=7))
    before = snapshot(run, skip=())
    res = seal("plan", "--run", str(run), "--round", "0", "--redo")
    assert_refused(res, 65, f"{run}/run.json", "does not match its fingerprint")
    unchanged_except(run, before)


def test_stage_on_a_finished_round_with_a_damaged_shard_gives_the_redo_command(run):
    _drop_row(run / "round-0/scores/00002.jsonl")
    before = snapshot(run)
    res = seal("adapt", "--run", str(run), "--round", "0", "--shard", "2")
    assert_refused(res, 65, "round-0/scores/00002.jsonl", f"seal adapt --run {run} --round 0 --shard 2 --redo")
    unchanged_except(run, before)


def test_improve_of_an_unfinished_round_names_a_damaged_score_shard(run):
    unfinish(run, 1)
    _cut(run / "round-1/scores/00001.jsonl", 0.99)
    before = snapshot(run)
    res = seal("improve", "--run", str(run), "--round", "1")
    assert_refused(res, 65, "round-1/scores/00001.jsonl", "seal adapt", "--shard 1")
    unchanged_except(run, before)


def test_a_damaged_shard_of_an_unfinished_round_is_redone_by_the_next_run(finished, run):
    config, _ = finished
    unfinish(run, 1)
    _drop_row(run / "round-1/scores/00001.jsonl")
    round0 = {k: v for k, v in snapshot(run).items() if k.startswith("round-0/")}
    res = seal("run", str(config), "--set", f"store={run.parent}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "round-1/scores/00001.jsonl: no row for candidate" in res.stderr and "redoing it" in res.stderr
    assert seal("verify", str(run)).returncode == 0
    assert {k: v for k, v in snapshot(run).items() if k.startswith("round-0/")} == round0


def test_a_damaged_policy_adapter_stops_the_next_round_with_the_redo_command(run):
    _flip(run / "round-0/policy", "adapter_model.safetensors")
    before = snapshot(run)
    res = seal("sample", "--run", str(run), "--round", "1", "--shard", "0", "--redo")
    assert_refused(res, 65, "round-0/policy/adapter_model.safetensors", f"seal improve --run {run} --round 0")
    unchanged_except(run, before)


def test_status_ignores_a_stray_copy_of_a_shard(run):
    shutil.copy(run / "round-0/scores/00000.jsonl", run / "round-0/scores/copy-of-00000.jsonl")
    res = seal("status", str(run))
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert "3/3" in res.stdout


# --- store and disk faults: transient ones exit 75, permanent ones 2, and the first error wins


FAULTS = {  # name -> (command, fault, exit code, named)
    "enospc-on-write": (["finish", "--status", "Succeeded"], "write:run.json:ENOSPC", 75, "No space left"),
    "eio-on-read": (["status"], "read:round-0/plan.json:EIO", 75, "round-0/plan.json"),
    "estale-on-read": (["report"], "read:summary.json:ESTALE", 75, "summary.json"),
    "edquot-on-write": (["finish", "--status", "Failed"], "write:run.json:EDQUOT", 75, "run.json"),
    "eacces-on-write": (["finish", "--status", "Succeeded"], "write:run.json:EACCES", 2, "Permission denied"),
    "erofs-on-write": (["finish", "--status", "Succeeded"], "write:run.json:EROFS", 2, "Read-only file system"),
    "eacces-on-read": (["verify"], "read:kept.jsonl:EACCES", 2, "kept.jsonl"),
}


@pytest.mark.parametrize("case", sorted(FAULTS))
def test_local_io_faults_exit_75_when_transient_and_2_when_not(case, run):
    command, fault, code, named = FAULTS[case]
    before = snapshot(run, skip=())
    args = [command[0], *(["--run", str(run)] if command[0] == "finish" else [str(run)]), *command[1:]]
    res = seal(*args, faults=fault, cwd=run.parent)
    assert_refused(res, code, named)
    unchanged_except(run, before)


def test_a_failing_status_write_does_not_replace_the_original_error(finished, run):
    config, _ = finished
    unfinish(run, 1)
    for p in (run / "round-1/scores").iterdir():
        p.unlink()
    before = snapshot(run, skip=())
    res = seal("run", str(config), "--set", f"store={run.parent}",
               faults="write:round-1/scores/00000:EIO,write:run.json:ENOSPC")
    assert_refused(res, 75, "round-1/scores/00000.jsonl", "Input/output error")
    assert "could not record the failure" in res.stderr
    unchanged_except(run, before)


def test_stale_temp_files_are_swept_and_live_ones_kept(finished, run):
    config, _ = finished
    old = [run / "round-0/.seal-tmp-summary.json.x1", run / "round-1/adapters/.seal-tmp-0.abc"]
    old[0].write_bytes(b"x" * 1000)
    old[1].mkdir()
    (old[1] / "adapter_model.safetensors").write_bytes(b"y" * 1000)
    live = run / "round-1/scores/.seal-tmp-00000.jsonl.live"
    live.write_bytes(b"z")
    for p in old:
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    before = snapshot(run)
    res = seal("run", str(config), "--set", f"store={run.parent}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert not any(p.exists() for p in old) and live.exists()
    assert snapshot(run) == {k: v for k, v in before.items() if ".seal-tmp-" not in k or "live" in k}


@pytest.mark.parametrize("umask", [0o002, 0o077])
def test_files_and_folders_follow_the_umask(umask, tmp_path):
    old = os.umask(umask)
    try:
        store = open_store(str(tmp_path / "s"))
        store.write_json("a/b.json", {"x": 1})
        src = tmp_path / "src"
        src.mkdir()
        (src / "w.bin").write_bytes(b"w")
        store.put_dir("a/dir", src)
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "s/a/b.json") == 0o666 & ~umask
    assert mode(tmp_path / "s/a/dir") == 0o777 & ~umask
    assert mode(tmp_path / "s/a/dir/w.bin") == 0o666 & ~umask or umask == 0o077


def test_non_finite_numbers_are_never_written(tmp_path):
    store = open_store(str(tmp_path))
    with pytest.raises(DataError, match=r"field losses\[0\]\[1\] is not a finite number"):
        store.write_jsonl("s.jsonl", [{"losses": [[1.0, float("nan")]]}])
    with pytest.raises(DataError, match="field a.b is not a finite"):
        store.write_json("x.json", {"a": {"b": float("inf")}})
    assert not list(tmp_path.iterdir())


# --- S3 that does not answer


@pytest.fixture
def frozen_server():
    """A TCP server that accepts connections and never answers (a hung S3 gateway)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    thread.join()
    for s in held:
        s.close()
    srv.close()


def s3_env(endpoint: str) -> dict[str, str]:
    """Dummy credentials, no instance-metadata probe, and seal's default timeouts and tries."""
    return {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true", "SEAL_S3_ENDPOINT_URL": endpoint,
            "SEAL_S3_MAX_ATTEMPTS": str(S3_ATTEMPTS), "SEAL_S3_READ_TIMEOUT": str(S3_READ_TIMEOUT_S)}


def test_a_frozen_s3_server_gives_exit_75_within_the_documented_time(frozen_server, tmp_path):
    # The default timeouts and tries (seal.store.S3_*); the child is killed at S3_DEADLINE_S.
    config = tmp_path / "c.yaml"
    config.write_text("store: s3://bucket/runs\nrounds: 1\n")
    res = seal("run", str(config), env=s3_env(frozen_server), timeout=S3_DEADLINE_S)
    assert_refused(res, 75, "store unreachable", "s3://bucket/runs/demo", frozen_server)


def test_a_closed_s3_port_gives_exit_75(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.close()  # nothing listens there now
    res = seal("status", "s3://bucket/runs/r1", env=s3_env(f"http://127.0.0.1:{port}"), timeout=S3_DEADLINE_S)
    assert_refused(res, 75, "store unreachable", "s3://bucket/runs/r1")


def test_verify_on_s3_names_a_removed_row_and_a_missing_adapter_file(finished, s3_env):
    """The same checks on a real S3 server (SeaweedFS): the finished run uploaded object by object,
    then one scores row and one adapter file removed."""
    import boto3
    from botocore.config import Config

    _, folder = finished
    bucket, _, prefix = s3_env[len("s3://"):].partition("/")
    client = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
    for p in folder.rglob("*"):
        if p.is_file():
            client.upload_file(str(p), bucket, f"{prefix}/t/{p.relative_to(folder).as_posix()}")
    scores = f"{prefix}/t/round-1/scores/00000.jsonl"
    lines = rows(folder / "round-1/scores/00000.jsonl")
    client.put_object(Bucket=bucket, Key=scores, Body=("\n".join(lines[1:]) + "\n").encode())
    adapter = next(p for p in (folder / "round-0/adapters").rglob("adapter_model.safetensors"))
    client.delete_object(Bucket=bucket, Key=f"{prefix}/t/{adapter.relative_to(folder).as_posix()}")
    row = json.loads(lines[0])
    res = seal("verify", f"{s3_env}/t")
    assert_refused(res, 65, "2 damaged object", f"{s3_env}/t")
    assert f"{s3_env}/t/round-1/scores/00000.jsonl: no row for candidate (context {row['context']}, k {row['k']})" \
        in res.stdout, res.stdout
    assert f"{s3_env}/t/{adapter.relative_to(folder).as_posix()} is missing from its complete folder" in res.stdout


def test_a_run_made_before_end_records_still_reads_and_a_removed_row_is_still_named(run):
    meta = json.loads((run / "run.json").read_text())
    assert meta.pop("format") == 1  # what init writes now
    (run / "run.json").write_text(json.dumps(meta))
    for path in [*run.glob("round-*/*/*.jsonl"), *run.glob("round-*/kept.jsonl")]:
        lines = rows(path)
        assert json.loads(lines[-1]).keys() == {"seal_end"}
        path.write_text("\n".join(lines[:-1]) + "\n")
    assert seal("verify", str(run)).returncode == 0
    _drop_row(run / "round-1/scores/00001.jsonl")
    res = seal("verify", str(run))
    assert_refused(res, 65, "1 damaged object")
    assert "round-1/scores/00001.jsonl: no row for candidate" in res.stdout
