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

Every reader here validates what it reads (seal/stages/schemas.py, and each JSONL object's end
record), and shard readers check the rows against the plan: a damaged object is a one-line
DataError (exit 65) naming it and the command that redoes it (`redo_command`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from seal import __version__
from seal.config import RunConfig, from_dict
from seal.errors import ConfigError, DataError, SealError
from seal.stages.schemas import EditRow, KeptRow, Plan, PolicyMeta, RunMeta, ScoreRow, Summary, check
from seal.store import NO_END, Store, open_store

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
# run.json's "format": 1 since JSONL objects end with an end record. Runs made before have none;
# their JSONL objects are read without one (their shards are still checked against the plan).
FORMAT = 1
SHARD_NAME = re.compile(r"^(\d{5})\.jsonl$")  # what shard_key writes; other files are not shards


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
    """The shard numbers whose `kind` output exists (stray files such as copies are ignored)."""
    found = (SHARD_NAME.match(k.rsplit("/", 1)[-1]) for k in run.list(round_key(round_, kind)))
    return {int(m.group(1)) for m in found if m}


def round_finished(run: Store, round_: int) -> bool:
    """summary.json is written last: the round's completion marker."""
    return run.exists(summary_key(round_))


def redo_command(run: Store, round_: int, stage: str, shard: int | None = None) -> str:
    """The command that rewrites a damaged output of `stage` (plan, sample, adapt, improve)."""
    shard_arg = f" --shard {shard}" if shard is not None else ""
    return f"seal {stage} --run {run.uri} --round {round_}{shard_arg} --redo"


def damaged(run: Store, round_: int, problem: str, stage: str, shard: int | None = None) -> DataError:
    """A damaged object as a DataError: `problem` names it; the fix is the stage that rewrites it
    (a finished round's outputs are only rewritten on request: --redo)."""
    return DataError(f"{problem}: redo it with `{redo_command(run, round_, stage, shard)}`")


# --- run.json


def load_run(run: Store | str, fix: str = "check the run URI (<store>/<run_id>)") -> tuple[Store, dict[str, Any]]:
    """The run's store and its run.json; a one-line ConfigError naming the URI and `fix` when the
    run has no run.json."""
    store = open_store(run) if isinstance(run, str) else run
    if not store.exists(RUN_JSON):
        raise ConfigError(f"{store.uri}/{RUN_JSON} does not exist: {fix}")
    return store, check(RunMeta, store.read_json(RUN_JSON), f"{store.uri}/{RUN_JSON}")


def stored_config(run: Store, meta: dict[str, Any]) -> RunConfig:
    """The config in a run.json; a bad one is damage to run.json (exit 65), not a usage error."""
    try:
        return from_dict(meta["config"])
    except ConfigError as e:
        raise DataError(f"damaged: {run.uri}/{RUN_JSON}: field 'config': {e}") from None


def run_config(run: Store | str, fix: str = "check the run URI (<store>/<run_id>)") -> tuple[Store, RunConfig]:
    """The run's store and the config fixed in its run.json."""
    store, meta = load_run(run, fix)
    cfg = stored_config(store, meta)
    if not config_intact(meta):  # stages must not compute on a config edited by hand
        raise DataError(f"damaged: {store.uri}/{RUN_JSON}: field 'config' does not match its fingerprint: "
                        "restore the config the run was made with")
    return store, cfg


def config_intact(meta: dict[str, Any]) -> bool:
    """Whether run.json's config is the one its fingerprint was made from. Hashed as stored, the
    way RunConfig.fingerprint hashes it at init, so fields a later seal adds with defaults do not
    count as edits."""
    data = {k: v for k, v in meta["config"].items() if k not in ("rounds", "store")}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16] == meta["fingerprint"]


