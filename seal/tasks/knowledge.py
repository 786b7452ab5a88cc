"""Knowledge incorporation (SQuAD passages): self-edit prompts, inner-loop data, questions, grading.

A context is one passage record: {"title", "context", "questions": [{"question", "answer"}]}.
The policy reads the passage and writes a self-edit (implications, a rewrite, QA pairs...); the
inner loop trains on the edit's lines; the reward is accuracy on the passage's questions asked
*without* the passage, so only what the fine-tune put into the weights can answer them.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from importlib import resources
from typing import Any

from seal.errors import ConfigError, DataError
from seal.generation.params import GenParams
from seal.inner.train import Example
from seal.store import read_json_file
from seal.tasks.base import InnerJob
from seal.tasks.judge import judge_answer
from seal.tasks.world import load_split

# Self-edit prompts, worded exactly as the paper's reference implementation words them for a base
# model (tests/unit/test_knowledge_protocol.py compares "implications" with the `prompt` field of
# the paper's own self-edit files). The policy continues after the last line.
_PAPER_HEAD = "Let's read the following passage and "
_PASSAGE = "\n\nPassage:\n{title}\n{context}\n\n"
PROMPTS: dict[str, str] = {
    "implications": _PAPER_HEAD + "produce a list of implications derived directly or indirectly from the "
    "content." + _PASSAGE + "Implications:\n",
    "long": _PAPER_HEAD + "produce a long list of implications derived directly or indirectly from the "
    "content." + _PASSAGE + "Implications:\n",
    "very-long": _PAPER_HEAD + "produce a very long list of implications derived directly or indirectly "
    "from the content." + _PASSAGE + "Implications:\n",
    "rewrite": _PAPER_HEAD + "rewrite it in a few different ways, each one separated by a newline."
    + _PASSAGE + "Rewritten passages:\n",
    "self-qa": _PAPER_HEAD + "rewrite it in a question-answer format." + _PASSAGE + "Question 1: ",
}
# seal's own earlier wording, frozen: the synthetic world's warm-started model (seal.models.warmstart)
# learnt these texts, so the world demo selects them as "seal-<variant>" and its numbers stay as
# measured. Any change here changes that model: leave it as it is.
SEAL_PROMPTS: dict[str, str] = {
    "implications": (
        "Read the following passage and list the implications that follow from it, directly or "
        "indirectly, one per line.\n\nTitle: {title}\nPassage: {context}\n\nImplications:\n"
    ),
    "rewrite": (
        "Read the following passage and rewrite it in several different ways, one rewrite per "
        "line.\n\nTitle: {title}\nPassage: {context}\n\nRewrites:\n"
    ),
    "self-qa": (
        "Read the following passage and write questions about it with their answers, one "
        "question and answer per line.\n\nTitle: {title}\nPassage: {context}\n\nQuestions and answers:\n"
    ),
    "long": (
        "Read the following passage and write a long, thorough list of everything it implies, "
        "including background facts and consequences, one per line.\n\nTitle: {title}\n"
        "Passage: {context}\n\nImplications:\n"
    ),
}
PROMPTS.update({f"seal-{k}": v for k, v in SEAL_PROMPTS.items()})
# task.prompt "none" (the paper's "no self-edit" row): the inner loop trains on the passage alone;
# a policy asked for an edit anyway (a run's sample stage) reads the implications prompt.
NO_EDIT = "none"

# The question asked without the passage (task.answer_prompt).
ANSWER_PROMPTS: dict[str, str] = {
    "paper": "Let's answer a question directly and concisely.\nQuestion: Topic: {title}\n{question}\nAnswer:\n",
    "topic": "Topic: {title}\n{question}\n",
}

# The local graders, recorded for every answer whatever task.grader picks.
LOCAL_GRADERS = ("exact_match", "f1", "contains")


def load_records(source: str) -> list[dict[str, Any]]:
    """Read SQuAD-form records from a local path, an s3:// URI, 'builtin:squad-sample', or
    'world:seed=S,split=train|heldout|warmstart' (a generated world, see seal.tasks.world)."""
    if source.startswith("world:"):
        return validate_records(load_split(source), source)
    if source.startswith("builtin:"):
        name = source[len("builtin:"):]
        try:
            raw = (resources.files("seal.data") / f"{name}.json").read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"task.data {source}: no such built-in data set (try builtin:squad-sample)") from None
        data = json.loads(raw)  # shipped with seal, checked by the tests
    else:
        data = read_json_file(source, "task.data")
    return validate_records(data, source)


# Bounds on passage data, checked when it is loaded (a long passage is refused, not truncated, so
# every reward is computed on the text as given): SQuAD's longest passage is about 3,700
# characters, and a self-edit prompt holds the whole passage, so it must fit the model's window.
MAX_PASSAGE_CHARS = 20_000
MAX_FIELD_CHARS = 2_000  # a title, question or answer
MAX_QUESTIONS = 1_000  # per passage
MAX_RECORDS = 1_000_000


def _record_problem(rec: dict[str, Any]) -> str | None:
    """What is wrong with a well-typed record's sizes, or None."""
    if len(rec["context"]) > MAX_PASSAGE_CHARS:
        return (f"passage is {len(rec['context'])} characters, over the {MAX_PASSAGE_CHARS} allowed: "
                "split it into several records")
    if not rec["context"].strip():
        return "passage is empty"
    if not rec["questions"] or len(rec["questions"]) > MAX_QUESTIONS:
        return f"needs 1 to {MAX_QUESTIONS} questions (its reward is their accuracy)"
    if len(rec["title"]) > MAX_FIELD_CHARS:
        return f"title is over {MAX_FIELD_CHARS} characters"
    for j, q in enumerate(rec["questions"]):
        if not q["question"].strip() or not q["answer"].strip():
            return f"question {j} has an empty question or answer (it could never be graded right)"
        if len(q["question"]) > MAX_FIELD_CHARS or len(q["answer"]) > MAX_FIELD_CHARS:
            return f"question {j} is over {MAX_FIELD_CHARS} characters"
    return None


