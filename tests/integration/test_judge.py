"""The LLM judge against an OpenAI-compatible server on loopback (a fake one that records what it is sent)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from seal.config import JudgeConfig
from seal.errors import ConfigError, TransientError
from seal.tasks.judge import judge_answer


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