def init_run(run: Store, cfg: RunConfig) -> dict[str, Any]:
    """Write run.json once; an existing run must have the same config (rounds and store aside).
    Temp files a killed writer left behind are swept first."""
    run.sweep_tmp()
    if run.exists(RUN_JSON):
        _, meta = load_run(run)
        old = stored_config(run, meta)
        if old.fingerprint() != cfg.fingerprint():
            raise ConfigError(
                f"run {run.uri} exists with a different config: keep its config or pick a new run_id"
            )
        if meta["config"]["rounds"] == cfg.rounds:
            return meta
        meta["config"]["rounds"] = cfg.rounds  # extending or shortening a run is allowed
    else:
        meta = {
            "format": FORMAT,
            "config": cfg.model_dump(mode="json"),
            "fingerprint": cfg.fingerprint(),
            "version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "status": "running",
        }
    run.write_json(RUN_JSON, meta)
    return meta


def set_status(run: Store, status: str, message: str = "") -> None:
    _, meta = load_run(run)
    meta["status"], meta["message"] = status, message
    meta["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    run.write_json(RUN_JSON, meta)


def record_failure(run: Store, error: SealError) -> None:
    """Best effort: mark the run failed in run.json. When that write fails too (the store is down,
    the disk read-only) the original error is what the caller reports; this one is only logged."""
    try:
        set_status(run, "failed", str(error))
    except SealError as e:
        log.warning("could not record the failure in %s/%s: %s", run.uri, RUN_JSON, e)


# --- rounds


def load_plan(run: Store, round_: int) -> dict[str, Any]:
    """round r's plan.json, validated (exists: checked by the caller)."""
    key = plan_key(round_)
    where = f"{run.uri}/{key}"
    plan = check(Plan, run.read_json(key), where)
    if plan["round"] != round_:
        raise DataError(f"damaged: {where}: field 'round' is {plan['round']}, expected {round_}")
    return plan


def read_plan(run: Store, round_: int) -> dict[str, Any]:
    key = plan_key(round_)
    if not run.exists(key):
        raise ConfigError(f"{run.uri}/{key} does not exist: run `seal plan` for round {round_} first")
    try:
        return load_plan(run, round_)
    except DataError as e:
        raise damaged(run, round_, str(e), "plan") from None


def _rows(run: Store, key: str, schema: Any, expected: list[tuple[int, int]] | None) -> list[dict[str, Any]]:
    """A JSONL object's rows, each validated; with `expected`, exactly those (context, k) pairs."""
    where = f"{run.uri}/{key}"
    rows, problem = run.jsonl_rows(key)
    for n, row in enumerate(rows, 1):
        check(schema, row, f"{where} row {n}")
    if expected is not None:
        have = [(r["context"], r["k"]) for r in rows]
        have_set = set(have)
        missing = [p for p in expected if p not in have_set]
        if missing:
            c, k = missing[0]
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            end = f" ({problem.removeprefix('damaged: ').removeprefix(where).lstrip(': ')})" if problem else ""
            raise DataError(f"damaged: {where}: no row for candidate (context {c}, k {k}){more}{end}")
        if len(have) != len(expected) or have_set != set(expected):
            raise DataError(f"damaged: {where}: holds {len(have)} rows, the plan has {len(expected)} "
                            "candidates (duplicates or strays)")
    if problem and not (problem.endswith(NO_END) and _legacy(run)):
        raise DataError(problem)
    return rows


def _legacy(run: Store) -> bool:
    """Whether the run predates end records (no "format" in its run.json): read only when an
    object has no end record."""
    return run.exists(RUN_JSON) and "format" not in load_run(run)[1]


def edit_pairs(plan: dict[str, Any], shard: int) -> list[tuple[int, int]]:
    """The (context, k) pairs sample shard `shard` writes: its contexts times every k the plan uses."""
    contexts = set(plan["sample_shards"][shard])
    return [(c, k) for a in plan["adapt_shards"] for c, k in a if c in contexts]


def score_pairs(plan: dict[str, Any], shard: int) -> list[tuple[int, int]]:
    return [(c, k) for c, k in plan["adapt_shards"][shard]]


def read_edit_shard(run: Store, plan: dict[str, Any], round_: int, shard: int) -> list[dict[str, Any]]:
    """Sample shard `shard`'s rows, validated against the plan (DataError naming the object)."""
    return _rows(run, shard_key(round_, "edits", shard), EditRow, edit_pairs(plan, shard))


def read_score_shard(run: Store, plan: dict[str, Any], round_: int, shard: int) -> list[dict[str, Any]]:
    """Adapt shard `shard`'s rows, validated against the plan (DataError naming the object)."""
    return _rows(run, shard_key(round_, "scores", shard), ScoreRow, score_pairs(plan, shard))


def shard_problem(run: Store, plan: dict[str, Any], round_: int, kind: str, shard: int) -> str | None:
    """What is wrong with an existing shard output, or None when it is sound."""
    read = read_edit_shard if kind == "edits" else read_score_shard
    try:
        read(run, plan, round_, shard)
    except DataError as e:
        return str(e)
    return None


def should_write(run: Store, plan: dict[str, Any], round_: int, kind: str, shard: int, redo: bool) -> bool:
    """Whether a sample/adapt stage must (re)write its shard: missing, asked to (--redo), or
    damaged in an unfinished round. A damaged shard of a finished round is a DataError with the
    command that redoes it: later rounds were built on it, so it is not silently replaced."""
    key, stage = shard_key(round_, kind, shard), "sample" if kind == "edits" else "adapt"
    if redo or not run.exists(key):
        return True
    problem = shard_problem(run, plan, round_, kind, shard)
    if problem is None:
        return False
    if round_finished(run, round_):
        raise damaged(run, round_, problem, stage, shard)
    log.warning("%s: redoing it", problem)
    return True


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
            if round_finished(run, round_):
                raise damaged(run, round_, f"damaged: {run.uri}/{key} is missing from finished round {round_}",
                              "sample", s)
            raise ConfigError(f"{run.uri}/{key} is missing: finish round {round_}'s sampling first")
        try:
            rows = read_edit_shard(run, plan, round_, s)
        except DataError as e:
            raise damaged(run, round_, str(e), "sample", s) from None
        for row in rows:
            edits[(row["context"], row["k"])] = row
    return edits


def read_scores(run: Store, plan: dict[str, Any], round_: int) -> list[dict[str, Any]]:
    """Every candidate's score row of a round, from all its adapt shards."""
    scores = []
    for a in range(len(plan["adapt_shards"])):
        key = shard_key(round_, "scores", a)
        if not run.exists(key):
            if round_finished(run, round_):
                raise damaged(run, round_, f"damaged: {run.uri}/{key} is missing from finished round {round_}",
                              "adapt", a)
            raise ConfigError(f"{run.uri}/{key} is missing: finish round {round_}'s adaptation first")
        try:
            scores.extend(read_score_shard(run, plan, round_, a))
        except DataError as e:
            raise damaged(run, round_, str(e), "adapt", a) from None
    return scores


def read_kept(run: Store, round_: int) -> list[dict[str, Any]]:
    try:
        return _rows(run, kept_key(round_), KeptRow, None)
    except DataError as e:
        raise damaged(run, round_, str(e), "improve") from None


def read_summary(run: Store, round_: int) -> dict[str, Any]:
    key = summary_key(round_)
    try:
        return check(Summary, run.read_json(key), f"{run.uri}/{key}")
    except DataError as e:
        raise damaged(run, round_, str(e), "improve") from None


def summaries(run: Store) -> list[dict[str, Any]]:
    """The summary.json of every finished round, in order."""
    out = []
    r = 0
    while run.exists(summary_key(r)):
        out.append(read_summary(run, r))
        r += 1
    return out


def read_policy_meta(run: Store, round_: int) -> dict[str, Any]:
    key = policy_meta_key(round_)
    try:
        return check(PolicyMeta, run.read_json(key), f"{run.uri}/{key}")
    except DataError as e:
        raise damaged(run, round_, str(e), "improve") from None


def policy_has_adapter(run: Store, round_: int) -> bool:
    """Whether round r's M-step left an adapter (nothing kept and nothing to carry: the base)."""
    return bool(read_policy_meta(run, round_)["adapter"])


def fetch_policy(run: Store, round_: int, dest: str | Path) -> Path:
    """Download round r's policy adapter, every file checked against its marker's SHA-256."""
    try:
        return run.get_dir(policy_key(round_), dest)
    except DataError as e:
        raise damaged(run, round_, str(e), "improve") from None


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
