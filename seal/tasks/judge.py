"""An LLM judge at any OpenAI-compatible endpoint: is the predicted answer the gold answer?

A failed judge call is an error the run reports (exit 75 after retries, or 2 for a bad URL,
model or key), never a silent zero: scoring a failed call as wrong would bias rewards downward
exactly when the judge is overloaded.
"""

from __future__ import annotations

import logging
import os
import time

from seal.config import JudgeConfig
from seal.errors import ConfigError, TransientError

log = logging.getLogger(__name__)

# The paper's grading rules, in its words: judged from the gold answer alone (no outside
# knowledge), and extra information is fine if the answer fully conveys the gold one.
JUDGE_PROMPT = (
    "You are a grading assistant. Your job is to determine whether a student's answer correctly answers "
    "the question based solely on the provided gold answer. Do not use any outside knowledge. The student "
    "answer can include additional information, but it must at least fully convey the gold answer and must "
    "not contradict it. Ignore style, phrasing, or extra details that do not affect correctness. Respond "
    "ONLY with 'yes' or 'no'.\n\n"
    "Question: {question}\nGold answer: {gold}\nStudent answer: {prediction}\n"
    "Is the student answer correct based solely on the gold answer? Respond 'yes' or 'no'."
)


def judge_answer(cfg: JudgeConfig, question: str, gold: str, prediction: str) -> float:
    """1.0 if the judge says yes, 0.0 if it says no; raises on any other outcome."""
    import requests

    if not cfg.url or not cfg.model:
        raise ConfigError("task.grader is 'judge' but task.judge.url or task.judge.model is empty")
    headers = {"Content-Type": "application/json"}
    key = os.environ.get(cfg.api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = {
        "model": cfg.model,
        "messages": [
            {"role": "user", "content": JUDGE_PROMPT.format(question=question, gold=gold, prediction=prediction)}
        ],
        "temperature": 0,
        "max_tokens": 4,
    }
    url = cfg.url.rstrip("/") + "/chat/completions"
    last = ""
    for attempt in range(cfg.retries + 1):
        if attempt:
            time.sleep(min(2 ** (attempt - 1) * 0.5, 8.0))
        try:
            resp = requests.post(url, json=body, headers=headers, timeout=cfg.timeout_s)
        except requests.RequestException as e:
            last = f"{type(e).__name__}"
            continue
        if resp.status_code in (429,) or resp.status_code >= 500:
            last = f"HTTP {resp.status_code}"
            continue
        if resp.status_code in (401, 403):
            raise ConfigError(f"judge {url} refused the key (HTTP {resp.status_code}): set ${cfg.api_key_env}")
        if resp.status_code >= 400:
            raise ConfigError(f"judge {url} answered HTTP {resp.status_code}: check task.judge.url and model")
        try:
            text = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            last = "a reply that is not a chat completion"
            continue
        verdict = text.strip().lower()
        if verdict.startswith("yes"):
            return 1.0
        if verdict.startswith("no"):
            return 0.0
        last = f"an unclear verdict {text.strip()[:40]!r}"
    raise TransientError(f"judge {url} failed after {cfg.retries + 1} tries ({last}): check the endpoint")
