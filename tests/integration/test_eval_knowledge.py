"""`seal eval-knowledge` on a tiny model, in a folder store and on a real S3 server: every row of
the table with its intervals, per-question results in the store, the plot, a kill mid-way then a
rerun that skips the finished shards and ends with the clean run's table, and bad requests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from conftest import TINY

from seal.cli import main
from seal.store import open_store

pytestmark = pytest.mark.slow

ASSETS = Path(__file__).resolve().parents[1] / "assets"
EDITS = [str(ASSETS / "paper_edits_base_sample.json"), str(ASSETS / "paper_edits_gpt4_1_sample.json")]
SETS = [f"model.base={TINY}", "model.max_length=256", "task.answer_tokens=8", "sampling.max_new_tokens=24",
        "inner.rank=4", "inner.alpha=8", "inner.epochs=2", "inner.fits=2"]


def args(out: str) -> list[str]:
    sets = [x for s in SETS for x in ("--set", s)]
    return ["eval-knowledge", "--out", out, *sets, "--edits-file", EDITS[0], "--edits-file", EDITS[1],
            "--policy", "base", "--limit", "2", "--edits", "2", "--shard-size", "1"]


@pytest.fixture(params=["folder", "s3"])
def out_uri(request, tmp_path):
    if request.param == "folder":
        return str(tmp_path / "eval")
    return f"{request.getfixturevalue('s3_env')}/eval"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One clean run's table, in a folder."""
    out = str(tmp_path_factory.mktemp("ref") / "eval")
    assert main(args(out)) == 0
    return open_store(out).read_json("table.json")


def test_the_table_has_every_row_and_grader_with_intervals(reference, capsys, tmp_path):
    names = [r["name"] for r in reference["rows"]]
    assert names == ["base model", "passage only", "passage + paper_edits_base_sample.json",
                     "passage + paper_edits_gpt4_1_sample.json", "passage + base model's self-edits"]
    assert [r["fits"] for r in reference["rows"]] == [0, 4, 8, 8, 8]  # 2 passages x edits x 2 fits
    for row in reference["rows"]:
        assert row["passages"] == 2
        for g in ("exact_match", "f1", "contains"):
            lo, hi = row["graders"][g]["ci95"]
            assert lo <= row["graders"][g]["mean"] <= hi
    assert reference["questions"] == 9


def test_killed_mid_way_then_rerun_resumes_and_matches_a_clean_run(out_uri, reference, capsys):
    store = open_store(out_uri)
    proc = subprocess.Popen([sys.executable, "-m", "seal.cli", *args(out_uri)], env=os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if store.exists("results/00002.jsonl"):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the evaluation finished before it could be killed"
    done = sorted(store.list("results"))
    assert 3 <= len(done) < 10 and not store.exists("table.json")
    before = {k: store.read_bytes(k) for k in done}
    capsys.readouterr()
    assert main(args(out_uri)) == 0
    out = capsys.readouterr().out
    assert "passage + base model's self-edits" in out and "contains % [95% CI]" in out
    assert len(store.list("results")) == 10
    assert {k: store.read_bytes(k) for k in done} == before  # finished shards were not redone
    table = store.read_json("table.json")
    assert [r["graders"] for r in table["rows"]] == [r["graders"] for r in reference["rows"]]
    assert store.read_bytes("table.png")[:4] == b"\x89PNG"
    line = store.read_jsonl("results/00004.jsonl")[0]  # a file row: the paper's edit, its answers
    assert line["edit"] and line["questions"][0]["gold"] and set(line["questions"][0]["grades"]) == {
        "exact_match", "f1", "contains"}
    # Bare --out goes on with what is planned there; --join only rewrites the table.
    assert main(["eval-knowledge", "--out", out_uri, "--join"]) == 0


def test_pods_run_their_shards_and_a_join_step_writes_the_table(tmp_path, reference, capsys):
    out = str(tmp_path / "eval")
    fan = tmp_path / "fan"
    assert main([*args(out), "--plan-only", "--out-dir", str(fan), "--max-pods", "3"]) == 0
    assert (fan / "shards.json").read_text() == '["0-3","4-6","7-9"]'
    assert main(["eval-knowledge", "--out", out, "--join"]) == 2  # shards missing: one line, exit 2
    assert "shards are not done" in capsys.readouterr().err
    for item in ("0-3", "4-6", "7-9"):
        assert main(["eval-knowledge", "--out", out, "--shard", item]) == 0
    assert not open_store(out).exists("table.json")
    assert main(["eval-knowledge", "--out", out, "--join"]) == 0
    table = open_store(out).read_json("table.json")
    assert [r["graders"] for r in table["rows"]] == [r["graders"] for r in reference["rows"]]


def test_bad_requests_end_in_one_line(tmp_path, capsys):
    out = str(tmp_path / "eval")
    assert main([*args(out), "--plan-only"]) == 0
    capsys.readouterr()
    assert main([*args(out)[:-2], "--shard-size", "2", "--plan-only"]) == 2
    assert "holds a different evaluation" in capsys.readouterr().err
    other = str(tmp_path / "other")
    assert main(["eval-knowledge", "--out", other, "--set", f"model.base={TINY}", "--passages",
                 EDITS[0], "--edits-file", str(ASSETS / "paper_edits_base_sample.json"), "--limit", "1",
                 "--edits-file", str(tmp_path / "missing.json"), "--plan-only"]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert not open_store(other).exists("eval.json")  # nothing half-planned
    # sizes beyond the config's own bounds on K and F: refused before anything is planned
    for flag, value, bound in (("--edits", "1000000000", "at most 1024"), ("--fits", "65", "at most 64")):
        assert main([*args(other)[:-2], flag, value, "--plan-only"]) == 2
        assert f"{flag} {value}: {bound}" in capsys.readouterr().err
        assert not open_store(other).exists("eval.json")


class _Teacher(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint on loopback that records what it is sent."""

    seen: list = []
    fail_first = 0

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Teacher.seen.append(body)
        if _Teacher.fail_first:
            _Teacher.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        text = f"Here are the implications:\n1. Implication {len(_Teacher.seen)}.\n2. Another one."
        payload = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_a_teacher_endpoint_writes_a_rows_self_edits(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("time.sleep", lambda s: None)
    server = HTTPServer(("127.0.0.1", 0), _Teacher)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Teacher.seen, _Teacher.fail_first = [], 1
    out = str(tmp_path / "eval")
    try:
        assert main(["eval-knowledge", "--out", out, *[x for s in SETS for x in ("--set", s)],
                     "--passages", EDITS[0], "--limit", "1", "--edits", "2", "--fits", "1",
                     "--teacher", f"http://127.0.0.1:{server.server_port}/v1", "--teacher-model", "gpt-4.1"]) == 0
    finally:
        server.shutdown()
    assert "passage + gpt-4.1 self-edits (teacher)" in capsys.readouterr().out
    record = json.loads(Path(EDITS[0]).read_text())[0]
    assert len(_Teacher.seen) == 3  # one 503 retried, then 2 self-edits
    assert all(b["model"] == "gpt-4.1" and b["messages"][0]["content"] == record["prompt"] for b in _Teacher.seen)
    store = open_store(out)
    lines = store.read_jsonl("results/00002.jsonl")
    assert [line["edit"].splitlines()[1] for line in lines] == ["1. Implication 2.", "1. Implication 3."]
