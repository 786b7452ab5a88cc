"""The paper's table in miniature, on the world's held-out passages, after a `seal run` in the world.

For each evaluation seed, every held-out passage is incorporated by a LoRA fit (the run's own
inner-loop settings), then its questions are asked without the passage and graded:

- `base model`: no fit at all;
- `passage only`: the base model fitted on the passage alone;
- `warm-start policy`: the base model fitted on the passage plus one self-edit that it wrote;
- `after round r`: the policy after round r's M-step writes the self-edit, and the same model
  (the base with that policy merged, as in the loop's own inner loop) is fitted on it.

The seed changes which self-edit is sampled (temperature from the config) and the LoRA fit's
init and order; the table shows the mean and the spread (sample standard deviation) over seeds.
Each row also shows the share of its self-edits in each style (seal.tasks.world.edit_style's heuristic).
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from seal.config import RunConfig
from seal.errors import ConfigError
from seal.inner.fit import Fit, run_fits
from seal.inner.train import Example
from seal.report import mean_ci95, save_figure, text_table
from seal.seeds import derive_seed
from seal.stages.runs import read_edits, read_plan, run_config, summaries
from seal.stages.runtime import Runtime
from seal.store import Store
from seal.tasks import knowledge, world

log = logging.getLogger(__name__)

# The CI guard's alarm (tests/integration/test_world_learns.py): after the demo's rounds, scored
# with one evaluation seed, the final policy's edits must lift held-out accuracy more than
# GUARD_MARGIN above the un-adapted model, and at least GUARD_QA_SHARE of them must be
# question-answer restatements (the warm start writes 24-33%; a working loop ends at 94-100%).
# Chosen for a false-alarm rate below 1%, measured by bench/world_seeds.py (README, "A guard in
# CI"); the gains over the two baselines, the demo's claim, vary too much between warm starts to
# be an alarm that quiet.
GUARD_MARGIN = 0.05
GUARD_QA_SHARE = 0.6


def heldout_source(data: str) -> str:
    if not data.startswith(world.WORLD_PREFIX):
        raise ConfigError(f"task.data {data}: the world report needs a 'world:...' data source")
    spec, extra = world.parse_world_spec(data)
    fields = ",".join(f"{k}={getattr(spec, k)}" for k in spec.__dataclass_fields__)
    return f"{world.WORLD_PREFIX}{fields},split=heldout"


def sample_edits(rt: Runtime, policy: int, records: list[dict], seed: int) -> list[str]:
    """One self-edit per record from the policy entering round `policy` (0: the warm start)."""
    cfg = rt.cfg
    prompts = [knowledge.context_prompt(r, cfg.task) for r in records]
    seeds = [derive_seed(seed, "report-sample", i) for i in range(len(records))]
    return [c.text for c in rt.policy_generator(policy).generate(prompts, seeds, cfg.sampling.gen_params())]


def incorporate(model: Any, tok: Any, records: list[dict], edits: list[str] | None, cfg: RunConfig,
                seed: int, with_passage: bool = True, merged: bool = False) -> list[float]:
    """Per passage: a LoRA fit of `model` on the passage (and its edit) through the inner loop,
    then its questions; a passage with nothing to train on (no edit, no passage) scores the model
    as it is. `merged`: `model` has a policy merged in."""
    texts_of = [knowledge.training_texts(rec, edits[i] if edits is not None else "", with_passage, cfg.task.qa_pairs)
                for i, rec in enumerate(records)]
    trained = [i for i, texts in enumerate(texts_of) if texts]
    fits = [Fit(records[i], [Example(text=t) for t in texts_of[i]], cfg.inner, derive_seed(seed, "report-fit", i))
            for i in trained]
    untrained = [i for i, texts in enumerate(texts_of) if not texts]
    outcomes, base = run_fits(model, tok, knowledge, fits, cfg, baselines=[records[i] for i in untrained],
                              merged=merged)
    scores = [0.0] * len(records)
    for i, out in zip(trained, outcomes, strict=True):
        scores[i] = out.graded["score"]
    for i, graded in zip(untrained, base, strict=True):
        scores[i] = graded["score"]
    return scores


def style_shares(records: list[dict], edits: list[str]) -> dict[str, float]:
    styles = [world.edit_style(r, e) for r, e in zip(records, edits, strict=True)]
    return {s: styles.count(s) / len(styles) for s in world.STYLES}


def evaluate(run: Store, seeds: list[int], limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Every row of the table, for every seed; also written to <run>/world-report.json."""
    _, cfg = run_config(run, "run `seal run CONFIG` first")
    records = knowledge.load_records(heldout_source(cfg.task.data))[:limit]
    rounds = len(summaries(run))
    if rounds == 0:
        raise ConfigError(f"{run.uri}: no finished round: run `seal run` on its config first")
    rt = Runtime(cfg, run)
    tok = rt.tokenizer
    names = ["base model (no adaptation)", "passage only", "passage + warm-start policy's edits"]
    names += [f"passage + round {r + 1} policy's edits" for r in range(rounds)]
    rows: dict[str, dict[str, Any]] = {n: {"scores": [], "styles": []} for n in names}
    bar = _bar(len(seeds) * len(names), progress)
    t0 = time.perf_counter()
    for seed in seeds:
        for p in range(rounds + 1):  # p = 0: the warm-start policy; p = r + 1: after round r
            model = rt.policy_model(p)
            if p == 0:
                for name, edits, with_passage in ((names[0], None, False), (names[1], None, True)):
                    acc = incorporate(model, tok, records, edits, cfg, seed, with_passage)
                    rows[name]["scores"].append(statistics.fmean(acc))
                    _tick(bar)
            edits = sample_edits(rt, p, records, seed)
            acc = incorporate(model, tok, records, edits, cfg, seed, cfg.task.train_on_passage,
                              merged=rt.has_policy_adapter(p))
            name = names[2 + p]
            rows[name]["scores"].append(statistics.fmean(acc))
            rows[name]["styles"].append(style_shares(records, edits))
            rows[name].setdefault("examples", [])
            if seed == seeds[0]:
                rows[name]["examples"] = edits[:2]
            _tick(bar)
    if bar is not None:
        bar.close()
    rt.release()
    result = {
        "heldout_passages": len(records), "questions": sum(len(r["questions"]) for r in records),
        "seeds": seeds, "seconds": round(time.perf_counter() - t0, 1),
        "rows": [{"name": n, **_summarise(rows[n])} for n in names],
        "rounds": [{"round": s["round"], "mean_reward": s["mean_reward"], "max_reward": s["max_reward"],
                    "mean_baseline": s["mean_baseline"], "styles": _round_styles(run, cfg, s["round"])}
                   for s in summaries(run)],
    }
    run.write_json("world-report.json", result)
    return result


