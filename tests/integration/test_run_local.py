"""`seal run` end to end on a tiny model: 2 rounds, 3 contexts, K=2, F=1, against a folder and a
real S3 server; every artifact of the layout; resume after a kill gives the same figures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import tiny_overrides
from run_checks import check_layout

from seal.cli import main
from seal.store import open_store

pytestmark = pytest.mark.slow


def run_cli(args: list[str]) -> int:
    return main(args)


def file_times(root) -> dict:
    """Modification times of every artifact but run.json (whose status each run updates)."""
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.name != "run.json"}


def test_run_on_folder_then_rerun_does_nothing(tmp_path, capsys):
    store = str(tmp_path / "runs")
    assert run_cli(["run", *sum((["--set", o] for o in tiny_overrides(store)), [])]) == 0
    first = capsys.readouterr().out
    figures = check_layout(f"{store}/t")
    before = file_times(tmp_path / "runs")
    assert run_cli(["run", *sum((["--set", o] for o in tiny_overrides(store)), [])]) == 0
    second = capsys.readouterr().out
    after = file_times(tmp_path / "runs")
    assert before == after  # nothing sampled, fitted or rewritten
    table = lambda out: out[out.index("round  "):]  # noqa: E731
    assert table(first) == table(second)
    assert check_layout(f"{store}/t") == figures
    assert run_cli(["report", f"{store}/t", "--plot", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_run_on_s3_matches_folder_and_resumes_after_kill(tmp_path, s3_env):
    """A run killed mid-way and rerun ends with the same figures as an uninterrupted one."""
    folder = str(tmp_path / "runs")
    assert run_cli(["run", *sum((["--set", o] for o in tiny_overrides(folder)), [])]) == 0
    reference = check_layout(f"{folder}/t")

    args = [sys.executable, "-m", "seal.cli", "run", *sum((["--set", o] for o in tiny_overrides(s3_env)), [])]
    proc = subprocess.Popen(args, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = open_store(f"{s3_env}/t")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if run.exists("round-0/scores/00001.jsonl"):
            proc.send_signal(signal.SIGKILL)  # no chance to clean up: like a preempted pod
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not run.exists("round-1/summary.json")
    done = proc = subprocess.run(args, env=os.environ.copy(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert check_layout(f"{s3_env}/t") == reference


def test_different_config_for_existing_run_is_refused(tmp_path, capsys):
    store = str(tmp_path / "runs")
    overrides = tiny_overrides(store) + ["rounds=1", "contexts_per_round=1", "edits_per_context=1"]
    assert run_cli(["run", *sum((["--set", o] for o in overrides), [])]) == 0
    code = run_cli(["run", *sum((["--set", o] for o in overrides + ["inner.lr=0.5"]), [])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "exists with a different config" in err[0]


def test_bad_inputs_end_in_one_line_and_exit_code(tmp_path):
    def seal(*args, env=None):
        return subprocess.run([sys.executable, "-m", "seal.cli", *args], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=120)

    bad_key = seal("run", "--set", "inner.rnak=3")
    missing = seal("run", "--set", f"store={tmp_path}", "--set", f"task.data={tmp_path}/nope.json")
    unreachable = seal("run", "--set", "store=s3://bucket/runs",
                       env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "a",
                            "AWS_SECRET_ACCESS_KEY": "b", "SEAL_S3_MAX_ATTEMPTS": "1"})
    for res, code, needle in [(bad_key, 2, "inner.rnak"), (missing, 2, "nope.json"),
                              (unreachable, 75, "127.0.0.1:9")]:
        lines = res.stderr.strip().splitlines()
        assert res.returncode == code, res.stderr
        assert len(lines) == 1 or "Traceback" not in res.stderr, res.stderr
        assert needle in lines[-1] and lines[-1].startswith("seal: error:")
        assert "Traceback" not in res.stderr


def test_stage_commands_print_shard_lists(tmp_path, capsys):
    run = f"{tmp_path}/runs/t"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("rounds: 1\n")
    overrides = [o for o in tiny_overrides(str(tmp_path / "runs")) if not o.startswith(("store=", "run_id="))]
    assert main(["init", "--run", run, "--config", str(cfg), *sum((["--set", o] for o in overrides), [])]) == 0
    capsys.readouterr()
    out_file = tmp_path / "shards.json"
    assert main(["plan", "--run", run, "--round", "0", "--out", str(out_file)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out_file.read_text()) == {"sample": [0, 1], "adapt": [0, 1, 2]}
    assert main(["sample", "--run", run, "--round", "0", "--shard", "5"]) == 2


def test_wrong_s3_credentials_and_missing_bucket_end_in_one_line(s3_env):
    def seal(store, **env):
        return subprocess.run([sys.executable, "-m", "seal.cli", "run", "--set", f"store={store}"],
                              capture_output=True, text=True, env={**os.environ, **env}, timeout=120)

    wrong = seal(s3_env, AWS_SECRET_ACCESS_KEY="not-the-secret")
    nobucket = seal("s3://no-such-bucket-here/runs")
    for res, needle in [(wrong, "AWS_SECRET_ACCESS_KEY"), (nobucket, "no-such-bucket-here")]:
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr and "not-the-secret" not in res.stderr
        last = res.stderr.strip().splitlines()[-1]
        assert last.startswith("seal: error:") and needle in last


def test_model_and_data_from_s3_previous_policy_and_winner_adapters(tmp_path, s3_env, tiny_model):
    """model.base and task.data as s3:// URIs; mstep.init=previous; keep_adapters=winners."""
    from seal.models.loading import resolve_model
    from seal.tasks.knowledge import load_records

    bucket_root = open_store(s3_env)
    bucket_root.put_dir("models/tiny", resolve_model("tiny:hidden=64,layers=2,seed=0"))
    records = load_records("builtin:squad-sample")
    bucket_root.write_json("data/passages.json", records[:4])
    overrides = tiny_overrides(str(tmp_path / "runs")) + [
        f"model.base={s3_env}/models/tiny", f"task.data={s3_env}/data/passages.json",
        "mstep.init=previous", "inner.keep_adapters=winners", "filter.min_reward=-1",
    ]
    assert run_cli(["run", *sum((["--set", o] for o in overrides), [])]) == 0
    run = open_store(str(tmp_path / "runs" / "t"))
    for r in range(2):
        kept = {(k["context"], k["k"]) for k in run.read_jsonl(f"round-{r}/kept.jsonl")}
        stored = {tuple(map(int, key.split("/")[2:4])) for key in run.list(f"round-{r}/adapters")}
        assert stored == kept  # losers' adapters pruned
        assert max(c for c, _ in kept) < 4  # contexts come from the 4 passages in the bucket
    assert run.read_json("round-1/policy/policy.json")["init"] == "previous"
