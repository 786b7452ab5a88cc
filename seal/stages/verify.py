"""`seal verify RUN`: check every object of a run against what proves it sound, and name each
damaged one with the command that redoes it.

What is checked: run.json, each round's plan.json (schema), every edit and score shard (its end
record's row count and SHA-256, each row's schema, and exactly the plan's candidates), kept.jsonl,
policy.json and summary.json (schemas; the summary's candidate count against the scores), and
every adapter folder (each file's size and SHA-256 against its `.complete` marker). In a
finished round (summary.json exists) a missing object is damage too; in an unfinished one it is
work still to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from seal.errors import DataError
from seal.stages.runs import (
    adapters_key,
    config_intact,
    kept_key,
    load_plan,
    load_run,
    plan_key,
    policy_key,
    read_edit_shard,
    read_kept,
    read_policy_meta,
    read_score_shard,
    read_summary,
    redo_command,
    round_finished,
    shard_key,
    stored_config,
    summary_key,
)
from seal.store import Store, sha256


@dataclass
class Report:
    """What `seal verify` found: objects checked, and one line per damaged object."""

    run: str
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    def text(self) -> str:
        head = f"run {self.run}: {self.checked} objects checked, {len(self.problems)} damaged"
        return "\n".join([head, *self.problems, *self.pending])


def _redo(run: Store, r: int, stage: str, shard: int | None, finished: bool) -> str:
    cmd = redo_command(run, r, stage, shard)
    return cmd if finished else cmd.removesuffix(" --redo")  # an unfinished round redoes it by itself


def verify_run(run_uri: str) -> Report:
    run, meta = load_run(run_uri)
    cfg = stored_config(run, meta)
    report = Report(run.uri, checked=1)
    if not config_intact(meta):
        report.problems.append(f"{run.uri}/run.json: field 'config' does not match its fingerprint (edited "
                               "by hand?): restore the config the run was made with")
    r = 0
    while r < cfg.rounds or run.exists(plan_key(r)):
        _verify_round(run, cfg, r, report)
        r += 1
    return report


def _problem(report: Report, message: str, cmd: str) -> None:
    report.problems.append(f"{message.removeprefix('damaged: ')}: redo it with `{cmd}`")


def _verify_round(run: Store, cfg: Any, r: int, report: Report) -> None:
    finished = round_finished(run, r)
    if not run.exists(plan_key(r)):
        if finished:
            _problem(report, f"{run.uri}/{plan_key(r)} is missing from finished round {r}",
                     _redo(run, r, "plan", None, True))
        return
    report.checked += 1
    try:
        plan = load_plan(run, r)
    except DataError as e:
        _problem(report, str(e), _redo(run, r, "plan", None, finished))
        return
    scores: list[dict[str, Any]] = []
    scores_whole = True
    for kind, stage, read in (("edits", "sample", read_edit_shard), ("scores", "adapt", read_score_shard)):
        shards = plan["sample_shards"] if kind == "edits" else plan["adapt_shards"]
        for s in range(len(shards)):
            key = shard_key(r, kind, s)
            if not run.exists(key):
                scores_whole &= kind != "scores"
                if finished:
                    _problem(report, f"{run.uri}/{key} is missing from finished round {r}",
                             _redo(run, r, stage, s, True))
                else:
                    report.pending.append(f"not yet written: {run.uri}/{key}")
                continue
            report.checked += 1
            try:
                rows = read(run, plan, r, s)
            except DataError as e:
                scores_whole &= kind != "scores"
                _problem(report, str(e), _redo(run, r, stage, s, finished))
                continue
            if kind == "scores":
                scores += [{**row, "shard": s} for row in rows]
    kept = _verify_improve(run, r, finished, report, scores if scores_whole else None)
    _verify_adapters(run, cfg, r, finished, report, scores, kept)


def _verify_improve(run: Store, r: int, finished: bool, report: Report,
                    scores: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    kept = None
    for key, read in ((kept_key(r), read_kept), (f"{policy_key(r)}/policy.json", read_policy_meta),
                      (summary_key(r), read_summary)):
        if not run.exists(key):
            if finished:
                _problem(report, f"{run.uri}/{key} is missing from finished round {r}",
                         _redo(run, r, "improve", None, True))
            continue
        report.checked += 1
        try:
            obj = read(run, r)
        except DataError as e:
            _problem(report, str(e).split(": redo it with")[0], _redo(run, r, "improve", None, finished))
            continue
        if key == kept_key(r):
            kept = obj
        if key == summary_key(r):
            for name, want in _summary_figures(run, r, scores, kept).items():
                if name == "plan_sha256" and obj.get(name, want) != want:
                    _problem(report, f"{run.uri}/{plan_key(r)}: content does not match the SHA-256 its round's "
                             "summary.json recorded", _redo(run, r, "plan", None, True))
                elif obj.get(name, want) != want:
                    _problem(report, f"{run.uri}/{key}: field '{name}' is {obj[name]!r}, its inputs give "
                             f"{want!r}", _redo(run, r, "improve", None, True))
    if run.exists(policy_key(r)):
        report.checked += 1
        for problem in run.verify_dir(policy_key(r)):
            _problem(report, problem, _redo(run, r, "improve", None, finished))
    return kept


def _summary_figures(run: Store, r: int, scores: list[dict[str, Any]] | None,
                     kept: list[dict[str, Any]] | None) -> dict[str, Any]:
    """What a summary must say, recomputed from the round's objects (those read whole)."""
    want: dict[str, Any] = {"plan_sha256": sha256(run.read_bytes(plan_key(r)))}
    if scores:
        rewards = [row["reward"] for row in scores]
        want.update(candidates=len(scores), mean_reward=sum(rewards) / len(rewards), max_reward=max(rewards))
    if kept is not None:
        want["kept"] = len(kept)
    return want


def _verify_adapters(run: Store, cfg: Any, r: int, finished: bool, report: Report,
                     scores: list[dict[str, Any]], kept: list[dict[str, Any]] | None) -> None:
    """Every fitted adapter the scores say was trained and inner.keep_adapters says was kept."""
    if cfg.inner.keep_adapters == "none":
        return
    winners = {(row["context"], row["k"]) for row in kept or []}
    adapters = run.child(adapters_key(r))
    for row in scores:
        if row.get("skip"):
            continue  # the task refused to train this edit: no adapter
        pair = (row["context"], row["k"])
        expected = cfg.inner.keep_adapters == "all" or (finished and pair in winners)
        for f in range(len(row["rewards"])):
            key = f"{pair[0]}/{pair[1]}/{f}"
            if not adapters.exists(key):
                if expected and finished:
                    _problem(report, f"{adapters.uri}/{key} is missing from finished round {r}",
                             _redo(run, r, "adapt", row["shard"], True))
                continue
            report.checked += 1
            for problem in adapters.verify_dir(key):
                _problem(report, problem, _redo(run, r, "adapt", row["shard"], finished))