def _round_styles(run: Store, cfg: RunConfig, round_: int) -> dict[str, float]:
    """Style shares of the self-edits sampled in the loop itself (train passages) in a round."""
    records = knowledge.load_records(cfg.task.data)
    plan = read_plan(run, round_)
    edits = read_edits(run, plan, round_, set(plan["contexts"]))
    recs = [records[c] for c, _ in sorted(edits)]
    return style_shares(recs, [edits[key]["text"] for key in sorted(edits)])


def _summarise(row: dict[str, Any]) -> dict[str, Any]:
    s = row["scores"]
    out: dict[str, Any] = {"scores": s, "mean": statistics.fmean(s),
                           "std": statistics.stdev(s) if len(s) > 1 else 0.0}
    if row["styles"]:
        out["styles"] = {k: statistics.fmean(d[k] for d in row["styles"]) for k in world.STYLES}
        out["examples"] = row.get("examples", [])
    return out


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="held-out evaluation", unit="row", mininterval=1.0)


def _tick(bar: Any) -> None:
    if bar is not None:
        bar.update(1)


def table(result: dict[str, Any]) -> str:
    """Plain-text table: accuracy mean ± spread over seeds, and the style shares of the edits."""
    header = ("held-out accuracy (EM)", "mean", "± std", "min", "max", "qa", "paraphrase", "drift")
    cells = [header]
    for row in result["rows"]:
        st = row.get("styles")
        shares = tuple(f"{st[k]:.0%}" for k in world.STYLES) if st else ("", "", "")
        cells.append((row["name"], f"{row['mean']:.3f}", f"{row['std']:.3f}", f"{min(row['scores']):.3f}",
                      f"{max(row['scores']):.3f}", *shares))
    lines = text_table(cells, left=1).split("\n")
    rows = {r["name"]: r for r in result["rows"]}
    final, warm, passage = result["rows"][-1], rows["passage + warm-start policy's edits"], rows["passage only"]
    lines.append("")
    lines.append(f"{result['heldout_passages']} held-out passages, {result['questions']} questions, "
                 f"seeds {result['seeds']}; std is over seeds.")
    for other in (warm, passage):
        diffs = [a - b for a, b in zip(final["scores"], other["scores"], strict=True)]
        spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        wins = sum(d > 0 for d in diffs)
        mean, low, high = mean_ci95(diffs)
        lines.append(f"final policy vs {other['name']}: {mean:+.3f} ± {spread:.3f}, 95% CI [{low:+.3f}, {high:+.3f}] "
                     f"(higher in {wins} of {len(diffs)} seeds)")
    return "\n".join(lines)


