"""`seal eval-arc`: few-shot ARC success on a task set, the paper's four comparison rows
(its Table: SEAL 72.5%, without prior RL 20%, in-context 0%, oracle TTT 100%):

- policy:    "SEAL": self-edits sampled from a run's latest policy (the base plus its M-step
             adapter), each test-time trained and scored (the paper's 72.5%);
- untrained: self-edits sampled from the base model, the same way (the paper's "TTT + self-edit
             without prior RL", 20%);
- icl:       no training at all: the base model answers the test queries in context (0%);
- oracle:    one fixed self-edit (a JSON object given on the command line) for every task: the
             paper's "Oracle TTT" (100%), run with the settings the self-edit names.

Success is the share of (task, self-edit) pairs whose test-time-trained model solves the task
(every test input, pass@`task.arc.attempts` after voting), with 5 self-edits per task by default:
the paper's denominator (8 evaluation tasks x 5 edits). "Solved" is the share of tasks that at
least one self-edit solved. Every edit goes through the adapt stage's own `candidate_rows`
(seal.inner.fit.run_fits), and sampling through the run's generation backend and the sample
stage's resampling of unparseable edits, so evaluation and training cannot drift apart.
"""

from __future__ import annotations

import logging
from typing import Any

from seal.config import RunConfig
from seal.errors import ConfigError
from seal.inner.score import score_model
from seal.report import text_table
from seal.seeds import derive_seed
from seal.stages.adapt import Candidate, candidate_rows
from seal.stages.runs import last_policy_round, load_run, policy_has_adapter, stored_config
from seal.stages.runtime import Runtime
from seal.stages.sample import sample_edits
from seal.store import Store
from seal.tasks import arc

log = logging.getLogger(__name__)

ROWS = ("policy", "untrained", "icl", "oracle")
PAPER_EDITS = 5  # self-edits per evaluation task in the paper (`seal eval-arc --edits` default)
LABELS = {
    "policy": "SEAL policy self-edits",  # the paper's 72.5%
    "untrained": "un-trained policy self-edits",  # the paper's 20% (TTT + self-edit, no prior RL)
    "icl": "in-context only (no TTT)",  # the paper's 0%
    "oracle": "fixed self-edit (oracle)",  # the paper's 100% (Oracle TTT)
}


def latest_policy_round(run_uri: str, cfg: RunConfig) -> tuple[Store, int]:
    """The run and its last round whose M-step finished; the run must share the evaluation's base model."""
    run, meta = load_run(run_uri, "give the URI of a `seal run` run")
    base = stored_config(run, meta).model.base
    if base != cfg.model.base:
        raise ConfigError(f"--run {run_uri} trained on model {base!r}, but the config's model.base is "
                          f"{cfg.model.base!r}: evaluate with the run's base model")
    r = last_policy_round(run)
    if r < 0:
        raise ConfigError(f"--run {run_uri}: no round has finished its M-step yet (no round-0/policy/)")
    return run, r


def check_oracle(text: str, cfg: RunConfig) -> str:
    edit, why, notes = arc.parse_edit(text, cfg.task.arc)
    if edit is None:
        raise ConfigError(f"--oracle: {why}: pass one self-edit JSON object, e.g. '{arc.EXAMPLE_EDIT}'")
    for note in notes:
        log.warning("--oracle: %s", note)
    return text


def policy_edits(rt: Runtime, policy: int, records: list[dict], k: int, tag: str) -> list[list[str]]:
    """k self-edits per context from the policy entering round `policy` (0: the base model),
    seeded by (run seed, tag, context, k)."""
    cfg = rt.cfg
    jobs = [(c, j) for c in range(len(records)) for j in range(k)]
    prompts = [arc.context_prompt(records[c], cfg.task) for c, _ in jobs]
    seeds = [derive_seed(cfg.seed, "eval-arc", tag, c, j) for c, j in jobs]
    comps, _ = sample_edits(arc, cfg.task, rt.policy_generator(policy), prompts, seeds, cfg.sampling.gen_params())
    texts = [c.text for c in comps]
    return [texts[c * k:(c + 1) * k] for c in range(len(records))]


