"""The store layout of a run, in one place: every key a stage, `seal status`, the reports and the
evaluations read or write is made here (docs/architecture.md draws the whole layout).

    <run>/run.json                          resolved config, version, status
    <run>/round-<r>/plan.json               contexts and shard lists
    <run>/round-<r>/edits/<shard>.jsonl     sampled self-edits
    <run>/round-<r>/scores/<shard>.jsonl    one row per candidate: rewards, baseline, timings
    <run>/round-<r>/adapters/<c>/<k>/<f>/   fitted adapters (inner.keep_adapters)
    <run>/round-<r>/kept.jsonl              the SFT set
    <run>/round-<r>/policy/                 policy.json and the M-step's adapter
    <run>/round-<r>/summary.json            written last: the round is done

A stage is done exactly when its output exists, so these keys are also the run's progress.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from seal import __version__
from seal.config import RunConfig, from_dict
from seal.errors import ConfigError
from seal.store import Store, open_store

RUN_JSON = "run.json"


def round_key(round_: int, name: str) -> str:
    return f"round-{round_}/{name}"


def plan_key(round_: int) -> str:
    return round_key(round_, "plan.json")


def shard_key(round_: int, kind: str, shard: int) -> str:
    """kind 'edits' (sample stage) or 'scores' (adapt stage)."""
    return round_key(round_, f"{kind}/{shard:05d}.jsonl")


def kept_key(round_: int) -> str:
    return round_key(round_, "kept.jsonl")


def policy_key(round_: int) -> str:
    return round_key(round_, "policy")


def policy_meta_key(round_: int) -> str:
    """policy.json inside policy/: whether the M-step left an adapter, and its loss figures."""
    return round_key(round_, "policy/policy.json")


def adapters_key(round_: int) -> str:
    return round_key(round_, "adapters")


def summary_key(round_: int) -> str:
    return round_key(round_, "summary.json")


def done_shards(run: Store, round_: int, kind: str) -> set[int]:
    """The shard numbers whose `kind` output exists."""
    return {int(k.rsplit("/", 1)[-1].split(".")[0]) for k in run.list(round_key(round_, kind)) if k.endswith(".jsonl")}


# --- run.json


def load_run(run: Store | str, fix: str = "check the run URI (<store>/<run_id>)") -> tuple[Store, dict[str, Any]]:
    """The run's store and its run.json; a one-line ConfigError naming the URI and `fix` when the
    run has no run.json."""
    store = open_store(run) if isinstance(run, str) else run
    if not store.exists(RUN_JSON):
        raise ConfigError(f"{store.uri}/{RUN_JSON} does not exist: {fix}")
    return store, store.read_json(RUN_JSON)


def run_config(run: Store | str, fix: str = "check the run URI (<store>/<run_id>)") -> tuple[Store, RunConfig]:
    """The run's store and the config fixed in its run.json."""
    store, meta = load_run(run, fix)
    return store, from_dict(meta["config"])


def init_run(run: Store, cfg: RunConfig) -> dict[str, Any]:
    """Write run.json once; an existing run must have the same config (rounds and store aside)."""
    if run.exists(RUN_JSON):
        meta = run.read_json(RUN_JSON)
        old = from_dict(meta["config"])
        if old.fingerprint() != cfg.fingerprint():
            raise ConfigError(
                f"run {run.uri} exists with a different config: keep its config or pick a new run_id"
            )
        if meta["config"]["rounds"] == cfg.rounds:
            return meta
        meta["config"]["rounds"] = cfg.rounds  # extending or shortening a run is allowed
    else:
        meta = {
            "config": cfg.model_dump(mode="json"),
            "fingerprint": cfg.fingerprint(),
            "version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "status": "running",
        }
    run.write_json(RUN_JSON, meta)
    return meta


