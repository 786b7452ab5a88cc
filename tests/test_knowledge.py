"""Knowledge task: records, prompts, inner-loop data, SQuAD grading, and the LLM judge."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from seal.config import JudgeConfig, TaskConfig
from seal.errors import ConfigError, DataError, TransientError
from seal.judge import judge_answer
from seal.tasks import knowledge as kn

REC = {"title": "Warsaw", "context": "Warsaw is the capital of Poland.",
       "questions": [{"question": "What is Warsaw?", "answer": "the capital of Poland"}]}


def test_builtin_records_are_valid_and_attributed():
    recs = kn.load_records("builtin:squad-sample")
    assert len(recs) == 8
    assert all(r["questions"] for r in recs)


def test_missing_and_malformed_data(tmp_path):
    with pytest.raises(ConfigError, match="task.data file not found"):
        kn.load_records(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        kn.load_records(str(tmp_path / "bad.json"))
    (tmp_path / "shape.json").write_text(json.dumps([{"title": "x", "context": "y"}]))
    with pytest.raises(DataError, match="record 0 needs"):
        kn.load_records(str(tmp_path / "shape.json"))
    with pytest.raises(ConfigError, match="no such built-in"):
        kn.load_records("builtin:nope")


@pytest.mark.parametrize("variant", sorted(kn.PROMPTS))
def test_prompt_variants_contain_the_passage(variant):
    p = kn.edit_prompt(REC, variant)
    assert "Warsaw is the capital of Poland." in p and p.endswith(":\n")


def test_training_texts_prefix_title_and_skip_blank_lines():
    edit = "Warsaw is a capital.\n\n  Poland has a capital.  \n"
    assert kn.training_texts(REC, edit, with_passage=False) == [
        "Warsaw\nWarsaw is a capital.", "Warsaw\nPoland has a capital."]
    assert kn.training_texts(REC, edit)[-1] == "Warsaw\nWarsaw is the capital of Poland."
    assert kn.question_prompt("Warsaw", "What is Warsaw?") == "Topic: Warsaw\nWhat is Warsaw?\n"


def test_squad_normalisation_em_and_f1():
    assert kn.normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert kn.exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert kn.exact_match("Broncos", "Denver Broncos") == 0.0
    assert kn.f1_score("Broncos", "Denver Broncos") == pytest.approx(2 / 3)
    assert kn.f1_score("", "Denver") == 0.0
    assert kn.first_line("\n  Paris \nmore text") == "Paris"


class _Judge(BaseHTTPRequestHandler):
    replies: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.seen.append((body, self.headers.get("Authorization")))
        status, text = _Judge.replies.pop(0)
        payload = json.dumps({"choices": [{"message": {"content": text}}]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    _Judge.seen = []
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_judge_yes_no_retry_and_key(judge_server, monkeypatch):
    monkeypatch.setenv("MY_KEY", "s3cr3t")
    cfg = JudgeConfig(url=judge_server, model="judge", api_key_env="MY_KEY", retries=2, timeout_s=5)
    _Judge.replies = [(200, "Yes."), (500, ""), (200, "no")]
    assert judge_answer(cfg, "q", "gold", "pred") == 1.0
    assert judge_answer(cfg, "q", "gold", "pred") == 0.0  # after one retried 500
    body, auth = _Judge.seen[0]
    assert auth == "Bearer s3cr3t" and body["model"] == "judge" and "gold" in body["messages"][0]["content"]


def test_judge_failure_is_an_error_not_a_zero(judge_server, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    cfg = JudgeConfig(url=judge_server, model="judge", retries=1)
    _Judge.replies = [(503, ""), (200, "maybe")]
    with pytest.raises(TransientError, match="failed after 2 tries") as err:
        judge_answer(cfg, "q", "a", "b")
    assert err.value.exit_code == 75
    _Judge.replies = [(401, "")]
    with pytest.raises(ConfigError, match="refused the key"):
        judge_answer(cfg, "q", "a", "b")
    with pytest.raises(ConfigError, match="judge.url"):
        judge_answer(JudgeConfig(), "q", "a", "b")


def test_unreachable_judge_is_transient(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    cfg = JudgeConfig(url="http://127.0.0.1:9/v1", model="m", retries=1, timeout_s=1)
    with pytest.raises(TransientError):
        judge_answer(cfg, "q", "a", "b")


def test_grade_dispatch():
    assert kn.grade(TaskConfig(grader="exact_match"), "q", "Paris", "paris") == 1.0
    assert kn.grade(TaskConfig(grader="f1"), "q", "New York City", "New York") == pytest.approx(0.8)