def validate_records(data: Any, source: str) -> list[dict[str, Any]]:
    if not isinstance(data, list) or not data:
        raise DataError(f"task.data {source}: expected a non-empty JSON list of passage records")
    if len(data) > MAX_RECORDS:
        raise DataError(f"task.data {source}: {len(data)} records, at most {MAX_RECORDS}")
    for i, rec in enumerate(data):
        ok = (
            isinstance(rec, dict)
            and isinstance(rec.get("title"), str)
            and isinstance(rec.get("context"), str)
            and isinstance(rec.get("questions"), list)
            and all(
                isinstance(q, dict) and isinstance(q.get("question"), str) and isinstance(q.get("answer"), str)
                for q in rec["questions"]
            )
        )
        if not ok:
            raise DataError(
                f"task.data {source}: record {i} needs 'title', 'context' and "
                "'questions': [{'question', 'answer'}] (all strings)"
            )
        if problem := _record_problem(rec):
            raise DataError(f"task.data {source}: record {i}: {problem}")
    return data


def edit_prompt(record: dict[str, Any], variant: str = "implications") -> str:
    """The self-edit prompt of a passage; "none" (no self-edit) reads the implications prompt."""
    return PROMPTS["implications" if variant == NO_EDIT else variant].format(title=record["title"],
                                                                            context=record["context"])


_SELF_QA_QUESTION = re.compile(r"Question\s+\d+:")
_SELF_QA_ANSWER = re.compile(r"Answer\s*:")
_NEXT_QUESTION = re.compile(r"\n(?=Question\s+\d+:)")


def edit_items(edit: str) -> list[str]:
    """The training items of a self-edit, split as the paper's inner loop splits them: a self-QA
    edit ("Question N: ... Answer: ...") into one item per question with its answer; any other
    into its non-empty lines ('---' separators dropped), without a lead-in line such as "Here are
    the implications:" when the next line starts a numbered list ("1.")."""
    if _SELF_QA_QUESTION.search(edit) and _SELF_QA_ANSWER.search(edit):
        items = [seg.strip() for seg in _NEXT_QUESTION.split(edit.strip()) if seg.strip()]
        if items and not items[0].startswith("Question"):
            items[0] = "Question 1: " + items[0]  # the prompt ended with "Question 1: "
        return items
    lines = [ln.strip() for seg in edit.split("---") for ln in seg.splitlines() if ln.strip()]
    if len(lines) > 1 and lines[1].startswith("1."):
        lines = lines[1:]
    return lines


def training_texts(record: dict[str, Any], edit: str, with_passage: bool = True,
                   qa_pairs: bool = False) -> list[str]:
    """Inner-loop examples: each item of the edit (edit_items) prefixed by the title, then the passage.

    With `qa_pairs`, a line ending in '?' and the line after it (a question and its answer) make
    one example, so the fit sees the fact in the very form the probes ask for it.
    """
    lines = edit_items(edit)
    items: list[str] = []
    i = 0
    while i < len(lines):
        if qa_pairs and lines[i].endswith("?") and i + 1 < len(lines) and not lines[i + 1].endswith("?"):
            items.append(f"{lines[i]}\n{lines[i + 1]}")
            i += 2
        else:
            items.append(lines[i])
            i += 1
    texts = [f"{record['title']}\n{item}" for item in items]
    if with_passage:
        texts.append(f"{record['title']}\n{record['context']}")
    return texts


def question_prompt(title: str, question: str, style: str = "paper") -> str:
    """A question asked without the passage: only the adapted weights can answer it."""
    return ANSWER_PROMPTS[style].format(title=title, question=question)


