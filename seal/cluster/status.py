"""`seal status RUN`: a run's progress, read from the store alone (no cluster access needed).

A stage is done exactly when its output object exists (docs/architecture.md), so counting
objects is the whole story: plan.json, edits/<shard>.jsonl, scores/<shard>.jsonl, summary.json
per round (seal.stages.runs).
"""

from __future__ import annotations

from typing import Any

from seal.errors import DataError
from seal.report import text_table
from seal.stages.runs import (
    done_shards,
    load_plan,
    load_run,
    plan_key,
    read_score_shard,
    read_summary,
    redo_command,
    round_finished,
)
from seal.store import Store


def round_progress(run: Store, r: int) -> dict[str, Any]:
    """Stages done, shards done/total and the rewards scored so far, for round r."""
    out: dict[str, Any] = {"round": r, "plan": run.exists(plan_key(r))}
    if not out["plan"]:
        return out
    plan = load_plan(run, r)
    done = {kind: done_shards(run, r, kind) for kind in ("edits", "scores")}
    out["sample"] = (len(done["edits"] & set(range(len(plan["sample_shards"])))), len(plan["sample_shards"]))
    out["adapt"] = (len(done["scores"] & set(range(len(plan["adapt_shards"])))), len(plan["adapt_shards"]))
    out["candidates"] = sum(len(s) for s in plan["adapt_shards"])
    out["summary"] = read_summary(run, r) if round_finished(run, r) else None
    out["damaged"] = []
    if out["summary"] is None:
        rewards = []
        for a in sorted(done["scores"]):
            if a >= len(plan["adapt_shards"]):
                continue  # not one of this plan's shards
            try:
                rewards += [row["reward"] for row in read_score_shard(run, plan, r, a)]
            except DataError as e:  # a live run redoes it: report it, keep counting the rest
                cmd = redo_command(run, r, "adapt", a).removesuffix(" --redo")
                out["damaged"].append(f"{e} (the next `{cmd}` redoes it)")
        out["scored"] = len(rewards)
        out["mean_reward"] = sum(rewards) / len(rewards) if rewards else None
        out["max_reward"] = max(rewards) if rewards else None
    else:
        out["scored"] = out["summary"]["candidates"]
        out["mean_reward"] = out["summary"]["mean_reward"]
        out["max_reward"] = out["summary"]["max_reward"]
    return out


def run_status(run_uri: str) -> str:
    run, meta = load_run(run_uri)
    rounds = meta["config"].get("rounds")
    if not isinstance(rounds, int) or isinstance(rounds, bool) or not 1 <= rounds <= 10_000:
        raise DataError(f"damaged: {run.uri}/run.json: field 'config.rounds' must be a round count")
    head = f"run {run_uri}: {meta.get('status', '?')}"
    if meta.get("message"):
        head += f" ({meta['message']})"
    head += f", {rounds} rounds, updated {meta.get('updated', meta.get('created', '?'))}"
    cells = [("round", "plan", "sample", "adapt", "improve", "scored", "mean reward", "max reward", "kept")]
    notes = []
    for r in range(rounds):
        p = round_progress(run, r)
        notes += p.get("damaged", [])
        if not p["plan"]:
            cells.append((str(r), "-", "-", "-", "-", "-", "-", "-", "-"))
            continue
        s = p["summary"]
        fmt = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
        cells.append((
            str(r), "done", f"{p['sample'][0]}/{p['sample'][1]}", f"{p['adapt'][0]}/{p['adapt'][1]}",
            "done" if s else "-", f"{p['scored']}/{p['candidates']}", fmt(p["mean_reward"]),
            fmt(p["max_reward"]), str(s["kept"]) if s else "-",
        ))
    return "\n".join([head, text_table(cells), *notes])
