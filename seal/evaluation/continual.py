"""`seal eval-knowledge --setting continual`: continual self-editing and its retention matrix.

Passages arrive one after another. After passage t arrives, the model is updated with that
passage's self-edit on top of every earlier update, then asked the questions of every passage
seen so far (0..t, without the passages). The result is the paper's n x n retention matrix:
row t (after update t), column j (passage j of the sequence); entries with j > t stay empty (None):
no passage is scored before it is seen.

How updates stack: **a merged LoRA per step.** Step t trains a fresh LoRA adapter (the config's
inner-loop settings, seal.inner.train: the sequential inner loop's trainer) over the model with
updates 0..t-1 merged in, then merges it too. Each step's adapter is small and is what the store
keeps; the model after step t is rebuilt on resume by merging the saved adapters 0..t in order
(the same arithmetic as the run that was killed).

Self-edits come from an edit source, one per row: `--policy base` (the base model) or `RUN@R` (a
trained SEAL policy), or a paper-edits file; each passage's first self-edit is used. A policy's
edits are sampled once from the source model as it is (not from the model being updated) and kept
at edits/<row>.json, so every sequence and every rerun sees the same edit for a passage.

Sequences: `--sequences S` (default 3) seeded draws of `--steps n` (default 8, the paper's) passages
from the pool (--passages, --limit); every edit source runs the same sequences. A unit (source x
sequence) is one shard: the unit of restart and, on a cluster, of fan-out.

Resumable: step t of a unit is done when continual/<unit>/step-<t>.jsonl (its scores) exists,
written after the step's adapter; a rerun continues at the first step without scores. The join
writes matrix.json (per source: each sequence's matrix, the mean and standard deviation over
sequences per cell, and per step the mean accuracy on the earlier passages j < t) and matrix.png.
"""

from __future__ import annotations

import logging
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from seal.config import RunConfig
from seal.errors import ConfigError
from seal.evaluation.knowledge import Evaluator, read_spec, result_line, row_edits, store_figure, wanted_shards
from seal.inner import train
from seal.inner.score import score_records
from seal.report import save_figure, text_table
from seal.seeds import derive_seed
from seal.stages.runs import EVAL_HEATMAP, EVAL_MATRIX, continual_scores_key, continual_step_key
from seal.store import Store, open_store
from seal.tasks import knowledge

log = logging.getLogger(__name__)