def first_line(generation: str) -> str:
    """The model's answer is its first non-empty line (models keep writing after answering)."""
    for line in generation.splitlines():
        if line.strip():
            return line.strip()
    return ""


# --- SQuAD v1.1 grading: the official normalisation (lower case, no punctuation/articles/extra spaces)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def contains_answer(prediction: str, gold: str) -> float:
    """1.0 if the normalised gold answer's words appear, in order and adjacent, in the normalised
    prediction: a sentence that states the answer passes, as under the judge's "extra information
    is fine" rule, without an LLM."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not ref:
        return float(not pred)
    return float(any(pred[i: i + len(ref)] == ref for i in range(len(pred) - len(ref) + 1)))


def f1_score(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


# --- The task interface used by the stages (see seal/tasks/__init__.py)


def passage_key(record: dict[str, Any]) -> tuple[str, str]:
    """What identifies a passage across files: its title and its text."""
    return (record["title"].strip(), record["context"].strip())


def exclude_passages(records: list[dict[str, Any]], sources: list[str]) -> list[dict[str, Any]]:
    """`records` without the passages (matched by title and context) of any file in `sources`."""
    drop: set[tuple[str, str]] = set()
    for src in sources:
        data = read_json_file(src, "task.exclude")
        if not isinstance(data, list) or not all(
                isinstance(r, dict) and isinstance(r.get("title"), str) and isinstance(r.get("context"), str)
                for r in data):
            raise DataError(f"task.exclude {src}: expected a JSON list of records with 'title' and 'context'")
        drop.update(passage_key(r) for r in data)
    kept = [r for r in records if passage_key(r) not in drop]
    if not kept:
        raise ConfigError("task.exclude removes every passage of task.data: nothing left to train on")
    return kept


def load_contexts(task_cfg: Any) -> list[dict[str, Any]]:
    records = load_records(task_cfg.data)
    return exclude_passages(records, task_cfg.exclude) if task_cfg.exclude else records


def context_prompt(record: dict[str, Any], task_cfg: Any) -> str:
    return edit_prompt(record, task_cfg.prompt)


def inner_job(record: dict[str, Any], edit: str, task_cfg: Any, inner_cfg: Any) -> InnerJob:
    """Train on the edit's items (and the passage) with the run's inner-loop settings; task.prompt
    'none' trains on the passage alone."""
    if task_cfg.prompt == NO_EDIT:
        edit = ""
    texts = training_texts(record, edit, task_cfg.train_on_passage or task_cfg.prompt == NO_EDIT,
                           task_cfg.qa_pairs)
    return InnerJob(examples=[Example(text=t) for t in texts], lora=inner_cfg)


def probe_prompts(record: dict[str, Any], task_cfg: Any) -> list[str]:
    return [question_prompt(record["title"], q["question"], task_cfg.answer_prompt) for q in record["questions"]]


def probe_params(task_cfg: Any, batch_size: int) -> Any:
    """Greedy answers: the whole answer up to EOS (the paper's), or up to the first line's end."""
    return GenParams(max_new_tokens=task_cfg.answer_tokens, temperature=0.0, batch_size=batch_size,
                     stop_at_newline=task_cfg.answer_scope == "first_line")


def grade_local(grader: str, prediction: str, gold: str) -> float:
    if grader == "exact_match":
        return exact_match(prediction, gold)
    if grader == "f1":
        return f1_score(prediction, gold)
    return contains_answer(prediction, gold)


def grade(task_cfg: Any, question: str, gold: str, prediction: str) -> float:
    if task_cfg.grader != "judge":
        return grade_local(task_cfg.grader, prediction, gold)
    if not prediction.strip():  # nothing to judge: wrong, as in the paper, without a call
        return 0.0
    return judge_answer(task_cfg.judge, question, gold, prediction)


def answer_text(output: str, scope: str) -> str:
    return first_line(output) if scope == "first_line" else output.strip()


def grade_outputs(record: dict[str, Any], outputs: list[str], task_cfg: Any) -> dict[str, Any]:
    """Mean grade over the passage's questions, from the model's raw outputs to probe_prompts;
    "graders" holds every local grader's per-question grades too (and the judge's, when it grades)."""
    questions = record["questions"]
    answers = [answer_text(o, task_cfg.answer_scope) for o in outputs]
    grades = [grade(task_cfg, q["question"], q["answer"], a) for q, a in zip(questions, answers, strict=True)]
    graders = {g: [grade_local(g, a, q["answer"]) for q, a in zip(questions, answers, strict=True)]
               for g in LOCAL_GRADERS}
    if task_cfg.grader == "judge":
        graders["judge"] = grades
    return {"score": sum(grades) / len(grades) if grades else 0.0, "answers": answers, "grades": grades,
            "graders": graders}