def set_status(run: Store, status: str, message: str = "") -> None:
    meta = run.read_json(RUN_JSON)
    meta["status"], meta["message"] = status, message
    meta["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    run.write_json(RUN_JSON, meta)


# --- rounds


def read_plan(run: Store, round_: int) -> dict[str, Any]:
    key = plan_key(round_)
    if not run.exists(key):
        raise ConfigError(f"{run.uri}/{key} does not exist: run `seal plan` for round {round_} first")
    return run.read_json(key)


def check_shard(shards: list[Any], shard: int, stage: str) -> None:
    """A shard number the plan has, or a one-line error."""
    if not 0 <= shard < len(shards):
        raise ConfigError(f"--shard {shard} is out of range: this round's plan has {len(shards)} {stage} shards")


def read_edits(run: Store, plan: dict[str, Any], round_: int, contexts: set[int]) -> dict[tuple[int, int], dict]:
    """The edit rows of the given contexts, read from the sample shards that hold them."""
    edits: dict[tuple[int, int], dict] = {}
    for s, shard_contexts in enumerate(plan["sample_shards"]):
        if not contexts.intersection(shard_contexts):
            continue
        key = shard_key(round_, "edits", s)
        if not run.exists(key):
            raise ConfigError(f"{run.uri}/{key} is missing: finish round {round_}'s sampling first")
        for row in run.read_jsonl(key):
            edits[(row["context"], row["k"])] = row
    return edits


def read_scores(run: Store, plan: dict[str, Any], round_: int) -> list[dict[str, Any]]:
    """Every candidate's score row of a round, from all its adapt shards."""
    scores = []
    for a in range(len(plan["adapt_shards"])):
        key = shard_key(round_, "scores", a)
        if not run.exists(key):
            raise ConfigError(f"{run.uri}/{key} is missing: finish round {round_}'s adaptation first")
        scores.extend(run.read_jsonl(key))
    return scores


def summaries(run: Store) -> list[dict[str, Any]]:
    """The summary.json of every finished round, in order."""
    out = []
    r = 0
    while run.exists(summary_key(r)):
        out.append(run.read_json(summary_key(r)))
        r += 1
    return out


def policy_has_adapter(run: Store, round_: int) -> bool:
    """Whether round r's M-step left an adapter (nothing kept and nothing to carry: the base)."""
    return bool(run.read_json(policy_meta_key(round_))["adapter"])


def last_policy_round(run: Store) -> int:
    """The last round whose M-step finished, or -1."""
    r = -1
    while run.exists(policy_meta_key(r + 1)):
        r += 1
    return r


# --- `seal eval-knowledge`: an evaluation's own folder (--out), resumable shard by shard
#
#     <eval>/eval.json                 what is evaluated: rows, passages, edits and fits, shards
#     <eval>/passages.json             the evaluation passages (records)
#     <eval>/edits/<row>.json          a file row's self-edits, K per passage, copied at plan time
#     <eval>/results/<shard>.jsonl     one line per (passage, self-edit, fit): answers and grades
#     <eval>/table.json, table.png     written last: the table, per row and grader


EVAL_JSON = "eval.json"
EVAL_PASSAGES = "passages.json"
EVAL_TABLE = "table.json"
EVAL_PLOT = "table.png"


def eval_edits_key(row: int) -> str:
    return f"edits/{row:02d}.json"


def eval_shard_key(shard: int) -> str:
    return f"results/{shard:05d}.jsonl"


# The CPT setting (--setting cpt) adds, beside the keys above:
#
#     <eval>/update/<row>/              the row's one update: a LoRA adapter, or the whole model (full)
#     <eval>/update/<row>.json          written after it: training stats; the row's update is done
#
# and the continual setting (--setting continual) keeps, per unit (an edit source x a sequence):
#
#     <eval>/continual/<unit>/step-<t>/ step t's adapter, merged into the model before step t+1
#     <eval>/continual/<unit>/step-<t>.jsonl   written after it: scores on the passages seen so far
#     <eval>/matrix.json, matrix.png    written last: the retention matrices and their heat map

EVAL_MATRIX = "matrix.json"
EVAL_HEATMAP = "matrix.png"


def cpt_update_key(row: int) -> str:
    return f"update/{row:02d}"


def cpt_update_meta_key(row: int) -> str:
    return f"update/{row:02d}.json"


def continual_step_key(unit: int, step: int) -> str:
    return f"continual/{unit:03d}/step-{step:02d}"


def continual_scores_key(unit: int, step: int) -> str:
    return f"continual/{unit:03d}/step-{step:02d}.jsonl"
