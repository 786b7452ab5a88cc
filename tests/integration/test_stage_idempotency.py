"""Stage commands are idempotent, as Argo's retries need: a stage run twice, a stage killed mid-way
(SIGKILL, like a preempted pod) and rerun, and two copies of the same shards at once (a retry
racing a slow pod) each leave the store identical to one clean run, and complete."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import tiny_overrides
from run_checks import sets, snapshot

from seal.cli import main
from seal.store import open_store

pytestmark = pytest.mark.slow

SHARDS = "0-2"  # round 0's three adapt shards, in one command as one Argo pod runs them


def stage(run: str, *args: str) -> list[str]:
    return [*args[:1], "--run", run, "--round", "0", *args[1:]]


def prepare(run: str) -> None:
    """init, plan and sample round 0 (everything adapt needs)."""
    overrides = [o for o in tiny_overrides("unused") if not o.startswith(("store=", "run_id="))]
    config = pathlib.Path(__file__).resolve().parents[2] / "configs/demo-cpu.yaml"
    assert main(["init", "--run", run, "--config", str(config), *sets(overrides)]) == 0
    assert main(stage(run, "plan")) == 0
    assert main(stage(run, "sample", "--shard", "0-1")) == 0


def finish_round(run: str) -> None:
    assert main(stage(run, "adapt", "--shard", SHARDS)) == 0
    assert main(stage(run, "improve")) == 0


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A folder run with round 0 sampled, and the snapshot of round 0 after one clean pass."""
    root = tmp_path_factory.mktemp("idem")
    run = f"{root}/base/t"
    prepare(run)
    ref = f"{root}/ref/t"
    shutil.copytree(run, ref)
    finish_round(ref)
    return run, snapshot(open_store(ref), "round-0")


def copy_of(base_run: str, tmp_path) -> str:
    run = f"{tmp_path}/runs/t"
    shutil.copytree(base_run, run)
    return run


def mtimes(run: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in pathlib.Path(run).rglob("*") if p.is_file()}


def test_every_stage_run_twice_changes_nothing_the_second_time(base, tmp_path, capsys):
    base_run, reference = base
    run = copy_of(base_run, tmp_path)
    for args in (["plan"], ["sample", "--shard", "0"], ["adapt", "--shard", SHARDS], ["improve"]):
        assert main(stage(run, *args)) == 0
        before = mtimes(run)
        assert main(stage(run, *args)) == 0
        assert mtimes(run) == before, f"seal {args[0]} rewrote something on its second run"
    assert snapshot(open_store(run), "round-0") == reference


def seal_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "seal.cli", *args], env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_stage_killed_mid_way_then_rerun_ends_complete(base, tmp_path, capsys):
    base_run, reference = base
    run = copy_of(base_run, tmp_path)
    store = open_store(run)
    proc = seal_process(*stage(run, "adapt", "--shard", SHARDS))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if store.exists("round-0/scores/00000.jsonl") and store.list("round-0/adapters"):
            proc.send_signal(signal.SIGKILL)  # mid-way through the second shard
            break
        time.sleep(0.02)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "adapt finished before it could be killed"
    assert not store.exists("round-0/scores/00002.jsonl")
    # `seal status` shows the partial round: shards done and the rewards scored so far
    done = [a for a in range(3) if store.exists(f"round-0/scores/{a:05d}.jsonl")]
    rewards = [row["reward"] for a in done for row in store.read_jsonl(f"round-0/scores/{a:05d}.jsonl")]
    capsys.readouterr()
    assert main(["status", run]) == 0
    row = capsys.readouterr().out.splitlines()[3].split()
    assert row[:6] == ["0", "done", "2/2", f"{len(done)}/3", "-", f"{len(rewards)}/6"] and len(done) >= 1
    assert row[6] == f"{sum(rewards) / len(rewards):.3f}" and row[7] == f"{max(rewards):.3f}"
    finish_round(run)
    assert snapshot(store, "round-0") == reference


def test_two_copies_of_the_same_shards_at_once_on_s3(base, s3_env):
    _, reference = base
    run = f"{s3_env}/t"
    prepare(run)
    procs = [seal_process(*stage(run, "adapt", "--shard", SHARDS)) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    assert main(stage(run, "improve")) == 0
    assert snapshot(open_store(run), "round-0") == reference


def test_sigterm_ends_a_stage_with_the_transient_exit_code(base, tmp_path):
    """Kubernetes stops a preempted pod with SIGTERM: exit 75, which restem.yaml's retryStrategy retries."""
    base_run, _ = base
    run = copy_of(base_run, tmp_path)
    store = open_store(run)
    proc = seal_process(*stage(run, "adapt", "--shard", SHARDS))
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if store.list("round-0/adapters"):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    _, err = proc.communicate()
    assert proc.returncode == 75, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("seal: error: terminated by SIGTERM") and "Traceback" not in err
    assert not store.exists("round-0/scores/00002.jsonl")
