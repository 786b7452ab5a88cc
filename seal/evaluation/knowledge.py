"""`seal eval-knowledge`: the paper's knowledge-incorporation table (single-passage setting).

Rows, each scored on the same passages' questions asked *without* the passage:

- `base model`: no fit at all;
- `passage only`: F LoRA fits of the base model on the passage alone (the paper's "no self-edit");
- one row per self-edit file in the paper-edits form (`{"title", "context", "completions": [...]}`,
  e.g. the paper's base_val.json, gpt4_1_val.json, iter1_val.json): passage + each of a passage's
  first K self-edits, F fits each;
- one row per policy, self-edits sampled now: `base` (the base model) or `RUN@R` (the policy after
  round R of a `seal run`: the base with its M-step adapter);
- optionally one row of self-edits from an OpenAI-compatible teacher endpoint (chat completions).

Every fit starts from the base model (policy-free), through `seal.inner.fit.run_fits` (the one
inner loop) with the config's inner-loop settings. A passage's score is the mean over its
self-edits and fits of the share of its questions answered correctly; a row's figure is the mean
over passages with a 95% bootstrap interval (passages resampled), for every grader.

Resumable like every stage: `plan` writes eval.json (what is evaluated, cut into shards of
(row, passages)), the passages, and the file rows' edits; each shard writes one results object
whole; a rerun skips shards whose results exist; `join` writes table.json and table.png. On a
cluster, workflows/eval-knowledge.yaml runs plan, fans the shards out over pods, then joins.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from seal.config import RunConfig, check_flag_bound, from_dict
from seal.errors import ConfigError, DataError, TransientError
from seal.inner.fit import Fit, run_fits
from seal.inner.train import Example
from seal.report import save_figure, text_table
from seal.seeds import derive_seed
from seal.stages.runs import (
    EVAL_JSON,
    EVAL_PASSAGES,
    EVAL_PLOT,
    EVAL_TABLE,
    eval_edits_key,
    eval_shard_key,
    last_policy_round,
    load_run,
)
from seal.stages.runtime import Runtime
from seal.store import Store, open_store, read_json_file
from seal.tasks import knowledge

log = logging.getLogger(__name__)

GRADERS = (*knowledge.LOCAL_GRADERS, "judge")


# --- what is evaluated


def row_specs(edit_files: list[str], policies: list[str], teacher: tuple[str, str] | None) -> list[dict[str, Any]]:
    """The table's rows, in order: base, passage only, each file, each policy, the teacher."""
    rows: list[dict[str, Any]] = [{"name": "base model", "kind": "base"},
                                  {"name": "passage only", "kind": "passage"}]
    for f in edit_files:
        rows.append({"name": f"passage + {Path(f).name}", "kind": "file", "source": f})
    for p in policies:
        if p == "base":
            rows.append({"name": "passage + base model's self-edits", "kind": "policy", "run": "", "round": -1})
            continue
        uri, sep, r = p.rpartition("@")
        if not sep or not uri or not r.isdigit():
            raise ConfigError(f"--policy {p}: expected 'base' or RUN_URI@ROUND (e.g. .seal/runs/r1@0)")
        rows.append({"name": f"passage + {uri.rstrip('/').rsplit('/', 1)[-1]} round {r} policy's self-edits",
                     "kind": "policy", "run": uri, "round": int(r)})
    if teacher is not None:
        url, model = teacher
        rows.append({"name": f"passage + {model} self-edits (teacher)", "kind": "teacher", "url": url, "model": model})
    return rows


def read_edit_file(source: str) -> dict[tuple[str, str], list[str]]:
    """A paper-edits file: passage (title, context) -> its self-edits."""
    data = read_json_file(source, "--edits-file")
    ok = isinstance(data, list) and all(
        isinstance(r, dict) and isinstance(r.get("title"), str) and isinstance(r.get("context"), str)
        and isinstance(r.get("completions"), list) and all(isinstance(c, str) for c in r["completions"])
        for r in data)
    if not ok or not data:
        raise DataError(f"--edits-file {source}: expected a JSON list of records with 'title', 'context' and "
                        "'completions' (a list of self-edit strings), as in paper-edits/base_val.json")
    out: dict[tuple[str, str], list[str]] = {}
    for r in data:
        out.setdefault(knowledge.passage_key(r), [c for c in r["completions"] if c.strip()])
    return out