def plot(result: dict[str, Any], out: str | Path) -> Path:
    """Left: reward per ReSTEM round (train passages, in the loop). Right: share of each edit
    style, per round in the loop and for each policy's held-out edits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rounds = [r["round"] for r in result["rounds"]]
    ax1.plot(rounds, [r["mean_reward"] for r in result["rounds"]], marker="o", label="mean reward (loop)")
    ax1.plot(rounds, [r["max_reward"] for r in result["rounds"]], marker="^", label="max reward (loop)")
    ax1.plot(rounds, [r["mean_baseline"] for r in result["rounds"]], ls="--", label="un-adapted baseline")
    # Held-out accuracy of each policy, at the round it enters (warm start: 0; after round r: r+1).
    policy_rows = [r for r in result["rows"] if r.get("styles")]
    xs = list(range(len(policy_rows)))
    ax1.errorbar(xs, [r["mean"] for r in policy_rows], yerr=[r["std"] for r in policy_rows], marker="s",
                 capsize=3, label="held-out accuracy, passage + edits (± std over seeds)")
    passage = next(r for r in result["rows"] if r["name"] == "passage only")
    ax1.axhline(passage["mean"], color="tab:red", ls=":", label="held-out accuracy, passage only")
    ax1.set_xticks(xs)
    ax1.set_xlabel("ReSTEM round (policy entering the round: 0 = warm start)")
    ax1.set_ylabel("reward (question accuracy)")
    ax1.set_ylim(0, 1)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    labels = [f"loop r{r['round']}" for r in result["rounds"]]
    shares = [r["styles"] for r in result["rounds"]]
    for row in result["rows"]:
        if row.get("styles"):
            labels.append(row["name"].replace("passage + ", "held-out: ").replace(" policy's edits", ""))
            shares.append(row["styles"])
    bottom = [0.0] * len(labels)
    colors = {"qa": "tab:green", "paraphrase": "tab:blue", "drift": "tab:gray"}
    for style in world.STYLES:
        vals = [s[style] for s in shares]
        ax2.bar(range(len(labels)), vals, bottom=bottom, label=style, color=colors[style])
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax2.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("share of self-edits")
    ax2.set_title("edit styles per round")
    ax2.legend()
    return save_figure(fig, out)


def dump(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=2, sort_keys=True)