def sequence_units(steps: int, sequences: int, seed: int):
    """The plan's shards: for each row and sequence s, `steps` distinct passages drawn (seeded by
    s alone, so every row gets the same sequences) from the pool."""
    def units(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if steps > len(records):
            raise ConfigError(f"--steps {steps}: the pool has only {len(records)} passages (raise --limit or "
                              "pass more --passages)")
        orders = [random.Random(derive_seed(seed, "continual-sequence", s)).sample(range(len(records)), steps)
                  for s in range(sequences)]
        return [{"row": i, "sequence": s, "passages": orders[s]} for i in range(len(rows)) for s in range(sequences)]
    return units


def step_done(out: Store, unit: int, step: int) -> bool:
    return out.exists(continual_scores_key(unit, step))


def run_unit(out: Store, ev: Evaluator, spec: dict[str, Any], records: list[dict[str, Any]], unit: int) -> int:
    """Run a unit's steps not done yet; returns how many it ran."""
    cfg: RunConfig = ev.cfg
    seq = spec["shards"][unit]["passages"]
    row_i = spec["shards"][unit]["row"]
    row = spec["rows"][row_i]
    first = next((t for t in range(len(seq)) if not step_done(out, unit, t)), None)
    if first is None:
        return 0
    needed = sorted({p for sh in spec["shards"] for p in sh["passages"]})
    edits = row_edits(out, ev, spec, records, row_i, needed)
    tok = ev.base.tokenizer
    model = ev.base.load_base()  # this unit's own copy: updates are merged into it
    from peft import PeftModel

    for t in range(first):  # rebuild the model after steps 0..first-1 from their saved adapters
        with tempfile.TemporaryDirectory(prefix="seal-continual-") as tmp:
            out.get_dir(continual_step_key(unit, t), tmp)
            model = PeftModel.from_pretrained(model, tmp).merge_and_unload()
    for t in range(first, len(seq)):
        t0 = time.perf_counter()
        rec, text = records[seq[t]], (edits[seq[t]] or [""])[0]
        if text == "":
            examples = [train.Example(text=x) for x in knowledge.training_texts(rec, "", True)]
        else:
            examples = knowledge.inner_job(rec, text, cfg.task, cfg.inner).examples
        seed = derive_seed(cfg.seed, "continual-step", spec["shards"][unit]["sequence"], t)
        peft_model, stats = train.lora_update(model, tok, list(examples), cfg.inner, seed, cfg.model.max_length)
        with tempfile.TemporaryDirectory(prefix="seal-continual-") as tmp:
            peft_model.save_pretrained(tmp)
            out.put_dir(continual_step_key(unit, t), tmp)
        model = peft_model.merge_and_unload()
        model.eval()
        seen = [records[p] for p in seq[: t + 1]]
        graded = score_records(model, tok, knowledge, seen, cfg)
        lines = []
        for j, (p, r, g) in enumerate(zip(seq, seen, graded, strict=False)):
            line = result_line(row["name"], p, 0, 0, text if j == t else None, r, g, stats if j == t else {})
            line.update(step=t, position=j, step_s=round(time.perf_counter() - t0, 2))
            lines.append(line)
        out.write_jsonl(continual_scores_key(unit, t), lines)  # last: step t is done
        log.info("continual unit %d step %d/%d done in %.1f s", unit, t + 1, len(seq), time.perf_counter() - t0)
    return len(seq) - first


# --- the matrix


def grader_of(cfg: RunConfig) -> str:
    return cfg.task.grader


def unit_matrix(out: Store, unit: int, n: int, grader: str) -> list[list[float | None]]:
    """matrix[t][j]: the accuracy on passage j's questions after update t; None for j > t."""
    m: list[list[float | None]] = [[None] * n for _ in range(n)]
    for t in range(n):
        for line in out.read_jsonl(continual_scores_key(unit, t)):
            qs = line["questions"]
            m[t][line["position"]] = sum(q["grades"][grader] for q in qs) / len(qs) if qs else 0.0
    return m


def earlier_mean(m: list[list[float | None]], t: int) -> float | None:
    """Mean accuracy on the passages before t (j < t) after update t; None at t = 0."""
    vals = [v for v in m[t][:t] if v is not None]
    return statistics.fmean(vals) if vals else None


def _mean_sd(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def join(out: Store) -> dict[str, Any]:
    spec, cfg, _ = read_spec(out)
    n = len(spec["shards"][0]["passages"])
    missing = [(u, t) for u in range(len(spec["shards"])) for t in range(n) if not step_done(out, u, t)]
    if missing:
        raise ConfigError(f"{out.uri}: {len(missing)} continual steps are not done (first: unit {missing[0][0]} "
                          f"step {missing[0][1]}): run `seal eval-knowledge --out {out.uri}` to finish them")
    grader = grader_of(cfg)
    rows = []
    for i, row in enumerate(spec["rows"]):
        units = [u for u, sh in enumerate(spec["shards"]) if sh["row"] == i]
        mats = [unit_matrix(out, u, n, grader) for u in units]
        cells = [[_mean_sd([m[t][j] for m in mats]) for j in range(n)] for t in range(n)]
        earlier = [_mean_sd([earlier_mean(m, t) for m in mats]) for t in range(n)]
        rows.append({
            "name": row["name"], "sequences": [spec["shards"][u]["passages"] for u in units], "matrices": mats,
            "mean": [[c[0] for c in r] for r in cells], "sd": [[c[1] for c in r] for r in cells],
            "earlier_mean": [e[0] for e in earlier], "earlier_sd": [e[1] for e in earlier],
        })
    result = {"setting": "continual", "steps": n, "sequences": len(rows[0]["matrices"]) if rows else 0,
              "grader": grader, "passages_pool": spec["passages"], "rows": rows}
    out.write_json(EVAL_MATRIX, result)
    return result


def _pct(v: float | None) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def matrix_text(result: dict[str, Any]) -> str:
    """Per edit source: the mean matrix (rows: after update t; columns: passage j; blank for j > t),
    and the mean (sd) accuracy on earlier passages per step."""
    n = result["steps"]
    parts = []
    for row in result["rows"]:
        cells = [("after", *[f"p{j}" for j in range(n)], "earlier mean (sd)")]
        for t in range(n):
            e, sd = row["earlier_mean"][t], row["earlier_sd"][t]
            cells.append((f"t={t}", *[_pct(v) for v in row["mean"][t]],
                          "-" if e is None else f"{100 * e:.1f} ({100 * sd:.1f})"))
        parts.append(f"{row['name']}: {result['grader']} %, mean over {result['sequences']} sequences\n"
                     + text_table(cells, left=1))
    return "\n\n".join(parts)


def heatmap(result: dict[str, Any], path: str | Path) -> Path:
    """One heat map per edit source (mean over sequences; j > t left blank), with the mean
    accuracy on earlier passages per step beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, n = result["rows"], result["steps"]
    fig, axes = plt.subplots(2, max(1, len(rows)), figsize=(4.2 * max(1, len(rows)), 7.5), squeeze=False)
    for c, row in enumerate(rows):
        ax = axes[0][c]
        grid = np.array([[np.nan if v is None else 100 * v for v in r] for r in row["mean"]], dtype=float)
        im = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=100, cmap="viridis")
        for t in range(n):
            for j in range(t + 1):
                ax.text(j, t, f"{grid[t, j]:.0f}", ha="center", va="center", fontsize=6, color="w")
        ax.set_xlabel("passage j")
        ax.set_ylabel("after update t")
        ax.set_title(row["name"], fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax2 = axes[1][c]
        ts = [t for t in range(n) if row["earlier_mean"][t] is not None]
        ax2.errorbar(ts, [100 * row["earlier_mean"][t] for t in ts], yerr=[100 * row["earlier_sd"][t] for t in ts],
                     marker="o", capsize=3)
        ax2.set_xlabel("update t")
        ax2.set_ylabel(f"{result['grader']} % on passages j < t")
        ax2.set_ylim(0, 100)
        ax2.grid(alpha=0.3)
    fig.suptitle(f"continual self-editing: {result['sequences']} sequences of {n} passages", fontsize=9)
    return save_figure(fig, path)


def evaluate(out_uri: str, shards: list[int] | None = None) -> dict[str, Any] | None:
    """Run the units not done (all, or the named ones), then (all) the join and heat map."""
    out = open_store(out_uri)
    spec, cfg, records = read_spec(out)
    if spec.get("setting") != "continual":
        raise ConfigError(f"{out.uri}/eval.json is not a continual evaluation "
                          f"(setting {spec.get('setting', 'single')!r})")
    wanted = wanted_shards(spec, shards)
    ev = Evaluator(cfg)
    for u in wanted:
        run_unit(out, ev, spec, records, u)
    ev.release()
    if shards is not None:
        return None
    return write_matrix(out)


def write_matrix(out: Store) -> dict[str, Any]:
    """join, then the heat map beside matrix.json in the store."""
    result = join(out)
    store_figure(out, EVAL_HEATMAP, heatmap, result)
    return result