def check_policy(row: dict[str, Any], cfg: RunConfig) -> None:
    """A policy row's run exists, has finished round R's M-step, and shares the base model."""
    if not row["run"]:
        return
    run, meta = load_run(row["run"], "give the URI of a `seal run` run, as RUN_URI@ROUND")
    if meta["config"]["model"]["base"] != cfg.model.base:
        raise ConfigError(f"--policy {row['run']}: the run trained on {meta['config']['model']['base']!r}, "
                          f"but the config's model.base is {cfg.model.base!r}: evaluate with the run's base model")
    if row["round"] > last_policy_round(run):
        raise ConfigError(f"--policy {row['run']}@{row['round']}: round {row['round']}'s M-step has not "
                          f"finished (last finished: {last_policy_round(run)})")


def passage_shards(rows: list[dict[str, Any]], n: int, shard_size: int) -> list[dict[str, Any]]:
    """The single-passage and CPT settings' shards: each row's passages, `shard_size` at a time."""
    return [{"row": i, "passages": list(range(start, min(start + shard_size, n)))}
            for i in range(len(rows)) for start in range(0, n, shard_size)]


def make_plan(cfg: RunConfig, passages: str, limit: int | None, rows: list[dict[str, Any]], edits: int,
              fits: int, shard_size: int, extra: dict[str, Any] | None = None,
              units: Any = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """eval.json's content, and the passage records. `extra`: the setting's own fields (setting,
    update, ...); `units(rows, records)`, when given, makes the shards instead of passage_shards."""
    records = knowledge.load_records(passages)[:limit]
    for r in records:  # what the paper-edits files carry beside a passage is not needed here
        for field in ("completions", "prompt"):
            r.pop(field, None)
    shards = units(rows, records) if units else passage_shards(rows, len(records), shard_size)
    spec = {
        "setting": "single", **(extra or {}),
        "config": cfg.model_dump(mode="json"), "passages_source": passages, "passages": len(records),
        "edits": edits, "fits": fits, "rows": rows, "shards": shards,
    }
    return spec, records


def spec_fingerprint(spec: dict[str, Any], records: list[dict[str, Any]]) -> str:
    data = {k: spec[k] for k in ("config", "edits", "fits", "rows", "shards")}
    if spec.get("setting", "single") != "single":  # single-passage plans keep their old fingerprint
        data.update({k: v for k, v in spec.items() if k not in data and k not in ("passages_source", "passages")})
    data["records"] = records
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def plan(out: Store, cfg: RunConfig, passages: str, limit: int | None, edit_files: list[str],
         policies: list[str], teacher: tuple[str, str] | None, edits: int, fits: int,
         shard_size: int, extra: dict[str, Any] | None = None, units: Any = None,
         rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write eval.json, passages.json and the file rows' edits once; a rerun with the same request
    returns the plan already written, a different request is refused (pick another --out).
    `extra`, `units` and `rows` (default: row_specs') let the other settings plan through here."""
    if cfg.task.name != "knowledge":
        raise ConfigError(f"eval-knowledge needs task.name: knowledge (the config has {cfg.task.name!r})")
    if edits < 1 or fits < 1 or shard_size < 1 or (limit is not None and limit < 1):
        raise ConfigError("--edits, --fits, --shard-size and --limit must be at least 1")
    check_flag_bound("--edits", edits)
    check_flag_bound("--fits", fits)
    rows = row_specs(edit_files, policies, teacher) if rows is None else rows
    spec, records = make_plan(cfg, passages, limit, rows, edits, fits, shard_size, extra, units)
    spec["fingerprint"] = spec_fingerprint(spec, records)
    if out.exists(EVAL_JSON):
        old = out.read_json(EVAL_JSON)
        if old.get("fingerprint") != spec["fingerprint"]:
            raise ConfigError(f"{out.uri}/{EVAL_JSON} holds a different evaluation (config, passages, rows, "
                              "edits or fits differ): rerun it as it was, or pick another --out")
        return old
    for row in rows:
        if row["kind"] == "policy":
            check_policy(row, cfg)
    file_edits = {}
    for i, row in enumerate(rows):
        if row["kind"] != "file":
            continue
        by_passage = read_edit_file(row["source"])
        missing = [r["title"] for r in records if knowledge.passage_key(r) not in by_passage]
        if missing:
            raise DataError(f"--edits-file {row['source']}: no self-edits for {len(missing)} evaluation passages "
                            f"(first: {missing[0]!r}): pass --passages with the passages the file covers")
        file_edits[i] = [by_passage[knowledge.passage_key(r)][:edits] for r in records]
    out.write_json(EVAL_PASSAGES, records)
    for i, texts in file_edits.items():
        out.write_json(eval_edits_key(i), texts)
    out.write_json(EVAL_JSON, spec)  # last: the plan is done when eval.json exists
    return spec


def read_spec(out: Store) -> tuple[dict[str, Any], RunConfig, list[dict[str, Any]]]:
    if not out.exists(EVAL_JSON):
        raise ConfigError(f"{out.uri}/{EVAL_JSON} does not exist: run `seal eval-knowledge CONFIG --out "
                          f"{out.uri} --plan-only` (or without --shard) first")
    spec = out.read_json(EVAL_JSON)
    return spec, from_dict(spec["config"]), out.read_json(EVAL_PASSAGES)


def done_shards(out: Store) -> set[int]:
    return {int(k.rsplit("/", 1)[-1].split(".")[0]) for k in out.list("results") if k.endswith(".jsonl")}


# --- one shard: a row's self-edits for some passages, F fits each from the base model


class Evaluator:
    """What a process keeps loaded across shards: the base model (fits), and samplers by policy."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.base = Runtime(cfg, None)

    def sample(self, row: dict[str, Any], recs: list[dict[str, Any]], ids: list[int], k: int) -> list[list[str]]:
        """k self-edits per passage from a policy row's model, seeded by (seed, row, passage, k)."""
        cfg = self.cfg
        prompts = [knowledge.context_prompt(r, cfg.task) for r in recs for _ in range(k)]
        seeds = [derive_seed(cfg.seed, "eval-knowledge-sample", row["name"], p, j) for p in ids for j in range(k)]
        if row["kind"] == "teacher":
            texts = teacher_edits(row["url"], row["model"], prompts, seeds, cfg)
        elif row["run"]:
            run, _ = load_run(row["run"])
            rt = Runtime(cfg, run)
            texts = [c.text for c in rt.policy_generator(row["round"] + 1).generate(prompts, seeds,
                                                                                    cfg.sampling.gen_params())]
            rt.release()
        else:
            gen = self.base.policy_generator(0)
            texts = [c.text for c in gen.generate(prompts, seeds, cfg.sampling.gen_params())]
        return [texts[i * k:(i + 1) * k] for i in range(len(recs))]

    def run_shard(self, out: Store, spec: dict[str, Any], records: list[dict[str, Any]], shard: int) -> bool:
        """One shard's results, written whole; False if they were already there."""
        key = eval_shard_key(shard)
        if out.exists(key):
            return False
        row_i, ids = spec["shards"][shard]["row"], spec["shards"][shard]["passages"]
        row = spec["rows"][row_i]
        recs = [records[p] for p in ids]
        t0 = time.perf_counter()
        if row["kind"] == "base":
            edits: list[list[str | None]] = [[None] for _ in ids]
        elif row["kind"] == "passage":
            edits = [[""] for _ in ids]
        elif row["kind"] == "file":
            every = out.read_json(eval_edits_key(row_i))
            edits = [every[p] for p in ids]
        else:
            edits = self.sample(row, recs, ids, spec["edits"])
        lines = self.fit_and_score(row, recs, ids, edits, spec["fits"])
        for line in lines:
            line["shard_s"] = round(time.perf_counter() - t0, 2)
        out.write_jsonl(key, lines)
        return True

    def fit_and_score(self, row: dict[str, Any], recs: list[dict[str, Any]], ids: list[int],
                      edits: list[list[str | None]], fits: int) -> list[dict[str, Any]]:
        cfg = self.cfg
        model, tok = self.base.policy_model(0), self.base.tokenizer
        todo, owners = [], []
        base_recs = []
        for rec, p, texts in zip(recs, ids, edits, strict=True):
            for k, text in enumerate(texts):
                if text is None:  # the base row: the model as it is
                    base_recs.append(rec)
                    owners.append((p, k, None, text, None))
                    continue
                if row["kind"] == "passage":
                    examples = [Example(text=t) for t in knowledge.training_texts(rec, "", True)]
                else:
                    examples = knowledge.inner_job(rec, text, cfg.task, cfg.inner).examples
                for f in range(fits):
                    # The same seeds in every row: rows differ only by what the fit trains on.
                    todo.append(Fit(rec, examples, cfg.inner, derive_seed(cfg.seed, "eval-knowledge-fit", p, k, f)))
                    owners.append((p, k, f, text, len(todo) - 1))
        outcomes, base = run_fits(model, tok, knowledge, todo, cfg, baselines=base_recs)
        lines, b = [], 0
        for p, k, f, text, i in owners:
            rec = recs[ids.index(p)]
            if i is None:
                graded, stats = base[b], {}
                b += 1
            else:
                graded, stats = outcomes[i].graded, outcomes[i].stats
            lines.append(result_line(row["name"], p, k, f, text, rec, graded, stats))
        return lines

    def release(self) -> None:
        self.base.release()


def result_line(row: str, p: int, k: int, f: int | None, text: str | None, rec: dict[str, Any],
                graded: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """One results line: a passage's answers and every grader's grades after one update (every
    setting writes these, so passage_means and the tables read them all)."""
    return {
        "row": row, "passage": p, "k": k, "fit": f, "edit": text, "score": graded["score"],
        "losses": [stats.get("first_loss"), stats.get("last_loss")] if stats else None,
        "questions": [{"question": q["question"], "gold": q["answer"], "answer": a,
                       "grades": {g: graded["graders"][g][j] for g in graded["graders"]}}
                      for j, (q, a) in enumerate(zip(rec["questions"], graded["answers"], strict=True))],
    }


def row_edits(out: Store, ev: Evaluator, spec: dict[str, Any], records: list[dict[str, Any]], row_i: int,
              ids: list[int]) -> list[list[str]]:
    """A row's self-edits for every passage (empty lists for passages not in `ids`): a file row's
    as planned; a policy's or teacher's sampled once for `ids` and kept at edits/<row>.json, so
    pods and reruns reuse the same edits (the CPT and continual settings)."""
    row, key = spec["rows"][row_i], eval_edits_key(row_i)
    if row["kind"] == "passage":
        return [[""] for _ in records]
    if not out.exists(key):
        sampled = ev.sample(row, [records[p] for p in ids], ids, spec["edits"])
        every: list[list[str]] = [[] for _ in records]
        for p, texts in zip(ids, sampled, strict=True):
            every[p] = texts
        out.write_json(key, every)
    return out.read_json(key)


def teacher_edits(url: str, model: str, prompts: list[str], seeds: list[int], cfg: RunConfig) -> list[str]:
    """One chat completion per prompt from an OpenAI-compatible endpoint (key in the judge's
    api_key_env), with the config's sampling settings; transient failures retried, then an error."""
    import requests

    headers = {"Content-Type": "application/json"}
    key = os.environ.get(cfg.task.judge.api_key_env)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    endpoint = url.rstrip("/") + "/chat/completions"
    out = []
    for prompt, seed in zip(prompts, seeds, strict=True):
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], "seed": seed,
                "temperature": cfg.sampling.temperature, "top_p": cfg.sampling.top_p,
                "max_tokens": cfg.sampling.max_new_tokens}
        last = ""
        for attempt in range(cfg.task.judge.retries + 1):
            if attempt:
                time.sleep(min(2 ** (attempt - 1) * 0.5, 8.0))
            try:
                resp = requests.post(endpoint, json=body, headers=headers, timeout=cfg.task.judge.timeout_s * 10)
            except requests.RequestException as e:
                last = type(e).__name__
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                continue
            if resp.status_code >= 400:
                raise ConfigError(f"--teacher {endpoint} answered HTTP {resp.status_code}: check the URL, "
                                  f"the model name and ${cfg.task.judge.api_key_env}")
            try:
                out.append(resp.json()["choices"][0]["message"]["content"])
                break
            except (ValueError, KeyError, IndexError, TypeError):
                last = "a reply that is not a chat completion"
        else:
            raise TransientError(f"--teacher {endpoint} failed after {cfg.task.judge.retries + 1} tries ({last})")
    return out


# --- the table


def bootstrap_ci(values: list[float], resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: `values` (one per passage) resampled with
    replacement `resamples` times."""
    if not values:
        return (float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * resamples)]
    hi = means[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return (lo, hi)


def passage_means(lines: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """grader -> passage -> mean over the passage's (edit, fit) results of its question accuracy."""
    per: dict[str, dict[int, list[float]]] = {}
    for line in lines:
        qs = line["questions"]
        if not qs:
            continue
        for g in qs[0]["grades"]:
            acc = sum(q["grades"][g] for q in qs) / len(qs)
            per.setdefault(g, {}).setdefault(line["passage"], []).append(acc)
    return {g: {p: statistics.fmean(v) for p, v in by_p.items()} for g, by_p in per.items()}


def join(out: Store) -> dict[str, Any]:
    """table.json from every shard's results (all must be done): per row and grader, the mean over
    passages and its 95% bootstrap interval."""
    spec, cfg, records = read_spec(out)
    missing = [s for s in range(len(spec["shards"])) if not out.exists(eval_shard_key(s))]
    if missing:
        raise ConfigError(f"{out.uri}: {len(missing)} of {len(spec['shards'])} shards are not done (first: "
                          f"{missing[0]}): run `seal eval-knowledge --out {out.uri} --shard A-B` for them first")
    lines_by_row: dict[int, list[dict[str, Any]]] = {}
    for s, sh in enumerate(spec["shards"]):
        lines_by_row.setdefault(sh["row"], []).extend(out.read_jsonl(eval_shard_key(s)))
    rows = []
    for i, row in enumerate(spec["rows"]):
        lines = lines_by_row.get(i, [])
        means = passage_means(lines)
        graders = {}
        for g, by_p in means.items():
            vals = [by_p[p] for p in sorted(by_p)]
            lo, hi = bootstrap_ci(vals, seed=derive_seed(cfg.seed, "bootstrap", i, g))
            graders[g] = {"mean": statistics.fmean(vals), "ci95": [lo, hi], "per_passage": vals}
        fits = sum(1 for line in lines if line["fit"] is not None)
        rows.append({"name": row["name"], "kind": row["kind"], "passages": len({x["passage"] for x in lines}),
                     "fits": fits, "graders": graders})
    table = {"setting": spec.get("setting", "single"), "update": spec.get("update"),
             "passages": spec["passages"], "questions": sum(len(r["questions"]) for r in records),
             "edits": spec["edits"], "fits": spec["fits"], "grader": cfg.task.grader, "rows": rows}
    out.write_json(EVAL_TABLE, table)
    return table


def table_text(table: dict[str, Any]) -> str:
    graders = [g for g in GRADERS if any(g in r["graders"] for r in table["rows"])]
    cells = [("row", "passages", "fits", *[f"{g} % [95% CI]" for g in graders])]
    for r in table["rows"]:
        cells.append((r["name"], str(r["passages"]), str(r["fits"]),
                      *[_cell(r["graders"].get(g)) for g in graders]))
    if table.get("setting") == "cpt":
        how = (f"one {table['update']} update per row on all {table['passages']} passages together (up to "
               f"{table['edits']} self-edits each), from the base model")
    else:
        how = f"up to {table['edits']} self-edits per passage x {table['fits']} fits from the base model"
    note = (f"\n{table['passages']} passages, {table['questions']} questions; {how}; reward grader: "
            f"{table['grader']}; CI: bootstrap over passages.")
    return text_table(cells, left=1) + note


def _cell(g: dict[str, Any] | None) -> str:
    if g is None:
        return "-"
    lo, hi = g["ci95"]
    return f"{100 * g['mean']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def plot(table: dict[str, Any], path: str | Path) -> Path:
    """One bar per row and grader, the 95% interval as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    graders = [g for g in GRADERS if any(g in r["graders"] for r in table["rows"])]
    rows = table["rows"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows)), 4))
    width = 0.8 / max(1, len(graders))
    for j, g in enumerate(graders):
        xs = [i + (j - (len(graders) - 1) / 2) * width for i in range(len(rows))]
        stats = [r["graders"].get(g, {"mean": 0.0, "ci95": [0.0, 0.0]}) for r in rows]
        ms = [100 * st["mean"] for st in stats]
        err = [[m - 100 * st["ci95"][0] for m, st in zip(ms, stats, strict=True)],
               [100 * st["ci95"][1] - m for m, st in zip(ms, stats, strict=True)]]
        ax.bar(xs, ms, width, yerr=err, capsize=3, label=g)
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=25, ha="right", fontsize=7)
    ax.set_ylabel("question accuracy, % (95% CI over passages)")
    ax.set_title("knowledge incorporation, " + ("continued pretraining" if table.get("setting") == "cpt"
                                                 else "single passage"))
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def evaluate(out_uri: str, cfg: RunConfig | None = None, shards: list[int] | None = None,
             **plan_args: Any) -> dict[str, Any] | None:
    """Plan (when `cfg` is given), run the given shards (None: every one not done yet, then the
    join); returns the table, or None when only some shards were asked for (a pod's share: the
    join is its own step, so parallel pods never write the table)."""
    out = open_store(out_uri)
    if cfg is not None:
        plan(out, cfg, **plan_args)
    spec, ecfg, records = read_spec(out)
    wanted = wanted_shards(spec, shards)
    todo = [s for s in wanted if s not in done_shards(out)]
    if todo:
        ev = Evaluator(ecfg)
        for s in todo:
            t0 = time.perf_counter()
            ev.run_shard(out, spec, records, s)
            log.info("eval-knowledge shard %d/%d (%s) done in %.1f s", s + 1, len(spec["shards"]),
                     spec["rows"][spec["shards"][s]["row"]]["name"], time.perf_counter() - t0)
        ev.release()
    if shards is not None:
        return None
    return write_table(out)


def wanted_shards(spec: dict[str, Any], shards: list[int] | None) -> list[int]:
    """The shards asked for (None: all), each checked against the plan."""
    for s in shards or []:
        if not 0 <= s < len(spec["shards"]):
            raise ConfigError(f"--shard {s} is out of range: this evaluation has {len(spec['shards'])} shards")
    return list(range(len(spec["shards"]))) if shards is None else shards


def store_figure(out: Store, key: str, draw: Any, result: dict[str, Any]) -> None:
    """Draw `result` to a temporary PNG with `draw(result, path)` and put it in the store at `key`."""
    with tempfile.TemporaryDirectory(prefix="seal-eval-") as tmp:
        png = draw(result, Path(tmp) / Path(key).name)
        out.write_bytes(key, png.read_bytes())


def write_table(out: Store) -> dict[str, Any]:
    """join, then the plot beside table.json in the store."""
    table = join(out)
    store_figure(out, EVAL_PLOT, plot, table)
    return table