def run_edits(model: Any, tokenizer: Any, records: list[dict], edits: list[list[str]], cfg: RunConfig,
              bar: Any, merged: bool = False) -> list[dict[str, Any]]:
    """Test-time train and score every edit, as the adapt stage does; one score row per (context,
    edit). `merged`: `model` has a policy merged in (a vLLM scorer must serve those weights)."""
    cands = [Candidate(c, k, text) for c, texts in enumerate(edits) for k, text in enumerate(texts)]
    rows = candidate_rows(model, tokenizer, arc, records, cands, cfg, 0, merged=merged)
    for row, cand in zip(rows, cands, strict=True):
        row["edit"] = cand.text
    bar.update(len(rows))
    return rows


def summarize(name: str, records: list[dict], rows: list[dict[str, Any]], note: str = "") -> dict[str, Any]:
    solved = {r["context"] for r in rows if r["reward"] >= 1.0}
    return {
        "row": name, "label": LABELS[name] + (f" ({note})" if note else ""), "contexts": len(records),
        "per": "task" if records and "test_index" not in records[0] else "test input",
        "edits": len(rows), "skipped": sum(1 for r in rows if r.get("skip")),
        "success": sum(r["reward"] for r in rows) / len(rows) if rows else 0.0,
        "solved": len(solved) / len(records) if records else 0.0, "details": rows,
    }


def evaluate(cfg: RunConfig, run_uri: str | None, oracle: str | None, edits_per_context: int,
             rows: tuple[str, ...] = ROWS) -> list[dict[str, Any]]:
    """The comparison rows that apply (policy needs a run, oracle an edit), in ROWS order."""
    from tqdm import tqdm

    if cfg.task.name != "arc":
        raise ConfigError(f"eval-arc needs task.name: arc (the config has {cfg.task.name!r})")
    wanted = [r for r in ROWS if r in rows and (r != "policy" or run_uri) and (r != "oracle" or oracle)]
    run, policy_round = latest_policy_round(run_uri, cfg) if "policy" in wanted else (None, -1)
    if oracle is not None:
        check_oracle(oracle, cfg)
    rt = Runtime(cfg, run)
    records = rt.records
    total = sum(len(records) * (edits_per_context if r in ("policy", "untrained") else 1) for r in wanted)
    out = []
    with tqdm(total=total, desc="eval-arc", unit="it", disable=None, leave=False) as bar:
        for name in wanted:
            if name == "policy":
                # The policy entering round r + 1: the base with round r's policy adapter merged in.
                note = f"round {policy_round}"
                if not policy_has_adapter(run, policy_round):
                    note += ", nothing kept yet: the base model"
                edits = policy_edits(rt, policy_round + 1, records, edits_per_context, "policy")
                result = run_edits(rt.policy_model(policy_round + 1), rt.tokenizer, records, edits, cfg, bar,
                                   merged=rt.has_policy_adapter(policy_round + 1))
                rt.release()
                out.append(summarize(name, records, result, note))
                continue
            # One copy of the base (round 0's policy) serves the other rows: fits leave it unchanged.
            base = rt.policy_model(0)
            if name == "icl":
                result = []
                for c, rec in enumerate(records):
                    s = score_model(base, rt.tokenizer, arc, rec, cfg)
                    result.append({"context": c, "k": 0, "reward": s["score"], "answers": [s["answers"]]})
                    bar.update(1)
            elif name == "untrained":
                edits = policy_edits(rt, 0, records, edits_per_context, "untrained")
                result = run_edits(base, rt.tokenizer, records, edits, cfg, bar)
            else:
                result = run_edits(base, rt.tokenizer, records, [[oracle] for _ in records], cfg, bar)
            out.append(summarize(name, records, result))
    return out


def table(results: list[dict[str, Any]]) -> str:
    header = ("setting", "tasks" if any(r.get("per") == "task" for r in results) else "contexts",
              "edits", "skipped", "success", "solved")
    cells = [header] + [
        (r["label"], str(r["contexts"]), str(r["edits"]), str(r["skipped"]),
         f"{100 * r['success']:.1f}%", f"{100 * r['solved']:.1f}%")
        for r in results
    ]
    return text_table(cells, left=1)
