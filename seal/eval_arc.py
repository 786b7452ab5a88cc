"""`seal eval-arc`: few-shot ARC success on a task set, the paper's four comparison rows.

- policy:    self-edits sampled from a run's latest policy (the base plus its M-step adapter),
             each test-time trained and scored;
- untrained: self-edits sampled from the base model, the same way (the paper's "without RL");
- icl:       no training at all: the base model answers the voted test views in context;
- oracle:    one fixed self-edit (a JSON object given on the command line) for every context.

Success is the mean reward over every (context, self-edit) pair: the share of self-edits whose
test-time-trained model solves the test input (pass@`task.arc.attempts` after voting), as the
paper reports it. "Solved" is the share of contexts that at least one self-edit solved. Every
edit goes through the same `fit_candidate` as the ReSTEM rounds, so evaluation and training
cannot drift apart.
"""

from __future__ import annotations

import logging
from typing import Any

from seal.adapt import Candidate, fit_candidate, score_model
from seal.config import RunConfig
from seal.errors import ConfigError
from seal.generate import GenParams, make_generator
from seal.seeds import derive_seed
from seal.store import open_store
from seal.tasks import arc

log = logging.getLogger(__name__)

ROWS = ("policy", "untrained", "icl", "oracle")
LABELS = {
    "policy": "SEAL policy self-edits",
    "untrained": "un-trained policy self-edits",
    "icl": "in-context only (no TTT)",
    "oracle": "fixed self-edit (oracle)",
}


def latest_policy_round(run_uri: str, cfg: RunConfig) -> int:
    """The last round whose M-step finished; the run must share the evaluation's base model."""
    run = open_store(run_uri)
    if not run.exists("run.json"):
        raise ConfigError(f"--run {run_uri}: no run.json there: give the URI of a `seal run` run")
    base = run.read_json("run.json")["config"]["model"]["base"]
    if base != cfg.model.base:
        raise ConfigError(f"--run {run_uri} trained on model {base!r}, but the config's model.base is "
                          f"{cfg.model.base!r}: evaluate with the run's base model")
    r = -1
    while run.exists(f"round-{r + 1}/policy/policy.json"):
        r += 1
    if r < 0:
        raise ConfigError(f"--run {run_uri}: no round has finished its M-step yet (no round-0/policy/)")
    return r


def check_oracle(text: str, cfg: RunConfig) -> str:
    edit, why, notes = arc.parse_edit(text, cfg.task.arc)
    if edit is None:
        raise ConfigError(f"--oracle: {why}: pass one self-edit JSON object, e.g. '{arc.EXAMPLE_EDIT}'")
    for note in notes:
        log.warning("--oracle: %s", note)
    return text


def sample_edits(model: Any, tokenizer: Any, records: list[dict], cfg: RunConfig, k: int, tag: str) -> list[list[str]]:
    """k self-edits per context from `model`, seeded by (run seed, tag, context, k)."""
    task_cfg = cfg.task
    jobs = [(c, j) for c in range(len(records)) for j in range(k)]
    prompts = [arc.context_prompt(records[c], task_cfg) for c, _ in jobs]
    seeds = [derive_seed(cfg.seed, "eval-arc", tag, c, j) for c, j in jobs]
    params = GenParams(max_new_tokens=cfg.sampling.max_new_tokens, temperature=cfg.sampling.temperature,
                       top_p=cfg.sampling.top_p, batch_size=cfg.sampling.batch_size)
    texts = [c.text for c in make_generator(cfg.sampling.backend, model, tokenizer).generate(prompts, seeds, params)]
    return [texts[c * k:(c + 1) * k] for c in range(len(records))]


def run_edits(model: Any, tokenizer: Any, records: list[dict], edits: list[list[str]], cfg: RunConfig,
              bar: Any) -> list[dict[str, Any]]:
    """Test-time train and score every edit; one score row per (context, edit)."""
    rows = []
    for c, texts in enumerate(edits):
        for k, text in enumerate(texts):
            model, row = fit_candidate(model, tokenizer, arc, records[c], Candidate(c, k, text), cfg, 0, None)
            row["edit"] = text
            rows.append(row)
            bar.update(1)
    return rows


def summarize(name: str, records: list[dict], rows: list[dict[str, Any]], note: str = "") -> dict[str, Any]:
    solved = {r["context"] for r in rows if r["reward"] >= 1.0}
    return {
        "row": name, "label": LABELS[name] + (f" ({note})" if note else ""), "contexts": len(records),
        "edits": len(rows), "skipped": sum(1 for r in rows if r.get("skip")),
        "success": sum(r["reward"] for r in rows) / len(rows) if rows else 0.0,
        "solved": len(solved) / len(records) if records else 0.0, "details": rows,
    }


def evaluate(cfg: RunConfig, run_uri: str | None, oracle: str | None, edits_per_context: int,
             rows: tuple[str, ...] = ROWS) -> list[dict[str, Any]]:
    """The comparison rows that apply (policy needs a run, oracle an edit), in ROWS order."""
    from tqdm import tqdm

    from seal import stages
    from seal.models import load_tokenizer

    if cfg.task.name != "arc":
        raise ConfigError(f"eval-arc needs task.name: arc (the config has {cfg.task.name!r})")
    wanted = [r for r in ROWS if r in rows and (r != "policy" or run_uri) and (r != "oracle" or oracle)]
    policy_round = latest_policy_round(run_uri, cfg) if "policy" in wanted else None
    if oracle is not None:
        check_oracle(oracle, cfg)
    records = arc.load_contexts(cfg.task)
    tokenizer = load_tokenizer(cfg.model.base)
    run = open_store(run_uri) if run_uri else None
    rt = stages.Runtime(cfg, run)
    total = sum(len(records) * (edits_per_context if r in ("policy", "untrained") else 1) for r in wanted)
    out = []
    base = None
    with tqdm(total=total, desc="eval-arc", unit="it", disable=None, leave=False) as bar:
        for name in wanted:
            if name == "policy":
                # Runtime.policy_model(r + 1) is the base with round r's policy adapter merged in.
                note = f"round {policy_round}"
                if not stages.policy_has_adapter(run, policy_round):
                    note += ", nothing kept yet: the base model"
                model = rt.policy_model(policy_round + 1)
                edits = sample_edits(model, tokenizer, records, cfg, edits_per_context, "policy")
                result = run_edits(model, tokenizer, records, edits, cfg, bar)
                rt.release()
                out.append(summarize(name, records, result, note))
                continue
            # One copy of the base serves the other rows: each fit unloads its adapter afterwards.
            base = base if base is not None else rt.load_base()
            if name == "icl":
                result = []
                for c, rec in enumerate(records):
                    s = score_model(base, tokenizer, arc, rec, cfg)
                    result.append({"context": c, "k": 0, "reward": s["score"], "answers": [s["answers"]]})
                    bar.update(1)
            elif name == "untrained":
                edits = sample_edits(base, tokenizer, records, cfg, edits_per_context, "untrained")
                result = run_edits(base, tokenizer, records, edits, cfg, bar)
            else:
                result = run_edits(base, tokenizer, records, [[oracle] for _ in records], cfg, bar)
            out.append(summarize(name, records, result))
    return out


def table(results: list[dict[str, Any]]) -> str:
    header = ("setting", "contexts", "edits", "skipped", "success", "solved")
    cells = [header] + [
        (r["label"], str(r["contexts"]), str(r["edits"]), str(r["skipped"]),
         f"{100 * r['success']:.1f}%", f"{100 * r['solved']:.1f}%")
        for r in results
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
